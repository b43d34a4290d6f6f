"""BitCPM ternary weights: a fake-quantized checkpoint is recognised, packed to 2 bits per weight without
loss, and runs (packed kernel for decode, unpacked products for prefill) as the fake-quantized model does."""

import json

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file
from tiny_checkpoint import make_checkpoint

from runtime import ternary
from runtime.events import SamplingParams
from runtime.generate import stream_generate
from runtime.loading import load_torch_model
from runtime.ternary import TernaryLinear, pack_bits, ternary_group, unpack_bits

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ternarize(w: torch.Tensor, group: int) -> torch.Tensor:
    """BitCPM-CANN's quantizer: s = mean |W| per group, W_q = clamp(round(W / s), -1, 1) * s, in bf16."""
    n, k = w.shape
    groups = w.float().reshape(n, k // group, group)
    scale = groups.abs().mean(-1, keepdim=True).clamp(min=1e-8).bfloat16().float()  # representable in bf16
    return (groups / scale).round().clamp(-1, 1).mul(scale).reshape(n, k).bfloat16()


def make_bitcpm(folder, group: int | None = 32, spoil: str | None = None):
    """A tiny MiniCPM checkpoint whose decoder projections are fake-quantized ternary (bf16); group
    None: one scale per row; spoil: a projection left as it was (not ternary)."""
    make_checkpoint(folder, seed=4)
    weights = load_file(str(folder / "model.safetensors"))
    for name, tensor in weights.items():
        if name.endswith(".weight") and name.split(".")[-2] in PROJECTIONS and not name.endswith(spoil or "-"):
            weights[name] = ternarize(tensor, group or tensor.shape[1])
        else:
            weights[name] = tensor.bfloat16()
    save_file(weights, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def bitcpm(tmp_path_factory):
    return make_bitcpm(tmp_path_factory.mktemp("bitcpm") / "bitcpm")


def test_bit_planes_round_trip():
    mask = torch.rand(5, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    planes = pack_bits(mask)
    assert planes.shape == (5, 8) and planes.dtype == torch.uint8
    assert torch.equal(unpack_bits(planes), mask)
    assert pack_bits(torch.tensor([[True] + [False] * 6 + [True]])).tolist() == [[0b10000001]]


def test_the_grid_is_found_at_its_group_size():
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    assert ternary_group(ternarize(w, 128)) == 128  # one scale per row
    assert ternary_group(ternarize(w, 32)) == 32
    assert ternary_group(ternarize(w, 16)) == 16
    assert ternary_group(w) is None  # ordinary weights
    spoiled = ternarize(w, 32).clone()
    spoiled[40, 5] *= 1.5  # one weight off the grid, past the rows the quick look reads
    assert ternary_group(spoiled) is None
    assert ternary_group(torch.zeros(16, 24)) is None  # K not a multiple of 16: the kernel cannot take it


def test_a_bitcpm_checkpoint_is_packed_without_loss(bitcpm):
    packed = load_torch_model(str(bitcpm), dtype="float32")
    plain = load_torch_model(str(bitcpm), dtype="float32", pack_ternary=False)
    detail = next(d for d in packed.details if d.startswith("BitCPM"))
    assert "21 linear layers packed to 2 bits per weight (one scale per 32 inputs)" in detail
    block, reference = packed.model.model.layers[1], plain.model.model.layers[1]
    assert isinstance(block.self_attn.qkv_proj, TernaryLinear) and isinstance(block.mlp.down_proj, TernaryLinear)
    qkv = torch.cat([reference.self_attn.q_proj.weight, reference.self_attn.k_proj.weight, reference.self_attn.v_proj.weight])
    assert torch.equal(block.self_attn.qkv_proj.dequantized(), qkv.float())  # exact: the grid is the checkpoint's
    bf16_bytes = sum(getattr(reference.self_attn if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else reference.mlp,
                             n).weight.numel() * 2 for n in PROJECTIONS)
    packed_bytes = block.self_attn.qkv_proj.weight_bytes() + block.self_attn.o_proj.weight_bytes() + \
        block.mlp.gate_up_proj.weight_bytes() + block.mlp.down_proj.weight_bytes()
    assert packed_bytes * 5 < bf16_bytes  # 2 bits per weight and a float32 scale per 32: 16/3 times smaller


@pytest.mark.parametrize("kernel", [True, False])
def test_packed_outputs_match_the_fake_quantized_model(bitcpm, kernel, monkeypatch):
    if kernel:
        assert ternary.library() is not None, "this machine has a C compiler: the kernel must build"
    else:
        monkeypatch.setattr(ternary, "library", lambda: None)
    packed = load_torch_model(str(bitcpm), dtype="float32")
    plain = load_torch_model(str(bitcpm), dtype="float32", pack_ternary=False)
    ids = torch.randint(3, 500, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        # a 40-token prefill takes the unpacked products; the decode steps after it the packed kernel
        for model in (packed.model, plain.model):
            model.cache = model.new_cache(capacity=48)
        torch.testing.assert_close(packed.model(ids, packed.model.cache), plain.model(ids, plain.model.cache),
                                   atol=1e-4, rtol=1e-4)
        for token in (7, 99, 250):
            step = torch.tensor([[token]])
            torch.testing.assert_close(packed.model(step, packed.model.cache), plain.model(step, plain.model.cache),
                                       atol=1e-4, rtol=1e-4)


def test_the_kernel_computes_the_dequantized_product():
    w = ternarize(torch.randn(40, 96, generator=torch.Generator().manual_seed(3)), 32)
    layer = TernaryLinear(w, 32)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(layer(x), x @ w.float().T, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(layer(x.bfloat16()), (x @ w.float().T).bfloat16(), atol=3e-2, rtol=2e-2)


def test_greedy_generation_is_the_fake_quantized_models(bitcpm):
    packed = load_torch_model(str(bitcpm), dtype="float32")
    plain = load_torch_model(str(bitcpm), dtype="float32", pack_ternary=False)
    prompt = packed.tokenizer.encode("We hold these truths to be self-evident")
    params = SamplingParams(max_tokens=24, temperature=0)
    tokens = [[e.token for e in stream_generate(m.model, m.tokenizer, prompt, params) if e.token is not None]
              for m in (packed, plain)]
    assert tokens[0] == tokens[1]


def test_ordinary_and_partly_ternary_checkpoints_are_left_alone(tiny_minicpm, tmp_path):
    assert not any(d.startswith("BitCPM") for d in load_torch_model(str(tiny_minicpm)).details)
    partly = make_bitcpm(tmp_path / "partly", spoil="layers.2.mlp.down_proj.weight")
    loaded = load_torch_model(str(partly))
    assert not any(d.startswith("BitCPM") for d in loaded.details)
    assert isinstance(loaded.model.model.layers[0].mlp.down_proj, torch.nn.Linear)


def test_the_command_line_says_what_it_did(bitcpm, tmp_path):
    args = ["generate", "--raw", "--prompt", "We hold these truths", "--max-tokens", "4", "--temperature", "0",
            "--backend", "torch", "--verbose", "--model"]
    result = run_cli(*args, str(bitcpm))
    assert result.returncode == 0, result.stderr
    assert "BitCPM ternary weights: 21 linear layers packed to 2 bits per weight" in result.stderr
    rows = run_cli(*args, str(make_bitcpm(tmp_path / "per-row", group=None)), "--quant", "int4")
    assert rows.returncode == 0, rows.stderr
    assert "(one scale per 128, 320 inputs)" in rows.stderr  # whole rows: K is 128, or 320 for down_proj
    assert "--quant int4 not applied: this checkpoint's weights are ternary (BitCPM)" in rows.stderr
