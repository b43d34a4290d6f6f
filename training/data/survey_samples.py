"""Survey-writing samples in MiniCPM4-Survey's action format: Query2Plan and Plan2Survey.

    python -m training.data.survey_samples --out training/data/survey/samples.jsonl [--corpus DIR]

Upstream trained on expert surveys rewritten by an LLM and never released them (upstream-apps.md
sections 1.5 and 3.1). These samples are made from the paper corpus alone, one survey per topic of
benchmarks/data/survey_topics.json (and any --query):

- Query2Plan: the first step after the opening search. The user prompt (agents/survey_agent/
  prompts.py, exactly as the agent builds it) holds the query, the empty survey and the retrieved
  papers; the answer is the plan ({"update": "plan", ...}): sections group the retrieved papers in
  rank order, each headed by the phrases that set its papers' titles apart (agents/survey_agent/
  generic.py distinctive_heading), then a search for the first section.
- Plan2Survey: one step per section. The prompt shows the survey so far (abbreviated as the agent
  shows it) and the section's papers as the search results; the answer writes the section from the
  first sentence of each paper's abstract, each cited with its bibkey, then searches for the next
  section (or finalizes after the last).

Every citation names a paper in that step's retrieved list, so survey_reward (training/rewards.py)
scores the targets 1.0. Each sample carries "retrieved" (the bibkeys shown) for the RL reward.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "survey" / "samples.jsonl"
TOPICS = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "survey_topics.json"
PAPERS_PER_SECTION = 4
SECTIONS = 3


def response(think: str, update: dict[str, Any] | None, next_think: str, call: dict[str, Any]) -> str:
    answer = json.dumps(update, ensure_ascii=False) if update else "{}"
    return (f"<think> {think} </think>\n<answer> {answer} </answer>\n"
            f"<think> {next_think} </think>\n<tool_call> {json.dumps(call, ensure_ascii=False)} </tool_call>")


def search_call(keywords: list[str]) -> dict[str, Any]:
    return {"name": "search_engine", "arguments": {"query": keywords}}


def survey_for(query: str, papers: list, other_titles: list[str]) -> list[dict[str, Any]]:
    """The Query2Plan sample and the Plan2Survey samples of one topic."""
    from agents.survey_agent import prompts
    from agents.survey_agent.generic import cite_sentence, distinctive_heading, first_sentence
    from agents.survey_agent.retrieval import format_result
    from survey.citations import paper_key
    from survey.document import SurveyDocument

    groups = [papers[i * PAPERS_PER_SECTION : (i + 1) * PAPERS_PER_SECTION] for i in range(SECTIONS)]
    groups = [g for g in groups if g]
    headings = []
    for i, group in enumerate(groups):
        others = [p.title for j, g in enumerate(groups) if j != i for p in g] + other_titles
        headings.append(distinctive_heading([p.title for p in group], others) or group[0].title)
    plan = {"title": f"A Survey of {query[:1].upper() + query[1:]}",
            "abstract": {"plan": f"What the survey covers about {query}."},
            "introduction": {"plan": f"Why {query} matters and how the survey is organised."},
            "sections": [{"title": h, "plan": "Covers: " + "; ".join(p.title for p in g), "subsections": []}
                         for h, g in zip(headings, groups, strict=True)],
            "conclusion": {"plan": "What the sections show together and what remains open."}}
    system = prompts.minicpm_system()
    document = SurveyDocument(query=query)
    samples = []
    shown = papers[: PAPERS_PER_SECTION * SECTIONS]
    user = prompts.minicpm_user(query, document.abbreviated(), prompts.FIRST_PLAN, [format_result(p, 400) for p in shown])
    reply = response(f"The results cover {len(groups)} themes; I plan one section for each.",
                     {"update": "plan", "content": plan},
                     f"Next I will write section-1 ({headings[0]}); I search for its papers.",
                     search_call([headings[0]]))
    samples.append({"kind": "query2plan", "query": query, "retrieved": [paper_key(p.id) for p in shown],
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                                 {"role": "assistant", "content": reply}]})
    document.update("plan", plan)
    last_plan = f"Next I will write section-1 ({headings[0]}); I search for its papers."
    for i, (heading, group) in enumerate(zip(headings, groups, strict=True), 1):
        sentences = [first_sentence(p.abstract, min_words=4) for p in group]
        content = " ".join(cite_sentence(s, p.id) for s, p in zip(sentences, group, strict=True) if s)
        if not content:
            continue
        following = f"section-{i + 1} ({headings[i]})" if i < len(groups) else None
        next_think = f"Next I will write {following}; I search for its papers." if following else \
            "The sections are written; the remaining parts follow from them."
        call = search_call([headings[i]]) if following else {"name": "finalize", "arguments": {}}
        user = prompts.minicpm_user(query, document.abbreviated(), last_plan, [format_result(p, 400) for p in group])
        reply = response(f"I write section-{i} on {heading} from the retrieved papers, citing each.",
                         {"update": f"section-{i}", "content": content}, next_think, call)
        samples.append({"kind": "plan2survey", "query": query, "retrieved": [paper_key(p.id) for p in group],
                        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                                     {"role": "assistant", "content": reply}]})
        document.update(f"section-{i}", content)
        last_plan = next_think
    return samples


def build(corpus_path: Path | None, queries: list[str], log=print) -> list[dict[str, Any]]:
    from survey.corpus import Corpus
    from survey.corpus.search import search

    with tempfile.TemporaryDirectory(prefix="survey_samples_") as tmp:
        if corpus_path is None:  # the shipped sample, bm25 only (no embedder needed)
            from survey.corpus import shipped_sample

            corpus_path = Path(tmp) / "corpus"
            with Corpus.open(corpus_path, create=True) as corpus:
                corpus.ingest([shipped_sample()], embed=False)
        samples = []
        with Corpus.open(corpus_path) as corpus:
            for query in queries:
                papers = search(corpus, query, k=PAPERS_PER_SECTION * SECTIONS + 8, mode="bm25")
                if len(papers) < PAPERS_PER_SECTION * 2:
                    log(f"skipped '{query}': the corpus has only {len(papers)} matching papers")
                    continue
                samples += survey_for(query, papers[: PAPERS_PER_SECTION * SECTIONS],
                                      [p.title for p in papers[PAPERS_PER_SECTION * SECTIONS :]])
        return samples


def main(argv: list[str] | None = None) -> int:
    from training.data.mcp_trajectories import write_jsonl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the JSONL file to write")
    parser.add_argument("--corpus", type=Path, default=None, help="a corpus folder (default: the shipped sample)")
    parser.add_argument("--query", action="append", default=[], help="a survey query (repeatable); default: the "
                                                                      "survey benchmark's topics")
    args = parser.parse_args(argv)
    queries = args.query or [t["query"] for t in json.loads(TOPICS.read_text(encoding="utf-8"))["topics"]]
    samples = build(args.corpus, queries, lambda m: print(m, file=sys.stderr))
    write_jsonl(args.out, samples)
    kinds = {k: sum(s["kind"] == k for s in samples) for k in ("query2plan", "plan2survey")}
    print(f"{kinds['query2plan']} Query2Plan and {kinds['plan2survey']} Plan2Survey samples -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
