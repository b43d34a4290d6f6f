"""A tool call inline in the chat: a collapsible card with its arguments and result, and, for a call
with side effects, Approve / Deny buttons that answer the tool agent's interrupt."""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, Collapsible, Static

MAX_RESULT_CHARS = 4000  # a card shows this much of a result; the model got up to the agent's own limit


def pretty(value: Any) -> str:
    """JSON shown indented; a string that holds JSON is shown as that JSON."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def call_summary(name: str, args: dict[str, Any], limit: int = 60) -> str:
    text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    return f"{name}({text if len(text) <= limit else text[:limit - 1] + '…'})"


class ToolCard(Collapsible):
    """States: pending (waiting for the user's answer), running, done, error, denied."""

    class Decided(Message):
        def __init__(self, card: ToolCard, decision: str):
            super().__init__()
            self.card = card
            self.decision = decision  # approve | deny

    def __init__(self, call_id: str, name: str, args: dict[str, Any], *, server: str = "",
                 needs_approval: bool = False, destructive: bool = False):
        self.call_id = call_id
        self.name_ = name
        self.args = args
        self.server = server
        self.needs_approval = needs_approval
        self.destructive = destructive
        self.state = "pending" if needs_approval else "running"
        where = f" on {escape(server)}" if server else ""
        warning = " [b red](destructive)[/]" if destructive else ""
        children = [Static(f"[b]{escape(name)}[/]{where}{warning}", classes="tool-head"),
                    Static("args:", classes="tool-label"),
                    Static(escape(pretty(args)), classes="tool-args"),
                    Static("result:", classes="tool-label result-label"),
                    Static("", classes="tool-result")]
        if needs_approval:
            children.append(Horizontal(Button("Approve", variant="success", id="approve", classes="approve"),
                                       Button("Deny", variant="error", id="deny", classes="deny"), classes="approval"))
        super().__init__(*children, title=self._heading(), collapsed=not needs_approval, classes="tool-card")

    def _heading(self) -> str:
        marks = {"pending": "? waiting for approval", "running": "…", "done": "✓", "error": "✗ error",
                 "denied": "✗ denied", "not run": "· not run"}
        return f"tool call: {call_summary(self.name_, self.args)}  {marks.get(self.state, self.state)}"

    def on_mount(self) -> None:
        self._show_result_rows(False)

    def _show_result_rows(self, shown: bool) -> None:
        for widget in self.query(".result-label, .tool-result"):
            widget.display = shown

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if self.state != "pending":
            return
        decision = "approve" if event.button.id == "approve" else "deny"
        self.decide(decision)
        self.post_message(self.Decided(self, decision))

    def decide(self, decision: str) -> None:
        self.state = "running" if decision == "approve" else "denied"
        for approval in self.query(".approval"):
            approval.remove()
        self.title = self._heading()

    def set_result(self, text: str, *, is_error: bool = False, denied: bool = False, seconds: float = 0.0) -> None:
        self.state = "denied" if denied else ("error" if is_error else "done")
        for approval in self.query(".approval"):
            approval.remove()
        shown = text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + f"\n… {len(text) - MAX_RESULT_CHARS} more characters"
        result = self.query_one(".tool-result", Static)
        result.update(escape(pretty(shown)))
        result.set_class(is_error, "error")
        self._show_result_rows(True)
        self.title = self._heading() + (f" {seconds:.2f} s" if seconds and not denied else "")

    def mark_not_run(self) -> None:
        """The call was asked for but never answered (the app closed while it waited)."""
        self.state = "not run"
        for approval in self.query(".approval"):
            approval.remove()
        self.title = self._heading()
