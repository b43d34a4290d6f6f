"""Snapshot tests of the chat app's main screens (pytest-textual-snapshot).

Each test renders a screen headless and compares it with the SVG saved under tests/__snapshots__/;
a change in layout or content fails until a person looks at the new picture and accepts it with
`pytest tests/test_tui_snapshots.py --snapshot-update`. The chats are written straight into the store,
so the pictures do not depend on a model's wording or on timing.
"""

from __future__ import annotations

import pytest

from tui_support import ScriptedBackend, make_app

SIZE = (110, 36)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINICPM_MCP_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def seeded_app(tmp_path):
    app, store = make_app(tmp_path, ScriptedBackend())
    chat = store.create("Sorting in Python", model="default", backend="auto")
    store.add_message(chat.id, "user", "How do I sort a list of tuples by the second item?")
    store.add_message(chat.id, "assistant", "Use `sorted` with a key:\n\n```python\npairs = [(1, 'b'), (2, 'a')]\n"
                      "print(sorted(pairs, key=lambda p: p[1]))\n```\n\nIt returns a **new** list.",
                      thinking="The user wants a key function.", usage={"prompt_tokens": 31, "completion_tokens": 42,
                                                                          "decode_tokens_per_second": 48.0,
                                                                          "context_length": 8192})
    store.add_message(chat.id, "user", "Add a note to remember this.")
    store.add_message(chat.id, "assistant", "", tool_calls=[{"id": "call_1", "name": "add_note",
                                                             "args": {"title": "sorted with key"}}])
    store.add_message(chat.id, "tool", '{"id": 1, "title": "sorted with key"}', tool_call_id="call_1", name="add_note")
    store.add_message(chat.id, "assistant", "Done: the note is saved.")
    store.create("An older chat", model="default", backend="auto")
    app.open_chat = chat.id
    app.preload = False
    return app


def test_chat_screen(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), terminal_size=SIZE)


def test_settings_screen(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), press=["ctrl+o"], terminal_size=SIZE)


def test_command_palette(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), press=["ctrl+p", *"chat"], terminal_size=SIZE)


def test_survey_screen(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), press=["ctrl+s"], terminal_size=SIZE)
