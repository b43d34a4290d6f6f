"""The paper corpus at scale: ingest throughput and bm25/dense/hybrid query latency on ~140K real papers.

What is measured, in one run, on the real arXiv cs 2024-2026 file in shared data (140,877 papers,
--data), through the corpus's own API (survey/corpus/):

1. Ingest, in its two passes, each timed on its own:
   - bm25: `corpus.ingest([file], embed=False)`: reading the (gzipped) JSON lines, hashing, and the
     SQLite rows with their FTS5 index entries, committed in batches. Papers/s = papers added / wall.
   - dense: the MiniLM embedding pass (`survey.corpus.ingest.embed_missing`, what `ingest` runs after
     pass 1): every paper's title + abstract through all-MiniLM-L6-v2 and its vector committed.
     Papers/s = papers embedded / wall; loading the embedder (once per process) is timed apart.
   Each pass also records its process CPU seconds, and the gaps between the corpus's progress calls:
   time in gaps over 30 s (the process was stopped, or the machine suspended) is reported as
   stalled_s (a batch starved of CPU by other work counts too), with papers/s excluding it beside
   the plain wall-clock rate.
   --limit N ingests only the first N records (copied to a temporary file), for a quick run.
2. Query latency, per single query (batch 1), `corpus.search(q, k=10, mode=...)` for each mode
   (bm25, dense, hybrid), p50 and p95 over --queries queries, in a fresh Corpus.open() of the built
   corpus. First the one-time costs are timed on their own: reading every vector from SQLite into one
   [N, 384] matrix (`corpus.vectors()`, what a one-shot `minicpm corpus search` pays) and loading the
   embedder; then one warm-up query per mode; then each mode runs all queries, one mode after the other.
3. Where the hybrid time goes: the same queries through the steps `search(mode="hybrid")` takes,
   each timed on its own, one after the other (embedding the query, the numpy scan for the top 50,
   bm25 for the top 50, fusion plus fetching the papers) and their sum. search() itself embeds and
   scans on a worker thread beside bm25, so its hybrid time is below sum_of_steps. The issue's
   target is hybrid p50 <= 50 ms.

Queries (--queries N, default 100): a fifth (at most 20) are hand-written topical queries (QUERIES
below); the rest are derived deterministically from the corpus's own titles: papers picked with a
fixed seed (--seed), and from each title a run of 3 to 5 consecutive words at a seeded position
("prompt engineering to prompt", say). The same corpus and seed give the same queries; the JSON lists them.

--corpus DIR builds the corpus there (default: a temporary folder, removed at the end) and keeps a
note (corpus_scale.json) in DIR: the data file (path, size, mtime), --limit and the measured
throughput. Embedding 140K papers takes most of an hour on 2 cores, so the note is saved every few
seconds of that pass, and a run killed during it is resumed by the next run with the same DIR: the
dense papers/s is then the papers embedded over the seconds measured, summed over the runs
(dense.segments says how many). A later run with the same DIR, data and --limit reuses the complete
corpus, skips ingest (unless --rebuild) and only measures latency: the JSON's ingest section then says
`measured: false` and carries the numbers from the run(s) that built it. A DIR that holds some other
corpus, or one whose first pass did not finish, is refused unless --rebuild, which deletes its
corpus.sqlite* files first.

Writes benchmarks/results/corpus_scale.json (or --out) and prints a Markdown table. Other work on the
machine changes these numbers: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Self

import numpy as np

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json
from runtime.atomic import atomic_write_text

# The shared data folder beside the checkout (../shared, as CI and the developers' machines lay it).
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv" / "arxiv_cs_2024_2026.jsonl.gz"
NOTE = "corpus_scale.json"  # left in --corpus DIR: what was ingested there and how fast
MODES = ("bm25", "dense", "hybrid")
TARGET_HYBRID_P50_MS = 50.0

# What a user of the survey agent or `minicpm corpus search` types: topics, not titles.
QUERIES = [
    "sparse attention for long-context language models",
    "retrieval-augmented generation",
    "tool calling with small language models",
    "diffusion models for video generation",
    "speculative decoding for faster LLM inference",
    "mixture of experts routing",
    "LLM agents for software engineering",
    "hallucination detection in large language models",
    "vision-language models for robot manipulation",
    "federated learning with differential privacy",
    "graph neural networks for molecular property prediction",
    "reinforcement learning from human feedback",
    "quantization of large language models on edge devices",
    "low-resource machine translation",
    "automatic literature survey generation",
    "chain-of-thought reasoning in small models",
    "3D gaussian splatting",
    "text-to-SQL",
    "benchmarks for code generation",
    "adversarial robustness of image classifiers",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="FILE",
                        help=f"papers to ingest, JSON lines, gzipped or not ({DEFAULT_DATA})")
    parser.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                        help="where to build the corpus (default: a temporary folder); a corpus this benchmark "
                             "built there from the same --data and --limit is reused")
    parser.add_argument("--rebuild", action="store_true",
                        help="delete the corpus in --corpus DIR and ingest again, even if it could be reused")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="ingest only the first N records")
    parser.add_argument("--queries", type=int, default=100, metavar="N", help="queries per mode (100)")
    parser.add_argument("--k", type=int, default=10, help="results per query (10)")
    parser.add_argument("--seed", type=int, default=0, help="picks the titles queries are taken from (0)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads for the embedder (default: torch's own, one per core)")
    parser.add_argument("--out", type=Path, default=RESULTS / "corpus_scale.json", help="where to write the JSON")


# ---- progress -----------------------------------------------------------------------------------

STALL_S = 30.0  # a gap this long between progress calls (a batch takes a few seconds) is a pause


class IngestProgress:
    """The corpus's progress(phase, done, total) callback: a rich bar on a terminal, else a line now
    and then (a log of a run in the background stays short and readable). It also keeps the time of
    each call, so that a pass the process spent partly stopped (SIGSTOP, a suspended machine) shows
    up as stalled seconds instead of silently lowering papers/s."""

    def __init__(self, every_s: float = 60.0):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.every_s = every_s
        self.tasks: dict[str, object] = {}
        self.last: dict[str, float] = {}
        self.done: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.calls: dict[str, list[float]] = {}
        self.bar = None

    def __enter__(self) -> Self:
        if self.live:
            from rich import progress as rp

            self.bar = rp.Progress(rp.TextColumn("{task.description:<28}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                   rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), console=self.console)
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        self.calls.setdefault(phase, []).append(now)
        if self.bar is not None:
            if phase not in self.tasks:
                self.tasks[phase] = self.bar.add_task(phase, total=total)
            self.bar.update(self.tasks[phase], completed=done, total=total)
            return
        start = self.started.setdefault(phase, now)
        finished = done >= total and self.done.get(phase) != done
        if finished or done == 0 or now - self.last.get(phase, start) >= self.every_s:
            self.last[phase], self.done[phase] = now, done
            pct = 100 * done / total if total else 100.0
            print(f"  {phase}: {done:,}/{total:,} ({pct:.0f}%), {now - start:.0f} s", file=sys.stderr, flush=True)

    def gaps(self, prefix: str) -> dict:
        """The longest gap between progress calls of the phases starting with prefix, and the seconds
        spent in gaps over STALL_S."""
        gaps = [b - a for phase, times in self.calls.items() if phase.startswith(prefix)
                for a, b in pairwise(times)]
        return {"longest_gap_s": round(max(gaps, default=0.0), 2),
                "stalled_s": round(sum(g for g in gaps if g > STALL_S), 2)}


# ---- data and the corpus folder -----------------------------------------------------------------

def check_data(path: Path) -> Path:
    path = path.expanduser()
    if not path.is_file():
        hint = " (the shared arXiv set; pass --data FILE on a machine without it)" if path == DEFAULT_DATA else ""
        raise SystemExit(f"corpus_scale: no data file at {path}{hint}")
    return path.resolve()


def first_records(data: Path, limit: int, folder: Path) -> tuple[Path, int]:
    """The first `limit` lines of data in a file of the same kind (gzipped or not); (file, lines)."""
    with open(data, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    out = folder / (f"first{limit}.jsonl" + (".gz" if gzipped else ""))
    opener = gzip.open if gzipped else open
    lines = 0
    with opener(data, "rb") as src, opener(out, "wb") as dst:
        for line in src:
            if lines >= limit:
                break
            if line.strip():
                dst.write(line)
                lines += 1
    return out, lines


def data_identity(data: Path, limit: int | None) -> dict:
    st = data.stat()
    return {"data": str(data), "data_bytes": st.st_size, "data_mtime_ns": st.st_mtime_ns, "limit": limit}


def corpus_files(folder: Path) -> list[Path]:
    from survey.corpus.store import DB_NAME

    return [p for p in folder.glob(DB_NAME + "*") if p.is_file()]


def read_note(folder: Path, identity: dict) -> dict | None:
    """What this benchmark left in folder: None for a folder without a corpus; the note of a complete
    corpus (state "complete") or of one whose embedding pass was cut short (state "embedding") built
    from the same data and --limit. Anything else is refused."""
    from survey.corpus import Corpus

    if not corpus_files(folder):
        return None
    note_path = folder / NOTE
    note = json.loads(note_path.read_text()) if note_path.is_file() else None
    why = None
    if note is None or note.get("state") not in ("embedding", "complete"):
        why = "holds a corpus this benchmark did not build, or whose first pass did not finish"
    elif note.get("identity") != identity:
        why = f"holds a corpus built from other data or another --limit ({note.get('identity')})"
    else:
        with Corpus.open(folder) as corpus:
            papers, vectors = len(corpus), corpus.vector_count()
        if papers != note["papers"] or (note["state"] == "complete" and vectors != papers):
            why = f"holds {papers:,} papers and {vectors:,} vectors, not what its note records ({note['papers']:,})"
    if why:
        raise SystemExit(f"corpus_scale: {folder} {why}; pass --rebuild to delete that corpus and build it again, "
                         "or name another --corpus folder")
    return note


def save_note(folder: Path, note: dict) -> None:
    atomic_write_text(folder / NOTE, json.dumps(note, indent=2) + "\n")


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in corpus_files(folder))


# ---- ingest -------------------------------------------------------------------------------------

def rates(p: dict) -> dict:
    active = p["seconds"] - p["stalled_s"]
    p["papers_per_s"] = round(p["papers"] / p["seconds"], 1) if p["seconds"] > 0 else None
    p["papers_per_s_excluding_stalls"] = round(p["papers"] / active, 1) if active > 0 else None
    return p


def measure_bm25_pass(folder: Path, data: Path, limit: int | None, identity: dict, progress: IngestProgress) -> dict:
    """Pass 1 into an empty corpus at folder, timed; returns the note, state "embedding"."""
    from survey.corpus import Corpus

    with tempfile.TemporaryDirectory(prefix="corpus_scale_") as tmp:
        source, records = (first_records(data, limit, Path(tmp)) if limit is not None else (data, None))
        with Corpus.open(folder, create=True) as corpus:
            t, cpu = time.perf_counter(), time.process_time()
            report = corpus.ingest([source], embed=False, progress=progress)
            seconds, cpu_s = time.perf_counter() - t, time.process_time() - cpu
            papers = len(corpus)
    file_report = report.files[0]
    bm25 = rates({"papers": report.added, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_s, 3),
                  **progress.gaps("read "), "duplicates": file_report.duplicates, "malformed": file_report.malformed,
                  "size_bytes_after": size_on_disk(folder)})
    dense = {"papers": 0, "seconds": 0.0, "cpu_seconds": 0.0, "longest_gap_s": 0.0, "stalled_s": 0.0, "segments": 0}
    note = {"identity": identity, "state": "embedding", "papers": papers,
            "ingest": {"measured": True, "records": file_report.records if records is None else records,
                       "bm25": bm25, "dense": dense}}
    save_note(folder, note)
    return note


def measure_dense_pass(folder: Path, note: dict, progress: IngestProgress, save_every_s: float = 5.0) -> dict:
    """Pass 2 (the MiniLM embedding of every paper without a vector), timed. The note is saved every
    few seconds with the papers embedded and the time spent so far, both taken at the same progress
    call, so a run killed midway is resumed by the next one (same --corpus) and the throughput counts
    only work whose time was measured: papers/s = papers embedded / seconds, summed over segments."""
    from survey.corpus import Corpus
    from survey.corpus.ingest import embed_missing

    dense = note["ingest"]["dense"]
    base = dict(dense)
    with Corpus.open(folder) as corpus:
        t = time.perf_counter()
        embedder = corpus.embedder()
        if base["segments"] == 0:
            dense["embedder_load_s"] = round(time.perf_counter() - t, 2)
        import torch

        dense.update(model=embedder.name, precision=embedder.precision, device=str(embedder.device),
                     segments=base["segments"] + 1,
                     torch_threads=[*base.get("torch_threads", []), torch.get_num_threads()])  # per segment
        t0, cpu0, saved = time.perf_counter(), time.process_time(), [0.0]

        def on_progress(phase: str, done: int, total: int) -> None:
            progress(phase, done, total)
            now = time.perf_counter()
            if phase != "embed" or (done < total and now - saved[0] < save_every_s):
                return
            gaps = progress.gaps("embed")
            dense.update(papers=base["papers"] + done, seconds=round(base["seconds"] + now - t0, 2),
                         cpu_seconds=round(base["cpu_seconds"] + time.process_time() - cpu0, 2),
                         stalled_s=round(base["stalled_s"] + gaps["stalled_s"], 2),
                         longest_gap_s=max(base["longest_gap_s"], gaps["longest_gap_s"]))
            save_note(folder, note)
            saved[0] = now

        embed_missing(corpus, progress=on_progress)
        papers, vectors = len(corpus), corpus.vector_count()
    rates(dense)
    note["ingest"].update(measured_at=datetime.now(UTC).isoformat(timespec="seconds"), papers=papers,
                          with_vectors=vectors)
    note.update(state="complete", papers=papers)
    save_note(folder, note)
    return note


# ---- queries ------------------------------------------------------------------------------------

def make_queries(corpus, count: int, seed: int) -> list[str]:
    """A fifth (at most all of QUERIES) hand-written; the rest 3-5 consecutive words of seeded titles,
    stopwords trimmed from both ends, at least two words left."""
    from survey.corpus.search import STOPWORDS

    hand = QUERIES[:min(len(QUERIES), -(-count // 5))]
    rng = random.Random(seed)
    with corpus.lock:
        titles = [t for (t,) in corpus.db.execute("SELECT title FROM papers ORDER BY pk")]
    derived: list[str] = []
    seen = set(hand)
    for _ in range(20 * count):
        if len(hand) + len(derived) >= count or not titles:
            break
        words = re.findall(r"[A-Za-z0-9][\w'-]*", rng.choice(titles).lower())
        n = min(len(words), rng.randint(3, 5))
        start = rng.randint(0, max(0, len(words) - n))
        window = words[start:start + n]
        while window and window[0] in STOPWORDS:  # "and rules with octagon" -> "rules with octagon"
            window.pop(0)
        while window and window[-1] in STOPWORDS:
            window.pop()
        query = " ".join(window)
        if len(window) >= 2 and query not in seen:
            seen.add(query)
            derived.append(query)
    return (hand + derived)[:count]


def stats_ms(times: list[float]) -> dict:
    a = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "mean_ms": round(float(a.mean()), 2), "max_ms": round(float(a.max()), 2)}


def measure_latency(folder: Path, queries: list[str], k: int, embedder_loaded: bool) -> dict:
    """One-time loads, a warm-up per mode, then each mode over every query; and the hybrid steps.
    embedder_loaded: whether this process loaded the embedder already (for ingest), so that its load
    time here is only the lookup of the shared one."""
    from survey.corpus import Corpus
    from survey.corpus.search import FUSION_DEPTH, bm25, rrf, top_k

    with Corpus.open(folder) as corpus:
        t = time.perf_counter()
        pks, matrix = corpus.vectors()
        vectors_s = time.perf_counter() - t
        t = time.perf_counter()
        embedder = corpus.embedder()
        embedder_s = time.perf_counter() - t
        warmup = {}
        for mode in MODES:
            t = time.perf_counter()
            corpus.search(queries[0], k=k, mode=mode)
            warmup[mode] = round((time.perf_counter() - t) * 1000, 2)
        latency = {}
        for mode in MODES:
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = corpus.search(q, k=k, mode=mode)
                times.append((time.perf_counter() - t) * 1000)
                found.append(len(hits))
            latency[mode] = {**stats_ms(times), "warmup_ms": warmup[mode],
                             "mean_results": round(sum(found) / len(found), 2)}

        # search(mode="hybrid") step by step (survey/corpus/search.py), each step timed.
        depth = max(FUSION_DEPTH, 2 * k)
        steps: dict[str, list[float]] = {"query_embedding": [], "numpy_scan": [], "bm25": [], "fuse_and_fetch": [],
                                         "sum_of_steps": []}

        def lap(name: str, t0: float) -> float:
            now = time.perf_counter()
            steps[name].append((now - t0) * 1000)
            return now

        for q in queries:
            t = t0 = time.perf_counter()
            vec = embedder.encode_one(q)
            t = lap("query_embedding", t)
            pks, matrix = corpus.vectors()
            sims = matrix @ vec
            dense_hits = [(int(pks[i]), float(sims[i])) for i in top_k(sims, depth)]
            t = lap("numpy_scan", t)
            bm25_hits = bm25(corpus, q, depth)
            t = lap("bm25", t)
            fused = rrf({"bm25": bm25_hits, "dense": dense_hits}, k)
            papers = corpus.papers_by_pk(pk for pk, _, _ in fused)
            [replace(papers[pk], score=s, ranks=r) for pk, s, r in fused if pk in papers]
            lap("fuse_and_fetch", t)
            steps["sum_of_steps"].append((time.perf_counter() - t0) * 1000)
        breakdown = {name: stats_ms(times) for name, times in steps.items()}
        return {
            "load": {"vectors_s": round(vectors_s, 3), "vectors": len(pks),
                     "vectors_mb": round(matrix.nbytes / 2**20, 1), "embedder_s": round(embedder_s, 3),
                     "embedder_loaded_by_ingest": embedder_loaded,
                     "embedder_precision": embedder.precision},
            "latency": latency,
            "hybrid_breakdown": breakdown,
        }


# ---- run ----------------------------------------------------------------------------------------

def markdown_table(result: dict) -> str:
    ing, lat, load, settings = result["ingest"], result["latency"], result["load"], result["settings"]
    note = "" if ing["measured"] else f" (not re-measured: from the run that built the corpus, {ing['measured_at']})"
    if load["embedder_loaded_by_ingest"]:
        embedder = f"embedder loaded by ingest in this process ({ing['dense']['embedder_load_s']} s)"
    else:
        embedder = f"embedder {load['embedder_s']} s"
    target = result["target"]
    lines = [f"corpus: {result['corpus']['papers']:,} papers, {result['corpus']['size_mb']:,} MB on disk", "",
             f"| ingest pass{note} | papers | wall s | papers/s | CPU s | stalled s |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("bm25", "dense"):
        p = ing[name]
        rate = f"{p['papers_per_s']:,}" if p["papers_per_s"] is not None else "-"
        lines.append(f"| {name} | {p['papers']:,} | {p['seconds']:,} | {rate} | {p['cpu_seconds']:,} | {p['stalled_s']} |")
    if ing["dense"].get("segments", 1) > 1:
        lines.append(f"(the embedding pass ran in {ing['dense']['segments']} segments: runs killed midway were resumed)")
    lines += ["",
              (f"one-time loads: vectors {load['vectors_s']} s ({load['vectors']:,} x 384, {load['vectors_mb']} MB), "
              f"{embedder}"),
              "",
              f"| mode (k={settings['k']}, {settings['queries']} queries) | p50 ms | p95 ms | warm-up ms |",
              "|---|---:|---:|---:|"]
    lines += [f"| {mode} | {lat[mode]['p50_ms']} | {lat[mode]['p95_ms']} | {lat[mode]['warmup_ms']} |" for mode in MODES]
    lines += ["", "| hybrid step | p50 ms | p95 ms |", "|---|---:|---:|"]
    lines += [f"| {step} | {m['p50_ms']} | {m['p95_ms']} |" for step, m in result["hybrid_breakdown"].items()]
    lines += ["", (f"hybrid p50 {lat['hybrid']['p50_ms']} ms: target <= {target['hybrid_p50_ms']} ms "
                  f"{'met' if target['met'] else 'NOT met'}")]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from survey.corpus import Corpus

    if args.limit is not None and args.limit < 1:
        raise SystemExit("corpus_scale: --limit must be at least 1")
    if args.queries < 1 or args.k < 1:
        raise SystemExit("corpus_scale: --queries and --k must be at least 1")
    data = check_data(args.data)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise SystemExit("corpus_scale: --threads must be at least 1")
        torch.set_num_threads(args.threads)
    identity = data_identity(data, args.limit)
    commit = source_version("survey", "benchmarks")  # at the start: the code this run imports
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="corpus_scale_corpus_") as tmp:
        folder = (args.corpus.expanduser() if args.corpus else Path(tmp) / "corpus").resolve()
        if folder.exists() and not folder.is_dir():
            raise SystemExit(f"corpus_scale: {folder} is a file, not a folder")
        note = None
        if args.rebuild:
            for p in [*corpus_files(folder), folder / NOTE]:
                p.unlink(missing_ok=True)
        elif folder.is_dir():
            note = read_note(folder, identity)
        embedder_loaded = note is None or note["state"] != "complete"
        if note is None or note["state"] == "embedding":
            with IngestProgress() as progress:
                if note is None:
                    print(f"ingesting {data}" + (f" (first {args.limit:,} records)" if args.limit else "")
                          + f" into {folder}", flush=True)
                    note = measure_bm25_pass(folder, data, args.limit, identity, progress)
                else:
                    dense = note["ingest"]["dense"]
                    print(f"resuming the embedding pass in {folder}: {dense['papers']:,} papers embedded in "
                          f"{dense['segments']} earlier run(s), {dense['seconds']:,} s", flush=True)
                note = measure_dense_pass(folder, note, progress)
            ingest = note["ingest"]
        else:
            print(f"reusing the corpus at {folder} (built {note['ingest']['measured_at']}); ingest not re-measured "
                  "(--rebuild measures it again)", flush=True)
            ingest = {**note["ingest"], "measured": False}
        size = size_on_disk(folder)  # every connection closed: the WAL is folded in
        with Corpus.open(folder) as corpus:
            queries = make_queries(corpus, args.queries, args.seed)
        print(f"measuring {len(queries)} queries x {len(MODES)} modes", flush=True)
        measured = measure_latency(folder, queries, args.k, embedder_loaded=embedder_loaded)
    import torch

    result = {
        "benchmark": "corpus_scale",
        "command": bench_command("corpus_scale"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": {**machine(), "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
                    "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}},
        "settings": {**identity, "corpus": str(args.corpus) if args.corpus else "temporary", "k": args.k,
                     "queries": len(queries), "seed": args.seed,
                     "query_source": f"{min(len(QUERIES), -(-len(queries) // 5))} hand-written topical queries, the "
                                     "rest 3-5 consecutive words of titles picked with the seed"},
        "corpus": {"papers": ingest["papers"], "with_vectors": ingest["with_vectors"], "size_bytes": size,
                   "size_mb": round(size / 2**20, 1)},
        "ingest": ingest,
        **measured,
        "target": {"hybrid_p50_ms": TARGET_HYBRID_P50_MS,
                   "met": measured["latency"]["hybrid"]["p50_ms"] <= TARGET_HYBRID_P50_MS},
        "queries": queries,
    }
    write_json(args.out, result)
    print()
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
