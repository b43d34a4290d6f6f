"""Well-formed, schema-valid tool calls from the embedded model, with and without constrained decoding.

Constrained tool calls (runtime/tool_calls/guard.py) write a call's name and arguments under its
tool's JSON schema once the model opens a call block. This benchmark measures what that buys: for
each prompt of benchmarks/data/tool_call_prompts.json the model must call a tool
(tool_choice="required", so the reply starts inside a call block), once constrained and once not,
per dialect (hermes, minicpm) and backend (gguf, torch). Each reply is scored from the text the
model wrote and the final GenerationEvent (score_reply):

- well-formed: the first call block reads as at least one call, with no parse error;
- schema-valid: well-formed, and every call the reply wrote names an offered tool and its arguments
  pass jsonschema (tools.argument_errors). The dialect parser drops invalid calls from tool_calls
  and reports them in tool_call_error, so the calls are read back from the text, not only from
  tool_calls; the event must agree with that reading (runtime_disagrees counts where not);
- right tool: the first call names the tool the prompt expects;
- budget failure: not well-formed only because max_tokens ran out: the first block was still open
  and its text so far is a valid beginning of a call under the schemas (the dialect's call
  grammar). The runtime's "cut off" message alone does not tell: it is also given when the model
  ends its reply inside a block, and when what it wrote could never have become a call;
- grammar escape: a constrained reply with a block the call grammar does not accept (the guard gave
  up, finding no allowed token, and let the model go on unconstrained), or a block left open
  before the budget ran out. The guard should make both impossible; the event does not say when
  it gave up, so the text is checked against the grammar here.

tool_choice="auto" is run too, constrained, for context: the share of prompts where the model
starts a call at all (greedy, the text before the first start marker is the same constrained or not).

The tool schemas were written before the built-in MCP servers existed and mirror them loosely. They
stay fixed in the data file so that this benchmark's numbers compare across commits, whatever the
servers' docstrings become; benchmarks/mcp_eval.py scores calls against the servers' real schemas.

Writes benchmarks/results/tool_calls.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, machine, script_main, source_version, write_json

DATA = Path(__file__).parent / "data" / "tool_call_prompts.json"
EXAMPLES = 3  # failures kept per setting
SNIPPET = 200  # characters of a failure's text and error kept


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model reference (default: the embedded model)")
    parser.add_argument("--backends", default="gguf,torch", help="comma-separated: gguf, torch (gguf,torch)")
    parser.add_argument("--dialects", default="hermes,minicpm", help="comma-separated: hermes, minicpm (hermes,minicpm)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts")
    parser.add_argument("--torch-limit", type=int, default=None, metavar="N",
                        help="only the first N prompts on the torch backend, which is slower (default: --limit)")
    parser.add_argument("--max-tokens", type=int, default=128, metavar="N", help="token budget per reply (128)")
    parser.add_argument("--sampled", type=float, default=None, metavar="T",
                        help="also run tool_choice=required at temperature T (seed: the prompt's index)")
    parser.add_argument("--no-auto", action="store_true", help="skip the tool_choice=auto attempt rate")
    parser.add_argument("--ctx", type=int, default=2048, metavar="N", help="context length (2048)")
    parser.add_argument("--data", type=Path, default=DATA, help="tool schemas and prompts (JSON)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tool_calls.json", help="where to write the JSON")


# ---- prompts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    id: str
    servers: tuple[str, ...]  # every tool of these servers is offered
    kind: str  # simple | numbers | enum | optional | ambiguous
    text: str
    expected: str  # the tool a correct reply calls first


def load_prompts(path: Path = DATA) -> tuple[dict[str, list[dict[str, Any]]], list[Prompt]]:
    """The servers' tools (OpenAI shape, by server) and the prompts, checked against each other."""
    data = json.loads(path.read_text(encoding="utf-8"))
    servers = data["servers"]
    prompts = [Prompt(p["id"], tuple(p["servers"]), p["kind"], p["prompt"], p["expected"]) for p in data["prompts"]]
    for p in prompts:
        offered = [t["function"]["name"] for t in offered_tools(servers, p)]
        if p.expected not in offered:
            raise ValueError(f"{path}: prompt {p.id} expects {p.expected}, which its servers do not offer")
    return servers, prompts


