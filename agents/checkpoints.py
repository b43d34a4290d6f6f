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
