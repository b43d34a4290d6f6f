"""LoRA adapters on the attention and MLP projections, saved in PEFT's file layout.

A LoRALinear keeps the frozen base weight W [out, in] and learns A [r, in] and B [out, r]:

    y = x W^T + (alpha / r) * dropout(x) A^T B^T

B starts at zero, so an adapter that has not trained yet leaves the model unchanged. Files are
PEFT's (adapter_config.json + adapter_model.safetensors with `base_model.model.<module>.lora_A.weight`
keys), so adapters made here load in PEFT and the other way round; runtime/adapter.py reads them
for `--adapter`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.adapter import ATTENTION, CONFIG_FILE, DIALECT_KEY, PEFT_PREFIX, WEIGHTS_FILE, AdapterError, LoRASettings


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, settings: LoRASettings):
        super().__init__()
        if type(base) is not nn.Linear:
            raise AdapterError(f"LoRA needs plain linear layers, not {type(base).__name__} "
                               "(train on float weights: no --quant, no packed ternary)")
        self.base = base.requires_grad_(False)
        out_dim, in_dim = base.weight.shape
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(settings.r, in_dim, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(out_dim, settings.r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default for A
        self.scale = settings.scale
        self.dropout = settings.dropout

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (dtype, device) keeps working
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora_in = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return self.base(x) + F.linear(F.linear(lora_in, self.lora_A), self.lora_B) * self.scale

    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=False,
                           dtype=self.base.weight.dtype, device=self.base.weight.device)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + (self.lora_B.float() @ self.lora_A.float()).to(linear.weight.dtype)
                                * self.scale)
        return linear.requires_grad_(False)


def projections(model: nn.Module, targets: tuple[str, ...]):
    """(qualified name, parent module, attribute) of every targeted projection, in layer order."""
    for i, layer in enumerate(model.model.layers):
        for attr in targets:
            parent, where = (layer.self_attn, "self_attn") if attr in ATTENTION else (layer.mlp, "mlp")
            fused = parent.qkv_proj if where == "self_attn" else parent.gate_up_proj
            if fused is not None:
                raise AdapterError("this model's projections are fused for quantized inference; "
                                   "LoRA needs the float model (load without --quant)")
            yield f"model.layers.{i}.{where}.{attr}", parent, attr


def add_lora(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Freeze the model and wrap its target projections; returns the wrapped module names."""
    model.requires_grad_(False)
    names = []
    for name, parent, attr in projections(model, settings.targets):
        setattr(parent, attr, LoRALinear(getattr(parent, attr), settings))
        names.append(name)
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by a plain linear layer holding W + scale * B A; returns how many."""
    count = 0
    for name, module in list(lora_modules(model).items()):
        parent_name, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), attr, module.merged())
        count += 1
    return count


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's names."""
    state = {}
    for name, module in lora_modules(model).items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = module.lora_A.detach().float().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = module.lora_B.detach().float().contiguous()
    return state


def save_adapter(model: nn.Module, settings: LoRASettings, folder: Path, base_model: str,
                 dtype: torch.dtype = torch.float32, dialect: str | None = None) -> Path:
    """Write adapter_config.json and adapter_model.safetensors (atomically, each)."""
    from safetensors.torch import save

    from runtime.atomic import atomic_write_bytes, atomic_write_text

    state = adapter_state(model)
    if not state:
        raise AdapterError("the model has no LoRA layers to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": settings.r, "lora_alpha": settings.alpha,
              "lora_dropout": settings.dropout, "target_modules": list(settings.targets), "bias": "none",
              "fan_in_fan_out": False, "base_model_name_or_path": base_model}
    if dialect:  # the runtime then renders and parses tool calls the way the adapter learned them
        config[DIALECT_KEY] = dialect
    atomic_write_bytes(folder / WEIGHTS_FILE, save({k: v.to(dtype) for k, v in state.items()}))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return folder


