"""A small stdio MCP server for the session tests: state, a failing tool, a hanging one, a crash."""

from __future__ import annotations

import os
import sys
import time

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

server = FastMCP("test")
counter = {"value": 0}


@server.tool()
def bump(by: int = 1) -> dict:
    """Add `by` to a counter kept in the server process and return it."""
    counter["value"] += by
    return {"value": counter["value"]}


@server.tool()
def fail(message: str) -> str:
    """Always raises."""
    raise ValueError(message)


@server.tool()
def hang(seconds: float) -> str:
    """Blocks the whole server (a synchronous sleep)."""
    time.sleep(seconds)
    return "woke up"


@server.tool()
def crash() -> str:
    """Exits the server process at once."""
    print("about to crash", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def echo_env(name: str) -> str:
    """The value of an environment variable in the server process, or '<unset>'."""
    return os.environ.get(name, "<unset>")


only_bump = FastMCP("bump-only")
only_bump.tool()(bump)  # one tool with a side effect: a model forced to call must call it, and be asked

if __name__ == "__main__":
    if "--only-bump" in sys.argv:
        only_bump.run("stdio")
        sys.exit(0)
    if "--fail-at-start" in sys.argv:
        print("cannot open the database", file=sys.stderr, flush=True)
        sys.exit(1)
    if "--hang-at-start" in sys.argv:
        time.sleep(60)
    for flag, transport in (("--http", "streamable-http"), ("--sse", "sse")):
        if flag in sys.argv:
            server.settings.port = int(sys.argv[sys.argv.index(flag) + 1])
            server.settings.log_level = "WARNING"
            server.run(transport)  # http://127.0.0.1:PORT/mcp, or /sse
            sys.exit(0)
    server.run("stdio")
