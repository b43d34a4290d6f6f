"""Config parsing: HF field names, unknown keys ignored, sparse_config kept, loud failures."""

import math

import pytest
from tiny_checkpoint import tiny_config

from runtime.config import SparseConfig, config_from_hf
from runtime.errors import ModelLoadError, UnsupportedModelError


def minicpm4_8b() -> dict:
    """MiniCPM4-8B's config.json fields as upstream documents them, plus keys we must ignore."""
    return {
        "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm",
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig"},
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 2,
        "intermediate_size": 16384, "hidden_act": "silu", "rms_norm_eps": 1e-6, "initializer_range": 0.1,
        "max_position_embeddings": 32768, "bos_token_id": 1, "eos_token_id": [2, 73440], "pad_token_id": 2,
        "vocab_size": 73448, "tie_word_embeddings": False, "scale_emb": 12, "scale_depth": 1.4,
        "dim_model_base": 256, "rope_theta": 10000.0, "torch_dtype": "bfloat16", "use_cache": True,
        "rope_scaling": {"rope_type": "longrope", "factor": 1.0, "long_factor": [1.0] * 64,
                         "short_factor": [1.0] * 64, "original_max_position_embeddings": 32768},
    }


def test_minicpm4_8b_config_derives_its_scales():
    cfg = config_from_hf(minicpm4_8b())
    assert cfg.head_dim == 128 and cfg.num_key_value_heads == 2
    assert cfg.embedding_scale == 12
    assert cfg.residual_scale == pytest.approx(1.4 / 32**0.5)  # 0.2475
    assert cfg.logit_divisor == pytest.approx(16.0)  # 4096 / 256
    assert cfg.eos_token_id == [2, 73440]
    assert cfg.rope_attention_factor == 1.0  # max_pos == original: not extended
    assert cfg.sparse_config is None


def test_llama_config_has_identity_scales():
    cfg = config_from_hf(tiny_config(600, minicpm=False))
    assert (cfg.embedding_scale, cfg.residual_scale, cfg.logit_divisor) == (1.0, 1.0, 1.0)


def test_sparse_config_is_parsed_with_upstream_defaults():
    raw = minicpm4_8b() | {"sparse_config": {"kernel_size": 32, "topk": 96, "use_nope": False, "future_key": 1}}
    sparse = config_from_hf(raw).sparse_config
    assert sparse == SparseConfig(topk=96)
    assert (sparse.kernel_stride, sparse.block_size, sparse.window_size, sparse.dense_len) == (16, 64, 2048, 8192)


def test_longrope_attention_factor_when_context_is_extended():
    raw = minicpm4_8b()
    raw["max_position_embeddings"] = 131072
    cfg = config_from_hf(raw)
    assert cfg.rope_attention_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(32768)))


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, UnsupportedModelError, "model_type 'qwen2'"),
        ({"scale_emb": None}, ModelLoadError, "scale_emb"),
        ({"num_key_value_heads": 3}, UnsupportedModelError, "not a multiple"),
        ({"hidden_act": "gelu"}, UnsupportedModelError, "gelu"),
        ({"attention_bias": True}, UnsupportedModelError, "attention_bias"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, UnsupportedModelError, "yarn"),
        ({"rope_scaling": {"rope_type": "longrope", "long_factor": [1.0] * 3, "short_factor": [1.0] * 64}},
         ModelLoadError, "long_factor"),
        ({"quantization_config": {"quant_method": "gptq"}}, UnsupportedModelError, "gptq"),
        ({"sparse_config": {"topk": "many"}}, ModelLoadError, "sparse_config.topk"),
        ({"hidden_size": None}, ModelLoadError, "hidden_size"),
        ({"rms_norm_eps": "1e-6"}, ModelLoadError, "rms_norm_eps"),
        ({"eos_token_id": [2, "73440"]}, ModelLoadError, "token ids"),
    ],
)
def test_configs_the_model_cannot_honour_fail_loudly(change, error, words):
    raw = minicpm4_8b()
    for key, value in change.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    with pytest.raises(error, match=words):
        config_from_hf(raw)
