"""A trained model out: an HF-layout folder (config.json, tokenizer, safetensors) the runtime and
transformers load, and a GGUF through runtime/convert.py."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch

from runtime.config import ModelConfig


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json for config: the fields the runtime reads, under HF's names."""
    raw = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    raw["architectures"] = ["MiniCPMForCausalLM" if config.is_minicpm else "LlamaForCausalLM"]
    raw["hidden_act"] = "silu"
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    raw["eos_token_id"] = config.eos_token_id[0] if len(config.eos_token_id) == 1 else list(config.eos_token_id)
    if config.sparse_config is not None:
        raw["sparse_config"] = dataclasses.asdict(config.sparse_config)
    return raw


def save_hf_folder(model, tokenizer, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the model as an HF checkpoint folder, atomically: a crash leaves the old folder or none."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(hf_config(model.config, dtype), indent=2) + "\n", encoding="utf-8")
        tokenizer.backend.save(str(staging / "tokenizer.json"))
        tok_config = {"add_bos_token": tokenizer.add_bos,
                      "bos_token": tokenizer.token_text(tokenizer.bos_token_id) or None,
                      "eos_token": tokenizer.token_text(tokenizer.eos_token_id) or None,
                      "chat_template": tokenizer.chat_template}
        (staging / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def replace_folder(staging: Path, folder: Path) -> None:
    """Put the fully written staging folder where folder was. Between the two renames a crash leaves
    the previous folder as .<name>.old beside it, never a half-written one under the real name."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(folder)
