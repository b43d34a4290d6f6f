"""InfLLM v2 sparse attention against dense attention and llama.cpp, measured in one run.

Part `attention`: one attention layer of MiniCPM4-8B's shape (32 query heads, 2 KV heads,
head_dim 128) in bfloat16 with random queries and keys, so that neighbouring queries choose
unrelated blocks (the hardest case for a CPU implementation):
- a decode step with 32K, 64K and 128K cached tokens: torch SDPA (dense), the runtime's dense
  decode (grouped products), and the runtime's sparse attention (selection + stage 2);
- a prefill of a 32K sequence: torch SDPA (causal) against the runtime's sparse attention;
- the size of the compressed keys.
Part `model`: the embedded SmolLM2 in bfloat16 with sparse attention forced on, over real text
(arXiv abstracts from ../shared/data when present), prefilled in the runtime's 512-token chunks
to 16K, 32K and 64K tokens with 16 greedy decode steps at each: torch sparse, torch dense,
llama.cpp (llama-cpp-python, dense, same thread count), torch sparse with --quant int4, and that
with its KV cache in bfloat16 (--kv-dtype bfloat16) (`--engines` picks some). Each engine runs in
its own process, so its peak RSS is its own.

Writes benchmarks/results/sparse_attention.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ENGLISH_TEXT, RESULTS, script_main, write_json

ARXIV = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv" / "arxiv_cs_ai_sample10k.jsonl.gz"
ENGINES = ("torch-sparse", "torch-dense", "llama.cpp", "torch-sparse-int4", "torch-sparse-int4-kv-bf16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", choices=("attention", "model", "all"), default="all")
    parser.add_argument("--decode-contexts", type=int, nargs="+", default=[32768, 65536, 131072], metavar="N",
                        help="cached tokens for the attention decode step")
    parser.add_argument("--prefill", type=int, default=32768, metavar="N", help="attention prefill length")
    parser.add_argument("--model-contexts", type=int, nargs="+", default=[16384, 32768, 65536], metavar="N")
    parser.add_argument("--decode-tokens", type=int, default=16, metavar="N")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="model part: the engines to run (default: all; torch-sparse-int4 is --quant int4, "
                             "-kv-bf16 adds --kv-dtype bfloat16)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sparse_attention.json")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)  # one engine, in a child process


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up: allocations, thread pools
    return statistics.median(_once(fn) for _ in range(repeats))


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def attention_part(args) -> dict:
    import torch
    import torch.nn.functional as F

    from runtime import cpu_kernel
    from runtime.model import decode_attention, dense_attention
    from runtime.sparse_attention import (
        CompressedKeys,
        SparseSettings,
        compressed_cache_bytes,
        sparse_attention,
    )

    heads, kv_heads, dim, dtype = 32, 2, 128, torch.bfloat16
    settings = SparseSettings()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in args.decode_contexts:
        k, v = (torch.randn(1, kv_heads, length, dim, generator=gen).to(dtype) for _ in range(2))
        q = torch.randn(1, heads, 1, dim, generator=gen).to(dtype)
        compressed = CompressedKeys(settings, 1, kv_heads, dim, length, dtype)
        compressed.update(k)
        row = {
            "case": "decode", "cached_tokens": length,
            "sdpa_ms": 1e3 * timed(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)),
            "dense_grouped_ms": 1e3 * timed(lambda: decode_attention(q, k, v)),
            "sparse_ms": 1e3 * timed(lambda: sparse_attention(q, k, v, length - 1, compressed, dense_attention), 10),
            "compressed_key_bytes": compressed_cache_bytes([compressed]),
            "kv_cache_bytes": 2 * k.numel() * k.element_size(),
        }
        row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["sparse_ms"]
        row["speedup_vs_dense_grouped"] = row["dense_grouped_ms"] / row["sparse_ms"]
        rows.append(row)
        print(f"decode, {length:>6} cached: sdpa {row['sdpa_ms']:8.1f} ms  dense {row['dense_grouped_ms']:6.1f} ms  "
              f"sparse {row['sparse_ms']:5.2f} ms  -> x{row['speedup_vs_sdpa']:.1f} / x{row['speedup_vs_dense_grouped']:.1f}",
              flush=True)

    length = args.prefill
    q = torch.randn(1, heads, length, dim, generator=gen).to(dtype)
    k, v = (torch.randn(1, kv_heads, length, dim, generator=gen).to(dtype) for _ in range(2))

    def sparse_prefill():
        compressed = CompressedKeys(settings, 1, kv_heads, dim, length, dtype)
        compressed.update(k)
        sparse_attention(q, k, v, 0, compressed, dense_attention)

    dense_s = _once(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    sparse_s = _once(sparse_prefill)
    rows.append({"case": "prefill", "tokens": length, "sdpa_s": dense_s, "sparse_s": sparse_s,
                 "speedup_vs_sdpa": dense_s / sparse_s})
    print(f"prefill, {length} tokens: sdpa {dense_s:.1f} s  sparse {sparse_s:.1f} s  -> x{dense_s / sparse_s:.2f}", flush=True)
    return {"shape": {"query_heads": heads, "kv_heads": kv_heads, "head_dim": dim, "dtype": "bfloat16"},
            "settings": vars(settings) | {"selected_blocks": settings.selected_blocks},
            "c_kernel": cpu_kernel.available(), "c_kernel_bf16_dot_products": cpu_kernel.bf16_dot_products(),
            "results": rows}


def long_text_ids(tokenize, length: int) -> list[int]:
    if ARXIV.is_file():
        with gzip.open(ARXIV, "rt", encoding="utf-8") as fh:
            text = "\n\n".join(f"{r['title']}\n{r['abstract']}" for r in map(json.loads, fh))
    else:
        text = ENGLISH_TEXT.read_text(encoding="utf-8")
    ids = tokenize(text)
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


def model_worker(engine: str, contexts: list[int], decode_tokens: int, threads: int) -> dict:
    """One engine in this process: prefill up to each context, decode_tokens greedy steps there."""
    import torch

    from runtime.generate import PREFILL_CHUNK
    from runtime.loading import load_torch_model
    from runtime.sparse_attention import SparseSettings, compressed_cache_bytes

    torch.set_num_threads(threads)
    # --quant int4: float32 activations, int4 weights (lm_head int8); -kv-bf16: with --kv-dtype bfloat16
    int4 = engine.startswith("torch-sparse-int4")
    loaded = load_torch_model("default", dtype="float32" if int4 else "bfloat16", quant="int4" if int4 else "none")
    if engine.endswith("-kv-bf16"):
        loaded.model.kv_dtype = torch.bfloat16
    ids = long_text_ids(loaded.tokenizer.encode, max(contexts))
    points, prefill_s, done = [], 0.0, 0
    if engine == "llama.cpp":
        import numpy as np
        from llama_cpp import Llama, llama_get_logits_ith

        llm = Llama(model_path=str(loaded.source.path), n_ctx=max(contexts) + 8 * decode_tokens, n_batch=PREFILL_CHUNK,
                    n_threads=threads, n_threads_batch=threads, verbose=False)
        del loaded
        n_vocab = llm.n_vocab()

        def step(tokens):
            llm.eval(tokens)
            return int(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())
    else:
        model = loaded.model
        model.sparse = SparseSettings() if engine.startswith("torch-sparse") else None
        cache = model.new_cache(capacity=max(contexts) + len(contexts) * decode_tokens)

        def step(tokens):
            with torch.inference_mode():
                out = None
                for start in range(0, len(tokens), PREFILL_CHUNK):
                    out = model(torch.tensor([tokens[start : start + PREFILL_CHUNK]]), cache, last_logits_only=True)
                return int(out[0, -1].argmax())

    for context in contexts:
        start = time.perf_counter()
        token = step(ids[done:context])
        prefill_s += time.perf_counter() - start
        done = context
        start = time.perf_counter()
        for _ in range(decode_tokens):
            token = step([token])
        decode_s = time.perf_counter() - start
        done += decode_tokens
        point = {"context": context, "prefill_seconds_so_far": prefill_s,
                 "decode_tokens_per_second": decode_tokens / decode_s,
                 "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        if engine.startswith("torch-sparse") and cache.compressed:
            point["compressed_key_bytes"] = compressed_cache_bytes(cache.compressed)
        points.append(point)
        print(json.dumps({"engine": engine, **point}), file=sys.stderr, flush=True)
    return {"engine": engine, "points": points}


def model_part(args, threads: int) -> dict:
    runs = []
    for engine in args.engines:
        cmd = [sys.executable, "-m", "benchmarks.sparse_attention", "--worker", engine, "--threads", str(threads),
               "--decode-tokens", str(args.decode_tokens), "--model-contexts", *map(str, args.model_contexts)]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    by_engine = {run["engine"]: {p["context"]: p for p in run["points"]} for run in runs}
    for context in args.model_contexts:
        line = [f"context {context:>6}:"]
        for engine in args.engines:
            p = by_engine[engine][context]
            line.append(f"{engine} decode {p['decode_tokens_per_second']:5.1f} tok/s "
                        f"(prefill so far {p['prefill_seconds_so_far']:6.1f} s, peak RSS {p['peak_rss_bytes'] / 2**30:.2f} GiB)")
        print("  ".join(line))
    return {"model": "default (SmolLM2-135M-Instruct Q4_1, embedded); torch-sparse and torch-dense in bfloat16, "
                     "torch-sparse-int4 in float32 with int4 weights (lm_head int8), torch-sparse-int4-kv-bf16 the "
                     "same with its KV cache in bfloat16 (--kv-dtype bfloat16)",
            "text": "arXiv abstracts" if ARXIV.is_file() else "public-domain English prose, repeated",
            "runs": runs}


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    threads = args.threads or os.cpu_count()
    if args.worker:
        print(json.dumps(model_worker(args.worker, args.model_contexts, args.decode_tokens, threads)))
        return 0
    torch.set_num_threads(threads)
    result = {"benchmark": "sparse_attention",
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads, "torch": torch.__version__}}
    if args.part in ("attention", "all"):
        result["attention"] = attention_part(args)
    if args.part in ("model", "all"):
        result["model"] = model_part(args, threads)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
