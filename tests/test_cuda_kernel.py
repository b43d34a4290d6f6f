"""The InfLLM v2 CUDA kernels: every .cu file compiles for sm_80 and sm_90 (nvcc is on this machine and
on CI), the loader checks what it loads and falls back with a notice, and, where a GPU is present, the
kernels select the reference's blocks and match its outputs."""

import ctypes
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from infllm_reference import reference_attention
from test_sparse_attention import SMALL, assert_same_selection, qkv

from runtime import cuda_kernel
from runtime.model import dense_attention
from runtime.sparse_attention import CompressedKeys, select_blocks, sparse_attention

KERNELS = sorted((Path(cuda_kernel.__file__).parent / "kernels").glob("*.cu"))
needs_nvcc = pytest.mark.skipif(cuda_kernel.find_nvcc() is None, reason="nvcc (the CUDA toolkit) is not installed")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The kernels as CI builds them: sm_80 and sm_90 machine code, plus sm_90 PTX."""
    if cuda_kernel.find_nvcc() is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    return cuda_kernel.build(cuda_kernel.CI_ARCHS, out_dir=tmp_path_factory.mktemp("cuda"))


def test_there_are_kernels_to_compile():
    assert [p.name for p in KERNELS] == ["infllm_cuda.cu"]


@needs_nvcc
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_every_cuda_source_compiles_for_sm80_and_sm90(source, tmp_path):
    library = cuda_kernel.build(cuda_kernel.CI_ARCHS, out_dir=tmp_path, source=source)
    assert library.stat().st_size > 0
    cuobjdump = Path(cuda_kernel.find_nvcc()).with_name("cuobjdump")
    if cuobjdump.is_file():  # where the toolkit has it: the machine code the library holds, by architecture
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(library)], capture_output=True, text=True)
        assert "sm_80" in listing.stdout and "sm_90" in listing.stdout


def test_the_library_exports_what_the_loader_declares(built):
    lib = cuda_kernel.open_library(built)  # also checks both argument structs against the C layout
    for name in ("infllm_cuda_select", "infllm_cuda_attend", "infllm_cuda_last_error", "infllm_cuda_versions"):
        assert hasattr(lib, name)


def test_a_struct_that_drifts_from_the_c_layout_is_refused(built, monkeypatch):
    class Drifted(ctypes.Structure):  # AttendArgs with one field lost
        _fields_ = [f for f in cuda_kernel.AttendArgs._fields_ if f[0] != "keep"]

    monkeypatch.setattr(cuda_kernel, "AttendArgs", Drifted)
    with pytest.raises(RuntimeError, match="Drifted does not match the library's layout"):
        cuda_kernel.open_library(built)


@needs_nvcc
def test_a_compile_error_is_reported_with_nvccs_message(tmp_path):
    broken = tmp_path / "broken.cu"
    broken.write_text("__global__ void k(float *x) { x[0] = undeclared_name; }\n")
    with pytest.raises(RuntimeError, match="nvcc failed: .*undeclared_name"):
        cuda_kernel.build(["sm_80"], out_dir=tmp_path, source=broken)


def test_architectures_are_checked_and_the_newest_ships_as_ptx():
    flags = cuda_kernel.gencode_flags(["sm_80", "sm_90"])
    assert flags == ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                     "-gencode", "arch=compute_90,code=compute_90"]
    with pytest.raises(ValueError, match="not a CUDA architecture: 'hopper'"):
        cuda_kernel.gencode_flags(["hopper"])


@needs_nvcc
def test_ahead_of_time_build_from_the_command_line(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "runtime.cuda_kernel", "build", "--arch", "sm_80", "--out", str(tmp_path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).is_file() and Path(ok.stdout.strip()).parent == tmp_path
    bad = subprocess.run([sys.executable, "-m", "runtime.cuda_kernel", "build", "--arch", "ampere", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "error: not a CUDA architecture: 'ampere'" in bad.stderr


@no_gpu
def test_without_a_gpu_the_library_loads_and_says_there_is_no_device(built):
    lib = cuda_kernel.open_library(built)
    runtime, driver = ctypes.c_int(), ctypes.c_int()
    assert lib.infllm_cuda_versions(ctypes.byref(runtime), ctypes.byref(driver)) <= 0
    assert runtime.value >= 12000  # built with CUDA 12 or newer
    assert lib.infllm_cuda_last_error().decode().startswith("cudaGetDeviceCount")


@no_gpu
def test_without_a_gpu_the_runtime_reports_it_and_runs_the_cpu_path(tiny_minicpm):
    script = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from runtime import cuda_kernel\n"
        "print(cuda_kernel.available(64, torch.bfloat16, 16), cuda_kernel.unavailable_reason())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False no GPU (torch ")
    assert result.stderr.count("the InfLLM v2 CUDA kernels are not available: no GPU") == 1  # said once
    assert "sparse attention runs on the CPU path instead" in result.stderr
    cli = run_cli("generate", "--raw", "--prompt", "hello there", "--max-tokens", "3", "--temperature", "0", "--backend", "torch", "--model",
                  str(tiny_minicpm), "--sparse", "on", "--sparse-dense-len", "16", "--sparse-window", "64")
    assert cli.returncode == 0, cli.stderr
    assert "the InfLLM v2 CUDA kernels are not available: no GPU" in cli.stderr
    dense = run_cli("generate", "--raw", "--prompt", "hello there", "--max-tokens", "3", "--temperature", "0", "--backend", "torch", "--model",
                    str(tiny_minicpm))
    assert "CUDA kernels" not in dense.stderr  # nothing to say when nothing asked for sparse attention


# --- on a GPU: the kernels against the reference ---------------------------------------------------------

def gpu_selection(q, k, q_start, st, dtype):
    """{(group, query): set of blocks} from the CUDA stage 1."""
    hkv, d = k.shape[0], k.shape[-1]
    kc = k.to("cuda", dtype)
    compressed = CompressedKeys(st, 1, hkv, d, k.shape[1], dtype, "cuda")
    compressed.update(kc[None])
    t = q.shape[1]
    chosen, values = cuda_kernel.select_blocks(q.to("cuda", dtype).reshape(hkv, -1, t, d), compressed, q_start, q_start + t)
    chosen, valid = chosen.cpu(), (values > float("-inf")).cpu()
    return {(g, i): set(chosen[g, i][valid[g, i]].tolist()) for g in range(hkv) for i in range(t)}


def gpu_attention(q, k, v, st, dtype, chunks, kernels: bool, monkeypatch):
    """The runtime's sparse attention on the GPU, chunk by chunk, with the kernels or with torch operations."""
    if not kernels:
        monkeypatch.setattr(cuda_kernel, "available", lambda *args: False)
    hkv, d = k.shape[0], k.shape[-1]
    qc, kc, vc = (x.to("cuda", dtype) for x in (q, k, v))
    compressed = CompressedKeys(st, 1, hkv, d, k.shape[1], dtype, "cuda")
    out, lo = [], 0
    for hi in chunks:
        compressed.update(kc[None, :, :hi])
        out.append(sparse_attention(qc[None, :, lo:hi], kc[None, :, :hi], vc[None, :, :hi], lo, compressed,
                                    dense_attention)[0])
        lo = hi
    monkeypatch.undo()
    return torch.cat(out, dim=1).float().cpu()


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("use_lse", [True, False])
@pytest.mark.parametrize("length", [300, 517])  # not multiples of the block size
def test_gpu_stage1_selects_the_reference_blocks(length, use_lse, dtype):
    st = dataclasses.replace(SMALL, use_lse=use_lse)
    q, k, v = qkv(6, 2, length, 64, seed=length)
    q, k = q.to(dtype).float(), k.to(dtype).float()  # the reference sees the values the GPU sees
    _, _, ref, ref_scores = reference_attention(q, k, v, 0, st)
    assert_same_selection(gpu_selection(q, k, 0, st, dtype), ref, ref_scores)


