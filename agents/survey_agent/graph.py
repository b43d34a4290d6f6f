"""The survey agent's graph: Plan-Retrieve-Write over a local corpus, one checkpoint per step.

mode `minicpm` (MiniCPM4-Survey's own loop, upstream-apps.md 1.3-1.4): each step is one model call
on a prompt rebuilt from scratch (query, survey in short form, last plan, latest results); the
response updates one part and searches or finalizes.

    START -> route -> step -> route -> ... -> finish -> END

mode `generic` (any instruct model, small ones included): the agent drives, asking for one small
thing per call and checking each reply (generic.py):

    START -> route -> search_topic -> plan -> retrieve -> write -> retrieve -> write ... -> finish -> END

route() decides from the state alone, so a run resumed after a kill (or after a failure, with the
failure count reset) continues where its last checkpoint left it. Citations are grounded as they
are written: a key that is not a paper retrieved in this run is removed and logged, so the
finished survey cites only corpus papers this run saw.

Failure is bounded: `max_failures` unusable responses in a row (minicpm), a part that its retries
and fallbacks could not write (generic), or `max_steps` model calls end the run with status
"failed", its error, and the partial survey in the checkpoint, resumable.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from agents.survey_agent import generic, prompts
from agents.survey_agent.actions import parse_response
from agents.survey_agent.retrieval import Retriever, SearchRecord, format_result
from agents.survey_agent.state import SurveyState
from runtime.errors import ContextLengthError, MiniCPMError
from survey.citations import cited_ids, ground
from survey.corpus import Corpus, Paper
from survey.corpus.store import embedding_text
from survey.document import PlanError, SurveyDocument, format_position, parse_position

log = logging.getLogger(__name__)

MODES = ("generic", "minicpm")
DEFAULT_MAX_STEPS = 300
DEFAULT_MAX_FAILURES = 4
TOPIC_PAPERS = 40  # the first search: what the outline is built from
PART_PAPERS = 5  # papers a generic-mode part is written from
MINICPM_TOPK = (20, 10)  # upstream: top 20 for the first three steps, then 10


class OutOfSteps(Exception):
    pass


@dataclass
class SurveyResult:
    run_id: str
    status: str  # "complete" | "failed" | "running" (stopped from outside)
    error: str | None
    document: SurveyDocument
    papers: dict[str, Paper]  # every paper retrieved in the run, by id
    searches: list[SearchRecord]
    log: list[dict[str, Any]]
    steps: int
    corpus: str = ""
    cited: list[str] = field(default_factory=list)


class _Calls:
    """Model calls made by one node, against the run's step budget."""

    def __init__(self, agent: SurveyAgent, state: SurveyState):
        self.agent, self.steps, self.limit = agent, state.get("steps", 0), state.get("max_steps", agent.max_steps)

    def ask(self, system: str, user: str, *, max_tokens: int, temperature: float, what: str = "") -> str:
        if self.steps >= self.limit:
            raise OutOfSteps
        self.steps += 1
        if self.agent.on_activity is not None and what:
            self.agent.on_activity(what)
        reply = self.agent.model.invoke([SystemMessage(system), HumanMessage(user)], max_tokens=max_tokens,
                                        temperature=temperature, seed=self.agent.seed + self.steps,
                                        **self.agent.sampling)
        return reply.content if isinstance(reply.content, str) else str(reply.content)


