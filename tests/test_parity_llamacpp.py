"""Parity with an implementation nobody here wrote: llama.cpp through llama-cpp-python.

Embedded SmolLM2: see benchmarks/parity.py for what each comparison isolates. Tiny random MiniCPM4
checkpoints: saved as HF safetensors, exported with `minicpm convert`, loaded by llama.cpp.
"""

import numpy as np
import pytest
import torch
from conftest import run_cli

from benchmarks.parity import GREEDY_TOKENS, llama, llama_logits, measure, torch_logits
from runtime.loading import load_torch_model

# Tolerance for float32 logits of the tiny models, relative to the spread (standard deviation) of
# the logits. Both engines compute in float32 with the same weights and differ only in summation
# order (SIMD dot products, softmax): about 1e-7 relative per operation, which over 3 layers gives
# the ~1e-5 x spread we observe. 1e-4 x spread leaves 10x headroom and is still 1000x below what a
# wrong scale or a swapped LongRoPE factor set does to these logits (the control below).
TINY_TOLERANCE = 1e-4


def assert_logits_match(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(ours, theirs, atol=TINY_TOLERANCE * theirs.std(), rtol=0)


@pytest.fixture(scope="module")
def parity():
    return measure(text_tokens=800)


def test_embedded_weights_agree_with_llama_cpp_on_every_position(parity):
    f32 = parity["f32"]
    assert parity["text_tokens"] >= 500
    assert f32["argmax_agreement"] >= 0.98
    assert f32["max_abs_logit_diff"] < 1e-3


def test_embedded_greedy_generations_agree_on_32_tokens(parity):
    assert [g["agreeing_tokens"] for g in parity["f32"]["greedy"]] == [GREEDY_TOKENS] * len(parity["f32"]["greedy"])


def test_the_q4_1_file_diverges_only_within_llama_cpps_own_noise(parity):
    """llama.cpp's Q4_1 kernels round activations to 8 bits inside every matmul, so on this file its
    argmax moves with its own settings: an f32 instead of an f16 KV cache alone changes ~6% of them.
    The torch runtime (exact on the decoded weights) must be no further from llama.cpp than that,
    and greedy runs may part only where llama.cpp's top two logits are closer than that noise."""
    q4, self_noise = parity["q4_1"], parity["llama_cpp_self"]
    assert q4["argmax_agreement"] >= self_noise["argmax_agreement_f16kv_vs_f32kv"] - 0.02
    for run in q4["greedy"]:
        if run["agreeing_tokens"] < GREEDY_TOKENS:
            assert run["llama.cpp_top2_margin"] < self_noise["mean_abs_logit_diff"], run


@pytest.fixture(scope="module", params=["untied", "tied"])
def converted(request, tiny_minicpm, tiny_minicpm_tied, tmp_path_factory):
    folder = tiny_minicpm if request.param == "untied" else tiny_minicpm_tied
    out = tmp_path_factory.mktemp("convert") / f"{request.param}.gguf"
    result = run_cli("convert", str(folder), str(out), "--outtype", "f32")
    assert result.returncode == 0, result.stderr
    return folder, out


@pytest.mark.parametrize("length, n_ctx", [(200, 256), (400, 512)])  # original_max_position_embeddings = 256
def test_converted_minicpm4_logits_match_llama_cpp(converted, english_text, length, n_ctx):
    folder, gguf_path = converted
    loaded = load_torch_model(str(folder), dtype="float32")
    ids = loaded.tokenizer.encode(english_text)[:length]
    ours = torch_logits(loaded.model, ids)
    theirs = llama_logits(llama(gguf_path, n_ctx, f32_kv=True), ids)
    assert_logits_match(ours, theirs)


def test_the_tiny_parity_check_would_catch_a_wrong_factor_set(converted, english_text):
    """Control: a 200-token sequence in a 512-token llama.cpp context uses the long factors there
    (llama.cpp picks them by context size) and the short ones here; the logits must then differ."""
    folder, gguf_path = converted
    loaded = load_torch_model(str(folder), dtype="float32")
    ids = loaded.tokenizer.encode(english_text)[:200]
    theirs = llama_logits(llama(gguf_path, 512, f32_kv=True), ids)
    assert np.abs(torch_logits(loaded.model, ids) - theirs).max() > 100 * TINY_TOLERANCE * theirs.std()


def test_converted_gguf_carries_minicpm_metadata(converted):
    folder, gguf_path = converted
    meta = llama(gguf_path, 256).metadata
    assert meta["general.architecture"] == "minicpm"
    assert float(meta["minicpm.embedding_scale"]) == 12.0
    assert float(meta["minicpm.residual_scale"]) == pytest.approx(1.4 / 3**0.5)
    assert float(meta["minicpm.logit_scale"]) == pytest.approx(4.0)
    assert meta["minicpm.rope.scaling.type"] == "longrope"


def test_converted_llama_checkpoint_matches_llama_cpp(tiny_llama, tmp_path, english_text):
    out = tmp_path / "llama.gguf"
    assert run_cli("convert", str(tiny_llama), str(out), "--outtype", "f32").returncode == 0
    loaded = load_torch_model(str(tiny_llama), dtype="float32")
    ids = loaded.tokenizer.encode(english_text)[:128]
    llm = llama(out, 256, f32_kv=True)
    assert llm.metadata["general.architecture"] == "llama"
    assert_logits_match(torch_logits(loaded.model, ids), llama_logits(llm, ids))


def test_q8_0_export_stays_close(tiny_minicpm, tmp_path, english_text):
    out = tmp_path / "q8.gguf"
    assert run_cli("convert", str(tiny_minicpm), str(out), "--outtype", "q8_0").returncode == 0
    exact = load_torch_model(str(tiny_minicpm), dtype="float32")
    requantized = load_torch_model(str(out), dtype="float32")  # the runtime reads its own Q8_0 export
    ids = exact.tokenizer.encode(english_text)[:64]
    with torch.inference_mode():
        a, b = torch_logits(exact.model, ids), torch_logits(requantized.model, ids)
    assert np.abs(a - b).max() < 0.05 * a.std()
