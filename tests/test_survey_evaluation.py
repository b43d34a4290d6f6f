"""Survey metrics (survey/evaluation.py) and the survey benchmark's scoring (benchmarks/survey_eval.py).

Documents are made by hand (a complete one and a partial one, citing retrieved and non-retrieved
papers). Citation support and the threshold calibration run the real MiniLM embedder on a corpus of
the first 60 papers of the shipped arXiv sample; a bag-of-words stand-in embedder checks that the
calibration is deterministic without paying for the model twice.
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest

from benchmarks.survey_eval import TOPICS, evaluate_result, load_topics, markdown_table, summarize
from survey.citations import paper_key
from survey.corpus import Corpus, Paper, shipped_sample
from survey.document import SurveyDocument
from survey.evaluation import (
    best_balanced_threshold,
    calibrate_support_threshold,
    citation_support,
    citation_validity,
    coverage,
    latency,
    relevant_papers,
    split_sentences,
    strip_citations,
    structure,
)

N_PAPERS = 60
OUTSIDE = "2499.99999"  # an arXiv id no run retrieved


def sample_lines(n: int | None = None) -> list[str]:
    with gzip.open(shipped_sample(), "rt", encoding="utf-8") as f:
        return list(itertools.islice(f, n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "papers.jsonl"
    src.write_text("".join(sample_lines(N_PAPERS)), encoding="utf-8")
    c = Corpus.open(tmp_path_factory.mktemp("corpus") / "c", create=True)
    c.ingest([src])
    yield c
    c.close()


@pytest.fixture(scope="module")
def papers(corpus) -> list[Paper]:
    return [Paper(**{k: v for k, v in json.loads(line).items() if k in Paper.__dataclass_fields__})
            for line in sample_lines(N_PAPERS)]


def cite(*papers_or_ids) -> str:
    return "\\cite{" + ", ".join(paper_key(p if isinstance(p, str) else p.id) for p in papers_or_ids) + "}"


PLAN = {"title": "A survey", "abstract": {"plan": "a"}, "introduction": {"plan": "i"}, "conclusion": {"plan": "c"},
        "sections": [{"title": "Methods", "plan": "m",
                      "subsections": [{"title": "Models", "plan": "mm",
                                       "subsubsections": [{"title": "Small models", "plan": "s"}]},
                                      {"title": "Data", "plan": "d"}]},
                     {"title": "Applications", "plan": "p"}]}


def make_document(papers: list[Paper], complete: bool) -> SurveyDocument:
    """abstract, introduction (+ for a complete one every section and the conclusion). Citations: the
    first paper's title as a sentence citing it; an unrelated sentence citing the second; a
    citation of a paper outside the run."""
    a, b, c = papers[:3]
    doc = SurveyDocument(query="q")
    doc.apply_plan(PLAN)
    doc.update("abstract", f"This survey covers {a.title.rstrip('.')} and related work {cite(a)}. It has five parts.")
    doc.update("introduction", f"The weather in Paris is mild in the spring, e.g. in April {cite(b)}. "
                               f"Others disagree. {cite(OUTSIDE)} Work continues {cite(a, c)}.")
    if complete:
        for position in doc.positions()[2:]:
            doc.update(position, f"Text of {position} with four words more {cite(c)}.")
    return doc


# ---- structure ----------------------------------------------------------------------------------

def test_structure_of_a_complete_and_a_partial_document(papers):
    full = structure(make_document(papers, complete=True))
    assert full["parts"] == 8 and full["written"] == 8 and full["written_share"] == 1.0
    assert (full["sections"], full["subsections"], full["subsubsections"], full["max_depth"]) == (2, 2, 1, 3)
    assert full["has_title"] and full["has_abstract"] and full["has_introduction"] and full["has_conclusion"]
    assert full["complete"] and full["unwritten"] == []
    assert full["words_per_part_min"] == 7  # "Text of conclusion with four words more." (no citation)

    partial = structure(make_document(papers, complete=False))
    assert partial["written"] == 2 and partial["written_share"] == 0.25
    assert not partial["complete"] and not partial["has_conclusion"]
    assert partial["unwritten"][0] == "section-1" and partial["unwritten"][-1] == "conclusion"
    assert partial["words"] < full["words"]

    empty = structure(SurveyDocument(query="q"))
    assert empty["parts"] == 0 and empty["written_share"] == 0.0 and empty["max_depth"] == 0 and not empty["complete"]


# ---- citation validity --------------------------------------------------------------------------

def test_citation_validity_counts_occurrences_and_lists_what_was_not_retrieved(papers):
    retrieved = [p.id for p in papers[:3]]
    full = citation_validity(make_document(papers, complete=True), retrieved)
    # abstract a; introduction b, OUTSIDE, a, c; six other parts c each
    assert full["citations"] == 11 and full["distinct"] == 4 and full["valid"] == 10
    assert full["valid_share"] == round(10 / 11, 4) and full["valid_share_distinct"] == 0.75
    assert full["unresolved"] == [{"key": paper_key(OUTSIDE), "id": OUTSIDE, "position": "introduction"}]
    assert full["parts_citing_share"] == 1.0

    partial = citation_validity(make_document(papers, complete=False), [*retrieved, OUTSIDE])
    assert partial["citations"] == 5 and partial["valid_share"] == 1.0 and partial["unresolved"] == []

    doc = SurveyDocument(query="q")
    doc.apply_plan(PLAN)
    doc.update("abstract", "No citations here.")
    none = citation_validity(doc, retrieved)
    assert none["citations"] == 0 and none["valid_share"] is None and none["parts_citing_share"] == 0.0


# ---- sentences ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Sparse attention helps, e.g. InfLLM v2 \\cite{arxivid2506.07900}. It is 3.5x faster. Done.",
     ["Sparse attention helps, e.g. InfLLM v2 \\cite{arxivid2506.07900}.", "It is 3.5x faster.", "Done."]),
    ("Smith et al. \\cite{a} show this. Then i.e. Fig. 2 agrees. Eq. 3 holds.",
     ["Smith et al. \\cite{a} show this.", "Then i.e. Fig. 2 agrees.", "Eq. 3 holds."]),
    ("It was shown. \\cite{arxivid2401.00698} The next one.",
     ["It was shown. \\cite{arxivid2401.00698}", "The next one."]),
    ("It was shown.\\cite{x, y} The next one.", ["It was shown. \\cite{x, y}", "The next one."]),
    ("First claim \\cite{a}. \\cite{b}. Second claim.", ["First claim \\cite{a}. \\cite{b}", "Second claim."]),
    ("Accuracy rose from 0.85 to 0.91 (v. 2.1). Is it enough? Yes!",
     ["Accuracy rose from 0.85 to 0.91 (v. 2.1).", "Is it enough?", "Yes!"]),
    ("Lists, images, etc. The end. Tools etc. and more.", ["Lists, images, etc.", "The end.", "Tools etc. and more."]),
    ("J. Smith wrote it. He said \"so.\" Then left.", ["J. Smith wrote it.", "He said \"so.\"", "Then left."]),
    ("One paragraph.\n\n\\cite{k} starts the next.\n- an item \\cite{z}\n- another item",
     ["One paragraph.", "\\cite{k} starts the next.", "- an item \\cite{z}", "- another item"]),
    ("No final period \\cite{a}", ["No final period \\cite{a}"]),
    ("", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_strip_citations():
    assert strip_citations("Shown before \\cite{a, b}. And (see \\citep{c}) here \\cite{d}.") == "Shown before. And (see) here."
    assert strip_citations("As shown (\\cite{a}), it works \\cite*[p. 3]{b} .") == "As shown, it works."


# ---- citation support (the real embedder) -------------------------------------------------------

def test_citation_support_scores_each_cited_sentence(corpus, papers):
    embedder = corpus.embedder()
    doc = make_document(papers, complete=False)
    retrieved = {p.id: p for p in papers[:3]}
    result = citation_support(doc, retrieved, embedder, threshold=0.34)
    rows = result["per_sentence"]
    # abstract: 1 cited sentence; introduction: weather (b), "Others disagree. \cite{OUTSIDE}" (not
    # retrieved: left out), "Work continues" (a, c)
    assert result["sentences"] == 3 and result["without_papers"] == 1
    title_row, weather_row, continues_row = rows
    assert title_row["ids"] == [papers[0].id] and title_row["supported"] and title_row["similarity"] > 0.5
    assert weather_row["ids"] == [papers[1].id] and not weather_row["supported"] and weather_row["similarity"] < 0.2
    assert "\\cite" not in weather_row["sentence"] and weather_row["sentence"].endswith("April.")
    assert continues_row["ids"] == [papers[0].id, papers[2].id]
    assert result["supported"] == sum(r["supported"] for r in rows)
    assert result["supported_share"] == round(result["supported"] / 3, 4)
    assert result["mean_similarity"] == pytest.approx(np.mean([r["similarity"] for r in rows]), abs=1e-4)

    nothing = citation_support(SurveyDocument(query="q"), retrieved, embedder, 0.34)
    assert nothing["sentences"] == 0 and nothing["supported_share"] is None


# ---- calibration --------------------------------------------------------------------------------

def test_calibration_puts_the_threshold_between_the_distributions(corpus):
    result = calibrate_support_threshold(corpus, corpus.embedder(), n=40, seed=0)  # 40 of the 60: ~160 texts
    random_median = result["negatives"]["random"]["p50"]
    assert random_median < result["threshold"] < result["positives"]["title"]["p50"]
    assert random_median < result["threshold"] < result["positives"]["sentence"]["p50"]
    assert result["balanced_accuracy"] > 0.8
    assert result["negatives"]["nearest"]["p50"] > random_median  # a near neighbour is harder than a random paper
    assert result["at_threshold"]["positives_kept"] > 0.8 and result["at_threshold"]["random_accepted"] < 0.2
    assert result["papers"] == 40 and result["corpus_papers"] == N_PAPERS and result["positives"]["title"]["n"] == 40
    assert result["negatives"]["random"]["n"] == 80


class WordHashEmbedder:
    """Bag-of-words vectors: deterministic, instant, and similar texts share words."""

    name, dim = "word-hash", 384

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, zlib.crc32(word.encode()) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_calibration_is_deterministic_for_a_seed(tmp_path):
    src = tmp_path / "papers.jsonl"
    src.write_text("".join(sample_lines(N_PAPERS)), encoding="utf-8")
    with Corpus.open(tmp_path / "c", create=True) as c:
        c.ingest([src], embed=False)  # no stored vectors: the paper side is embedded by the stand-in too
        first = calibrate_support_threshold(c, WordHashEmbedder(), n=30, seed=1)
        again = calibrate_support_threshold(c, WordHashEmbedder(), n=30, seed=1)
        other = calibrate_support_threshold(c, WordHashEmbedder(), n=30, seed=2)
    assert first == again
    assert other["positives"] != first["positives"]


def test_best_balanced_threshold():
    threshold, balanced = best_balanced_threshold(np.array([0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3]))
    assert balanced == 1.0 and threshold == pytest.approx(0.45)  # the middle of the gap
    threshold, balanced = best_balanced_threshold(np.array([0.25, 0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3, 0.5]))
    assert balanced == 0.875 and 0.3 < threshold <= 0.6


# ---- coverage, topics, latency ------------------------------------------------------------------

def test_relevant_papers_is_a_title_rule_and_coverage_is_recall(corpus, papers):
    topic = {"query": "large language models", "title_patterns": [r"\bLLMs?\b", "language models?"]}
    relevant = relevant_papers(corpus, topic)
    expected = {p.id for p in papers if "llm" in p.title.lower().split() or "language model" in p.title.lower()}
    assert relevant and relevant <= {p.id for p in papers}
    assert {pid for pid in expected if pid in relevant} == expected
    some = sorted(relevant)[: len(relevant) // 2]
    result = coverage([*some, papers[0].id if papers[0].id not in relevant else OUTSIDE], relevant)
    assert result["relevant"] == len(relevant) and result["hit"] == len(some)
    assert result["recall"] == round(len(some) / len(relevant), 4)
    assert result["on_topic_share"] == round(len(some) / (len(some) + 1), 4)
    assert coverage([], set())["recall"] is None
    with pytest.raises(ValueError, match="title_patterns"):
        relevant_papers(corpus, {"query": "x"})


def test_each_benchmark_topic_has_enough_relevant_papers_in_the_shipped_sample(tmp_path):
    with Corpus.open(tmp_path / "sample", create=True) as c:
        c.ingest([shipped_sample()], embed=False)
        counts = {t["id"]: len(relevant_papers(c, t)) for t in load_topics(TOPICS)}
    assert len(counts) == 5, counts
    assert all(8 <= n <= 80 for n in counts.values()), counts


def test_load_topics_rejects_bad_files(tmp_path):
    bad = tmp_path / "topics.json"
    for text, message in [("{", "cannot read"), ('{"topics": []}', "no topics"),
                          ('{"topics": [{"query": "x"}]}', "title_patterns"),
                          ('{"topics": [{"query": "x", "title_patterns": ["("]}]}', "bad title pattern")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_topics(bad)


def test_latency():
    result = latency([0.1, 0.2, 0.3, 0.4, 1.0])
    assert result["count"] == 5 and result["p50"] == 0.3 and result["max"] == 1.0
    assert result["mean"] == pytest.approx(0.4) and 0.4 < result["p95"] <= 1.0
    assert latency([]) == {"count": 0, "p50": None, "p95": None, "mean": None, "max": None}


# ---- the benchmark's scoring of one run ---------------------------------------------------------

@dataclass
class FakeSearch:
    queries: list[str]
    ids: list[str]
    seconds: float


@dataclass
class FakeResult:
    """The fields of agents.survey_agent.SurveyResult that the benchmark reads."""

    document: SurveyDocument
    papers: dict[str, Paper]
    searches: list[FakeSearch] = field(default_factory=list)
    run_id: str = "run-1"
    status: str = "complete"
    error: str | None = None
    log: list[str] = field(default_factory=list)
    steps: int = 12


def test_evaluate_result_on_a_fake_run(corpus, papers):
    retrieved = {p.id: p for p in papers[:3]}
    result = FakeResult(document=make_document(papers, complete=True), papers=retrieved,
                        searches=[FakeSearch(["q1", "q2"], list(retrieved), 0.05), FakeSearch(["q3"], [], 0.15)])
    relevant = {papers[0].id, papers[1].id, papers[5].id, papers[6].id}
    record = evaluate_result(result, corpus, corpus.embedder(), 0.34, relevant)
    assert record["status"] == "complete" and record["steps"] == 12 and record["title"] == "A survey"
    assert record["outline"] == ["1 Methods", "  1.1 Models", "    1.1.1 Small models", "  1.2 Data", "2 Applications"]
    assert record["preview"].startswith("This survey covers") and len(record["preview"]) <= 303
    assert record["structure"]["complete"] and record["citations"]["valid_share"] == round(10 / 11, 4)
    assert record["citations"]["unresolved"][0]["id"] == OUTSIDE
    # OUTSIDE is in no corpus: its sentence cannot be compared; the others are
    assert record["support"]["without_papers"] == 1 and record["support"]["sentences"] == 9
    assert record["coverage"]["retrieved"] == {"relevant": 4, "found": 3, "hit": 2, "recall": 0.5,
                                               "on_topic_share": round(2 / 3, 4)}
    assert record["coverage"]["cited"]["hit"] == 2 and record["coverage"]["cited"]["found"] == 3  # valid citations only
    assert record["retrieval"]["calls"] == 2 and record["retrieval"]["queries"] == 3
    assert record["retrieval"]["latency_s"]["p50"] == pytest.approx(0.1)
    json.dumps(record)  # the benchmark writes it as JSON

    # a citation of a corpus paper the run did not retrieve: invalid, yet its sentence is still scored
    doc = make_document(papers, complete=False)
    doc.update("introduction", f"{papers[10].title} {cite(papers[10])}.")
    record2 = evaluate_result(FakeResult(document=doc, papers=retrieved), corpus, corpus.embedder(), 0.34, relevant)
    assert record2["citations"]["valid_share"] == 0.5 and record2["support"]["sentences"] == 2
    assert record2["coverage"]["cited"]["found"] == 1

    records = [{"topic": "t1", "wall_s": 10.0, "search_seconds": [0.05, 0.15], **record},
               {"topic": "t2", "wall_s": 20.0, "search_seconds": [], **record2}]
    summary = summarize(records)
    assert summary["topics"] == 2 and summary["completed"] == 2 and summary["complete_documents"] == 1
    assert summary["citations"] == 13 and summary["citation_validity"] == round(11 / 13, 4)
    assert summary["cited_sentences"] == 11 and summary["wall_s"]["mean"] == 15.0
    assert summary["retrieval_latency_s"]["count"] == 2
    table = markdown_table(records, summary)
    assert table.count("\n") == 4 and "| t1 | complete | 100% |" in table and "**all**" in table


def test_the_benchmark_end_to_end_with_a_scripted_agent(corpus, papers, tmp_path, monkeypatch, capsys):
    """run() with the agent and the model replaced: topics in, JSON and a table out."""
    import sys
    import types

    from agents.chat_model import ChatMiniCPM
    from benchmarks import survey_eval

    calls = []

    def write_survey(model, corpus_, query, *, mode="generic", **options):
        calls.append((query, mode, options))
        if "fail" in query:
            from runtime.errors import MiniCPMError

            raise MiniCPMError("the model is too small for this")
        found = corpus_.search(query, k=3, mode="bm25")
        doc = make_document(found + papers[:3], complete=True)
        return FakeResult(document=doc, papers={p.id: p for p in [*found, *papers[:3]]},
                          searches=[FakeSearch([query], [p.id for p in found], 0.01)])

    stub = types.SimpleNamespace(model_name="stub", backend=types.SimpleNamespace(name="scripted"))
    monkeypatch.setitem(sys.modules, "agents.survey_agent", types.SimpleNamespace(write_survey=write_survey))
    monkeypatch.setattr(ChatMiniCPM, "from_model", classmethod(lambda cls, **kw: stub))
    topics = tmp_path / "topics.json"
    topics.write_text(json.dumps({"topics": [
        {"id": "llm", "query": "large language models", "title_patterns": [r"\bLLMs?\b"]},
        {"id": "bad", "query": "fail here", "title_patterns": ["x"]},
        {"id": "skipped", "query": "z", "title_patterns": ["z"]}]}))
    out = tmp_path / "out.json"
    parser = __import__("argparse").ArgumentParser()
    survey_eval.add_arguments(parser)
    args = parser.parse_args(["--topics", str(topics), "--limit", "2", "--corpus", str(corpus.path),
                              "--threshold", "0.3", "--max-steps", "7", "--out", str(out)])
    assert survey_eval.run(args) == 0
    assert [c[0] for c in calls] == ["large language models", "fail here"] and calls[0][2] == {"max_steps": 7}
    result = json.loads(out.read_text())
    assert result["threshold"] == 0.3 and result["calibration"] is None and result["corpus"]["papers"] == N_PAPERS
    llm, bad = result["topics"]
    assert llm["status"] == "complete" and llm["retrieval"]["calls"] == 1 and llm["coverage"]["retrieved"]["relevant"] > 0
    assert bad["status"] == "failed" and "too small" in bad["error"] and bad["structure"]["written"] == 0
    assert result["summary"]["topics"] == 2 and result["summary"]["completed"] == 1
    assert "| llm | complete |" in capsys.readouterr().out