class SurveyAgent:
    """The compiled graph and what it needs at run time: the chat model and the corpus."""

    def __init__(self, model: BaseChatModel, corpus: Corpus, *, mode: str = "generic",
                 max_steps: int = DEFAULT_MAX_STEPS, max_failures: int = DEFAULT_MAX_FAILURES, retries: int = 1,
                 max_tokens: int | None = None, seed: int = 0, checkpointer=None, search_mode: str = "hybrid",
                 sampling: dict[str, Any] | None = None, on_activity=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
        if max_steps < 1 or max_failures < 1 or retries < 0:
            raise ValueError("max_steps and max_failures must be at least 1, retries at least 0")
        self.model, self.corpus, self.mode = model, corpus, mode
        self.max_steps, self.max_failures, self.retries, self.seed = max_steps, max_failures, retries, seed
        self.max_tokens = max_tokens or (2048 if mode == "minicpm" else 320)
        self.sampling = sampling if sampling is not None else {"repetition_penalty": 1.1}
        self.retriever = Retriever(corpus, search_mode)
        self.on_activity = on_activity  # called with what each model call is for (live progress; not saved)
        self.graph = self._build().compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())

    def _build(self) -> StateGraph:
        graph = StateGraph(SurveyState)
        nodes = {"finish": self.finish, "out_of_steps": self.out_of_steps}
        if self.mode == "minicpm":
            nodes["step"] = self.minicpm_step
        else:
            nodes.update(search_topic=self.search_topic, plan=self.plan, retrieve=self.retrieve, write=self.write)
        for name, node in nodes.items():
            graph.add_node(name, node)
            graph.add_conditional_edges(name, self.route)
        graph.add_conditional_edges(START, self.route)
        return graph

    # -- routing --------------------------------------------------------------------------------

    def route(self, state: SurveyState) -> str:
        if state.get("status") != "running":
            return END
        document = SurveyDocument.from_dict(state["document"])
        if self.mode == "generic" and document.complete:
            return "finish"
        if state.get("steps", 0) >= state.get("max_steps", self.max_steps):
            return "out_of_steps"
        if self.mode == "minicpm":
            return "step"
        if not state.get("retrieved"):
            return "search_topic"
        if not document.planned:
            return "plan"
        return "write" if state.get("pending") else "retrieve"

    def finish(self, state: SurveyState) -> dict:
        document = SurveyDocument.from_dict(state["document"])
        cited = sorted({pid for _, _, node in document.walk() for pid in cited_ids(node.content)})
        return {"status": "complete", "error": "",
                "log": [*state.get("log", []), {"kind": "complete", "steps": state.get("steps", 0),
                                                 "references": len(cited)}]}

    def out_of_steps(self, state: SurveyState) -> dict:
        return self._failed(state, f"the step limit ({state.get('max_steps', self.max_steps)} model calls) was "
                                   "reached before the survey was complete; resume with a higher --max-steps")

    def _failed(self, state: SurveyState, error: str, **updates) -> dict:
        return {**updates, "status": "failed", "error": error,
                "log": [*updates.get("log", state.get("log", [])), {"kind": "failed", "error": error}]}

    # -- generic mode ---------------------------------------------------------------------------

    def search_topic(self, state: SurveyState) -> dict:
        record = self.retriever.search([state["query"]], k=TOPIC_PAPERS)
        if not record.ids or not self._on_topic(state["query"]):
            return self._failed(state, f"the corpus has no papers on {state['query']!r} (no keyword matches, and "
                                       "no abstract is close in meaning); try other words, or ingest papers on the topic")
        return self._searched(state, record)

    def _on_topic(self, query: str) -> bool:
        """Whether the corpus has anything on the query: a keyword match, or an abstract close in
        meaning (dense search always returns neighbours, however far)."""
        if self.corpus.search(query, k=1, mode="bm25"):
            return True
        nearest = self.corpus.search(query, k=1, mode="dense") if self.corpus.has_vectors() else []
        return bool(nearest) and (nearest[0].score or 0.0) >= MIN_TOPIC_SIMILARITY

    def plan(self, state: SurveyState) -> dict:
        calls, events = _Calls(self, state), list(state.get("log", []))
        document = SurveyDocument.from_dict(state["document"])
        ids = state["retrieved"][:TOPIC_PAPERS]
        papers = self.retriever.papers(ids)
        ids = list(papers)
        vectors = self.corpus.embedder().encode([embedding_text(p.title, p.abstract) for p in papers.values()])
        titles = "\n".join(f"- {p.title}" for p in list(papers.values())[:15])
        try:
            title, sections, fallback = "", None, None
            for attempt in range(self.retries + 1):
                reply = calls.ask(prompts.GENERIC_SYSTEM, prompts.OUTLINE.format(query=state["query"], titles=titles),
                                  max_tokens=200, temperature=0.0 if attempt == 0 else 0.7,
                                  what=f"outline (attempt {attempt + 1})")
                title, parsed, problem = generic.parse_outline(reply)
                problem = problem or self._off_topic(state["query"], [s["title"] for s in parsed])
                if problem is None:
                    sections = parsed
                    break
                events.append({"kind": "retry", "part": "outline", "reason": problem})
            seeds: dict[str, list[str]] = {}
            if sections is not None:
                # Each retrieved paper goes to the section whose title it is closest to.
                heads = self.corpus.embedder().encode([s["title"] for s in sections])
                nearest = np.argmax(vectors @ heads.T, axis=1)
                for i, section in enumerate(sections):
                    seeds[f"section-{i + 1}"] = [ids[j] for j in range(len(ids)) if nearest[j] == i]
            else:
                fallback = "the model's outlines were unusable; sections are groups of the retrieved papers"
                sections, seeds = self._outline_from_groups(state["query"], ids, papers, vectors, calls)
            if not generic.usable_title(title):
                title = generic.fallback_title(state["query"])
            plan = {"title": title, "abstract": {"plan": "What the survey covers and finds."},
                    "introduction": {"plan": f"Why {state['query']} matters and how the survey is organised."},
                    "sections": [{"title": s["title"], "plan": s.get("plan") or _plan_from(seeds.get(f"section-{i + 1}", []), papers),
                                  "subsections": [{"title": sub["title"], "plan": sub.get("plan", "")}
                                                  for sub in s.get("subsections", [])]}
                                 for i, s in enumerate(sections)],
                    "conclusion": {"plan": "What the field has achieved and what remains open."}}
            document.apply_plan(plan)
        except OutOfSteps:
            return self._out_of_steps_in(state, calls, events)
        events.append({"kind": "plan", "title": document.title, "fallback": fallback,
                       "outline": [document.label(p) for p, _, _ in document.walk() if p.startswith("section")]})
        return {"document": document.to_dict(), "seeds": seeds, "steps": calls.steps, "log": events}

    def _on_query(self, query: str, keywords: list[str], events: list) -> list[str]:
        """The model's search queries that are about the survey's query (small models wander off)."""
        if not keywords:
            return []
        vectors = self.corpus.embedder().encode([query, *keywords])
        kept = [k for k, v in zip(keywords, vectors[1:]) if float(v @ vectors[0]) >= MIN_TOPIC_SIMILARITY]
        if len(kept) < len(keywords):
            events.append({"kind": "off_topic", "queries": [k for k in keywords if k not in kept]})
        return kept

    def _off_topic(self, query: str, headings: list[str]) -> str | None:
        """Whether an outline is about the query at all (small models drift to generic headings)."""
        if not headings:
            return None
        vectors = self.corpus.embedder().encode([query, *headings])
        similarity = vectors[1:] @ vectors[0]
        if float(similarity.mean()) < OUTLINE_MIN_SIMILARITY:
            return f"its sections are not about the query (mean similarity {similarity.mean():.2f})"
        return None

    def _outline_from_groups(self, query, ids, papers, vectors, calls) -> tuple[list[dict], dict[str, list[str]]]:
        self._headings: set[str] = set()  # each heading once in the outline
        groups = generic.group_papers(ids, vectors, k=4 if len(ids) >= 24 else 3, seed=self.seed)
        groups = [group for group in groups if len(group) >= 2] or groups
        sections, seeds = [], {}
        for i, group in enumerate(groups):
            others = [papers[pid].title for other in groups if other is not group for pid in other]
            heading = self._group_heading(query, [papers[pid].title for pid in group], others, calls)
            subsections = []
            if len(group) >= 8:  # a big group splits in two subsections
                index = [ids.index(pid) for pid in group]
                halves = generic.group_papers(group, vectors[index], k=2, seed=self.seed)
                for j, half in enumerate(halves):
                    rest = [papers[pid].title for other in halves if other is not half for pid in other]
                    sub = self._group_heading(query, [papers[pid].title for pid in half], rest, calls)
                    subsections.append({"title": sub, "plan": _plan_from(half, papers)})
                    seeds[f"section-{i + 1}/subsection-{j + 1}"] = half
            sections.append({"title": heading, "plan": _plan_from(group, papers), "subsections": subsections})
            seeds[f"section-{i + 1}"] = group
        return sections, seeds

    def _group_heading(self, query: str, titles: list[str], other_titles: list[str], calls: _Calls) -> str:
        listing = "\n".join(f"- {t}" for t in titles[:8])
        reply = generic.clean_line(calls.ask(prompts.GENERIC_SYSTEM, prompts.GROUP_HEADING.format(query=query, titles=listing),
                                             max_tokens=24, temperature=0.0, what="a heading for a group of papers"))
        if generic.usable_heading(reply) and reply.lower() not in self._headings:
            heading = reply
        else:
            heading = generic.distinctive_heading(titles, other_titles)
            if heading.lower() in self._headings:
                heading = generic.short_title(titles[0])
        self._headings.add(heading.lower())
        return heading

    def retrieve(self, state: SurveyState) -> dict:
        document = SurveyDocument.from_dict(state["document"])
        position = _generic_next(document)
        if position in ("abstract", "conclusion"):  # written from the survey itself
            return {"pending": {"position": position, "ids": []}}
        calls, events = _Calls(self, state), list(state.get("log", []))
        topic = document.node(position).title if position != "introduction" else f"an introduction to {state['query']}"
        try:
            reply = calls.ask(prompts.GENERIC_SYSTEM, prompts.KEYWORDS.format(part=topic, query=state["query"]),
                              max_tokens=48, temperature=0.0, what=f"search queries for {document.label(position)}")
        except OutOfSteps:
            return self._out_of_steps_in(state, calls, events)
        keywords = self._on_query(state["query"], generic.parse_keywords(reply), events)
        title = document.node(position).title if position.startswith("section") else ""
        queries = [*keywords, f"{title} {state['query']}".strip()]
        record = self.retriever.search(queries, k=10)
        update = self._searched({**state, "log": events}, record)
        # Papers for this part: the outline's group first, then the search; uncited ones before cited.
        cited = {pid for _, _, node in document.walk() for pid in cited_ids(node.content)}
        candidates = list(dict.fromkeys([*state.get("seeds", {}).get(position, [])[:3], *record.ids]))
        candidates.sort(key=lambda pid: pid in cited)
        update.update(pending={"position": position, "ids": candidates[:PART_PAPERS]}, steps=calls.steps)
        return update

    def write(self, state: SurveyState) -> dict:
        document = SurveyDocument.from_dict(state["document"])
        position, ids = state["pending"]["position"], list(state["pending"]["ids"])
        calls, events = _Calls(self, state), list(state.get("log", []))
        try:
            if position in ("abstract", "conclusion"):
                text = self._write_summary(state, document, position, calls, events)
            else:
                text = self._write_paragraph(state, document, position, ids, calls, events)
        except OutOfSteps:
            return self._out_of_steps_in(state, calls, events)
        if text is None:
            return self._failed(state, f"the model could not write {document.label(position)} after "
                                       f"{self.retries + 1} attempts and the fallback", steps=calls.steps, log=events)
        text, removed = ground(text, set(state["retrieved"]))
        document.update(position, text)
        events.append(_wrote(document, position, text, removed))
        return {"document": document.to_dict(), "pending": {}, "steps": calls.steps, "log": events}

    def _write_paragraph(self, state, document, position, ids, calls, events) -> str | None:
        papers = self.retriever.papers(ids)
        ids = list(papers)
        if not ids:
            return None
        node = document.node(position)
        part = document.label(position)
        listing = "\n".join(f"[{i}] {p.title}: {_clip(p.abstract, 500)}" for i, p in enumerate(papers.values(), 1))
        # A model-written plan guides the paragraph; a fallback outline's list of titles would be copied.
        plan = f" It should cover: {node.plan}" if node.plan and position.startswith("section") \
            and not node.plan.startswith(PLAN_FROM_PAPERS) else ""
        wanted = min(2, len(ids))
        for attempt in range(self.retries + 1):
            reply = calls.ask(prompts.GENERIC_SYSTEM, prompts.PARAGRAPH.format(papers=listing, part=part,
                              query=state["query"], plan=plan), max_tokens=self.max_tokens,
                              temperature=0.0 if attempt == 0 else 0.7, what=f"{part} (attempt {attempt + 1})")
            text, dropped = generic.numbers_to_citations(generic.drop_repeats(reply), ids)
            if dropped:
                events.append({"kind": "removed", "part": part, "keys": [f"[{n}]" for n in dropped],
                               "reason": "a number that names none of the papers shown"})
            problem = generic.paragraph_problem(text, len(cited_ids(text)), wanted)
            if problem is None:
                return text
            events.append({"kind": "retry", "part": part, "reason": problem})
        # Per-source drafting: a sentence per paper, each written from that paper's abstract.
        sentences = []
        for paper_id in ids[:3]:
            paper = papers[paper_id]
            reply = calls.ask(prompts.GENERIC_SYSTEM, prompts.ONE_SENTENCE.format(title=paper.title,
                              abstract=_clip(paper.abstract, 1200)), max_tokens=80, temperature=0.0,
                              what=f"{part}: a sentence on {_clip(paper.title, 60)}")
            sentence = generic.first_sentence(reply)
            if sentence:
                sentences.append(generic.cite_sentence(sentence, paper_id))
        if len(sentences) < min(2, len(ids)):
            return None
        events.append({"kind": "fallback", "part": part, "what": "one sentence per paper",
                       "reason": "the paragraphs did not pass their checks"})
        return " ".join(sentences)

    def _write_summary(self, state, document, position, calls, events) -> str | None:
        sections = "\n".join(f"- {document.label(p)}: {_clip(generic.plain(node.content), 200)}"
                             for p, depth, node in document.walk() if p.startswith("section") and depth == 0)
        best = None
        for attempt in range(self.retries + 1):
            reply = calls.ask(prompts.GENERIC_SYSTEM, prompts.SUMMARY.format(query=state["query"], sections=sections,
                              part=position, length=prompts.SUMMARY_LENGTH[position]),
                              max_tokens=self.max_tokens, temperature=0.0 if attempt == 0 else 0.7,
                              what=f"{position} (attempt {attempt + 1})")
            text = generic.drop_repeats(generic.plain(reply))
            problem = generic.paragraph_problem(text, 0, 0, min_words=25)
            if problem is None:
                return text
            if len(generic.words(text)) >= 10 and generic.repetition_problem(text) is None:
                best = best or text
            events.append({"kind": "retry", "part": position.capitalize(), "reason": problem})
        if best:
            events.append({"kind": "fallback", "part": position.capitalize(), "what": "the best short attempt",
                           "reason": "no attempt reached 25 words"})
        return best

    def _out_of_steps_in(self, state, calls, events) -> dict:
        return self._failed({**state, "log": events},
                            f"the step limit ({calls.limit} model calls) was reached before the survey was complete; "
                            "resume with a higher --max-steps", steps=calls.steps, log=events)

    def _searched(self, state: SurveyState, record: SearchRecord) -> dict:
        retrieved = list(state.get("retrieved", []))
        known = set(retrieved)
        new = [pid for pid in record.ids if pid not in known]
        retrieved.extend(new)
        return {"retrieved": retrieved, "last_results": record.ids or state.get("last_results", []),
                "searches": [*state.get("searches", []), record.to_dict()],
                "log": [*state.get("log", []), {"kind": "search", "queries": record.queries, "found": len(record.ids),
                                                "new": len(new), "total": len(retrieved),
                                                "seconds": round(record.seconds, 4)}]}

    # -- minicpm mode ---------------------------------------------------------------------------

    def minicpm_step(self, state: SurveyState) -> dict:
        document = SurveyDocument.from_dict(state["document"])
        calls, events = _Calls(self, state), list(state.get("log", []))
        plan = state.get("last_plan") or prompts.FIRST_PLAN
        if state.get("correction"):
            plan = prompts.CORRECTION.format(reason=state["correction"]) + prompts.FORCE_CORRECT.format(
                position=document.next_unwritten() or "finalize")
        try:
            text = self._minicpm_call(state, document, plan, calls, events)
        except OutOfSteps:
            return self._out_of_steps_in(state, calls, events)
        action = parse_response(text)
        update: dict[str, Any] = {"steps": calls.steps, "log": events}
        if action.error is None and action.update is not None:
            action.error = self._apply(state, document, action, events)
        if action.error:
            return self._unusable(state, update, events, action.error)
        update.update(document=document.to_dict(), last_plan=action.next_plan, correction="")
        progressed = action.update is not None
        if action.tool == "search_engine":
            k = MINICPM_TOPK[0] if state.get("steps", 0) < 3 else MINICPM_TOPK[1]
            update.update(self._searched({**state, "log": events}, self.retriever.search(action.keywords, k=k)))
            progressed = True
        elif document.complete:  # finalize (or no call) with every part written
            update["log"] = events
            return update | {"status": "complete"} | self.finish({**state, **update})
        else:
            missing = document.next_unwritten() or "title"
            events.append({"kind": "finalize_refused", "missing": missing})
            update["correction"] = f"the survey is not finished: {missing} has no content yet"
            update["last_plan"] = prompts.FORCE_CORRECT.format(position=missing)
        if progressed:
            update["failures"] = 0
            return update
        return self._unusable(state, update, events, update.get("correction") or "the response changed nothing")

    def _minicpm_call(self, state, document, plan, calls, events) -> str:
        results = list(self.retriever.papers(state.get("last_results", [])).values())
        # Full abstracts, as upstream shows them; shorter (then fewer) when they overflow the context.
        for clip, count in ((None, len(results)), (400, len(results)), (300, 5)):
            user = prompts.minicpm_user(state["query"], document.abbreviated(), plan,
                                        [format_result(p, clip) for p in results[:count]])
            try:
                return calls.ask(prompts.minicpm_system(), user, max_tokens=self.max_tokens, temperature=0.7,
                                 what=f"step {calls.steps + 1}: {document.next_unwritten() or 'finalize'}")
            except ContextLengthError:
                calls.steps -= 1
                events.append({"kind": "retry", "part": "prompt", "reason": "the retrieved abstracts overflow the "
                                                                            "context; shown shorter"})
        raise MiniCPMError("the survey prompt does not fit the model's context even with short abstracts; "
                           "use a model with a longer context (--ctx)")

    def _apply(self, state, document: SurveyDocument, action, events) -> str | None:
        content = action.content
        try:
            position, _ = parse_position(action.update)
            if position == "plan" and isinstance(content, str):
                content = json.loads(content)
            if isinstance(content, str):
                content, removed = ground(content, set(state.get("retrieved", [])))
            else:
                removed = []
            written = document.update(action.update, content)
        except (PlanError, json.JSONDecodeError) as exc:
            return f"the update of {action.update!r} was refused: {exc}"
        if written == "plan":
            events.append({"kind": "plan", "title": document.title, "fallback": None,
                           "outline": [document.label(p) for p, _, _ in document.walk() if p.startswith("section")]})
        elif written != "title":
            events.append(_wrote(document, written, document.node(written).content, removed))
        return None

    def _unusable(self, state, update, events, reason) -> dict:
        failures = state.get("failures", 0) + 1
        events.append({"kind": "invalid", "reason": reason, "failures": failures})
        update.update(failures=failures, correction=reason, log=events)
        if failures >= self.max_failures:
            return self._failed(state, f"the model's last {failures} responses could not be used "
                                       f"(the last: {reason})", **update)
        return update

    # -- running --------------------------------------------------------------------------------

    def config(self, run_id: str, max_steps: int | None = None) -> dict:
        limit = max_steps or self.max_steps
        return {"configurable": {"thread_id": run_id}, "recursion_limit": limit * 4 + 100}

    def stream(self, run_id: str, query: str | None = None, *, max_steps: int | None = None,
               outputs: dict[str, str] | None = None):
        """Run (query given: a new run; else resume run_id) and yield the state after every step."""
        if query is not None:
            values: dict[str, Any] = {"query": query, "mode": self.mode, "document": SurveyDocument(query).to_dict(),
                                      "retrieved": [], "last_results": [], "searches": [], "seeds": {}, "pending": {},
                                      "last_plan": "", "correction": "", "steps": 0, "failures": 0, "log": [],
                                      "status": "running", "error": "", "max_steps": max_steps or self.max_steps,
                                      "corpus": str(self.corpus.path), "outputs": outputs or {}}
        else:
            previous = self.state(run_id)
            if previous is None:
                raise MiniCPMError(f"there is no survey run '{run_id}'")
            if previous.get("mode") != self.mode:
                raise MiniCPMError(f"run '{run_id}' was written in {previous.get('mode')} mode; resume it with "
                                   f"--mode {previous.get('mode')}")
            values = {"status": "running" if previous.get("status") != "complete" else "complete", "failures": 0,
                      **({"outputs": outputs} if outputs else {}),
                      "error": "", "max_steps": max(max_steps or previous.get("max_steps", self.max_steps),
                                                    previous.get("max_steps", 0))}
        for snapshot in self.graph.stream(values, self.config(run_id, values.get("max_steps")), stream_mode="values"):
            yield snapshot

    def state(self, run_id: str) -> dict | None:
        snapshot = self.graph.get_state({"configurable": {"thread_id": run_id}})
        return dict(snapshot.values) if snapshot and snapshot.values else None

    def result(self, run_id: str) -> SurveyResult:
        state = self.state(run_id) or {}
        document = SurveyDocument.from_dict(state["document"])
        cited = list(dict.fromkeys(pid for _, _, node in document.walk() for pid in cited_ids(node.content)))
        return SurveyResult(run_id=run_id, status=state.get("status", "running"), error=state.get("error") or None,
                            document=document, papers=self.retriever.papers(state.get("retrieved", [])),
                            searches=[SearchRecord.from_dict(s) for s in state.get("searches", [])],
                            log=list(state.get("log", [])), steps=state.get("steps", 0),
                            corpus=str(self.corpus.path), cited=cited)


