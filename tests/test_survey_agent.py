"""The survey agent on a real corpus (200 papers of the shipped sample) with scripted models: the
minicpm action loop, the generic mode with its checks and fallbacks, grounding of citations,
bounded failure, SQLite checkpoints that a new process resumes, and the `minicpm survey` command."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable

import pytest
from conftest import run_cli
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.checkpoint.sqlite import SqliteSaver
from test_corpus import sample_lines, write_gz

from agents.survey_agent import SurveyAgent, write_survey
from agents.survey_agent import generic
from agents.survey_agent.actions import parse_response
from runtime.errors import MiniCPMError
from survey.citations import cited_ids
from survey.corpus import Corpus
from survey.document import SurveyDocument

N_PAPERS = 200


class ScriptedModel(BaseChatModel):
    """Replies with respond(system, user, call_number); records the prompts it was shown."""

    respond: Callable[[str, str, int], str]
    prompts: list[tuple[str, str]] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        system, user = messages[0].content, messages[-1].content
        self.prompts.append((system, user))
        reply = self.respond(system, user, len(self.prompts))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])


def scripted(respond) -> ScriptedModel:
    return ScriptedModel(respond=respond, prompts=[])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    source = write_gz(tmp_path_factory.mktemp("src") / "papers.jsonl.gz", sample_lines(N_PAPERS))
    path = tmp_path_factory.mktemp("corpus") / "c"
    with Corpus.open(path, create=True) as c:
        c.ingest([source])
    c = Corpus.open(path)
    yield c
    c.close()


def bibkeys(user_prompt: str) -> list[str]:
    return re.findall(r"bibkey: (\S+)", user_prompt)


# -- minicpm mode ---------------------------------------------------------------------------------

PLAN = {"title": "Agents built on language models",
        "abstract": {"plan": "summary"}, "introduction": {"plan": "why"},
        "sections": [{"title": "Planning", "plan": "how agents plan",
                      "subsections": [{"title": "Tool use", "plan": "tools"}]},
                     {"title": "Evaluation", "plan": "benchmarks"}],
        "conclusion": {"plan": "open problems"}}


def minicpm_reply(update: dict | None, call: dict | None, think: str = "ok") -> str:
    return (f"<think>{think}</think>\n<answer>{json.dumps(update or {})}</answer>\n"
            f"<think>next</think>\n<tool_call>{json.dumps(call or {})}</tool_call>")


def search(*keywords: str) -> dict:
    return {"name": "search_engine", "arguments": {"query": list(keywords)}}


def minicpm_writer(fake_key: str = "arxivid9999.99999"):
    """A well-behaved MiniCPM4-Survey: searches, plans, writes every part citing what it was shown
    (plus one paper it never retrieved), tries to finalize early once, then finalizes."""
    order = ["abstract", "introduction", "section-1", "section-1/subsection-1", "section-2", "conclusion"]
    state = {"i": 0, "tried_early": False}

    def respond(system: str, user: str, n: int) -> str:
        assert "<tools>" in system and "search_engine" in system
        if n == 1:
            assert "I need to get enough information." in user and "There are 0 results." in user
            return minicpm_reply(None, search("language model agents", "planning"))
        if n == 2:
            return minicpm_reply({"update": "plan", "content": PLAN}, search("agent evaluation"))
        keys = bibkeys(user)
        if state["i"] == 2 and not state["tried_early"]:
            state["tried_early"] = True
            return minicpm_reply(None, {"name": "finalize", "arguments": {}})
        if state["i"] < len(order):
            position = order[state["i"]]
            state["i"] += 1
            cite = f"\\cite{{{keys[0]}, {fake_key}}}" if position == "section-1" else f"\\cite{{{keys[0]}}}"
            text = f"Work on {position} is summarised here {cite}. A second sentence without a citation."
            return minicpm_reply({"update": position, "content": text}, search(f"more on {position}"))
        return minicpm_reply(None, {"name": "finalize", "arguments": {}})

    return respond


def test_minicpm_mode_writes_a_grounded_survey_and_refuses_an_early_finalize(corpus):
    events = []
    model = scripted(minicpm_writer())
    result = write_survey(model, corpus, "language model agents", mode="minicpm", on_event=lambda e, s: events.append(e))
    assert result.status == "complete", result.error
    doc = result.document
    assert doc.complete and doc.title == "Agents built on language models"
    assert [doc.label(p) for p, _, _ in doc.walk()][2:5] == ["1 Planning", "1.1 Tool use", "2 Evaluation"]
    # The never-retrieved paper was removed from section-1 and the removal logged.
    assert "9999.99999" not in doc.node("section-1").content
    removed = [e for e in events if e["kind"] == "write" and e["removed"]]
    assert removed and removed[0]["removed"] == ["arxivid9999.99999"]
    assert set(result.cited) <= set(result.papers) and result.cited
    assert all(corpus.get(pid) is not None for pid in result.cited)
    kinds = [e["kind"] for e in events]
    assert "finalize_refused" in kinds and kinds[-1] == "complete"
    # After the refusal the model was told what is missing (upstream's force-correct prompt).
    assert any("Next I will provide section-1." in user for _, user in model.prompts)
    # The survey is shown abbreviated: written parts as [OK] ..., unwritten ones as [PLAN] ...
    last_user = model.prompts[-1][1]
    assert "[OK] Work on" in last_user
    assert result.searches and all(s.seconds >= 0 for s in result.searches)


def test_invalid_actions_are_bounded_then_the_run_fails_and_resumes(corpus, tmp_path):
    db = tmp_path / "runs.sqlite"
    garbage = scripted(lambda s, u, n: minicpm_reply(None, search("language model agents")) if n == 1
                       else "I will write the survey now! {not json")
    with sqlite3.connect(db, check_same_thread=False) as conn:
        agent = SurveyAgent(garbage, corpus, mode="minicpm", max_failures=3, checkpointer=SqliteSaver(conn))
        list(agent.stream("run1", "language model agents"))
        result = agent.result("run1")
    assert result.status == "failed"
    assert "last 3 responses could not be used" in result.error and "<answer>" in result.error
    assert len(garbage.prompts) == 4  # one search, then three unusable responses
    assert result.papers  # what it retrieved is kept
    # The correction reached the model each time.
    assert "could not be used" in garbage.prompts[-1][1]

    # A new process (new connection, new agent) resumes the failed run with a better model.
    good = scripted(minicpm_writer())
    good_respond = good.respond
    good.respond = lambda s, u, n: good_respond(s, u, n + 1)  # it has already searched
    with sqlite3.connect(db, check_same_thread=False) as conn:
        agent = SurveyAgent(good, corpus, mode="minicpm", max_failures=3, checkpointer=SqliteSaver(conn))
        list(agent.stream("run1"))
        result = agent.result("run1")
    assert result.status == "complete", result.error
    assert result.document.complete


def test_parse_response_never_raises_and_says_what_is_wrong():
    assert parse_response("no tags at all").error.startswith("no <answer>")
    assert "does not parse" in parse_response("<answer>{bad</answer><tool_call>{}</tool_call>").error
    assert "CJK" in parse_response("<answer>{}</answer><tool_call>{}</tool_call> 中文").error
    assert "unknown tool" in parse_response('<answer>{}</answer><tool_call>{"name": "rm"}</tool_call>').error
    ok = parse_response('<think>a</think><answer>{}</answer><think>b</think>'
                        '<tool_call>{"name": "search_engine", "arguments": {"query": "one keyword"}}</tool_call>')
    assert ok.error is None and ok.tool == "search_engine" and ok.keywords == ["one keyword"]
    assert "<think>b</think>" in ok.next_plan and "search_engine" in ok.next_plan


# -- generic mode ---------------------------------------------------------------------------------

def capable_generic(system: str, user: str, n: int) -> str:
    """An instruct model that follows the generic prompts."""
    if user.startswith("Write the outline"):
        return "Title: Language model agents: a survey\n1. Planning with language models\n" \
               "1.1 Task decomposition\n2. Tool use and retrieval\n3. Evaluation of agents"
    if user.startswith("Suggest two search queries"):
        return "language model planning\nagent benchmarks"
    if user.startswith("Papers:"):
        count = len(re.findall(r"^\[\d+\]", user, re.MULTILINE))
        return (f"Agents plan their steps with language models [1]. Several systems call tools [2, {count}]. "
                f"Benchmarks measure how well agents do [{min(3, count)}]. One work is unrelated [42]. "
                "Together these works show steady progress in the area.")
    if user.startswith("A survey on"):
        return ("This survey reviews how language model agents plan, use tools and are evaluated, and it "
                "points out the main open problems that remain for the field in the coming years.")
    raise AssertionError(f"unexpected prompt: {user[:80]}")


def test_generic_mode_with_a_capable_model(corpus):
    events = []
    result = write_survey(scripted(capable_generic), corpus, "language model agents",
                          on_event=lambda e, s: events.append(e))
    assert result.status == "complete", result.error
    doc = result.document
    assert doc.title == "Language model agents: a survey"
    assert [doc.label(p) for p, _, _ in doc.walk()] == [
        "Abstract", "Introduction", "1 Planning with language models", "1.1 Task decomposition",
        "2 Tool use and retrieval", "3 Evaluation of agents", "Conclusion"]
    section = doc.node("section-1").content
    assert "\\cite{arxivid" in section and "[1]" not in section and "[42]" not in section
    assert any(e["kind"] == "removed" and e["keys"] == ["[42]"] for e in events)
    assert not any(e["kind"] == "fallback" for e in events)
    assert set(result.cited) <= set(result.papers) and len(result.cited) >= 5
    # Abstract and conclusion are written last, from the sections.
    writes = [e["position"] for e in events if e["kind"] == "write"]
    assert writes[-2:] == ["conclusion", "abstract"] and writes[0] == "introduction"


def weak_generic(system: str, user: str, n: int) -> str:
    """A small model: rambles instead of an outline, never cites, but can say what one paper does."""
    if user.startswith("Write the outline"):
        return "Section 1\nIn this section we will provide a detailed outline of the survey."
    if "Write a short section heading" in user:
        return "This list contains a mix of papers on various aspects of the field, including several."
    if user.startswith("Suggest two search queries"):
        return "Here's a search query for finding papers:\nhttps://example.org/search"
    if user.startswith("Papers:"):
        return "Multi-agent systems are a field. They are used. They are used. They are used."
    if user.endswith("In one sentence, what does this paper do?"):
        title = re.search(r"^Title: (.+)$", user, re.MULTILINE).group(1)
        return f"This paper studies {title.lower()} and reports what it finds."
    if user.startswith("A survey on"):
        return "The field has grown. " * 3 + "Open problems remain in evaluation, safety and cost of these systems."
    raise AssertionError(f"unexpected prompt: {user[:80]}")


def test_generic_mode_falls_back_for_a_weak_model_and_stays_grounded(corpus):
    events = []
    result = write_survey(scripted(weak_generic), corpus, "language model agents", retries=1,
                          on_event=lambda e, s: events.append(e))
    assert result.status == "complete", result.error
    plan = next(e for e in events if e["kind"] == "plan")
    assert "groups of the retrieved papers" in plan["fallback"]
    assert 3 <= sum(1 for p, d, _ in result.document.walk() if p.startswith("section") and d == 0) <= 4
    # Headings came from the papers' titles, not from the rambling replies.
    assert not any("This list contains" in label for label in plan["outline"])
    fallbacks = [e for e in events if e["kind"] == "fallback" and e["what"] == "one sentence per paper"]
    assert fallbacks
    # Every sentence of a per-paper paragraph cites the paper it was written from.
    text = result.document.node("section-1").content
    for sentence in re.split(r"(?<=\.) ", text):
        title = re.match(r"This paper studies (.+) and reports", sentence).group(1)
        (pid,) = cited_ids(sentence)
        assert result.papers[pid].title.lower() == title
    assert len(set(result.cited)) >= 10 and set(result.cited) <= set(result.papers)
    searches = [e for e in events if e["kind"] == "search"]
    assert all("http" not in q for e in searches for q in e["queries"])


def test_a_killed_run_resumes_from_its_last_step_without_redoing_it(corpus, tmp_path):
    db = tmp_path / "runs.sqlite"

    def dies_at(n_die):
        def respond(system, user, n):
            if n == n_die:
                raise KeyboardInterrupt  # the process is killed mid-call
            return capable_generic(system, user, n)
        return respond

    with sqlite3.connect(db, check_same_thread=False) as conn:
        first = scripted(dies_at(6))
        agent = SurveyAgent(first, corpus, checkpointer=SqliteSaver(conn))
        with pytest.raises(KeyboardInterrupt):
            list(agent.stream("r", "language model agents"))
        done_before = SurveyDocument.from_dict(agent.state("r")["document"])
    written_before = [p for p, _, n in done_before.walk() if n.written]
    assert written_before  # the introduction at least was checkpointed
    with sqlite3.connect(db, check_same_thread=False) as conn:
        second = scripted(capable_generic)
        agent = SurveyAgent(second, corpus, checkpointer=SqliteSaver(conn))
        list(agent.stream("r"))
        result = agent.result("r")
    assert result.status == "complete"
    for position in written_before:
        assert result.document.node(position).content == done_before.node(position).content
    # The second process asked only for what was missing: no outline, no finished part again.
    assert not any(u.startswith("Write the outline") for _, u in second.prompts)


def test_the_step_limit_fails_clearly_and_a_higher_limit_resumes(corpus):
    agent = SurveyAgent(scripted(capable_generic), corpus, max_steps=4)
    list(agent.stream("r", "language model agents"))
    result = agent.result("r")
    assert result.status == "failed" and "step limit (4 model calls)" in result.error
    assert result.steps == 4
    list(agent.stream("r", max_steps=100))
    assert agent.result("r").status == "complete"


def test_a_query_the_corpus_knows_nothing_of_fails_with_a_message(corpus):
    model = scripted(capable_generic)
    result = write_survey(model, corpus, "zzzqqq xxyyzz")
    assert result.status == "failed" and "the corpus has no papers on 'zzzqqq xxyyzz'" in result.error
    assert model.prompts == []  # no model call wasted on it
    with pytest.raises(MiniCPMError, match="empty"):
        write_survey(scripted(capable_generic), corpus, "   ")


def test_generic_helpers_read_small_model_replies():
    title, sections, problem = generic.parse_outline("Title: X and Y\n1. Alpha beta\n1.1 Gamma\n2) Delta\n3. Introduction\n4. Epsilon")
    assert problem is None and title == "X and Y"
    assert [s["title"] for s in sections] == ["Alpha beta", "Delta", "Epsilon"]
    assert sections[0]["subsections"] == [{"title": "Gamma"}]
    text, dropped = generic.numbers_to_citations("A [1]. B [2-3]. C [9].", ["2401.00001", "2401.00002", "2401.00003"])
    assert text == "A \\cite{arxivid2401.00001}. B \\cite{arxivid2401.00002, arxivid2401.00003}. C." and dropped == ["9"]
    assert generic.paragraph_problem("word " * 40, 0, 2).startswith("0 distinct papers")
    assert generic.repetition_problem("They are used. They are used. They are used. Fine.") is not None


# -- the command ----------------------------------------------------------------------------------

def cli(*args: str) -> tuple[int, str, str]:
    done = run_cli(*args)
    return done.returncode, done.stdout, done.stderr


def test_survey_command_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    code, _, err = cli("survey", "  ")
    assert code == 1 and "the survey query is empty" in err
    code, _, err = cli("survey")
    assert code == 1 and "say what the survey is about" in err
    code, _, err = cli("survey", "x", "--corpus", str(tmp_path / "nothing"))
    assert code == 1 and "no corpus folder" in err
    Corpus.open(tmp_path / "empty", create=True).close()
    code, _, err = cli("survey", "x", "--corpus", str(tmp_path / "empty"))
    assert code == 1 and "is empty" in err
    code, _, err = cli("survey", "x", "--out", str(tmp_path / "no" / "such" / "s.md"))
    assert code == 1 and "does not exist" in err
    code, _, err = cli("survey", "--resume", "nope")
    assert code == 1 and "there is no survey run 'nope'" in err


def test_survey_command_with_the_embedded_model_fails_at_the_step_limit_and_saves_the_partial(
        corpus, tmp_path, monkeypatch):
    """The real embedded model for a few calls: the run stops at --max-steps, says how to resume,
    and the partial survey is written beside the requested file (which is not touched)."""
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    out = tmp_path / "survey.md"
    out.write_text("an earlier survey\n")
    code, _, err = cli("survey", "language model agents", "--corpus", str(corpus.path), "--out", str(out),
                       "--bib", str(tmp_path / "refs.bib"), "--max-steps", "3", "--threads", "2")
    assert code == 1, err
    assert "step limit (3 model calls)" in err and "minicpm survey --resume" in err
    assert out.read_text() == "an earlier survey\n"
    partial = (tmp_path / "survey.partial.md").read_text()
    assert partial.startswith("# ") and "Not written yet" in partial
    run_id = re.search(r"--resume (\w+)", err).group(1)
    code, _, err = cli("survey", "--resume", run_id, "--max-steps", "3")
    assert code == 1 and "step limit" in err  # resumed, and still out of steps
