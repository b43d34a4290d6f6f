"""Convert an HF checkpoint folder to a GGUF file that llama.cpp (and --backend gguf) loads.

MiniCPM configs become GGUF architecture `minicpm` (with the embedding, residual and logit
scales and the LongRoPE factors), Llama configs `llama`. Given a .gguf instead of a folder, it
rewrites that file with its matrices in --outtype (f32 gives llama.cpp the exact weights the torch
runtime computes with, which is how the parity numbers in the README are measured).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="HF checkpoint folder (config.json, *.safetensors, tokenizer.json), or a .gguf to re-type")
    parser.add_argument("output", type=Path, help="the .gguf file to write")
    parser.add_argument("--outtype", choices=("f32", "f16", "bf16", "q8_0"), default="f16",
                        help="type of the weight matrices; norms and RoPE factors stay f32 (f16)")
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from runtime.convert import convert_hf_to_gguf, retype_gguf

    show = sys.stderr.isatty() and not args.json
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), disable=not show, transient=True) as progress:
        task = progress.add_task("converting", total=None)

        def on_tensor(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total, description=f"writing {name}")

        convert = retype_gguf if args.checkpoint.suffix.lower() == ".gguf" else convert_hf_to_gguf
        out = convert(args.checkpoint, args.output, args.outtype, on_tensor, force=args.force)
    size = out.stat().st_size
    if args.json:
        print(json.dumps({"output": str(out), "bytes": size, "outtype": args.outtype}))
    else:
        print(f"wrote {out} ({size / 1e6:.1f} MB, {args.outtype})")
    return 0
