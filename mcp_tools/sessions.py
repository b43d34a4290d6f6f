"""MCP client sessions: every configured server connected once and kept open for a whole agent session.

The official `mcp` SDK is async (anyio), while the agents, the CLI and the TUI's workers call tools
from ordinary threads. So `McpSessions` owns one background thread with an asyncio loop, and each
server lives in one long-running task there: it enters the transport and the ClientSession, lists the
tools, then waits until asked to close. (The SDK's transports are anyio task groups, which must be
left by the task that entered them; one task per server keeps that true.) Calls from any thread are
coroutines submitted to that loop.

What a user can rely on:
- a server keeps its state between calls (one process, one session, for the whole session);
- a server that cannot start is reported with the reason (command not found, the tail of its
  stderr, a connection error) and the others still run;
- every call has a timeout (the server's `timeout` in the config, else 60 s); a server that does not
  answer in time is stopped (calls in flight on it fail with a message) and restarted on next use;
- a server that crashes is reported and restarted on next use;
- a tool that fails (isError, an exception, a bad result) comes back as a ToolResult with is_error
  set, text the model can read; `call` never raises for anything a server or a model does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from mcp_tools.config import ServerConfig
from runtime.tool_calls.tools import Tool, argument_errors

CONNECT_TIMEOUT = 30.0
STDERR_LINES = 3  # the last lines of a failed server's stderr, shown to the user


@dataclass(frozen=True)
class McpTool:
    """A tool as the model sees it (name, description, JSON Schema) and where it lives."""

    server: str
    name: str  # the name shown to the model: the server's own, or "server_tool" when two servers share it
    remote_name: str  # the name on the server
    description: str
    input_schema: dict[str, Any]
    read_only: bool  # annotations.readOnlyHint: no side effects, so no approval needed
    destructive: bool  # annotations.destructiveHint
    always_allowed: bool = False  # listed in the server's alwaysAllow: never needs approval

    @property
    def needs_approval(self) -> bool:
        """Side-effecting tools ask before they run (unless the config's alwaysAllow names them)."""
        return not (self.read_only or self.always_allowed)

    def to_openai(self) -> dict[str, Any]:
        return Tool(self.name, self.description, self.input_schema).to_openai()


@dataclass(frozen=True)
class ToolResult:
    tool: str
    server: str
    text: str  # what the model reads
    structured: dict[str, Any] | None = None  # structuredContent, when the server sent it
    is_error: bool = False
    seconds: float = 0.0


class _Server:
    """One configured server: its connection task, its tools, and why it is down when it is."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.session = None  # mcp.ClientSession while connected
        self.tools: list[Any] = []  # mcp.types.Tool
        self.error: str | None = None  # why the last start failed, or why it stopped
        self.starts = 0
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self.starting = asyncio.Lock()  # calls from several threads restart a downed server once, not each

    def close_files(self) -> None:
        self._stderr.close()

    @property
    def connected(self) -> bool:
        return self.session is not None and self._task is not None and not self._task.done()

    async def start(self, timeout: float) -> None:
        """Connect, initialise and list tools; raises ConnectionError with a user-facing reason."""
        await self.stop()
        self.starts += 1
        self._stderr.seek(0)
        self._stderr.truncate()
        self._check_command()
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even after a timeout
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready), name=f"mcp:{self.config.name}")
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise ConnectionError(self._reason(f"did not finish the MCP handshake within {timeout:g} s")) from None
        except Exception as exc:  # noqa: BLE001 - any failure to connect is reported, never raised past here
            await self.stop()
            where = f"cannot reach {self.config.url}: " if self.config.url else ""
            raise ConnectionError(self._reason(where + _describe(exc))) from None
        self.error = None

    async def stop(self, *, graceful: bool = True) -> None:
        """Close the session. graceful: let the transport close stdin and wait for the process; a
        server stuck in a handshake or a call is cancelled at once (the SDK then kills its process)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._stop.set()
            if not graceful or self.session is None:
                task.cancel()
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - already stopping
                task.cancel()
        self.session = None

    async def _run(self, ready: asyncio.Future) -> None:
        from mcp import ClientSession

        try:
            async with AsyncExitStack() as stack:
                read, write = await self._open_transport(stack)
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self.tools = await _list_tools(session)
                self.session = session
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported through ready, or as a crash
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            elif not self._stop.is_set():
                self.error = self._reason(f"the connection ended: {_describe(exc)}")
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.session = None

    async def _open_transport(self, stack: AsyncExitStack):
        config = self.config
        if config.transport == "stdio":
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            params = StdioServerParameters(command=config.command, args=list(config.args),
                                           env=config.process_env(), cwd=config.cwd)
            return await stack.enter_async_context(stdio_client(params, errlog=self._stderr))
        if config.transport == "sse":
            from mcp.client.sse import sse_client

            return await stack.enter_async_context(sse_client(config.url, headers=config.headers))
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        client = await stack.enter_async_context(create_mcp_http_client(headers=config.headers))
        read, write, _ = await stack.enter_async_context(streamable_http_client(config.url, http_client=client))
        return read, write

    def _check_command(self) -> None:
        config = self.config
        if config.transport != "stdio":
            return
        path = (config.process_env() or {}).get("PATH", os.environ.get("PATH"))
        command = config.command
        if os.sep in command and config.cwd and not os.path.isabs(command):
            command = os.path.join(config.cwd, command)
        if shutil.which(command, path=path) is None:
            raise ConnectionError(f"command '{config.command}' was not found (is it installed and on PATH?)")

    def _reason(self, what: str) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip()]
        tail = " | ".join(lines[-STDERR_LINES:])[-400:]
        return f"{what}; its stderr ends with: {tail}" if tail else what


