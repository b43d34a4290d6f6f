"""The chat history store on real SQLite files: conversations, messages, search, migrations, export."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from tui.store import SCHEMA_VERSION, ConversationStore, StoreError


@pytest.fixture
def store(tmp_path):
    with ConversationStore(tmp_path / "chats.sqlite") as opened:
        yield opened


def schema_version(path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


# -- conversations --------------------------------------------------------------------------------

def test_conversations_are_listed_most_recently_updated_first(store):
    first = store.create("First", model="default", backend="torch", settings={"temperature": 0.7})
    second = store.create("Second")
    third = store.create("Third")
    assert [c.title for c in store.list()] == ["Third", "Second", "First"]
    store.add_message(first.id, "user", "hello again")
    assert [c.title for c in store.list()] == ["First", "Third", "Second"]
    assert [c.id for c in store.list(limit=2)] == [first.id, third.id]
    got = store.get(first.id)
    assert (got.model, got.backend, got.settings) == ("default", "torch", {"temperature": 0.7})
    assert got.updated > got.created and len(got.id) == 12
    assert store.get(second.id).title == "Second"


def test_rename_strips_and_refuses_empty_or_long_titles(store):
    chat = store.create("Old")
    renamed = store.rename(chat.id, "  A new\nname  ")
    assert renamed.title == "A new name" and store.get(chat.id).title == "A new name"
    with pytest.raises(StoreError, match="cannot be empty"):
        store.rename(chat.id, "   ")
    with pytest.raises(StoreError, match="at most 200 characters"):
        store.rename(chat.id, "x" * 201)
    assert store.get(chat.id).title == "A new name"


def test_update_changes_only_what_is_given(store):
    chat = store.create("Chat", model="default", backend="auto", system_prompt="Be brief.", settings={"seed": 1})
    updated = store.update(chat.id, backend="gguf", settings={"seed": 2, "thinking": "off"})
    assert (updated.model, updated.backend, updated.system_prompt) == ("default", "gguf", "Be brief.")
    assert store.get(chat.id).settings == {"seed": 2, "thinking": "off"}


def test_delete_removes_the_conversation_and_its_messages(store, tmp_path):
    chat = store.create("Doomed")
    store.add_message(chat.id, "user", "remember the word pelican")
    kept = store.create("Kept")
    store.delete(chat.id)
    assert [c.id for c in store.list()] == [kept.id]
    assert store.search("pelican") == []
    with sqlite3.connect(tmp_path / "chats.sqlite") as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    with pytest.raises(StoreError, match=f"no conversation '{chat.id}'"):
        store.get(chat.id)
    with pytest.raises(StoreError, match="no conversation 'nope'"):
        store.messages("nope")


# -- messages -------------------------------------------------------------------------------------

def test_messages_round_trip_with_tool_calls_usage_and_status(store):
    chat = store.create("Tools")
    store.add_message(chat.id, "user", "Add a note")
    call = {"id": "call_1", "name": "add_note", "args": {"title": "sorted", "tags": ["python", "ü"]}}
    store.add_message(chat.id, "assistant", "", thinking="I should call the tool.", tool_calls=[call],
                      usage={"prompt_tokens": 12, "completion_tokens": 5, "seconds": 0.25})
    store.add_message(chat.id, "tool", '{"id": 1}', tool_call_id="call_1", name="add_note", status="denied")
    store.add_message(chat.id, "assistant", "Done.", tool_calls=None)
    user, asked, result, answer = store.messages(chat.id)
    assert (user.role, user.content, user.tool_calls, user.usage, user.status) == (
        "user", "Add a note", [], None, "complete")
    assert asked.tool_calls == [call] and asked.thinking == "I should call the tool."
    assert asked.usage == {"prompt_tokens": 12, "completion_tokens": 5, "seconds": 0.25}
    assert (result.tool_call_id, result.name, result.status) == ("call_1", "add_note", "denied")
    assert answer.content == "Done." and answer.conversation_id == chat.id
    assert user.id < asked.id < result.id < answer.id and user.created <= answer.created
    with pytest.raises(ValueError, match="role must be one of"):
        store.add_message(chat.id, "robot", "beep")
    with pytest.raises(StoreError, match="no conversation 'missing'"):
        store.add_message("missing", "user", "hi")


def test_update_message_changes_a_streamed_reply(store):
    chat = store.create("Stream")
    reply = store.add_message(chat.id, "assistant", "Draft", status="cancelled")
    updated = store.update_message(reply.id, content="Paris is the capital.", thinking="easy",
                                   status="complete", usage={"completion_tokens": 5})
    assert (updated.content, updated.thinking, updated.status, updated.usage) == (
        "Paris is the capital.", "easy", "complete", {"completion_tokens": 5})
    assert store.messages(chat.id) == [updated]
    assert store.update_message(reply.id, status="error").content == "Paris is the capital."
    assert [c.title for c, _ in store.search("capital")] == ["Stream"]  # the index follows the new text
    assert store.search("Draft") == []
    with pytest.raises(StoreError, match="no message 999"):
        store.update_message(999, content="x")


def test_delete_messages_after_keeps_the_turns_up_to_the_message(store):
    chat = store.create("Regenerate")
    other = store.create("Other")
    question = store.add_message(chat.id, "user", "Question?")
    store.add_message(chat.id, "assistant", "A bad answer")
    store.add_message(other.id, "user", "untouched")
    assert store.delete_messages_after(chat.id, question.id) == 1
    assert [m.content for m in store.messages(chat.id)] == ["Question?"]
    assert [m.content for m in store.messages(other.id)] == ["untouched"]
    with pytest.raises(StoreError, match="not part of conversation"):
        store.delete_messages_after(other.id, question.id)


def test_threads_can_share_one_store(store):
    chat = store.create("Busy")

    def write(n):
        for i in range(20):
            store.add_message(chat.id, "user", f"thread {n} message {i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.messages(chat.id)) == 80


# -- search ---------------------------------------------------------------------------------------

def test_search_finds_titles_and_message_text_with_snippets(store):
    sorting = store.create("Sorting in Python")
    store.add_message(sorting.id, "user", "How do I sort tuples by the second item?")
    cooking = store.create("Dinner")
    store.add_message(cooking.id, "assistant", "Preheat the oven to 200 degrees, then roast the vegetables for "
                                               "forty minutes until they are golden and crisp at the edges.")
    [(found, snippet)] = store.search("python")
    assert found.id == sorting.id and "Python" in snippet
    [(found, snippet)] = store.search("vegetables")
    assert found.id == cooking.id and "vegetables" in snippet and "\n" not in snippet and len(snippet) < 80
    [(found, _)] = store.search("ROAST oven")  # every word, any case, in one message
    assert found.id == cooking.id
    assert store.search("roast python") == []
    assert [c.id for c, _ in store.search("the")] == [cooking.id, sorting.id]  # most recently updated first
    assert [c.id for c, _ in store.search("tup")] == [sorting.id]  # inside a word, as a search box types
    assert store.search("") == [] and store.search("   ") == []


@pytest.mark.parametrize("query", ['"foo', "AND", "a*(", "NEAR(x y)", "col:umn", "-", "'", "*", '"', "^x", "OR NOT"])
def test_search_never_raises_on_user_text(store, query):
    chat = store.create("Syntax")
    store.add_message(chat.id, "user", 'He wrote "foo and bar AND baz, a*(b) OR NOT')
    results = store.search(query)
    assert all(c.id == chat.id for c, _ in results)
    if query in ('"foo', "AND", "a*(", "OR NOT"):
        assert [c.id for c, _ in results] == [chat.id]


def test_search_handles_unicode_and_short_terms(store):
    chinese = store.create("旅行计划")
    store.add_message(chinese.id, "user", "我想去北京天安门看看，然后吃烤鸭。")
    accents = store.create("Café notes")
    store.add_message(accents.id, "assistant", "Crème brûlée needs a torch 🔥.")
    assert [c.id for c, _ in store.search("北京天安门")] == [chinese.id]
    [(found, snippet)] = store.search("北京")  # two characters: a scan, not the trigram index
    assert found.id == chinese.id and "北京" in snippet
    assert [c.id for c, _ in store.search("CRÈME")] == [accents.id]
    assert [c.id for c, _ in store.search("café")] == [accents.id]
    assert [c.id for c, _ in store.search("🔥")] == [accents.id]
    assert [c.id for c, _ in store.search("torch 🔥")] == [accents.id]
    assert store.search("torch 北") == []


# -- the file: migrations and refusals ------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    model TEXT NOT NULL, backend TEXT NOT NULL, system_prompt TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}');
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, tool_calls TEXT, tool_call_id TEXT, name TEXT, created REAL NOT NULL);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO conversations VALUES ('0123456789ab', 'Old chat about llamas', 1000.0, 2000.0, 'default', 'gguf',
    'Be kind.', '{"temperature": 0.2}');
INSERT INTO messages (conversation_id, role, content, tool_calls, tool_call_id, name, created) VALUES
    ('0123456789ab', 'user', 'Tell me about alpacas', NULL, NULL, NULL, 1500.0),
    ('0123456789ab', 'assistant', '', '[{"id": "c1", "name": "wiki", "args": {"q": "alpaca"}}]', NULL, NULL, 1600.0),
    ('0123456789ab', 'tool', 'Alpacas are camelids.', NULL, 'c1', 'wiki', 1700.0);
"""


