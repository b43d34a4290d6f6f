"""The corpus on disk: one SQLite file per corpus folder, its schema and migrations, and the Corpus API.

    <corpus dir>/corpus.sqlite   papers, the FTS5 index over them, their vectors, an ingest log

Papers are rows keyed by a normalised id (survey/corpus/paper.py). The FTS5 table is an external-
content index over title, abstract and authors, kept in step by triggers, so an insert, update or
delete of a paper and of its index entry are one transaction. Vectors are float32 blobs (384 x 4
bytes) in their own table, keyed by the paper's row; updating a paper's text deletes its vector in
the same transaction, so a vector never describes text that is no longer there, whatever point a
killed ingest stopped at. WAL mode lets searches (the papers MCP server, the survey agent) read while
an ingest writes.

Schema changes: bump SCHEMA_VERSION and append one function to MIGRATIONS; a corpus made by an
older version is migrated on open, one made by a newer one is refused.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import MiniCPMError
from survey.corpus.paper import Paper, normalize_id

DB_NAME = "corpus.sqlite"
SCHEMA_VERSION = 1
TITLE_WEIGHT, ABSTRACT_WEIGHT, AUTHORS_WEIGHT = 5.0, 1.0, 1.0  # bm25() column weights
MATCH_COUNTS_KEPT = 50_000  # query terms whose match counts a long-running process keeps


class CorpusError(MiniCPMError):
    """A corpus folder that is missing, unreadable or not a corpus."""


def _run(db: sqlite3.Connection, statements: list[str]) -> None:
    # One execute() per statement: executescript() would commit the migration's transaction first.
    for statement in statements:
        db.execute(statement)


def _migrate_1(db: sqlite3.Connection) -> None:
    _run(db, [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE papers (
            pk INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL,
            abstract TEXT NOT NULL DEFAULT '',
            authors TEXT NOT NULL DEFAULT '[]',      -- JSON list of names
            categories TEXT NOT NULL DEFAULT '[]',   -- JSON list
            date TEXT NOT NULL DEFAULT '',
            doi TEXT NOT NULL DEFAULT '',
            journal TEXT NOT NULL DEFAULT '',
            url TEXT NOT NULL DEFAULT '',
            hash TEXT NOT NULL                       -- of the fields above: an unchanged paper is skipped
        )""",
        "CREATE INDEX papers_date ON papers(date)",
        """CREATE VIRTUAL TABLE papers_fts USING fts5(
            title, abstract, authors, content='papers', content_rowid='pk',
            tokenize='porter unicode61 remove_diacritics 2'
        )""",
        "CREATE TABLE vectors (pk INTEGER PRIMARY KEY, vector BLOB NOT NULL)",
        """CREATE TRIGGER papers_ai AFTER INSERT ON papers BEGIN
            INSERT INTO papers_fts(rowid, title, abstract, authors) VALUES (new.pk, new.title, new.abstract, new.authors);
        END""",
        """CREATE TRIGGER papers_ad AFTER DELETE ON papers BEGIN
            INSERT INTO papers_fts(papers_fts, rowid, title, abstract, authors)
                VALUES ('delete', old.pk, old.title, old.abstract, old.authors);
            DELETE FROM vectors WHERE pk = old.pk;
        END""",
        """CREATE TRIGGER papers_au AFTER UPDATE ON papers BEGIN
            INSERT INTO papers_fts(papers_fts, rowid, title, abstract, authors)
                VALUES ('delete', old.pk, old.title, old.abstract, old.authors);
            INSERT INTO papers_fts(rowid, title, abstract, authors) VALUES (new.pk, new.title, new.abstract, new.authors);
        END""",
        """CREATE TABLE ingests (
            n INTEGER PRIMARY KEY,
            file TEXT NOT NULL, format TEXT NOT NULL, finished_at TEXT NOT NULL DEFAULT (datetime('now')),
            added INTEGER, updated INTEGER, unchanged INTEGER, malformed INTEGER
        )""",
        "INSERT INTO meta(key, value) VALUES ('vector_generation', '0')",
    ])


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1]  # MIGRATIONS[v - 1] makes version v
assert len(MIGRATIONS) == SCHEMA_VERSION


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # in WAL: a killed process loses nothing committed
    db.execute("PRAGMA foreign_keys=ON")
    return db


def migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CorpusError(f"{path} was made by a newer version of the suite (schema {version}, "
                          f"this one reads up to {SCHEMA_VERSION}); upgrade minicpm-suite")
    for v in range(version + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < v:  # another process may have just done it
                MIGRATIONS[v - 1](db)
                db.execute(f"PRAGMA user_version = {v}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


# ---- rows <-> papers ----------------------------------------------------------------------------

PAPER_COLUMNS = "id, title, abstract, authors, categories, date, doi, journal, url"


def paper_from_row(row: Sequence) -> Paper:
    pid, title, abstract, authors, categories, date, doi, journal, url = row[:9]
    return Paper(id=pid, title=title, abstract=abstract, authors=json.loads(authors),
                 categories=json.loads(categories), date=date, doi=doi, journal=journal, url=url)


def paper_values(paper: Paper) -> tuple:
    return (paper.id, paper.title, paper.abstract, json.dumps(paper.authors, ensure_ascii=False),
            json.dumps(paper.categories, ensure_ascii=False), paper.date, paper.doi, paper.journal, paper.url)


def embedding_text(title: str, abstract: str) -> str:
    """What the embedder reads for a paper: the title as a sentence, then the abstract."""
    title = title.strip()
    if title and title[-1] not in ".?!":
        title += "."
    return f"{title} {abstract}".strip()


@dataclass
class CorpusStats:
    path: str
    papers: int
    with_vectors: int
    categories: list[tuple[str, int]]  # the most frequent, most first
    date_min: str | None
    date_max: str | None
    undated: int
    size_bytes: int
    embedder: str | None
    schema_version: int
    ingests: list[dict] = field(default_factory=list)  # the latest few ingest runs

    def to_dict(self) -> dict:
        out = asdict(self)
        out["categories"] = [{"category": c, "papers": n} for c, n in self.categories]
        return out


class Corpus:
    """A paper corpus in a folder. Thread-safe; open it once and share it.

        corpus = Corpus.open(path)              # an existing corpus (CorpusError if there is none)
        corpus = Corpus.open(path, create=True) # made on first use, as ingest does
        corpus.search("sparse attention", k=10, mode="hybrid") -> list[Paper] (score set)
        corpus.get("2401.01234") -> Paper | None
        corpus.stats() -> CorpusStats
        corpus.ingest([file, ...]) -> list[IngestReport]   (survey/corpus/ingest.py)
    """

    def __init__(self, path: Path, db: sqlite3.Connection):
        self.path = path
        self.db = db
        self.lock = threading.RLock()
        self._vectors: tuple[str, np.ndarray, np.ndarray] | None = None  # (generation, pks, matrix)
        self._match_counts: tuple[tuple[int, int], dict[str | None, int]] = ((-1, -1), {})  # (db version, counts)
        self._embedder = None

    @classmethod
    def open(cls, path: str | Path, create: bool = False) -> Corpus:
        path = Path(path).expanduser()
        db_path = path / DB_NAME
        if not db_path.is_file():
            if not create:
                what = "no corpus folder" if not path.exists() else "no corpus"
                raise CorpusError(f"{what} at {path}: build one with `minicpm corpus ingest FILE...` "
                                  f"(or `minicpm corpus ingest --sample` for the arXiv papers shipped with the suite), "
                                  f"with the same --corpus")
            if path.exists() and not path.is_dir():
                raise CorpusError(f"{path} is a file, not a corpus folder")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CorpusError(f"cannot make the corpus folder {path}: {exc.strerror or exc}") from None
        try:
            db = connect(db_path)
            migrate(db, db_path)
            db.execute("SELECT count(*) FROM papers").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CorpusError(f"{db_path} is not a readable corpus database ({exc})") from None
        return cls(path, db)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM papers").fetchone()[0]

    # ---- meta ---------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.lock:
            self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (key, value))

    # ---- reading ------------------------------------------------------------------------------

    def get(self, paper_id: str) -> Paper | None:
        """A paper by id; arXiv ids may carry a version, an 'arXiv:' prefix or be an abs/pdf URL."""
        with self.lock:
            row = self.db.execute(f"SELECT {PAPER_COLUMNS} FROM papers WHERE id = ?", (normalize_id(paper_id),)).fetchone()
        return paper_from_row(row) if row else None

    def papers_by_pk(self, pks: Iterable[int]) -> dict[int, Paper]:
        pks = list(pks)
        out: dict[int, Paper] = {}
        with self.lock:
            for start in range(0, len(pks), 500):
                chunk = pks[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self.db.execute(f"SELECT {PAPER_COLUMNS}, pk FROM papers WHERE pk IN ({marks})", chunk):
                    out[row[9]] = paper_from_row(row)
        return out

    def match_counts(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        """(papers in the corpus, papers each FTS5 query term matches): the N and n of bm25's idf.
        Cached until the database changes (this connection's writes, or another process's commits)."""
        with self.lock:
            version = (self.db.execute("PRAGMA data_version").fetchone()[0], self.db.total_changes)
            if self._match_counts[0] != version or len(self._match_counts[1]) > MATCH_COUNTS_KEPT:
                self._match_counts = (version, {})
            counts = self._match_counts[1]
            if None not in counts:
                counts[None] = self.db.execute("SELECT count(*) FROM papers").fetchone()[0]
            for term in terms:
                if term not in counts:
                    counts[term] = self.db.execute("SELECT count(*) FROM papers_fts WHERE papers_fts MATCH ?",
                                                   (term,)).fetchone()[0]
            return counts[None], [counts[term] for term in terms]

    def has_vectors(self) -> bool:
        """Whether any paper has a vector: one row looked up (vector_count reads the whole table)."""
        with self.lock:
            return self.db.execute("SELECT EXISTS (SELECT 1 FROM vectors)").fetchone()[0] == 1

    def vector_count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(pks [N] int64, matrix [N, 384] float32) of every stored vector, cached until an ingest
        changes them (any process: the generation counter lives in the database)."""
        with self.lock:
            generation = self.meta("vector_generation") or "0"
            if self._vectors is None or self._vectors[0] != generation:
                rows = self.db.execute("SELECT pk, vector FROM vectors ORDER BY pk").fetchall()
                pks = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                dim = int(self.meta("embedding_dim") or 384)
                matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
                self._vectors = (generation, pks, matrix)
            return self._vectors[1], self._vectors[2]

    def embedder(self):
        """The sentence embedder, loaded on first use; refuses a corpus embedded by another model."""
        from survey.corpus.embed import shared_embedder

        if self._embedder is None:
            embedder = shared_embedder()
            stored = self.meta("embedder")
            if stored is not None and stored != embedder.name:
                raise CorpusError(f"{self.path} was embedded with {stored}, this suite embeds with {embedder.name}; "
                                  "rebuild the corpus in a new folder")
            self._embedder = embedder
        return self._embedder

    def search(self, query: str, k: int = 10, mode: str = "hybrid") -> list[Paper]:
        """The k best papers for a query, best first, each with `score` (and `ranks` in hybrid mode).

        bm25: SQLite FTS5, title weighted above abstract; every word of the query is quoted, so any
        text is a valid query. dense: cosine similarity of all-MiniLM-L6-v2 vectors, exact.
        hybrid: reciprocal-rank fusion (k=60) of the two."""
        from survey.corpus.search import search

        return search(self, query, k=k, mode=mode)

    def ingest(self, paths: Sequence[str | Path], **options):
        """Read files into the corpus (survey/corpus/ingest.py: ingest); returns one report per file."""
        from survey.corpus.ingest import ingest

        return ingest(self, paths, **options)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob(DB_NAME + "*") if p.is_file())

    def stats(self, top: int = 10) -> CorpusStats:
        with self.lock:
            db = self.db
            papers = db.execute("SELECT count(*) FROM papers").fetchone()[0]
            cats = db.execute(
                "SELECT c.value, count(*) AS n FROM papers, json_each(papers.categories) AS c "
                "GROUP BY c.value ORDER BY n DESC, c.value LIMIT ?", (top,)).fetchall()
            dmin, dmax = db.execute("SELECT min(date), max(date) FROM papers WHERE date != ''").fetchone()
            undated = db.execute("SELECT count(*) FROM papers WHERE date = ''").fetchone()[0]
            ingests = [dict(zip(("file", "format", "finished_at", "added", "updated", "unchanged", "malformed"), r))
                       for r in db.execute("SELECT file, format, finished_at, added, updated, unchanged, malformed "
                                           "FROM ingests ORDER BY n DESC LIMIT 5")]
            return CorpusStats(
                path=str(self.path), papers=papers, with_vectors=self.vector_count(), categories=[tuple(c) for c in cats],
                date_min=dmin, date_max=dmax, undated=undated, size_bytes=self.size_bytes(),
                embedder=self.meta("embedder"), schema_version=db.execute("PRAGMA user_version").fetchone()[0],
                ingests=ingests,
            )


def shipped_sample() -> Path:
    """The arXiv sample that ships with the suite (survey/data/)."""
    return Path(__file__).resolve().parent.parent / "data" / "arxiv_cs_ai_sample2k.jsonl.gz"

