"""Weight quantization in the torch runtime (--quant): decode speed against llama.cpp, and quality.

On the embedded SmolLM2-135M-Instruct Q4_1 GGUF by default, in one run, every engine on the same
prompt (a slice of real English text, --prompt-length tokens, then --decode-tokens greedy steps with
end-of-sequence ignored):

- torch-float32 (the reference: the GGUF's weights dequantized), torch-bfloat16, torch-int8 and
  torch-int4 (runtime/quantize.py, quantized on load from the float32 weights);
- llama.cpp through llama-cpp-python on the GGUF itself (Q4_1 blocks), the same threads.

Quality, per torch mode, on held-out text: --abstracts arXiv abstracts (the shared 10K cs.AI sample
when it is beside the checkout, else the sample shipped in survey/data), their first 512 tokens as
the model's tokenizer encodes them:
- perplexity of those tokens (teacher forced, each predicted from the ones before it);
- top-1 agreement: the share of those positions where the mode's argmax is float32's;
- greedy agreement: from each abstract's first 32 tokens, 32 greedy tokens; the share of positions
  equal to float32's continuation up to the first difference (1.0 = identical text).
Also the bytes of the linear layers' weights per mode.

Writes benchmarks/results/quantization.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json
from benchmarks.runtime import prompt_ids, time_llama, time_torch

SHARED_ABSTRACTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv" / "arxiv_cs_ai_sample10k.jsonl.gz"
MODES = ("float32", "bfloat16", "int8", "int4")
CONTEXT_TOKENS, GREEDY_TOKENS = 32, 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="a .gguf file (default: the embedded model)")
    parser.add_argument("--prompt-length", type=int, default=128, metavar="N", help="prompt tokens before decoding (128)")
    parser.add_argument("--decode-tokens", type=int, default=64, metavar="N", help="tokens decoded per run (64)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="runs per engine; the median is kept (3)")
    parser.add_argument("--abstracts", type=int, default=40, metavar="N", help="held-out abstracts for quality (40)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "quantization.json", help="where to write the JSON")


def held_out_abstracts(n: int) -> tuple[str, list[str]]:
    """(where they come from, n abstracts): the last n of the file, away from the sample's start."""
    from survey.corpus import shipped_sample

    path = SHARED_ABSTRACTS if SHARED_ABSTRACTS.is_file() else shipped_sample()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        abstracts = [json.loads(line).get("abstract", "").strip() for line in f]
    abstracts = [a for a in abstracts if len(a) > 400]
    return str(path), abstracts[-n:]


def teacher_forced(model, ids: list[list[int]]):
    """Per abstract: (the float32 log-probabilities of each next token, argmax at each position)."""
    import torch

    out = []
    with torch.inference_mode():
        for seq in ids:
            logits = model(torch.tensor([seq]))[0, :-1].float()  # [T-1, V]
            logprobs = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(seq[1:])
            out.append((logprobs.gather(1, target[:, None])[:, 0], logits.argmax(-1)))
    return out


def greedy(model, prompt: list[int], steps: int) -> list[int]:
    import torch

    with torch.inference_mode():
        cache = model.new_cache(capacity=len(prompt) + steps)
        token = int(model(torch.tensor([prompt]), cache, last_logits_only=True)[0, -1].argmax())
        tokens = [token]
        for _ in range(steps - 1):
            token = int(model(torch.tensor([[token]]), cache, last_logits_only=True)[0, -1].argmax())
            tokens.append(token)
    return tokens


def same_prefix(a: list[int], b: list[int]) -> float:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return n / len(a)


def linear_bytes(model) -> int:
    import torch

    from runtime.quantize import Int4Linear, Int8Linear

    total = 0
    for name, module in model.named_modules():
        if isinstance(module, (Int8Linear, Int4Linear)):
            total += module.weight_bytes()
        elif isinstance(module, torch.nn.Linear) and (name == "lm_head" or name.startswith("model.layers.")):
            total += module.weight.numel() * module.weight.element_size()
    return total


