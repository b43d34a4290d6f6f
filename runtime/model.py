"""MiniCPM4 (and Llama) in PyTorch, in one readable file.

MiniCPM4 is a Llama-family decoder with three muP scalings. A Llama config is the same model with
identity scales; that is how the embedded SmolLM2 runs.

- embeddings are multiplied by `scale_emb`;
- each residual branch (attention, MLP) is multiplied by `scale_depth / sqrt(num_hidden_layers)`;
- after the final RMSNorm, logits = lm_head(h / (hidden_size / dim_model_base)), in float32.

Otherwise: pre-norm RMSNorm (statistics in float32), GQA attention without biases and with scale
1/sqrt(head_dim), SwiGLU MLP, RoPE in float32 with LongRoPE (short or long factors picked by the
sequence length against original_max_position_embeddings, cos/sin multiplied by its attention
factor), tied or untied embeddings.

Module names follow the HF checkpoint (`model.layers.0.self_attn.q_proj.weight`, ...) so a
safetensors file loads without renaming.

Shapes: B batch, T new tokens, S keys visible (cached + new), C hidden, H query heads,
Hkv key/value heads, D head_dim, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.config import ModelConfig
from runtime.grouped_matmul import group_mix, group_scores
from runtime.notices import notify_once
from runtime.sparse_attention import CompressedKeys, SparseSettings, sparse_attention

Segments = list[tuple[int, int]]  # packed sequences along T: (start, end) of each


class KVCache:
    """Preallocated keys and values for every layer of one batch of sequences.

    `capacity` is the most positions it holds. `rope_length` is the sequence length that picks
    LongRoPE's short or long factors for every token written here; generation passes the context
    window (as llama.cpp does with n_ctx, and as upstream's HF code does with its cos/sin cache
    sized to max_position_embeddings), so the choice does not depend on how many tokens are asked
    for, and cached keys never mix the two rotations.
    """

    def __init__(self, config: ModelConfig, batch_size: int, capacity: int, dtype: torch.dtype,
                 device="cpu", rope_length: int | None = None):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, Hkv, capacity, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.rope_length = rope_length or capacity
        self.length = 0  # positions [0, length) hold valid keys
        # InfLLM v2's compressed keys per layer, made on first use by a sparse model (attend()).
        self.compressed: list[CompressedKeys] | None = None

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (rejected draft tokens): later writes overwrite them,
        and the compressed keys that covered any of them are dropped."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length
        for compressed in self.compressed or ():
            compressed.truncate(length)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 whatever the compute dtype, as the HF reference does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE tables in float32, with LongRoPE's factor sets and attention factor.

    Frequencies follow upstream MiniCPM's operation order: freqs = outer(pos, 1 / ext) * inv_freq,
    where ext is short_factor or long_factor (all ones without LongRoPE).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # [D/2]
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        ones = torch.ones(d // 2, dtype=torch.float32)
        if config.rope_type == "longrope":
            short = torch.tensor(config.rope_scaling["short_factor"], dtype=torch.float32)
            long = torch.tensor(config.rope_scaling["long_factor"], dtype=torch.float32)
        elif config.rope_freq_factors is not None:
            short = long = torch.tensor(config.rope_freq_factors, dtype=torch.float32)
        else:
            short = long = ones
        self.register_buffer("short_factor", short, persistent=False)
        self.register_buffer("long_factor", long, persistent=False)
        self.original_max_position_embeddings = config.original_max_position_embeddings
        self.attention_factor = config.rope_attention_factor

    def forward(self, positions: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] int64; seq_len picks the factor set. Returns cos, sin: [T, D] float32."""
        ext = self.long_factor if seq_len > self.original_max_position_embeddings else self.short_factor
        freqs = torch.outer(positions.float(), 1.0 / ext) * self.inv_freq  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, D], HF's rotate_half layout
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, D] in any dtype; rotated in float32 and cast back."""
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query per sequence over all its keys, as grouped matrix products.

    q: [B, H, 1, D]; k, v: [B, Hkv, S, D]. Returns [B, H, 1, D]. The G = H / Hkv query heads of a
    group share one product with their keys; torch's SDPA on CPU expands GQA instead and is 5x
    (float32) to 25x (bfloat16) slower for this shape (measured, benchmarks/sparse_attention.py).
    """
    b, h, _, d = q.shape
    out = []
    for i in range(b):
        qg = q[i].reshape(k.shape[1], h // k.shape[1], d)  # [Hkv, G, D]
        scores = group_scores(qg, k[i]).mul_(d**-0.5)  # [Hkv, G, S]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        out.append(group_mix(probs, v[i]).reshape(h, 1, d))
    return torch.stack(out)


# Up to this many queries continuing a cache (speculative verification, a short chat turn) attend
# one by one as decode steps do (see few_query_attention).
FEW_QUERIES = 16


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int) -> torch.Tensor:
    """T queries at positions q_start .. q_start + T - 1 over keys [0, S), causal, each exactly as a
    decode step at its position computes it (decode_attention over its visible keys).

    Why not one masked product: SDPA on CPU expands GQA for a mask (2x a decode step for 2 queries
    on the embedded model), and any batched product rounds differently from the decode step. A
    quantized model casts activations to bfloat16 before each int4/int8 product, so a float32
    difference of one ulp there can flip a rounding and change the greedy text; verified drafts
    must give the tokens plain decoding gives. The linear layers are row-independent already.
    q: [B, H, T, D]; k, v: [B, Hkv, S, D], S = q_start + T. Returns [B, H, T, D].
    """
    t = q.shape[2]
    return torch.cat([decode_attention(q[:, :, i : i + 1], k[:, :, : q_start + i + 1], v[:, :, : q_start + i + 1])
                      for i in range(t)], dim=2)


