"""The InfLLM v2 CUDA kernels (runtime/kernels/infllm_cuda.cu): stage 1 (LSE, block scores,
top-k) and stage 2 (block-sparse attention with an online softmax, split for decode), built with
nvcc on first use and called via ctypes with device pointers.

Why a small C-ABI library and not a torch extension: torch.utils.cpp_extension builds CUDA code
only against a CUDA build of torch (its CUDA headers and libc10_cuda), and the torch this project
installs is the CPU build; yet CI must compile every kernel, and a user with a CUDA torch should get
the same library. The library needs only nvcc, links the CUDA runtime statically, and works on
torch's tensors in place: torch allocates every output and workspace (so memory stays in its caching
allocator) and passes its current stream, valid across runtimes because both use the device's
primary context. It is cached under the user's cache directory, keyed by the source, nvcc's version
and the target architectures; `python -m runtime.cuda_kernel build [--arch sm_80,sm_90]` builds it
ahead of time.

When the kernels cannot run (no GPU, a GPU older than sm_80, no nvcc, a failed build, a driver older
than the CUDA runtime), the runtime says so once, with the reason, and sparse attention runs in torch
operations instead: on the GPU when the model is there, else on the CPU path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from runtime.cpu_kernel import cache_dir
from runtime.notices import notify_once

SOURCE = Path(__file__).parent / "kernels" / "infllm_cuda.cu"
NVCC_FLAGS = ["-O3", "-std=c++17", "--shared", "-Xcompiler", "-fPIC"]
CI_ARCHS = ["sm_80", "sm_90"]  # what CI compiles for: A100 and H100/H200
DTYPES = {torch.bfloat16: 0, torch.float16: 1}
HEAD_DIMS = (64, 128)
MAX_GROUPS = 64  # query heads per KV head (rows of the kernels' tiles)
# Memory for stage 1's block scores ([Hkv, T, blocks] float32) at a time: queries go through in chunks.
SCORE_BYTES = 512 * 2**20

_library: ctypes.CDLL | None = None
_failure: str | None = None


class SelectArgs(ctypes.Structure):
    """InfllmSelectArgs in infllm_cuda.cu, field for field."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("q", "c1", "c2", "lse_max", "lse_sum", "block_score", "values", "chosen")] + [
        (name, ctypes.c_int64) for name in ("hkv", "groups", "tokens", "dim", "lse_splits", "n1", "c1_head_stride", "n2",
                                            "c2_head_stride", "q_start", "size1", "stride1", "size2", "stride2",
                                            "block_size", "init_blocks", "local_blocks", "n_blocks", "keep")
    ] + [("scale", ctypes.c_float), ("dtype", ctypes.c_int32)]


class AttendArgs(ctypes.Structure):
    """InfllmAttendArgs in infllm_cuda.cu, field for field."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("q", "k", "v", "out", "chosen", "values", "part_out", "part_max", "part_sum")] + [
        (name, ctypes.c_int64) for name in ("hkv", "groups", "tokens", "dim", "head_stride", "q_start", "block_size", "keep", "splits")
    ] + [("scale", ctypes.c_float), ("dtype", ctypes.c_int32)]


def find_nvcc() -> str | None:
    """$NVCC, nvcc on PATH, or the toolkit under $CUDA_HOME or /usr/local/cuda."""
    if os.environ.get("NVCC"):
        return os.environ["NVCC"]
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def gencode_flags(archs: list[str]) -> list[str]:
    """nvcc flags for machine code on each `sm_XY`, plus the newest one's PTX, which the driver
    compiles for GPUs newer than any of them."""
    flags = []
    for arch in archs:
        if not (arch.startswith("sm_") and arch[3:].isdigit()):
            raise ValueError(f"not a CUDA architecture: {arch!r} (expected sm_80, sm_90, ...)")
        flags += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    newest = max(archs, key=lambda a: int(a[3:]))[3:]
    return flags + ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]


def build(archs: list[str], nvcc: str | None = None, out_dir: Path | None = None, source: Path = SOURCE) -> Path:
    """Compile `source` (the kernels) for `archs` into a shared library, or return the cached one.
    Raises RuntimeError with nvcc's first error line when the build fails."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (install the CUDA toolkit, or set NVCC or CUDA_HOME)")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1:]
    flags = NVCC_FLAGS + gencode_flags(archs)
    key = hashlib.sha256(source.read_bytes() + " ".join(flags + version).encode()).hexdigest()[:16]
    target = (out_dir or cache_dir()) / f"{source.stem}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([nvcc, *flags, str(source), "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.strip().splitlines()
            raise RuntimeError(f"nvcc failed: {errors[0] if errors else 'no output'}")
        os.replace(tmp, target)  # atomic: a concurrent build never loads half a library
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _device_archs() -> list[str]:
    major, minor = torch.cuda.get_device_capability()
    return [f"sm_{major}{minor}"]


