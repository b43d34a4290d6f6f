"""The corpus-at-scale benchmark (benchmarks/corpus_scale.py) end to end on a tiny JSONL file: ingest
with --limit, latency per mode, the JSON it writes, and reusing the corpus it built."""

from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np
import pytest

from benchmarks import corpus_scale

TOPICS = ["sparse attention", "retrieval augmented generation", "graph neural networks", "speculative decoding",
          "diffusion models", "federated learning", "tool calling agents", "code generation", "3D reconstruction"]
NOUNS = ["benchmark", "survey", "language models", "robots", "molecules", "edge devices", "video", "privacy"]


def write_papers(path, n: int) -> None:
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            topic, noun = rng.choice(TOPICS), rng.choice(NOUNS)
            record = {"id": f"2401.{i:05d}", "title": f"{topic.title()} for {noun} at scale, part {i}",
                      "abstract": f"We study {topic} applied to {noun}; experiment {i} shows gains.",
                      "authors": [f"Author {i % 7}", f"Author {i % 11}"], "categories": ["cs.LG"],
                      "date": f"2024-01-{1 + i % 28:02d}"}
            f.write(json.dumps(record) + "\n")


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    corpus_scale.add_arguments(parser)
    return parser.parse_args(["--threads", "1", *argv])  # one torch thread: steady on a busy 2-core machine


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads sets it for the whole process


def test_run_writes_sane_results_and_reuses_the_corpus(tmp_path, capsys):
    data, folder, out = tmp_path / "papers.jsonl", tmp_path / "corpus", tmp_path / "result.json"
    write_papers(data, 250)
    argv = ("--data", str(data), "--corpus", str(folder), "--limit", "200", "--queries", "6", "--out", str(out))
    assert corpus_scale.run(bench_args(*argv)) == 0

    result = json.loads(out.read_text())
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # write_json: readable by others, as the other results
    assert result["benchmark"] == "corpus_scale"
    assert result["settings"]["limit"] == 200 and result["settings"]["queries"] == 6
    assert result["corpus"] == {**result["corpus"], "papers": 200, "with_vectors": 200}
    assert result["corpus"]["size_bytes"] > 0
    ingest = result["ingest"]
    assert ingest["measured"] is True and ingest["records"] == 200
    for name in ("bm25", "dense"):
        assert ingest[name]["papers"] == 200
        assert ingest[name]["seconds"] > 0 and ingest[name]["papers_per_s"] > 0
        assert ingest[name]["cpu_seconds"] > 0 and ingest[name]["stalled_s"] == 0
    assert ingest["dense"]["segments"] == 1
    assert result["load"]["vectors"] == 200 and result["load"]["vectors_s"] >= 0
    assert set(result["latency"]) == {"bm25", "dense", "hybrid"}
    for mode, m in result["latency"].items():
        assert 0 < m["p50_ms"] <= m["p95_ms"] <= m["max_ms"], mode
        assert m["mean_results"] > 0, mode
    assert result["latency"]["dense"]["mean_results"] == 10  # k, and every paper has a vector
    steps = result["hybrid_breakdown"]
    assert {"query_embedding", "numpy_scan", "bm25", "sum_of_steps"} <= set(steps)
    assert all(0 <= s["p50_ms"] <= s["p95_ms"] for s in steps.values())
    assert result["target"]["met"] == (result["latency"]["hybrid"]["p50_ms"] <= 50)
    queries = result["queries"]
    assert len(queries) == len(set(queries)) == 6
    assert queries[:2] == corpus_scale.QUERIES[:2]  # a fifth hand-written, the rest from titles
    assert all(len(q.split()) >= 2 for q in queries[2:])
    assert "| hybrid |" in capsys.readouterr().out  # the Markdown table

    # Same folder, data and --limit: latency only, with the throughput of the run that built it.
    assert corpus_scale.run(bench_args(*argv)) == 0
    again = json.loads(out.read_text())
    assert again["ingest"]["measured"] is False
    assert again["ingest"]["bm25"] == ingest["bm25"] and again["ingest"]["dense"] == ingest["dense"]
    assert again["queries"] == queries  # the same corpus and seed give the same queries
    assert "not re-measured" in capsys.readouterr().out

    # Another --limit in that folder is refused, not silently mixed in.
    with pytest.raises(SystemExit, match="--rebuild"):
        corpus_scale.run(bench_args("--data", str(data), "--corpus", str(folder), "--limit", "100",
                                    "--queries", "2", "--out", str(out)))


def test_a_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no data file at .*nothing.jsonl"):
        corpus_scale.run(bench_args("--data", str(tmp_path / "nothing.jsonl"), "--out", str(tmp_path / "r.json")))


def test_an_embedding_pass_cut_short_is_resumed_and_its_time_summed(tmp_path):
    data, folder, out = tmp_path / "papers.jsonl", tmp_path / "corpus", tmp_path / "result.json"
    write_papers(data, 60)
    argv = ("--data", str(data), "--corpus", str(folder), "--queries", "3", "--out", str(out))
    # A run killed during pass 2: pass 1 done, 20 vectors written and noted with the 4 s they took.
    from survey.corpus import Corpus

    identity = corpus_scale.data_identity(data.resolve(), None)
    with corpus_scale.IngestProgress() as progress:
        note = corpus_scale.measure_bm25_pass(folder, data.resolve(), None, identity, progress)
    with Corpus.open(folder) as corpus:  # the vectors of the first 20 papers, as embed_missing writes them
        corpus.set_meta("embedder", corpus.embedder().name)
        corpus.set_meta("embedding_dim", "384")
        vectors = np.random.default_rng(0).standard_normal((20, 384)).astype(np.float32)
        corpus.db.executemany("INSERT INTO vectors(pk, vector) VALUES (?, ?)",
                              [(pk, (v / np.linalg.norm(v)).tobytes()) for pk, v in enumerate(vectors, start=1)])
    note["ingest"]["dense"].update(papers=20, seconds=4.0, cpu_seconds=6.0, segments=1, embedder_load_s=1.0)
    corpus_scale.save_note(folder, note)

    assert corpus_scale.run(bench_args(*argv)) == 0
    dense = json.loads(out.read_text())["ingest"]["dense"]
    assert dense["segments"] == 2 and dense["papers"] == 60  # 20 noted + the 40 embedded now
    assert dense["seconds"] > 4.0 and dense["papers_per_s"] == round(60 / dense["seconds"], 1)
    assert dense["embedder_load_s"] == 1.0  # the first run's
    assert json.loads((folder / corpus_scale.NOTE).read_text())["state"] == "complete"
