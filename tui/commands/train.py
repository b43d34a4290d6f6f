"""Fine-tune the runtime's torch model: supervised (full or LoRA) or GRPO with chunk-wise rollout.

    minicpm train sft --config training/configs/smollm2_mcp_lora.yaml
    minicpm train rl  --config training/configs/smollm2_mcp_rl.yaml

Everything about a run lives in its YAML config (training/configs/ has examples; training/sft.py
and training/rl.py list every key). A run writes into its `out` folder: log.jsonl, summary.json and
the adapter / merged model / GGUF asked for; an sft run also checkpoints (running the same command
again resumes). An rl run does not checkpoint: it starts over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=("sft", "rl"), help="sft: supervised fine-tuning; rl: GRPO")
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.yaml", help="the run's settings")
    parser.add_argument("--out", default=None, metavar="DIR", help="override the config's out folder")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="sft: stop after this many optimizer steps, checkpointed; the same command resumes")
    parser.add_argument("--json", action="store_true", help="print the run's summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from training.config import load_config

    overrides = {"out": str(Path(args.out).resolve())} if args.out else {}
    show = sys.stderr.isatty() and not args.json

    def log(message: str) -> None:
        print(f"minicpm: {message}", file=sys.stderr)

    if args.mode == "sft":
        from training.sft import SFTConfig, train_sft

        cfg = load_config(SFTConfig, args.config, overrides)
        if args.stop_after is not None and args.stop_after < 1:
            raise SystemExit("minicpm train: --stop-after must be at least 1")
        summary = train_sft(cfg, log=log, progress=show, stop_after=args.stop_after)
    else:
        from training.rl import RLConfig, run_rl

        if args.stop_after is not None:
            raise SystemExit("minicpm train: --stop-after is for sft; an rl run's length is its `iterations`")
        cfg = load_config(RLConfig, args.config, overrides)
        summary = run_rl(cfg, log=log, progress=show)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0
