"""BitCPM ternary weights: recognised on load, packed to 2 bits per weight, multiplied packed.

BitCPM4 ships fake-quantized checkpoints: bfloat16 tensors whose values lie on a scaled ternary grid
{-s, 0, +s} (../shared/reference/upstream-runtime.md section 5; BitCPM-CANN's quantizer takes one
s per group of weights, s = mean |W_group|). Nothing upstream runs them packed. Here:

- Detection: a linear weight [N, K] is ternary at group size g when every group of g consecutive
  inputs of every output row holds at most one nonzero magnitude. Sizes tried: the whole row, then
  256, 128, 64, 32 and 16. A checkpoint is BitCPM-style when every linear of its decoder (attention
  and MLP projections) is; the embeddings and the lm_head stay as they are. A quick look at a few
  rows rejects an ordinary checkpoint without reading all of it.
- Packing is lossless: two bit planes per row (t = +1, t = -1: 2 bits per weight) and one float32
  scale per group. q/k/v and gate/up are fused into one product each when their group sizes agree.
- The product (runtime/kernels/ternary_cpu.c): per group, the sum of the activations where t = +1
  less the sum where t = -1, times the scale; with AVX-512 the bit planes are the masks of masked
  adds. It runs for up to DECODE_ROWS activation rows (decode); a longer chunk (prefill) unpacks the
  layer's weights once and multiplies in torch, which is faster per row there.
- Without a C compiler every product unpacks first: same results, none of the speed (said once).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime import cpu_kernel
from runtime.notices import notify_once

SOURCE = Path(__file__).parent / "kernels" / "ternary_cpu.c"
GROUP_SIZES = (256, 128, 64, 32, 16)  # tried after the whole row
DECODE_ROWS = 16  # activation rows up to which the packed kernel runs; more unpack once per call
PROJECTIONS = (("self_attn", ("q_proj", "k_proj", "v_proj"), "qkv_proj"), ("self_attn", ("o_proj",), None),
               ("mlp", ("gate_proj", "up_proj"), "gate_up_proj"), ("mlp", ("down_proj",), None))

_library: ctypes.CDLL | None = None
_failure: str | None = None


def library() -> ctypes.CDLL | None:
    """The ternary kernel, built on first use, or None (with a one-time notice of why)."""
    global _library, _failure
    if _library is None and _failure is None:
        compiler = cpu_kernel.find_c_compiler()
        try:
            if compiler is None:
                raise RuntimeError("no C compiler found (install gcc, or set CC)")
            lib = ctypes.CDLL(str(cpu_kernel.build_c_library(SOURCE, compiler)))
            lib.ternary_matmul_f32.restype = ctypes.c_int
            lib.ternary_matmul_f32.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]
            _library = lib
        except (OSError, RuntimeError) as exc:
            _failure = str(exc)
            notify_once(f"the ternary CPU kernel is not available: {_failure}; ternary layers unpack their weights "
                        "for every product instead (same results, no speed-up)")
    return _library


def ternary_group(weight: torch.Tensor) -> int | None:
    """The group size at which weight [N, K] lies on a scaled ternary grid (K: one scale per row),
    or None. Sizes are multiples of 16, as the kernel needs."""
    n, k = weight.shape
    if k % 16:
        return None
    candidates = [k] + [g for g in GROUP_SIZES if g < k and k % g == 0]

    def on_grid(w: torch.Tensor, g: int) -> bool:
        mag = w.abs().float().reshape(w.shape[0], -1, g)
        top = mag.amax(-1)
        low = mag.masked_fill(mag == 0, float("inf")).amin(-1)
        return bool(((low == top) | (top == 0)).all())

    if not on_grid(weight[:4], 16):  # an ordinary weight fails here, on a few rows
        return None
    return next((g for g in candidates if on_grid(weight, g)), None)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """[N, K] bool -> [N, K / 8] uint8, bit j of byte b for column 8b + j."""
    n, k = mask.shape
    weights = (1 << torch.arange(8, dtype=torch.int32))
    return (mask.reshape(n, k // 8, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)


def unpack_bits(planes: torch.Tensor) -> torch.Tensor:
    """[N, K / 8] uint8 -> [N, K] bool (inverse of pack_bits)."""
    n, b = planes.shape
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((planes.unsqueeze(-1) >> shifts) & 1).bool().reshape(n, b * 8)


class TernaryLinear(nn.Module):
    """y = x @ w.T with w = scale[group] * t, t in {-1, 0, 1} in two bit planes (2 bits per weight)."""

    def __init__(self, weight: torch.Tensor, group_size: int):
        super().__init__()
        w = weight.detach().float()  # [N, K], on the grid (ternary_group found it so)
        n, k = w.shape
        self.out_features, self.in_features, self.group_size = n, k, group_size
        self.register_buffer("scale", w.abs().reshape(n, k // group_size, group_size).amax(-1).contiguous())  # [N, G]
        self.register_buffer("plus", pack_bits(w > 0).contiguous())  # [N, K/8]
        self.register_buffer("minus", pack_bits(w < 0).contiguous())

    def dequantized(self) -> torch.Tensor:
        """The float32 weight [N, K] the planes and scales stand for (equal to the checkpoint's)."""
        t = unpack_bits(self.plus).float() - unpack_bits(self.minus).float()
        return t * self.scale.repeat_interleave(self.group_size, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [..., K]
        rows = x.reshape(-1, self.in_features)
        lib = library() if rows.shape[0] <= DECODE_ROWS else None
        if lib is None:
            return F.linear(x, self.dequantized().to(x.dtype))
        rows = rows.float().contiguous()
        out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32)
        status = lib.ternary_matmul_f32(rows.data_ptr(), self.plus.data_ptr(), self.minus.data_ptr(),
                                        self.scale.data_ptr(), out.data_ptr(), rows.shape[0], self.out_features,
                                        self.in_features, self.group_size, torch.get_num_threads())
        if status != 0:
            raise ValueError(f"the ternary kernel does not take K={self.in_features}, group {self.group_size}")
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def weight_bytes(self) -> int:
        return self.plus.numel() + self.minus.numel() + self.scale.numel() * self.scale.element_size()


def detect(model: nn.Module) -> dict[str, int] | None:
    """{linear name: group size} when every decoder projection of `model` (runtime.model.CausalLM)
    is ternary, else None."""
    found = {}
    for i, block in enumerate(model.model.layers):
        for parent_name, names, _ in PROJECTIONS:
            parent = getattr(block, parent_name)
            for name in names:
                linear = getattr(parent, name, None)
                if not isinstance(linear, nn.Linear) or linear.bias is not None:
                    return None
                group = ternary_group(linear.weight)
                if group is None:
                    return None
                found[f"model.layers.{i}.{parent_name}.{name}"] = group
    return found or None


def pack_model(model: nn.Module, groups: dict[str, int]) -> dict:
    """Replace the decoder projections that detect() found ternary with TernaryLinear, in place
    (q/k/v and gate/up fused where their group sizes agree). Returns layers and bytes before/after."""
    report = {"packed": 0, "bytes_before": 0, "bytes_after": 0, "group_sizes": sorted(set(groups.values()))}
    for i, block in enumerate(model.model.layers):
        for parent_name, names, fused_name in PROJECTIONS:
            parent = getattr(block, parent_name)
            linears = [getattr(parent, n) for n in names]
            sizes = {groups[f"model.layers.{i}.{parent_name}.{n}"] for n in names}
            report["bytes_before"] += sum(lin.weight.numel() * lin.weight.element_size() for lin in linears)
            if fused_name is not None and len(sizes) == 1:
                layer = TernaryLinear(torch.cat([lin.weight.detach() for lin in linears]), sizes.pop())
                setattr(parent, fused_name, layer)
                for n in names:
                    delattr(parent, n)
                report["bytes_after"] += layer.weight_bytes()
            else:
                for n, lin in zip(names, linears):
                    layer = TernaryLinear(lin.weight, groups[f"model.layers.{i}.{parent_name}.{n}"])
                    setattr(parent, n, layer)
                    report["bytes_after"] += layer.weight_bytes()
            report["packed"] += len(names)
    return report


def describe(report: dict) -> str:
    sizes = ", ".join(map(str, report["group_sizes"]))
    return (f"BitCPM ternary weights: {report['packed']} linear layers packed to 2 bits per weight (one scale per "
            f"{sizes} inputs): {report['bytes_before'] / 2**20:.1f} MB -> {report['bytes_after'] / 2**20:.1f} MB")
