"""Build and search the local paper corpus: ingest files, search them, show what is there.

    minicpm corpus ingest FILE... [--corpus DIR]     Kaggle arXiv snapshot, JSON lines or BibTeX, gzipped or not
    minicpm corpus ingest --sample                   the 2,000 arXiv papers that ship with the suite
    minicpm corpus search "QUERY" [--mode hybrid] [--k 10] [--json]
    minicpm corpus stats [--json]

The corpus folder defaults to <data dir>/corpora/default (MINICPM_HOME moves the data dir). Progress
goes to stderr on a terminal; stdout carries the results (or one JSON object with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from runtime.errors import MiniCPMError

MAX_K = 1000  # results per search; more is a dump, not a search


def _add_corpus_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                        help="the corpus folder (default: <data dir>/corpora/default)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    p = sub.add_parser("ingest", help="read paper files into the corpus (incremental, resumable)",
                       description="Read paper files into the corpus: the Kaggle arXiv metadata snapshot, JSON lines "
                                   "of papers, or BibTeX; .gz files as they are. Re-running adds only what is new "
                                   "or changed, and finishes the work of a run that was interrupted.")
    p.add_argument("files", nargs="*", type=Path, metavar="FILE", help="files to read (format detected per file)")
    _add_corpus_option(p)
    p.add_argument("--sample", action="store_true", help="also read the arXiv sample shipped with the suite (2,000 papers)")
    p.add_argument("--format", choices=("kaggle", "jsonl", "bibtex"), default=None,
                   help="read every file as this format instead of detecting it")
    p.add_argument("--no-vectors", action="store_true",
                   help="skip embedding (bm25 search only); a later ingest without this flag adds the vectors")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N",
                   help="papers per committed batch (1000); an interrupted run loses at most one batch")
    p.add_argument("--json", action="store_true", help="print one JSON object with the per-file counts")

    p = sub.add_parser("search", help="search the corpus: bm25, dense or hybrid",
                       description="Search the corpus. bm25: keyword relevance (SQLite FTS5, title weighted above "
                                   "abstract); dense: meaning (all-MiniLM-L6-v2 vectors); hybrid: both, fused by "
                                   "reciprocal rank (k=60).")
    p.add_argument("query", help="what to look for; any text (operators and punctuation are read as words)")
    _add_corpus_option(p)
    p.add_argument("--k", type=int, default=10, metavar="N", help="how many papers (10)")
    p.add_argument("--mode", choices=("bm25", "dense", "hybrid"), default="hybrid", help="(hybrid)")
    p.add_argument("--json", action="store_true", help="print one JSON object: the query and the papers with scores")

    p = sub.add_parser("stats", help="papers, vectors, categories, dates and size of the corpus",
                       description="Show what the corpus holds.")
    _add_corpus_option(p)
    p.add_argument("--top", type=int, default=10, metavar="N", help="categories to list (10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def corpus_path(args: argparse.Namespace) -> Path:
    from survey.corpus import default_corpus_path

    return args.corpus if args.corpus is not None else default_corpus_path()


def run(args: argparse.Namespace) -> int:
    return {"ingest": run_ingest, "search": run_search, "stats": run_stats}[args.corpus_command](args)


# ---- ingest -------------------------------------------------------------------------------------

class IngestProgress:
    """One rich bar per phase (reading each file, then embedding), on stderr, only on a terminal."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> IngestProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"), TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.progress.start()
        return self

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if phase == "embed":
            detail = f"{done:,}/{total:,} papers"
        else:
            detail = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
        if phase not in self.tasks:
            label = "embedding" if phase == "embed" else f"reading {phase.removeprefix('read ')}"
            self.tasks[phase] = self.progress.add_task(label, total=max(total, 1), detail=detail)
        self.progress.update(self.tasks[phase], completed=done, total=max(total, 1), detail=detail)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _describe_file(report) -> list[str]:
    counts = (f"{report.records:,} records: {report.added:,} added, {report.updated:,} updated, "
              f"{report.unchanged:,} unchanged")
    if report.duplicates:
        counts += f", {report.duplicates:,} duplicate ids skipped"
    if report.malformed:
        counts += f", {report.malformed:,} malformed skipped"
    lines = [f"{report.file} ({report.format}): {counts}"]
    for bad in report.malformed_examples:
        lines.append(f"  line {bad.line}: {bad.reason}")
    if report.malformed > len(report.malformed_examples):
        lines.append(f"  ... and {report.malformed - len(report.malformed_examples):,} more")
    return lines


