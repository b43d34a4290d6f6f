"""The chat app's history: conversations and their messages in one SQLite file.

    ConversationStore   open (creating or upgrading the file), then create / list / search / export
    Conversation        one chat: its title, model, backend, system prompt and free-form settings
    StoredMessage       one message of a chat, with the reasoning and usage kept beside the text

The file carries its schema version in `meta`; each version has one migration function, and opening
a file applies the missing ones in order inside one transaction, so an old file is upgraded with its
data intact or not at all. One connection is shared by the UI thread and the app's workers: every
operation takes the store's lock, and every write is a transaction.

Search uses two FTS5 indexes with the trigram tokenizer, so a term matches inside words and in
scripts written without spaces (Chinese); terms shorter than three characters, which a trigram
index cannot look up, are matched by a scan instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_text
from runtime.errors import MiniCPMError

SCHEMA_VERSION = 2
EXPORT_FORMAT = "minicpm-chat"
EXPORT_VERSION = 1
ROLES = ("user", "assistant", "tool", "system")
STATUSES = ("complete", "cancelled", "error", "denied")
MAX_TITLE = 200
TRIGRAM = 3  # the shortest term the trigram index can look up


class StoreError(MiniCPMError):
    """The chat history file cannot be used, or names a chat or message it does not hold."""


@dataclass
class Conversation:
    id: str  # uuid4 hex[:12]
    title: str
    created: float  # time.time()
    updated: float
    model: str  # a model reference: "default", a path, a remote model name
    backend: str  # torch | gguf | openai | auto
    system_prompt: str
    settings: dict = field(default_factory=dict)  # free-form JSON: sampling, sparse, thinking, tools...


@dataclass
class StoredMessage:
    id: int
    conversation_id: str
    role: str  # user | assistant | tool | system
    content: str  # the visible text (an assistant's without its <think> block)
    thinking: str = ""  # reasoning shown collapsed; never sent back as context
    tool_calls: list[dict] = field(default_factory=list)  # [{"id", "name", "args"}]
    tool_call_id: str | None = None  # role "tool": the call this answers
    name: str | None = None  # role "tool": the tool's name
    status: str = "complete"  # complete | cancelled | error | denied
    usage: dict | None = None  # {"prompt_tokens", "completion_tokens", "seconds", ...}
    created: float = 0.0


# -- schema ---------------------------------------------------------------------------------------
# One function per version, each taking the file from the version before it. They run inside the
# opening transaction; a new file runs them all, so a fresh file and an upgraded one are built alike.

def _create_v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("""
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}'
        )""")
    db.execute("""
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            tool_calls TEXT,
            tool_call_id TEXT,
            name TEXT,
            created REAL NOT NULL
        )""")
    db.execute("CREATE INDEX messages_by_conversation ON messages (conversation_id, id)")


def _add_reasoning_status_and_search(db: sqlite3.Connection) -> None:
    """v2: reasoning, status and usage beside each message, and full-text search."""
    db.execute("ALTER TABLE messages ADD COLUMN thinking TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE messages ADD COLUMN status TEXT NOT NULL DEFAULT 'complete'")
    db.execute("ALTER TABLE messages ADD COLUMN usage TEXT")
    # Message text is indexed from the messages table itself (external content: no second copy);
    # its rowid is the INTEGER PRIMARY KEY, which VACUUM keeps.
    db.execute("CREATE VIRTUAL TABLE messages_fts USING fts5("
               "content, content='messages', content_rowid='id', tokenize='trigram')")
    # (one statement at a time: executescript would commit the migration's transaction half-way)
    for statement in (
        """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
               INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
           END""",
        """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
               INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
           END""",
        """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
               INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
               INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
           END""",
    ):
        db.execute(statement)
    db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
    # Titles keep their own copy: conversations has a text key, and VACUUM may renumber the hidden
    # rowid an external-content index would point at. Titles are short; the copy costs little.
    db.execute("CREATE VIRTUAL TABLE titles_fts USING fts5(title, conversation_id UNINDEXED, tokenize='trigram')")
    for statement in (
        """CREATE TRIGGER titles_fts_insert AFTER INSERT ON conversations BEGIN
               INSERT INTO titles_fts (title, conversation_id) VALUES (new.title, new.id);
           END""",
        """CREATE TRIGGER titles_fts_delete AFTER DELETE ON conversations BEGIN
               DELETE FROM titles_fts WHERE conversation_id = old.id;
           END""",
        """CREATE TRIGGER titles_fts_update AFTER UPDATE OF title ON conversations BEGIN
               UPDATE titles_fts SET title = new.title WHERE conversation_id = old.id;
           END""",
    ):
        db.execute(statement)
    db.execute("INSERT INTO titles_fts (title, conversation_id) SELECT title, id FROM conversations")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _create_v1,
    2: _add_reasoning_status_and_search,
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1)), "one migration per schema version"


# -- the store ------------------------------------------------------------------------------------

class ConversationStore:
    """The chat history in the SQLite file at `path` (created if missing, upgraded if old)."""

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._last_stamp = 0.0
        if sqlite3.sqlite_version_info < (3, 34, 0):
            raise StoreError(f"the chat history needs SQLite 3.34 or newer (for its trigram search index); this "
                             f"Python's sqlite3 module uses SQLite {sqlite3.sqlite_version}: use a newer Python build")
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a chat history file: pass a file path (--db FILE)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of the chat history {self.path}: "
                             f"{exc.strerror or exc}; pass another file with --db") from None
        try:
            # isolation_level=None: the store issues BEGIN and COMMIT itself (see _transaction).
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the chat history {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._db.create_function("casefold", 1, _casefold, deterministic=True)
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def default(cls) -> ConversationStore:
        """The store in the suite's data folder (runtime/settings.py: MINICPM_HOME or the XDG data dir)."""
        from runtime.settings import data_path

        return cls(data_path("chats.sqlite"))

    def _open(self) -> None:
        try:
            self._db.execute("PRAGMA foreign_keys = ON")  # must be set outside a transaction
            self._db.execute("PRAGMA journal_mode = WAL")  # the first read of the file
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorname == "SQLITE_NOTADB":
                raise StoreError(f"{self.path} is not a chat history database ({exc}): "
                                 "move it out of the way or pass another file with --db") from exc
            raise StoreError(f"cannot open the chat history {self.path}: {exc}; "
                             "check its permissions or pass another file with --db") from exc
        with self._transaction() as db:
            version = self._schema_version(db)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer version of the MiniCPM suite (chat history schema "
                    f"{version}; this version reads up to {SCHEMA_VERSION}): upgrade the suite, "
                    "or pass another file with --db")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](db)
            if version < SCHEMA_VERSION:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))

    def _schema_version(self, db: sqlite3.Connection) -> int:
        """The file's schema version; 0 for an empty file."""
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "meta" not in tables:
            if tables:
                raise StoreError(f"{self.path} is a SQLite database but not a chat history "
                                 f"(it holds {', '.join(sorted(tables)[:5])}): pass another file with --db")
            return 0
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0])
        except (TypeError, ValueError):
            found = "none" if row is None else repr(row[0])
            raise StoreError(f"{self.path} has no usable chat history schema version (found {found}): "
                             "pass another file with --db") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, locked, inside one transaction: committed on success, rolled back on any error.

        BEGIN IMMEDIATE takes the file's write lock at the start, so another process writing the
        same file waits (up to the connect timeout) instead of failing half-way through."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also when COMMIT itself failed: never leave it open
                    self._db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, locked, inside a read transaction: several queries see one state of the file."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _stamp(self) -> float:
        """time.time(), but strictly increasing within this store: the list is ordered by it, and
        two changes within one clock tick (coarse clocks) must still keep their order."""
        with self._lock:
            self._last_stamp = max(time.time(), self._last_stamp + 1e-6)
            return self._last_stamp

    # -- conversations --------------------------------------------------------------------------

    def create(self, title: str = "New chat", *, model: str = "default", backend: str = "auto",
               system_prompt: str = "", settings: dict | None = None) -> Conversation:
        now = self._stamp()
        conversation = Conversation(id=uuid.uuid4().hex[:12], title=_clean_title(title), created=now, updated=now,
                                    model=model, backend=backend, system_prompt=system_prompt,
                                    settings=dict(settings or {}))
        with self._transaction() as db:
            _insert_conversation(db, conversation)
        return conversation

    def get(self, conversation_id: str) -> Conversation:
        with self._lock:
            return self._get(self._db, conversation_id)

    def _get(self, db: sqlite3.Connection, conversation_id: str) -> Conversation:
        row = db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise StoreError(f"no conversation '{conversation_id}' in {self.path} "
                             "(`minicpm chat --list` shows the saved chats)")
        return _conversation(row)

    def list(self, limit: int | None = None) -> list[Conversation]:
        """The conversations, most recently updated first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM conversations ORDER BY updated DESC, rowid DESC LIMIT ?",
                                    (-1 if limit is None else limit,)).fetchall()
        return [_conversation(row) for row in rows]

    def rename(self, conversation_id: str, title: str) -> Conversation:
        clean = _clean_title(title)
        with self._transaction() as db:
            self._get(db, conversation_id)
            db.execute("UPDATE conversations SET title = ?, updated = ? WHERE id = ?",
                       (clean, self._stamp(), conversation_id))
            return self._get(db, conversation_id)

    def delete(self, conversation_id: str) -> None:
        """Delete the conversation and its messages (ON DELETE CASCADE)."""
        with self._transaction() as db:
            self._get(db, conversation_id)
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def update(self, conversation_id: str, *, model: str | None = None, backend: str | None = None,
               system_prompt: str | None = None, settings: dict | None = None) -> Conversation:
        """Change what is given (settings are replaced as a whole, not merged)."""
        changes = _given(model=model, backend=backend, system_prompt=system_prompt,
                         settings=None if settings is None else json.dumps(settings, ensure_ascii=False))
        with self._transaction() as db:
            self._get(db, conversation_id)
            _update_row(db, "conversations", conversation_id, {**changes, "updated": self._stamp()})
            return self._get(db, conversation_id)

    # -- messages -------------------------------------------------------------------------------

    def add_message(self, conversation_id: str, role: str, content: str, *, thinking: str = "",
                    tool_calls: list[dict] | None = None, tool_call_id: str | None = None, name: str | None = None,
                    status: str = "complete", usage: dict | None = None) -> StoredMessage:
        """Append a message to the conversation (which becomes the most recently updated)."""
        _check_choice("role", role, ROLES)
        _check_choice("status", status, STATUSES)
        now = self._stamp()
        with self._transaction() as db:
            self._get(db, conversation_id)
            cursor = db.execute(
                "INSERT INTO messages (conversation_id, role, content, thinking, tool_calls, tool_call_id, name,"
                " status, usage, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, thinking, _json_or_null(tool_calls or None), tool_call_id, name,
                 status, _json_or_null(usage), now))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            return self._message(db, cursor.lastrowid)

    def update_message(self, message_id: int, *, content: str | None = None, thinking: str | None = None,
                       tool_calls: list[dict] | None = None, status: str | None = None,
                       usage: dict | None = None) -> StoredMessage:
        """Change what is given of a message (a streamed reply as it grows, then its final status)."""
        if status is not None:
            _check_choice("status", status, STATUSES)
        changes = _given(content=content, thinking=thinking, status=status,
                         tool_calls=None if tool_calls is None else json.dumps(tool_calls, ensure_ascii=False),
                         usage=None if usage is None else json.dumps(usage, ensure_ascii=False))
        with self._transaction() as db:
            message = self._message(db, message_id)
            if changes:
                _update_row(db, "messages", message_id, changes)
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (self._stamp(), message.conversation_id))
            return self._message(db, message_id)

    def delete_messages_after(self, conversation_id: str, message_id: int) -> int:
        """Delete the conversation's messages that came after message_id (to regenerate an answer);
        returns how many were deleted."""
        with self._transaction() as db:
            if self._message(db, message_id).conversation_id != conversation_id:
                raise StoreError(f"message {message_id} is not part of conversation '{conversation_id}'")
            cursor = db.execute("DELETE FROM messages WHERE conversation_id = ? AND id > ?",
                                (conversation_id, message_id))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (self._stamp(), conversation_id))
            return cursor.rowcount

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        """The conversation's messages in the order they were added."""
        with self._reading() as db:
            return self._messages(db, conversation_id)

    def _messages(self, db: sqlite3.Connection, conversation_id: str) -> list[StoredMessage]:
        self._get(db, conversation_id)
        rows = db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return [_stored_message(row) for row in rows]

    def _message(self, db: sqlite3.Connection, message_id: int) -> StoredMessage:
        row = db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise StoreError(f"no message {message_id} in {self.path}")
        return _stored_message(row)

    # -- search ---------------------------------------------------------------------------------

    def search(self, query: str, limit: int = 50) -> list[tuple[Conversation, str]]:
        """Conversations whose title or one of whose messages holds every word of the query, most
        recently updated first, each with a one-line snippet around the match.

        The query is plain text, never FTS syntax: each word is quoted, so quotes, operators (AND,
        NEAR) and stars are searched for as written."""
        terms = list(dict.fromkeys(query.split()))
        if not terms:
            return []
        indexed = [t for t in terms if len(t) >= TRIGRAM]
        short = [_casefold(t) for t in terms if len(t) < TRIGRAM]
        hits: dict[str, str] = {}  # conversation id -> snippet of its best match (title first)
        with self._reading() as db:
            for source in SEARCH_SOURCES:
                for conversation_id, snippet in _hits(db, source, indexed, short):
                    hits.setdefault(conversation_id, snippet)
            found = [self._get(db, conversation_id) for conversation_id in hits]
        found.sort(key=lambda c: c.updated, reverse=True)
        return [(c, hits[c.id]) for c in found[:limit]]

    # -- export and import ----------------------------------------------------------------------

    def export_json(self, conversation_id: str) -> dict[str, Any]:
        """The conversation as a JSON document that import_json reads back."""
        with self._reading() as db:
            conversation = self._get(db, conversation_id)
            messages = self._messages(db, conversation_id)
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "conversation": asdict(conversation),
                "messages": [{k: v for k, v in asdict(m).items() if k != "conversation_id"} for m in messages]}

    def import_json(self, document: Any) -> Conversation:
        """Add the conversation of an export_json document. It keeps its id unless this store already
        has one with that id (then it gets a new one); its messages get new message ids."""
        conversation, messages = _check_document(document)
        with self._transaction() as db:
            taken = db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation.id,)).fetchone()
            if taken or not conversation.id:
                conversation.id = uuid.uuid4().hex[:12]
            _insert_conversation(db, conversation)
            for m in messages:
                db.execute(
                    "INSERT INTO messages (conversation_id, role, content, thinking, tool_calls, tool_call_id, name,"
                    " status, usage, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (conversation.id, m.role, m.content, m.thinking, _json_or_null(m.tool_calls or None),
                     m.tool_call_id, m.name, m.status, _json_or_null(m.usage), m.created))
            return self._get(db, conversation.id)

    def export_markdown(self, conversation_id: str) -> str:
        """The conversation as a readable Markdown document (reasoning folded in <details> blocks)."""
        with self._reading() as db:
            c = self._get(db, conversation_id)
            messages = self._messages(db, conversation_id)
        lines = [f"# {c.title}", "",
                 f"- model: `{c.model}` (backend: {c.backend})",
                 f"- created: {_when(c.created)}, updated: {_when(c.updated)}",
                 f"- id: `{c.id}`"]
        if c.settings:
            lines.append(f"- settings: `{json.dumps(c.settings, ensure_ascii=False, sort_keys=True)}`")
        if c.system_prompt.strip():
            lines += ["", "## System prompt", "", c.system_prompt.strip()]
        for m in messages:
            lines += ["", _heading(m), ""]
            if m.thinking.strip():
                lines += ["<details><summary>Thinking</summary>", "", m.thinking.strip(), "", "</details>", ""]
            if m.role == "tool":
                lines.append(_fenced(_pretty_json_or_text(m.content)))
            elif m.content.strip():
                lines.append(m.content.strip())
            for call in m.tool_calls:
                lines += ["", f"Tool call `{call.get('name', '?')}`:", "",
                          _fenced(json.dumps(call, ensure_ascii=False, indent=2), "json")]
            if m.usage and m.usage.get("completion_tokens"):
                lines += ["", f"*{m.usage['completion_tokens']} tokens*"]
        return "\n".join(lines).rstrip() + "\n"

    def export(self, conversation_id: str, path: Path | str, fmt: str = "markdown") -> Path:
        """Write the conversation to path as Markdown or JSON, atomically; returns the path written."""
        _check_choice("export format", fmt, ("markdown", "json"), error=StoreError)
        if fmt == "markdown":
            text = self.export_markdown(conversation_id)
        else:
            text = json.dumps(self.export_json(conversation_id), ensure_ascii=False, indent=2) + "\n"
        path = Path(path).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        return path


