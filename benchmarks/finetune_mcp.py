"""The MCP LoRA fine-tune of the embedded model on tools it never trained on: func / param / value before and after.

    minicpm bench finetune_mcp [--adapter training/runs/smollm2-mcp/adapter]

The held-out split (training/data/mcp/heldout.jsonl, built by training/data/mcp_trajectories.py)
holds the samples of the tools no training trajectory calls (one per server). Every sample is
asked greedily, unconstrained (the model writes the call freely; the runtime only parses it), at
tool_choice auto, in MiniCPM4-MCP's dialect, and scored with benchmarks/mcp_eval.py's metric.
Settings, each over the same samples: the base model and the base model with the adapter, on the
torch runtime (the weights the fine-tune trained, dequantized from Q4_1) and on llama.cpp (the Q4_1
GGUF with the adapter as a GGUF LoRA: what `minicpm chat --adapter` and `minicpm agent --adapter`
run by default). Writes benchmarks/results/finetune_mcp.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json

HELDOUT = Path(__file__).resolve().parent.parent / "training" / "data" / "mcp" / "heldout.jsonl"
SHIPPED = "smollm2-mcp"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default=SHIPPED, help=f"the adapter to score (default: the shipped {SHIPPED})")
    parser.add_argument("--data", type=Path, default=HELDOUT, help="held-out samples (default: the MCP held-out split)")
    parser.add_argument("--backends", default="torch,gguf", help="comma-separated: torch, gguf (default both)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only N samples, spread over the servers")
    parser.add_argument("--max-tokens", type=int, default=160, metavar="N", help="token budget per reply (160)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "finetune_mcp.json", help="where to write the JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from benchmarks.mcp_eval import Record, ask, load_samples, markdown_table, percent, score_call, spread, summarize
    from runtime.backends.base import load_backend

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"torch", "gguf"}:
        raise SystemExit("bench finetune_mcp: --backends takes torch and/or gguf")
    samples = spread(load_samples(args.data), args.limit)
    commit = source_version("runtime", "training", "benchmarks")
    started = time.perf_counter()
    rows, replies = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=True) as progress:
        for backend_name in backends:
            for adapter in (None, args.adapter):
                backend = load_backend(backend_name, "default", context_length=4096, threads=args.threads,
                                       adapter=adapter)
                label = f"{backend_name} {'+ ' + Path(adapter).name if adapter else 'base'}"
                task = progress.add_task(label, total=len(samples))
                records, seconds = [], 0.0
                for sample in samples:
                    began = time.perf_counter()
                    reply = ask(backend, sample, False, "auto", "minicpm", args.max_tokens)
                    seconds += time.perf_counter() - began
                    name, arguments = reply.call if reply.call else (None, None)
                    records.append(Record(sample, reply, score_call(sample.expected, name, arguments)))
                    progress.advance(task)
                    replies.append({"setting": label, "id": sample.id, "func": records[-1].score.func,
                                    "param": records[-1].score.param, "value": records[-1].score.value,
                                    "text": reply.text[:300]})
                row = summarize(False, "auto", records, seconds)
                row["setting"], row["backend"], row["adapter"] = label, backend_name, adapter
                rows.append(row)
                a = row["average"]
                print(f"{label}: func {percent(a['func'])} param {percent(a['param'])} value {percent(a['value'])} "
                      f"called {percent(a['called'])} ({row['mean_seconds']} s/reply)", file=sys.stderr)
                if hasattr(backend, "close"):
                    backend.close()
    result = {
        "benchmark": "finetune_mcp",
        "command": bench_command("finetune_mcp"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": machine(),
        "settings": {"data": str(args.data.name), "samples": len(samples), "dialect": "minicpm", "constrained": False,
                     "tool_choice": "auto", "temperature": 0.0, "max_tokens": args.max_tokens,
                     "held_out_tools": sorted({s.expected["name"] for s in samples}),
                     "wall_seconds": round(time.perf_counter() - started, 1)},
        "results": rows,
        "replies": replies,
    }
    for row in rows:
        print(f"\n{row['setting']}\n" + markdown_table([row]))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
