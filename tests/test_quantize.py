"""Weight-only int8 / int4 quantization (runtime/quantize.py) on tiny random MiniCPM4 checkpoints.

The reference for a quantized model is its fake-quantized twin: the same float model with every
quantized linear's weight replaced by what the quantized layer holds (dequantized()). The kernels
multiply in bfloat16, so the twin runs in bfloat16 too and the two must agree to bf16 rounding.
"""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from runtime.loading import load_torch_model
from runtime.quantize import Int4Linear, Int8Linear, QuantizationError, describe, quantize_model

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11, 300, 64, 128, 9]])


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).float()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_model_computes_what_its_fake_quantized_twin_computes(tiny_minicpm, mode):
    model = load_torch_model(str(tiny_minicpm), dtype="float32").model
    dense = logits(model)
    report = quantize_model(model, mode, keep_reference=True)
    quantized = logits(model)

    twin = load_torch_model(str(tiny_minicpm), dtype="bfloat16").model
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (Int8Linear, Int4Linear))}
    # q/k/v and gate/up are fused: 4 products per block where there were 7, plus the lm_head
    assert len(layers) == 3 * 4 + 1 and report["quantized"] == 3 * 7 + 1
    assert model.model.layers[0].self_attn.qkv_proj.fused_from == [("q_proj", 128), ("k_proj", 64), ("v_proj", 64)]
    with torch.no_grad():
        for name, layer in layers.items():
            parent, _, _ = name.rpartition(".")
            parts = getattr(layer, "fused_from", None) or [(name.rpartition(".")[2], layer.out_features)]
            weights = layer.dequantized().split([rows for _, rows in parts])
            for (part, _), weight in zip(parts, weights):
                twin.get_submodule(f"{parent}.{part}" if parent else part).weight.copy_(weight)
    fake = logits(twin)

    scale = dense.abs().max()
    assert (quantized - fake).abs().max() / scale < 2e-2  # bf16 rounding only
    assert (quantized - dense).abs().max() / scale > 1e-3  # the weights really changed...
    agree = (quantized.argmax(-1) == dense.argmax(-1)).float().mean()
    assert agree >= 0.75  # ...and a random tiny model still predicts mostly the same tokens


def test_int4_keeps_a_layer_the_kernel_cannot_take_in_float(tiny_minicpm):
    model = load_torch_model(str(tiny_minicpm), dtype="float32").model
    # A layer int4 cannot take: 100 output channels are not a multiple of 16.
    model.model.layers[0].mlp.up_proj = torch.nn.Linear(128, 100, bias=False)
    report = quantize_model(model, "int4")
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.up_proj, torch.nn.Linear) and report["kept_float"] == ["model.layers.0.mlp.up_proj (100, 128)"]
    assert isinstance(mlp.gate_proj, Int4Linear) and mlp.gate_up_proj is None  # not fused with a float layer
    assert isinstance(mlp.down_proj, Int4Linear)  # K = 320, 10 groups of 32
    assert isinstance(model.model.layers[1].mlp.gate_up_proj, Int4Linear)
    assert isinstance(model.lm_head, Int8Linear)  # the logits keep 8 bits under int4
    assert report["quantized"] == 3 * 7 - 1 + 1 and report["bytes_after"] < report["bytes_before"] / 2
    line = describe(report)
    assert "21 linear layers quantized (int4 in groups of 32, the lm_head int8)" in line and "1 kept in float" in line


def test_each_weight_lies_within_half_a_step_of_the_grid():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.linspace(0.1, 3.0, 64)[:, None]  # rows of very different ranges
    int8 = Int8Linear(w)
    step8 = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((int8.dequantized() - w).abs() <= step8 * 0.501 + 1e-6).all()
    int4 = Int4Linear(w, group_size=64)
    groups = w.reshape(64, 4, 64)
    step4 = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15
    error = (int4.dequantized().reshape(64, 4, 64) - groups).abs()
    # half a step, the step being the bf16-rounded scale; a group's ends may sit a rounding further out
    assert (error <= step4 * 0.51 + 1e-6).all()


def test_weights_already_on_a_q4_1_grid_come_back_up_to_scale_rounding():
    """A Q4_1 block is q * d + m, q in 0..15; int4 with groups of 32 finds the same grid."""
    torch.manual_seed(1)
    d, m = torch.rand(32, 8, 1) * 0.1 + 0.01, torch.randn(32, 8, 1)
    q = torch.randint(0, 16, (32, 8, 32))
    q[..., 0], q[..., 1] = 0, 15  # every block uses its whole range, as real weights do
    w = (q * d + m).reshape(32, 256)
    back = Int4Linear(w).dequantized()
    assert (back - w).abs().max() / w.abs().max() < 1e-2
    ranks = torch.round((back.reshape(32, 8, 32) - m) / d)
    assert torch.equal(ranks.long(), q)  # every weight keeps its level


def test_unknown_modes_and_group_sizes_are_refused(tiny_minicpm):
    model = load_torch_model(str(tiny_minicpm), dtype="float32").model
    with pytest.raises(QuantizationError, match="unknown quantization 'int3'"):
        quantize_model(model, "int3")
    with pytest.raises(QuantizationError, match="group size must be one of 32, 64, 128, 256"):
        quantize_model(model, "int4", group_size=48)
    with pytest.raises(QuantizationError, match="unknown quantization"):
        load_torch_model(str(tiny_minicpm), quant="fp4")


def test_generate_with_quant_on_the_cli(tiny_minicpm, embedded_path):
    result = run_cli("generate", "--model", str(tiny_minicpm), "--backend", "auto", "--quant", "int8",
                     "--prompt", "hello", "--max-tokens", "5", "--temperature", "0", "--verbose")
    assert result.returncode == 0, result.stderr
    assert "--backend auto chose torch" in result.stderr
    assert "22 linear layers quantized (int8, per channel)" in result.stderr
    # A GGUF on llama.cpp keeps its own quantization, and says so; auto picks torch for --quant.
    result = run_cli("generate", "--model", str(embedded_path), "--backend", "gguf", "--quant", "int4",
                     "--prompt", "hi", "--max-tokens", "2")
    assert result.returncode == 0 and "--quant int4 is the torch backend's" in result.stderr
    result = run_cli("generate", "--model", str(embedded_path), "--backend", "auto", "--quant", "int4",
                     "--prompt", "hi", "--max-tokens", "2", "--temperature", "0", "--verbose")
    assert result.returncode == 0, result.stderr
    assert "--quant int4: the torch runtime quantizes the weights on load" in result.stderr
    assert "211 linear layers quantized (int4" in result.stderr
