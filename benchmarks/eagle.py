"""Every draft of the torch runtime on survey-writing prompts, in one run: plain decoding, prompt
lookup, an Eagle head over the full vocabulary, and the same head with FR-Spec's frequent-token
vocabulary.

On the embedded SmolLM2-135M-Instruct, greedy, the prompts of benchmarks/speculative.py built from
held-out arXiv abstracts (the last ones of the sample; the head trains on the first ones):
survey-paragraph and survey-sentence (the survey agent's own prompts) and free (a paragraph about
a title). Engines: torch float32 and torch --quant int4. Per engine and prompt the four decoders
run one after another on the same loaded weights (the machine drifts between minutes), and per
task the table gives decode tokens/s (llama.cpp's plain decoding of the same prompts on the GGUF's
Q4_1 blocks is the peer), the speedup over plain decoding, the mean accepted length
(draft tokens accepted per verifying forward), the drafting time per drafted token (FR-Spec's
effect: the head's lm_head shrinks from the whole vocabulary to --frspec-vocab rows) and whether
every reply is plain decoding's.

The head comes from `minicpm train eagle --config training/configs/smollm2_eagle.yaml` and its
frequency file from `minicpm train frspec --vocab 8192 --out <head>`; both are needed first.

Writes benchmarks/results/eagle.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json
from benchmarks.speculative import measure, prompts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HEAD = ROOT / "training" / "runs" / "smollm2-eagle" / "head"
TASKS = ("survey-paragraph", "survey-sentence", "free")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eagle-head", type=Path, default=DEFAULT_HEAD, metavar="DIR",
                        help="the Eagle head (default: training/runs/smollm2-eagle/head)")
    parser.add_argument("--frspec-vocab", type=int, default=8192, metavar="N", help="FR-Spec vocabulary (8192)")
    parser.add_argument("--prompts", type=int, default=6, metavar="N", help="abstracts per task (6)")
    parser.add_argument("--max-tokens", type=int, default=96, metavar="N", help="tokens per reply at most (96)")
    parser.add_argument("--draft-max", type=int, default=3, metavar="N", help="Eagle draft tokens per forward (3)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "eagle.json", help="where to write the JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from runtime.backends.torch_backend import TorchBackend
    from runtime.eagle import load_eagle_draft
    from runtime.events import SamplingParams

    if not (args.eagle_head / "config.json").is_file():
        raise SystemExit(f"error: no Eagle head in {args.eagle_head}; train one first: minicpm train eagle --config "
                         "training/configs/smollm2_eagle.yaml")
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    rows, prompt_sets = [], None
    for engine, dtype, quant in (("torch-float32", "float32", "none"), ("torch-int4", "auto", "int4")):
        plain = TorchBackend.load("default", dtype=dtype, quant=quant)
        stops = plain.stop_token_ids
        full = load_eagle_draft(args.eagle_head, plain.loaded.model, stops, quant=quant)
        frspec = load_eagle_draft(args.eagle_head, plain.loaded.model, stops, args.frspec_vocab, quant)
        decoders = {
            "plain": plain,
            "lookup": TorchBackend(plain.loaded, speculative="lookup", draft_max=8),
            "eagle": TorchBackend(plain.loaded, speculative="eagle", draft_max=args.draft_max, eagle=full),
            f"eagle+frspec{args.frspec_vocab}": TorchBackend(plain.loaded, speculative="eagle",
                                                             draft_max=args.draft_max, eagle=frspec),
        }
        prompt_sets = prompt_sets or {t: p for t, p in prompts(plain, args.prompts).items() if t in TASKS}
        for task, prompt_list in prompt_sets.items():
            totals = {name: {"seconds": 0.0, "steps": 0, "accepted": 0, "verified": 0, "drafted": 0,
                             "draft_seconds": 0.0, "same": 0} for name in decoders}
            for prompt in prompt_list:
                reference = None
                for name, backend in decoders.items():
                    events = list(backend.generate_tokens(prompt, params))
                    tokens, seconds, steps, accepted, verified = measure(lambda p, e=events: iter(e), prompt)
                    t = totals[name]
                    t["seconds"] += seconds
                    t["steps"] += steps
                    t["accepted"] += accepted
                    t["verified"] += verified
                    t["drafted"] += events[-1].draft_tokens
                    t["draft_seconds"] += events[-1].draft_seconds
                    reference = tokens if reference is None else reference
                    t["same"] += tokens == reference
            base = totals["plain"]["steps"] / totals["plain"]["seconds"]
            for name, t in totals.items():
                rate = t["steps"] / t["seconds"]
                row = {"engine": engine, "task": task, "decoder": name, "tok_s": round(rate, 1),
                       "speedup": round(rate / base, 2),
                       "mean_accepted_length": round(t["accepted"] / t["verified"], 2) if t["verified"] else None,
                       "draft_ms_per_token": round(1000 * t["draft_seconds"] / t["drafted"], 2)
                       if t["drafted"] and t["draft_seconds"] else None,
                       "draft_share_of_decode": round(t["draft_seconds"] / t["seconds"], 3) if t["draft_seconds"] else None,
                       "same_tokens": f"{t['same']}/{len(prompt_list)}"}
                rows.append(row)
                print(row, flush=True)
    # the peer: llama.cpp decoding the same prompts plainly on the GGUF's own Q4_1 blocks (it has no
    # Eagle drafting for this model), after the torch engines, on the same machine
    from llama_cpp import Llama

    from benchmarks.speculative import llama_generator
    from runtime.model_ref import resolve_model

    llm = Llama(model_path=str(resolve_model("default").path), n_ctx=2048, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    generate = llama_generator(llm, args.max_tokens, stops)
    for task, prompt_list in prompt_sets.items():
        seconds = steps = 0
        for prompt in prompt_list:
            _, s, n, _, _ = measure(generate, prompt)
            seconds, steps = seconds + s, steps + n
        row = {"engine": "llama.cpp-Q4_1", "task": task, "decoder": "plain", "tok_s": round(steps / seconds, 1),
               "speedup": None, "mean_accepted_length": None, "draft_ms_per_token": None,
               "draft_share_of_decode": None, "same_tokens": None}
        rows.append(row)
        print(row, flush=True)
    result = {"command": bench_command("eagle"), "source": source_version(), "machine": machine(), "threads": threads,
              "model": "default (SmolLM2-135M-Instruct Q4_1, embedded)", "head": str(args.eagle_head),
              "frspec_vocab": args.frspec_vocab, "prompts_per_task": args.prompts, "max_tokens": args.max_tokens,
              "draft_max": args.draft_max, "rows": rows}
    write_json(args.out, result)
    print("| engine | task | decoder | tok/s | speedup | mean accepted length | draft ms/token | same tokens |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = f"{r['speedup']}x" if r["speedup"] is not None else ""
        print(f"| {r['engine']} | {r['task']} | {r['decoder']} | {r['tok_s']} | {speedup} | "
              f"{r['mean_accepted_length'] or ''} | {r['draft_ms_per_token'] or ''} | {r['same_tokens'] or ''} |")
    return 0


if __name__ == "__main__":
    import benchmarks.eagle as module

    script_main(module)
