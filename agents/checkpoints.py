"""SQLite checkpoints for the agents' LangGraph threads (tool-agent sessions, survey runs)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver


@contextlib.contextmanager
def sqlite_checkpointer(path: Path) -> Iterator[SqliteSaver]:
    """A SqliteSaver on the file at path, closed on exit."""
    connection = sqlite3.connect(path, check_same_thread=False)  # the saver has its own lock
    try:
        yield SqliteSaver(connection)
    finally:
        connection.close()


def latest_values(checkpointer, thread_id: str) -> dict[str, Any] | None:
    """The state a thread was last checkpointed with, without building its graph (None: no such thread)."""
    found = checkpointer.get_tuple({"configurable": {"thread_id": thread_id}})
    if found is None:
        return None
    return dict(found.checkpoint.get("channel_values") or {})


def recent_threads(checkpointer, limit: int = 50) -> list[tuple[str, str, dict[str, Any]]]:
    """(thread id, ISO time of its last checkpoint, its state) for the `limit` threads checkpointed
    most recently, newest first. Checkpoint ids are time-ordered (uuid6), so the newest checkpoint of
    a thread is its largest id; only those are read, not every step of every thread."""
    with checkpointer.cursor(transaction=False) as cursor:
        cursor.execute("SELECT thread_id, MAX(checkpoint_id) AS newest FROM checkpoints WHERE checkpoint_ns = '' "
                       "GROUP BY thread_id ORDER BY newest DESC LIMIT ?", (limit,))
        thread_ids = [row[0] for row in cursor.fetchall()]
    threads = []
    for thread_id in thread_ids:
        found = checkpointer.get_tuple({"configurable": {"thread_id": thread_id}})
        if found is not None:
            values = dict(found.checkpoint.get("channel_values") or {})
            threads.append((thread_id, found.checkpoint.get("ts", ""), values))
    return threads
