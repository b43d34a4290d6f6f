"""GRPO time per step with chunk-wise rollout against whole-trajectory rollout, on the embedded model.

    minicpm bench rl_rollout [--groups 4] [--chunk 32] [--max-response 96]

Both runs train the same groups (the first --groups prompts of the MCP training trajectories, as
tool-call prompts with their verifiable reward), with the same seeds, LoRA on the embedded
SmolLM2-135M with the shipped MCP adapter merged in, until every started group has been trained. Whole-trajectory rollout is chunk =
max_response: each iteration samples until its longest trajectory ends, finished rows riding along
idle. Chunk-wise rollout samples at most --chunk tokens per trajectory per iteration and carries
the unfinished ones over. Reported per mode: iterations, mean seconds per step (sampling +
update), sampling and training seconds, idle row-steps, trajectories trained per minute, mean
reward. Writes benchmarks/results/rl_rollout.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json

TRAIN = Path(__file__).resolve().parent.parent / "training" / "data" / "mcp" / "train.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=TRAIN, help="MCP trajectories (default: the training split)")
    parser.add_argument("--groups", type=int, default=4, help="groups (prompts) both modes train on (4)")
    parser.add_argument("--group-size", type=int, default=4, help="rollouts per prompt (4)")
    parser.add_argument("--batch-groups", type=int, default=2, help="groups per rollout batch (2)")
    parser.add_argument("--chunk", type=int, default=32, help="chunk-wise mode's tokens per iteration (32)")
    parser.add_argument("--max-response", type=int, default=96, help="most tokens per trajectory (96)")
    parser.add_argument("--start-adapter", default="smollm2-mcp",
                        help="adapter merged into the policy first (default: the shipped MCP fine-tune; from the base "
                             "model nearly every reward is 0 and groups without signal are not trained)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "rl_rollout.json", help="where to write the JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from runtime.adapter import LoRASettings
    from runtime.loading import load_torch_model
    from training import lora
    from training.rl import RLConfig, train_rl
    from training.tasks import build_task

    if args.threads:
        torch.set_num_threads(args.threads)
    commit = source_version("training", "runtime", "benchmarks")
    rows = []
    for mode, chunk in (("whole", args.max_response), ("chunk-wise", args.chunk)):
        loaded = load_torch_model("default", dtype="float32", adapter=args.start_adapter)
        cfg = RLConfig(out="unused", data=str(args.data), group_size=args.group_size, batch_groups=args.batch_groups,
                       chunk=chunk, max_response=args.max_response, iterations=10_000, max_groups=args.groups,
                       lr=1e-5, kl_coef=0.001, temperature=1.0, limit=args.groups)
        task = build_task(cfg, loaded.tokenizer)
        lora.add_lora(loaded.model, LoRASettings())
        torch.manual_seed(0)
        started = time.perf_counter()
        records = train_rl(loaded.model, task, cfg, log=lambda line: print(line, file=sys.stderr))
        wall = time.perf_counter() - started
        trained = sum(r.groups_trained + r.groups_dropped for r in records) * args.group_size
        rewards = [r.reward_mean for r in records if r.reward_mean is not None]
        row = {"mode": mode, "chunk": chunk, "iterations": len(records),
               "seconds_per_step": round(wall / len(records), 2),
               "sampling_seconds": round(sum(r.sampling_seconds for r in records), 1),
               "training_seconds": round(sum(r.training_seconds for r in records), 1),
               "generated_tokens": sum(r.generated_tokens for r in records),
               "idle_row_steps": sum(r.idle_row_steps for r in records),
               "trajectories_trained": trained, "trajectories_per_minute": round(60 * trained / wall, 2),
               "mean_reward": round(sum(rewards) / len(rewards), 3) if rewards else None,
               "wall_seconds": round(wall, 1)}
        rows.append(row)
        print(row, file=sys.stderr)
    print("| mode | chunk | iterations | s/step | sampling s | training s | idle row-steps | trajectories/min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['chunk']} | {r['iterations']} | {r['seconds_per_step']} | {r['sampling_seconds']} | "
              f"{r['training_seconds']} | {r['idle_row_steps']} | {r['trajectories_per_minute']} |")
    write_json(args.out, {"benchmark": "rl_rollout", "command": bench_command("rl_rollout"),
                          "date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
                          "machine": machine(), "model": "default (SmolLM2-135M-Instruct, Q4_1 dequantized, LoRA r 8)",
                          "settings": vars(args) | {"data": args.data.name, "out": str(args.out)}, "results": rows})
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