def test_a_version_1_file_is_upgraded_with_its_data(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
    with ConversationStore(path) as store:
        [chat] = store.list()
        assert (chat.id, chat.title, chat.model, chat.backend, chat.system_prompt, chat.settings) == (
            "0123456789ab", "Old chat about llamas", "default", "gguf", "Be kind.", {"temperature": 0.2})
        user, call, result = store.messages(chat.id)
        assert (user.content, user.thinking, user.status, user.usage, user.created) == (
            "Tell me about alpacas", "", "complete", None, 1500.0)
        assert call.tool_calls == [{"id": "c1", "name": "wiki", "args": {"q": "alpaca"}}]
        assert (result.tool_call_id, result.name) == ("c1", "wiki")
        assert [c.id for c, _ in store.search("llamas")] == [chat.id]  # old titles are indexed
        assert [c.id for c, _ in store.search("camelids")] == [chat.id]  # and old messages
        store.add_message(chat.id, "assistant", "They are.", thinking="recall", status="complete")
    assert schema_version(path) == SCHEMA_VERSION
    with ConversationStore(path) as reopened:  # a second open finds nothing to migrate
        assert [m.content for m in reopened.messages("0123456789ab")][-1] == "They are."


def test_a_failed_migration_leaves_the_old_file_as_it_was(tmp_path, monkeypatch):
    import tui.store

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)

    def broken(db):
        db.execute("ALTER TABLE messages ADD COLUMN thinking TEXT NOT NULL DEFAULT ''")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(tui.store.MIGRATIONS, 2, broken)
    with pytest.raises(sqlite3.OperationalError):
        ConversationStore(path)
    assert schema_version(path) == 1
    with sqlite3.connect(path) as db:
        assert "thinking" not in [row[1] for row in db.execute("PRAGMA table_info(messages)")]
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 3


