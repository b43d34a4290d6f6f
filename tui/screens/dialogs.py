"""Small modal questions: a line of text (rename), yes / no (delete), a choice (export format)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class AskText(ModalScreen[str | None]):
    """Returns the text typed (Enter), or None (Esc)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, question: str, value: str = ""):
        super().__init__(classes="dialog")
        self.question = question
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question)
            yield Input(self.value, id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class AskChoice(ModalScreen[str | None]):
    """A question with one button per answer; returns the answer's id, or None (Esc)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, question: str, choices: dict[str, str], *, danger: str | None = None):
        super().__init__(classes="dialog")
        self.question = question
        self.choices = choices  # id -> label
        self.danger = danger  # the id whose button is red

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question)
            with Horizontal(classes="dialog-buttons"):
                for choice, label in self.choices.items():
                    yield Button(label, id=choice, variant="error" if choice == self.danger else "default")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
