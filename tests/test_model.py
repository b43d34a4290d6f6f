"""Invariants of the model file on tiny random MiniCPM4 checkpoints (in the spirit of transformers'
MiniCPM tests): weight names, each muP scale, float32 RoPE, LongRoPE, cache and dtype behaviour."""

import math

import pytest
import torch

from runtime.checkpoint import (
    build_model,
    load_hf_checkpoint,
    load_hf_config,
    read_safetensors,
    safetensors_files,
)
from runtime.convert import permute_rope_rows
from runtime.gguf_model import unpermute_rope_rows
from runtime.model import KVCache, RotaryEmbedding, apply_rope


@pytest.fixture(scope="module")
def model(tiny_minicpm):
    return load_hf_checkpoint(tiny_minicpm, torch.float32)


def ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 500, (1, n), generator=torch.Generator().manual_seed(seed))


def test_weight_names_are_exactly_the_hf_checkpoint_names(model, tiny_minicpm):
    stored = set(read_safetensors(safetensors_files(tiny_minicpm)))
    assert set(model.state_dict()) == stored
    assert "model.layers.2.self_attn.q_proj.weight" in stored and "lm_head.weight" in stored


def test_tied_head_shares_the_embedding(tiny_minicpm_tied):
    tied = load_hf_checkpoint(tiny_minicpm_tied, torch.float32)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()


def test_embedding_is_multiplied_by_scale_emb(model):
    seen = {}
    handle = model.model.layers[0].register_forward_pre_hook(lambda mod, args: seen.update(h0=args[0]))
    x = ids(5)
    try:
        model(x)
    finally:
        handle.remove()
    assert model.config.scale_emb == 12
    torch.testing.assert_close(seen["h0"], model.model.embed_tokens(x) * 12)


def test_residual_branches_are_scaled_by_scale_depth_over_sqrt_layers(model):
    layer = model.model.layers[1]
    expected_scale = 1.4 / math.sqrt(3)
    assert layer.residual_scale == pytest.approx(expected_scale)
    h = torch.randn(1, 6, 128)
    cos, sin = model.rotary(torch.arange(6), 6)
    attn = layer.self_attn(layer.input_layernorm(h), cos, sin, 1, None, 0)
    mid = h + attn * expected_scale
    expected = mid + layer.mlp(layer.post_attention_layernorm(mid)) * expected_scale
    torch.testing.assert_close(layer(h, cos, sin, None, 0), expected)


def test_logits_are_lm_head_of_normed_state_over_hidden_per_dim_model_base(model):
    seen = {}
    handle = model.model.norm.register_forward_hook(lambda mod, args, out: seen.update(h=out))
    try:
        logits = model(ids(4))
    finally:
        handle.remove()
    assert model.config.logit_divisor == pytest.approx(128 / 32)
    torch.testing.assert_close(logits, model.lm_head(seen["h"] / 4.0))
    assert logits.dtype == torch.float32


def test_rope_is_computed_in_float32_for_bfloat16_models(tiny_minicpm):
    """Against a float64 reference: rotating in float32 loses only the final rounding to bf16 (the
    best any bf16 output can do), while bf16 tables and products are clearly worse."""
    config = load_hf_config(tiny_minicpm)
    positions = torch.arange(20000, 20300)
    cos, sin = RotaryEmbedding(config)(positions, 256)  # a length within the original: short factors
    assert cos.dtype == sin.dtype == torch.float32
    x = torch.randn(1, 4, 300, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)

    def rotate(v, c, s):
        a, b = v.chunk(2, dim=-1)
        return v * c + torch.cat((-b, a), -1) * s

    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32))
    short = torch.tensor(config.rope_scaling["short_factor"], dtype=torch.float64)
    emb = torch.cat(((positions.double()[:, None] / short) * inv_freq,) * 2, -1)
    factor = config.rope_attention_factor
    exact = rotate(x.double(), emb.cos() * factor, emb.sin() * factor)
    error = lambda y: (y.double() - exact).abs().mean()
    best = error(exact.to(torch.bfloat16))
    assert error(apply_rope(x, cos, sin)) < 1.05 * best
    assert error(rotate(x, cos.to(torch.bfloat16), sin.to(torch.bfloat16))) > 1.4 * best


def test_longrope_picks_factors_by_sequence_length_and_scales_cos_sin(tiny_minicpm):
    config = load_hf_config(tiny_minicpm)
    rope = RotaryEmbedding(config)
    scaling = config.rope_scaling
    factor = math.sqrt(1 + math.log(1024 / 256) / math.log(256))
    assert config.rope_attention_factor == pytest.approx(factor)
    positions = torch.tensor([0, 1, 100])
    for seq_len, key in ((256, "short_factor"), (257, "long_factor")):
        cos, _ = rope(positions, seq_len)
        # Reference in float64, upstream's order: (pos / ext) * inv_freq.
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32))
        ext = torch.tensor(scaling[key], dtype=torch.float64)
        freqs = (positions.double()[:, None] / ext) * inv_freq
        expected = torch.cat((freqs, freqs), -1).cos() * factor
        torch.testing.assert_close(cos.double(), expected, atol=1e-5, rtol=1e-5)
    assert rope(torch.tensor([0]), 10)[0][0, 0] == pytest.approx(factor)


@pytest.mark.parametrize("length", [40, 300])  # under and over original_max_position_embeddings (256)
def test_cached_decoding_equals_an_uncached_forward(model, length):
    x = ids(length, seed=length)
    full = model(x)  # [1, T, V]
    cache = model.new_cache(capacity=length)
    pieces = [model(x[:, :23], cache)]  # chunked prefill, an odd chunk size
    pieces.append(model(x[:, 23:30], cache))
    for t in range(30, length):  # then one token at a time
        pieces.append(model(x[:, t : t + 1], cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-5, rtol=1e-5)
    assert cache.length == length


def test_last_logits_only_matches_the_full_forward(model):
    x = ids(12)
    torch.testing.assert_close(model(x, last_logits_only=True), model(x)[:, -1:])


def test_a_batch_equals_its_sequences_run_alone(model):
    a, b = ids(16, 1), ids(16, 2)
    batched = model(torch.cat([a, b]))
    torch.testing.assert_close(batched[0:1], model(a), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1:2], model(b), atol=2e-5, rtol=1e-5)


def test_cache_refuses_to_overflow(model):
    cache = model.new_cache(capacity=8)
    model(ids(6), cache)
    with pytest.raises(ValueError, match="holds 8 positions"):
        model(ids(3), cache)
    assert isinstance(cache, KVCache) and cache.length == 6


def test_bfloat16_stays_close_to_float32(embedded_torch, english_text):
    """On the embedded model's real weights: same greedy choices, logits within bf16 noise."""
    f32 = embedded_torch.model
    bf16 = build_model(f32.config, {k: v.clone() for k, v in f32.state_dict().items()}, torch.bfloat16)
    x = torch.tensor([embedded_torch.tokenizer.encode(english_text)[:256]])
    with torch.inference_mode():
        a, b = f32(x)[0], bf16(x)[0]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    assert ((a - b).abs().mean() / a.std()) < 0.05


def test_a_bfloat16_kv_cache_halves_the_cache_and_stays_close_to_float32(embedded_torch, english_text):
    """--kv-dtype bfloat16 on a float32 model: the cache takes half the bytes, attention runs in
    bfloat16 over it, and the logits stay within bfloat16 noise of the float32 cache's (same greedy
    choices almost everywhere), through chunked prefill and decode steps."""
    model = embedded_torch.model
    x = torch.tensor([embedded_torch.tokenizer.encode(english_text)[:200]])

    def cached_logits():
        cache = model.new_cache(capacity=x.shape[1])
        with torch.inference_mode():
            pieces = [model(x[:, :150], cache)] + [model(x[:, t : t + 1], cache) for t in range(150, x.shape[1])]
        return torch.cat(pieces, dim=1)[0], cache

    full, full_cache = cached_logits()
    model.kv_dtype = torch.bfloat16
    try:
        half, half_cache = cached_logits()
        with torch.inference_mode():  # the model still computes in float32 around the attention
            assert model.hidden_states(x[:, :8], model.new_cache(capacity=8)).dtype == torch.float32
    finally:
        model.kv_dtype = None
    assert half_cache.k.dtype == torch.bfloat16 and full_cache.k.dtype == torch.float32
    assert half_cache.k.nbytes * 2 == full_cache.k.nbytes
    assert (full.argmax(-1) == half.argmax(-1)).float().mean() > 0.9
    assert ((full - half).abs().mean() / full.std()) < 0.05
    assert not torch.equal(full, half)  # it did run in bfloat16


