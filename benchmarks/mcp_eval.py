"""MiniCPM4-MCP's tool-call metrics (func / param / value) on tool calls over the built-in MCP servers.

The scoring follows the MiniCPM4 report (Table 8) and its demo's eval_scripts.py, after ToolLLM
(see /work/shared/reference/upstream-apps.md section 2.6). For each sample of the set the model
writes one reply, greedily (temperature 0), offered every tool of the sample's server; the reply's
FIRST tool call is compared with the expected call:

- func: the call names the expected tool;
- param: func, and the set of argument names equals the expected set exactly (a default the request
  did not ask for, or a missing argument, fails it);
- value: param, and every expected value equals the predicted one after normalization on both sides
  (numeric strings become numbers, "true"/"false" booleans, other strings are stripped and
  lower-cased; lists and objects element by element).
All three share the total sample count as denominator, so they are nested: func >= param >= value.
A multi-step sample gives the earlier calls and their real results in its messages; only the next
call is scored. "Average" is sample-weighted over the servers.

Also reported: called (share of replies with at least one tool call the runtime accepted) and
rejected_calls (replies whose call attempt the runtime rejected: unreadable, cut off by max_tokens,
or against its tool's schema, i.e. the final event's tool_call_error is set). Only accepted calls
(the event's tool_calls) are scored; a reply whose only call was rejected scores zero.

The data (benchmarks/data/mcp_eval.jsonl) is made by benchmarks/build_mcp_eval.py from the servers'
real tool lists; every expected call in it was executed against its server when it was built.
By default each sample runs twice, with constrained tool calls on and off (--constrained), at
tool_choice "auto" (--tool-choice required forces a call). Writes benchmarks/results/mcp_eval.json
(or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, machine, script_main, source_version, write_json

DATA = Path(__file__).parent / "data" / "mcp_eval.jsonl"
EXAMPLES = 4  # failures kept per setting
SNIPPET = 300  # characters of a reply's text kept in a failure example
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DATA, help="samples, one JSON object a line (default: the shipped set)")
    parser.add_argument("--model", default="default", help="model reference (default: the embedded model)")
    parser.add_argument("--backend", default="gguf", choices=("gguf", "torch", "openai", "auto"),
                        help="backend (default gguf, for the embedded model)")
    parser.add_argument("--base-url", default=None, help="the openai backend's server (default $MINICPM_BASE_URL)")
    parser.add_argument("--dialect", default=None, choices=("hermes", "minicpm"),
                        help="tool-call dialect on a local backend (default: from the chat template)")
    parser.add_argument("--constrained", default="both", choices=("on", "off", "both"),
                        help="write calls under their JSON schemas: on, off or both (default both; one run on openai)")
    parser.add_argument("--tool-choice", default="auto", choices=("auto", "required"),
                        help="auto: the model decides whether to call (as upstream); required: a call is forced (default auto)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only N samples, spread evenly over the set so every server keeps its share")
    parser.add_argument("--max-tokens", type=int, default=128, metavar="N", help="token budget per reply (128)")
    parser.add_argument("--ctx", type=int, default=4096, metavar="N", help="context length (4096)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads of a local backend")
    parser.add_argument("--out", type=Path, default=RESULTS / "mcp_eval.json", help="where to write the JSON")


# ---- the metric ---------------------------------------------------------------------------------

def normalize(value: Any) -> Any:
    """A value as upstream compares it: numeric strings -> numbers, "true"/"false" -> booleans,
    other strings stripped and lower-cased; lists and objects element by element."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "false"):
            return text == "true"
        if NUMBER.fullmatch(text):
            number = float(text)
            return int(number) if number.is_integer() and abs(number) < 2**53 else number
        return text
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items()}
    return value


def same_value(expected: Any, predicted: Any) -> bool:
    """Equal after normalize(): numbers by value (12 == 12.0), booleans only to booleans."""
    a, b = normalize(expected), normalize(predicted)
    return _equal(a, b)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class CallScore:
    func: bool
    param: bool  # counted only if func
    value: bool  # counted only if param


