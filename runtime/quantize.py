"""Weight-only int8 and int4 quantization of the linear layers, on the CPU kernels PyTorch ships.

Decode on the CPU reads every weight once per token, so its speed is the bytes of the weights: the
embedded model's linears are 270 MB per step in bfloat16 against about 90 MB in llama.cpp's file
(Q4_1 matrices and a Q8_0 output layer). Both
modes quantize only the weights, when the model loads. The kernels multiply in bfloat16 whatever the
model's dtype: their float32 path is a slow reference loop (measured on 2 AVX512 cores, one decode
step of the 576 x 49152 lm_head: float32 activations 24 ms in int4 against 0.44 ms in bfloat16), so
a layer casts its input to bfloat16 and its output back.

- int8: one symmetric scale per output channel, w = q * scale with q in [-127, 127];
  `torch.ops.aten._weight_int8pack_mm(x, q [N, K] int8, scale [N])`.
- int4: an asymmetric scale and zero point per group of `group_size` inputs (32 by default, the
  block of GGUF's Q4_0/Q4_1), w = (q - 8) * scale + zero with q in [0, 15];
  `torch.ops.aten._convert_weight_to_int4pack_for_cpu` packs q once, and
  `torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros [K/g, N, 2])`
  multiplies. A Q4_1 GGUF dequantized to float lies on such a grid already (q * d + m per block of
  32), so int4 with group 32 gives its weights back up to rounding of the scales.

The kernels need N divisible by 16 and K by the group size (32, 64, 128 or 256) for int4; a linear
that does not fit stays in float and the load details say how many did. Every quantized layer has a
float twin, `dequantized()`, that the tests use as the exact reference ("fake quantization").
The lm_head is quantized too (a tied one gets its own quantized copy; the embedding stays float),
in int8 also under int4: the logits are the most sensitive product of the model, which is why
llama.cpp's 4-bit files keep their output layer at 6 to 8 bits (the embedded Q4_1 GGUF holds it in
Q8_0). Measured on the embedded model (benchmarks/quantization.py): an int4 lm_head moved the
held-out perplexity from 61.5 to 65.5; int8 keeps it within a few tenths of float32.
"""

from __future__ import annotations

import torch
from torch import nn

from runtime.errors import MiniCPMError

