"""Run a benchmark from benchmarks/ and write its JSON results.

Each benchmark is a module benchmarks/<name>.py with add_arguments(parser) and run(args).
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "runtime": "prefill and decode tokens/s of the torch runtime against llama.cpp on the embedded model",
    "parity": "agreement of the torch runtime with llama.cpp on the embedded model's weights",
    "sparse_attention": "InfLLM v2 sparse attention against dense attention and llama.cpp at long context",
    "serve_load": "N concurrent streaming clients against `minicpm serve`: throughput, p50/p95 latency, errors",
    "tool_calls": "share of well-formed, schema-valid tool calls from the embedded model, constrained or not",
    "vector_search": "dense search for the paper corpus: exact numpy vs sqlite-vec and faiss at 10K/140K vectors: latency, recall",
    "mcp_eval": "MiniCPM4-MCP's func/param/value tool-call metrics over the built-in MCP servers' real tools",
    "survey_eval": "the survey agent per topic: structure, citation validity and support, coverage, retrieval latency",
    "corpus_scale": "the paper corpus at 140K papers: ingest papers/s (bm25, dense) and query p50/p95 per search mode",
    "agent_tasks": "the tool agent doing checkable tasks through the built-in MCP servers: success rate",
    "quantization": "--quant int8/int4 against float and llama.cpp's Q4_1: decode tok/s, perplexity, agreement",
    "speculative": "--speculative lookup against plain decoding and llama.cpp's prompt lookup: decode tok/s per task",
    "eagle": "every torch draft on survey prompts: plain, lookup, an Eagle head, Eagle with FR-Spec: tok/s, acceptance",
    "ternary": "BitCPM ternary weights packed to 2 bits against their bf16 form: bytes, decode tok/s, agreement",
    "infllm_cuda": "InfLLM v2 CUDA kernels against SDPA flash (needs a GPU): kernel time at 32K-128K, 8B-shape decode tok/s",
    "finetune_mcp": "the embedded model's MCP LoRA fine-tune on held-out tools: func/param/value before and after",
    "rl_rollout": "GRPO time per step: chunk-wise rollout against whole-trajectory rollout on the embedded model",
    "tui_latency": "`minicpm chat` in a real terminal (tmux): start-up to a prompt, keystroke echo idle and while streaming",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        module = importlib.import_module(f"benchmarks.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(f"benchmarks.{args.benchmark}").run(args)
