"""The main screen: chat history on the left; the conversation, the message box and the usage line.

Every reply runs in a thread worker (tui/engine.py, tui/tool_turns.py) that hands its events to the
UI with call_from_thread, so typing, scrolling and the history stay live while a model streams.
Esc cancels a reply; what was written so far is kept, marked cancelled, and not sent back as context.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from runtime.errors import MiniCPMError
from tui.engine import (ChatOptions, HostClosedError, ReplyDelta, ReplyDone, ReplyProgress, chat_messages, context_usage,
                        describe_backend, stream_reply)
from tui.screens.dialogs import AskChoice, AskText
from tui.widgets.history import HistoryList
from tui.widgets.messages import MessageView, code_blocks
from tui.widgets.prompt import PromptInput, placeholder
from tui.widgets.status import ChatHeader, UsageBar
from tui.widgets.tool_card import ToolCard

THINKING_NEXT = {"auto": "on", "on": "off", "off": "auto"}
USAGE_EVERY_S = 0.25  # the usage line while a reply streams: often enough to follow, rarely enough to cost nothing


def title_of(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def footer_of(usage: dict | None, status: str) -> str:
    parts = []
    if usage and usage.get("completion_tokens"):
        parts.append(f"{usage['completion_tokens']} tokens")
        if usage.get("decode_tokens_per_second"):
            parts.append(f"{usage['decode_tokens_per_second']:.1f} tok/s")
    if status == "cancelled":
        parts.append("cancelled")
    return " · ".join(parts)


class ChatScreen(Screen):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel reply", id="cancel"),
        Binding("ctrl+n", "new_chat", "New chat", id="new_chat"),
        Binding("ctrl+o", "settings", "Settings", id="settings"),
        Binding("ctrl+s", "survey", "Survey", id="survey"),
        Binding("ctrl+t", "toggle_thinking", "Thinking", id="toggle_thinking"),
        Binding("ctrl+b", "toggle_sidebar", "History", id="toggle_sidebar"),
        Binding("ctrl+y", "copy_last", "Copy answer", id="copy_last", priority=True),  # over TextArea's redo
    ]

    def __init__(self, store, config, host, mcp, *, open_chat: str | None = None, preload: bool = True,
                 system_prompt: str = ""):
        super().__init__()
        self.store = store
        self.config = config
        self.host = host  # tui.engine.ModelHost
        self.mcp = mcp  # tui.tool_turns.McpHost
        self.open_chat = open_chat
        self.preload = preload
        self.conversation = None  # tui.store.Conversation; None: a new chat not saved yet
        self.options: ChatOptions = config.new_chat
        self.new_chat_system_prompt = system_prompt
        self.system_prompt = system_prompt
        self.cancel_event = threading.Event()
        self.generating = False
        self.turn = None  # the tool turn waiting for approvals
        self.waiting: dict[str, ToolCard] = {}  # call id -> card, for calls waiting for the user
        self.decisions: dict[str, str] = {}
        self.noticed: set[int] = set()  # backends whose load notices were shown

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        keys = self.config.keys()
        with Horizontal():
            yield HistoryList(self.store, id="sidebar")
            with Vertical(id="main"):
                yield ChatHeader(id="header")
                yield VerticalScroll(id="messages")
                yield PromptInput(id="prompt", send_keys=keys["send"], newline_keys=keys["newline"],
                                  placeholder=placeholder(keys["send"], keys["newline"]))
                yield UsageBar(" ", id="usage")
        yield Footer()

    async def on_mount(self) -> None:
        if self.open_chat:
            await self.open_conversation(self.open_chat)
        else:
            self.refresh_header()
        self.query_one("#prompt", PromptInput).focus()
        if self.preload:
            self.load_model()

    def on_unmount(self) -> None:
        self.cancel_event.set()  # the app is closing: a reply in flight stops at its next token

    @property
    def messages_box(self) -> VerticalScroll:
        return self.query_one("#messages", VerticalScroll)

    def refresh_header(self) -> None:
        backend = self.host.loaded(self.options)
        title = self.conversation.title if self.conversation else "New chat"
        self.query_one("#header", ChatHeader).show(title, self.options, describe_backend(backend) if backend else None,
                                                   mcp_ready=self.mcp.is_open)

    def usage(self, used: int | None, last: dict | None = None, note: str = "") -> None:
        backend = self.host.loaded(self.options)
        limit = backend.context_length if backend else (last or {}).get("context_length")
        self.query_one("#usage", UsageBar).show_usage(used, limit, last=last, note=note)

    def assistant_label(self) -> str:
        return f"assistant · {self.options.model}"

    def note(self, text: str) -> None:
        self.query_one("#usage", UsageBar).busy(text)

    # -- conversations ---------------------------------------------------------------------------

    async def open_conversation(self, conversation_id: str) -> None:
        if self.generating:
            self.notify("a reply is being written: Esc cancels it first", severity="warning")
            return
        try:
            conversation = self.store.get(conversation_id)
            stored = self.store.messages(conversation_id)
            options = ChatOptions.from_settings(conversation.model, conversation.backend, conversation.settings)
        except MiniCPMError as exc:
            self.notify(str(exc), severity="error")
            return
        self.conversation, self.options, self.system_prompt = conversation, options, conversation.system_prompt
        self.turn, self.waiting, self.decisions = None, {}, {}
        await self.messages_box.remove_children()
        await self.render_stored(stored)
        self.refresh_header()
        last = next((m.usage for m in reversed(stored) if m.role == "assistant" and m.usage), None)
        used = (last.get("prompt_tokens", 0) + last.get("completion_tokens", 0)) if last else None
        self.usage(used, last)
        self.query_one(HistoryList).reload(conversation_id)
        self.messages_box.scroll_end(animate=False)

    async def render_stored(self, stored: list) -> None:
        cards: dict[str, ToolCard] = {}
        widgets = []
        for m in stored:
            if m.role == "user":
                widgets.append(MessageView("user", m.content))
            elif m.role == "assistant":
                if m.content or m.thinking or not m.tool_calls:
                    widgets.append(MessageView("assistant", m.content, thinking=m.thinking, label=self.assistant_label(),
                                               footer=footer_of(m.usage, m.status), status=m.status))
                for call in m.tool_calls or []:
                    card = ToolCard(call["id"], call["name"], call.get("args", {}))
                    cards[call["id"]] = card
                    widgets.append(card)
        await self.messages_box.mount_all(widgets)
        for m in stored:
            if m.role == "tool" and m.tool_call_id in cards:
                cards.pop(m.tool_call_id).set_result(m.content, is_error=m.status == "error", denied=m.status == "denied")
        for card in cards.values():
            card.mark_not_run()

    def ensure_conversation(self, first_message: str):
        if self.conversation is None:
            self.conversation = self.store.create(title_of(first_message), model=self.options.model,
                                                  backend=self.options.backend, system_prompt=self.system_prompt,
                                                  settings=self.options.to_settings())
        return self.conversation

    async def action_new_chat(self) -> None:
        if self.generating:
            self.notify("a reply is being written: Esc cancels it first", severity="warning")
            return
        self.conversation, self.options = None, self.config.new_chat
        self.system_prompt = self.new_chat_system_prompt
        self.turn, self.waiting, self.decisions = None, {}, {}
        await self.messages_box.remove_children()
        self.refresh_header()
        self.usage(None)
        self.query_one(HistoryList).reload()
        self.query_one("#prompt", PromptInput).focus()

    async def on_history_list_action(self, event: HistoryList.Action) -> None:
        if event.action == "open":
            await self.open_conversation(event.conversation_id)
        elif event.action == "rename":
            self.rename(event.conversation_id)
        elif event.action == "delete":
            self.delete(event.conversation_id)
        elif event.action == "export":
            self.export(event.conversation_id)

    def rename(self, conversation_id: str | None = None) -> None:
        chat = conversation_id or (self.conversation.id if self.conversation else None)
        if chat is None:
            self.notify("this chat has no messages yet", severity="warning")
            return

        def done(title: str | None) -> None:
            if title is None:
                return
            try:
                renamed = self.store.rename(chat, title)
            except MiniCPMError as exc:
                self.notify(str(exc), severity="error")
                return
            if self.conversation and self.conversation.id == chat:
                self.conversation = renamed if renamed is not None else self.store.get(chat)
                self.refresh_header()
            self.query_one(HistoryList).reload(chat)

        self.app.push_screen(AskText("New name of the chat", self.store.get(chat).title), done)

    def delete(self, conversation_id: str | None = None) -> None:
        chat = conversation_id or (self.conversation.id if self.conversation else None)
        if chat is None:
            return

        async def done(answer: str | None) -> None:
            if answer != "delete":
                return
            self.store.delete(chat)
            if self.conversation and self.conversation.id == chat:
                await self.action_new_chat()
            self.query_one(HistoryList).reload(self.conversation.id if self.conversation else None)
            self.notify("chat deleted")

        title = self.store.get(chat).title
        self.app.push_screen(AskChoice(f"Delete '{title}' and all its messages?",
                                       {"delete": "Delete", "keep": "Keep"}, danger="delete"), done)

    def export(self, conversation_id: str | None = None) -> None:
        chat = conversation_id or (self.conversation.id if self.conversation else None)
        if chat is None:
            self.notify("this chat has no messages yet", severity="warning")
            return

        def done(fmt: str | None) -> None:
            if fmt is None:
                return
            path = Path.cwd() / f"chat-{chat}.{'md' if fmt == 'markdown' else 'json'}"
            try:
                written = self.store.export(chat, path, fmt)
            except (MiniCPMError, OSError) as exc:
                self.notify(f"export failed: {exc}", severity="error")
                return
            self.notify(f"exported to {written}")

        self.app.push_screen(AskChoice("Export the chat as", {"markdown": "Markdown", "json": "JSON"}), done)

    # -- settings --------------------------------------------------------------------------------

    def action_settings(self) -> None:
        from tui.screens.settings import ChatSettings

        servers = {name: len(tools) for name, tools in self.mcp.servers().items()}
        if not servers:
            servers = {name: None for name in self.mcp.configured()}

        def done(result) -> None:
            if result is None:
                return
            self.apply_settings(*result)

        from tui.config import local_models

        self.app.push_screen(ChatSettings(self.options, self.system_prompt,
                                          presets=[*self.config.models, *local_models()], servers=servers), done)

    def apply_settings(self, options: ChatOptions, system_prompt: str) -> None:
        reload = options.load_key() != self.options.load_key()
        self.options, self.system_prompt = options, system_prompt
        if self.conversation is not None:
            self.conversation = self.store.update(self.conversation.id, model=options.model, backend=options.backend,
                                                  system_prompt=system_prompt, settings=options.to_settings())
        self.refresh_header()
        if reload and self.preload:
            self.load_model()
        if options.tools and not self.mcp.is_open:
            self.start_mcp()

    async def action_toggle_thinking(self) -> None:
        from dataclasses import replace

        self.apply_settings(replace(self.options, thinking=THINKING_NEXT[self.options.thinking]), self.system_prompt)
        self.notify(f"thinking {self.options.thinking}" + (" (the model's template decides)"
                                                           if self.options.thinking == "auto" else ""), timeout=3)

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display

    def action_copy_last(self) -> None:
        answers = [v for v in self.query(MessageView) if v.role == "assistant" and v.text]
        if not answers:
            self.notify("no answer to copy yet", severity="warning")
            return
        answers[-1].action_copy()

    def action_copy_last_code(self) -> None:
        for view in reversed([v for v in self.query(MessageView) if code_blocks(v.text)]):
            view.action_copy_code()
            return
        self.notify("no code block in this chat", severity="warning")

    def action_tools(self) -> None:
        from tui.screens.tools import ToolsScreen

        self.app.push_screen(ToolsScreen(self.mcp, self.options.tools))

    def action_survey(self) -> None:
        from tui.screens.survey import SurveyScreen

        self.app.push_screen(SurveyScreen(self.host, self.options, corpus=getattr(self.app, "corpus", None)))

    # -- replies ---------------------------------------------------------------------------------

    def action_cancel(self) -> None:
        if self.generating:
            self.cancel_event.set()
            self.note("cancelling…")

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        if self.generating:
            self.notify("a reply is being written: wait for it or press Esc to cancel it", severity="warning")
            return
        if self.waiting:
            self.notify("answer the tool call(s) waiting for approval first", severity="warning")
            return
        text = event.text.strip()
        conversation = self.ensure_conversation(text)
        self.store.add_message(conversation.id, "user", text)
        event.prompt.clear()
        await self.messages_box.mount(MessageView("user", text))
        view = MessageView("assistant", label=self.assistant_label(), footer="…")
        await self.messages_box.mount(view)
        self.messages_box.scroll_end(animate=False)
        self.query_one(HistoryList).reload(conversation.id)
        self.refresh_header()
        self.generating = True
        self.cancel_event.clear()
        self.reply(conversation.id, text, view)

    @work(thread=True, exclusive=True, group="model")
    def load_model(self) -> None:
        """Load the chat's model in the background, so the first reply does not wait for it."""
        if self.host.loaded(self.options) is not None:
            return
        self.app.call_from_thread(self.note, f"loading {self.options.model}…")
        try:
            self.host.get(self.options)
        except HostClosedError:
            return  # the app is closing
        except MiniCPMError as exc:
            self.app.call_from_thread(self.note, f"the model did not load: {exc}")
            return
        self.app.call_from_thread(self.model_ready)

    def model_ready(self) -> None:
        backend = self.host.loaded(self.options)
        if backend is None:
            return
        if id(backend) not in self.noticed:
            self.noticed.add(id(backend))
            for notice in backend.notices:
                self.notify(notice, timeout=8)
        self.refresh_header()
        if not self.generating:
            self.count_context()

    @work(thread=True, exclusive=True, group="usage")
    def count_context(self) -> None:
        """The usage line for the open chat as it stands: what its next request would send."""
        with self.host.busy():  # the tokenizer is the backend's: it is not closed under this count
            backend, conversation = self.host.loaded(self.options), self.conversation
            if backend is None or conversation is None:
                tokens = None
            else:
                messages = chat_messages(self.system_prompt, self.store.messages(conversation.id))
                tokens = context_usage(backend, messages, self.options).tokens
        self.app.call_from_thread(self.usage, tokens)

    @work(thread=True, group="mcp")
    def start_mcp(self) -> None:
        self.app.call_from_thread(self.notify, "starting the MCP servers…", timeout=3)
        try:
            self.mcp.open()
        except MiniCPMError as exc:  # a broken mcpServers file: say so, the chat goes on without tools
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
            return
        for name, why in self.mcp.failures.items():
            self.app.call_from_thread(self.notify, f"MCP server '{name}' did not start: {why}", severity="error")
        self.app.call_from_thread(self.refresh_header)

    @work(thread=True, group="reply")
    def reply(self, conversation_id: str, text: str, view: MessageView) -> None:
        call = self.app.call_from_thread
        try:
            with self.host.busy():
                self._reply(conversation_id, text, view)
        except MiniCPMError as exc:
            call(self.finish_view, view, ReplyDone(view.text, view.thinking, "error", None, error=str(exc)))
        finally:
            call(self.reply_ended)

    def _reply(self, conversation_id: str, text: str, view: MessageView) -> None:
        call = self.app.call_from_thread
        if self.host.loaded(self.options) is None:
            call(view.set_footer, f"loading {self.options.model}…")
        backend = self.host.get(self.options)
        call(self.model_ready)
        messages = chat_messages(self.system_prompt, self.store.messages(conversation_id))
        usage = context_usage(backend, messages, self.options)
        call(self.usage, usage.tokens)
        if usage.tokens is not None and usage.tokens >= usage.limit:
            call(self.finish_view, view, ReplyDone("", "", "error", None, error=usage.warning))
            return
        if usage.warning:
            call(self.notify, usage.warning, severity="warning", timeout=8)
        if self.options.tools:
            self.tool_reply(conversation_id, backend, messages, text, view)
            return
        shown = 0.0  # when the usage line last changed: it follows the reply a few times a second
        for event in stream_reply(backend, messages, self.options, self.cancel_event):
            if isinstance(event, ReplyDelta):
                call(view.add_delta, event.text, event.thought)
                # a server reports its prompt's tokens only at the end: nothing to show before
                if event.prompt_tokens and event.completion_tokens and time.monotonic() - shown >= USAGE_EVERY_S:
                    shown = time.monotonic()
                    call(self.usage, event.prompt_tokens + event.completion_tokens, None,
                         f"writing: {event.completion_tokens:,} tokens")
            elif isinstance(event, ReplyProgress):
                call(view.set_footer, f"reading the prompt: {event.processed:,} / {event.total:,} tokens")
            elif isinstance(event, ReplyDone):
                if event.status != "error":
                    self.store.add_message(conversation_id, "assistant", event.content, thinking=event.thinking,
                                           status=event.status, usage=event.usage)
                call(self.finish_view, view, event)

    async def finish_view(self, view: MessageView, done: ReplyDone) -> None:
        if done.status == "error":
            await view.finish(done.content, done.thinking, footer=f"error: {done.error}", status="error")
            self.notify(done.error or "the reply failed", severity="error", timeout=10)
            self.count_context()  # the live "writing" note goes; the chat's context is as it was
            return
        await view.finish(done.content, done.thinking, footer=footer_of(done.usage, done.status), status=done.status)
        used = (done.usage.get("prompt_tokens", 0) + done.usage.get("completion_tokens", 0)) or None
        self.usage(used, done.usage)

    def reply_ended(self) -> None:
        self.generating = False
        self.query_one(HistoryList).reload(self.conversation.id if self.conversation else None)

    # -- replies with tools ----------------------------------------------------------------------

    def tool_reply(self, conversation_id, backend, messages, text, view) -> None:
        """In the reply worker: start the MCP servers if needed, then run the tool agent's turn."""
        from tui.tool_turns import EnabledTools, ToolTurn

        call = self.app.call_from_thread
        if not self.mcp.is_open:
            call(view.set_footer, "starting the MCP servers…")
            self.mcp.open()
            call(self.refresh_header)
        tools = EnabledTools(self.mcp.sessions, self.options.tools)
        turn = ToolTurn(backend, self.options, tools, self.system_prompt, messages[:-1], text)
        self.drive_turn(conversation_id, turn, turn.start(), view)

    def drive_turn(self, conversation_id, turn, events, view: MessageView | None) -> None:
        """Show a tool turn's events until it answers, stops for approval, or is cancelled."""
        from agents.tool_agent import events as ev

        call = self.app.call_from_thread
        status = "complete"
        answer = None
        for event in events:
            if self.cancel_event.is_set():
                status = "cancelled"
                break
            if isinstance(event, ev.TextDelta):
                if view is None:
                    view = call(self.new_assistant_view)
                call(view.add_delta, event.text, event.thought)
            elif isinstance(event, ev.ToolCallEvent):
                if view is not None:
                    call(self.close_step_view, view)
                    view = None
                tool = turn.agent.sessions.tool(event.name)
                call(self.add_card, ToolCard(event.id, event.name, event.args, server=tool.server if tool else "",
                                             needs_approval=event.needs_approval,
                                             destructive=bool(tool and tool.destructive)))
            elif isinstance(event, ev.ToolResultEvent):
                call(self.card_result, event)
            elif isinstance(event, ev.InvalidCallEvent):
                call(self.notify, f"unusable tool call (sent back to the model): {event.error}", severity="warning")
            elif isinstance(event, ev.StepLimitEvent):
                call(self.notify, f"the step limit ({event.max_steps}) was reached: the model answers without tools",
                     severity="warning")
            elif isinstance(event, ev.ApprovalNeeded):
                self.persist_turn(conversation_id, turn)
                call(self.wait_for_approval, turn, [c["id"] for c in event.calls])
                return
            elif isinstance(event, ev.AnswerEvent):
                answer = event
        self.persist_turn(conversation_id, turn)
        if view is None and (answer is not None or status == "cancelled"):
            view = call(self.new_assistant_view)
        if view is not None:
            content = answer.text if answer is not None else view.text
            call(self.finish_view, view, ReplyDone(content, view.thinking, status, None))
        # The turn's calls, results and answer are context now: count them for the usage line.
        backend = self.host.loaded(self.options)
        if backend is not None:
            usage = context_usage(backend, chat_messages(self.system_prompt, self.store.messages(conversation_id)),
                                  self.options)
            call(self.usage, usage.tokens)

    def persist_turn(self, conversation_id: str, turn) -> None:
        """Copy the turn's new messages (calls, results, the answer) into the chat store. A reply cut off
        by Esc never reached the graph's state, so it stays on screen only, as in a plain chat."""
        for form in turn.new_messages():
            self.store.add_message(conversation_id, **form)

    async def new_assistant_view(self) -> MessageView:
        view = MessageView("assistant", label=self.assistant_label())
        await self.messages_box.mount(view)  # mounted before the worker's next call looks inside it
        self.messages_box.scroll_end(animate=False)
        return view

    async def close_step_view(self, view: MessageView) -> None:
        """The text a model wrote before calling tools: kept if there is any, else the empty box goes."""
        if view.text.strip() or view.thinking.strip():
            await view.finish(view.text, view.thinking)
        else:
            await view.remove()

    async def add_card(self, card: ToolCard) -> None:
        await self.messages_box.mount(card)
        self.messages_box.scroll_end(animate=False)

    def card_result(self, event) -> None:
        for card in self.query(ToolCard):
            if card.call_id == event.id:
                card.set_result(event.text, is_error=event.is_error, denied=event.denied, seconds=event.seconds)

    def wait_for_approval(self, turn, call_ids: list[str]) -> None:
        self.turn = turn
        self.waiting = {card.call_id: card for card in self.query(ToolCard) if card.call_id in call_ids}
        self.decisions = {}
        self.note(f"{len(call_ids)} tool call(s) wait for your approval: Approve or Deny on the card")
        first = next(iter(self.waiting.values()), None)
        if first is not None:
            first.query_one("#approve").focus()
            first.scroll_visible()

    def on_tool_card_decided(self, event: ToolCard.Decided) -> None:
        if event.card.call_id not in self.waiting:
            return
        self.decisions[event.card.call_id] = event.decision
        if set(self.decisions) >= set(self.waiting):
            turn, decisions = self.turn, dict(self.decisions)
            self.turn, self.waiting, self.decisions = None, {}, {}
            self.generating = True
            self.cancel_event.clear()
            self.note("running the approved calls…" if "approve" in decisions.values() else "calls denied")
            self.resume_turn(self.conversation.id, turn, decisions)

    @work(thread=True, group="reply")
    def resume_turn(self, conversation_id: str, turn, decisions: dict[str, str]) -> None:
        try:
            with self.host.busy():
                backend = self.host.get(self.options)  # the model may have been switched during the approval
                self.drive_turn(conversation_id, turn, turn.resume(decisions, backend), None)
        except MiniCPMError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error")
        finally:
            self.app.call_from_thread(self.reply_ended)
