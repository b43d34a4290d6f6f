"""Speculative decoding by prompt lookup (--speculative lookup) against plain decoding and llama.cpp's own
prompt lookup, in one run.

On the embedded SmolLM2-135M-Instruct (or --model, a .gguf), greedy, chat-formatted prompts built
from real arXiv abstracts (the shared 10K cs.AI sample when it is beside the checkout, else the
sample shipped in survey/data), tasks that copy from their prompt to different degrees:
- survey-paragraph: the survey agent's paragraph prompt over three retrieved papers (title and
  abstract each), as `minicpm survey` sends it;
- survey-sentence: the survey agent's one-sentence-per-paper prompt (title and abstract);
- quote: "Repeat the following text exactly" and an abstract (the reply copies nearly all of it);
- free: "Write a short paragraph about" a paper's title (nothing to copy but the title).
Engines, each with and without prompt lookup, the same prompt ids and threads:
- torch-float32 and torch-int4 (runtime/speculative.py: drafts of up to --draft-max tokens);
- llama.cpp (llama-cpp-python's LlamaPromptLookupDecoding, ngrams up to 3, --draft-max tokens, on
  the GGUF's own Q4_1 blocks).
Per engine and task, plain and lookup alternating prompt by prompt on the same loaded weights:
decode tokens/s (tokens after the first, over the time after the first), the mean accepted length
(draft tokens accepted per verification forward; torch only, llama-cpp-python does not report it)
and the share of prompts where lookup gave the same tokens as plain decoding.

Writes benchmarks/results/speculative.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json
from benchmarks.quantization import held_out_abstracts

QUERY = "recent advances in artificial intelligence"  # the survey the paragraphs are written for
TASKS = ("survey-paragraph", "survey-sentence", "quote", "free")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="a .gguf file (default: the embedded model)")
    parser.add_argument("--prompts", type=int, default=6, metavar="N", help="abstracts per task (6)")
    parser.add_argument("--max-tokens", type=int, default=96, metavar="N", help="tokens per reply at most (96)")
    parser.add_argument("--draft-max", type=int, default=8, metavar="N", help="draft tokens per forward (8)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "speculative.json", help="where to write the JSON")


def prompts(backend, n: int) -> dict[str, list[list[int]]]:
    """Chat-formatted prompt ids per task, from the last abstracts of the sample that have a title.

    survey-paragraph and survey-sentence are the survey agent's own prompts (agents/survey_agent/
    prompts.py: a paragraph over three retrieved papers, a sentence on one), with its system message."""
    import gzip
    import json

    from agents.survey_agent import prompts as survey

    source, abstracts = held_out_abstracts(8 * n)
    with gzip.open(source, "rt", encoding="utf-8") as f:
        titles = {paper.get("abstract", "").strip(): " ".join(paper.get("title", "").split()) for paper in map(json.loads, f)}
    papers = [(titles[a], a) for a in abstracts if titles.get(a)][: 3 * n]
    if len(papers) < 3 * n:
        raise SystemExit(f"error: {source} has only {len(papers)} abstracts with titles; {3 * n} needed")
    texts = {task: [] for task in TASKS}
    for i in range(n):
        group = papers[3 * i : 3 * i + 3]
        listing = "\n".join(f"[{j}] {title}: {abstract[:500]}" for j, (title, abstract) in enumerate(group, 1))
        texts["survey-paragraph"].append(survey.PARAGRAPH.format(papers=listing, part=group[0][0], query=QUERY, plan=""))
        title, abstract = group[0]
        texts["survey-sentence"].append(survey.ONE_SENTENCE.format(title=title, abstract=abstract[:1200]))
        texts["quote"].append(f"Repeat the following text exactly, word for word: {abstract}")
        texts["free"].append(f"Write a short paragraph about {title}.")
    system = {"role": "system", "content": survey.GENERIC_SYSTEM}
    return {task: [backend.tokenize(backend.render_chat([system, {"role": "user", "content": text}]))  # as chat() does
                   for text in items] for task, items in texts.items()}


def measure(generate, prompt: list[int]) -> tuple[list[int], float, int, int, int]:
    """(tokens, decode seconds, decode steps, draft tokens accepted, verifications) of one reply."""
    events = list(generate(prompt))
    last = events[-1]
    return ([e.token for e in events if e.token is not None], last.decode_seconds,
            max(0, last.completion_tokens - 1), last.accepted_tokens, last.verify_steps)


def llama_generator(llm, max_tokens: int, stop_ids: set[int]):
    """llama.cpp's replies timed like the torch backend's events (decode time: after the first token)."""
    from types import SimpleNamespace

    def generate(prompt: list[int]):
        out, first = [], None
        for token in llm.generate(prompt, temp=0.0, reset=True):
            first = first or time.perf_counter()
            out.append(int(token))
            if token in stop_ids or len(out) == max_tokens:
                break
        seconds = time.perf_counter() - first
        yield from (SimpleNamespace(token=t) for t in out[:-1])
        yield SimpleNamespace(token=out[-1], decode_seconds=seconds, completion_tokens=len(out), accepted_tokens=0,
                              verify_steps=0)

    return generate


def compare(name: str, plain, lookup, prompt_sets) -> dict[str, dict]:
    """Plain and lookup decoding of the same engine, alternating prompt by prompt so that both see
    the same machine (a shared 2-core machine drifts by 20% between minutes)."""
    rows = {}
    for task, prompt_list in prompt_sets.items():
        sums = {"plain": [0.0, 0], "lookup": [0.0, 0]}
        same, accepted, verified = 0, 0, 0
        for prompt in prompt_list:
            a = measure(plain, prompt)
            b = measure(lookup, prompt)
            sums["plain"][0] += a[1]
            sums["plain"][1] += a[2]
            sums["lookup"][0] += b[1]
            sums["lookup"][1] += b[2]
            same += a[0] == b[0]
            accepted, verified = accepted + b[3], verified + b[4]
        plain_rate, lookup_rate = (sums[k][1] / sums[k][0] for k in ("plain", "lookup"))
        rows[task] = {"engine": name, "task": task, "plain_tok_s": round(plain_rate, 1),
                      "lookup_tok_s": round(lookup_rate, 1), "speedup": round(lookup_rate / plain_rate, 2),
                      "mean_accepted_length": round(accepted / verified, 2) if verified else None,
                      "same_tokens": round(same / len(prompt_list), 2)}
        print(rows[task], flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    import torch
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from runtime.backends.torch_backend import TorchBackend
    from runtime.events import SamplingParams
    from runtime.model_ref import resolve_model

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    source = resolve_model(args.model)
    if source.format != "gguf":
        raise SystemExit("error: --model must be a .gguf file (llama.cpp runs it as the peer)")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    rows = []
    prompt_sets, stop_ids = None, None
    for name, dtype, quant in (("torch-float32", "float32", "none"), ("torch-int4", "auto", "int4")):
        plain = TorchBackend.load(args.model, dtype=dtype, quant=quant)
        lookup = TorchBackend(plain.loaded, speculative="lookup", draft_max=args.draft_max)  # the same weights
        prompt_sets = prompt_sets or prompts(plain, args.prompts)
        stop_ids = plain.stop_token_ids
        rows += compare(name, lambda p, b=plain: b.generate_tokens(p, params),
                        lambda p, b=lookup: b.generate_tokens(p, params), prompt_sets).values()
    llamas = []
    for draft in (None, LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=args.draft_max)):
        # With a draft model llama-cpp-python keeps every position's logits, but sizes its buffer for them
        # only when logits_all is asked for (without it, a prompt past n_batch tokens overruns the buffer).
        llamas.append(Llama(model_path=str(source.path), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                            verbose=False, draft_model=draft, logits_all=draft is not None))
    rows += compare("llama.cpp", *(llama_generator(llm, args.max_tokens, stop_ids) for llm in llamas),
                    prompt_sets).values()

    result = {"command": bench_command("speculative"), "source": source_version(), "machine": machine(),
              "threads": threads, "model": source.label, "prompts_per_task": args.prompts,
              "max_tokens": args.max_tokens, "draft_max": args.draft_max, "rows": rows}
    write_json(args.out, result)
    print("| engine | task | plain tok/s | lookup tok/s | speedup | mean accepted length | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        accepted = row["mean_accepted_length"]
        print(f"| {row['engine']} | {row['task']} | {row['plain_tok_s']} | {row['lookup_tok_s']} | {row['speedup']}x | "
              f"{accepted if accepted is not None else ''} | {row['same_tokens']} |")
    return 0


if __name__ == "__main__":
    import benchmarks.speculative as module

    script_main(module)
