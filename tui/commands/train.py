"""Fine-tune the runtime's torch model (SFT, GRPO), train an Eagle draft head, write FR-Spec files.

Supervised fine-tuning is full or LoRA; GRPO uses chunk-wise rollout.

    minicpm train sft    --config training/configs/smollm2_mcp_lora.yaml
    minicpm train rl     --config training/configs/smollm2_mcp_rl.yaml
    minicpm train eagle  --config training/configs/smollm2_eagle.yaml
    minicpm train frspec --model default --data abstracts --vocab 8192 --out DIR

Everything about a run lives in its YAML config (training/configs/ has examples; training/sft.py
and training/rl.py list every key). A run writes into its `out` folder: log.jsonl, summary.json and
the adapter / merged model / GGUF asked for (eagle: the head); sft and eagle runs also checkpoint
(running the same command again resumes). An rl run does not checkpoint: it starts over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=("sft", "rl", "eagle", "frspec"),
                        help="sft: supervised fine-tuning; rl: GRPO; eagle: an Eagle draft head for "
                             "--speculative eagle; frspec: FR-Spec frequency files for --frspec-vocab")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                        help="the run's settings (sft, rl, eagle)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="override the config's out folder; frspec: where freq_N.pt go (the head's folder)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="sft, eagle: stop after this many optimizer steps, checkpointed; the same command resumes")
    # frspec's own flags default to None so that run() can tell them apart from flags not given
    # (frspec fills in the defaults the help names): sft, rl and eagle take their settings from --config.
    frspec = parser.add_argument_group("frspec")
    frspec.add_argument("--model", default=None, help="whose tokenizer counts the tokens (default: embedded)")
    frspec.add_argument("--data", default=None,
                        help="abstracts (the corpus's arXiv sample), a .txt or a .jsonl of {\"text\": ...} "
                             "(default: abstracts)")
    frspec.add_argument("--vocab", type=int, nargs="+", default=None, metavar="N",
                        help="sizes to write, one freq_N.pt each (default: 8192)")
    frspec.add_argument("--limit", type=int, default=None, metavar="N", help="count the first N texts only")
    parser.add_argument("--json", action="store_true", help="print the run's summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from training.config import load_config

    overrides = {"out": str(Path(args.out).resolve())} if args.out else {}
    show = sys.stderr.isatty() and not args.json

    def log(message: str) -> None:
        print(f"minicpm: {message}", file=sys.stderr)

    given = [f"--{name}" for name in ("model", "data", "vocab", "limit") if getattr(args, name) is not None]
    if args.mode != "frspec" and given:
        raise SystemExit(f"minicpm train {args.mode}: {', '.join(given)} "
                         f"{'is a flag' if len(given) == 1 else 'are flags'} of frspec only; the run's model and "
                         "data come from --config")
    if args.mode == "frspec":
        from training.frspec import write_frequency_files

        for flag, value in (("--config", args.config), ("--stop-after", args.stop_after)):
            if value is not None:
                raise SystemExit(f"minicpm train frspec: {flag} does not apply (frspec takes --model, --data, "
                                 "--vocab, --limit and --out)")
        if args.out is None:
            raise SystemExit("minicpm train frspec: --out DIR is required (the Eagle head's folder)")
        try:
            summary = write_frequency_files(args.model or "default", args.data or "abstracts", args.vocab or [8192],
                                            Path(args.out), args.limit, log=log)
        except ValueError as exc:
            raise SystemExit(f"minicpm train frspec: {exc}") from None
        print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
        return 0
    if args.config is None:
        raise SystemExit(f"minicpm train {args.mode}: --config FILE.yaml is required")
    if args.mode == "sft":
        from training.sft import SFTConfig, train_sft

        cfg = load_config(SFTConfig, args.config, overrides)
        if args.stop_after is not None and args.stop_after < 1:
            raise SystemExit("minicpm train: --stop-after must be at least 1")
        summary = train_sft(cfg, log=log, progress=show, stop_after=args.stop_after)
    elif args.mode == "eagle":
        from training.eagle import EagleConfig, train_eagle

        cfg = load_config(EagleConfig, args.config, overrides)
        if args.stop_after is not None and args.stop_after < 1:
            raise SystemExit("minicpm train: --stop-after must be at least 1")
        summary = train_eagle(cfg, log=log, progress=show, stop_after=args.stop_after)
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
