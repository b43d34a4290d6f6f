"""The suite's built-in MCP servers (FastMCP, mcp 1.x), and the registry that `minicpm mcp serve` runs.

    SERVERS[name].help                    one line for `minicpm mcp serve --help`
    SERVERS[name].add_arguments(parser)   adds the server's options to an argparse parser
    SERVERS[name].build(args)             -> FastMCP, built from the parsed options
    run_stdio(name, args)                 builds the server and serves it over stdin/stdout

A server module (`mcp_tools/servers/<name>.py`) defines `build_server(**options) -> FastMCP`,
`add_arguments(parser)` and `build(args)`. The registry imports a module only when its server is
built or its options are added, so listing the servers stays cheap. Bad options (a missing --root,
an unusable --db) raise runtime.errors.MiniCPMError before anything is served.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.errors import MiniCPMError

if TYPE_CHECKING:
    from mcp.server.fastmcp import FastMCP


@dataclass(frozen=True)
class ServerSpec:
    """One built-in server: its help line and the module that builds it."""

    name: str
    help: str
    module: str  # import path of the module with add_arguments(parser) and build(args)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        importlib.import_module(self.module).add_arguments(parser)

    def build(self, args: argparse.Namespace) -> FastMCP:
        return importlib.import_module(self.module).build(args)


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("files", "read, list, search and write files under one folder (--root DIR, --read-only)",
                   "mcp_tools.servers.files"),
        ServerSpec("calc", "exact arithmetic (no eval) and unit conversion", "mcp_tools.servers.calc"),
        ServerSpec("clock", "current time in any time zone, time zone conversion and date arithmetic",
                   "mcp_tools.servers.clock"),
        ServerSpec("notes", "a SQLite notebook with full-text search (--db PATH)", "mcp_tools.servers.notes"),
        ServerSpec("papers", "search the local paper corpus built by `minicpm corpus ingest` (--corpus DIR)",
                   "mcp_tools.servers.papers"),
    )
}


def get_server(name: str) -> ServerSpec:
    """The registry entry for name; MiniCPMError naming the known servers when there is none."""
    try:
        return SERVERS[name]
    except KeyError:
        raise MiniCPMError(f"no built-in MCP server named '{name}'; the built-in servers are: {', '.join(SERVERS)}") from None


def run_stdio(name: str, args: argparse.Namespace) -> None:
    """Build the server `name` from parsed options and serve it over stdio until the client hangs up."""
    server = get_server(name).build(args)
    try:
        server.run("stdio")
    except KeyboardInterrupt:  # Ctrl+C in a terminal: stop quietly, there is nothing to clean up
        pass