def run_ingest(args: argparse.Namespace) -> int:
    from survey.corpus import Corpus, shipped_sample

    files = list(args.files)
    if args.sample:
        files.append(shipped_sample())
    if not files:
        raise MiniCPMError("no files to ingest: name one or more files, or pass --sample for the shipped arXiv sample")
    if args.batch_size < 1:
        raise MiniCPMError(f"--batch-size must be at least 1 (got {args.batch_size})")
    from survey.corpus.readers import Source

    for file in files:  # every input is checked before a corpus folder is made for them
        Source(Path(file), args.format)
    path = corpus_path(args)
    started = time.perf_counter()
    with Corpus.open(path, create=True) as corpus, IngestProgress(enabled=not args.json) as progress:
        try:
            report = corpus.ingest(files, embed=not args.no_vectors, batch_size=args.batch_size,
                                   format=args.format, progress=progress)
        except KeyboardInterrupt:
            progress.__exit__()
            print(f"minicpm: interrupted: the batches committed so far are kept in {path}; "
                  "run the same command again to finish", file=sys.stderr)
            raise
    if args.json:
        print(json.dumps({"corpus": str(path), **report.to_dict(), "seconds": round(time.perf_counter() - started, 3)}))
        return 0
    for file_report in report.files:
        print("\n".join(_describe_file(file_report)))
    if report.embedded:
        rate = report.embedded / report.embed_seconds if report.embed_seconds else 0.0
        print(f"embedded {report.embedded:,} papers in {report.embed_seconds:.1f} s ({rate:.1f} papers/s)")
    print(f"corpus {path}: {report.papers:,} papers, {report.with_vectors:,} with vectors")
    return 0


# ---- search -------------------------------------------------------------------------------------

def _authors(names: list[str], most: int = 3) -> str:
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[:most]) + " et al."


def run_search(args: argparse.Namespace) -> int:
    from survey.corpus import Corpus

    if not 1 <= args.k <= MAX_K:
        raise MiniCPMError(f"--k must be between 1 and {MAX_K} (got {args.k})")
    path = corpus_path(args)
    with Corpus.open(path) as corpus:
        results = corpus.search(args.query, k=args.k, mode=args.mode)
    if args.json:
        print(json.dumps({"query": args.query, "mode": args.mode, "k": args.k, "corpus": str(path),
                          "results": [p.to_dict() for p in results]}, ensure_ascii=False))
        return 0
    if not results:
        print(f"no papers match {args.query!r}")
        return 0
    for rank, paper in enumerate(results, start=1):
        date = f" ({paper.date})" if paper.date else ""
        print(f"{rank:2d}. {paper.title}{date}")
        meta = [_authors(paper.authors), " ".join(paper.categories[:3]), f"score {paper.score:.4g}"]
        print("    " + " · ".join(m for m in meta if m))
        print(f"    {paper.url or paper.id}")
    return 0


# ---- stats --------------------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_stats(args: argparse.Namespace) -> int:
    from survey.corpus import Corpus

    path = corpus_path(args)
    with Corpus.open(path) as corpus:
        stats = corpus.stats(top=max(args.top, 0))
    if args.json:
        print(json.dumps(stats.to_dict(), ensure_ascii=False))
        return 0
    vectors = f"{stats.with_vectors:,} with vectors" + (f" ({stats.embedder})" if stats.embedder else "")
    rows = [("corpus", stats.path), ("papers", f"{stats.papers:,}, {vectors}")]
    if stats.date_min:
        undated = f", {stats.undated:,} undated" if stats.undated else ""
        rows.append(("dates", f"{stats.date_min} to {stats.date_max}{undated}"))
    rows.append(("size", _size(stats.size_bytes)))
    if stats.categories:
        rows.append(("categories", ", ".join(f"{c} {n:,}" for c, n in stats.categories)))
    for name, value in rows:
        print(f"{name:<11}{value}")
    return 0
