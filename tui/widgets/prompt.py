"""The message box: a TextArea where Enter sends and Shift+Enter (or Ctrl+J) starts a new line.

The keys come from the settings file's keymap ("send", "newline"), since not every terminal reports
Shift+Enter apart from Enter (tmux does not, without extended keys): Ctrl+J is the fallback that works
everywhere.
"""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea


def key_set(keys: str) -> set[str]:
    return {k.strip() for k in keys.split(",") if k.strip()}


def key_names(keys: str) -> str:
    """Keys in Textual's notation as a person reads them: "shift+enter,ctrl+j" -> "Shift+Enter or Ctrl+J"."""
    return " or ".join("+".join(part.capitalize() for part in k.strip().split("+")) for k in keys.split(",") if k.strip())


def placeholder(send_keys: str, newline_keys: str) -> str:
    """The empty message box's hint, naming the keys the keymap gives send and newline."""
    return f"Message ({key_names(send_keys)} sends, {key_names(newline_keys)} new line)"


class PromptInput(TextArea):
    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str):
            super().__init__()
            self.prompt = prompt
            self.text = text

    def __init__(self, *, send_keys: str = "enter", newline_keys: str = "shift+enter,ctrl+j", **kwargs):
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.send_keys = key_set(send_keys)
        self.newline_keys = key_set(newline_keys)

    async def _on_key(self, event: events.Key) -> None:
        if event.key in self.send_keys:
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self, self.text))
            return
        if event.key in self.newline_keys:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)
