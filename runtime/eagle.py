"""Eagle draft head: one small decoder layer on the target's own hidden states proposes tokens.

EAGLE (Li et al. 2024) drafts from features rather than tokens: the target's final hidden state
at position i (after its last RMSNorm) and the embedding of token i+1 go through fc, then a
decoder layer, and the result is both a guess at the target's hidden state at i+1 and, through
the target's own lm_head, a guess at token i+2. Drafting k tokens costs k forwards of that one
layer; the target then checks them in one forward (runtime/speculative.py's `verify`).

The layout is MiniCPM4's Eagle head as CPM.cu loads it (cpmcu/speculative/eagle.py and
src/model/minicpm4/minicpm4_eagle.cuh; ../shared/reference/upstream-runtime.md sections 3-4):
- config.json: the head's own num_hidden_layers (1), hidden_size, intermediate_size, heads,
  rms_norm_eps; scale_emb, scale_depth and dim_model_base equal to the target's where present;
- `fc.weight` [C, 2C] and `fc.bias` [C]: the first C input columns take the embedding, the rest
  the hidden state (CPM.cu splits them into fc1 and fc2);
- `input_norm1.weight`, `input_norm2.weight` (optional): RMSNorms of the embedding and of the
  hidden state before fc (MiniCPM4's heads have them; EAGLE-1's do not);
- `layers.N.*`: Llama/MiniCPM decoder layers; `layers.0.input_layernorm` may be absent (EAGLE-1
  skips that norm), residual branches scaled by scale_depth / sqrt(num_hidden_layers + 1) of the
  target, as CPM.cu does;
- no lm_head and no final norm of its own: logits come from the target's lm_head applied to the
  head's output; `embed_tokens.weight`, if stored, is the target's and is not read.
Weights come as *.safetensors or pytorch_model.bin. Quantized heads (GPTQ/Marlin, the
"-QAT-cpmcu" release) and EAGLE-3 heads (d2t/t2d maps) are refused with a message.

FR-Spec (Zhao et al. 2025): with `vocab_ids`, the head's logits are computed only over a
frequency-ranked subset of the vocabulary (the rows of the target's lm_head for those ids), so a
draft step reads a fraction of the lm_head; the target still verifies over the full vocabulary,
so the output does not change. `minicpm train frspec` writes the frequency files, in upstream's
format (`freq_N.pt`: a list of token ids, most frequent first, end-of-sequence ids included).

Drafts are chains (one token per depth, the head's argmax), not CPM.cu's trees: the verifier
checks a chain, and chains are what upstream's vLLM and SGLang recipes use for MiniCPM4. A chain
stops where the head's own probability for its next token falls below DRAFT_CONFIDENCE (EAGLE-2's
observation that the draft's confidence tracks acceptance), the first token included: then the
step is a plain one-token forward. On CPU a forward of 2 tokens costs about 25% more than one of
1 (embedded model, float32 and int4), so an unlikely token is not worth checking.

Shapes: T new positions, C hidden, V vocabulary (or the FR-Spec subset).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
from torch import nn

from runtime.config import ModelConfig
from runtime.errors import ModelLoadError
from runtime.model import CausalLM, DecoderLayer, KVCache, RMSNorm

DRAFT_CONFIDENCE = 0.3  # stop a chain when the head gives its next token less than this
FEED_CHUNK = 512  # target states fed to the head per forward (bounds its activations on long prompts)
HEAD_FILES = ("model.safetensors", "pytorch_model.bin")


def head_config(target: ModelConfig, raw: dict) -> ModelConfig:
    """The draft layers' ModelConfig: the target's, with the head's own layer count and sizes."""
    sizes = {k: raw[k] for k in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                                 "rms_norm_eps") if raw.get(k) is not None}
    if "num_attention_heads" in sizes:  # HF's defaults for what the head's config leaves out
        sizes.setdefault("head_dim", target.hidden_size // sizes["num_attention_heads"])
        sizes.setdefault("num_key_value_heads", sizes["num_attention_heads"])
    return dataclasses.replace(target, num_hidden_layers=int(raw.get("num_hidden_layers", 1)), sparse_config=None,
                               **sizes)


class EagleHead(nn.Module):
    """fc(cat(norm1(embed(x_{i+1})), norm2(h_i))) -> decoder layers -> the guessed h_{i+1} [.., C]."""

    def __init__(self, target: ModelConfig, config: ModelConfig, input_norm: bool = True, attn_norm: bool = True):
        super().__init__()
        c = target.hidden_size
        self.config = config
        self.fc = nn.Linear(2 * c, c, bias=True)
        self.input_norm1 = RMSNorm(c, config.rms_norm_eps) if input_norm else None
        self.input_norm2 = RMSNorm(c, config.rms_norm_eps) if input_norm else None
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        # CPM.cu scales the head's residual branches as a layer L+1 of the target would be
        scale = 1.0 if target.scale_depth is None else target.scale_depth / math.sqrt(target.num_hidden_layers + 1)
        for layer in self.layers:
            layer.residual_scale = scale
        if not attn_norm:
            self.layers[0].input_layernorm = nn.Identity()

    def new_cache(self, capacity: int, dtype: torch.dtype, device, rope_length: int) -> KVCache:
        return KVCache(self.config, 1, capacity, dtype, device, rope_length)

    def forward(self, target: CausalLM, features: torch.Tensor, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """features: [1, T, C] the target's normed hidden states at positions cache.length ..;
        tokens: [1, T] the token after each of those positions. Returns [1, T, C]."""
        t, start = tokens.shape[1], cache.length
        embeds = target.model.embed_tokens(tokens) * target.config.embedding_scale  # [1, T, C]
        if self.input_norm1 is not None:
            embeds, features = self.input_norm1(embeds), self.input_norm2(features)
        h = self.fc(torch.cat([embeds, features.to(embeds.dtype)], dim=-1))
        positions = torch.arange(start, start + t, device=tokens.device)
        cos, sin = target.rotary(positions, cache.rope_length)
        for layer in self.layers:
            h = layer(h, cos, sin, cache, start)
        cache.length = start + t
        return h


class DraftVocabulary:
    """The lm_head the head drafts with: the target's own, or FR-Spec's row subset for `ids`
    (int8 when the target's weights are quantized, as its own lm_head then is)."""

    def __init__(self, target: CausalLM, ids: list[int] | None, quant: str = "none"):
        self.target = target
        self.ids = None if ids is None else torch.tensor(ids, dtype=torch.long)
        self.rows: nn.Module | None = None
        if ids is not None:
            head = target.lm_head
            full = head.dequantized() if hasattr(head, "dequantized") else head.weight.detach()
            rows = full[self.ids].to(target.dtype).contiguous()  # [V', C]
            if quant == "none":
                self.rows = nn.Linear(rows.shape[1], rows.shape[0], bias=False)
                self.rows.weight = nn.Parameter(rows, requires_grad=False)
            else:
                from runtime.quantize import Int8Linear

                self.rows = Int8Linear(rows)

    @property
    def size(self) -> int:
        return self.target.config.vocab_size if self.ids is None else len(self.ids)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: [C], the head's output. Float32 logits over the draft vocabulary [V or V']."""
        h = (h / self.target.config.logit_divisor)[None]
        return (self.target.lm_head if self.rows is None else self.rows)(h).float()[0]

    def token(self, index: int) -> int:
        return index if self.ids is None else int(self.ids[index])


class EagleDrafter:
    """Drafting state for one generation: the head's KV cache and the target features not yet fed.

    The head at position i takes (target feature h_i, token x_{i+1}), so a feature waits until the
    token after it is known. `observe` queues the target's features of the positions it kept;
    `draft` feeds the queued pairs, then chains the head's own outputs as the next features."""

    def __init__(self, head: EagleHead, vocab: DraftVocabulary, target: CausalLM, capacity: int, rope_length: int):
        self.head, self.vocab, self.target = head, vocab, target
        self.cache = head.new_cache(capacity, target.kv_dtype or target.dtype, target.model.embed_tokens.weight.device,
                                   rope_length)
        self.features: list[torch.Tensor] = []  # [n, C] blocks for positions cache.length ..
        self.seconds = 0.0  # time spent drafting, a running total

    def observe(self, hidden: torch.Tensor) -> None:
        """hidden: [n, C] from CausalLM.hidden_states for the next n positions the target kept."""
        self.features.append(hidden * self.target.config.logit_divisor)  # back to the normed state

    def draft(self, history: list[int], limit: int) -> list[int]:
        """Up to `limit` tokens to follow `history` (every token so far; its last one is not yet
        in the target's cache, so the queued features end one position before it)."""
        if limit <= 0 or not self.features:
            return []
        started = time.perf_counter()
        feats = torch.cat(self.features)[None]  # [1, n, C]
        self.features = []
        start = self.cache.length
        tokens = torch.tensor([history[start + 1 : start + 1 + feats.shape[1]]], device=feats.device)
        for a in range(0, tokens.shape[1], FEED_CHUNK):  # a whole prompt the first time: in chunks
            out = self.head(self.target, feats[:, a : a + FEED_CHUNK], tokens[:, a : a + FEED_CHUNK], self.cache)
        out = out[:, -1:]  # [1, 1, C]
        kept = self.cache.length  # positions whose features were the target's own
        proposed: list[int] = []
        while True:
            probs = torch.softmax(self.vocab.logits(out[0, 0]), dim=-1)
            confidence, index = torch.max(probs, dim=-1)
            if float(confidence) < DRAFT_CONFIDENCE:  # the first token too: then no draft, a plain step
                break
            proposed.append(self.vocab.token(int(index)))
            if len(proposed) == limit:
                break
            out = self.head(self.target, out, torch.tensor([[proposed[-1]]], device=out.device), self.cache)
        self.cache.truncate(kept)  # the chained positions used guessed features: redo them for real
        self.seconds += time.perf_counter() - started
        return proposed


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from runtime.checkpoint import read_safetensors, safetensors_files

    if list(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return read_safetensors(safetensors_files(folder))
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle this loader refuses to run, or a truncated file
            raise ModelLoadError(f"{binary} is not a plain tensor checkpoint ({exc})") from None
    raise ModelLoadError(f"no Eagle head weights in {folder} (expected {' or '.join(HEAD_FILES)})")


def load_eagle_head(folder: str | Path, target: CausalLM) -> EagleHead:
    """Read an Eagle head folder (layout in the module docstring) for `target`, or fail naming
    what does not fit."""
    from runtime.checkpoint import read_json

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"--draft-model {folder}: not a folder (an Eagle head folder has config.json and "
                             f"{' or '.join(HEAD_FILES)}; `minicpm train eagle` writes one)")
    raw = read_json(folder / "config.json", "config.json")
    weights = _read_weights(folder)
    if any(k.endswith((".qweight", ".scales", ".qzeros")) for k in weights) or raw.get("quantization_config"):
        raise ModelLoadError(f"{folder} is a quantized Eagle head (GPTQ/Marlin, as CPM.cu's -QAT-cpmcu release); the "
                             "torch runtime reads float heads such as MiniCPM4-8B-Eagle-FRSpec")
    if any(k in weights for k in ("d2t", "t2d")) or any(k.startswith("midlayer.") for k in weights):
        raise ModelLoadError(f"{folder} is an EAGLE-3 head (draft vocabulary maps, midlayer); only EAGLE-1/2 heads "
                             "(fc + decoder layers) are supported")
    cfg = target.config
    for key in ("hidden_size", "vocab_size"):
        if raw.get(key, getattr(cfg, key)) != getattr(cfg, key):
            raise ModelLoadError(f"{folder}: the head's {key} {raw[key]} is not the target's {getattr(cfg, key)}; "
                                 "it was trained for another model")
    for key in ("scale_emb", "scale_depth", "dim_model_base"):
        ours, theirs = getattr(cfg, key), raw.get(key)
        if (ours is None) != (theirs is None) or (ours is not None and float(ours) != float(theirs)):
            raise ModelLoadError(f"{folder}: {key} is {theirs} in the head's config and {ours} in the target's; "
                                 "the head was trained for another model")
    weights = {k: v for k, v in weights.items() if k != "embed_tokens.weight" and not k.endswith("rotary_emb.inv_freq")}
    heads = raw.get("num_attention_heads", cfg.num_attention_heads)
    head_dim = raw.get("head_dim") or cfg.hidden_size // heads
    if head_dim != cfg.head_dim:
        raise ModelLoadError(f"{folder}: the head's head_dim {head_dim} is not the target's {cfg.head_dim} "
                             "(the head shares the target's rotary embedding)")
    config = head_config(cfg, raw)
    head = EagleHead(cfg, config, input_norm="input_norm1.weight" in weights,
                     attn_norm="layers.0.input_layernorm.weight" in weights)
    expected = head.state_dict()
    unknown = sorted(set(weights) - set(expected))
    missing = sorted(set(expected) - set(weights))
    if unknown or missing:
        raise ModelLoadError(f"{folder} is not an Eagle head for this runtime: "
                             + "; ".join(p for p in (f"unexpected tensors {', '.join(unknown[:5])}" if unknown else "",
                                                     f"missing {', '.join(missing[:5])}" if missing else "") if p))
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelLoadError(f"{folder}: {name} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(expected[name].shape)} for this target")
    head.load_state_dict(weights)
    return head.to(dtype=target.dtype, device=target.model.embed_tokens.weight.device).eval().requires_grad_(False)



def read_frequency_file(path: Path, vocab_size: int) -> list[int]:
    """A frequency file (upstream's freq_N.pt: a list of token ids, most frequent first)."""
    try:
        ids = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a frequency file ({exc}); `minicpm train frspec` writes one") from None
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelLoadError(f"{path} does not hold a list of token ids")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad or len(set(ids)) != len(ids):
        raise ModelLoadError(f"{path} has ids outside the vocabulary of {vocab_size} or repeated ids "
                             f"({bad[:3] or 'repeats'}); it was made for another tokenizer")
    return ids


def frequency_ids(ranked: list[int], size: int, stop_ids: list[int]) -> list[int]:
    """The `size` most frequent of `ranked` with every stop id kept in place of the least frequent,
    as upstream builds its files (size must exceed len(stop_ids))."""
    kept = [t for t in ranked if t not in stop_ids][: size - len(stop_ids)]
    return kept + list(stop_ids)


def frspec_vocabulary(folder: Path, size: int, stop_ids: set[int], vocab_size: int) -> list[int]:
    """The `size` most frequent tokens, from the smallest freq_N.pt in `folder` with N >= size,
    with every stop id kept (a draft that cannot propose the end would run past it)."""
    if not 1 <= size <= vocab_size:
        raise ModelLoadError(f"--frspec-vocab must be between 1 and the vocabulary size {vocab_size} (got {size})")
    files = {}
    for path in folder.glob("freq_*.pt"):
        suffix = path.stem.removeprefix("freq_")
        if suffix.isdigit():
            files[int(suffix)] = path
    usable = sorted(n for n in files if n >= size)
    if not usable:
        have = ", ".join(p.name for _, p in sorted(files.items())) or "none"
        raise ModelLoadError(f"--frspec-vocab {size}: {folder} has no frequency file with at least {size} ids "
                             f"(found: {have}); write one with `minicpm train frspec --out {folder} --vocab {size}`")
    ranked = read_frequency_file(files[usable[0]], vocab_size)
    if len(ranked) < size:
        raise ModelLoadError(f"{files[usable[0]]} holds {len(ranked)} ids, fewer than its name says")
    stops = [s for s in sorted(stop_ids) if s < vocab_size]
    if size <= len(stops):
        raise ModelLoadError(f"--frspec-vocab {size} leaves no room beside the {len(stops)} stop ids; ask for more")
    return frequency_ids(ranked, size, stops)


@dataclasses.dataclass
class EagleDraft:
    """A loaded head and the vocabulary it drafts over; one drafter per generation."""

    head: EagleHead
    vocab: DraftVocabulary
    label: str

    def drafter(self, target: CausalLM, capacity: int, rope_length: int) -> EagleDrafter:
        return EagleDrafter(self.head, self.vocab, target, capacity, rope_length)


def load_eagle_draft(folder: str | Path, target: CausalLM, stop_ids: set[int], frspec_vocab: int = 0,
                     quant: str = "none") -> EagleDraft:
    """The head in `folder`, drafting over the full vocabulary or (frspec_vocab > 0) FR-Spec's subset.
    quant: the target's --quant; the head's decoder layers get the same (its fc, a few percent of
    its weights and biased, stays float), so that a draft step stays cheap next to a target step."""
    folder = Path(folder).expanduser()
    head = load_eagle_head(folder, target)
    if quant != "none":
        from runtime.quantize import decoder_groups, quantize_groups

        quantize_groups(decoder_groups(head.layers, "layers."), quant)
    vocab_size = target.config.vocab_size
    ids = frspec_vocabulary(folder, frspec_vocab, stop_ids, vocab_size) if frspec_vocab else None
    label = f"Eagle head {folder.name} ({head.config.num_hidden_layers} layer"
    label += f"{'s' if head.config.num_hidden_layers > 1 else ''}, "
    label += f"FR-Spec vocabulary {len(ids)} of {vocab_size})" if ids else f"full vocabulary of {vocab_size})"
    if quant != "none":
        label = label[:-1] + f", {quant} layers)"
    return EagleDraft(head, DraftVocabulary(target, ids, quant), label)