# -- rows -----------------------------------------------------------------------------------------

def _insert_conversation(db: sqlite3.Connection, c: Conversation) -> None:
    db.execute("INSERT INTO conversations (id, title, created, updated, model, backend, system_prompt, settings)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (c.id, c.title, c.created, c.updated, c.model, c.backend, c.system_prompt,
                json.dumps(c.settings, ensure_ascii=False)))


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(id=row["id"], title=row["title"], created=row["created"], updated=row["updated"],
                        model=row["model"], backend=row["backend"], system_prompt=row["system_prompt"],
                        settings=json.loads(row["settings"] or "{}"))


def _stored_message(row: sqlite3.Row) -> StoredMessage:
    return StoredMessage(id=row["id"], conversation_id=row["conversation_id"], role=row["role"],
                         content=row["content"], thinking=row["thinking"],
                         tool_calls=json.loads(row["tool_calls"]) if row["tool_calls"] else [],
                         tool_call_id=row["tool_call_id"], name=row["name"], status=row["status"],
                         usage=json.loads(row["usage"]) if row["usage"] else None, created=row["created"])


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given (None means: leave that column as it is)."""
    return {column: value for column, value in values.items() if value is not None}


def _update_row(db: sqlite3.Connection, table: str, key: Any, changes: dict[str, Any]) -> None:
    # Table and column names come from this module, never from a caller's data.
    assignments = ", ".join(f"{column} = ?" for column in changes)
    db.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*changes.values(), key))


def _clean_title(title: str) -> str:
    """The title on one line, without surrounding blanks; empty or over MAX_TITLE characters is refused."""
    clean = " ".join(str(title).split())
    if not clean:
        raise StoreError("a chat title cannot be empty")
    if len(clean) > MAX_TITLE:
        raise StoreError(f"a chat title has at most {MAX_TITLE} characters (this one has {len(clean)})")
    return clean


def _check_choice(what: str, value: Any, allowed: tuple[str, ...], error: type[Exception] = ValueError) -> None:
    if value not in allowed:
        raise error(f"{what} must be one of {', '.join(allowed)} (got {value!r})")


# -- search helpers -------------------------------------------------------------------------------

# Where search looks, titles first: (FTS table, the text it indexes, the conversation id, the rows to read).
SEARCH_SOURCES = {
    "title": ("titles_fts", "titles_fts.title", "titles_fts.conversation_id", "titles_fts"),
    "message": ("messages_fts", "messages.content", "messages.conversation_id",
                "messages_fts JOIN messages ON messages.id = messages_fts.rowid"),
}


def _hits(db: sqlite3.Connection, source: str, indexed: list[str], short: list[str]) -> Iterator[tuple[str, str]]:
    """(conversation id, snippet) for each title or message holding all the terms, best first.

    Terms of three characters or more are looked up in the trigram index; shorter ones are checked
    on the rows found, or, when the query has only short terms, on every row (a scan)."""
    index, text, owner, rows_from = SEARCH_SOURCES[source]
    scan = " AND ".join(f"instr(casefold({text}), ?) > 0" for _ in short)
    if indexed:
        # snippet(): about 40 trigram tokens, which is about 40 characters around the match.
        sql = (f"SELECT {owner}, snippet({index}, 0, '', '', '…', 40) FROM {rows_from} "
               f"WHERE {index} MATCH ? {'AND ' + scan if scan else ''} ORDER BY rank")
        for conversation_id, snippet in db.execute(sql, (" ".join(_quoted(t) for t in indexed), *short)):
            yield conversation_id, _one_line(snippet)
    else:
        table = index if source == "title" else "messages"
        for conversation_id, body in db.execute(f"SELECT {owner}, {text} FROM {table} WHERE {scan}", short):
            yield conversation_id, _excerpt(body, short[0])


def _casefold(text: str | None) -> str:
    return (text or "").casefold()


def _quoted(term: str) -> str:
    """A term as an FTS5 string: whatever it holds is searched for as written, never parsed."""
    return '"' + term.replace('"', '""') + '"'


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _excerpt(text: str, term: str, width: int = 40) -> str:
    """About `width` characters of text around the first match of term (already casefolded)."""
    at = max(_casefold(text).find(term), 0)  # casefold can change lengths a little: close enough
    start, end = max(at - width // 2, 0), min(at + len(term) + width // 2, len(text))
    return ("…" if start else "") + _one_line(text[start:end]) + ("…" if end < len(text) else "")


# -- export helpers -------------------------------------------------------------------------------

def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def _heading(m: StoredMessage) -> str:
    title = {"user": "User", "assistant": "Assistant", "system": "System"}.get(m.role, "Tool result")
    if m.role == "tool":
        title += f": `{m.name or '?'}`" + (f" (call `{m.tool_call_id}`)" if m.tool_call_id else "")
    return f"## {title}" + (f" ({m.status})" if m.status != "complete" else "")


def _fenced(text: str, language: str = "") -> str:
    """A code fence longer than any run of backticks inside the text, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _pretty_json_or_text(text: str) -> str:
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except ValueError:
        return text