class McpSessions:
    """All servers of an mcpServers config, connected for the life of this object.

    Use as a context manager, or call open() and close(). report(message) is called for what the
    user should see (a server that failed to start, crashed, was restarted)."""

    def __init__(self, servers: list[ServerConfig], *, connect_timeout: float = CONNECT_TIMEOUT,
                 report: Callable[[str], None] | None = None):
        names = [s.name for s in servers]
        if len(set(names)) != len(names):
            raise ValueError("two MCP servers share a name")
        self._servers = {s.name: _Server(s) for s in servers}
        self._connect_timeout = connect_timeout
        self._report_to = report
        self._tools: dict[str, McpTool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _report(self, message: str) -> None:
        """Tell the user; a failing report callback must not turn a tool result into an exception."""
        if self._report_to is not None:
            try:
                self._report_to(message)
            except Exception:  # noqa: BLE001 - the message is also in the result or status()
                pass

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> dict[str, str]:
        """Start every server; returns {server: why it failed} for those that did not start."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-sessions", daemon=True)
            self._thread.start()
        failures = self._submit(self._start_all(), None)
        for name, reason in failures.items():
            self._report(f"MCP server '{name}' did not start: {reason}")
        return failures

    def close(self) -> None:
        if self._loop is None:
            return
        async def stop_all() -> None:
            await asyncio.gather(*(s.stop() for s in self._servers.values()))

        try:
            self._submit(stop_all(), 15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():  # a loop still running cannot be closed; it is a daemon thread
                self._loop.close()
            self._loop = None
            for server in self._servers.values():
                server.close_files()

    def __enter__(self) -> McpSessions:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the agent uses ---------------------------------------------------------------------

    @property
    def servers(self) -> list[ServerConfig]:
        return [s.config for s in self._servers.values()]

    def status(self) -> dict[str, str | None]:
        """{server: None when connected, else why not}."""
        return {name: (None if s.connected else (s.error or "not connected")) for name, s in self._servers.items()}

    def tools(self) -> list[McpTool]:
        return list(self._tools.values())

    def tool(self, name: str) -> McpTool | None:
        return self._tools.get(name)

    def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Call a tool by the name the model saw. Never raises for a server's or a model's mistake."""
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return ToolResult(name, "", f"Error: there is no tool named '{name}' (tools: {known})", is_error=True)
        problems = argument_errors(Tool(tool.name, tool.description, tool.input_schema), arguments)
        if problems:
            return ToolResult(name, tool.server, f"Error: the arguments do not fit {name}'s parameters: "
                              + "; ".join(problems), is_error=True)
        server = self._servers[tool.server]
        return self._submit(self._call(server, tool, arguments), server.config.timeout + self._connect_timeout + 10)

    # -- inside the loop -------------------------------------------------------------------------

    def _submit(self, coroutine, timeout: float | None):
        if self._loop is None:
            raise RuntimeError("McpSessions is not open")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start_all(self) -> dict[str, str]:
        async def start(server: _Server) -> str | None:
            try:
                await server.start(self._connect_timeout)
            except ConnectionError as exc:
                server.error = str(exc)
                return server.error
            return None

        results = await asyncio.gather(*(start(s) for s in self._servers.values()))
        self._index_tools()
        return {name: why for name, why in zip(self._servers, results) if why}

    def _index_tools(self) -> None:
        """Tool names as the model sees them: a server's own, or server_tool where two servers clash."""
        counts: dict[str, int] = {}
        for server in self._servers.values():
            for tool in server.tools:
                counts[tool.name] = counts.get(tool.name, 0) + 1
        index = {}
        for server in self._servers.values():
            for tool in server.tools:
                shown = tool.name if counts[tool.name] == 1 else f"{server.config.name}_{tool.name}"
                annotations = tool.annotations
                index[shown] = McpTool(
                    server=server.config.name, name=shown, remote_name=tool.name,
                    description=tool.description or "", input_schema=dict(tool.inputSchema or {"type": "object"}),
                    read_only=bool(annotations and annotations.readOnlyHint),
                    destructive=bool(annotations and annotations.destructiveHint),
                    always_allowed=tool.name in server.config.always_allow,
                )
        self._tools = index

    async def _call(self, server: _Server, tool: McpTool, arguments: dict[str, Any]) -> ToolResult:
        name = server.config.name
        async with server.starting:
            if not server.connected:
                if server.starts:
                    self._report(f"MCP server '{name}' is down ({server.error or 'stopped'}); restarting it")
                try:
                    await server.start(self._connect_timeout)
                except ConnectionError as exc:
                    server.error = str(exc)
                    return ToolResult(tool.name, name, f"Error: the MCP server '{name}' could not be started: {exc}",
                                      is_error=True)
                self._index_tools()
            session = server.session
        timeout = server.config.timeout
        began = time.perf_counter()
        try:
            result = await asyncio.wait_for(session.call_tool(tool.remote_name, arguments), timeout)
        except asyncio.TimeoutError:
            await server.stop(graceful=False)
            server.error = f"a call to {tool.remote_name} did not answer within {timeout:g} s"
            self._report(f"MCP server '{name}': {server.error}; stopped, it restarts on next use")
            return ToolResult(tool.name, name, f"Error: {tool.name} did not answer within {timeout:g} s "
                              f"(the server was stopped and restarts on next use)", is_error=True,
                              seconds=time.perf_counter() - began)
        except Exception as exc:  # noqa: BLE001 - a server's failure is the model's tool result, not a crash
            seconds = time.perf_counter() - began
            if not server.connected or "Connection closed" in str(exc):
                await server.stop()
                server.error = server._reason(f"it stopped during a call to {tool.remote_name}")
                self._report(f"MCP server '{name}' crashed: {server.error}; it restarts on next use")
                return ToolResult(tool.name, name, f"Error: the MCP server '{name}' crashed while running "
                                  f"{tool.name}; it restarts on next use", is_error=True, seconds=seconds)
            return ToolResult(tool.name, name, f"Error: {tool.name} failed: {_describe(exc)}", is_error=True,
                              seconds=seconds)
        return _to_result(tool, result, time.perf_counter() - began)


async def _list_tools(session) -> list[Any]:
    tools, cursor = [], None
    while True:
        page = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
        tools.extend(page.tools)
        cursor = page.nextCursor
        if not cursor:
            return tools


def _to_result(tool: McpTool, result, seconds: float) -> ToolResult:
    """A CallToolResult as text for the model: text blocks as they are, other blocks described,
    structuredContent as JSON when the server sent no text."""
    parts = []
    for block in result.content or []:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.mimeType}, {len(block.data) * 3 // 4} bytes]")
        elif kind == "resource":
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}, {resource.mimeType or 'binary'}]")
        elif kind == "resource_link":
            parts.append(f"[link: {block.uri}]")
    structured = result.structuredContent
    text = "\n".join(parts)
    if structured is not None and (not text or _same_json(text, structured)):
        text = json.dumps(structured, ensure_ascii=False)  # compact: the model reads every token
    if result.isError and not text.startswith("Error"):
        text = f"Error: {text or 'the tool failed without a message'}"
    return ToolResult(tool.name, tool.server, text, structured=structured, is_error=bool(result.isError),
                      seconds=seconds)


def _same_json(text: str, value: Any) -> bool:
    try:
        return json.loads(text) == value
    except ValueError:
        return False


def _describe(exc: BaseException) -> str:
    """The innermost exception of an anyio/asyncio exception group, as one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return message if message.startswith(type(exc).__name__) else f"{type(exc).__name__}: {message}"