def _load() -> ctypes.CDLL:
    if os.environ.get("MINICPM_CUDA_KERNEL", "1") == "0":
        raise RuntimeError("MINICPM_CUDA_KERNEL=0")
    if not torch.cuda.is_available():
        reason = f"torch {torch.__version__} is a CPU build" if torch.version.cuda is None else "torch sees no CUDA device"
        raise RuntimeError(f"no GPU ({reason})")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise RuntimeError(f"the GPU is sm_{major}{minor}; the kernels need sm_80 or newer (bf16 tensor cores)")
    target = cache_dir() / "infllm_cuda-ahead"  # `python -m runtime.cuda_kernel build` without --out
    path = None
    if find_nvcc() is None and target.is_dir():  # no toolkit here: the newest library built ahead of time
        built = sorted(target.glob("infllm_cuda-*.so"), key=lambda p: p.stat().st_mtime)
        path = built[-1] if built else None
    if path is None:
        notify_once(f"building the InfLLM v2 CUDA kernels for {_device_archs()[0]} with nvcc (once; cached in {cache_dir()})")
        path = build(_device_archs())
    lib = open_library(path)
    runtime, driver = ctypes.c_int(), ctypes.c_int()
    if lib.infllm_cuda_versions(ctypes.byref(runtime), ctypes.byref(driver)) <= 0:
        raise RuntimeError(f"the kernels' CUDA runtime {runtime.value // 1000}.{runtime.value % 1000 // 10} cannot use "
                           f"this driver ({driver.value // 1000}.{driver.value % 1000 // 10}): "
                           f"{lib.infllm_cuda_last_error().decode()}")
    return lib


