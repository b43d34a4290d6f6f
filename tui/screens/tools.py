"""The MCP servers of the mcpServers config with their tools: what each does, whether it asks for
approval, and whether the open chat may use it. The servers are started in a worker the first time
(they are separate processes), so the screen opens at once and fills in."""

from __future__ import annotations

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from runtime.errors import MiniCPMError


def describe_servers(servers: dict, failures: dict[str, str], enabled: tuple[str, ...]) -> str:
    """servers: tui.tool_turns.McpHost.servers(); the listing as Rich markup."""
    if not servers:
        return "no MCP servers are configured"
    lines = []
    for name, tools in servers.items():
        state = "[green]on in this chat[/]" if name in enabled else "[dim]off in this chat (Ctrl+O to enable)[/]"
        lines.append(f"[b]{escape(name)}[/]  {state}")
        if name in failures:
            lines.append(f"  [red]did not start: {escape(failures[name])}[/]")
        for tool in tools:
            ask = "asks first" if tool.needs_approval else "read-only"
            if tool.destructive:
                ask = "[red]destructive, asks first[/]"
            summary = (tool.description or "").strip().splitlines()[0] if tool.description else ""
            lines.append(f"  • [b]{escape(tool.name)}[/] ({ask}) {escape(summary)}")
        lines.append("")
    return "\n".join(lines)


class ToolsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, mcp, enabled: tuple[str, ...]):
        super().__init__(classes="dialog")
        self.mcp = mcp  # tui.tool_turns.McpHost
        self.enabled = enabled

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog-box"):
            yield Static("[b]MCP tools[/]  (Esc closes)")
            yield Static("starting the MCP servers…" if not self.mcp.is_open else "", id="tools-listing")

    def on_mount(self) -> None:
        if self.mcp.is_open:
            self.show()
        else:
            self.start()

    def show(self) -> None:
        self.query_one("#tools-listing", Static).update(
            describe_servers(self.mcp.servers(), self.mcp.failures, self.enabled))

    @work(thread=True)
    def start(self) -> None:
        try:
            self.mcp.open()
        except MiniCPMError as exc:
            self.app.call_from_thread(self.query_one("#tools-listing", Static).update, f"[red]{escape(str(exc))}[/]")
            return
        self.app.call_from_thread(self.show)
