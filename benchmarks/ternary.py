"""BitCPM ternary weights, packed (runtime/ternary.py) against their bfloat16 fake-quantized form.

The model: the embedded SmolLM2-135M's shapes and weights (from its GGUF, dequantized), its decoder
projections made ternary the way BitCPM-CANN's quantizer does it (one scale per group of --group
inputs, s = mean |W|, W = clamp(round(W / s), -1, 1) * s), stored as bfloat16: the fake-quantized
form BitCPM4 ships. The text it writes is poor (no quantization-aware training); its speed and
memory are what a real BitCPM checkpoint of this shape gets.

Measured in one run, the same prompt (--prompt-length tokens of English text) and threads:
- bytes of the decoder projections' weights: bfloat16 against packed (2 bits per weight and the scales);
- decode tokens/s (greedy, --decode-tokens steps after the prompt): the bfloat16 form, the packed
  model, and --quant int4 on the bfloat16 form (the runtime's other 4-bit path) for context;
- agreement of the packed model with the fake-quantized one in float32: the largest logit
  difference over the prompt (teacher forced, decode steps through the packed kernel) and greedy
  tokens equal over --decode-tokens steps.

Writes benchmarks/results/ternary.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
from pathlib import Path

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json
from benchmarks.runtime import prompt_ids, time_torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", type=int, default=64, metavar="N", help="inputs per ternary scale (64)")
    parser.add_argument("--prompt-length", type=int, default=128, metavar="N", help="prompt tokens (128)")
    parser.add_argument("--decode-tokens", type=int, default=64, metavar="N", help="decode steps timed (64)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs per model; the median (3)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ternary.json", help="where to write the JSON")


def ternarize_(model, group: int) -> None:
    """Make the decoder projections of `model` ternary in place (BitCPM-CANN's quantizer), in their dtype."""
    import torch

    from runtime.ternary import PROJECTIONS

    with torch.no_grad():
        for block in model.model.layers:
            for parent_name, names, _ in PROJECTIONS:
                for name in names:
                    weight = getattr(getattr(block, parent_name), name).weight
                    n, k = weight.shape
                    groups = weight.float().reshape(n, k // group, group)
                    scale = groups.abs().mean(-1, keepdim=True).clamp(min=1e-8).to(weight.dtype).float()
                    weight.copy_((groups / scale).round().clamp(-1, 1).mul(scale).reshape(n, k))


def projection_bytes(model) -> int:
    from runtime.ternary import PROJECTIONS, TernaryLinear

    total = 0
    for block in model.model.layers:
        for parent_name, names, fused in PROJECTIONS:
            parent = getattr(block, parent_name)
            for layer in [getattr(parent, n, None) for n in names] + [getattr(parent, fused, None) if fused else None]:
                if isinstance(layer, TernaryLinear) or hasattr(layer, "weight_bytes"):  # packed or --quant
                    total += layer.weight_bytes()
                elif layer is not None and hasattr(layer, "weight"):
                    total += layer.weight.numel() * layer.weight.element_size()
    return total


def run(args: argparse.Namespace) -> int:
    import torch

    from runtime import ternary
    from runtime.loading import load_torch_model
    from runtime.quantize import quantize_model

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    loaded = load_torch_model("default", dtype="bfloat16", pack_ternary=False)
    bf16 = loaded.model
    ternarize_(bf16, args.group)
    groups = ternary.detect(bf16)
    if groups is None or set(groups.values()) != {args.group}:
        raise SystemExit(f"error: the ternarized model was not recognised at group {args.group}: {groups}")
    packed = copy.deepcopy(bf16)
    ternary.pack_model(packed, groups)
    int4 = copy.deepcopy(bf16)
    quantize_model(int4, "int4")
    prompt = prompt_ids(loaded.tokenizer.encode, args.prompt_length)

    rows = []
    for name, model in (("bfloat16 (fake-quantized)", bf16), ("ternary packed", packed), ("int4 (--quant)", int4)):
        runs = [time_torch(model, prompt, args.decode_tokens) for _ in range(args.repeats)]
        decode = statistics.median(r[1] for r in runs)
        rows.append({"model": name, "projection_bytes": projection_bytes(model),
                     "decode_tok_s": round(args.decode_tokens / decode, 1),
                     "prefill_tok_s": round(len(prompt) / statistics.median(r[0] for r in runs), 1)})
        print(rows[-1], flush=True)

    # Agreement in float32, so that only the packing can differ.
    reference, packed32 = bf16.float(), copy.deepcopy(bf16).float()
    ternary.pack_model(packed32, ternary.detect(packed32))
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        caches = [m.new_cache(capacity=len(prompt) + args.decode_tokens) for m in (reference, packed32)]
        first = [m(ids, c) for m, c in zip((reference, packed32), caches)]  # prefill: unpacked products
        diff = (first[0] - first[1]).abs().max().item()
        tokens = [int(logits[0, -1].argmax()) for logits in first]
        same = 0  # greedy tokens equal up to the first difference
        for _ in range(args.decode_tokens):
            if tokens[0] != tokens[1]:
                break
            same += 1
            logits = [m(torch.tensor([[t]]), c)[0, -1] for m, c, t in zip((reference, packed32), caches, tokens)]
            diff = max(diff, (logits[0] - logits[1]).abs().max().item())  # decode: the packed kernel
            tokens = [int(logit.argmax()) for logit in logits]

    result = {"command": bench_command("ternary"), "source": source_version(), "machine": machine(), "threads": threads,
              "model": "embedded SmolLM2-135M shapes, decoder projections ternary (fake-quantized, bfloat16)",
              "group": args.group, "prompt_tokens": len(prompt), "decode_tokens": args.decode_tokens, "rows": rows,
              "float32_max_logit_difference": diff, "greedy_tokens_equal": same / args.decode_tokens}
    write_json(args.out, result)
    print("| model | decoder projection weights | decode tok/s | prefill tok/s |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['projection_bytes'] / 2**20:.1f} MB | {row['decode_tok_s']} | {row['prefill_tok_s']} |")
    print(f"float32: largest logit difference {diff:.2e}, greedy tokens equal {same}/{args.decode_tokens}")
    return 0


if __name__ == "__main__":
    import benchmarks.ternary as module

    script_main(module)
