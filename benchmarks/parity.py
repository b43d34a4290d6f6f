"""Parity of the torch runtime with llama.cpp (llama-cpp-python) on the embedded SmolLM2 weights.

Three comparisons, all over the same public-domain English text and the same prompts:
- `f32`: llama.cpp runs the embedded GGUF re-typed to F32, i.e. exactly the weights the torch
  runtime computes with (the Q4_1 blocks decoded bit-exactly), with an f32 KV cache. Both sides
  then compute in float32 throughout, which isolates the implementation.
- `q4_1`: llama.cpp runs the embedded Q4_1 file itself, with its quantized kernels (activations
  rounded to 8 bits inside every matmul) and its default f16 KV cache.
- `llama.cpp self`: llama.cpp on the Q4_1 file against itself with an f32 instead of an f16 KV
  cache: how much llama.cpp's own numerics move the argmax on this model. It is the noise floor
  against which the `q4_1` agreement is to be read.

Metrics: teacher-forced next-token argmax agreement over the text, and for each prompt the
number of leading greedy tokens (of 32) that agree, with the top-2 logit margin where they part.
Writes benchmarks/results/parity.json (or --out).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import ENGLISH_TEXT, RESULTS, script_main, write_json

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain photosynthesis in one paragraph.",
    "List three tips for staying focused while studying.",
    "What is 12 times 7?",
]
GREEDY_TOKENS = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=800, metavar="N", help="tokens of text to score (800)")
    parser.add_argument("--out", type=Path, default=RESULTS / "parity.json", help="where to write the JSON")


def llama(path: Path, n_ctx: int, f32_kv: bool = False):
    from llama_cpp import Llama

    kv = {"type_k": 0, "type_v": 0} if f32_kv else {}  # 0 = GGML_TYPE_F32
    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, **kv)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """[T, V] logits of llama.cpp for every position of ids."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def torch_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids]))[0].numpy()


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def greedy_llama(llm, prompt: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def greedy_torch(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with the runtime's KV cache, end-of-sequence ignored (fixed length)."""
    import torch

    cache = model.new_cache(capacity=len(prompt) + n)
    out = []
    with torch.inference_mode():
        logits = model(torch.tensor([prompt]), cache, last_logits_only=True)[0, -1]
        for _ in range(n):
            out.append(int(logits.argmax()))
            if len(out) < n:
                logits = model(torch.tensor([[out[-1]]]), cache, last_logits_only=True)[0, -1]
    return out


def compare_greedy(model, llm, tokenizer, prompts=PROMPTS, n=GREEDY_TOKENS) -> list[dict]:
    """Per prompt: how many leading greedy tokens agree, and llama.cpp's top-2 margin where they part."""
    rows = []
    for text in prompts:
        prompt = tokenizer.encode_chat([{"role": "user", "content": text}])
        ours, theirs = greedy_torch(model, prompt, n), greedy_llama(llm, prompt, n)
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), n)
        row = {"prompt": text, "agreeing_tokens": same, "of": n}
        if same < n:
            ctx = prompt + ours[:same]
            for name, logits in (("torch", torch_logits(model, ctx)[-1]), ("llama.cpp", llama_logits(llm, ctx)[-1])):
                top = np.sort(logits)[-2:]
                row[f"{name}_top2_margin"] = round(float(top[1] - top[0]), 4)
        rows.append(row)
    return rows


def measure(text_tokens: int = 800) -> dict:
    from runtime.convert import retype_gguf
    from runtime.loading import load_torch_model

    loaded = load_torch_model("default", dtype="float32")
    ids = loaded.tokenizer.encode(ENGLISH_TEXT.read_text(encoding="utf-8"))[:text_tokens]
    ours = torch_logits(loaded.model, ids)
    n_ctx = max(len(ids), 512) + GREEDY_TOKENS
    result = {"model": loaded.source.label, "text_tokens": len(ids)}
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = retype_gguf(loaded.source.path, Path(tmp) / "embedded-f32.gguf", "f32")
        llm = llama(f32_path, n_ctx, f32_kv=True)
        theirs = llama_logits(llm, ids)
        result["f32"] = {
            "argmax_agreement": agreement(ours, theirs),
            "max_abs_logit_diff": float(np.abs(ours - theirs).max()),
            "greedy": compare_greedy(loaded.model, llm, loaded.tokenizer),
        }
        del llm
    llm = llama(loaded.source.path, n_ctx)
    q4 = llama_logits(llm, ids)
    result["q4_1"] = {
        "argmax_agreement": agreement(ours, q4),
        "mean_abs_logit_diff": float(np.abs(ours - q4).mean()),
        "greedy": compare_greedy(loaded.model, llm, loaded.tokenizer),
    }
    q4_f32kv = llama_logits(llama(loaded.source.path, n_ctx, f32_kv=True), ids)
    result["llama_cpp_self"] = {
        "argmax_agreement_f16kv_vs_f32kv": agreement(q4, q4_f32kv),
        "mean_abs_logit_diff": float(np.abs(q4 - q4_f32kv).mean()),
    }
    return result


def run(args: argparse.Namespace) -> int:
    result = measure(args.tokens)
    write_json(args.out, result)
    print(f"text: {result['text_tokens']} tokens")
    print(f"f32 weights:  argmax agreement {result['f32']['argmax_agreement']:.4f}, "
          f"max |logit diff| {result['f32']['max_abs_logit_diff']:.2e}, greedy "
          f"{[g['agreeing_tokens'] for g in result['f32']['greedy']]} of {GREEDY_TOKENS}")
    print(f"Q4_1 file:    argmax agreement {result['q4_1']['argmax_agreement']:.4f}, greedy "
          f"{[g['agreeing_tokens'] for g in result['q4_1']['greedy']]} of {GREEDY_TOKENS}")
    print(f"llama.cpp vs itself (f16 vs f32 KV cache): {result['llama_cpp_self']['argmax_agreement_f16kv_vs_f32kv']:.4f}")
    return 0


if __name__ == "__main__":
    import sys

    script_main(sys.modules[__name__])
