"""Read paper files into a corpus: incremental, resumable, and honest about what it skipped.

Two passes, each committed in batches:

1. papers: every record of every file, in batches of `batch_size`, one transaction each. A paper
   whose id is new is added; one whose fields changed is updated (its vector dropped in the same
   transaction); an unchanged one is left alone, so re-ingesting a file adds nothing. Within one
   file the first record of an id wins and later ones count as duplicates; across files (or runs)
   the later file's version updates the paper.
2. vectors: every paper without a vector, in batches of `embed_batch`, embedded and committed.
   This covers papers added in pass 1, papers updated there, and papers left from a killed run or a
   --no-vectors one.

A killed ingest therefore loses at most the batch in flight: a re-run skips what was committed
(pass 1 finds it unchanged) and embeds what is still missing (pass 2).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.errors import MiniCPMError
from survey.corpus.paper import Paper
from survey.corpus.readers import Malformed, Source
from survey.corpus.store import PAPER_COLUMNS, Corpus, embedding_text, paper_values

EXAMPLES = 5  # malformed records described per file
BATCH_SIZE = 1000  # papers per transaction in pass 1
EMBED_BATCH = 64  # papers per transaction in pass 2 (a few seconds of embedding on 2 CPU cores)

# progress(phase, done, total): phase is "read FILE" (done/total in bytes of the file) or "embed"
# (done/total in papers). Called often; it should be cheap.
Progress = Callable[[str, int, int], None]


@dataclass
class FileReport:
    file: str
    format: str
    records: int = 0  # records read, good and malformed
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0  # an id seen earlier in the same file; the first one was kept
    malformed: int = 0
    malformed_examples: list[Malformed] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IngestReport:
    files: list[FileReport]
    embedded: int = 0  # vectors computed in this run
    embed_seconds: float = 0.0
    papers: int = 0  # in the corpus afterwards
    with_vectors: int = 0

    @property
    def added(self) -> int:
        return sum(f.added for f in self.files)

    @property
    def malformed(self) -> int:
        return sum(f.malformed for f in self.files)

    def to_dict(self) -> dict:
        return {**asdict(self), "added": self.added, "malformed": self.malformed}


def paper_hash(paper: Paper) -> str:
    return hashlib.sha1("\x1f".join(paper_values(paper)).encode("utf-8")).hexdigest()


def _write_batch(corpus: Corpus, batch: list[Paper], report: FileReport) -> None:
    db = corpus.db
    with corpus.lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            marks = ",".join("?" * len(batch))
            existing = {pid: (pk, h) for pid, pk, h in
                        db.execute(f"SELECT id, pk, hash FROM papers WHERE id IN ({marks})", [p.id for p in batch])}
            dropped_vectors = False
            for paper in batch:
                h = paper_hash(paper)
                if paper.id not in existing:
                    db.execute(f"INSERT INTO papers({PAPER_COLUMNS}, hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
                               (*paper_values(paper), h))
                    report.added += 1
                    continue
                pk, old = existing[paper.id]
                if old == h:
                    report.unchanged += 1
                    continue
                db.execute("UPDATE papers SET title=?, abstract=?, authors=?, categories=?, date=?, doi=?, journal=?, "
                           "url=?, hash=? WHERE pk=?", (*paper_values(paper)[1:], h, pk))
                dropped_vectors |= db.execute("DELETE FROM vectors WHERE pk = ?", (pk,)).rowcount > 0
                report.updated += 1
            if dropped_vectors:
                _bump_generation(corpus)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _bump_generation(corpus: Corpus) -> None:
    corpus.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'vector_generation'")


def ingest_file(corpus: Corpus, source: Source, batch_size: int = BATCH_SIZE,
                progress: Progress | None = None) -> FileReport:
    """Pass 1 for one file."""
    report = FileReport(file=str(source.path), format=source.format)
    started = time.perf_counter()
    phase = f"read {source.path.name}"
    seen: set[str] = set()
    batch: list[Paper] = []

    def flush():
        if batch:
            _write_batch(corpus, batch, report)
            batch.clear()
        if progress:
            progress(phase, source.position(), source.size)

    if progress:
        progress(phase, 0, source.size)
    for _, item in source.records():
        report.records += 1
        if isinstance(item, Malformed):
            report.malformed += 1
            if len(report.malformed_examples) < EXAMPLES:
                report.malformed_examples.append(item)
            continue
        if item.id in seen:
            report.duplicates += 1
            continue
        seen.add(item.id)
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    flush()
    with corpus.lock:
        corpus.db.execute("INSERT INTO ingests(file, format, added, updated, unchanged, malformed) VALUES (?,?,?,?,?,?)",
                          (report.file, report.format, report.added, report.updated, report.unchanged, report.malformed))
    report.seconds = time.perf_counter() - started
    return report


def missing_vectors(corpus: Corpus) -> int:
    with corpus.lock:
        return corpus.db.execute(
            "SELECT count(*) FROM papers p LEFT JOIN vectors v ON v.pk = p.pk WHERE v.pk IS NULL").fetchone()[0]


def embed_missing(corpus: Corpus, embed_batch: int = EMBED_BATCH, progress: Progress | None = None) -> int:
    """Pass 2: embed every paper that has no vector; returns how many were embedded."""
    import numpy as np

    total = missing_vectors(corpus)
    if total == 0:
        return 0
    embedder = corpus.embedder()
    db = corpus.db
    done, last_pk = 0, 0
    if progress:
        progress("embed", 0, total)
    while True:
        with corpus.lock:
            rows = db.execute(
                "SELECT p.pk, p.title, p.abstract, p.hash FROM papers p LEFT JOIN vectors v ON v.pk = p.pk "
                "WHERE v.pk IS NULL AND p.pk > ? ORDER BY p.pk LIMIT ?", (last_pk, embed_batch)).fetchall()
        if not rows:
            break
        vectors = embedder.encode([embedding_text(title, abstract) for _, title, abstract, _ in rows])
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with corpus.lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                if corpus.meta("embedder") is None:
                    corpus.set_meta("embedder", embedder.name)
                    corpus.set_meta("embedding_dim", str(embedder.dim))
                for (pk, _, _, h), vec in zip(rows, vectors):
                    # Only if the paper still has the text just embedded (another ingest may have changed it).
                    db.execute("INSERT OR REPLACE INTO vectors(pk, vector) SELECT ?, ? "
                               "WHERE EXISTS (SELECT 1 FROM papers WHERE pk = ? AND hash = ?)", (pk, vec.tobytes(), pk, h))
                _bump_generation(corpus)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        done += len(rows)
        last_pk = rows[-1][0]
        if progress:
            progress("embed", min(done, total), total)
    return done


def ingest(corpus: Corpus, paths: Sequence[str | Path], *, embed: bool = True, batch_size: int = BATCH_SIZE,
           embed_batch: int = EMBED_BATCH, format: str | None = None, progress: Progress | None = None) -> IngestReport:
    """Read each file into the corpus, then embed what has no vector (unless embed=False).

    Every file is opened and its format detected before anything is written, so a typo in the
    last of ten names fails at once. A MiniCPMError from a file that breaks midway (a cut-off gzip)
    leaves the batches before it committed."""
    if not paths:
        raise MiniCPMError("no files to ingest")
    if batch_size < 1 or embed_batch < 1:
        raise MiniCPMError("batch sizes must be at least 1")
    sources = [Source(Path(p).expanduser(), format) for p in paths]
    if embed:
        from survey.corpus.embed import model_dir

        model_dir()  # a missing model fails before pass 1; it loads only if something needs a vector
    reports = [ingest_file(corpus, source, batch_size=batch_size, progress=progress) for source in sources]
    result = IngestReport(files=reports)
    if embed:
        started = time.perf_counter()
        result.embedded = embed_missing(corpus, embed_batch=embed_batch, progress=progress)
        result.embed_seconds = time.perf_counter() - started
    result.papers = len(corpus)
    result.with_vectors = corpus.vector_count()
    return result
