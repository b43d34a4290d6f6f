"""The `notes` MCP server: a notebook in SQLite with full-text search (FTS5).

The schema carries a `user_version`; `MIGRATIONS[n]` brings a database from version n to n + 1, each
inside one transaction, so an old notebook is upgraded in place when a newer suite opens it. Each tool
call opens its own connection, in WAL mode with a busy timeout, and every write runs in a
`BEGIN IMMEDIATE` transaction: two servers (or a server and the TUI) can share one notebook.

Search never hands the model's text to FTS5 as query syntax: the words are pulled out and each one is
quoted, so `what's "this"?` is just the words what, s, this. It tries all the words, then any of
them, then a plain substring match (which also finds text inside CJK runs that FTS5 keeps whole).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from runtime.errors import MiniCPMError

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
BUSY_TIMEOUT_MS = 5000
MAX_TITLE_CHARS = 500
MAX_ID = 2**63 - 1  # SQLite's INTEGER; the schema says so, so constrained decoding keeps ids in range
MAX_BODY_CHARS = 1_000_000


class NotesError(ValueError):
    """A request the notebook cannot honour (no such note, empty title, ...)."""


# ----------------------------------------------------------------------------------------- schema


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    # AUTOINCREMENT: a deleted note's id is never reused, so an old id can never name a different note.
    conn.execute("""
        CREATE TABLE notes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            body TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
            created_at TEXT NOT NULL,         -- ISO 8601, UTC
            updated_at TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX notes_by_created ON notes(created_at)")
    conn.execute("""
        CREATE VIRTUAL TABLE notes_fts USING fts5(
            title, body, tags, content='notes', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
        )""")
    conn.execute("""
        CREATE TRIGGER notes_ai AFTER INSERT ON notes BEGIN
            INSERT INTO notes_fts(rowid, title, body, tags) VALUES (new.id, new.title, new.body, new.tags);
        END""")
    conn.execute("""
        CREATE TRIGGER notes_ad AFTER DELETE ON notes BEGIN
            INSERT INTO notes_fts(notes_fts, rowid, title, body, tags) VALUES ('delete', old.id, old.title, old.body, old.tags);
        END""")
    conn.execute("""
        CREATE TRIGGER notes_au AFTER UPDATE ON notes BEGIN
            INSERT INTO notes_fts(notes_fts, rowid, title, body, tags) VALUES ('delete', old.id, old.title, old.body, old.tags);
            INSERT INTO notes_fts(rowid, title, body, tags) VALUES (new.id, new.title, new.body, new.tags);
        END""")


# MIGRATIONS[n] takes a database at user_version n to n + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), waiting up to 5 s for other writers."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: a write is all or nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION, one transaction per step; returns the version found."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise NotesError(
            f"the notebook has schema version {found}, newer than this suite's {SCHEMA_VERSION}; upgrade the suite"
        )
    while True:
        with transaction(conn):  # re-read inside the lock: another process may have migrated meanwhile
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return found
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")


