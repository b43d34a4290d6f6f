"""Generate text for one prompt and stream it to stdout.

Notices and prefill progress go to stderr, so stdout carries only the model's text (or, with
--json, one JSON object), ready for a pipe.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from runtime.backends.base import KV_DTYPES
from runtime.errors import MiniCPMError


def add_model_arguments(parser: argparse.ArgumentParser, default_backend: str = "torch") -> None:
    """--model/--backend and the load options every model-running verb shares."""
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2), an HF checkpoint folder, a .gguf file or a hub id")
    parser.add_argument("--backend", choices=("torch", "gguf", "openai", "auto"), default=default_backend,
                        help="torch: this project's runtime; gguf: llama.cpp; openai: an OpenAI-compatible server "
                             f"at --base-url; auto: torch or gguf, whichever suits the model (default: {default_backend})")
    parser.add_argument("--base-url", default=None, metavar="URL",
                        help="the openai backend's server, e.g. http://127.0.0.1:8000/v1 (or MINICPM_BASE_URL); "
                             "its API key comes from MINICPM_API_KEY or OPENAI_API_KEY")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="torch compute dtype (auto: float32 below 2B parameters, else bfloat16)")
    parser.add_argument("--quant", choices=("none", "int8", "int4"), default="none",
                        help="torch backend: quantize the linear layers' weights on load (int8 per channel, int4 in "
                             "groups of 32; runtime/quantize.py); llama.cpp runs a GGUF's own quantization (none)")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default="auto",
                        help="torch backend: the KV cache's dtype, in which attention runs (auto: the compute dtype); "
                             "bfloat16 halves the cache of a model computing in float32 (--dtype auto picks float32 "
                             "below 2B parameters, --quant included)")
    parser.add_argument("--speculative", choices=("none", "lookup", "eagle"), default="none",
                        help="torch backend: draft tokens and check them in one forward, same output; lookup: the "
                             "continuation of an earlier occurrence of the last few tokens (fast where the reply "
                             "copies its input); eagle: an Eagle head on the model's hidden states, --draft-model "
                             "(runtime/speculative.py, runtime/eagle.py)")
    parser.add_argument("--draft-max", type=int, default=8, metavar="N",
                        help="most draft tokens checked per forward with --speculative (default: 8)")
    parser.add_argument("--draft-model", default=None, metavar="DIR",
                        help="the Eagle head of --speculative eagle: upstream's (MiniCPM4-8B-Eagle-FRSpec) or one "
                             "from `minicpm train eagle`")
    parser.add_argument("--frspec-vocab", type=int, default=0, metavar="N",
                        help="FR-Spec: the Eagle head drafts over the N most frequent tokens only (a freq_*.pt file "
                             "in --draft-model, from `minicpm train frspec`); verification keeps the full vocabulary")
    parser.add_argument("--adapter", default=None, metavar="DIR|NAME",
                        help="a LoRA adapter (PEFT folder, e.g. from `minicpm train sft`, or a shipped one: "
                             "smollm2-mcp, the embedded model's MCP tool-call fine-tune); torch merges it, "
                             "llama.cpp applies it")
    parser.add_argument("--ctx", type=int, default=None, metavar="N",
                        help="context window in tokens, prompt plus output (default: the model's)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: all cores)")
    sparse = parser.add_argument_group("InfLLM v2 sparse attention (torch backend)")
    sparse.add_argument("--sparse", choices=("auto", "on", "off"), default="auto",
                        help="auto: on for MiniCPM configs with a sparse_config; on: any model (default: auto)")
    sparse.add_argument("--sparse-topk", type=int, metavar="N", help="blocks chosen by score (sparse_config topk, 64)")
    sparse.add_argument("--sparse-window", type=int, metavar="N", dest="sparse_window_size",
                        help="local window in tokens, always attended (2048)")
    sparse.add_argument("--sparse-dense-len", type=int, metavar="N",
                        help="queries with fewer keys than this attend densely (8192)")
    sparse.add_argument("--sparse-lse", choices=("on", "off"), default=None,
                        help="approximate stage 1's normaliser with the coarse kernels (on)")


def speculative_options(args: argparse.Namespace) -> dict:
    """The speculative-decoding flags, as load_backend's keyword arguments."""
    return {"speculative": args.speculative, "draft_max": args.draft_max, "draft_model": args.draft_model,
            "frspec_vocab": args.frspec_vocab}


def sparse_options(args: argparse.Namespace) -> dict:
    """The --sparse-* overrides, as sparse_config field names (None where not given)."""
    lse = {"on": True, "off": False}.get(args.sparse_lse)
    return {"topk": args.sparse_topk, "window_size": args.sparse_window_size,
            "dense_len": args.sparse_dense_len, "use_lse": lse}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="the prompt; '-' or omitted reads it from stdin")
    parser.add_argument("--system", help="a system message (ignored with --raw)")
    parser.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    parser.add_argument("--template-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="pass a variable to the chat template, e.g. enable_thinking=false (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=256, metavar="N",
                        help="most tokens to generate; -1 until the context is full (256)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy (0.8)")
    parser.add_argument("--top-k", type=int, default=40, metavar="K", help="0 turns it off (40)")
    parser.add_argument("--top-p", type=float, default=0.95, metavar="P", help="1 turns it off (0.95)")
    parser.add_argument("--min-p", type=float, default=0.05, metavar="P", help="0 turns it off (0.05)")
    parser.add_argument("--repeat-penalty", type=float, default=1.0, metavar="R", help="1 turns it off (1.0)")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed (0 to 4294967294), for a reproducible run; reported with --json")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    parser.add_argument("--top-logprobs", type=int, default=0, metavar="N",
                        help="with --json, report each token's log-probability and N alternatives")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: text, token ids, counts and timings")
    parser.add_argument("--verbose", action="store_true", help="print token counts and speeds to stderr")