def test_a_file_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    ConversationStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"{path}.*newer version.*schema {SCHEMA_VERSION + 1}.*upgrade"):
        ConversationStore(path)


def test_files_that_are_not_a_chat_history_are_refused(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError, match=f"{text} is not a chat history database.*--db"):
        ConversationStore(text)
    assert text.read_text().startswith("these are my notes")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match="SQLite database but not a chat history.*invoices"):
        ConversationStore(other)
    with pytest.raises(StoreError, match="is a folder"):
        ConversationStore(tmp_path)


def test_the_default_store_lives_in_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    with ConversationStore.default() as store:
        assert store.path == tmp_path / "home" / "chats.sqlite" and store.path.exists()


# -- export and import ----------------------------------------------------------------------------

def fill(store):
    chat = store.create("Capitals", model="openbmb/MiniCPM4-8B", backend="openai", system_prompt="Answer briefly.",
                        settings={"temperature": 0.3, "tools": ["wiki"]})
    store.add_message(chat.id, "user", "What is the capital of France?")
    store.add_message(chat.id, "assistant", "", tool_calls=[{"id": "c1", "name": "wiki", "args": {"q": "France"}}])
    store.add_message(chat.id, "tool", '{"capital": "Paris"}', tool_call_id="c1", name="wiki")
    store.add_message(chat.id, "assistant", "Paris, see ```this```.", thinking="The tool says Paris.",
                      usage={"prompt_tokens": 30, "completion_tokens": 4})
    store.add_message(chat.id, "assistant", "Also", status="cancelled")
    return chat


