"""Run a built-in MCP server over stdio, or list the configured servers and their tools.

    minicpm mcp serve NAME [options]   serve one of the built-in servers (files, calc, clock, notes, papers)
    minicpm mcp list [--mcp-config FILE] [--json]

`serve` speaks MCP on stdin/stdout, so any MCP client (Claude Desktop, Cursor, oterm, `minicpm agent`)
can start it from an mcpServers entry: {"command": "minicpm", "args": ["mcp", "serve", "calc"]}.
"""

from __future__ import annotations

import argparse
import json

from runtime.errors import MiniCPMError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcp_tools.servers import SERVERS

    actions = parser.add_subparsers(dest="mcp_action", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="run a built-in MCP server over stdio",
                               description="Run a built-in MCP server over stdio (for an MCP client to start).")
    names = serve.add_subparsers(dest="server", metavar="NAME", required=True)
    for name, spec in SERVERS.items():
        spec.add_arguments(names.add_parser(name, help=spec.help, description=spec.help))
    listing = actions.add_parser("list", help="the configured MCP servers and their tools",
                                 description="Start the configured MCP servers and list their tools.")
    listing.add_argument("--mcp-config", metavar="FILE",
                         help="an mcpServers JSON file (default: MINICPM_MCP_CONFIG, <data dir>/mcp.json, "
                              "else the built-in servers)")
    listing.add_argument("--json", action="store_true", help="print the servers and tools as JSON")


def run(args: argparse.Namespace) -> int:
    if args.mcp_action == "serve":
        from mcp_tools.servers import run_stdio

        run_stdio(args.server, args)
        return 0
    return _list(args)


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mcp_tools.config import servers_for
    from mcp_tools.sessions import McpSessions

    servers, source = servers_for(args.mcp_config)
    console = Console(stderr=True, highlight=False)
    if not servers:
        raise MiniCPMError(f"{source} lists no enabled servers")
    with console.status(f"starting {len(servers)} MCP server(s)…", spinner="dots") if not args.json else _nothing():
        sessions = McpSessions(servers)
        failures = sessions.open()
    try:
        tools = sessions.tools()
        if args.json:
            print(json.dumps({
                "source": source,
                "servers": [{"name": s.name, "transport": s.transport, "target": s.describe(),
                             "error": failures.get(s.name),
                             "tools": [{"name": t.name, "description": t.description, "read_only": t.read_only,
                                        "needs_approval": t.needs_approval, "parameters": t.input_schema}
                                       for t in tools if t.server == s.name]}
                            for s in servers]}, indent=2))
            return 0 if not failures else 1
        out = Console(highlight=False)
        out.print(f"[dim]MCP servers from {escape(source)}[/]")
        for server in servers:
            if server.name in failures:
                out.print(f"\n[bold]{escape(server.name)}[/] [red]did not start[/]: {escape(failures[server.name])}")
                continue
            table = Table(title=f"{server.name}  [dim]{escape(server.describe())}[/]", title_justify="left",
                          show_lines=False, expand=False)
            table.add_column("tool", style="cyan", no_wrap=True)
            table.add_column("parameters")
            table.add_column("approval", no_wrap=True)
            table.add_column("description")
            for tool in (t for t in tools if t.server == server.name):
                params = ", ".join(tool.input_schema.get("properties", {}))
                approval = "asks" if tool.needs_approval else "-"
                table.add_row(tool.name, escape(params), approval, escape(_first_line(tool.description)))
            out.print(table)
        return 0 if not failures else 1
    finally:
        sessions.close()


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
