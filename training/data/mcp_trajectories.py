"""MCP trajectories in MiniCPM4-MCP's format, from the built-in servers' real schemas and executions.

    python -m training.data.mcp_trajectories --out training/data/mcp [--variants 2]

Each trajectory is what the model should do for one request (upstream-apps.md section 2.1):

    user request
    assistant  <|thought_start|> why this tool <|thought_end|> <|tool_call_start|> ```python call(...)``` <|tool_call_end|>
    tool       the server's real result
    ... (multi-step requests repeat the two turns above)
    assistant  <|thought_start|> ... <|thought_end|> The answer is: <what the result says>

The requests, their calls and the fixture they run against are benchmarks/build_mcp_eval.py's
(templated requests with literal values, every call schema-checked and executed against the real
server over a fresh copy of the fixture); this builder keeps the final result too and writes the
whole trajectory. Split by tool: no trajectory in train.jsonl calls a tool in HELD_OUT (not even
as an earlier step of a multi-step request: those requests are left out; the tool listings still
show every tool of the server, as at run time), and
heldout.jsonl holds their samples in mcp_eval's format (benchmarks/mcp_eval.py scores them), so
the held-out numbers measure calling tools the model was never trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "mcp"
# One tool per server, never trained on; between them they take every argument kind the servers have
# (paths and patterns, numbers with unit symbols, two datetimes, free-text queries).
HELD_OUT = {"files": "search_text", "calc": "convert_units", "clock": "time_between", "notes": "search_notes",
            "papers": "search_papers"}
THOUGHT_START, THOUGHT_END = "<|thought_start|>", "<|thought_end|>"
ANSWER_CHARS = 400


def first_sentence(description: str) -> str:
    text = " ".join(description.split())
    cut = text.find(". ")
    text = text[: cut if cut > 0 else len(text)].rstrip(".")
    return text[:1].lower() + text[1:]


def call_thought(tool: dict[str, Any], step: int) -> str:
    fn = tool["function"]
    lead = "The earlier result gives what the next step needs" if step else "The request needs a tool"
    return f"{THOUGHT_START}\n{lead}: {fn['name']} can {first_sentence(fn.get('description') or fn['name'])}.\n{THOUGHT_END}"


def summarize_result(result: str) -> str:
    """A short answer that states what the tool returned: the top-level fields of a JSON result
    (lists by their size and first items), else the text itself, clipped."""
    try:
        value = json.loads(result)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        if set(value) == {"result"}:  # FastMCP wraps a bare return value
            value = value["result"]
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if isinstance(item, list):
                shown = ", ".join(json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x for x in item[:3])
                parts.append(f"{key}: {len(item)} item(s){': ' + shown if shown else ''}")
            elif isinstance(item, dict):
                parts.append(f"{key}: {json.dumps(item, ensure_ascii=False)}")
            elif item is not None:
                parts.append(f"{key}: {item}")
        text = "; ".join(parts)
    elif isinstance(value, list):
        text = f"{len(value)} item(s): " + ", ".join(json.dumps(x, ensure_ascii=False) for x in value[:3])
    else:
        text = result.strip() if value is None else str(value)
    return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 3].rstrip() + "..."


def trajectory(case, tools: list[dict[str, Any]], results: list[str], system: str | None) -> list[dict[str, Any]]:
    """The whole conversation for one case: every call (earlier steps and the expected one), each
    with its real result, then the final answer."""
    by_name = {t["function"]["name"]: t for t in tools}
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": case.query})
    calls = [*case.history, (case.tool, case.arguments)]
    for step, ((tool, arguments), result) in enumerate(zip(calls, results, strict=True)):
        call_id = f"call_{step + 1}"
        messages.append({"role": "assistant", "content": call_thought(by_name[tool], step), "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": tool, "arguments": json.dumps(arguments, ensure_ascii=False)}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    answer = (f"{THOUGHT_START}\nThe {case.tool} result answers the request.\n{THOUGHT_END}\n"
              f"The answer is: {summarize_result(results[-1])}")
    messages.append({"role": "assistant", "content": answer})
    return messages


async def build(variants: int = 2, log=print) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train trajectories, held-out samples). variants: how many system-prompt variants of each
    training request (build_mcp_eval.SYSTEM_PROMPTS, none included)."""
    from benchmarks.build_mcp_eval import SYSTEM_PROMPTS, TEMPLATES, execute_case, list_tools, make_fixture, messages_for

    systems = list(dict.fromkeys(SYSTEM_PROMPTS))  # None and the distinct prompts, in order
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mcp_train_") as tmp:
        base = Path(tmp) / "fixture"
        make_fixture(base)
        for server, make_cases in TEMPLATES.items():
            tools = await list_tools(server, base)
            for n, case in enumerate(make_cases()):
                if any(tool == HELD_OUT.get(server) for tool, _ in case.history):
                    continue  # a multi-step request whose earlier step calls a held-out tool would teach it
                results = await execute_case(server, base, case)
                sample_id = f"{server}-{case.tool}-{n:03d}"
                if case.tool == HELD_OUT.get(server):
                    heldout.append({"id": sample_id, "server": server, "tools": tools,
                                    "messages": messages_for(case, results[:-1], systems[n % len(systems)]),
                                    "expected": {"name": case.tool, "arguments": case.arguments}})
                    continue
                for v in range(variants):
                    system = systems[(n + v) % len(systems)]
                    train.append({"id": f"{sample_id}-v{v}", "server": server, "tools": tools,
                                  "messages": trajectory(case, tools, results, system)})
            log(f"{server}: {sum(s['server'] == server for s in train)} train, "
                f"{sum(s['server'] == server for s in heldout)} held out ({HELD_OUT.get(server, 'no tool')})")
    return train, heldout


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from runtime.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows))


def read_jsonl(path: Path, what: str, field: str = "messages", kind: type = list) -> list[dict[str, Any]]:
    """The objects of a JSONL file, each required to hold `field` of type `kind` (a conversation's
    messages list by default; the Eagle trainer reads {"text": str})."""
    from training.batches import TrainingDataError

    if not Path(path).is_file():
        raise TrainingDataError(f"{path} does not exist; build the {what} first")
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), kind):
            noun = {list: "list", str: "string"}.get(kind, kind.__name__)
            raise TrainingDataError(f'{path}:{n}: expected an object with a "{field}" {noun}')
        rows.append(row)
    if not rows:
        raise TrainingDataError(f"{path} holds no samples")
    return rows


def main(argv: list[str] | None = None) -> int:
    import anyio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for train.jsonl and heldout.jsonl")
    parser.add_argument("--variants", type=int, default=2, help="system-prompt variants per training request")
    args = parser.parse_args(argv)
    if args.variants < 1:
        parser.error("--variants must be at least 1")
    train, heldout = anyio.run(build, args.variants, lambda m: print(m, file=sys.stderr))
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "heldout.jsonl", heldout)
    print(f"{len(train)} training trajectories, {len(heldout)} held-out samples -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