QUANT_MODES = ("none", "int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
KERNEL_DTYPE = torch.bfloat16  # activations, scales and zero points inside the kernels


class QuantizationError(MiniCPMError):
    """A quantization mode or layer this runtime cannot run."""


def _kernel(name: str):
    op = getattr(torch.ops.aten, name, None)
    if op is None:
        raise QuantizationError(f"this PyTorch ({torch.__version__}) lacks torch.ops.aten.{name}, which --quant needs")
    return op


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T, q int8 [N, K], one scale per output channel."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()  # [N, K]
        # the scale as the kernel will read it (bf16), so that q is rounded against the grid it sees
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(KERNEL_DTYPE)  # [N]
        self.out_features, self.in_features = w.shape
        self.register_buffer("qweight", torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self._mm = _kernel("_weight_int8pack_mm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [..., K]
        out = self._mm(x.reshape(-1, self.in_features).to(KERNEL_DTYPE), self.qweight, self.scale)  # [M, N]
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale.float()[:, None]

    def weight_bytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * self.scale.element_size()


class Int4Linear(nn.Module):
    """y = x @ w.T with w = (q - 8) * scale + zero per group of `group_size` inputs, q packed 2 per byte."""

    def __init__(self, weight: torch.Tensor, group_size: int = 32):
        super().__init__()
        w = weight.detach().float()  # [N, K]
        n, k = w.shape
        self.out_features, self.in_features, self.group_size = n, k, group_size
        groups = w.reshape(n, k // group_size, group_size)  # [N, G, g]
        low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        # scale and zero point (the value of q = 8, the kernel's convention) as the kernel reads
        # them, in bf16; q is rounded against that grid
        scale = ((high - low) / 15.0).clamp(min=1e-12).to(KERNEL_DTYPE).float()  # [N, G, 1]
        zero = (low + 8.0 * scale).to(KERNEL_DTYPE).float()
        q = torch.round((groups - zero) / scale + 8.0).clamp(0, 15).to(torch.int32).reshape(n, k)
        # [G, N, 2]: the kernel's layout, scales and zero points side by side for each group
        scales_and_zeros = torch.stack([scale.squeeze(-1).t(), zero.squeeze(-1).t()], dim=-1).contiguous()
        self.register_buffer("qweight", _kernel("_convert_weight_to_int4pack_for_cpu")(q, 1))
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(KERNEL_DTYPE))
        self._q = q.to(torch.uint8)  # unpacked, for dequantized() only: N*K bytes, freed by compact()
        self._mm = _kernel("_weight_int4pack_mm_for_cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [..., K]
        out = self._mm(x.reshape(-1, self.in_features).to(KERNEL_DTYPE), self.qweight, self.group_size,
                       self.scales_and_zeros)  # [M, N]
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        if self._q is None:
            raise QuantizationError("this layer was compacted: its unpacked weights are gone")
        n, k, g = self.out_features, self.in_features, self.group_size
        sz = self.scales_and_zeros.float()  # [G, N, 2]
        scale, zero = sz[..., 0].t()[:, :, None], sz[..., 1].t()[:, :, None]  # [N, G, 1]
        q = self._q.float().reshape(n, k // g, g)
        return ((q - 8.0) * scale + zero).reshape(n, k)

    def compact(self) -> None:
        self._q = None

    def weight_bytes(self) -> int:
        return self.qweight.numel() + self.scales_and_zeros.numel() * self.scales_and_zeros.element_size()


def fits(mode: str, linear: nn.Linear, group_size: int) -> bool:
    """Whether the kernel for `mode` takes this layer's shape."""
    n, k = linear.weight.shape
    if mode == "int4":
        return n % 16 == 0 and k % group_size == 0
    return True


def quantize_model(model: nn.Module, mode: str, group_size: int = 32, keep_reference: bool = False) -> dict:
    """Replace the decoder's linear layers and the lm_head of `model` (runtime.model.CausalLM) with
    int8 or int4 ones, in place (q/k/v fused into the attention's qkv_proj, gate/up into the MLP's
    gate_up_proj). Returns what was done: layers quantized, layers left in float (and
    why), bytes of linear weights before and after. keep_reference: int4 layers keep their unpacked
    weights so dequantized() works (the tests' reference); otherwise they are freed."""
    if mode not in QUANT_MODES:
        raise QuantizationError(f"unknown quantization '{mode}' (choose {', '.join(QUANT_MODES)})")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise QuantizationError(f"the int4 group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))} "
                                f"(got {group_size})")
    if next(model.parameters()).device.type != "cpu" and mode != "none":
        raise QuantizationError("--quant int8/int4 runs on PyTorch's CPU kernels; this model is on "
                                f"{next(model.parameters()).device}")
    groups = decoder_groups(model.model.layers, "model.layers.")
    groups.append(("", model, ["lm_head"], None))
    return quantize_groups(groups, mode, group_size, keep_reference)


def decoder_groups(layers, prefix: str) -> list[tuple[str, nn.Module, list[str], str | None]]:
    """(parent module name, parent, its linears, the attribute that holds them fused) of decoder
    layers: q/k/v and gate/up share their input, so one product replaces three (two), the weights
    stacked along the outputs; with scales per output row (and per group along the inputs) that is
    the same quantization."""
    groups: list[tuple[str, nn.Module, list[str], str | None]] = []
    for i, block in enumerate(layers):
        name = f"{prefix}{i}."
        groups += [(name + "self_attn", block.self_attn, ["q_proj", "k_proj", "v_proj"], "qkv_proj"),
                   (name + "self_attn", block.self_attn, ["o_proj"], None),
                   (name + "mlp", block.mlp, ["gate_proj", "up_proj"], "gate_up_proj"),
                   (name + "mlp", block.mlp, ["down_proj"], None)]
    return groups


def quantize_groups(groups, mode: str, group_size: int = 32, keep_reference: bool = False) -> dict:
    """Quantize the linears of `groups` (see decoder_groups) in place; an lm_head keeps int8."""
    report = {"mode": mode, "group_size": group_size if mode == "int4" else None, "quantized": 0,
              "kept_float": [], "bytes_before": 0, "bytes_after": 0}
    if mode == "none":
        return report

    def quantized(weight: torch.Tensor, layer_mode: str) -> nn.Module:
        layer = Int8Linear(weight) if layer_mode == "int8" else Int4Linear(weight, group_size)
        if isinstance(layer, Int4Linear) and not keep_reference:
            layer.compact()
        return layer

    for parent_name, parent, names, fused_name in groups:
        linears = [getattr(parent, n) for n in names]
        layer_mode = "int8" if names == ["lm_head"] else mode  # the logits keep 8 bits (see above)
        before = sum(lin.weight.numel() * lin.weight.element_size() for lin in linears)
        report["bytes_before"] += before
        if not all(fits(layer_mode, lin, group_size) for lin in linears):
            for n, lin in zip(names, linears):
                if fits(layer_mode, lin, group_size):
                    layer = quantized(lin.weight, layer_mode)
                    setattr(parent, n, layer)
                    report["quantized"] += 1
                    report["bytes_after"] += layer.weight_bytes()
                else:
                    report["kept_float"].append(f"{parent_name + '.' if parent_name else ''}{n} {tuple(lin.weight.shape)}")
                    report["bytes_after"] += lin.weight.numel() * lin.weight.element_size()
            continue
        if fused_name is None:
            layer = quantized(linears[0].weight, layer_mode)
            setattr(parent, names[0], layer)
        else:
            layer = quantized(torch.cat([lin.weight.detach() for lin in linears]), layer_mode)
            layer.fused_from = [(n, lin.weight.shape[0]) for n, lin in zip(names, linears)]  # rows of each, in order
            setattr(parent, fused_name, layer)
            for n in names:
                delattr(parent, n)
        report["quantized"] += len(names)
        report["bytes_after"] += layer.weight_bytes()
    return report


def describe(report: dict) -> str:
    """One line for the load details: what --quant did."""
    if report["mode"] == "none":
        return "weights not quantized"
    grid = (f"int4 in groups of {report['group_size']}, the lm_head int8" if report["mode"] == "int4"
            else "int8, per channel")
    line = (f"{report['quantized']} linear layers quantized ({grid}): "
            f"{report['bytes_before'] / 2**20:.0f} MB of weights -> {report['bytes_after'] / 2**20:.0f} MB")
    if report["kept_float"]:
        line += f"; {len(report['kept_float'])} kept in float (shape not supported by the kernel)"
    return line
