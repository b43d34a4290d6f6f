"""The survey agent writing a survey per topic from a local corpus, scored by automatic metrics.

Each topic of benchmarks/data/survey_topics.json (a query and a few title patterns) is one run of
agents.survey_agent.write_survey on the same corpus: by default the 2,000 arXiv cs.AI papers that
ship with the suite (the default corpus when it holds exactly that sample, else the sample built
into a scratch corpus), or --corpus DIR. Metrics per survey (survey/evaluation.py):

- structure: share of the planned parts written (abstract, introduction, every (sub)(sub)section,
  conclusion), title / abstract / introduction / conclusion present, sections, subsections and
  sub-subsections, depth, words in all and per part, and whether the survey is complete;
- citation validity: the share of \\cite keys that name a paper retrieved in the run (by
  occurrence and by distinct paper). The agent grounds every citation, so anything under 100% is a
  bug; the unresolved keys are listed;
- citation support: for every sentence carrying a \\cite, the cosine similarity (all-MiniLM-L6-v2,
  the corpus's embedder) between the sentence without its citations and the cited papers' title +
  abstract; the sentence is supported when its best cited paper reaches the threshold. Reported:
  the supported share, the share over (sentence, paper) pairs, the mean similarity, every sentence;
- coverage: recall of the topic's relevant papers among the papers retrieved in the run and among
  those cited. Relevant = the corpus papers whose title matches one of the topic's patterns
  (e.g. "retrieval[- ]augmented|\\bRAG\\b"): a rule anyone can check, independent of the retriever
  under test; it misses on-topic papers that do not name the topic in their title, so this is the
  recall of the papers that clearly are on it;
- retrieval latency (p50/p95 of the run's search calls) and wall time per survey.

The support threshold is measured on the corpus in the same run unless --threshold is given
(survey/evaluation.py: calibrate_support_threshold). Stand-ins for a survey sentence citing a paper
(its title, or one sentence of its abstract) are compared with that paper's text (positives) and with
a random other paper of the same corpus (negatives); the threshold is the one that best separates
the two (maximum balanced accuracy). The 95th percentile of the negatives (5% of wrong citations
accepted) is recorded beside it; on the shipped sample the two nearly coincide (about 0.34). The
distributions go into the JSON, with the similarity to each stand-in's nearest other paper, which
the threshold does not separate: this metric catches a citation on the wrong subject, not a citation
of the wrong paper on the right subject.

This measures the model; a small model writing an incomplete or poorly supported survey is a
result, not a bug. Writes benchmarks/results/survey_eval.json (or --out): per topic the metrics,
the survey's title, outline and first 300 characters (not the whole text), and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json

TOPICS = Path(__file__).parent / "data" / "survey_topics.json"
PREVIEW_CHARS = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model reference (default: the embedded model)")
    parser.add_argument("--backend", default="auto", help="torch, gguf, openai or auto (auto)")
    parser.add_argument("--base-url", default=None, help="the openai backend's server")
    parser.add_argument("--mode", choices=("generic", "minicpm"), default="generic",
                        help="the agent's prompting: generic (any chat model) or minicpm (MiniCPM4-Survey's) (generic)")
    parser.add_argument("--topics", type=Path, default=TOPICS, help="topics JSON (benchmarks/data/survey_topics.json)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N topics")
    parser.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                        help="corpus folder (default: the shipped 2,000-paper sample)")
    parser.add_argument("--max-steps", type=int, default=None, help="agent steps per survey (default: the agent's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per model turn (default: the model's)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model")
    parser.add_argument("--seed", type=int, default=0, help="sampling and calibration seed (0)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="citation-support threshold (default: calibrated on the corpus in this run)")
    parser.add_argument("--calibration-papers", type=int, default=500, metavar="N",
                        help="papers drawn to calibrate the threshold (500)")
    parser.add_argument("--out", type=Path, default=RESULTS / "survey_eval.json")


# ---- inputs -------------------------------------------------------------------------------------

def load_topics(path: Path) -> list[dict[str, Any]]:
    """The topics of a JSON file ({"topics": [{"id", "query", "title_patterns"}]}), checked."""
    import re

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read topics from {path}: {exc}") from None
    topics = raw.get("topics") if isinstance(raw, dict) else raw
    if not isinstance(topics, list) or not topics:
        raise ValueError(f"{path} has no topics: expected {{\"topics\": [{{\"query\": ..., \"title_patterns\": [...]}}]}}")
    for i, topic in enumerate(topics, 1):
        if not isinstance(topic, dict) or not str(topic.get("query", "")).strip():
            raise ValueError(f"{path}: topic {i} needs a query")
        patterns = topic.get("title_patterns")
        if not isinstance(patterns, list) or not patterns:
            raise ValueError(f"{path}: topic {i} ({topic['query']!r}) needs a list of title_patterns")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise ValueError(f"{path}: topic {i}: bad title pattern {pattern!r}: {exc}") from None
        topic.setdefault("id", f"topic-{i}")
    return topics


def sample_ids() -> set[str]:
    from survey.corpus import shipped_sample

    with gzip.open(shipped_sample(), "rt", encoding="utf-8") as f:
        return {json.loads(line)["id"] for line in f if line.strip()}


def holds_exactly_the_sample(corpus) -> bool:
    """Whether a corpus is the shipped sample, every paper embedded (so its numbers compare with the README's)."""
    if len(corpus) == 0 or corpus.vector_count() != len(corpus):
        return False
    ids = sample_ids()
    if len(corpus) != len(ids):
        return False
    with corpus.lock:
        stored = {row[0] for row in corpus.db.execute("SELECT id FROM papers")}
    return stored == ids


def open_corpus(path: Path | None, scratch: Path):
    """(corpus, how it was chosen): --corpus as given, the default corpus if it is the shipped
    sample, else the sample ingested into a scratch folder (a few minutes on a laptop)."""
    from survey.corpus import Corpus, default_corpus_path, shipped_sample

    if path is not None:
        corpus = Corpus.open(path)
        if corpus.vector_count() < len(corpus):
            print(f"note: {corpus.vector_count()} of {len(corpus)} papers in {path} have vectors; "
                  "dense and hybrid search see only those")
        return corpus, "--corpus"
    default = default_corpus_path()
    if (default / "corpus.sqlite").is_file():
        corpus = Corpus.open(default)
        if holds_exactly_the_sample(corpus):
            return corpus, "the default corpus (the shipped sample)"
        corpus.close()
    print(f"building the shipped sample into a scratch corpus in {scratch} ...", flush=True)
    corpus = Corpus.open(scratch / "corpus", create=True)
    corpus.ingest([shipped_sample()])
    return corpus, "the shipped sample, built for this run"


@dataclass
class FailedRun:
    """What a run that raised before returning a SurveyResult is scored as: nothing written."""

    document: Any
    error: str
    run_id: str | None = None
    status: str = "failed"
    steps: int = 0
    papers: dict = field(default_factory=dict)
    searches: list = field(default_factory=list)


# ---- one survey ---------------------------------------------------------------------------------

def outline(document) -> list[str]:
    """'2.1 Title' for every (sub)(sub)section, indented by depth."""
    if not document.planned:
        return []
    return [f"{'  ' * depth}{document.label(position)}" for position, depth, _ in document.walk()
            if position.startswith("section")]


def preview(document, chars: int = PREVIEW_CHARS) -> str:
    """The first characters of the survey's written text, in write order."""
    from survey.evaluation import written_texts

    text = "\n\n".join(content for _, content in written_texts(document))
    return text[:chars] + ("..." if len(text) > chars else "")


def evaluate_result(result, corpus, embedder, threshold: float, relevant_ids: set[str]) -> dict[str, Any]:
    """Every metric for one survey run (an agents.survey_agent.SurveyResult or anything with its
    fields: run_id, status, error, document, papers, searches, steps).

    Citation support compares against the papers retrieved in the run; a cited id that was not
    retrieved (an invalid citation) is looked up in the corpus so its sentence is still scored,
    and citation validity reports it. Coverage by citation counts valid citations only."""
    from survey.corpus.paper import normalize_id
    from survey.evaluation import citation_support, citation_validity, coverage, latency, structure

    document = result.document
    retrieved = {normalize_id(pid): paper for pid, paper in result.papers.items()}
    validity = citation_validity(document, retrieved)
    papers = dict(retrieved)
    for entry in validity["unresolved"]:
        found = corpus.get(entry["id"]) if entry["id"] else None
        if found is not None:
            papers[found.id] = found
    support = citation_support(document, papers, embedder, threshold)
    cited_valid = [pid for pid in validity["cited_ids"] if pid in retrieved]
    searches = list(result.searches or [])
    return {
        "run_id": result.run_id,
        "status": result.status,
        "error": result.error,
        "steps": result.steps,
        "title": document.title,
        "outline": outline(document),
        "preview": preview(document),
        "structure": structure(document),
        "citations": validity,
        "support": support,
        "coverage": {"retrieved": coverage(retrieved, relevant_ids), "cited": coverage(cited_valid, relevant_ids)},
        "retrieval": {"calls": len(searches), "queries": sum(len(s.queries) for s in searches),
                      "papers": len(retrieved), "latency_s": latency(s.seconds for s in searches)},
    }


# ---- all surveys --------------------------------------------------------------------------------

def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Across topics: means of per-survey shares, pooled counts where pooling is the honest figure
    (citation validity and support over all citations and sentences), latency over all searches."""
    from survey.evaluation import latency

    citations = sum(r["citations"]["citations"] for r in records)
    valid = sum(r["citations"]["valid"] for r in records)
    sentences = sum(r["support"]["sentences"] for r in records)
    supported = sum(r["support"]["supported"] for r in records)
    similarities = [s["similarity"] for r in records for s in r["support"]["per_sentence"]]
    search_seconds = [s for r in records for s in r.get("search_seconds", [])]
    return {
        "topics": len(records),
        "completed": sum(r["status"] == "complete" for r in records),
        "complete_documents": sum(bool(r["structure"]["complete"]) for r in records),
        "written_share_mean": _mean(r["structure"]["written_share"] for r in records),
        "sections_mean": _mean(r["structure"]["sections"] for r in records),
        "words_mean": _mean(r["structure"]["words"] for r in records),
        "citations": citations,
        "citation_validity": round(valid / citations, 4) if citations else None,
        "cited_sentences": sentences,
        "citation_support": round(supported / sentences, 4) if sentences else None,
        "similarity_mean": round(sum(similarities) / len(similarities), 4) if similarities else None,
        "recall_retrieved_mean": _mean(r["coverage"]["retrieved"]["recall"] for r in records),
        "recall_cited_mean": _mean(r["coverage"]["cited"]["recall"] for r in records),
        "retrieval_latency_s": latency(search_seconds),
        "wall_s": latency(r["wall_s"] for r in records),
    }


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def markdown_table(records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [("| topic | status | written | sections | words | citations | valid | supported | "
              "recall (retrieved) | recall (cited) | search p50 ms | s/survey |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        s, c, sup, cov = r["structure"], r["citations"], r["support"], r["coverage"]
        lines.append(f"| {r['topic']} | {r['status']} | {_pct(s['written_share'])} | {s['sections']} | {s['words']} | "
                     f"{c['citations']} | {_pct(c['valid_share'])} | {_pct(sup['supported_share'])} | "
                     f"{_pct(cov['retrieved']['recall'])} | {_pct(cov['cited']['recall'])} | "
                     f"{_ms(r['retrieval']['latency_s']['p50'])} | {r['wall_s']:.0f} |")
    m = summary
    lines.append(f"| **all** | {m['completed']}/{m['topics']} complete | {_pct(m['written_share_mean'])} | "
                 f"{m['sections_mean'] if m['sections_mean'] is not None else '-'} | {m['words_mean'] or 0:.0f} | "
                 f"{m['citations']} | {_pct(m['citation_validity'])} | {_pct(m['citation_support'])} | "
                 f"{_pct(m['recall_retrieved_mean'])} | {_pct(m['recall_cited_mean'])} | "
                 f"{_ms(m['retrieval_latency_s']['p50'])} | {m['wall_s']['mean'] or 0:.0f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from agents.chat_model import ChatMiniCPM
    from agents.survey_agent import write_survey
    from runtime.errors import MiniCPMError
    from survey.document import SurveyDocument
    from survey.evaluation import calibrate_support_threshold, relevant_papers

    topics = load_topics(args.topics)
    topics = topics[: args.limit] if args.limit else topics
    load = {k: v for k, v in (("base_url", args.base_url), ("threads", args.threads)) if v is not None}
    sampling = {"max_tokens": args.max_tokens} if args.max_tokens else {}
    model = ChatMiniCPM.from_model(model=args.model, backend=args.backend, temperature=args.temperature,
                                   seed=args.seed, **sampling, **load)
    agent_options = {"max_steps": args.max_steps} if args.max_steps else {}
    records = []
    with tempfile.TemporaryDirectory(prefix="minicpm-survey-bench-") as scratch:
        corpus, corpus_source = open_corpus(args.corpus, Path(scratch))
        try:
            embedder = corpus.embedder()
            calibration = None
            if args.threshold is None:
                print(f"calibrating the citation-support threshold on {args.calibration_papers} papers ...", flush=True)
                calibration = calibrate_support_threshold(corpus, embedder, n=args.calibration_papers, seed=args.seed)
                threshold = calibration["threshold"]
            else:
                threshold = args.threshold
            print(f"citation-support threshold: {threshold}", flush=True)
            for topic in topics:
                relevant = relevant_papers(corpus, topic)
                print(f"[{topic['id']}] {topic['query']!r}: {len(relevant)} relevant papers; writing ...", flush=True)
                began = time.perf_counter()
                try:
                    result = write_survey(model, corpus, topic["query"], mode=args.mode, **agent_options)
                except MiniCPMError as exc:  # a run the agent could not start: scored as empty, the others go on
                    result = FailedRun(document=SurveyDocument(query=topic["query"]), error=str(exc))
                wall = time.perf_counter() - began
                record = {"topic": topic["id"], "query": topic["query"], "title_patterns": topic["title_patterns"],
                          **evaluate_result(result, corpus, embedder, threshold, relevant), "wall_s": round(wall, 2),
                          "search_seconds": [round(s.seconds, 4) for s in result.searches or []]}
                records.append(record)
                print(f"[{topic['id']}] {record['status']} in {wall:.0f} s"
                      + (f": {record['error']}" if record["error"] else ""), flush=True)
            corpus_info = {"source": corpus_source, "path": str(args.corpus) if args.corpus else None,
                           "papers": len(corpus), "with_vectors": corpus.vector_count()}
        finally:
            corpus.close()
    summary = summarize(records)
    result = {
        "benchmark": "survey_eval",
        "command": bench_command("survey_eval"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model.model_name, "backend": model.backend.name, "mode": args.mode,
        "max_steps": args.max_steps, "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed,
        "commit": source_version("runtime", "agents", "survey", "benchmarks"),
        "machine": machine(),
        "corpus": corpus_info,
        "threshold": threshold,
        "threshold_source": "calibrated in this run" if calibration else "--threshold",
        "calibration": calibration,
        "summary": summary,
        "topics": records,
    }
    write_json(args.out, result)
    print(markdown_table(records, summary))
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