def offered_tools(servers: dict[str, list[dict[str, Any]]], prompt: Prompt) -> list[dict[str, Any]]:
    return [tool for server in prompt.servers for tool in servers[server]]


# ---- scoring one reply --------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """What a model wrote and what the runtime made of it (the final GenerationEvent)."""

    text: str  # all generated text, a forced call's start marker (part of the prompt) included
    tool_calls: tuple = ()  # ToolCalls of the final event
    tool_call_error: str | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class Score:
    attempted: bool  # the reply opened a call block
    well_formed: bool
    schema_valid: bool
    right_tool: bool
    budget_failure: bool  # not well-formed only because max_tokens ended a first block that was on track
    hit_budget: bool  # the budget ran out inside a block (any block)
    grammar_escape: bool  # constrained, yet a block the call grammar does not accept (see the module docstring)
    runtime_disagrees: bool  # the event's calls or error differ from reading the text back
    calls: int  # calls read from the reply, valid or not
    first_call: str | None  # name(arguments) of the first call read
    problems: tuple[str, ...]  # parse and schema problems found by reading the text back


def call_blocks(text: str, start: str, end: str) -> list[tuple[str, bool]]:
    """The call blocks in text, as Dialect.parse splits them: (body, whether its end marker was written)."""
    blocks = []
    while (i := text.find(start)) >= 0:
        body = text[i + len(start) :]
        j = body.find(end)
        if j < 0:
            blocks.append((body, False))
            break
        blocks.append((body[:j], True))
        text = body[j + len(end) :]
    return blocks


def call_problems(call, tools: list) -> list[str]:
    """Why a call is not schema-valid: an unknown tool, or arguments that fail its JSON schema."""
    from runtime.tool_calls.tools import argument_errors

    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        return [f"no tool named {call.name!r}"]
    return [f"{call.name}: {p}" for p in argument_errors(tool, call.arguments)]


def score_reply(reply: Reply, dialect, tools: list, expected: str, max_tokens: int, constrained: bool) -> Score:
    """Score one reply (see the module docstring); dialect: a Dialect, tools: checked Tools."""
    from runtime.tool_calls.grammar import check
    from runtime.tool_calls.guard import judged

    blocks = call_blocks(reply.text, dialect.start_marker, dialect.end_marker)
    out_of_budget = reply.completion_tokens >= max_tokens
    grammar = dialect.call_grammar(tools)
    read = []  # per block: (calls, parse problems, schema problems)
    on_track = []  # per block: whether the call grammar accepts it (as a beginning, if still open)
    for body, closed in blocks:
        calls, parse_problems = dialect.parse_block(body, tools)
        if not closed and not body.strip():
            parse_problems = [*parse_problems, "a call block was opened but never written"]
        read.append((calls, parse_problems, [p for c in calls for p in call_problems(c, tools)]))
        on_track.append(check(grammar, judged(body + dialect.end_marker if closed else body)) is not None)

    first_calls, first_parse, _ = read[0] if read else ([], [], [])
    well_formed = bool(first_calls) and not first_parse
    all_calls = [c for calls, _, _ in read for c in calls]
    schema_problems = [p for _, _, bad in read for p in bad]
    problems = tuple(p for _, parse, bad in read for p in (*parse, *bad))

    escape = constrained and (not all(on_track) or (bool(blocks) and not blocks[-1][1] and not out_of_budget))

    def key(call) -> tuple[str, str]:
        return call.name, json.dumps(call.arguments, sort_keys=True)

    valid = sorted(key(c) for c in all_calls if not call_problems(c, tools))
    disagrees = valid != sorted(key(c) for c in reply.tool_calls) or bool(problems) != bool(reply.tool_call_error)
    first = first_calls[0] if first_calls else None
    return Score(
        attempted=bool(blocks),
        well_formed=well_formed,
        schema_valid=well_formed and not schema_problems,
        right_tool=well_formed and first.name == expected,
        budget_failure=not well_formed and bool(blocks) and not blocks[0][1] and out_of_budget and on_track[0],
        hit_budget=bool(blocks) and not blocks[-1][1] and out_of_budget,
        grammar_escape=escape,
        runtime_disagrees=disagrees,
        calls=len(all_calls),
        first_call=f"{first.name}({json.dumps(first.arguments, ensure_ascii=False)})" if first else None,
        problems=problems,
    )


