"""Model configuration with HF field names, read from config.json or from GGUF metadata.

Unknown keys are ignored (HF configs carry many that do not change the forward pass); keys that do
change it and that this runtime cannot honour raise UnsupportedModelError at load time, so a model
never runs silently wrong.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ModelLoadError, UnsupportedModelError

# model_type values whose forward pass runtime/model.py implements. MiniCPM 1/2/4 share
# MiniCPMForCausalLM; "minicpm4" is the native transformers port of the same model.
MINICPM_TYPES = ("minicpm", "minicpm4")
LLAMA_TYPES = ("llama",)
SUPPORTED_MODEL_TYPES = MINICPM_TYPES + LLAMA_TYPES


@dataclass
class SparseConfig:
    """InfLLM v2 sparse attention settings (`sparse_config` in config.json).

    Defaults are MiniCPM4-8B's values from upstream's README. Parsed and kept here; the sparse
    attention itself belongs to the sparse-attention module.
    """

    kernel_size: int = 32  # tokens per compressed key (stage-1 kernel)
    kernel_stride: int = 16  # stride between compressed keys
    init_blocks: int = 1  # leading blocks every query always attends (attention sink)
    block_size: int = 64  # KV block granularity of stage 2
    window_size: int = 2048  # local window always attended, in tokens
    topk: int = 64  # blocks selected by score
    use_nope: bool = False  # stage-1 scoring on pre-RoPE q/k
    dense_len: int = 8192  # below this KV length attention stays dense

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SparseConfig:
        if not isinstance(raw, dict):
            raise ModelLoadError(f"sparse_config must be a JSON object, got {raw!r}; fix config.json")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                continue
            expected = bool if known[key].type in ("bool", bool) else int
            if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ModelLoadError(f"sparse_config.{key} must be an integer, got {value!r}; fix config.json")
            if expected is bool and not isinstance(value, bool):
                raise ModelLoadError(f"sparse_config.{key} must be true or false, got {value!r}; fix config.json")
            values[key] = value
        return cls(**values)


@dataclass
class ModelConfig:
    """The fields of an HF config.json that the forward pass depends on."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    # MiniCPM's muP scalings. A Llama config leaves them None, which means identity.
    scale_emb: float | None = None  # embeddings are multiplied by this
    scale_depth: float | None = None  # residual branches are multiplied by scale_depth / sqrt(L)
    dim_model_base: int | None = None  # logits = lm_head(h / (hidden_size / dim_model_base))
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)  # every id that ends generation
    pad_token_id: int | None = None
    sparse_config: SparseConfig | None = None
    # Per-dimension RoPE frequency divisors fixed by the checkpoint (GGUF `rope_freqs`), if any.
    rope_freq_factors: list[float] | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._validate()

    # Derived scales -------------------------------------------------------------------------

    @property
    def embedding_scale(self) -> float:
        return 1.0 if self.scale_emb is None else float(self.scale_emb)

    @property
    def residual_scale(self) -> float:
        if self.scale_depth is None:
            return 1.0
        return self.scale_depth / math.sqrt(self.num_hidden_layers)

    @property
    def logit_divisor(self) -> float:
        if self.dim_model_base is None:
            return 1.0
        return self.hidden_size / self.dim_model_base

    @property
    def is_minicpm(self) -> bool:
        return self.model_type in MINICPM_TYPES

    # LongRoPE -------------------------------------------------------------------------------

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return str(self.rope_scaling.get("rope_type") or self.rope_scaling.get("type") or "default")

    @property
    def original_max_position_embeddings(self) -> int:
        if self.rope_type == "longrope":
            return int(self.rope_scaling.get("original_max_position_embeddings") or self.max_position_embeddings)
        return self.max_position_embeddings

    @property
    def rope_attention_factor(self) -> float:
        """LongRoPE's scaling of cos/sin: sqrt(1 + log(max_pos / orig) / log(orig)), 1 when not extended."""
        if self.rope_type != "longrope":
            return 1.0
        explicit = self.rope_scaling.get("attention_factor")
        if explicit is not None:
            return float(explicit)
        orig = self.original_max_position_embeddings
        scale = self.max_position_embeddings / orig
        if scale <= 1.0:
            return 1.0
        return math.sqrt(1.0 + math.log(scale) / math.log(orig))

    # Validation -----------------------------------------------------------------------------

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelLoadError(f"config field {name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta", "scale_emb", "scale_depth", "dim_model_base"):
            value = getattr(self, name)
            if value is None and name not in ("rms_norm_eps", "rope_theta"):
                continue  # an absent muP scale means identity (Llama)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ModelLoadError(f"config field {name} must be a positive number, got {value!r}")
        for token in self.eos_token_id + [t for t in (self.bos_token_id,) if t is not None]:
            if isinstance(token, bool) or not isinstance(token, int):
                raise ModelLoadError(f"config token ids must be integers, got {token!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise UnsupportedModelError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}); the config is inconsistent"
            )
        if self.head_dim % 2 != 0:
            raise UnsupportedModelError(f"head_dim {self.head_dim} is odd; RoPE needs an even head dimension")
        rope_type = self.rope_type
        if rope_type not in ("default", "longrope"):
            raise UnsupportedModelError(
                f"rope_scaling type '{rope_type}' is not supported by the torch runtime (supported: "
                "none, longrope); convert the model to GGUF and run it with --backend gguf"
            )
        if rope_type == "longrope":
            half = self.head_dim // 2
            for key in ("short_factor", "long_factor"):
                factors = self.rope_scaling.get(key)
                if not isinstance(factors, list) or len(factors) != half:
                    got = len(factors) if isinstance(factors, list) else factors
                    raise ModelLoadError(
                        f"rope_scaling.{key} must be a list of head_dim/2 = {half} numbers, got {got!r}; "
                        "fix config.json"
                    )
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
            raise ModelLoadError(f"rope_freqs has {len(self.rope_freq_factors)} values, expected {self.head_dim // 2}")