def test_export_markdown_shows_the_turns_thinking_and_tool_calls(store):
    chat = fill(store)
    text = store.export_markdown(chat.id)
    assert text.startswith("# Capitals\n")
    assert "`openbmb/MiniCPM4-8B` (backend: openai)" in text and "Answer briefly." in text
    assert "## User\n\nWhat is the capital of France?" in text
    assert "<details><summary>Thinking</summary>\n\nThe tool says Paris.\n\n</details>" in text
    assert '```json\n{\n  "id": "c1",\n  "name": "wiki"' in text
    assert '## Tool result: `wiki` (call `c1`)\n\n```\n{\n  "capital": "Paris"\n}\n```' in text
    assert "````\n" not in text and "Paris, see ```this```." in text  # the answer is not fenced
    assert "## Assistant (cancelled)\n\nAlso" in text
    assert text.index("## User") < text.index("Thinking") < text.index("## Assistant (cancelled)")


def test_export_json_round_trips_through_import_json(store, tmp_path):
    chat = fill(store)
    document = store.export_json(chat.id)
    assert document["format"] == "minicpm-chat" and document["version"] == 1
    document = json.loads(json.dumps(document))  # as it comes back from a file

    with ConversationStore(tmp_path / "elsewhere.sqlite") as other:
        imported = other.import_json(document)
        assert imported == store.get(chat.id)
        assert other.export_json(imported.id) == document

    copy = store.import_json(document)  # the id is taken here: the copy gets its own
    assert copy.id != chat.id and copy.title == "Capitals"
    assert [(m.role, m.content, m.tool_calls, m.status) for m in store.messages(copy.id)] == [
        (m.role, m.content, m.tool_calls, m.status) for m in store.messages(chat.id)]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="something"), "not a chat export"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["conversation"].pop("title"), "conversation.title is missing"),
    (lambda d: d["conversation"].update(created="yesterday"), "conversation.created must be"),
    (lambda d: d["messages"][0].update(role="robot"), r"messages\[0\].role must be one of"),
    (lambda d: d["messages"][1].update(tool_calls=["oops"]), r"messages\[1\].tool_calls"),
    (lambda d: d["messages"][2].update(content=None), r"messages\[2\].content must be str"),
])
def test_import_json_refuses_malformed_documents(store, change, message):
    document = store.export_json(fill(store).id)
    before = len(store.list())
    change(document)
    with pytest.raises(StoreError, match=message):
        store.import_json(document)
    assert len(store.list()) == before
    with pytest.raises(StoreError, match="not a chat export"):
        store.import_json(["not", "a", "dict"])


def test_export_writes_the_file_atomically(store, tmp_path):
    chat = fill(store)
    target = tmp_path / "out" / "chat.md"
    assert store.export(chat.id, target, "markdown") == target
    assert target.read_text(encoding="utf-8") == store.export_markdown(chat.id)
    target.write_text("old")
    assert store.export(chat.id, target, "json") == target
    assert json.loads(target.read_text(encoding="utf-8")) == store.export_json(chat.id)
    assert [p.name for p in target.parent.iterdir()] == ["chat.md"]  # no temporary file left behind
    with pytest.raises(StoreError, match="export format must be one of markdown, json"):
        store.export(chat.id, tmp_path / "x.pdf", "pdf")
    with pytest.raises(StoreError, match="no conversation"):
        store.export("missing", tmp_path / "missing.md", "markdown")
    assert not (tmp_path / "missing.md").exists()
