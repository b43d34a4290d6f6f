"""The chat history beside the conversation: a search box and the chats, newest first.

Enter opens a chat; with a chat highlighted, `r` renames it, `d` deletes it (after asking) and `e`
exports it. Typing in the search box searches titles and messages (tui/store.py, SQLite FTS5).
"""

from __future__ import annotations

import time

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView


def age(timestamp: float, now: float | None = None) -> str:
    seconds = (now or time.time()) - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


class ChatItem(ListItem):
    def __init__(self, conversation, snippet: str = ""):
        self.conversation_id = conversation.id
        text = f"{escape(conversation.title)}\n[dim]{age(conversation.updated)}[/]"
        if snippet:
            text += f"\n[dim i]{escape(snippet)}[/]"
        super().__init__(Label(text))


class HistoryList(Vertical):
    BINDINGS = [Binding("r", "rename", "Rename"), Binding("d", "delete", "Delete"), Binding("e", "export", "Export")]

    class Action(Message):
        """The user asked for something on a chat: open | rename | delete | export."""

        def __init__(self, action: str, conversation_id: str):
            super().__init__()
            self.action = action
            self.conversation_id = conversation_id

    def __init__(self, store, **kwargs):
        super().__init__(**kwargs)
        self.store = store

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search chats", id="history-search")
        yield ListView(id="history")

    def on_mount(self) -> None:
        self.reload()

    def reload(self, current: str | None = None) -> None:
        query = self.query_one("#history-search", Input).value.strip()
        if query:
            rows = self.store.search(query)
        else:
            rows = [(c, "") for c in self.store.list()]
        listing = self.query_one("#history", ListView)
        listing.clear()
        items = [ChatItem(c, snippet) for c, snippet in rows]
        listing.extend(items)
        at = next((i for i, item in enumerate(items) if item.conversation_id == current), 0)
        listing.index = at if items else None  # the cursor: on the open chat, else the newest

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "history-search":
            event.stop()
            self.reload()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ChatItem):
            self.post_message(self.Action("open", event.item.conversation_id))

    def _highlighted(self) -> str | None:
        item = self.query_one("#history", ListView).highlighted_child
        return item.conversation_id if isinstance(item, ChatItem) else None

    def _act(self, action: str) -> None:
        chat = self._highlighted()
        if chat is not None:
            self.post_message(self.Action(action, chat))

    def action_rename(self) -> None:
        self._act("rename")

    def action_delete(self) -> None:
        self._act("delete")

    def action_export(self) -> None:
        self._act("export")