def config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from the parsed config.json of an HF checkpoint."""
    if not isinstance(raw, dict):
        raise ModelLoadError("config.json does not hold a JSON object; re-download the checkpoint")
    model_type = raw.get("model_type")
    if model_type is None:
        archs = raw.get("architectures") or []
        if "MiniCPMForCausalLM" in archs:
            model_type = "minicpm"
        elif "LlamaForCausalLM" in archs:
            model_type = "llama"
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type '{model_type}' is not supported by the torch runtime (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}); convert it to GGUF and use --backend gguf"
        )
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "unknown")
        raise UnsupportedModelError(
            f"pre-quantized checkpoints ({method}) are not supported by the torch runtime; use the "
            "bf16/fp16 checkpoint, or a GGUF with --backend gguf"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise UnsupportedModelError(f"{flag}=true is not supported: MiniCPM4 and Llama projections have no biases")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"hidden_act '{act}' is not supported (the SwiGLU MLP needs silu)")
    if model_type in MINICPM_TYPES:
        # Two upstream sources disagree on these defaults (remote code: 1, transformers: the 8B's
        # values), so a MiniCPM config without them is ambiguous; every released one has them.
        missing = [k for k in ("scale_emb", "scale_depth", "dim_model_base") if raw.get(k) is None]
        if missing:
            raise ModelLoadError(
                f"MiniCPM config.json lacks {', '.join(missing)}; these muP scales change every "
                "output, add them from the model card"
            )

    eos = raw.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    sparse = raw.get("sparse_config")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {k: v for k, v in raw.items() if k in fields and k not in ("eos_token_id", "sparse_config", "model_type")}
    try:
        return ModelConfig(
            model_type=model_type,
            eos_token_id=eos_ids,
            sparse_config=SparseConfig.from_dict(sparse) if sparse is not None else None,
            **kwargs,
        )
    except TypeError as exc:  # a required field is missing
        raise ModelLoadError(f"config.json is incomplete ({exc}); re-download the checkpoint") from None
