"""The `mcpServers` JSON that Claude Desktop, Cursor, Cline and oterm use, read verbatim.

    {"mcpServers": {
        "files": {"command": "minicpm", "args": ["mcp", "serve", "files", "--root", "${HOME}/notes"]},
        "remote": {"url": "https://example.org/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}}
    }}

A stdio server has `command` (+ `args`, `env`, `cwd`); a remote one has `url` (+ `headers`), spoken
as streamable HTTP unless `type`/`transport` says "sse" (old servers). `${VAR}`, `${env:VAR}` (Cursor's
spelling) and `${VAR:-default}` expand from the environment in every string; a variable that is not
set is an error that names it, never a silent empty string. `disabled: true` (Cline) skips a server.

The parent environment is not inherited: a stdio server gets the MCP SDK's safe minimum (HOME, PATH,
USER, SHELL, TERM, LOGNAME) plus its `env`, so API keys in the user's shell do not leak into every
server. `"inheritEnv": true` passes the whole environment. Two keys of our own, ignored by other
clients: `timeout` (seconds per tool call) and `inheritEnv`. `alwaysAllow` (Cline's) lists tools that
never ask for approval.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runtime.errors import MiniCPMError
from runtime.settings import data_dir, settings

Transport = Literal["stdio", "streamable_http", "sse"]
DEFAULT_CALL_TIMEOUT = 60.0
VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
TRANSPORT_NAMES = {
    "stdio": "stdio",
    "http": "streamable_http", "streamable-http": "streamable_http", "streamable_http": "streamable_http",
    "streamableHttp": "streamable_http",
    "sse": "sse",
}


class McpConfigError(MiniCPMError):
    """The mcpServers file cannot be used as written."""


@dataclass(frozen=True)
class ServerConfig:
    name: str
    transport: Transport
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    inherit_env: bool = False
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_CALL_TIMEOUT
    always_allow: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.transport == "stdio":
            return " ".join([self.command or "", *self.args])
        return f"{self.url} ({'SSE' if self.transport == 'sse' else 'streamable HTTP'})"

    def process_env(self) -> dict[str, str] | None:
        """What the stdio server's process adds to the SDK's safe minimum (None: nothing)."""
        if self.inherit_env:
            return {**os.environ, **self.env}
        return dict(self.env) or None


def default_config_path() -> Path:
    return settings().mcp_config or data_dir() / "mcp.json"




def builtin_servers(files_root: Path | str = ".") -> list[ServerConfig]:
    """The suite's own servers (mcp_tools/servers/), each in its own process over stdio, as a config
    would start them. `files` is rooted at files_root; its writes ask for approval like any side effect.
    `papers` joins once the default corpus exists (`minicpm corpus ingest`)."""
    def entry(name: str, *options: str) -> ServerConfig:
        return ServerConfig(name=name, transport="stdio", command=sys.executable,
                            args=("-m", "minicpm_suite", "mcp", "serve", name, *options),
                            env=_suite_env())

    servers = [entry("calc"), entry("clock"), entry("notes"), entry("files", "--root", str(Path(files_root).resolve()))]
    from survey.corpus.store import DB_NAME  # noqa: PLC0415 - only the file name; no corpus is opened here

    if (data_dir() / "corpora" / "default" / DB_NAME).is_file():
        servers.append(entry("papers"))  # only once a corpus exists: without one the server cannot start
    return servers


def _suite_env() -> dict[str, str]:
    """What a built-in server needs from our environment: where the suite keeps its data."""
    return {key: os.environ[key] for key in ("MINICPM_HOME", "XDG_DATA_HOME") if key in os.environ}


def servers_for(path: Path | str | None = None) -> tuple[list[ServerConfig], str]:
    """The servers an agent session uses, and where they came from (for the user): the named file,
    else the default file when it exists, else the built-in servers."""
    if path is not None:
        return load_config(path), str(path)
    if settings().mcp_config is not None:  # named by the user, through MINICPM_MCP_CONFIG: it must exist
        return load_config(settings().mcp_config), f"{settings().mcp_config} (MINICPM_MCP_CONFIG)"
    default = default_config_path()
    if default.exists():
        return load_config(default), str(default)
    return builtin_servers(), f"the built-in servers (no {default}; files is rooted at {Path.cwd()})"


def load_config(path: Path | str | None = None, *, environ: dict[str, str] | None = None) -> list[ServerConfig]:
    """The enabled servers of an mcpServers file (default: MINICPM_MCP_CONFIG or <data dir>/mcp.json).

    A missing default file means no servers; a missing file the user named is an error.
    """
    named = path is not None
    path = Path(path) if named else default_config_path()
    if not path.exists():
        if named:
            raise McpConfigError(f"MCP config {path} does not exist")
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise McpConfigError(f"cannot read MCP config {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise McpConfigError(f"MCP config {path} is not valid JSON: {exc}") from None
    return parse_config(document, source=str(path), environ=environ)


def parse_config(document: Any, *, source: str = "MCP config",
                 environ: dict[str, str] | None = None) -> list[ServerConfig]:
    environ = dict(os.environ) if environ is None else environ
    servers = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        raise McpConfigError(f'{source} must be an object with "mcpServers": {{"name": {{...}}}}')
    out = []
    for name, entry in servers.items():
        where = f'{source}: server "{name}"'
        if not isinstance(entry, dict):
            raise McpConfigError(f"{where} must be an object with a command or a url")
        if entry.get("disabled") is True:
            continue
        out.append(_server(name, _expand(entry, environ, where), where))
    return out


def _server(name: str, entry: dict[str, Any], where: str) -> ServerConfig:
    kind = entry.get("type", entry.get("transport"))
    if kind is not None and kind not in TRANSPORT_NAMES:
        raise McpConfigError(f"{where}: unknown type {kind!r} (use stdio, http, streamable-http or sse)")
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        raise McpConfigError(f'{where} needs exactly one of "command" (a local server) or "url" (a remote one)')
    transport = TRANSPORT_NAMES[kind] if kind else ("stdio" if has_command else "streamable_http")
    if (transport == "stdio") != has_command:
        raise McpConfigError(f'{where}: type {kind!r} does not fit a server with a {"command" if has_command else "url"}')

    timeout = entry.get("timeout", DEFAULT_CALL_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise McpConfigError(f"{where}: timeout must be a positive number of seconds (got {timeout!r})")
    always_allow = entry.get("alwaysAllow", [])
    if not _is_str_list(always_allow):
        raise McpConfigError(f"{where}: alwaysAllow must be a list of tool names")
    common = dict(name=name, transport=transport, timeout=float(timeout), always_allow=frozenset(always_allow))

    if transport == "stdio":
        command, args, env = entry["command"], entry.get("args", []), entry.get("env", {})
        if not isinstance(command, str) or not command.strip():
            raise McpConfigError(f"{where}: command must be a non-empty string")
        if not _is_str_list(args):
            raise McpConfigError(f"{where}: args must be a list of strings")
        if not _is_str_dict(env):
            raise McpConfigError(f"{where}: env must map names to strings")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise McpConfigError(f"{where}: cwd must be a string")
        inherit = entry.get("inheritEnv", False)
        if not isinstance(inherit, bool):
            raise McpConfigError(f"{where}: inheritEnv must be true or false")
        return ServerConfig(command=command, args=tuple(args), env=dict(env), cwd=cwd, inherit_env=inherit, **common)

    url, headers = entry["url"], entry.get("headers", {})
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise McpConfigError(f"{where}: url must be an http:// or https:// address (got {url!r})")
    if not _is_str_dict(headers):
        raise McpConfigError(f"{where}: headers must map names to strings")
    return ServerConfig(url=url, headers=dict(headers), **common)


def _expand(value: Any, environ: dict[str, str], where: str) -> Any:
    """${VAR} expansion in every string of an entry (keys stay as written)."""
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise McpConfigError(f"{where} uses ${{{name}}}, which is not set in the environment")

        return VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [_expand(item, environ, where) for item in value]
    if isinstance(value, dict):
        return {key: _expand(item, environ, where) for key, item in value.items()}
    return value


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_str_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
