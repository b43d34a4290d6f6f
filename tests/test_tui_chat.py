"""The chat app (`minicpm chat`) driven headless with Textual's Pilot, as a user would use it.

A scripted backend stands in for the model where its wording would make a test flaky: it replays
replies delta by delta through the real generation interface (runtime/events.py), and it can hold a
reply half-way so that Esc has something to cancel. Everything else is real: the SQLite chat store
in tmp_path, the tool agent's LangGraph interrupt, the built-in `notes` MCP server over stdio.
"""

from __future__ import annotations

import json
import sys
import threading

import pytest

from runtime.events import ToolCall
from tui.engine import ChatOptions
from tui.tool_turns import McpHost
from tui.widgets.tool_card import ToolCard
from tui.widgets.messages import MessageView
from tui_support import ScriptedBackend, make_app, send, send_until_held, settle, views

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINICPM_MCP_CONFIG", raising=False)
    monkeypatch.delenv("MINICPM_TUI_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


async def test_send_a_message_and_see_the_streamed_answer_saved(tmp_path):
    backend = ScriptedBackend("<think>The user greets me.</think>Hello! How can I **help**?")
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "Hi there")
        answer = views(app, "assistant")[-1]
        assert answer.text == "Hello! How can I **help**?"
        assert answer.thinking == "The user greets me."
        thoughts = answer.query_one(".thinking")
        assert thoughts.display and thoughts.collapsed  # shown, folded away
        assert app.screen.query_one("#prompt").text == ""  # the box is empty again
        usage = str(app.screen.query_one("#usage").render())
        assert "context" in usage and "/ 4,096 tokens" in usage
        await send(pilot, "And again")
    [chat] = store.list()
    assert chat.title == "Hi there"
    stored = store.messages(chat.id)
    assert [(m.role, m.content) for m in stored[:2]] == [("user", "Hi there"), ("assistant", "Hello! How can I **help**?")]
    assert stored[1].thinking == "The user greets me." and stored[1].usage["completion_tokens"] > 0
    # The second request carries the first answer but not its reasoning.
    second = backend.requests[1]
    assert second[1] == {"role": "assistant", "content": "Hello! How can I **help**?"}
    assert "greets" not in json.dumps(second)


async def test_escape_cancels_a_reply_and_keeps_what_was_written(tmp_path):
    backend = ScriptedBackend("one two three four five six", "next answer", hold_after=2)
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await send_until_held(pilot, backend, "count")
        await pilot.press("escape")
        backend.release.set()
        await settle(pilot)
        answer = views(app, "assistant")[-1]
        assert answer.status == "cancelled" and answer.text == "one two"
        assert "cancelled" in str(answer.query_one(".meta").render())
        backend.hold_after = None
        await send(pilot, "go on")
        assert views(app, "assistant")[-1].text == "next answer"
    [chat] = store.list()
    assert [m.status for m in store.messages(chat.id) if m.role == "assistant"] == ["cancelled", "complete"]
    # The cut-off reply is not context for the next one.
    assert [m["content"] for m in backend.requests[1]] == ["count", "go on"]


async def test_restart_finds_the_chat_in_the_history(tmp_path):
    app, store = make_app(tmp_path, ScriptedBackend("Paris is the capital."))
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "Capital of France?")
    store.close()

    backend = ScriptedBackend("It has about two million people.")
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        assert views(app, "assistant") == []  # a new chat at start
        history = app.screen.query_one("#history")
        assert len(history.children) == 1
        history.focus()
        await pilot.press("enter")
        await settle(pilot)
        assert [v.text for v in app.screen.query(MessageView)] == ["Capital of France?", "Paris is the capital."]
        await send(pilot, "How many people live there?")
        assert backend.requests[0][-2:] == [{"role": "assistant", "content": "Paris is the capital."},
                                            {"role": "user", "content": "How many people live there?"}]
        # search finds it by a word of its messages
        search = app.screen.query_one("#history-search")
        search.value = "million"
        await pilot.pause()
        assert len(history.children) == 1
        search.value = "zzzunfound"
        await pilot.pause()
        assert len(history.children) == 0


async def test_rename_and_delete_from_the_history(tmp_path):
    app, store = make_app(tmp_path, ScriptedBackend("a", "b"))
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "first chat")
        history = app.screen.query_one("#history")
        history.focus()
        await pilot.press("r")
        await pilot.pause()
        answer = app.screen.query_one("#answer")
        answer.value = "Renamed chat"
        await pilot.press("enter")
        await pilot.pause()
        assert store.list()[0].title == "Renamed chat"
        assert "Renamed chat" in str(app.screen.query_one("#header").render())
        history.focus()
        await pilot.press("d")
        await pilot.pause()
        await pilot.click("#delete")
        await pilot.pause()
        assert store.list() == []
        assert views(app, "user") == []  # the open chat was the one deleted: a new one is shown


