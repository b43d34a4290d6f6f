"""The InfLLM v2 CPU kernels (runtime/kernels/infllm_cpu.c: stage 1, block selection, and stage 2,
attention over the selected ranges): built on first use, called via ctypes. build_c_library also
builds the other C kernels (runtime/kernels/ternary_cpu.c, for runtime/ternary.py).

Why a small C library and not a torch extension: it needs no torch headers, no ninja and no
matching compiler ABI, builds in about a second with the C compiler every Linux machine with
Python headers has, and takes plain pointers. It is compiled for this CPU (-march=native) and
cached under the user's cache directory, keyed by the source, the compiler and the CPU's flags,
so a shared home directory never loads a library built for another machine.

Without a C compiler, or with MINICPM_CPU_KERNEL=0, the runtime says so once and uses the torch
implementation, which computes the same thing more slowly when queries choose different blocks.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from runtime.notices import notify_once

SOURCE = Path(__file__).parent / "kernels" / "infllm_cpu.c"
# -ffast-math for vectorised reductions and exp, but infinities stay: the selection marks blocks
# with +-inf. It is given to the compile step only: linking a shared library with it adds GCC's
# crtfastmath, which on load would switch the whole process to flush denormals to zero.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp", "-fPIC"]
LINK_FLAGS = ["-shared", "-fopenmp"]
_library: ctypes.CDLL | None = None
_failure: str | None = None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "minicpm-suite" / "kernels"


def _cpu_signature() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the processor name is the best key there is
        cpuinfo = ""
    flags = [line for line in cpuinfo.splitlines() if line.startswith("flags")]
    return flags[0] if flags else platform.processor() or platform.machine()


def find_c_compiler() -> str | None:
    """$CC, else cc or gcc on PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build_c_library(source: Path, compiler: str) -> Path:
    """Compile one of runtime/kernels/*.c for this CPU into the kernel cache (or return the cached
    library). Raises RuntimeError with the compiler's last error line."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256(
        source.read_bytes() + " ".join(COMPILE_FLAGS + LINK_FLAGS + version).encode() + _cpu_signature().encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    obj = tmp[: -len(".so")] + ".o"
    try:
        for cmd in ([compiler, *COMPILE_FLAGS, "-c", str(source), "-o", obj],
                    [compiler, *LINK_FLAGS, obj, "-o", tmp, "-lm"]):
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "compiler failed")
        os.replace(tmp, target)  # atomic: a concurrent build never sees half a library
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(obj).unlink(missing_ok=True)
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (with a one-time notice saying why and what runs instead)."""
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    if os.environ.get("MINICPM_CPU_KERNEL", "1") == "0":
        _failure = "MINICPM_CPU_KERNEL=0"
    else:
        compiler = find_c_compiler()
        if compiler is None:
            _failure = "no C compiler found (install gcc, or set CC)"
        else:
            try:
                lib = ctypes.CDLL(str(build_c_library(SOURCE, compiler)))
                for name in ("infllm_attend_ranges_f32", "infllm_attend_ranges_bf16"):
                    fn = getattr(lib, name)
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_int]
                for name in ("infllm_select_blocks_f32", "infllm_select_blocks_bf16"):
                    fn = getattr(lib, name)
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 18 + [ctypes.c_float, ctypes.c_int]
                lib.infllm_bf16_dot_products.restype = ctypes.c_int
                lib.infllm_bf16_dot_products.argtypes = []
                _library = lib
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _failure = f"building it failed ({exc})"
    if _library is None:
        notify_once(f"the InfLLM v2 CPU kernel is not available: {_failure}; sparse attention runs in "
                    "torch operations instead (same results, slower when queries choose different blocks)")
    return _library


def available(head_dim: int = 64, dtype: torch.dtype = torch.float32, groups: int = 1) -> bool:
    """Whether the kernels run here for this head dimension (up to 256), query heads per KV head (up
    to 32) and dtype (float32, bfloat16)."""
    return head_dim <= 256 and groups <= 32 and dtype in (torch.float32, torch.bfloat16) and library() is not None