def run(args: argparse.Namespace) -> int:
    import torch
    from llama_cpp import Llama

    from runtime.loading import load_torch_model
    from runtime.model_ref import resolve_model

    source = resolve_model(args.model)
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    models, details = {}, {}
    for mode in MODES:
        dtype, quant = (mode, "none") if mode in ("float32", "bfloat16") else ("float32", mode)
        loaded = load_torch_model(str(source.path), dtype=dtype, quant=quant)
        models[mode], details[mode] = loaded.model, loaded.details[-1]
        tokenizer = loaded.tokenizer
    llm = Llama(model_path=str(source.path), n_ctx=args.prompt_length + args.decode_tokens + 16, n_batch=512,
                n_threads=threads, n_threads_batch=threads, verbose=False)

    # -- speed: every engine on the same prompt, the median of --repeats runs --------------------
    prompt = prompt_ids(tokenizer.encode, args.prompt_length)
    speed = []
    engines = [(f"torch-{mode}", time_torch, model) for mode, model in models.items()] + [("llama.cpp", time_llama, llm)]
    for name, timer, handle in engines:
        timer(handle, prompt[:16], 4)  # warm-up: allocations, thread pools, packing caches
        prefill, decode = zip(*(timer(handle, prompt, args.decode_tokens) for _ in range(args.repeats)))
        row = {"engine": name, "prompt_tokens": args.prompt_length, "decode_tokens": args.decode_tokens,
               "prefill_tokens_per_second": round(args.prompt_length / statistics.median(prefill), 1),
               "decode_tokens_per_second": round(args.decode_tokens / statistics.median(decode), 1),
               "decode_runs_tokens_per_second": [round(args.decode_tokens / d, 1) for d in decode]}
        speed.append(row)
        print(f"{name:>16}  prefill {row['prefill_tokens_per_second']:>7.1f} tok/s  "
              f"decode {row['decode_tokens_per_second']:>6.1f} tok/s", flush=True)
    llama_decode = speed[-1]["decode_tokens_per_second"]
    for row in speed:
        row["decode_vs_llama_cpp"] = round(row["decode_tokens_per_second"] / llama_decode, 2)

    # -- quality against float32 on held-out abstracts --------------------------------------------
    where, abstracts = held_out_abstracts(args.abstracts)
    ids = [tokenizer.encode(text)[:512] for text in abstracts]
    reference = teacher_forced(models["float32"], ids)
    reference_greedy = [greedy(models["float32"], seq[:CONTEXT_TOKENS], GREEDY_TOKENS) for seq in ids]
    quality = {}
    for mode, model in models.items():
        scored = reference if mode == "float32" else teacher_forced(model, ids)
        nll = -float(sum(lp.sum() for lp, _ in scored)) / sum(len(lp) for lp, _ in scored)
        agree = sum(int((am == ref_am).sum()) for (_, am), (_, ref_am) in zip(scored, reference))
        runs = reference_greedy if mode == "float32" else [greedy(model, seq[:CONTEXT_TOKENS], GREEDY_TOKENS) for seq in ids]
        quality[mode] = {
            "perplexity": round(math.exp(nll), 3),
            "top1_agreement": round(agree / sum(len(am) for _, am in reference), 4),
            "greedy_agreement": round(statistics.mean(same_prefix(r, g) for r, g in zip(reference_greedy, runs)), 4),
            "greedy_identical": sum(r == g for r, g in zip(reference_greedy, runs)),
            "linear_weight_mb": round(linear_bytes(model) / 2**20, 1),
            "load_detail": details[mode],
        }
        print(f"{mode:>9}  perplexity {quality[mode]['perplexity']:.3f}  top-1 agreement "
              f"{quality[mode]['top1_agreement']:.2%}  greedy agreement {quality[mode]['greedy_agreement']:.2%}", flush=True)

    result = {
        "benchmark": "quantization",
        "source": source_version("runtime", "benchmarks"),
        "command": bench_command("quantization"),
        "model": source.label,
        "machine": machine() | {"load_average_before": round(load_before, 2),
                                "load_average_after": round(os.getloadavg()[0], 2)},
        "settings": {"threads": threads, "repeats": args.repeats, "statistic": "median",
                     "held_out": {"file": where, "abstracts": len(ids), "tokens_scored": sum(len(s) - 1 for s in ids),
                                  "greedy": f"{GREEDY_TOKENS} tokens after each abstract's first {CONTEXT_TOKENS}"}},
        "speed": speed,
        "quality": quality,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(table(result))
    write_json(args.out, result)
    return 0


def table(result: dict) -> str:
    rows = ["| engine | linear weights | decode tok/s | × llama.cpp | prefill tok/s | perplexity | top-1 agree | greedy agree |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["speed"]:
        mode = row["engine"].removeprefix("torch-")
        q = result["quality"].get(mode)
        cells = (f"{q['linear_weight_mb']} MB", ) if q else ("Q4_1",)
        rest = (f"{q['perplexity']:.2f}", f"{q['top1_agreement']:.1%}", f"{q['greedy_agreement']:.1%}") if q else ("", "", "")
        rows.append(f"| {row['engine']} | {cells[0]} | {row['decode_tokens_per_second']} | {row['decode_vs_llama_cpp']} | "
                    f"{row['prefill_tokens_per_second']} | " + " | ".join(rest) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    script_main(sys.modules[__name__])