async def test_context_warning_and_a_conversation_that_no_longer_fits(tmp_path):
    backend = ScriptedBackend("ok", context_length=40)
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, " ".join(["word"] * 34))  # 34 of 40 tokens: past the 80% warning
        assert app.screen.query_one("#usage").has_class("warning")
        assert any("full" in n.message for n in app._notifications)
        await send(pilot, " ".join(["more"] * 10))  # no longer fits: refused, nothing generated
        answer = views(app, "assistant")[-1]
        assert answer.status == "error" and "no longer fits" in str(answer.query_one(".meta").render())
    assert len(backend.requests) == 1


async def test_keymap_from_the_settings_file_rebinds_new_chat(tmp_path):
    keymap = {"new_chat": "f5", "newline": "ctrl+j", "survey_resume": "f6"}
    app, store = make_app(tmp_path, ScriptedBackend("hello"), config={"keymap": keymap})
    async with app.run_test(size=(120, 40)) as pilot:
        prompt = app.screen.query_one("#prompt")
        assert prompt.placeholder == "Message (Enter sends, Ctrl+J new line)"  # names the keys that work
        await send(pilot, "hi")
        assert len(views(app, "user")) == 1
        await pilot.press("f5")
        await pilot.pause()
        assert views(app, "user") == []


async def test_thinking_toggle_reaches_the_chat_template(tmp_path):
    backend = ScriptedBackend("a", "b")
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "first")
        await pilot.press("ctrl+t")  # auto -> on
        await pilot.press("ctrl+t")  # on -> off
        await send(pilot, "second")
        assert "thinking off" in str(app.screen.query_one("#header").render())
    assert backend.template_kwargs == [{}, {"enable_thinking": False}]
    assert store.get(store.list()[0].id).settings["thinking"] == "off"


def notes_mcp(tmp_path) -> McpHost:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"notes": {
        "command": sys.executable, "args": ["-m", "minicpm_suite", "mcp", "serve", "notes"],
        "env": {"MINICPM_HOME": str(tmp_path / "home")}}}}))
    return McpHost(str(config))


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_a_tool_call_waits_for_approve_or_deny(tmp_path, decision):
    call = ToolCall("call_1", "add_note", {"title": "Buy milk"})
    backend = ScriptedBackend(call, "Noted." if decision == "approve" else "I did not add it.")
    mcp = notes_mcp(tmp_path)
    app, store = make_app(tmp_path, backend, config={"new_chat": {"tools": ["notes"]}}, mcp=mcp)
    async with app.run_test(size=(120, 50)) as pilot:
        await send(pilot, "Remember to buy milk")
        [card] = app.screen.query(ToolCard)
        assert card.state == "pending" and not card.collapsed
        assert "add_note" in str(card.title)
        await pilot.click(f"#{decision}")
        await settle(pilot)
        assert card.state == ("done" if decision == "approve" else "denied")
        if decision == "approve":
            assert "Buy milk" in str(card.query_one(".tool-result").render())
        assert views(app, "assistant")[-1].text == backend_reply(decision)
    # what the model heard back after the decision
    tool_message = backend.requests[1][-1]
    assert tool_message["role"] == "tool"
    assert ("Buy milk" in tool_message["content"]) == (decision == "approve")
    [chat] = store.list()
    roles = [(m.role, m.status) for m in store.messages(chat.id)]
    assert roles == [("user", "complete"), ("assistant", "complete"),
                     ("tool", "complete" if decision == "approve" else "denied"), ("assistant", "complete")]


def backend_reply(decision: str) -> str:
    return "Noted." if decision == "approve" else "I did not add it."


async def test_settings_screen_changes_the_chat(tmp_path):
    backend = ScriptedBackend("x")
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 50)) as pilot:
        await send(pilot, "hello")
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("#temperature").value = "hot"
        app.screen.query_one("#save").press()  # below the fold of the form: pressed, not clicked
        await pilot.pause()
        assert "temperature must be a number" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#temperature").value = "0.2"
        app.screen.query_one("#system_prompt").text = "Answer in French."
        app.screen.query_one("#save").press()
        await pilot.pause()
    chat = store.list()[0]
    options = ChatOptions.from_settings(chat.model, chat.backend, chat.settings)
    assert options.temperature == 0.2 and chat.system_prompt == "Answer in French."


async def test_tools_screen_lists_the_servers_and_their_tools(tmp_path):
    app, store = make_app(tmp_path, ScriptedBackend(), config={"new_chat": {"tools": ["notes"]}}, mcp=notes_mcp(tmp_path))
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"MCP tools")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(pilot)
        listing = str(app.screen.query_one("#tools-listing").render())
        assert "notes" in listing and "on in this chat" in listing
        assert "add_note (asks first)" in listing and "search_notes (read-only)" in listing
        assert "delete_note (destructive, asks first)" in listing


