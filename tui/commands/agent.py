"""Run one MCP tool-agent session in the terminal: the model calls tools until it can answer.

Each step is shown as it happens: the model's thoughts (dim), its tool calls, their results and the
answer. Calls with side effects ask first (--approve ask); --approve auto runs everything and
--approve never refuses side effects. Sessions are saved after every step (SQLite under the data
dir): --session ID continues one, with a new TASK or, without one, where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

from runtime.errors import MiniCPMError
from tui.commands.generate import add_model_arguments, sparse_options, speculative_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", nargs="?", help="what to do; omit it with --session to finish a stopped task")
    parser.add_argument("--mcp-config", metavar="FILE",
                        help="an mcpServers JSON file (default: MINICPM_MCP_CONFIG, <data dir>/mcp.json, "
                             "else the built-in servers calc, clock, notes and files rooted here)")
    parser.add_argument("--approve", choices=("ask", "auto", "never"), default="ask",
                        help="calls with side effects: ask first, run them all, or refuse them (ask)")
    parser.add_argument("--max-steps", type=int, default=8, metavar="N", help="model turns per task (8)")
    parser.add_argument("--require-tool", action="store_true",
                        help="the first model turn of the task must call a tool (helps small models start)")
    parser.add_argument("--tool-limit", type=int, default=None, metavar="N",
                        help="offer the model only the N tools closest to the task (helps small models choose)")
    parser.add_argument("--session", metavar="ID", help="continue this session (its id is printed at the end)")
    add_model_arguments(parser, default_backend="auto")  # auto: the embedded GGUF runs on llama.cpp
    parser.add_argument("--dialect", choices=("minicpm", "hermes"), default=None,
                        help="tool-call format (default: from the model's chat template)")
    parser.add_argument("--free", action="store_true",
                        help="free decoding of tool calls (default: constrained to the tools' schemas)")
    parser.add_argument("--temperature", type=float, default=0.2, metavar="T", help="0 is greedy (0.2)")
    parser.add_argument("--max-tokens", type=int, default=512, metavar="N", help="most tokens per model turn (512)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for a reproducible run")
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line instead")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from agents.tool_agent.events import has_history, is_unfinished, pending_approval
    from mcp_tools.config import servers_for

    if args.tool_limit is not None and args.tool_limit < 1:
        raise MiniCPMError(f"--tool-limit must be at least 1 (got {args.tool_limit})")
    if args.max_steps < 1:
        raise MiniCPMError(f"--max-steps must be at least 1 (got {args.max_steps})")
    if args.task is None and args.session is None:
        raise MiniCPMError("say what to do: minicpm agent \"TASK\" (or --session ID to finish a stopped task)")
    if args.task is not None and not args.task.strip():
        raise MiniCPMError("the task is empty")
    console = Console(stderr=args.json, highlight=False)
    servers, source = servers_for(args.mcp_config)
    session_id = args.session or uuid.uuid4().hex[:12]

    with _open_sessions(servers, console) as sessions, _checkpointer() as checkpointer:
        console.print(f"[dim]MCP servers from {escape(source)}: {len(sessions.tools())} tools[/]")
        agent = _build_agent(args, sessions, checkpointer, console)
        if args.session and not has_history(agent, session_id):
            raise MiniCPMError(f"there is no session '{session_id}' (sessions live in {_db_path()})")
        waiting = pending_approval(agent, session_id) if args.session else None
        if waiting and args.task:
            raise MiniCPMError(f"session '{session_id}' is waiting for an approval; run it without a TASK to answer")
        if args.task is None and not is_unfinished(agent, session_id):
            raise MiniCPMError(f"session '{session_id}' has no unfinished task; give it a new TASK")
        render = JsonRenderer() if args.json else RichRenderer(console)
        resume = _ask(waiting.calls, args, console) if waiting else None
        outcome = _drive(agent, session_id, args.task if not waiting else None, resume, args, render, console)
    console.print(f"[dim]session {session_id} (continue with --session {session_id})[/]")
    return outcome


def _drive(agent, session_id, task, resume, args, render, console) -> int:
    """Run the task, answering approval requests in the terminal, until an answer or a stop."""
    from agents.tool_agent.events import ApprovalNeeded, run

    while True:
        asked = None
        for event in run(agent, session_id, task=task, resume=resume):
            render(event)
            if isinstance(event, ApprovalNeeded):
                asked = event
        if asked is None:
            return 0
        task, resume = None, _ask(asked.calls, args, console)


def _ask(calls: list[dict], args, console) -> dict[str, str]:
    """Approve or deny each call; without a terminal to ask, everything is denied (and said so)."""
    from rich.markup import escape
    from rich.prompt import Confirm

    if not sys.stdin.isatty():
        console.print("[yellow]no terminal to ask for approval: the calls are denied "
                      "(use --approve auto to allow side effects without asking)[/]")
        return {call["id"]: "deny" for call in calls}
    decisions = {}
    for call in calls:
        warning = " [red](destructive)[/]" if call.get("destructive") else ""
        # Arguments come from the model: escaped, so what the user approves is exactly what runs.
        allowed = Confirm.ask(f"Allow [bold]{escape(call['server'])}.{escape(call['name'])}[/]"
                              f"({escape(_args(call['args']))}){warning}?", console=console, default=False)
        decisions[call["id"]] = "approve" if allowed else "deny"
    return decisions


def _build_agent(args, sessions, checkpointer, console):
    from rich.markup import escape

    from agents.chat_model import ChatMiniCPM
    from agents.tool_agent import build_tool_agent
    from runtime.backends.base import load_backend

    backend = load_backend(args.backend, args.model, dtype=args.dtype, quant=args.quant, context_length=args.ctx, threads=args.threads,
                           sparse=args.sparse, sparse_overrides=sparse_options(args), base_url=args.base_url,
                           **speculative_options(args), adapter=args.adapter,
                           kv_dtype=args.kv_dtype)
    for notice in backend.notices:
        console.print(f"[yellow]minicpm: note: {escape(notice)}[/]")
    try:
        model = ChatMiniCPM(backend=backend, temperature=args.temperature, max_tokens=args.max_tokens,
                            seed=args.seed, dialect=args.dialect, constrained=not args.free)
    except ValueError as exc:
        raise MiniCPMError(f"bad sampling option: {exc}") from None
    return build_tool_agent(model, sessions, approve=args.approve, max_steps=args.max_steps,
                            require_tool=args.require_tool, tool_limit=args.tool_limit, checkpointer=checkpointer)


def _open_sessions(servers, console):
    from mcp_tools.sessions import McpSessions

    from rich.markup import escape

    return McpSessions(servers, report=lambda message: console.print(f"[yellow]{escape(message)}[/]"))


def _db_path():
    from runtime.settings import data_path

    return data_path("agent.sqlite")


def _checkpointer():
    from agents.checkpoints import sqlite_checkpointer

    return sqlite_checkpointer(_db_path())


def _args(args: dict) -> str:
    return ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in args.items())


class RichRenderer:
    """Events as a terminal transcript: streamed text, then a line per call and per result."""

    MAX_RESULT_LINES = 12

    def __init__(self, console):
        self.console = console
        self.in_text = False

    def __call__(self, event) -> None:
        from rich.markup import escape

        from agents.tool_agent import events as ev

        if isinstance(event, ev.TextDelta):
            self.console.print(escape(event.text), end="", style="dim italic" if event.thought else None)
            self.in_text = True
            return
        if self.in_text:
            self.console.print()
            self.in_text = False
        if isinstance(event, ev.ToolCallEvent):
            self.console.print(f"[cyan]→ {escape(event.name)}({escape(_args(event.args))})[/]")
        elif isinstance(event, ev.ToolResultEvent):
            lines = event.text.splitlines() or [""]
            shown = "\n".join(lines[: self.MAX_RESULT_LINES])
            if len(lines) > self.MAX_RESULT_LINES:
                shown += f"\n… {len(lines) - self.MAX_RESULT_LINES} more lines"
            style = "yellow" if event.denied else ("red" if event.is_error else "green")
            label = "denied" if event.denied else ("error" if event.is_error else f"{event.seconds:.2f} s")
            self.console.print(f"[{style}]← {escape(event.name)} ({label})[/]")
            self.console.print(escape(shown), style="dim")
        elif isinstance(event, ev.InvalidCallEvent):
            self.console.print(f"[red]✗ unusable tool call: {escape(event.error)}[/] [dim](sent back to the model)[/]")
        elif isinstance(event, ev.ApprovalNeeded):
            self.console.print(f"[yellow]{len(event.calls)} call(s) need your approval[/]")
        elif isinstance(event, ev.StepLimitEvent):
            self.console.print(f"[yellow]the step limit ({event.max_steps}) was reached; the model was asked to answer[/]")
        elif isinstance(event, ev.AnswerEvent):
            self.console.print(f"[dim]answered in {event.steps} step(s)[/]")


class JsonRenderer:
    """One JSON object per event on stdout, for scripts."""

    def __call__(self, event) -> None:
        import dataclasses

        record = {"event": type(event).__name__, **dataclasses.asdict(event)}
        print(json.dumps(record, ensure_ascii=False, default=str), flush=True)
