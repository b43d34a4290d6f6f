"""What every benchmark script shares: where results go, writing them, running as a script."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
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


def bench_command(name: str) -> str:
    """The command that ran this benchmark, as `minicpm bench NAME ARGS`, whether it was started
    that way or as `python -m benchmarks.NAME ARGS` (for the JSON's "command")."""
    args = sys.argv[1:]
    if args[:2] == ["bench", name]:
        args = args[2:]
    return shlex.join(["minicpm", "bench", name, *args])


def source_version(*paths: str) -> str | None:
    """The git commit, '+dirty' when the given folders (default: runtime) had uncommitted changes."""
    root = Path(__file__).parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", *(paths or ("runtime",))], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine() -> dict:
    """Where a benchmark ran: platform, CPU, and the versions of the packages that do the work."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("torch", "llama_cpp_python", "mcp"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), **packages}