async def test_copy_the_answer_a_message_and_each_code_block(tmp_path):
    answer = "Two ways:\n\n```python\nfirst()\n```\n\nor\n\n```sh\nsecond --now\n```"
    app, store = make_app(tmp_path, ScriptedBackend(answer))
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "how?")
        prompt = app.screen.query_one("#prompt")
        prompt.text = "draft"
        await pilot.press("ctrl+y")  # the footer's "Copy answer", while the message box has focus
        await pilot.pause()
        assert app.clipboard == answer and prompt.text == "draft"  # not the TextArea's redo
        reply = views(app, "assistant")[-1]
        reply.focus()
        await pilot.pause()
        await pilot.press("b")
        assert app.clipboard == "second --now"  # the last block first
        await pilot.press("b")
        assert app.clipboard == "first()"  # then the one before it
        await pilot.press("c")
        assert app.clipboard == answer
        views(app, "user")[-1].focus()
        await pilot.press("c")
        assert app.clipboard == "how?"


async def test_shift_enter_and_ctrl_j_start_a_new_line_enter_sends(tmp_path):
    backend = ScriptedBackend("fine")
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        prompt = app.screen.query_one("#prompt")
        prompt.focus()
        await pilot.press("o", "n", "e", "shift+enter", "t", "w", "o", "ctrl+j", "x")
        assert prompt.text == "one\ntwo\nx" and backend.requests == []
        await pilot.press("enter")
        await settle(pilot)
        assert backend.requests[0][-1] == {"role": "user", "content": "one\ntwo\nx"}


async def test_the_usage_line_follows_a_reply_while_it_streams(tmp_path):
    backend = ScriptedBackend("one two three four five", hold_after=3)
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await send_until_held(pilot, backend, "count")
        live = str(app.screen.query_one("#usage").render())
        assert "writing:" in live and "/ 4,096 tokens" in live  # before the reply has ended
        backend.release.set()
        await settle(pilot)
        done = str(app.screen.query_one("#usage").render())
        assert "writing" not in done and "last reply 5 tokens" in done


async def test_a_model_preset_fills_the_model_fields_and_the_chat_loads_it(tmp_path):
    loads = []
    backend = ScriptedBackend("from the preset")
    config = {"models": [{"name": "embedded", "model": "default"},
                         {"name": "long context", "model": "long.gguf", "backend": "torch", "context_length": 2048,
                          "quant": "int4", "kv_dtype": "bfloat16", "speculative": "lookup", "temperature": 1.5}]}
    app, store = make_app(tmp_path, backend, config=config)
    app.host._load_backend = lambda name, model, **kw: loads.append(
        (name, model, kw["context_length"], kw["quant"], kw["kv_dtype"], kw["speculative"])) or backend
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("#temperature").value = "0.3"
        app.screen.query_one("#preset").value = 1
        await pilot.pause()
        assert app.screen.query_one("#model").value == "long.gguf"
        assert app.screen.query_one("#context_length").value == "2048"
        assert app.screen.query_one("#quant").value == "int4"
        assert app.screen.query_one("#kv_dtype").value == "bfloat16"
        assert app.screen.query_one("#speculative").value == "lookup"
        assert app.screen.query_one("#temperature").value == "0.3"  # sampling stays the chat's
        app.screen.query_one("#save").press()
        await settle(pilot)
        await send(pilot, "hi")
    assert ("torch", "long.gguf", 2048, "int4", "bfloat16", "lookup") in loads
    chat = store.list()[0]
    options = ChatOptions.from_settings(chat.model, chat.backend, chat.settings)
    assert (options.model, options.backend, options.context_length, options.quant, options.kv_dtype,
            options.speculative, options.temperature) == ("long.gguf", "torch", 2048, "int4", "bfloat16", "lookup", 0.3)


async def test_saving_the_settings_keeps_what_the_form_does_not_show(tmp_path):
    """A chat started with a LoRA adapter (`minicpm chat --adapter`) keeps it when its settings are
    saved: the form has no adapter field, and saving used to drop it and reload the bare model."""
    loads = []
    backend = ScriptedBackend("with the adapter")
    app, store = make_app(tmp_path, backend, config={"new_chat": {"adapter": "smollm2-mcp"}})
    app.host._load_backend = lambda name, model, **kw: loads.append((kw["adapter"], kw["kv_dtype"])) or backend
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("#kv_dtype").value = "bfloat16"
        app.screen.query_one("#save").press()
        await settle(pilot)
        await send(pilot, "hi")
    assert loads[-1] == ("smollm2-mcp", "bfloat16")  # the reload after saving (the first is the preload)
    assert all(adapter == "smollm2-mcp" for adapter, _ in loads)
    chat = store.list()[0]
    options = ChatOptions.from_settings(chat.model, chat.backend, chat.settings)
    assert (options.adapter, options.kv_dtype) == ("smollm2-mcp", "bfloat16")