def bf16_dot_products() -> bool:
    """Whether the kernels multiply bfloat16 directly (AVX512-BF16, for groups of 16 or 32 query
    heads with head_dim a multiple of 64: MiniCPM4's shapes) rather than widening to float32."""
    lib = library()
    return lib is not None and bool(lib.infllm_bf16_dot_products())


def attend_ranges(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """Each query attends its own key ranges.

    q: [Hkv, G, T, D] (float32 or bfloat16); k, v: [Hkv, S, D] with contiguous rows and the same
    head stride; ranges: [Hkv, T, R, 2] int64 half-open token ranges (empty ones allowed).
    Returns [Hkv, G, T, D]. Call only when available().
    """
    lib = library()
    hkv, g, t, d = q.shape
    if q.dtype not in (torch.float32, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"the InfLLM v2 CPU kernel takes float32 or bfloat16, got {q.dtype}")
    if k.stride(-1) != 1 or k.stride(-2) != d or v.stride() != k.stride():
        raise ValueError("keys and values need contiguous rows and the same strides")
    q = q.contiguous()
    ranges = ranges.to(torch.int64).contiguous()
    if ranges.numel() and (int(ranges.max()) > k.shape[1] or int(ranges.min()) < 0):
        raise ValueError(f"key ranges reach outside the {k.shape[1]} keys given")
    out = torch.empty_like(q)
    fn = lib.infllm_attend_ranges_f32 if q.dtype == torch.float32 else lib.infllm_attend_ranges_bf16
    status = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), ranges.data_ptr(),
                hkv, g, t, d, ranges.shape[2], k.stride(0), d**-0.5, torch.get_num_threads())
    if status == 2:
        raise MemoryError("the InfLLM v2 CPU kernel could not allocate its working memory")
    if status != 0:
        raise ValueError(f"the InfLLM v2 CPU kernel does not take {g} heads per group of dimension {d}")
    return out


def select_blocks(q: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor | None, q_start: int, kernels: list[tuple[int, int]],
                  block_size: int, init_blocks: int, local_blocks: int, n_blocks: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 as runtime.sparse_attention.select_blocks defines it, fused in C.

    q: [Hkv, G, T, D]; c1, c2: [Hkv, n, D] compressed keys with contiguous rows (c2 None: exact LSE);
    kernels: [(size, stride)] of C1 (and C2). Returns chosen [Hkv, T, keep] int64 and their scores
    [Hkv, T, keep] float32, as the torch function does. Call only when available().
    """
    lib = library()
    hkv, g, t, d = q.shape
    if q.dtype not in (torch.float32, torch.bfloat16) or c1.dtype != q.dtype:
        raise TypeError(f"the InfLLM v2 CPU kernel takes float32 or bfloat16, got {q.dtype}")
    for keys in (c1, c2):
        if keys is not None and (keys.stride(-1) != 1 or keys.stride(-2) != d):
            raise ValueError("compressed keys need contiguous rows")
    q = q.contiguous()
    chosen = torch.empty(hkv, t, keep, dtype=torch.int64)
    values = torch.empty(hkv, t, keep, dtype=torch.float32)
    (size1, stride1), (size2, stride2) = kernels[0], kernels[1] if len(kernels) > 1 else (0, 1)
    n2 = 0 if c2 is None else c2.shape[1]
    fn = lib.infllm_select_blocks_f32 if q.dtype == torch.float32 else lib.infllm_select_blocks_bf16
    status = fn(q.data_ptr(), c1.data_ptr(), c1.data_ptr() if c2 is None else c2.data_ptr(), chosen.data_ptr(),
                values.data_ptr(), hkv, g, t, d, c1.shape[1], c1.stride(0), n2, c1.stride(0) if c2 is None else c2.stride(0),
                q_start, size1, stride1, size2, stride2, block_size, init_blocks, local_blocks, n_blocks, keep,
                d**-0.5, torch.get_num_threads())
    if status == 2:
        raise MemoryError("the InfLLM v2 CPU kernel could not allocate its working memory")
    if status != 0:
        raise ValueError(f"the InfLLM v2 CPU kernel does not take {g} heads per group of dimension {d} "
                         f"(or {keep} blocks of {n_blocks})")
    return chosen, values
