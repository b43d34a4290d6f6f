"""LoRA adapters at load time: read PEFT adapter folders, merge them into a model, or hand them to
llama.cpp as a GGUF LoRA file. (training/lora.py makes and saves them.)

`--adapter` takes a folder (adapter_config.json + adapter_model.safetensors, PEFT's layout) or the
name of an adapter shipped with the suite (runtime/shipped_adapters/, e.g. `smollm2-mcp`, the
embedded model's MCP tool-call fine-tune). The torch runtime merges it into the float weights before
any quantization, W' = W + (alpha / r) B A, so it costs nothing per token; the gguf backend converts
it once to llama.cpp's GGUF LoRA format (cached in the data folder) and llama.cpp applies it on the
quantized weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from runtime.errors import MiniCPMError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION + MLP
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
SHIPPED = Path(__file__).parent / "shipped_adapters"


class AdapterError(MiniCPMError):
    """An adapter file that is missing, unreadable or made for another model."""


@dataclass(frozen=True)
class LoRASettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if self.r < 1:
            raise AdapterError(f"LoRA rank must be at least 1 (got {self.r})")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise AdapterError(f"LoRA targets must be among {', '.join(TARGETS)} (got {', '.join(unknown) or 'none'})")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"LoRA dropout must be in [0, 1) (got {self.dropout})")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


def shipped_adapters() -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if (p / CONFIG_FILE).is_file()) if SHIPPED.is_dir() else []


def adapter_dialect(ref: str) -> str | None:
    """The tool-call dialect an adapter was trained on (its config's DIALECT_KEY), if it says."""
    try:
        config = json.loads((resolve_adapter(ref) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get(DIALECT_KEY) if isinstance(config, dict) else None
    return value if value in ("minicpm", "hermes") else None


def adapter_name(ref: str) -> str:
    """How the user named the adapter, short: a shipped name, or the folder's name."""
    return Path(ref).name or str(ref)


def resolve_adapter(ref: str) -> Path:
    """A folder path, or the name of a shipped adapter."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if (SHIPPED / ref / CONFIG_FILE).is_file():
        return SHIPPED / ref
    names = shipped_adapters()
    raise AdapterError(f"adapter '{ref}' is neither a folder nor a shipped adapter"
                       + (f" (shipped: {', '.join(names)})" if names else ""))


# Our key in adapter_config.json (PEFT ignores keys it does not know): the tool-call dialect the
# adapter was fine-tuned on, which the backends then use when a caller names none.
DIALECT_KEY = "minicpm_tool_dialect"


@dataclass
class Adapter:
    settings: LoRASettings
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A [r, in], B [out, r])
    base_model: str | None
    path: Path
    dialect: str | None = None


def read_adapter(folder: Path) -> Adapter:
    """Read a PEFT LoRA folder, refusing what this runtime cannot apply exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter {folder} is not a folder; pass the folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"adapter {folder} lacks {CONFIG_FILE}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{folder / CONFIG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{folder / CONFIG_FILE}: only LoRA adapters are supported (peft_type {config.get('peft_type')!r})"
                           if isinstance(config, dict) else f"{folder / CONFIG_FILE} does not hold a JSON object")
    for flag in ("use_dora", "use_rslora", "alpha_pattern", "rank_pattern"):
        if config.get(flag):  # per-module ranks or scales would merge with the wrong scale
            raise AdapterError(f"{folder.name}: adapters with {flag} are not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{folder.name}: adapters with trained biases are not supported (bias={config['bias']!r})")
    try:
        r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    except (KeyError, TypeError, ValueError):
        raise AdapterError(f"{folder / CONFIG_FILE} lacks a usable 'r' / 'lora_alpha'") from None
    try:
        raw = load_file(str(folder / WEIGHTS_FILE))
    except FileNotFoundError:
        raise AdapterError(f"adapter {folder} lacks {WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({exc})") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        name = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            for suffix in (f".{part}.weight", f".{part}.default.weight"):
                if name.endswith(suffix):
                    pairs.setdefault(name.removesuffix(suffix), {})[part] = tensor.float()
                    break
            else:
                continue
            break
        else:
            raise AdapterError(f"{folder.name}: tensor {key} is not a LoRA A/B matrix of a linear layer")
    tensors = {}
    targets = set()
    for name, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{folder.name}: {name} has only {', '.join(pair)}")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"{folder.name}: {name} has A {tuple(a.shape)} and B {tuple(b.shape)}, not rank {r}")
        tensors[name] = (a, b)
        targets.add(name.rsplit(".", 1)[-1])
    if not tensors:
        raise AdapterError(f"{folder / WEIGHTS_FILE} holds no LoRA tensors")
    unknown = sorted(targets - set(TARGETS))
    if unknown:
        raise AdapterError(f"{folder.name} adapts {', '.join(unknown)}; the runtime applies LoRA to {', '.join(TARGETS)} only")
    settings = LoRASettings(r=r, alpha=alpha, dropout=0.0, targets=tuple(t for t in TARGETS if t in targets))
    dialect = config.get(DIALECT_KEY)
    return Adapter(settings, tensors, config.get("base_model_name_or_path"), folder,
                   dialect if dialect in ("minicpm", "hermes") else None)


def merge_adapter(model: nn.Module, adapter: Adapter) -> int:
    """W += scale * B A for every adapted projection of a float model; returns how many."""
    check_adapter(adapter, model.config)
    modules = dict(model.named_modules())
    for name in adapter.tensors:
        if type(modules.get(name)) is not nn.Linear:
            raise AdapterError(f"adapter {adapter.path.name}: {name} is {type(modules.get(name)).__name__} here; "
                               "merge adapters into the float model, before quantization")
    with torch.no_grad():
        for name, (a, b) in adapter.tensors.items():
            w = modules[name].weight
            w.copy_((w.float() + (b @ a) * adapter.settings.scale).to(w.dtype))
    return len(adapter.tensors)


def expected_shapes(config) -> dict[str, tuple[int, int]]:
    """[out, in] of every projection LoRA may adapt, from a model config."""
    c, q, kv = config, config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    return {"q_proj": (q, c.hidden_size), "k_proj": (kv, c.hidden_size), "v_proj": (kv, c.hidden_size),
            "o_proj": (c.hidden_size, q), "gate_proj": (c.intermediate_size, c.hidden_size),
            "up_proj": (c.intermediate_size, c.hidden_size), "down_proj": (c.hidden_size, c.intermediate_size)}


def check_adapter(adapter: Adapter, config) -> None:
    """Refuse an adapter made for another model: its layers and shapes must be this config's."""
    shapes = expected_shapes(config)
    for name, (a, b) in adapter.tensors.items():
        parts = name.split(".")
        if len(parts) != 5 or parts[:2] != ["model", "layers"] or not parts[2].isdigit() \
                or int(parts[2]) >= config.num_hidden_layers or parts[3] not in ("self_attn", "mlp"):
            raise AdapterError(f"adapter {adapter.path.name} adapts {name}, which this model lacks; "
                               "it was made for another model")
        want = shapes[parts[4]]
        if (b.shape[0], a.shape[1]) != want:
            raise AdapterError(f"adapter {adapter.path.name}: {name} is {b.shape[0]}x{a.shape[1]} in the adapter but "
                               f"{want[0]}x{want[1]} in the model; it was made for another model")


def load_adapter(ref: str, config) -> Adapter:
    adapter = read_adapter(resolve_adapter(ref))
    check_adapter(adapter, config)
    return adapter


def gguf_adapter_file(adapter: Adapter, config, arch: str) -> Path:
    """The adapter as a GGUF LoRA in the data folder's cache, written once per adapter content."""
    from runtime.settings import data_path

    digest = hashlib.sha256(arch.encode())
    for name in sorted(adapter.tensors):
        a, b = adapter.tensors[name]
        digest.update(name.encode() + a.numpy().tobytes() + b.numpy().tobytes())
    digest.update(f"{adapter.settings.alpha}/{adapter.settings.r}/{config.num_attention_heads}/"
                  f"{config.num_key_value_heads}".encode())  # the q/k permutation depends on the heads
    path = data_path("adapters", f"{adapter.path.name}-{digest.hexdigest()[:12]}.gguf")
    if not path.is_file():
        adapter_to_gguf(adapter, config, arch, path)
    return path


def adapter_to_gguf(adapter: Adapter, config, arch: str, out_path: Path) -> Path:
    """Write the adapter as a llama.cpp GGUF LoRA (general.type "adapter", tensors `<weight>.lora_a`
    [r, in] and `.lora_b` [out, r]) for a base model of `config`. q/k rows are permuted as
    llama.cpp stores those weights (runtime/convert.py), so B's rows follow them."""
    import gguf

    from runtime.convert import gguf_tensor_name, permute_rope_rows, write_gguf

    matrices = {}  # gguf name -> float32 [rows, cols]
    for name, (a, b) in sorted(adapter.tensors.items()):
        if name.endswith("q_proj"):
            b = permute_rope_rows(b, config.num_attention_heads)
        elif name.endswith("k_proj"):
            b = permute_rope_rows(b, config.num_key_value_heads)
        base = gguf_tensor_name(f"{name}.weight")
        matrices[f"{base}.lora_a"], matrices[f"{base}.lora_b"] = a.contiguous().numpy(), b.contiguous().numpy()

    def metadata(writer) -> None:
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(adapter.settings.alpha))

    plan = [(name, m.shape, gguf.GGMLQuantizationType.F32, name) for name, m in matrices.items()]
    write_gguf(Path(out_path), arch, metadata, plan, lambda handle, _: matrices[handle], None)
    return Path(out_path)
