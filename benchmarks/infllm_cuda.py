"""InfLLM v2 CUDA kernels against torch SDPA (flash) dense attention, on a GPU, measured in one run.

Part `kernel`: one attention layer of MiniCPM4-8B's shape (32 query heads, 2 KV heads, head_dim
128, bfloat16, random queries and keys) at 32K, 64K and 128K tokens, MiniCPM4-8B's sparse settings
with dense_len 0 (every query sparse, as upstream's kernel benchmark):
- prefill: every query of the sequence, causal. Dense: SDPA with the flash backend (keys and values
  expanded to 32 heads beforehand, outside the timing). Sparse: the key compression (C1 and C2 from
  the keys) plus both stages of the kernels.
- decode: one query against the whole cache. Dense: SDPA flash. Sparse: both stages (the compressed
  keys are already there, as in a decode step).
Part `model`: a random model with MiniCPM4-8B's shapes (32 layers, hidden 4096, intermediate 16384,
vocab 73448; bfloat16; random weights do not change the speed) decoding greedily from a KV cache
filled with random keys and values at 32K and 128K tokens: tokens/s with sparse attention (MiniCPM4-8B's
settings) against dense.

Needs a CUDA GPU with sm_80 or newer and nvcc (the kernels build on first use). Writes
benchmarks/results/infllm_cuda.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, bench_command, machine, script_main, source_version, write_json

MINICPM4_8B = {
    "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "vocab_size": 73448, "hidden_size": 4096,
    "intermediate_size": 16384, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 2,
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "bfloat16",
    "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 256,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", choices=("kernel", "model", "all"), default="all")
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768, 65536, 131072], metavar="N",
                        help="tokens for the kernel part")
    parser.add_argument("--model-contexts", type=int, nargs="+", default=[32768, 131072], metavar="N")
    parser.add_argument("--decode-tokens", type=int, default=32, metavar="N", help="decode steps timed per context")
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per kernel measurement")
    parser.add_argument("--out", type=Path, default=RESULTS / "infllm_cuda.json")


def gpu_time(fn, repeats: int) -> float:
    """Median seconds of fn() on the GPU (CUDA events), after two warm-up runs."""
    import statistics

    import torch

    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def kernel_part(args) -> list[dict]:
    import torch

    rows = []
    for n in args.contexts:
        rows.append(kernel_row(n, args.repeats))  # its tensors are freed when it returns
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    return rows


def kernel_row(n: int, repeats: int) -> dict:
    """Prefill and decode at n tokens: SDPA flash against the kernels, in milliseconds."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from runtime import cuda_kernel
    from runtime.sparse_attention import CompressedKeys, SparseSettings

    st = SparseSettings(dense_len=0)
    heads, kv_heads, d = 32, 2, 128
    gen = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(heads, n, d, generator=gen, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(kv_heads, n, d, generator=gen, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(kv_heads, n, d, generator=gen, device="cuda", dtype=torch.bfloat16)
    k32, v32 = (x.repeat_interleave(heads // kv_heads, dim=0)[None] for x in (k, v))  # flash takes equal heads
    qg = q.view(kv_heads, heads // kv_heads, n, d)

    def compress() -> CompressedKeys:
        compressed = CompressedKeys(st, 1, kv_heads, d, n, torch.bfloat16, "cuda")
        compressed.update(k[None])
        return compressed

    def dense_prefill():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q[None], k32, v32, is_causal=True)

    def sparse_prefill():  # the key compression counts: a prefill does it
        cuda_kernel.sparse_attention(qg, k, v, 0, compress())

    cached = compress()  # a decode step finds the compressed keys there
    q1 = q[:, -1:].contiguous()

    def dense_decode():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q1[None], k32, v32)

    def sparse_decode():
        cuda_kernel.sparse_attention(q1.view(kv_heads, heads // kv_heads, 1, d), k, v, n - 1, cached)

    row = {"context": n}
    for name, dense, sparse, times in (("prefill", dense_prefill, sparse_prefill, repeats),
                                       ("decode", dense_decode, sparse_decode, 10 * repeats)):
        row[f"{name}_dense_ms"] = round(1000 * gpu_time(dense, times), 3)
        row[f"{name}_sparse_ms"] = round(1000 * gpu_time(sparse, times), 3)
        row[f"{name}_speedup"] = round(row[f"{name}_dense_ms"] / row[f"{name}_sparse_ms"], 2)
    return row


def model_part(args) -> list[dict]:
    import torch

    from runtime.config import config_from_hf
    from runtime.model import CausalLM
    from runtime.sparse_attention import SparseSettings

    config = config_from_hf(MINICPM4_8B)
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = CausalLM(config).to(torch.bfloat16).eval()
    rows = []
    for n in args.model_contexts:
        row = {"context": n}
        for mode, sparse in (("dense", None), ("sparse", SparseSettings())):
            model.sparse = sparse
            cache = model.new_cache(capacity=n + args.decode_tokens + 2)
            gen = torch.Generator(device="cuda").manual_seed(n)
            cache.k[:, :, :, :n].normal_(generator=gen)  # a filled cache: the decode step's cost is the same
            cache.v[:, :, :, :n].normal_(generator=gen)
            cache.length = n
            token = torch.tensor([[5]], device="cuda")
            with torch.inference_mode():
                model(token, cache, last_logits_only=True)  # warm-up; a sparse model compresses the cache here
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.decode_tokens):
                    logits = model(token, cache, last_logits_only=True)
                    token = logits[:, -1].argmax(-1, keepdim=True)
                torch.cuda.synchronize()
            row[f"{mode}_tok_s"] = round(args.decode_tokens / (time.perf_counter() - start), 2)
            del cache
            torch.cuda.empty_cache()
        row["speedup"] = round(row["sparse_tok_s"] / row["dense_tok_s"], 2)
        rows.append(row)
        print(row, flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    import torch

    from runtime import cuda_kernel

    reason = cuda_kernel.unavailable_reason()
    if reason is not None:
        print(f"error: this benchmark needs the InfLLM v2 CUDA kernels, which cannot run here: {reason}", file=sys.stderr)
        return 1
    result = {
        "command": bench_command("infllm_cuda"),
        "source": source_version(),
        "machine": {**machine(), "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda},
        "settings": "MiniCPM4-8B: kernel 32/16, block 64, init 1, window 2048, topk 64 (96 blocks), LSE approximation on",
    }
    if args.part in ("kernel", "all"):
        result["kernel"] = kernel_part(args)
    if args.part in ("model", "all"):
        result["model"] = model_part(args)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    import benchmarks.infllm_cuda as module

    script_main(module)
