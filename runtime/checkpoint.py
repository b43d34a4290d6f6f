"""Weights in, model out: HF safetensors folders (one file or a sharded index) and the shared
`build_model` that both this loader and the GGUF reader end in.

Checkpoint quirks are isolated in `sanitize`; a missing, unexpected or misshapen tensor is a
ModelLoadError naming the tensor, never a half-loaded model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from runtime.config import ModelConfig, config_from_hf
from runtime.errors import ModelLoadError
from runtime.model import CausalLM, RotaryEmbedding


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of a checkpoint, with an error that names the file and what is wrong."""
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; the folder needs its {what} (re-download the checkpoint)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-download the checkpoint") from None


def load_hf_config(folder: Path) -> ModelConfig:
    config = config_from_hf(read_json(folder / "config.json", "config.json"))
    # generation_config.json may add stop ids (MiniCPM4 stops on [2, 73440]).
    gen = folder / "generation_config.json"
    if gen.is_file():
        eos = read_json(gen, "generation_config.json").get("eos_token_id")
        for token in [eos] if isinstance(eos, int) else list(eos or []):
            if token not in config.eos_token_id:
                config.eos_token_id.append(token)
    return config


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: a sharded index, or every *.safetensors file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no weight_map; re-download the checkpoint")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"shard(s) {', '.join(missing)} listed in {index.name} are missing from {folder}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"no *.safetensors weights in {folder}; the torch runtime reads safetensors checkpoints "
            "(convert .bin files with transformers, or pass a .gguf file)"
        )
    return files


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            weights.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({exc}); re-download it") from None
    return weights


def sanitize(config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop or fill the checkpoint entries that do not map one-to-one onto CausalLM parameters."""
    weights = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings or "lm_head.weight" not in weights:
        if "model.embed_tokens.weight" in weights:
            # Tied (or a checkpoint that stores only the embedding): the head shares it.
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights


def build_model(config: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> CausalLM:
    """Create the model without allocating random weights, then adopt `weights` (cast to dtype)."""
    weights = sanitize(config, weights)
    with torch.device("meta"):
        model = CausalLM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ModelLoadError(
            f"the weights lack {len(missing)} tensor(s) the config needs, e.g. {missing[0]}; "
            "the checkpoint is incomplete or belongs to another model"
        )
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise ModelLoadError(
            f"the weights hold {len(unexpected)} tensor(s) this architecture has no place for, e.g. "
            f"{unexpected[0]}; the checkpoint does not match its config.json"
        )
    for name, param in expected.items():
        if tuple(weights[name].shape) != tuple(param.shape):
            raise ModelLoadError(
                f"tensor {name} has shape {tuple(weights[name].shape)} but the config implies "
                f"{tuple(param.shape)}; the weights do not match config.json"
            )
    cast = {name: tensor.to(dtype) for name, tensor in weights.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary = RotaryEmbedding(config)  # buffers were created on the meta device
    return model.requires_grad_(False).eval()  # inference; training scripts switch grads back on


def load_hf_checkpoint(folder: Path, dtype: torch.dtype) -> CausalLM:
    config = load_hf_config(folder)
    return build_model(config, read_safetensors(safetensors_files(folder)), dtype)