def _header(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(16)


def open_notebook(path: Path) -> None:
    """Create or upgrade the notebook at path and switch it to WAL; MiniCPMError when that is impossible."""
    where = f"the notes database {path}"
    if path.is_dir():
        raise MiniCPMError(f"{where} is a folder; give --db a file path such as notes.sqlite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MiniCPMError(f"cannot create the folder for {where}: {exc.strerror or exc}; choose another --db path") from None
    if path.exists() and path.stat().st_size and _header(path) != b"SQLite format 3\x00":
        # SQLite itself would take a file of a few bytes as an empty database and write over it.
        raise MiniCPMError(f"{where} exists but is not a SQLite database; move it away or choose another --db path")
    if path.exists() and not os.access(path, os.W_OK):
        raise MiniCPMError(f"{where} is not writable; fix its permissions or choose another --db path")
    if not os.access(path.parent, os.W_OK):
        raise MiniCPMError(f"the folder {path.parent} is not writable, so {where} cannot be used; choose another --db path")
    try:
        with closing(connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn)
    except NotesError as exc:
        raise MiniCPMError(f"{where}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not a database" in text:
            raise MiniCPMError(f"{where} exists but is not a SQLite database; move it away or choose another --db path") from None
        if "fts5" in text:
            raise MiniCPMError(f"this Python's SQLite lacks the FTS5 extension needed by {where}") from None
        raise MiniCPMError(f"cannot open {where}: {text}; choose another --db path") from None


# ----------------------------------------------------------------------------------------- search


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def fts_query(text: str, mode: Literal["all", "any"]) -> str | None:
    """An FTS5 query matching the words of text (each quoted, as a prefix); None when text has no words."""
    words = _words(text)
    if not words:
        return None
    return (" " if mode == "all" else " OR ").join(f'"{word}"*' for word in words)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# ----------------------------------------------------------------------------------------- results


class Note(BaseModel):
    id: int
    title: str
    body: str
    tags: list[str]
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str


class NoteSummary(BaseModel):
    id: int
    title: str
    tags: list[str]
    created_at: str
    preview: str = Field(description="the first 200 characters of the body")


class SearchHit(BaseModel):
    id: int
    title: str
    tags: list[str]
    created_at: str
    snippet: str = Field(description="the matching part of the note, matches in [brackets]")


class SearchResults(BaseModel):
    query: str
    match: Literal["all words", "any word", "substring", "none"] = Field(
        description="how the hits matched: every word, at least one word, or the query as a plain substring")
    hits: list[SearchHit]


class NoteList(BaseModel):
    notes: list[NoteSummary]
    total: int = Field(description="how many notes match in all (before the limit)")


class Deleted(BaseModel):
    deleted_id: int
    title: str


def _tags(raw: str) -> list[str]:
    return json.loads(raw)


def _note(row: sqlite3.Row) -> Note:
    return Note(id=row["id"], title=row["title"], body=row["body"], tags=_tags(row["tags"]),
                created_at=row["created_at"], updated_at=row["updated_at"])


def _clean_tags(tags: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for tag in tags:
        tag = " ".join(tag.split())
        if tag and tag.lower() not in seen:
            seen[tag.lower()] = tag
    return list(seen.values())


TAG_FILTER = "(? IS NULL OR EXISTS (SELECT 1 FROM json_each(notes.tags) WHERE lower(json_each.value) = lower(?)))"


# ----------------------------------------------------------------------------------------- server


def build_server(db: str | os.PathLike | None = None) -> FastMCP:
    """The notes server over the SQLite file db (default: notes.sqlite in the suite's data folder)."""
    if db is None:
        from runtime.settings import data_path

        db = data_path("notes.sqlite")
    path = Path(db).expanduser().absolute()
    open_notebook(path)

    def conn() -> closing[sqlite3.Connection]:
        return closing(connect(path))

    server = FastMCP(
        "notes",
        instructions="A personal notebook: add notes, search them by words, list, read and delete them by id.",
        log_level="WARNING",
    )

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False))
    def add_note(
        title: Annotated[str, Field(description="short title of the note (one line)")],
        body: Annotated[str, Field(description="the text of the note (plain text or Markdown)")] = "",
        tags: Annotated[list[str] | None, Field(description="optional labels, e.g. ['work', 'ideas']")] = None,
    ) -> Note:
        """Add a note to the notebook; returns it with its new id."""
        title = " ".join(title.split())
        if not title:
            raise NotesError("the title is empty; give the note a short title")
        if len(title) > MAX_TITLE_CHARS or len(body) > MAX_BODY_CHARS:
            raise NotesError(f"the note is too long (title at most {MAX_TITLE_CHARS} characters, body at most {MAX_BODY_CHARS})")
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with conn() as c, transaction(c):
            cursor = c.execute(
                "INSERT INTO notes(title, body, tags, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (title, body, json.dumps(_clean_tags(tags or []), ensure_ascii=False), stamp, stamp),
            )
            row = c.execute("SELECT * FROM notes WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _note(row)

    @server.tool(annotations=READ_ONLY)
    def search_notes(
        query: Annotated[str, Field(description="words to look for in titles, bodies and tags (plain text; no special syntax)")],
        limit: Annotated[int, Field(ge=1, le=100, description="most results to return, best first (default 10)")] = 10,
        tag: Annotated[str | None, Field(description="only notes carrying this tag")] = None,
    ) -> SearchResults:
        """Full-text search of the notes, best matches first.

        Finds notes containing all the words (words also match as prefixes: 'sched' finds 'schedule');
        if none do, notes containing any of them; if still none, notes containing the query as a plain substring.
        """
        with conn() as c:
            for mode, label in (("all", "all words"), ("any", "any word")):
                match = fts_query(query, mode)
                if match is None:
                    break
                rows = c.execute(
                    f"""SELECT notes.id, notes.title, notes.tags, notes.created_at,
                               snippet(notes_fts, -1, '[', ']', '…', 16) AS snippet
                        FROM notes_fts JOIN notes ON notes.id = notes_fts.rowid
                        WHERE notes_fts MATCH ? AND {TAG_FILTER}
                        ORDER BY bm25(notes_fts, 5.0, 1.0, 2.0), notes.id DESC LIMIT ?""",
                    (match, tag, tag, limit),
                ).fetchall()
                if rows:
                    return SearchResults(query=query, match=label, hits=[
                        SearchHit(id=r["id"], title=r["title"], tags=_tags(r["tags"]), created_at=r["created_at"],
                                  snippet=r["snippet"]) for r in rows])
            needle = query.strip()
            rows = [] if not needle else c.execute(
                f"""SELECT id, title, tags, created_at, body FROM notes
                    WHERE (title LIKE ? ESCAPE '\\' OR body LIKE ? ESCAPE '\\') AND {TAG_FILTER}
                    ORDER BY created_at DESC, id DESC LIMIT ?""",
                (_like_pattern(needle), _like_pattern(needle), tag, tag, limit),
            ).fetchall()
        hits = []
        for r in rows:
            at = r["body"].lower().find(needle.lower())
            snippet = r["body"][max(0, at - 60): at + len(needle) + 60] if at >= 0 else r["body"][:120]
            hits.append(SearchHit(id=r["id"], title=r["title"], tags=_tags(r["tags"]), created_at=r["created_at"],
                                  snippet=snippet))
        return SearchResults(query=query, match="substring" if hits else "none", hits=hits)

    @server.tool(annotations=READ_ONLY)
    def list_notes(
        limit: Annotated[int, Field(ge=1, le=500, description="most notes to return (default 20)")] = 20,
        tag: Annotated[str | None, Field(description="only notes carrying this tag")] = None,
    ) -> NoteList:
        """List notes, most recent first, with a short preview of each body."""
        with conn() as c:
            total = c.execute(f"SELECT count(*) FROM notes WHERE {TAG_FILTER}", (tag, tag)).fetchone()[0]
            rows = c.execute(
                f"SELECT * FROM notes WHERE {TAG_FILTER} ORDER BY created_at DESC, id DESC LIMIT ?", (tag, tag, limit)
            ).fetchall()
        return NoteList(total=total, notes=[
            NoteSummary(id=r["id"], title=r["title"], tags=_tags(r["tags"]), created_at=r["created_at"],
                        preview=r["body"][:200]) for r in rows])

    @server.tool(annotations=READ_ONLY)
    def get_note(id: Annotated[int, Field(ge=1, le=MAX_ID, description="the note's id, as shown by add_note, list_notes or search_notes")]) -> Note:
        """Read one note in full by its id."""
        with conn() as c:
            row = c.execute("SELECT * FROM notes WHERE id = ?", (id,)).fetchone()
        if row is None:
            raise NotesError(f"there is no note with id {id}; list_notes or search_notes show the ids")
        return _note(row)

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False))
    def delete_note(id: Annotated[int, Field(ge=1, le=MAX_ID, description="the id of the note to delete")]) -> Deleted:
        """Delete a note for good (it cannot be recovered)."""
        with conn() as c, transaction(c):
            row = c.execute("SELECT title FROM notes WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise NotesError(f"there is no note with id {id}; nothing was deleted")
            c.execute("DELETE FROM notes WHERE id = ?", (id,))
        return Deleted(deleted_id=id, title=row["title"])

    return server


# ----------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, metavar="PATH",
                        help="the SQLite notebook; created if missing (default: notes.sqlite in the suite's data "
                             "folder, $MINICPM_HOME or ~/.local/share/minicpm)")


def build(args: argparse.Namespace) -> FastMCP:
    return build_server(db=args.db)