def parse_template_args(pairs: list[str]) -> dict:
    from runtime.chat_template import check_template_kwargs

    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise MiniCPMError(f"--template-arg expects KEY=VALUE with a Python-style name, got '{pair}'")
        try:
            values[key] = json.loads(raw)  # true/false/numbers/JSON; anything else stays a string
        except json.JSONDecodeError:
            values[key] = raw
    check_template_kwargs(values)
    return values


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt not in (None, "-"):
        return args.prompt
    if sys.stdin.isatty():
        raise MiniCPMError("no prompt: pass --prompt TEXT or pipe the prompt into stdin")
    return sys.stdin.read()


def run(args: argparse.Namespace) -> int:
    from runtime.backends.base import load_backend
    from runtime.events import MAX_SEED, SamplingParams
    from tui.progress import PrefillProgress

    if args.top_logprobs and not args.json:
        raise MiniCPMError("--top-logprobs reports through --json; add --json")
    if args.max_tokens < -1 or args.max_tokens == 0:
        raise MiniCPMError(f"--max-tokens must be a positive number or -1 (got {args.max_tokens})")
    prompt_text = read_prompt(args)
    template_kwargs = parse_template_args(args.template_arg)
    seed = args.seed if args.seed is not None else random.randrange(MAX_SEED)
    try:
        params = SamplingParams(
            # -1: as many as the context allows (the backend clips every budget to the context)
            max_tokens=args.max_tokens if args.max_tokens > 0 else 2**31,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repeat_penalty,
            seed=seed,
            stop=tuple(args.stop),
            logprobs=args.json and args.top_logprobs > 0,
            top_logprobs=args.top_logprobs if args.json else 0,
        )
    except ValueError as exc:
        raise MiniCPMError(f"bad sampling option: {exc}") from None

    if args.backend in ("gguf", "openai") and args.dtype != "auto":
        print("minicpm: note: --dtype applies to the torch backend only; llama.cpp computes in the "
              "file's own types", file=sys.stderr)
    backend = load_backend(args.backend, args.model, dtype=args.dtype, quant=args.quant, context_length=args.ctx, threads=args.threads,
                           sparse=args.sparse, sparse_overrides=sparse_options(args), base_url=args.base_url,
                           **speculative_options(args), adapter=args.adapter,
                           kv_dtype=args.kv_dtype)
    for notice in backend.notices:
        print(f"minicpm: note: {notice}", file=sys.stderr)
    if args.verbose:
        for detail in [backend.model_label, *backend.details]:
            print(f"minicpm: {detail}", file=sys.stderr)
    if args.raw:
        events = backend.complete(prompt_text, params)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt_text}
        ]
        events = backend.chat(messages, params, **template_kwargs)

    pieces, tokens, logprobs = [], [], []
    last = None
    with PrefillProgress(enabled=not args.json) as progress:
        for event in events:
            last = event
            if event.is_progress:
                progress.update(event.prompt_processed, event.prompt_tokens)
                continue
            progress.done()
            if event.token is not None:
                tokens.append(event.token)
                if params.logprobs:
                    logprobs.append({"token": event.token, "logprob": event.logprob,
                                     "top": [{"token": t, "logprob": lp} for t, lp in event.top_logprobs]})
            if event.text:
                pieces.append(event.text)
                if not args.json:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
    if args.json:
        result = {
            "model": backend.model_label,
            "backend": backend.name,
            "text": "".join(pieces),
            "tokens": tokens,
            "finish_reason": last.finish_reason,
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "prefill_seconds": round(last.prefill_seconds, 4),
            "decode_seconds": round(last.decode_seconds, 4),
            "prefill_tokens_per_second": round(last.prefill_tokens_per_second, 2),
            "decode_tokens_per_second": round(last.decode_tokens_per_second, 2),
            "seed": seed,
        }
        if last.verify_steps:
            result.update(draft_tokens=last.draft_tokens, accepted_tokens=last.accepted_tokens,
                          mean_accepted_length=round(last.mean_accepted_length, 3),
                          draft_seconds=round(last.draft_seconds, 4))
        if params.logprobs:
            result["logprobs"] = logprobs
        print(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    if args.verbose:
        print(
            f"minicpm: {last.prompt_tokens} prompt tokens in {last.prefill_seconds:.2f} s "
            f"({last.prefill_tokens_per_second:.1f} tok/s), {last.completion_tokens} generated in "
            f"{last.decode_seconds:.2f} s ({last.decode_tokens_per_second:.1f} tok/s), "
            f"finish: {last.finish_reason}, seed {seed}",
            file=sys.stderr,
        )
        if last.verify_steps:
            print(f"minicpm: speculative: {last.accepted_tokens} of {last.draft_tokens} draft tokens accepted in "
                  f"{last.verify_steps} verifying forwards (mean accepted length {last.mean_accepted_length:.2f})"
                  + (f", {last.draft_seconds:.2f} s drafting" if last.draft_seconds else ""),
                  file=sys.stderr)
    return 0
