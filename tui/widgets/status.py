"""The two lines around the conversation: the header (model, backend, attention, thinking, tools)
and the footer with live token usage against the context window."""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import Static

from tui.engine import CONTEXT_WARNING, ChatOptions


class ChatHeader(Static):
    def show(self, title: str, options: ChatOptions, loaded: dict[str, str] | None, *, mcp_ready: bool) -> None:
        """loaded: tui.engine.describe_backend of the chat's model when it is loaded, else None."""
        if loaded:
            model = f"[b]{escape(loaded['model'])}[/] on {escape(loaded['backend'])} · {escape(loaded['attention'])}"
        else:
            model = f"[b]{escape(options.model)}[/] on {escape(options.backend)} (loads with the first message)"
            if options.sparse != "auto":
                model += f" · sparse attention {options.sparse}"
            if options.quant != "none":
                model += f" · {options.quant} weights"
            if options.speculative != "none":
                model += f" · {options.speculative} drafts"
        tools = ", ".join(options.tools) if options.tools else "none"
        if options.tools and not mcp_ready:
            tools += " (starting)"
        self.update(f"{escape(title)}\n{model} · thinking {options.thinking} · tools: {escape(tools)}")


class UsageBar(Static):
    """`1,234 / 8,192 tokens (15%)` plus the last reply's speed; a warning style from CONTEXT_WARNING on."""

    def show_usage(self, used: int | None, limit: int | None, *, last: dict | None = None, note: str = "") -> None:
        parts = []
        if used is not None and limit:
            parts.append(f"context {used:,} / {limit:,} tokens ({used / limit:.0%})")
        elif limit:
            parts.append(f"context ? / {limit:,} tokens")
        if last and last.get("completion_tokens"):
            speed = last.get("decode_tokens_per_second")
            parts.append(f"last reply {last['completion_tokens']:,} tokens" + (f", {speed:.1f} tok/s" if speed else ""))
        if note:
            parts.append(note)
        self.update(" · ".join(parts) or " ")
        fraction = (used or 0) / limit if limit else 0.0
        self.set_class(fraction >= CONTEXT_WARNING, "warning")
        self.set_class(fraction >= 1.0, "full")

    def busy(self, note: str) -> None:
        self.update(note)
