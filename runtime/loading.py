"""Load a model reference into the torch runtime: model, tokenizer and what the user should know."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from runtime.config import ModelConfig
from runtime.errors import UnsupportedModelError
from runtime.model import CausalLM
from runtime.model_ref import ModelSource, resolve_model
from runtime.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Below this many parameters float32 is both affordable and, on CPU, usually not slower.
AUTO_BF16_ABOVE = 2_000_000_000


@dataclass
class LoadedModel:
    model: CausalLM
    tokenizer: Tokenizer
    source: ModelSource
    notices: list[str] = field(default_factory=list)  # what the user must know, always shown
    details: list[str] = field(default_factory=list)  # how it was loaded, shown with --verbose

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def parameter_count(config: ModelConfig) -> int:
    c = config
    attn = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    embed = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    return c.num_hidden_layers * (attn + mlp) + embed


def choose_dtype(name: str, config: ModelConfig) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if parameter_count(config) > AUTO_BF16_ABOVE else torch.float32
    if name not in DTYPES:
        raise UnsupportedModelError(f"unknown dtype '{name}' (choose auto, float32 or bfloat16)")
    return DTYPES[name]


def load_tokenizer(ref: str | None) -> tuple[Tokenizer, ModelConfig]:
    """The tokenizer and config of a model reference, without reading its weights."""
    from runtime.checkpoint import load_hf_config

    source = resolve_model(ref)
    if source.format == "gguf":
        from runtime.gguf_model import GGUFModelFile

        gguf_file = GGUFModelFile(source.path)
        config = gguf_file.config()
        return Tokenizer.from_gguf(gguf_file.metadata, source.path.name, config.eos_token_id), config
    config = load_hf_config(source.path)
    return Tokenizer.from_hf_folder(source.path, config.eos_token_id), config


def load_torch_model(ref: str | None, dtype: str = "auto", quant: str = "none", pack_ternary: bool = True,
                     adapter: str | None = None) -> LoadedModel:
    """Resolve `ref` (see runtime/model_ref.py) and load it for the torch runtime; quant: none | int8 |
    int4 quantizes the linear layers' weights once they are loaded (runtime/quantize.py). A BitCPM
    checkpoint (ternary weights, fake-quantized) is recognised and packed to 2 bits per weight
    (runtime/ternary.py) unless pack_ternary is False (the benchmark's unpacked reference).
    adapter: a LoRA adapter (folder or shipped name, runtime/adapter.py) merged into the float
    weights before any packing or quantization."""
    from runtime.quantize import QUANT_MODES, QuantizationError

    if quant not in QUANT_MODES:
        raise QuantizationError(f"unknown quantization '{quant}' (choose {', '.join(QUANT_MODES)})")
    from runtime.checkpoint import (
        build_model,
        load_hf_config,
        read_safetensors,
        safetensors_files,
    )

    source = resolve_model(ref)
    notices: list[str] = []
    details: list[str] = []
    if source.format == "gguf":
        from runtime.gguf_model import GGUFModelFile

        gguf_file = GGUFModelFile(source.path)
        config = gguf_file.config()
        tokenizer = Tokenizer.from_gguf(gguf_file.metadata, source.path.name, config.eos_token_id)
        torch_dtype = choose_dtype(dtype, config)
        model = build_model(config, gguf_file.weights(config, torch_dtype), torch_dtype)
        quantized = sorted({t.tensor_type.name for t in gguf_file.tensors.values()} - {"F32", "F16", "BF16"})
        if quantized:
            details.append(
                f"{', '.join(quantized)} weights dequantized to {str(torch_dtype).removeprefix('torch.')} "
                "for the torch runtime (llama.cpp keeps them quantized: --backend gguf)"
            )
    else:
        config = load_hf_config(source.path)
        tokenizer = Tokenizer.from_hf_folder(source.path, config.eos_token_id)
        torch_dtype = choose_dtype(dtype, config)
        model = build_model(config, read_safetensors(safetensors_files(source.path)), torch_dtype)
    details.append(f"torch runtime in {str(model.dtype).removeprefix('torch.')}")
    if adapter is not None:
        from runtime.adapter import load_adapter, merge_adapter

        lora = load_adapter(adapter, config)
        merge_adapter(model, lora)
        details.append(f"LoRA adapter {lora.path} (rank {lora.settings.r}, {len(lora.tensors)} projections) "
                       "merged into the weights")
    from runtime import ternary

    groups = ternary.detect(model) if pack_ternary else None
    if groups:  # BitCPM: packing its ternary weights is exact, and smaller than int4
        details.append(ternary.describe(ternary.pack_model(model, groups)))
        if quant != "none":
            notices.append(f"--quant {quant} not applied: this checkpoint's weights are ternary (BitCPM), packed to "
                           "2 bits per weight without loss instead")
    elif quant != "none":
        from runtime.quantize import describe, quantize_model

        details.append(describe(quantize_model(model, quant)))
    return LoadedModel(model, tokenizer, source, notices, details)
