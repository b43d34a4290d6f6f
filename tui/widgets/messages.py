"""One chat turn on screen: who said it, its reasoning (collapsed), its Markdown, its usage line.

While a reply streams, its text goes through Textual's MarkdownStream, which batches the deltas that
arrive between two refreshes into one append; when the reply ends, the whole text is rendered once
more, so what stays on screen is exactly the Markdown of the complete answer.
"""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Collapsible, Markdown, Static

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown text, without their fences."""
    return [block.rstrip("\n") for block in CODE_BLOCK.findall(markdown)]


class MessageView(Vertical, can_focus=True):
    """A user or assistant message. Focused: `c` copies its Markdown, `b` a code block: the last one
    first, then, pressed again, the one before it, round to the last again."""

    BINDINGS = [Binding("c", "copy", "Copy message"), Binding("b", "copy_code", "Copy code block")]

    def __init__(self, role: str, text: str = "", *, thinking: str = "", label: str = "", footer: str = "",
                 status: str = "complete"):
        super().__init__(classes=f"message {role}")
        self.role = role
        self.text = text
        self.thinking = thinking
        self.label = label or ("you" if role == "user" else "assistant")
        self.footer_text = footer
        self.status = status
        self._stream = None
        self._thought_stream = None
        self._code_copies = 0  # `b` presses since focus came here: which block the next one copies

    def compose(self) -> ComposeResult:
        yield Static(self.label, classes="role")
        with Collapsible(title="thoughts", collapsed=True, classes="thinking") as thoughts:
            yield Markdown(self.thinking, classes="thinking-text")
        thoughts.display = bool(self.thinking)
        yield Markdown(self.text, classes="body")
        meta = Static(self.footer_text, classes="meta")
        meta.display = bool(self.footer_text)  # a user message has none: no empty line under it
        yield meta

    @property
    def body(self) -> Markdown:
        return self.query_one(".body", Markdown)

    # -- streaming -------------------------------------------------------------------------------

    async def add_delta(self, text: str, thought: bool = False) -> None:
        """Text of the reply as it arrives (thought: inside a <think> block)."""
        if thought:
            self.thinking += text
            thoughts = self.query_one(".thinking", Collapsible)
            if not thoughts.display:
                thoughts.display = True
                thoughts.title = "thinking…"
            if self._thought_stream is None:
                self._thought_stream = Markdown.get_stream(self.query_one(".thinking-text", Markdown))
            await self._thought_stream.write(text)
            return
        self.text += text
        if self._stream is None:
            self._stream = Markdown.get_stream(self.body)
        await self._stream.write(text)

    async def finish(self, text: str, thinking: str, *, footer: str = "", status: str = "complete") -> None:
        """The reply is over: stop streaming and render the complete text once."""
        for stream in (self._stream, self._thought_stream):
            if stream is not None:
                await stream.stop()
        self._stream = self._thought_stream = None
        self.text, self.thinking, self.status = text, thinking, status
        thoughts = self.query_one(".thinking", Collapsible)
        thoughts.display = bool(thinking)
        thoughts.title = "thoughts"
        await self.query_one(".thinking-text", Markdown).update(thinking)
        await self.body.update(text or ("*(cancelled before any text)*" if status == "cancelled" else ""))
        self.set_footer(footer)
        self.set_class(status == "cancelled", "cancelled")
        self.set_class(status == "error", "error")

    def set_footer(self, text: str) -> None:
        self.footer_text = text
        meta = self.query_one(".meta", Static)
        meta.update(text)
        meta.display = bool(text)

    # -- copying ---------------------------------------------------------------------------------

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.notify("message copied", timeout=2)

    def on_focus(self) -> None:
        self._code_copies = 0

    def action_copy_code(self) -> None:
        blocks = code_blocks(self.text)
        if not blocks:
            self.notify("this message has no code block", severity="warning", timeout=3)
            return
        index = len(blocks) - 1 - self._code_copies % len(blocks)
        self._code_copies += 1
        self.app.copy_to_clipboard(blocks[index])
        more = f" (b again: block {index if index else len(blocks)})" if len(blocks) > 1 else ""
        self.notify(f"code block {index + 1} of {len(blocks)} copied{more}", timeout=3)
