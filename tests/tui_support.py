"""What the chat app's tests share: a scripted backend and helpers that drive the app with Pilot."""

from __future__ import annotations

import json
import threading

from runtime.backends.base import Backend
from runtime.events import GenerationEvent, ToolCall
from tui.app import ChatApp
from tui.config import TuiConfig
from tui.engine import ModelHost
from tui.store import ConversationStore
from tui.tool_turns import McpHost
from tui.widgets.messages import MessageView


class ScriptedBackend(Backend):
    """Replies in turn from `replies`: a string (streamed word by word) or a ToolCall."""

    name = "scripted"
    model_label = "scripted-model"

    def __init__(self, *replies, context_length: int = 4096, hold_after: int | None = None):
        self.replies = list(replies)
        self.context_length = context_length
        self.hold_after = hold_after  # deltas sent before the reply waits for `release`
        self.release = threading.Event()
        self.holding = threading.Event()
        self.requests: list[list[dict]] = []
        self.template_kwargs: list[dict] = []
        self.notices, self.details = [], []

    def chat(self, messages, params, *, tools=None, tool_choice="auto", dialect=None, constrained=True, **kwargs):
        self.requests.append(messages)
        self.template_kwargs.append(kwargs)
        reply = self.replies.pop(0) if self.replies else "(no more replies)"
        return self._stream(reply, len(self.render_chat(messages).split()))

    def _stream(self, reply, prompt_tokens: int):
        usage = {"prompt_tokens": prompt_tokens, "prompt_processed": prompt_tokens}
        yield GenerationEvent(prompt_tokens=prompt_tokens, prompt_processed=0)
        if isinstance(reply, ToolCall):
            yield GenerationEvent(finish_reason="tool_calls", tool_calls=(reply,), completion_tokens=5, **usage)
            return
        words = reply.split(" ")
        for i, word in enumerate(words):
            if self.hold_after is not None and i == self.hold_after:
                self.holding.set()
                self.release.wait(10)
            yield GenerationEvent(text=word if i == 0 else " " + word, token=i, completion_tokens=i + 1, **usage)
        yield GenerationEvent(finish_reason="stop", completion_tokens=len(words), decode_seconds=0.5, **usage)

    def render_chat(self, messages, **template_kwargs):
        return "\n".join(str(m.get("content") or "") for m in messages)

    def tokenize(self, text, add_bos=True):
        return list(range(len(text.split())))

    def generate_tokens(self, prompt, params, guard=None):
        raise NotImplementedError

    def decode(self, ids):
        raise NotImplementedError


def make_app(tmp_path, backend, *, config: dict | None = None, mcp: McpHost | None = None, open_chat=None):
    store = ConversationStore(tmp_path / "chats.sqlite")
    path = tmp_path / "tui.json"
    if config is not None:
        path.write_text(json.dumps(config))
    app = ChatApp(store, TuiConfig.load(path), host=ModelHost(loader=lambda *a, **k: backend),
                  mcp=mcp or McpHost(), open_chat=open_chat)
    return app, store


async def send(pilot, text: str) -> None:
    prompt = pilot.app.screen.query_one("#prompt")
    prompt.focus()
    prompt.text = text
    await pilot.press("enter")
    await settle(pilot)


async def send_until_held(pilot, backend: ScriptedBackend, text: str) -> None:
    """Send text and return once the backend (hold_after set) holds its reply half-way."""
    prompt = pilot.app.screen.query_one("#prompt")
    prompt.text = text
    await pilot.press("enter")
    assert backend.holding.wait(10)
    await pilot.pause()


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def views(app, role: str) -> list[MessageView]:
    return [v for v in app.screen.query(MessageView) if v.role == role]