# -- import validation ----------------------------------------------------------------------------

def _check_document(document: Any) -> tuple[Conversation, list[StoredMessage]]:
    """The conversation and messages of an export_json document; StoreError names the first problem."""
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise StoreError(f"not a chat export: expected a JSON object with \"format\": \"{EXPORT_FORMAT}\"")
    version = document.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise StoreError(f"chat export version {version!r} is not one this suite reads (up to {EXPORT_VERSION}): "
                         "upgrade the suite")
    c = _field(document, "conversation", dict, "")
    conversation = Conversation(
        id=_field(c, "id", str, "conversation.", default=""),
        title=_clean_title(_field(c, "title", str, "conversation.")),
        created=float(_field(c, "created", (int, float), "conversation.")),
        updated=float(_field(c, "updated", (int, float), "conversation.")),
        model=_field(c, "model", str, "conversation.", default="default"),
        backend=_field(c, "backend", str, "conversation.", default="auto"),
        system_prompt=_field(c, "system_prompt", str, "conversation.", default=""),
        settings=_field(c, "settings", dict, "conversation.", default={}))
    if not re.fullmatch(r"[0-9a-f]{1,32}", conversation.id):
        conversation.id = ""  # not one of ours: import_json gives it a fresh one
    messages = []
    for i, m in enumerate(_field(document, "messages", list, "")):
        where = f"messages[{i}]."
        if not isinstance(m, dict):
            raise StoreError(f"chat export: {where[:-1]} must be an object")
        message = StoredMessage(
            id=0, conversation_id="",
            role=_field(m, "role", str, where), content=_field(m, "content", str, where),
            thinking=_field(m, "thinking", str, where, default=""),
            tool_calls=_field(m, "tool_calls", list, where, default=[]),
            tool_call_id=_field(m, "tool_call_id", (str, type(None)), where, default=None),
            name=_field(m, "name", (str, type(None)), where, default=None),
            status=_field(m, "status", str, where, default="complete"),
            usage=_field(m, "usage", (dict, type(None)), where, default=None),
            created=float(_field(m, "created", (int, float), where, default=conversation.created)))
        _check_choice(f"chat export: {where}role", message.role, ROLES, error=StoreError)
        _check_choice(f"chat export: {where}status", message.status, STATUSES, error=StoreError)
        if not all(isinstance(call, dict) and isinstance(call.get("name"), str) for call in message.tool_calls):
            raise StoreError(f"chat export: {where}tool_calls must be a list of objects with a 'name'")
        messages.append(message)
    return conversation, messages


_REQUIRED = object()


def _field(obj: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = _REQUIRED) -> Any:
    """obj[key] if it has the expected type (a bool is not a number here), else a StoreError."""
    if key not in obj:
        if default is _REQUIRED:
            raise StoreError(f"chat export: {where}{key} is missing")
        return default
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise StoreError(f"chat export: {where}{key} must be {names}, not {type(value).__name__}")
    return value
