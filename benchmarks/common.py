"""What every benchmark script shares: where results go, writing them, running as a script."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
ENGLISH_TEXT = Path(__file__).parent / "data" / "english_prose.txt"  # public domain, ~1500 tokens


def write_json(path: Path, result: dict) -> None:
    """Write result atomically: an interrupted run never leaves half a file where the README points."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def script_main(module) -> None:
    """`python -m benchmarks.NAME`: the same arguments as `minicpm bench NAME`."""
    parser = argparse.ArgumentParser(description=module.__doc__.splitlines()[0])
    module.add_arguments(parser)
    raise SystemExit(module.run(parser.parse_args()))