# ---- aggregating --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    backend: str
    dialect: str
    tool_choice: str  # "required" or "auto"
    constrained: bool
    temperature: float


@dataclass
class Record:
    prompt: Prompt
    reply: Reply
    score: Score
    seconds: float


COUNTED = ("attempted", "well_formed", "schema_valid", "right_tool", "budget_failure", "hit_budget",
           "grammar_escape", "runtime_disagrees")


def summarize(setting: Setting, records: list[Record]) -> dict[str, Any]:
    """Counts and shares for one setting, mean tokens and seconds per reply, a few failures."""
    n = len(records)
    counts = {name: sum(getattr(r.score, name) for r in records) for name in COUNTED}
    failures = [r for r in records if not r.score.schema_valid and r.score.attempted]
    return {
        **asdict(setting),
        "prompts": n,
        "counts": counts,
        "shares": {name: round(c / n, 3) if n else None for name, c in counts.items()},
        "mean_completion_tokens": round(sum(r.reply.completion_tokens for r in records) / n, 1) if n else None,
        "mean_seconds": round(sum(r.seconds for r in records) / n, 2) if n else None,
        "mean_calls": round(sum(r.score.calls for r in records) / n, 2) if n else None,
        "example_failures": [
            {"prompt": r.prompt.id, "text": r.reply.text[:SNIPPET],
             "error": (r.reply.tool_call_error or "; ".join(r.score.problems))[:SNIPPET],
             "budget_failure": r.score.budget_failure}
            for r in failures[:EXAMPLES]
        ],
    }


def share_cell(row: dict[str, Any], name: str) -> str:
    count, n = row["counts"][name], row["prompts"]
    return f"{count / n:.0%} ({count})" if n else "-"


