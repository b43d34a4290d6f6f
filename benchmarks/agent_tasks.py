"""The tool agent on a real local model doing tasks through the built-in MCP servers over stdio.

Each task of benchmarks/data/agent_tasks.json (arithmetic, unit conversion, dates, notes, files, one
path-escape attempt, one task across two servers) runs as its own agent session against the real
servers (calc, clock, notes, files), started once over stdio in a scratch folder seeded with a few
files and notes. Calls run without asking (--approve auto): nobody is there to answer. Each task
has a check of its outcome a user would make: the answer's text (a number, a weekday, a word from a
file), or the state it left (a note in the SQLite notebook, a file under the root, a secret outside
the root that must not appear).

Per task it records success, whether the model called any tool, whether it called one of the
tools the task needs, unusable calls, steps and seconds. Settings: --require-tool off/on (the first
turn must call a tool) and constrained or free decoding of calls. This measures the model; a small
model failing a task is a result, not a bug.

Writes benchmarks/results/agent_tasks.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json

DATA = Path(__file__).parent / "data" / "agent_tasks.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model reference (default: the embedded model)")
    parser.add_argument("--backend", default="gguf", help="torch, gguf or openai (gguf)")
    parser.add_argument("--base-url", default=None, help="the openai backend's server")
    parser.add_argument("--dialect", choices=("hermes", "minicpm"), default=None,
                        help="tool-call dialect (default: from the chat template)")
    parser.add_argument("--require-tool", default="off,on", help="comma-separated: off, on (off,on)")
    parser.add_argument("--decoding", default="constrained", help="comma-separated: constrained, free (constrained)")
    parser.add_argument("--tool-limit", default="all", help="comma-separated: all, or N tools closest to the task (all)")
    parser.add_argument("--max-steps", type=int, default=4, help="model turns per task (4)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per model turn (256)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--tasks", default=None, help="comma-separated task ids to run")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model")
    parser.add_argument("--out", type=Path, default=RESULTS / "agent_tasks.json")


def seed_folder(scratch: Path, seed: dict[str, Any]) -> Path:
    root = scratch / "root"
    for rel, text in seed["files"].items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    for rel, text in seed["outside_root"].items():
        (scratch / rel).write_text(text, encoding="utf-8")
    return root


def seed_notes(sessions, notes: list[dict[str, str]]) -> dict[str, int]:
    ids = {}
    for note in notes:
        result = sessions.call("add_note", note)
        if result.is_error:
            raise RuntimeError(f"seeding the notebook failed: {result.text}")
        ids[note["title"]] = json.loads(result.text)["id"]
    return ids


def task_text(text: str, ids: dict[str, int], today: str) -> str:
    text = text.replace("{today}", today)
    return re.sub(r"\{id:([^}]+)\}", lambda m: str(ids[m.group(1)]), text)


def check_outcome(check: dict[str, Any], answer: str, notes_db: Path, root: Path, today: str) -> tuple[bool, str]:
    """Did the task's outcome happen? (passed, what was looked at)"""
    lowered = answer.lower()
    if "answer_contains" in check:
        wanted = [w.replace("{today}", today).lower() for w in check["answer_contains"]]
        return any(w in lowered for w in wanted), f"answer contains one of {wanted}"
    if "answer_lacks" in check:
        return not any(w.lower() in lowered for w in check["answer_lacks"]), f"answer lacks {check['answer_lacks']}"
    with sqlite3.connect(notes_db) as db:
        rows = db.execute("SELECT title, body FROM notes").fetchall()
    if "note" in check:
        title, needle = check["note"]["title"].lower(), check["note"]["body_contains"].lower()
        hit = any(t.strip().lower() == title and needle in b.lower() for t, b in rows)
        return hit, f"a note titled {title!r} whose body contains {needle!r}"
    if "note_absent" in check:
        return all(t != check["note_absent"] for t, _ in rows), f"no note titled {check['note_absent']!r}"
    if "file" in check:
        path = root / check["file"]["path"]
        ok = path.is_file() and check["file"]["contains"].lower() in path.read_text(encoding="utf-8").lower()
        return ok, f"{check['file']['path']} contains {check['file']['contains']!r}"
    raise ValueError(f"unknown check {check}")


def run_task(agent, task: dict[str, Any], text: str) -> dict[str, Any]:
    from agents.tool_agent import events as ev

    began = time.perf_counter()
    calls, invalid, answer, steps, errors = [], 0, "", 0, 0
    for event in ev.run(agent, uuid.uuid4().hex, task=text):
        if isinstance(event, ev.ToolCallEvent):
            calls.append({"name": event.name, "args": event.args})
        elif isinstance(event, ev.InvalidCallEvent):
            invalid += 1
        elif isinstance(event, ev.ToolResultEvent):
            errors += event.is_error
        elif isinstance(event, ev.AnswerEvent):
            answer, steps = event.text, event.steps
    names = [c["name"] for c in calls]
    return {"id": task["id"], "task": text, "answer": answer[:400], "calls": calls[:6], "called": bool(calls),
            "right_tool": any(n in task["tools"] for n in names), "unusable_calls": invalid, "tool_errors": errors,
            "steps": steps, "seconds": round(time.perf_counter() - began, 2)}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    share = lambda key: round(sum(bool(r[key]) for r in records) / n, 3) if n else 0.0  # noqa: E731
    return {"tasks": n, "success": share("success"), "called_a_tool": share("called"),
            "right_tool": share("right_tool"), "with_unusable_calls": share("unusable_calls"),
            "mean_steps": round(sum(r["steps"] for r in records) / n, 2) if n else 0.0,
            "mean_seconds": round(sum(r["seconds"] for r in records) / n, 1) if n else 0.0}


def markdown_table(settings: list[dict[str, Any]]) -> str:
    lines = ["| require tool | tool limit | decoding | tasks | success | called a tool | right tool | unusable calls | steps | s/task |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in settings:
        m = s["summary"]
        lines.append(f"| {s['require_tool']} | {s.get('tool_limit', 'all')} | {s['decoding']} | {m['tasks']} | {m['success']:.0%} | "
                     f"{m['called_a_tool']:.0%} | {m['right_tool']:.0%} | {m['with_unusable_calls']:.0%} | "
                     f"{m['mean_steps']} | {m['mean_seconds']} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from agents.chat_model import ChatMiniCPM
    from agents.tool_agent import build_tool_agent
    from langgraph.checkpoint.memory import InMemorySaver
    from mcp_tools.config import builtin_servers
    from mcp_tools.sessions import McpSessions
    from runtime.backends.base import load_backend

    data = json.loads(DATA.read_text(encoding="utf-8"))
    tasks = data["tasks"]
    if args.tasks:
        wanted = set(args.tasks.split(","))
        tasks = [t for t in tasks if t["id"] in wanted]
    tasks = tasks[: args.limit] if args.limit else tasks
    requires = [{"off": False, "on": True}[v] for v in args.require_tool.split(",")]
    decodings = args.decoding.split(",")
    limits = [None if v == "all" else int(v) for v in args.tool_limit.split(",")]
    backend = load_backend(args.backend, args.model, threads=args.threads, base_url=args.base_url)
    today = datetime.now(UTC).date().isoformat()
    settings = []
    with tempfile.TemporaryDirectory(prefix="minicpm-agent-bench-") as scratch_name:
        scratch = Path(scratch_name)
        previous_home = os.environ.get("MINICPM_HOME")
        os.environ["MINICPM_HOME"] = str(scratch / "home")  # the notes server's notebook lives here
        try:
            root = seed_folder(scratch, data["seed"])
            with McpSessions(builtin_servers(root)) as sessions:
                if any(sessions.status().values()):
                    raise RuntimeError(f"a built-in server did not start: {sessions.status()}")
                ids = seed_notes(sessions, data["seed"]["notes"])
                with Progress() as progress:
                    total = len(tasks) * len(requires) * len(decodings) * len(limits)
                    bar = progress.add_task("agent tasks", total=total)
                    for decoding, require, limit in itertools.product(decodings, requires, limits):
                        model = ChatMiniCPM(backend=backend, temperature=0.0, max_tokens=args.max_tokens,
                                            dialect=args.dialect, constrained=decoding == "constrained")
                        agent = build_tool_agent(model, sessions, approve="auto", max_steps=args.max_steps,
                                                 require_tool=require, tool_limit=limit,
                                                 checkpointer=InMemorySaver())
                        records = []
                        for task in tasks:
                            text = task_text(task["task"], ids, today)
                            record = run_task(agent, task, text)
                            ok, looked_at = check_outcome(task["check"], record["answer"],
                                                          scratch / "home" / "notes.sqlite", root, today)
                            record.update(success=ok, check=looked_at)
                            records.append(record)
                            progress.advance(bar)
                        settings.append({"require_tool": "on" if require else "off", "decoding": decoding,
                                         "tool_limit": limit or "all",
                                         "summary": summarize(records), "tasks": records})
        finally:
            if previous_home is None:
                os.environ.pop("MINICPM_HOME", None)
            else:
                os.environ["MINICPM_HOME"] = previous_home
    result = {
        "benchmark": "agent_tasks",
        "command": bench_command("agent_tasks"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": backend.model_label, "backend": backend.name, "dialect": args.dialect or "from the chat template",
        "max_steps": args.max_steps, "max_tokens": args.max_tokens,
        "commit": source_version("runtime", "mcp_tools", "agents", "benchmarks"),
        "machine": machine(),
        "settings": settings,
    }
    write_json(args.out, result)
    print(markdown_table(settings))
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