def attend(q, k, v, q_start: int, layer: int, cache: KVCache | None, sparse: SparseSettings | None,
           segments: Segments | None = None) -> torch.Tensor:
    """Dense attention, or InfLLM v2 when the model runs sparse; shapes as in dense_attention.
    segments: packed training sequences, (start, end) of each along T; each attends causally within
    itself, as its own causal product (no [T, T] mask: SDPA's masked path is 2x slower on CPU)."""
    if segments is not None:
        gqa = q.shape[1] != k.shape[1]
        return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                         enable_gqa=gqa) for a, b in segments], dim=2)
    if sparse is None:
        return dense_attention(q, k, v, q_start)
    b, hkv, s, d = k.shape
    if cache is None:  # a whole sequence at once: its compressed keys live for this call only
        compressed = CompressedKeys(sparse, b, hkv, d, s, k.dtype, k.device)
    else:
        if cache.compressed is None:
            cache.compressed = [CompressedKeys(sparse, b, hkv, d, cache.capacity, k.dtype, k.device)
                                for _ in range(cache.k.shape[0])]
        compressed = cache.compressed[layer]
    compressed.update(k)  # also while still dense, so the kernels are there once it goes sparse
    if b != 1:
        notify_once("InfLLM v2 sparse attention runs one sequence at a time; this batch of "
                    f"{b} runs dense attention")
        return dense_attention(q, k, v, q_start)
    return sparse_attention(q, k, v, q_start, compressed, dense_attention)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int) -> torch.Tensor:
    """Causal attention of T queries at positions [q_start, q_start + T) over keys [0, S).

    q: [B, H, T, D]; k, v: [B, Hkv, S, D] with S = q_start + T. Returns [B, H, T, D].
    Scale 1/sqrt(D). runtime/sparse_attention.py implements the same signature sparsely.
    """
    t, s = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if t == 1:  # one decode step sees every cached key: no mask at all
        return decode_attention(q, k, v)
    if q_start > 0 and t <= FEW_QUERIES and q.device.type == "cpu":
        return few_query_attention(q, k, v, q_start)
    if q_start == 0 and t == s:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    # Chunked prefill: query i sits at position q_start + i and sees keys j <= q_start + i.
    query_pos = torch.arange(q_start, q_start + t, device=q.device)[:, None]
    mask = torch.arange(s, device=q.device)[None, :] <= query_pos  # [T, S]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        # q, k and v in one product, when runtime/quantize.py fuses them (one kernel call, not three)
        self.qkv_proj: nn.Module | None = None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, C] -> q [B, T, H*D], k and v [B, T, Hkv*D]."""
        if self.qkv_proj is not None:
            kv = self.n_kv_heads * self.head_dim
            return self.qkv_proj(x).split([self.n_heads * self.head_dim, kv, kv], dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x, cos, sin, layer: int, cache: KVCache | None, start: int,
                sparse: SparseSettings | None = None, segments: Segments | None = None) -> torch.Tensor:
        b, t, _ = x.shape  # x: [B, T, C]
        q, k, v = self.project(x)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache.k[layer, :, :, start : start + t] = k  # cast to the cache's dtype, if it has its own
            cache.v[layer, :, :, start : start + t] = v
            k = cache.k[layer, :, :, : start + t]  # [B, Hkv, S, D]
            v = cache.v[layer, :, :, : start + t]
            q = q.to(k.dtype)  # a cache in its own dtype (--kv-dtype): attention runs in it
        out = attend(q, k, v, start, layer, cache, sparse, segments).to(x.dtype)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up_proj: nn.Module | None = None  # gate and up in one product (runtime/quantize.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.index = index
        self.residual_scale = config.residual_scale  # scale_depth / sqrt(L); 1 for Llama
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, h, cos, sin, cache: KVCache | None, start: int, sparse: SparseSettings | None = None,
                segments: Segments | None = None) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(h), cos, sin, self.index, cache, start, sparse, segments)
        h = h + attn * self.residual_scale
        return h + self.mlp(self.post_attention_layernorm(h)) * self.residual_scale


class Backbone(nn.Module):
    """HF's `model.` prefix: embeddings, decoder layers and the final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """The whole model: `model.*` as in the HF checkpoint, plus `lm_head` (tied or not)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = RotaryEmbedding(config)
        self.sparse: SparseSettings | None = None  # InfLLM v2 when set (runtime/sparse_attention.py)
        self.kv_dtype: torch.dtype | None = None  # the KV cache's, when not the compute dtype (--kv-dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def new_cache(self, capacity: int, batch_size: int = 1, rope_length: int | None = None) -> KVCache:
        device = self.model.embed_tokens.weight.device
        return KVCache(self.config, batch_size, capacity, self.kv_dtype or self.dtype, device, rope_length)

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None, rope_length: int | None = None,
                      positions: torch.Tensor | None = None, segments: Segments | None = None,
                      last_only: bool = False) -> torch.Tensor:
        """The final hidden states [B, T, C] (normed, divided by the logit divisor) that lm_head turns
        into logits. Training passes packed sequences (training/batches.py): positions [T] restart at
        each sequence, and segments keeps attention causal within each (see attend)."""
        t = input_ids.shape[1]
        start = cache.length if cache is not None else 0
        if cache is not None and start + t > cache.capacity:
            raise ValueError(f"KV cache holds {cache.capacity} positions; {start} used, {t} more requested")
        seq_len = rope_length or (cache.rope_length if cache is not None else t)
        if positions is None:
            positions = torch.arange(start, start + t, device=input_ids.device)
        cos, sin = self.rotary(positions, seq_len)  # [T, D] each

        h = self.model.embed_tokens(input_ids) * self.config.embedding_scale  # [B, T, C]
        for layer in self.model.layers:
            h = layer(h, cos, sin, cache, start, self.sparse, segments)
        if cache is not None:
            cache.length = start + t
        if last_only:
            h = h[:, -1:]
        return self.model.norm(h) / self.config.logit_divisor

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        last_logits_only: bool = False,
        rope_length: int | None = None,
    ) -> torch.Tensor:
        """input_ids: [B, T]. Returns float32 logits [B, T, V] (or [B, 1, V] with last_logits_only).

        With a cache the tokens continue the cached sequence at position cache.length, and the
        cache advances by T; without one they form a whole sequence starting at position 0.
        rope_length picks the LongRoPE factor set; by default the cache's, else T.
        """
        return self.logits(self.hidden_states(input_ids, cache, rope_length, last_only=last_logits_only))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits [B, T, V] from hidden_states' output h [B, T, C]."""
        rows = h.shape[0] * h.shape[1]
        if h.dtype == torch.float32 and h.device.type == "cpu" and 1 < rows <= FEW_QUERIES \
                and type(self.lm_head) is nn.Linear:
            # A few rows against the vocabulary (speculative verification): MKL's float32 product
            # of 2 to 16 rows with the [V, C] matrix took 2-5x longer than the same product the other
            # way round, W @ h^T (embedded model, V = 49152: 16.8 ms against 3.1 ms for 2 rows;
            # bfloat16 is the opposite, so it keeps lm_head()).
            return torch.mm(self.lm_head.weight, h.reshape(rows, -1).T).T.reshape(*h.shape[:2], -1)
        return self.lm_head(h).float()  # [B, T, V]