def markdown_table(rows: Iterable[dict[str, Any]]) -> str:
    head = ["backend", "dialect", "tool_choice", "constrained", "T", "n", "attempted", "well-formed", "schema-valid",
            "right tool", "budget failures", "tokens", "s/reply"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["backend"], row["dialect"], row["tool_choice"], "yes" if row["constrained"] else "no",
                 f"{row['temperature']:g}", row["prompts"],
                 *(share_cell(row, name) for name in ("attempted", "well_formed", "schema_valid", "right_tool")),
                 row["counts"]["budget_failure"], row["mean_completion_tokens"], row["mean_seconds"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


# ---- running ------------------------------------------------------------------------------------

def settings_for(backend: str, dialects: list[str], sampled: float | None, auto: bool) -> list[Setting]:
    out = []
    for dialect in dialects:
        for temperature in [0.0] + ([sampled] if sampled is not None else []):
            for constrained in (True, False):
                out.append(Setting(backend, dialect, "required", constrained, temperature))
        if auto:
            out.append(Setting(backend, dialect, "auto", True, 0.0))
    return out


def ask(backend, prompt: Prompt, tools: list[dict[str, Any]], setting: Setting, max_tokens: int,
        seed: int) -> tuple[Reply, float]:
    """One reply: its text rebuilt from the token ids the events carry (calls are held back from
    the text deltas), and the wall-clock seconds it took."""
    from runtime.events import SamplingParams
    from runtime.tool_calls.dialects import get_dialect

    params = SamplingParams(max_tokens=max_tokens, temperature=setting.temperature, seed=seed)
    t0 = time.perf_counter()
    events = list(backend.chat([{"role": "user", "content": prompt.text}], params, tools=tools,
                               tool_choice=setting.tool_choice, dialect=setting.dialect,
                               constrained=setting.constrained))
    seconds = time.perf_counter() - t0
    final = events[-1]
    stop_ids = set(backend.stop_token_ids)
    ids = [e.token for e in events if e.token is not None and e.token not in stop_ids]
    forced = get_dialect(setting.dialect).start_marker if setting.tool_choice == "required" else ""
    reply = Reply(forced + backend.decode(ids), final.tool_calls, final.tool_call_error, final.finish_reason,
                  final.completion_tokens)
    return reply, seconds


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from runtime.backends.base import load_backend
    from runtime.tool_calls.dialects import get_dialect
    from runtime.tool_calls.tools import check_tools

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    unknown = [b for b in backends if b not in ("gguf", "torch")] + [d for d in dialects if d not in ("hermes", "minicpm")]
    if unknown:
        raise SystemExit(f"bench tool_calls: unknown backend or dialect: {', '.join(unknown)}")
    servers, prompts = load_prompts(args.data)
    commit = source_version()  # at the start: the code this run imports
    limits = {b: args.torch_limit if b == "torch" and args.torch_limit is not None else args.limit for b in backends}
    plan = {b: (prompts[: limits[b]], settings_for(b, dialects, args.sampled, not args.no_auto)) for b in backends}
    total = sum(len(ps) * len(ss) for ps, ss in plan.values())

    rows, replies, labels = [], [], {}
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task("loading", total=total)
        for name, (chosen, settings) in plan.items():
            progress.update(task, description=f"loading {name}")
            backend = load_backend(name, args.model, context_length=args.ctx)
            labels[name] = backend.model_label
            for setting in settings:
                dialect = get_dialect(setting.dialect)
                progress.update(task, description=f"{name} {setting.dialect} {setting.tool_choice} "
                                f"{'constrained' if setting.constrained else 'free'} T={setting.temperature:g}")
                records = []
                for i, prompt in enumerate(chosen):
                    tools = offered_tools(servers, prompt)
                    reply, seconds = ask(backend, prompt, tools, setting, args.max_tokens, seed=i)
                    score = score_reply(reply, dialect, check_tools(tools), prompt.expected, args.max_tokens,
                                        setting.constrained)
                    records.append(Record(prompt, reply, score, seconds))
                    progress.advance(task)
                row = summarize(setting, records)
                rows.append(row)
                replies += [{**asdict(setting), "prompt": r.prompt.id, "kind": r.prompt.kind,
                             **{k: getattr(r.score, k) for k in COUNTED}, "calls": r.score.calls,
                             "first_call": (r.score.first_call or "")[:SNIPPET] or None,
                             "error": (r.reply.tool_call_error or "")[:SNIPPET] or None,
                             "completion_tokens": r.reply.completion_tokens, "seconds": round(r.seconds, 2)}
                            for r in records]
                s = row["shares"]
                progress.console.print(
                    f"{name} {setting.dialect} {setting.tool_choice} constrained={setting.constrained} "
                    f"T={setting.temperature:g}: attempted {s['attempted']:.0%} well-formed {s['well_formed']:.0%} "
                    f"schema-valid {s['schema_valid']:.0%} right tool {s['right_tool']:.0%} "
                    f"({row['mean_seconds']} s/reply)", highlight=False, soft_wrap=True)
            del backend

    result = {
        "benchmark": "tool_calls",
        "command": shlex.join(sys.argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "model": labels,
        "machine": machine(),
        "settings": {"max_tokens": args.max_tokens, "context_length": args.ctx, "dialects": dialects,
                     "prompts_per_backend": {b: len(ps) for b, (ps, _) in plan.items()},
                     "prompts_in_data": len(prompts), "sampled_temperature": args.sampled,
                     "data": str(args.data.relative_to(Path.cwd()) if args.data.is_relative_to(Path.cwd()) else args.data),
                     "schemas": "fixed in the data file, loosely mirroring the built-in MCP servers, so runs "
                                "compare across commits (benchmarks/mcp_eval.py uses the real schemas)",
                     "wall_seconds": round(time.perf_counter() - started, 1)},
        "results": rows,
        "replies": replies,
    }
    print(markdown_table(rows))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