async def test_the_adapter_goes_with_its_model_in_the_settings(tmp_path):
    """The adapter belongs to the chat's model: another model, a server, or a preset leaves it;
    a preset picked and then put back to "keep the fields" does not."""
    from textual.widgets import Select

    backend = ScriptedBackend()
    config = {"new_chat": {"adapter": "smollm2-mcp"}, "models": [{"name": "bare", "model": "default"}]}
    app, store = make_app(tmp_path, backend, config=config)
    app.host._load_backend = lambda name, model, **kw: backend

    async def save(*fields):
        app.screen.apply_settings(ChatOptions(adapter="smollm2-mcp"), "")
        await pilot.press("ctrl+o")
        await pilot.pause()
        for wid, value in fields:
            app.screen.query_one(f"#{wid}").value = value
            await pilot.pause()
        app.screen.query_one("#save").press()
        await settle(pilot)
        return app.screen.options

    async with app.run_test(size=(120, 50)) as pilot:
        assert (await save(("temperature", "0.5"))).adapter == "smollm2-mcp"
        assert (await save(("preset", 0))).adapter is None  # the preset has none
        assert (await save(("preset", 0), ("preset", Select.NULL))).adapter == "smollm2-mcp"
        assert (await save(("model", "other.gguf"))).adapter is None
        served = await save(("backend", "openai"), ("base_url", "http://127.0.0.1:1/v1"))  # refused before
        assert served.adapter is None and served.backend == "openai"


async def test_eagle_decoding_is_chosen_in_the_settings_with_its_head_folder(tmp_path):
    loads = []
    backend = ScriptedBackend("drafted")
    app, store = make_app(tmp_path, backend)
    app.host._load_backend = lambda name, model, **kw: loads.append(
        (kw["speculative"], kw["draft_model"], kw["frspec_vocab"])) or backend
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("#speculative").value = "eagle"
        app.screen.query_one("#save").press()
        await pilot.pause()
        assert "needs an Eagle head folder" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#draft_model").value = str(tmp_path / "head")
        app.screen.query_one("#frspec_vocab").value = "8192"
        app.screen.query_one("#save").press()
        await settle(pilot)
        await send(pilot, "hi")
    assert ("eagle", str(tmp_path / "head"), 8192) in loads
    chat = store.list()[0]
    options = ChatOptions.from_settings(chat.model, chat.backend, chat.settings)
    assert (options.speculative, options.draft_model, options.frspec_vocab) == ("eagle", str(tmp_path / "head"), 8192)


async def test_export_from_the_history_writes_markdown_and_json(tmp_path):
    app, store = make_app(tmp_path, ScriptedBackend("**Paris**, on the Seine."))
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "Capital of France?")
        chat_id = store.list()[0].id
        for choice, suffix in (("markdown", "md"), ("json", "json")):
            app.screen.query_one("#history").focus()
            await pilot.press("e")
            await pilot.pause()
            await pilot.click(f"#{choice}")
            await pilot.pause()
            path = tmp_path / f"chat-{chat_id}.{suffix}"  # the tests run in tmp_path
            assert path.is_file(), choice
            assert any(str(path) in n.message for n in app._notifications)
    markdown = (tmp_path / f"chat-{chat_id}.md").read_text()
    assert "Capital of France?" in markdown and "**Paris**, on the Seine." in markdown
    exported = json.loads((tmp_path / f"chat-{chat_id}.json").read_text())
    assert [m["content"] for m in exported["messages"]] == ["Capital of France?", "**Paris**, on the Seine."]


async def test_quitting_mid_reply_stops_it_and_closes_the_model(tmp_path):
    """The reply stops at its next token and the model is closed once it has: the wait for the
    worker runs off the event loop, which the worker's last UI update needs (it used to block there
    for 5 s, then leave the model open)."""
    closed = threading.Event()

    class Closing(ScriptedBackend):
        def close(self):
            closed.set()

    backend = Closing("one two three four five six", hold_after=2)
    app, store = make_app(tmp_path, backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await send_until_held(pilot, backend, "count")
        threading.Timer(0.3, backend.release.set).start()  # the model reaches its next token
        await pilot.press("ctrl+q")
    assert closed.is_set()
    [chat] = store.list()
    # what was written is kept, marked cancelled (and so never sent back as context)
    assert [(m.role, m.status) for m in store.messages(chat.id)] == [("user", "complete"), ("assistant", "cancelled")]