def test_sparse_attention_over_a_bfloat16_cache_of_a_float32_model(model):
    """InfLLM v2 on a bfloat16 cache (compressed keys in bfloat16 too) under a float32 model, chunked
    prefill then decode: close to the same model's float32 cache."""
    from runtime.sparse_attention import SparseSettings

    x = ids(300, seed=4)
    model.sparse = SparseSettings(kernel_size=8, kernel_stride=4, init_blocks=1, block_size=16, window_size=32,
                                  topk=3, dense_len=0)
    try:
        outs = []
        for kv_dtype in (None, torch.bfloat16):
            model.kv_dtype = kv_dtype
            cache = model.new_cache(capacity=300)
            pieces = [model(x[:, :250], cache)] + [model(x[:, t : t + 1], cache) for t in range(250, 300)]
            assert cache.compressed[0].keys(0).dtype == (kv_dtype or torch.float32)
            outs.append(torch.cat(pieces, dim=1)[0])
    finally:
        model.sparse, model.kv_dtype = None, None
    full, half = outs
    assert ((full - half).abs().mean() / full.std()) < 0.05


def test_llama_cpp_row_permutation_round_trips():
    w = torch.randn(4 * 32, 128)
    permuted = permute_rope_rows(w, 4)
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_rope_rows(permuted, 4), w)


def test_a_sharded_checkpoint_loads_like_a_single_file(tmp_path, model):
    from tiny_checkpoint import make_checkpoint

    sharded = load_hf_checkpoint(make_checkpoint(tmp_path / "sharded", shards=3), torch.float32)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    x = ids(10)
    torch.testing.assert_close(sharded(x), model(x))


def test_every_eos_id_of_the_config_stops_generation(tiny_minicpm):
    """MiniCPM4 stops on [2, 73440]; the tiny config has two EOS ids the same way."""
    from runtime.loading import load_torch_model

    loaded = load_torch_model(str(tiny_minicpm), dtype="float32")
    assert set(loaded.config.eos_token_id) == {2, loaded.config.vocab_size - 1}
    assert set(loaded.config.eos_token_id) <= loaded.tokenizer.stop_token_ids


def test_a_few_queries_on_a_cache_attend_as_sdpa_does():
    """The grouped-product path for 2-16 queries continuing a cache (speculative verification)."""
    from runtime.model import few_query_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 9, 5, 64, generator=gen), torch.randn(2, 3, 37, 64, generator=gen), torch.randn(2, 3, 37, 64, generator=gen)
    mask = torch.arange(37)[None, :] <= torch.arange(32, 37)[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(few_query_attention(q, k, v, 32), expected, atol=1e-5, rtol=1e-5)


def test_logits_of_a_few_rows_match_the_lm_head(tiny_minicpm):
    """float32 computes a few rows' logits as W @ h^T (faster with MKL); the values are lm_head's."""
    from runtime.loading import load_torch_model

    model = load_torch_model(str(tiny_minicpm), dtype="float32").model
    ids = torch.randint(3, 500, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(ids)  # 20 rows: lm_head itself
        cache = model.new_cache(capacity=20)
        model(ids[:, :16], cache)
        few = model(ids[:, 16:], cache)  # 4 rows continuing the cache: the other product and attention path
    torch.testing.assert_close(few, full[:, 16:], atol=1e-4, rtol=1e-4)