def score_call(expected: dict[str, Any], name: str | None, arguments: dict[str, Any] | None) -> CallScore:
    """Upstream's nested metrics for one predicted call (name None: the reply made no call)."""
    func = name is not None and name == expected["name"]
    wanted = expected.get("arguments") or {}
    given = arguments or {}
    param = func and set(given) == set(wanted)
    value = param and all(same_value(v, given[k]) for k, v in wanted.items())
    return CallScore(func, param, value)


# ---- the data -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    id: str
    server: str
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    expected: dict[str, Any]

    @property
    def multi_step(self) -> bool:
        return any(m.get("role") == "tool" for m in self.messages)


def load_samples(path: Path) -> list[Sample]:
    """The samples of a JSONL file; SystemExit naming the line when one is malformed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SystemExit(f"bench mcp_eval: cannot read --data {path}: {exc.strerror or exc}") from None
    samples, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
            sample = Sample(str(raw["id"]), str(raw["server"]), list(raw["tools"]), list(raw["messages"]),
                            dict(raw["expected"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"bench mcp_eval: {where} is not a sample with id, server, tools, messages and "
                             f"expected ({type(exc).__name__}: {exc})") from None
        if "name" not in sample.expected or not isinstance(sample.expected.get("arguments", {}), dict):
            raise SystemExit(f"bench mcp_eval: {where}: expected must be {{'name': ..., 'arguments': {{...}}}}")
        if sample.id in seen:
            raise SystemExit(f"bench mcp_eval: {where}: the id {sample.id!r} appears twice")
        seen.add(sample.id)
        samples.append(sample)
    if not samples:
        raise SystemExit(f"bench mcp_eval: {path} has no samples")
    return samples


def system_text(sample: Sample) -> str:
    return next((str(m.get("content") or "") for m in sample.messages if m.get("role") == "system"), "")


def spread(samples: list[Sample], limit: int | None) -> list[Sample]:
    """limit samples taken at even steps through the set, each from the middle of its step (all of
    them when limit is None or larger). The set is grouped by server, so every server whose block
    is at least one step long keeps a sample."""
    if limit is None or limit >= len(samples):
        return samples
    return [samples[(2 * i + 1) * len(samples) // (2 * limit)] for i in range(limit)]


# ---- running ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    text: str  # what the model wrote (call markup included on a local backend)
    call: tuple[str, dict[str, Any]] | None  # the first accepted call
    calls: int  # accepted calls
    error: str | None  # the final event's tool_call_error
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def ask(backend, sample: Sample, constrained: bool | None, tool_choice: str, dialect: str | None,
        max_tokens: int) -> Reply:
    """One greedy reply to the sample's messages, with the sample's tools offered."""
    from runtime.events import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0)
    started = time.perf_counter()
    events = list(backend.chat(sample.messages, params, tools=sample.tools, tool_choice=tool_choice,
                               dialect=dialect, constrained=bool(constrained)))
    seconds = time.perf_counter() - started
    final = events[-1]
    stop_ids = set(backend.stop_token_ids)
    ids = [e.token for e in events if e.token is not None and e.token not in stop_ids]
    text = backend.decode(ids) if ids else "".join(e.text for e in events)
    first = final.tool_calls[0] if final.tool_calls else None
    return Reply(text, (first.name, dict(first.arguments)) if first else None, len(final.tool_calls),
                 final.tool_call_error, final.finish_reason, final.prompt_tokens, final.completion_tokens, seconds)


@dataclass
class Record:
    sample: Sample
    reply: Reply
    score: CallScore


COUNTED = ("func", "param", "value", "called", "rejected_calls")


def counts_of(records: list[Record]) -> dict[str, int]:
    return {"func": sum(r.score.func for r in records), "param": sum(r.score.param for r in records),
            "value": sum(r.score.value for r in records), "called": sum(r.reply.call is not None for r in records),
            "rejected_calls": sum(r.reply.error is not None for r in records)}


def shares(counts: dict[str, int], n: int) -> dict[str, float | None]:
    return {name: round(counts[name] / n, 4) if n else None for name in COUNTED}


def failure_kind(record: Record) -> str:
    if record.reply.call is None:
        return "rejected call" if record.reply.error else "no call"
    if not record.score.func:
        return "wrong tool"
    if not record.score.param:
        return "wrong argument names"
    return "wrong values"


def examples(records: list[Record]) -> list[dict[str, Any]]:
    """A few failures, one of each kind first (no call, rejected, wrong tool / names / values)."""
    failed = [r for r in records if not r.score.value]
    picked, kinds = [], set()
    for r in failed:
        if failure_kind(r) not in kinds:
            kinds.add(failure_kind(r))
            picked.append(r)
    picked += [r for r in failed if r not in picked][: max(0, EXAMPLES - len(picked))]
    return [{"id": r.sample.id, "kind": failure_kind(r), "expected": r.sample.expected,
             "predicted": {"name": r.reply.call[0], "arguments": r.reply.call[1]} if r.reply.call else None,
             "error": r.reply.error, "text": r.reply.text[:SNIPPET]} for r in picked[:EXAMPLES]]


def summarize(constrained: bool | None, tool_choice: str, records: list[Record], seconds: float) -> dict[str, Any]:
    """Overall (sample-weighted) and per-server metrics of one setting, its timings, a few failures."""
    n = len(records)
    servers: dict[str, list[Record]] = {}
    for r in records:
        servers.setdefault(r.sample.server, []).append(r)
    overall = counts_of(records)
    multi = [r for r in records if r.sample.multi_step]
    return {
        "constrained": constrained,
        "tool_choice": tool_choice,
        "samples": n,
        "average": shares(overall, n),
        "counts": overall,
        "per_server": {name: {"samples": len(rs), **shares(counts_of(rs), len(rs))} for name, rs in servers.items()},
        "multi_step": {"samples": len(multi), **shares(counts_of(multi), len(multi))},
        "generation_seconds": round(seconds, 1),  # this setting's replies, summed
        "mean_seconds": round(sum(r.reply.seconds for r in records) / n, 2) if n else None,
        "mean_prompt_tokens": round(sum(r.reply.prompt_tokens for r in records) / n, 1) if n else None,
        "mean_completion_tokens": round(sum(r.reply.completion_tokens for r in records) / n, 1) if n else None,
        "example_failures": examples(records),
    }


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}"


def markdown_table(rows: Iterable[dict[str, Any]]) -> str:
    head = ["constrained", "tool_choice", "server", "n", "func", "param", "value", "called", "rejected"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        label = {True: "on", False: "off", None: "n/a"}[row["constrained"]]
        entries = [*row["per_server"].items(), ("**average**", {"samples": row["samples"], **row["average"]})]
        for server, m in entries:
            lines.append("| " + " | ".join(map(str, [
                label, row["tool_choice"], server, m["samples"], percent(m["func"]), percent(m["param"]),
                percent(m["value"]), percent(m["called"]), percent(m["rejected_calls"])])) + " |")
    return "\n".join(lines)


def command_line() -> str:
    """How this run was started, as a user would type it again."""
    if Path(sys.argv[0]).name == "mcp_eval.py":  # python -m benchmarks.mcp_eval
        return shlex.join(["python", "-m", "benchmarks.mcp_eval", *sys.argv[1:]])
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from runtime.backends.base import load_backend

    if args.limit is not None and args.limit < 1:
        raise SystemExit("bench mcp_eval: --limit must be at least 1")
    if args.max_tokens < 1:
        raise SystemExit("bench mcp_eval: --max-tokens must be at least 1")
    data = load_samples(args.data)
    chosen = spread(data, args.limit)
    commit = source_version("runtime", "mcp_tools", "benchmarks")  # at the start: the code this run imports

    started = time.perf_counter()
    backend = load_backend(args.backend, args.model, context_length=args.ctx, threads=args.threads,
                           base_url=args.base_url)
    load_seconds = time.perf_counter() - started
    if backend.name == "openai":
        dialect, settings = "openai", [None]  # the server parses calls; constraining is its business
    else:
        from runtime.tool_calls.local import choose_dialect

        dialect = choose_dialect(args.dialect, backend.chat_template)[0].name
        settings = {"on": [True], "off": [False], "both": [True, False]}[args.constrained]

    # Samples run grouped by server and system message, each once per setting in a row: the gguf
    # backend keeps the KV cache of the prefix a prompt shares with the last one (the tool listing),
    # so most prompts prefill only their last few dozen tokens. Results are reported in file order.
    order = sorted(range(len(chosen)), key=lambda i: (chosen[i].server, system_text(chosen[i]), i))
    replies_by: dict[bool | None, dict[int, Reply]] = {c: {} for c in settings}
    seconds_by: dict[bool | None, float] = dict.fromkeys(settings, 0.0)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task(f"mcp_eval {dialect} {args.tool_choice}", total=len(chosen) * len(settings))
        for i in order:
            for constrained in settings:
                began = time.perf_counter()
                replies_by[constrained][i] = ask(backend, chosen[i], constrained, args.tool_choice, args.dialect,
                                                 args.max_tokens)
                seconds_by[constrained] += time.perf_counter() - began
                progress.advance(task)

    rows, replies = [], []
    for constrained in settings:
        records = []
        for i, sample in enumerate(chosen):
            reply = replies_by[constrained][i]
            name, arguments = reply.call if reply.call else (None, None)
            records.append(Record(sample, reply, score_call(sample.expected, name, arguments)))
        row = summarize(constrained, args.tool_choice, records, seconds_by[constrained])
        rows.append(row)
        replies += [{"id": r.sample.id, "constrained": constrained, **asdict(r.score),
                     "called": r.reply.call is not None, "rejected": r.reply.error is not None,
                     "predicted": (f"{r.reply.call[0]}({json.dumps(r.reply.call[1], ensure_ascii=False)})"[:200]
                                   if r.reply.call else None),
                     "calls": r.reply.calls, "finish_reason": r.reply.finish_reason,
                     "completion_tokens": r.reply.completion_tokens, "seconds": round(r.reply.seconds, 2)}
                    for r in records]
        a = row["average"]
        label = {True: "constrained", False: "free", None: "server-side"}[constrained]
        print(f"{dialect} tool_choice={args.tool_choice} {label}: func {percent(a['func'])} param {percent(a['param'])} "
              f"value {percent(a['value'])} called {percent(a['called'])} rejected {percent(a['rejected_calls'])} "
              f"({row['mean_seconds']} s/reply, {row['samples']} samples)", file=sys.stderr)

    data_label = str(args.data.relative_to(Path.cwd()) if args.data.is_relative_to(Path.cwd()) else args.data)
    result = {
        "benchmark": "mcp_eval",
        "command": command_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "model": backend.model_label,
        "backend": backend.name,
        "dialect": dialect,
        "machine": machine(),
        "settings": {"tool_choice": args.tool_choice, "temperature": 0.0, "max_tokens": args.max_tokens,
                     "context_length": args.ctx, "threads": args.threads, "data": data_label,
                     "samples": len(chosen), "samples_in_data": len(data), "limit": args.limit,
                     "metrics": "func / param / value nested over all samples (MiniCPM4 report Table 8); called: "
                                "share of replies with an accepted call; rejected_calls: replies with a "
                                "tool_call_error (the runtime rejected the attempt); shares in [0, 1]",
                     "data_about": "built by benchmarks/build_mcp_eval.py from the built-in servers' real tool "
                                   "lists; every expected call was executed against its server",
                     "timing": "each sample runs once per setting back to back, grouped by server and system "
                               "message: a prompt's first reply pays its prefill beyond the cached prefix (the "
                               "tool listing), the next settings reuse it; mean_seconds is per reply",
                     "load_seconds": round(load_seconds, 1),
                     "wall_seconds": round(time.perf_counter() - started, 1)},
        "results": rows,
        "replies": replies,
    }
    print(markdown_table(rows))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
