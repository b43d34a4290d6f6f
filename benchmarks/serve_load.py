"""A bounded load test of `minicpm serve`: N concurrent streaming clients on loopback.

For each setting (--parallel 1, then 2, and an overload run with a short queue) the script starts
`minicpm serve` as a subprocess on the embedded model, lets --clients clients each send
--requests streaming chat requests one after another (bounded by --max-tokens), and measures on
the client side: requests that completed and those that got an error (by kind: 503 queue full,
a broken stream, ...), completion tokens, throughput (tokens/s and requests/s over the wall time)
and the p50/p95 of latency and time to first token. Afterwards /health must answer with every
slot free and the queue empty: nothing crashed, nothing leaked.

The server runs in its own process so that its event loop and llama.cpp do not share a GIL with
the clients; on a 2-core machine they still share the cores, as they would in real use.
Writes benchmarks/results/serve_load.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import RESULTS, script_main, write_json

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What does a CPU do?",
    "Give me a tip for learning a language.",
    "Why is the sky blue?",
    "Describe a cat in a few words.",
    "What is two plus two?",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="the model to serve (default: the embedded one)")
    parser.add_argument("--backend", default="gguf", choices=("gguf", "torch", "auto"), help="(default: gguf)")
    parser.add_argument("--clients", type=int, default=8, metavar="N", help="concurrent streaming clients (8)")
    parser.add_argument("--requests", type=int, default=3, metavar="N", help="requests per client, in turn (3)")
    parser.add_argument("--max-tokens", type=int, default=64, metavar="N", help="max_tokens of each request (64)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="the --parallel settings to measure, each with a queue for every client (1 2)")
    parser.add_argument("--overload-queue", type=int, default=2, metavar="M",
                        help="also run --parallel 1 with this --queue-size, so that some requests get 503; "
                             "0 skips it (2)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="llama.cpp threads per copy (default: minicpm serve's, the cores shared out among copies)")
    parser.add_argument("--ctx", type=int, default=1024, metavar="N", help="the server's context window (1024)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load.json", help="where to write the JSON")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return round(ordered[rank - 1], 3)


def start_server(args: argparse.Namespace, parallel: int, queue_size: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "minicpm_suite", "serve", "--model", args.model, "--backend", args.backend,
               "--port", "0", "--ctx", str(args.ctx), "--parallel", str(parallel), "--queue-size", str(queue_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k != "MINICPM_SERVE_API_KEY"}
    log = tempfile.TemporaryFile(mode="w+")  # the server's own lines, shown if it fails to start
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    url = process.stdout.readline().strip()  # the server prints its URL once it is loaded and listening
    if not url.startswith("http://"):
        process.kill()
        log.seek(0)
        raise RuntimeError(f"minicpm serve did not start ({' '.join(command)}):\n{log.read()}")
    return process, url


async def one_request(http, url: str, index: int, max_tokens: int) -> dict:
    """One streaming chat request; what the client saw of it."""
    body = {"model": "default", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "temperature": 0.7, "seed": index, "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}]}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    done = False
    try:
        async with http.stream("POST", f"{url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                error = json.loads(await response.aread()).get("error", {})
                return {"ok": False, "error": f"{response.status_code} {error.get('code') or error.get('type')}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"ok": False, "error": f"in-stream {chunk['error'].get('type')}"}
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001 - a load test counts every failure by kind
        return {"ok": False, "error": f"client {type(exc).__name__}"}
    if not done:
        return {"ok": False, "error": "stream ended without [DONE]"}
    return {"ok": True, "latency": time.perf_counter() - t0, "ttft": first, "tokens": tokens}


async def load(url: str, clients: int, requests: int, max_tokens: int) -> tuple[list[dict], float]:
    import httpx

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def client(c: int) -> list[dict]:
            return [await one_request(http, url, c * requests + r, max_tokens) for r in range(requests)]

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client(c) for c in range(clients)))
        return [r for results in per_client for r in results], time.perf_counter() - t0


def measure(args: argparse.Namespace, parallel: int, queue_size: int) -> dict:
    import httpx

    process, url = start_server(args, parallel, queue_size)
    try:
        results, wall = asyncio.run(load(url, args.clients, args.requests, args.max_tokens))
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "parallel": parallel,
        "queue_size": queue_size,
        "requests": len(results),
        "ok": len(ok),
        "errors": dict(Counter(r["error"] for r in results if not r["ok"])),
        "completion_tokens": tokens,
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 1),
        "requests_per_second": round(len(ok) / wall, 2),
        "latency_p50_seconds": percentile([r["latency"] for r in ok], 50),
        "latency_p95_seconds": percentile([r["latency"] for r in ok], 95),
        "ttft_p50_seconds": percentile([r["ttft"] for r in ok if r["ttft"] is not None], 50),
        "ttft_p95_seconds": percentile([r["ttft"] for r in ok if r["ttft"] is not None], 95),
        "server_after": {"status": health["status"], "slots_busy": health["slots"]["busy"],
                         "queue_depth": health["queue"]["depth"], "stats": health["stats"]},
        "server_exit_status": process.returncode,
    }


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, for the README."""
    return (f"minicpm bench serve_load --model {args.model} --backend {args.backend} --clients {args.clients} "
            f"--requests {args.requests} --max-tokens {args.max_tokens} --parallel {' '.join(map(str, args.parallel))} "
            f"--overload-queue {args.overload_queue} --ctx {args.ctx}" + (f" --threads {args.threads}" if args.threads else ""))


def run(args: argparse.Namespace) -> int:
    settings = [(p, args.clients) for p in args.parallel]
    if args.overload_queue:
        settings.append((1, args.overload_queue))
    load_before = os.getloadavg()[0]
    rows = []
    for parallel, queue_size in settings:
        row = measure(args, parallel, queue_size)
        rows.append(row)
        errors = ", ".join(f"{n} {kind}" for kind, n in row["errors"].items()) or "none"
        print(f"parallel {parallel} queue {queue_size:>2}: {row['ok']}/{row['requests']} ok (errors: {errors}), "
              f"{row['tokens_per_second']} tok/s, {row['requests_per_second']} req/s, latency p50 "
              f"{row['latency_p50_seconds']} s p95 {row['latency_p95_seconds']} s, first token p50 "
              f"{row['ttft_p50_seconds']} s p95 {row['ttft_p95_seconds']} s", flush=True)
    result = {
        "benchmark": "serve_load",
        "model": args.model,
        "backend": args.backend,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_before": round(load_before, 2)},
        "settings": {"clients": args.clients, "requests_per_client": args.requests, "max_tokens": args.max_tokens,
                     "ctx": args.ctx, "stream": True, "temperature": 0.7,
                     "threads": args.threads or "minicpm serve's default (the cores shared out among the copies)"},
        "command": command_line(args),
        "results": rows,
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