def open_library(path: Path) -> ctypes.CDLL:
    """Load a built kernel library and declare its functions; checks that the argument structs'
    ctypes mirrors have the C layout (a mismatch would pass garbage to the GPU)."""
    lib = ctypes.CDLL(str(path))
    lib.infllm_cuda_layout.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    for which, mirror in enumerate((SelectArgs, AttendArgs)):
        layout = (ctypes.c_int64 * 64)()
        n = lib.infllm_cuda_layout(which, layout, 64)
        expected = [ctypes.sizeof(mirror)] + [getattr(mirror, name).offset for name, _ in mirror._fields_]
        if list(layout[:n]) != expected:
            raise RuntimeError(f"{mirror.__name__} does not match the library's layout: {list(layout[:n])} != {expected}")
    lib.infllm_cuda_select.argtypes = [ctypes.POINTER(SelectArgs), ctypes.c_void_p]
    lib.infllm_cuda_attend.argtypes = [ctypes.POINTER(AttendArgs), ctypes.c_void_p]
    lib.infllm_cuda_select.restype = lib.infllm_cuda_attend.restype = ctypes.c_int
    lib.infllm_cuda_last_error.restype = ctypes.c_char_p
    lib.infllm_cuda_versions.argtypes = [ctypes.POINTER(ctypes.c_int)] * 2
    lib.infllm_cuda_versions.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (with a one-time notice saying why and what runs instead)."""
    global _library, _failure
    if _library is None and _failure is None:
        try:
            _library = _load()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _failure = str(exc)
            instead = "in torch operations on the GPU" if torch.cuda.is_available() else "on the CPU path"
            notify_once(f"the InfLLM v2 CUDA kernels are not available: {_failure}; sparse attention runs {instead} instead")
    return _library


def unavailable_reason() -> str | None:
    """Why the kernels cannot run here (None: they can); builds them on first call where they can."""
    library()
    return _failure


def available(head_dim: int, dtype: torch.dtype, groups: int) -> bool:
    """Whether the kernels run a model of this shape on this GPU: head_dim 64 or 128, bfloat16 or
    float16, at most 64 query heads per KV head. Anything else runs in torch operations, after a
    one-time notice naming what the kernels do not take."""
    if library() is None:
        return False
    problems = [what for what, bad in (
        (f"head_dim {head_dim} (they take {' or '.join(map(str, HEAD_DIMS))})", head_dim not in HEAD_DIMS),
        (f"{str(dtype).removeprefix('torch.')} (they take bfloat16 or float16)", dtype not in DTYPES),
        (f"{groups} query heads per KV head (they take 1 to {MAX_GROUPS})", not 1 <= groups <= MAX_GROUPS),
    ) if bad]
    if problems:
        notify_once(f"the InfLLM v2 CUDA kernels do not take {', '.join(problems)}; sparse attention runs in torch "
                    "operations on the GPU instead")
    return not problems


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"InfLLM v2 CUDA {what} failed (status {status}): {_library.infllm_cuda_last_error().decode()}")


def _rows_ok(x: torch.Tensor, d: int) -> bool:
    return x.stride(-1) == 1 and x.stride(-2) == d and x.data_ptr() % 16 == 0 and x.stride(0) % 8 == 0


def _splits(work_items: int, tasks: int, device: torch.device) -> int:
    """How many CTAs to split each item over so that the GPU has about two CTAs per SM."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tasks, -(-2 * sms // max(1, work_items))))