@needs_gpu
@pytest.mark.parametrize("heads,kv_heads,dim", [(6, 2, 64), (32, 2, 128), (4, 4, 128)])
@pytest.mark.parametrize("chunks", [[517], [37, 100, 301, 517], list(range(480, 518))])  # whole, chunked, decode
def test_gpu_outputs_match_the_reference_within_bf16(heads, kv_heads, dim, chunks, monkeypatch):
    q, k, v = qkv(heads, kv_heads, 517, dim, seed=heads + dim)
    q, k, v = (x.to(torch.bfloat16).float() for x in (q, k, v))
    q_start = chunks[0] if len(chunks) > 30 else 0
    ref, _, selections, _ = reference_attention(q, k, v, 0, SMALL)
    gpu_sel = gpu_selection(q, k, 0, SMALL, torch.bfloat16)
    same = [i for i in range(q_start, 517) if all(gpu_sel[g, i] == selections[g, i] for g in range(kv_heads))]
    assert len(same) >= (517 - q_start) - 5
    bounds = chunks if q_start == 0 else [q_start] + chunks[1:]
    out = gpu_attention(q, k, v, SMALL, torch.bfloat16, bounds, kernels=True, monkeypatch=monkeypatch)
    torch.testing.assert_close(out[:, same], ref[:, same].float(), atol=2e-2, rtol=2e-2)
    torch_ops = gpu_attention(q, k, v, SMALL, torch.bfloat16, bounds, kernels=False, monkeypatch=monkeypatch)
    # The torch operations round their logits to bfloat16 (the kernels keep float32): about 3e-2 apart.
    torch.testing.assert_close(out, torch_ops, atol=4e-2, rtol=2e-2)


@needs_gpu
def test_gpu_top_k_covering_every_block_is_dense_attention(monkeypatch):
    q, k, v = qkv(32, 2, 1500, 128, seed=7)
    every = dataclasses.replace(SMALL, block_size=64, kernel_size=32, kernel_stride=16, window_size=128, topk=1000)
    out = gpu_attention(q, k, v, every, torch.bfloat16, [1500], kernels=True, monkeypatch=monkeypatch)
    qc, kc, vc = (x.to("cuda", torch.bfloat16)[None] for x in (q, k, v))
    expected = dense_attention(qc, kc, vc, 0)[0].float().cpu()
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


@needs_gpu
def test_gpu_stage1_agrees_with_the_torch_path_at_minicpm4_8b_shape():
    """MiniCPM4-8B's settings and head layout, 12K keys: the kernels' selection is the torch path's
    on the same GPU, up to swaps at float32 ties."""
    from runtime.sparse_attention import SparseSettings

    st = SparseSettings(dense_len=0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 16, 64, 128, generator=gen, device="cuda").bfloat16()  # the last 64 queries
    k = torch.randn(2, 12_000, 128, generator=gen, device="cuda").bfloat16()
    compressed = CompressedKeys(st, 1, 2, 128, 12_000, torch.bfloat16, "cuda")
    compressed.update(k[None])
    fast, fast_values = cuda_kernel.select_blocks(q, compressed, 12_000 - 64, 12_000)
    slow, slow_values = select_blocks(q, compressed, 12_000 - 64, 12_000)
    same = (fast.sort(-1).values == slow.sort(-1).values).all(-1)
    assert same.float().mean() >= 0.99
    torch.testing.assert_close(fast_values, slow_values, rtol=1e-4, atol=0)


def test_the_gpu_benchmark_describes_minicpm4_8b_and_refuses_to_run_without_a_gpu():
    from benchmarks.infllm_cuda import MINICPM4_8B
    from runtime.config import config_from_hf

    config = config_from_hf(MINICPM4_8B)
    assert (config.head_dim, config.num_attention_heads // config.num_key_value_heads) == (128, 16)
    if torch.cuda.is_available():
        return
    result = run_cli("bench", "infllm_cuda", "--part", "kernel")
    assert result.returncode == 1
    assert "error: this benchmark needs the InfLLM v2 CUDA kernels, which cannot run here: no GPU" in result.stderr
