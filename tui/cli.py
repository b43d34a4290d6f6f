"""The `minicpm` command line: one entry point, one module per subcommand (tui/commands/).

Subcommand modules import torch, llama.cpp and the like inside run(), so building the parser
stays fast and a verb never pays for another's dependencies. A MiniCPMError (a problem the user can fix) is printed
as one line with a non-zero exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from runtime.errors import MiniCPMError

# verb -> (module under tui.commands, one-line help)
COMMANDS = {
    "generate": ("generate", "one prompt in, streamed text out"),
    "convert": ("convert", "HF checkpoint folder -> GGUF file that llama.cpp loads"),
    "serve": ("serve", "OpenAI-compatible HTTP API over any backend, on 127.0.0.1"),
    "bench": ("bench", "run a benchmark from benchmarks/ and write its JSON results"),
    "chat": ("chat", "the terminal UI: streaming chat with history, tools with approval, surveys"),
    "survey": ("survey", "write a cited survey for a query from the local paper corpus (Markdown, BibTeX, HTML)"),
    "corpus": ("corpus", "ingest / search / stats for the paper corpus"),
    "agent": ("agent", "one MCP tool-agent session in the terminal"),
    "mcp": ("mcp", "run a built-in MCP server over stdio; list configured servers and tools"),
    "train": ("train", "fine-tune the torch model: sft (full or LoRA) or rl (GRPO, chunk-wise rollout)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minicpm",
        description="The MiniCPM4 local suite: a torch runtime with a llama.cpp fallback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"tui.commands.{module}")
        mod.add_arguments(sub.add_parser(verb, help=help_text, description=mod.__doc__.strip().splitlines()[0]))
    return parser


def show_runtime_notices() -> None:
    """The runtime says what it could not honour through the "minicpm" logger (runtime/notices.py)."""
    logger = logging.getLogger("minicpm")
    if any(getattr(h, "minicpm_cli", False) for h in logger.handlers):
        return  # main() called again in one process (tests, embedding): one handler, each note once
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("minicpm: note: %(message)s"))
    handler.minicpm_cli = True
    logger.addHandler(handler)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    show_runtime_notices()
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(f"tui.commands.{COMMANDS[args.command][0]}")
    try:
        return module.run(args) or 0
    except MiniCPMError as exc:
        print(f"minicpm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `minicpm generate ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
