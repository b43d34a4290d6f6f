"""A GGUF file read as a model for the torch runtime: config from metadata, weights dequantized.

Dequantization uses the `gguf` package (the reference implementation that ships with llama.cpp),
so every block format it knows is read exactly as llama.cpp stores it. llama.cpp's converter
permutes the rows of q_proj and k_proj so that RoPE pairs are adjacent (GGML's "normal" RoPE);
`unpermute_rope_rows` undoes that so the weights fit HF's rotate_half layout used by model.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.config import ModelConfig
from runtime.errors import ModelLoadError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "minicpm")

def dequantizable_types() -> frozenset:
    """Every block format gguf.quants can dequantize; the runtime reads all of them."""
    from gguf import GGMLQuantizationType as T

    return frozenset({
        T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
        T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
        T.IQ4_NL, T.IQ4_XS, T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S, T.IQ1_M,
        T.TQ1_0, T.TQ2_0,
    })


# GGUF tensor name (after the "blk.N." prefix) -> HF name (after "model.layers.N.").
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
ROPE_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight", "rope_freqs.weight")


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's q/k permutation. w: [n_heads * D, C]; rows (h, 2, D/2) <- (h, D/2, 2)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


class GGUFModelFile:
    """Open a .gguf file; `config()`, `weights()` and `metadata` for the tokenizer."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path} does not exist; pass an existing .gguf file")
        with open(self.path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ModelLoadError(f"{self.path} is not a GGUF file (it does not start with 'GGUF'); re-download it")
        from gguf import GGUFReader

        try:
            self.reader = GGUFReader(str(self.path))
        except ValueError as exc:
            if "GGMLQuantizationType" in str(exc):
                raise UnsupportedModelError(
                    f"{self.path.name} stores a tensor in a quantization type this runtime does not know "
                    f"({exc}); run it with --backend gguf, or re-quantize it with a supported type"
                ) from None
            raise ModelLoadError(f"{self.path} is a corrupt or truncated GGUF file ({exc}); re-download it") from None
        except Exception as exc:  # the reader raises many kinds on a truncated file
            raise ModelLoadError(
                f"{self.path} is a corrupt or truncated GGUF file ({type(exc).__name__}: {exc}); re-download it"
            ) from None
        self.metadata: dict[str, Any] = {}
        for key, fld in self.reader.fields.items():
            try:
                self.metadata[key] = fld.contents()
            except Exception:  # a field of an exotic type we never read; keep going
                continue
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped metadata value: get('block_count') reads '<arch>.block_count'."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelLoadError(f"{self.path.name} lacks the metadata key {self.architecture}.{key}; re-convert it")
        return value

    def config(self) -> ModelConfig:
        arch = self.architecture
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"{self.path.name} is a GGUF of architecture '{arch or 'unknown'}', which the torch runtime "
                f"does not implement (supported: {', '.join(SUPPORTED_ARCHITECTURES)}); run it with --backend gguf"
            )
        hidden = int(self.require("embedding_length"))
        layers = int(self.require("block_count"))
        heads = int(self.require("attention.head_count"))
        kv_heads = self.get("attention.head_count_kv", heads)
        if isinstance(kv_heads, list):
            if len(set(kv_heads)) != 1:
                raise UnsupportedModelError(f"{self.path.name} has a different number of KV heads per layer")
            kv_heads = kv_heads[0]
        head_dim = int(self.get("attention.key_length", hidden // heads))
        rope_dims = int(self.get("rope.dimension_count", head_dim))
        if rope_dims != head_dim:
            raise UnsupportedModelError(
                f"{self.path.name} rotates {rope_dims} of {head_dim} head dimensions (partial RoPE), "
                "which the torch runtime does not implement; run it with --backend gguf"
            )
        tokens = self.metadata.get("tokenizer.ggml.tokens") or []
        vocab = int(self.get("vocab_size", 0) or len(tokens))
        if vocab == 0:
            vocab = int(self.tensors["token_embd.weight"].shape[1])
        max_pos = int(self.get("context_length", 2048))

        rope_scaling = None
        scaling_type = self.get("rope.scaling.type")
        has_factors = any(name in self.tensors for name in ("rope_factors_long.weight", "rope_factors_short.weight"))
        # Older MiniCPM GGUFs carry the LongRoPE factor tensors without the scaling-type key; the
        # tensors are what llama.cpp used then, so they mean LongRoPE here too.
        if scaling_type == "longrope" or (has_factors and scaling_type in (None, "none", "linear")):
            half = head_dim // 2
            long = self._float_tensor("rope_factors_long.weight", np.ones(half, np.float32))
            short = self._float_tensor("rope_factors_short.weight", np.ones(half, np.float32))
            rope_scaling = {
                "rope_type": "longrope",
                "long_factor": long.tolist(),
                "short_factor": short.tolist(),
                "original_max_position_embeddings": int(self.get("rope.scaling.original_context_length", max_pos)),
                "attention_factor": float(self.get("rope.scaling.attn_factor", 1.0)),
            }
        elif scaling_type not in (None, "none", "linear") or float(self.get("rope.scaling.factor", 1.0) or 1.0) != 1.0:
            raise UnsupportedModelError(
                f"{self.path.name} uses RoPE scaling '{scaling_type}', which the torch runtime does not "
                "implement (supported: none, longrope); run it with --backend gguf"
            )
        freq_factors = None
        if "rope_freqs.weight" in self.tensors:
            freq_factors = self._float_tensor("rope_freqs.weight", None).tolist()

        scales: dict[str, Any] = {}
        if arch == "minicpm":
            # Defaults are llama.cpp's for GGUFs written before these keys existed (MiniCPM 1/2).
            scales["scale_emb"] = float(self.get("embedding_scale", 12.0))
            scales["scale_depth"] = float(self.get("residual_scale", 1.4 / math.sqrt(layers))) * math.sqrt(layers)
            logit_scale = float(self.get("logit_scale", hidden / 256))
            scales["dim_model_base"] = hidden / logit_scale

        eos = []
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            if self.metadata.get(key) is not None and int(self.metadata[key]) not in eos:
                eos.append(int(self.metadata[key]))
        bos = self.metadata.get("tokenizer.ggml.bos_token_id")
        return ModelConfig(
            model_type="minicpm" if arch == "minicpm" else "llama",
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=int(self.require("feed_forward_length")),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(kv_heads),
            head_dim=head_dim,
            max_position_embeddings=max_pos,
            rms_norm_eps=float(self.get("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(self.get("rope.freq_base", 10000.0)),
            rope_scaling=rope_scaling,
            rope_freq_factors=freq_factors,
            tie_word_embeddings="output.weight" not in self.tensors,
            bos_token_id=int(bos) if bos is not None else None,
            eos_token_id=eos,
            **scales,
        )

    def _float_tensor(self, name: str, default: np.ndarray | None) -> np.ndarray:
        if name not in self.tensors:
            return default
        return self._dequantize(self.tensors[name])

    def _dequantize(self, tensor) -> np.ndarray:
        """One tensor as float32 in row-major [ne1, ne0] order (torch's [out, in])."""
        from gguf.quants import dequantize

        if tensor.tensor_type not in dequantizable_types():
            raise UnsupportedModelError(
                f"tensor {tensor.name} of {self.path.name} is quantized as {tensor.tensor_type.name}, which "
                "the torch runtime cannot dequantize; run this file with --backend gguf"
            )
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except Exception as exc:
            raise ModelLoadError(f"tensor {tensor.name} of {self.path.name} cannot be decoded ({exc}); re-download it") from None
        shape = tuple(int(n) for n in reversed(tensor.shape))
        # A copy only where needed: F32 tensors come back as read-only views of the mapped file.
        return np.require(values.reshape(shape), dtype=np.float32, requirements=["C", "W"])

    def weights(self, config: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Every model tensor under its HF name, dequantized and cast to dtype as it is read."""
        out: dict[str, torch.Tensor] = {}
        for name, tensor in self.tensors.items():
            if name in ROPE_TENSORS:
                continue  # already in the config
            if name in GLOBAL_TENSORS:
                hf_name = GLOBAL_TENSORS[name]
            else:
                parts = name.split(".", 2)
                if len(parts) != 3 or parts[0] != "blk" or parts[2] not in LAYER_TENSORS:
                    raise UnsupportedModelError(
                        f"{self.path.name} holds a tensor '{name}' that the torch runtime has no place for "
                        "(biases, experts or another architecture's layers); run it with --backend gguf"
                    )
                hf_name = f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}"
            value = torch.from_numpy(self._dequantize(tensor))
            if hf_name.endswith("q_proj.weight"):
                value = unpermute_rope_rows(value, config.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                value = unpermute_rope_rows(value, config.num_key_value_heads)
            out[hf_name] = value.to(dtype)
        return out