def select_blocks(q: torch.Tensor, compressed, q_start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 as runtime.sparse_attention.select_blocks defines it, on the GPU.

    q: [Hkv, G, T, D] (bfloat16 or float16, CUDA) at positions q_start .. q_start + T - 1; compressed:
    the layer's CompressedKeys (batch 1); length: keys in the sequence. Returns chosen [Hkv, T, K]
    int64 and values [Hkv, T, K] float32, K = min(topk + local blocks, blocks), as the torch path does.
    """
    st = compressed.settings
    hkv, g, t, d = q.shape
    q = q.contiguous()
    c1 = compressed.keys(0)[0]
    c2 = compressed.keys(1)[0] if st.use_lse else None
    for keys in (c1, c2):
        if keys is not None and keys.shape[1] and not _rows_ok(keys, d):
            raise ValueError("compressed keys need contiguous, 16-byte aligned rows")
    n_blocks = -(-length // st.block_size)
    keep = min(st.selected_blocks, n_blocks)
    (size1, stride1), (size2, stride2) = compressed.kernels[0], compressed.kernels[-1]
    n2 = 0 if c2 is None else c2.shape[1]
    per_cta = max(1, min(MAX_GROUPS // g, t))
    lse_splits = _splits(-(-t // per_cta) * hkv, max(1, -(-max(c1.shape[1], n2) // 64)), q.device)
    f32 = dict(dtype=torch.float32, device=q.device)
    lse_max = torch.empty(lse_splits, hkv, g, t, **f32)
    lse_sum = torch.empty(lse_splits, hkv, g, t, **f32)
    block_score = torch.empty(hkv, t, n_blocks, **f32)
    chosen = torch.empty(hkv, t, keep, dtype=torch.int64, device=q.device)
    values = torch.empty(hkv, t, keep, **f32)
    args = SelectArgs(
        q=q.data_ptr(), c1=c1.data_ptr(), c2=(c1 if c2 is None else c2).data_ptr(), lse_max=lse_max.data_ptr(),
        lse_sum=lse_sum.data_ptr(), block_score=block_score.data_ptr(), values=values.data_ptr(), chosen=chosen.data_ptr(),
        hkv=hkv, groups=g, tokens=t, dim=d, lse_splits=lse_splits, n1=c1.shape[1], c1_head_stride=c1.stride(0), n2=n2,
        c2_head_stride=(c1 if c2 is None else c2).stride(0), q_start=q_start, size1=size1, stride1=stride1,
        size2=size2, stride2=stride2, block_size=st.block_size, init_blocks=st.init_blocks,
        local_blocks=st.local_blocks, n_blocks=n_blocks, keep=keep, scale=d**-0.5, dtype=DTYPES[q.dtype],
    )
    _check(library().infllm_cuda_select(ctypes.byref(args), torch.cuda.current_stream(q.device).cuda_stream), "block selection")
    return chosen, values


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chosen: torch.Tensor, values: torch.Tensor,
           q_start: int, block_size: int) -> torch.Tensor:
    """Stage 2 on the GPU: each query attends the blocks select_blocks chose for it, causally.

    q: [Hkv, G, T, D]; k, v: [Hkv, S, D] with contiguous rows (the cache in place, same strides);
    chosen, values: [Hkv, T, K]. Returns [Hkv, G, T, D].
    """
    hkv, g, t, d = q.shape
    if not (_rows_ok(k, d) and v.stride() == k.stride() and v.data_ptr() % 16 == 0):
        raise ValueError("keys and values need contiguous, 16-byte aligned rows and the same strides")
    q = q.contiguous()
    chosen, values = chosen.contiguous(), values.contiguous()
    keep = chosen.shape[-1]
    splits = _splits(t * hkv, keep, q.device)  # decode: one query's blocks over many CTAs
    out = torch.empty_like(q)
    f32 = dict(dtype=torch.float32, device=q.device)
    parts = (torch.empty(splits, hkv, g, t, d, **f32), torch.empty(splits, hkv, g, t, **f32),
             torch.empty(splits, hkv, g, t, **f32)) if splits > 1 else (out, out, out)
    args = AttendArgs(
        q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(), chosen=chosen.data_ptr(),
        values=values.data_ptr(), part_out=parts[0].data_ptr(), part_max=parts[1].data_ptr(), part_sum=parts[2].data_ptr(),
        hkv=hkv, groups=g, tokens=t, dim=d, head_stride=k.stride(0), q_start=q_start, block_size=block_size, keep=keep,
        splits=splits, scale=d**-0.5, dtype=DTYPES[q.dtype],
    )
    _check(library().infllm_cuda_attend(ctypes.byref(args), torch.cuda.current_stream(q.device).cuda_stream), "attention")
    return out


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, compressed) -> torch.Tensor:
    """Every query of q sparse (the caller keeps the dense ones): q [Hkv, G, T, D] at positions
    q_start .. q_start + T - 1, k, v [Hkv, S, D] with S = q_start + T. Returns [Hkv, G, T, D].

    Queries go through in chunks whose block-score workspace stays under SCORE_BYTES; each chunk
    selects against the keys up to its last query, as the torch path's tiles do.
    """
    hkv, g, t, d = q.shape
    bs = compressed.settings.block_size
    n_blocks = -(-(q_start + t) // bs)
    step = max(1, SCORE_BYTES // (hkv * n_blocks * 4))
    outs = []
    for lo in range(0, t, step):
        hi = min(t, lo + step)
        chosen, values = select_blocks(q[:, :, lo:hi], compressed, q_start + lo, q_start + hi)
        outs.append(attend(q[:, :, lo:hi], k, v, chosen, values, q_start + lo, bs))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.cuda_kernel build [--arch sm_80,sm_90] [--out DIR]`: compile ahead of time."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runtime.cuda_kernel", description=main.__doc__)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--arch", default=None, help="comma-separated sm_XY list (default: this GPU, else sm_80,sm_90)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the library (default: the kernel cache)")
    args = parser.parse_args(argv)
    if args.arch:
        archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    else:
        archs = _device_archs() if torch.cuda.is_available() else CI_ARCHS
    try:
        path = build(archs, out_dir=args.out or cache_dir() / "infllm_cuda-ahead")
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
