"""`minicpm chat`: the Textual app. It owns what the screens share (the chat store, the loaded model,
the MCP servers, the settings file) and the command palette; the screens do the rest.

    ChatScreen     tui/screens/chat.py      history, conversation, message box, usage
    ChatSettings   tui/screens/settings.py  model/backend, system prompt, sampling, sparse, thinking, tools
    SurveyScreen   tui/screens/survey.py    a survey with its live outline; earlier runs, resumable
"""

from __future__ import annotations

import asyncio

from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding

from tui.config import TuiConfig
from tui.engine import ModelHost
from tui.tool_turns import McpHost


class ChatApp(App):
    TITLE = "minicpm chat"
    CSS_PATH = "chat.tcss"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", id="quit", priority=True)]

    def __init__(self, store, config: TuiConfig, *, host: ModelHost | None = None, mcp: McpHost | None = None,
                 open_chat: str | None = None, corpus: Path | None = None, preload: bool = True,
                 system_prompt: str = ""):
        super().__init__()
        self.store = store
        self.config = config
        self.host = host or ModelHost()
        self.mcp = mcp or McpHost()
        self.open_chat = open_chat
        self.corpus = corpus  # the survey screen's paper corpus (None: the default one)
        self.preload = preload
        self.system_prompt = system_prompt  # of new chats

    def on_mount(self) -> None:
        from tui.screens.chat import ChatScreen

        if self.config.theme in self.available_themes:
            self.theme = self.config.theme
        else:
            self.notify(f"unknown theme '{self.config.theme}' in {self.config.path}; using {self.theme}",
                        severity="warning")
        self.set_keymap({k: v for k, v in self.config.keymap.items() if k not in ("send", "newline")})
        self.push_screen(ChatScreen(self.store, self.config, self.host, self.mcp, open_chat=self.open_chat,
                                    preload=self.preload, system_prompt=self.system_prompt))

    def watch_theme(self, theme: str) -> None:
        if self.is_mounted and theme != self.config.theme:
            self.config.save_theme(theme)  # the palette's theme picker: remembered for the next start

    @property
    def chat(self):
        from tui.screens.chat import ChatScreen

        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                return screen
        return None

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        chat = self.chat
        if chat is None:
            return
        yield SystemCommand("New chat", "start a new conversation", chat.action_new_chat)
        yield SystemCommand("Chat settings", "model, backend, system prompt, sampling, sparse attention, tools",
                            chat.action_settings)
        yield SystemCommand("Toggle thinking", "auto / on / off: enable_thinking for hybrid-reasoning models",
                            chat.action_toggle_thinking)
        yield SystemCommand("Rename chat", "give this chat another title", chat.rename)
        yield SystemCommand("Delete chat", "delete this chat and its messages", chat.delete)
        yield SystemCommand("Export chat", "write this chat as Markdown or JSON in the current folder", chat.export)
        yield SystemCommand("Copy last answer", "copy the last reply's Markdown to the clipboard", chat.action_copy_last)
        yield SystemCommand("Copy last code block", "copy the last fenced code block of the chat",
                            chat.action_copy_last_code)
        yield SystemCommand("Toggle history", "show or hide the chat list", chat.action_toggle_sidebar)
        yield SystemCommand("MCP tools", "the configured MCP servers and their tools", chat.action_tools)
        yield SystemCommand("Start a survey", "write a cited survey from the local paper corpus", chat.action_survey)

    async def on_unmount(self) -> None:
        # A reply in flight stops at its next token, a survey after its current model call; the
        # model is closed only once no worker uses it (else the process exits with it open). The
        # wait runs off the event loop: a worker's last call_from_thread needs the loop to return
        # before the worker can leave the model (waiting on the loop itself stalled quitting 5 s).
        for screen in self.screen_stack:
            for flag in ("cancel_event", "stop"):
                event = getattr(screen, flag, None)
                if event is not None and hasattr(event, "set"):
                    event.set()
        await asyncio.to_thread(self.host.close, 5)
        self.mcp.close()
