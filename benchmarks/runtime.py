"""Prefill and decode speed of the torch runtime (float32, bfloat16) against llama.cpp, same run.

On the embedded SmolLM2-135M-Instruct Q4_1 GGUF by default: the torch runtime dequantizes its
weights to float32/bfloat16, llama.cpp computes on the Q4_1 blocks directly. For each prompt
length the prompt is a slice of real English text; every engine prefills it, then greedily decodes
a fixed number of tokens with end-of-sequence ignored, so all engines do the same work.

Writes benchmarks/results/runtime.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from benchmarks.common import ENGLISH_TEXT, RESULTS, script_main, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="a .gguf file (default: the embedded model)")
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[128, 2048], metavar="N")
    parser.add_argument("--decode-tokens", type=int, default=64, metavar="N", help="tokens decoded per run (64)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="runs per setting; the median is kept (3)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (default: all cores)")
    parser.add_argument("--engines", nargs="+", default=["torch-float32", "torch-bfloat16", "llama.cpp"],
                        choices=["torch-float32", "torch-bfloat16", "llama.cpp"])
    parser.add_argument("--out", type=Path, default=RESULTS / "runtime.json", help="where to write the JSON")


def prompt_ids(tokenize, length: int) -> list[int]:
    ids = tokenize(ENGLISH_TEXT.read_text(encoding="utf-8"))
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


def time_torch(model, prompt: list[int], decode_tokens: int) -> tuple[float, float]:
    """Seconds for prefill (chunked, as in generation) and for decode_tokens greedy steps."""
    import torch

    from runtime.generate import PREFILL_CHUNK

    with torch.inference_mode():
        cache = model.new_cache(capacity=len(prompt) + decode_tokens)
        ids = torch.tensor([prompt])
        t0 = time.perf_counter()
        for start in range(0, len(prompt), PREFILL_CHUNK):
            logits = model(ids[:, start : start + PREFILL_CHUNK], cache, last_logits_only=True)[0, -1]
        token = int(logits.argmax())
        t1 = time.perf_counter()
        for _ in range(decode_tokens):
            token = int(model(torch.tensor([[token]]), cache, last_logits_only=True)[0, -1].argmax())
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def time_llama(llm, prompt: list[int], decode_tokens: int) -> tuple[float, float]:
    import numpy as np
    from llama_cpp import llama_get_logits_ith

    n_vocab = llm.n_vocab()

    def argmax() -> int:
        return int(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    token = argmax()
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        llm.eval([token])
        token = argmax()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def run(args: argparse.Namespace) -> int:
    import torch
    from llama_cpp import Llama

    from runtime.loading import load_torch_model
    from runtime.model_ref import resolve_model

    source = resolve_model(args.model)
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    longest = max(args.prompt_lengths) + args.decode_tokens
    engines = {}
    tokenize = None
    for name in args.engines:
        if name.startswith("torch-"):
            loaded = load_torch_model(str(source.path), dtype=name.removeprefix("torch-"))
            tokenize = loaded.tokenizer.encode
            engines[name] = (time_torch, loaded.model)
        else:
            llm = Llama(model_path=str(source.path), n_ctx=longest, n_batch=512, n_threads=threads,
                        n_threads_batch=threads, verbose=False)
            tokenize = tokenize or (lambda text, llm=llm: llm.tokenize(text.encode(), add_bos=False, special=True))
            engines[name] = (time_llama, llm)

    rows = []
    for length in args.prompt_lengths:
        prompt = prompt_ids(tokenize, length)
        for name, (timer, handle) in engines.items():
            timer(handle, prompt[:16], 4)  # warm-up: allocations, thread pools, caches
            prefill, decode = zip(*(timer(handle, prompt, args.decode_tokens) for _ in range(args.repeats)))
            row = {
                "engine": name,
                "prompt_tokens": length,
                "decode_tokens": args.decode_tokens,
                "prefill_seconds": statistics.median(prefill),
                "decode_seconds": statistics.median(decode),
            }
            row["prefill_tokens_per_second"] = round(length / row["prefill_seconds"], 1)
            row["decode_tokens_per_second"] = round(args.decode_tokens / row["decode_seconds"], 1)
            rows.append(row)
            print(f"{name:>15}  prompt {length:>5}  prefill {row['prefill_tokens_per_second']:>8.1f} tok/s"
                  f"  decode {row['decode_tokens_per_second']:>6.1f} tok/s", flush=True)

    result = {
        "benchmark": "runtime",
        "model": source.label,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "settings": {"repeats": args.repeats, "decode_tokens": args.decode_tokens, "statistic": "median"},
        "results": rows,
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    import sys

    script_main(sys.modules[__name__])