OUTLINE_MIN_SIMILARITY = 0.3  # mean cosine of the section titles to the query; see _off_topic
# Cosine of MiniLM vectors: a query and an unrelated abstract of the corpus score below ~0.34 in 95%
# of pairs (benchmarks/results/survey_eval.json, calibration); a topic whose nearest abstract is
# farther than this, with no keyword match either, is not in the corpus.
MIN_TOPIC_SIMILARITY = 0.3


def _generic_next(document: SurveyDocument) -> str:
    """The generic mode's write order: introduction, the sections, conclusion, then the abstract
    (which summarizes what is written)."""
    order = [p for p in document.positions() if p != "abstract"] + ["abstract"]
    return next(p for p in order if not document.node(p).written)


PLAN_FROM_PAPERS = "Covers: "


def _plan_from(ids: list[str], papers: dict[str, Paper]) -> str:
    return PLAN_FROM_PAPERS + "; ".join(papers[pid].title for pid in ids[:3] if pid in papers)


def _wrote(document: SurveyDocument, position: str, text: str, removed) -> dict:
    return {"kind": "write", "position": position, "part": document.label(position),
            "words": len(generic.words(generic.plain(text))), "citations": len(cited_ids(text)),
            "removed": [r.key for r in removed]}


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ..."


def write_survey(model: BaseChatModel, corpus: Corpus, query: str, *, mode: str = "generic",
                 max_steps: int = DEFAULT_MAX_STEPS, run_id: str | None = None, checkpointer=None,
                 on_event=None, **options) -> SurveyResult:
    """Write (or, with run_id of an unfinished run and query None, resume) a survey; returns its result.
    on_event(entry, state) is called for every new log entry."""
    import uuid

    if query is not None and not query.strip():
        raise MiniCPMError("the survey query is empty")
    agent = SurveyAgent(model, corpus, mode=mode, max_steps=max_steps, checkpointer=checkpointer, **options)
    run_id = run_id or uuid.uuid4().hex[:12]
    seen = len((agent.state(run_id) or {}).get("log", [])) if query is None else 0
    for state in agent.stream(run_id, query, max_steps=max_steps):
        entries = state.get("log", [])
        if on_event is not None:
            for entry in entries[seen:]:
                on_event(entry, state)
        seen = len(entries)
    return agent.result(run_id)


__all__ = ["MODES", "SurveyAgent", "SurveyResult", "write_survey", "format_position"]
