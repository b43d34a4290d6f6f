"""Tiny random MiniCPM4 (and Llama) checkpoints in HF layout, made by the tests themselves.

Every MiniCPM-specific knob is set away from its identity value so that a mistake in any of them
shows: scale_emb != 1, scale_depth != sqrt(L), dim_model_base != hidden_size, GQA, LongRoPE with
distinct short and long factors and max_position_embeddings > original (attention factor != 1).
The tokenizer is a real byte-fallback BPE (SentencePiece style, like MiniCPM4's) trained on a
few paragraphs of English.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.common import (
    ENGLISH_TEXT,  # the same public-domain English text the benchmarks read
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]


def training_text() -> str:
    return ENGLISH_TEXT.read_text(encoding="utf-8")


def write_tokenizer(folder: Path, vocab_size: int = 600, kind: str = "sentencepiece") -> int:
    """tokenizer.json + tokenizer_config.json; returns the vocabulary size.

    kind: "sentencepiece" (byte-fallback BPE, like MiniCPM4's), or a byte-level BPE with GPT-2's
    pre-tokenizer ("gpt2") or with digits split one by one first ("smollm", like SmolLM2's).
    """
    if kind != "sentencepiece":
        return write_byte_level_tokenizer(folder, vocab_size, digits=(kind == "smollm"))
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + BYTES, show_progress=False)
    tok.train_from_iterator(training_text().splitlines(), trainer)
    # Encode like a converted SentencePiece tokenizer: no pre-splitting, bytes as fallback.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)
    ])
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    data = json.loads(tok.to_str())
    # The trainer registered the byte pieces as added tokens; they are ordinary vocabulary entries.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in BYTES]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tok.get_vocab_size(with_added_tokens=True)


def write_byte_level_tokenizer(folder: Path, vocab_size: int, digits: bool) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if digits else byte_level
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text().splitlines(), trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False, "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tok.get_vocab_size(with_added_tokens=True)


def tiny_config(vocab_size: int, *, minicpm: bool = True, tied: bool = False, **overrides) -> dict:
    head_dim = overrides.get("hidden_size", 128) // overrides.get("num_attention_heads", 4)
    gen = torch.Generator().manual_seed(7)
    short = (1.0 + torch.rand(head_dim // 2, generator=gen)).tolist()
    long = (2.0 + 6.0 * torch.rand(head_dim // 2, generator=gen)).tolist()
    config = {
        "architectures": ["MiniCPMForCausalLM" if minicpm else "LlamaForCausalLM"],
        "model_type": "minicpm" if minicpm else "llama",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 320,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": [2, vocab_size - 1],
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if minicpm:
        config.update({
            "scale_emb": 12,
            "scale_depth": 1.4,
            "dim_model_base": 32,
            # original 256 (a multiple of llama.cpp's 256-token context padding) and max 1024.
            "rope_scaling": {"rope_type": "longrope", "short_factor": short, "long_factor": long,
                             "original_max_position_embeddings": 256},
        })
    config.update(overrides)
    return config


def random_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights scaled so that activations and logits stay O(1) through the layers."""
    gen = torch.Generator().manual_seed(seed)
    c = config
    hidden, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or hidden // heads

    def linear(out_dim, in_dim):
        return torch.randn(out_dim, in_dim, generator=gen) / in_dim**0.5

    def norm(dim):
        return 1.0 + 0.2 * torch.randn(dim, generator=gen)

    w = {"model.embed_tokens.weight": torch.randn(c["vocab_size"], hidden, generator=gen) * 0.5,
         "model.norm.weight": norm(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(hidden)
        w[p + "post_attention_layernorm.weight"] = norm(hidden)
        w[p + "self_attn.q_proj.weight"] = linear(heads * head_dim, hidden) * 2.0  # peaky attention
        w[p + "self_attn.k_proj.weight"] = linear(kv * head_dim, hidden) * 2.0
        w[p + "self_attn.v_proj.weight"] = linear(kv * head_dim, hidden)
        w[p + "self_attn.o_proj.weight"] = linear(hidden, heads * head_dim)
        w[p + "mlp.gate_proj.weight"] = linear(inter, hidden)
        w[p + "mlp.up_proj.weight"] = linear(inter, hidden)
        w[p + "mlp.down_proj.weight"] = linear(hidden, inter)
    if not c.get("tie_word_embeddings"):
        w["lm_head.weight"] = linear(c["vocab_size"], hidden) * 4.0
    return w


def make_checkpoint(
    folder: Path, *, minicpm: bool = True, tied: bool = False, shards: int = 1, seed: int = 0,
    tokenizer: str = "sentencepiece", **overrides,
) -> Path:
    """Write config.json, safetensors (optionally sharded with an index) and the tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, kind=tokenizer)
    config = tiny_config(vocab, minicpm=minicpm, tied=tied, **overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    weights = random_weights(config, seed)
    if shards == 1:
        save_file(weights, str(folder / "model.safetensors"))
    else:
        names = sorted(weights)
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: weights[n] for n in part}, str(folder / fname))
            weight_map.update({n: fname for n in part})
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder
