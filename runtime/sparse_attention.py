"""InfLLM v2 trainable sparse attention (MiniCPM4), the CPU path in torch.

The definition, for one query token at position p (MiniCPM4 paper §2.1, InfLLM-V2 paper §3, and
upstream's HF code and CUDA kernels, ../shared/reference/upstream-runtime.md §2):

Stage 1, block selection.
- Compressed keys: C1_j = mean(K[s*j : s*j + ks]) over kernels of ks = kernel_size (32) tokens with
  stride s = kernel_stride (16). A kernel is visible to p when it lies wholly at or before it:
  s*j + ks - 1 <= p (upstream's naive stage-1 reference uses the same rule).
- Each query head h scores the visible kernels, P_hj = exp(q_h . C1_j / sqrt(D) - lse_h). With the
  LSE approximation (on by default, InfLLM-V2 §3.4) lse_h is the log-sum-exp over the coarse kernels
  C2 (4*ks tokens, stride 4*s) visible to p, one cheap pass instead of a second exact one; off, it
  is the exact log-sum-exp over C1. (A query too early to see any C2 kernel uses the exact one.)
- The scores are summed over the heads of each GQA group: the group shares one selection.
- Block k (tokens [B*k, B*k + B), B = block_size 64) scores the max over the kernels that overlap it
  (for the defaults, kernels 4k-1 .. 4k+3, upstream's max-pooling with window 5, stride 4, pad 1).
- Blocks k < init_blocks and the local window q_block - window/B <= k <= q_block score +inf; future
  blocks (k > q_block) never count.
- The top (topk + window/B) blocks are selected, ties going to the earlier block. This is the accounting of upstream's HF code
  (self.topk = topk + window_size // block_size, 96 for MiniCPM4-8B) with its current pooling
  kernel (+inf for init and local blocks, the local window including the query's own block): 1 init
  + 33 local + 62 scored blocks, 6,144 tokens. The InfLLM-V2 paper counts 1 + 63 + 32; we follow
  the code because it is what runs with the released weights.
Stage 2: the query attends the tokens of its selected blocks, causally (its own block up to p).

Dense below dense_len, per query: a query with fewer than dense_len keys (p + 1 < dense_len) attends
all of them. Upstream decides per forward call by the total length, so in one long prefill even
its early queries go sparse; deciding per query makes chunked and unchunked prefill identical, and
decode is the same either way.

How this CPU path runs it:
- The compressed keys live beside the KV cache and grow with it. After every prefill chunk or decode
  step the kernels completed by the new keys are averaged from the cached keys. The uncompressed
  tail is the cache itself, so nothing is copied; a C1 key appears every 16 tokens and a C2 key every 64.
- Queries go through in tiles of one query block (64 tokens), whose queries share their forced
  blocks. Both stages run in a small C kernel (runtime/cpu_kernel.py, up to 32 query heads per KV
  head and head_dim 256): stage 1 fused (scores, LSE, group sum, pooling and top-k in one call,
  which matters for decode, where two dozen small torch operations per layer cost more than the
  arithmetic), stage 2 reading each query's own key ranges from the cache in place; in a decode
  step both threads share one query's work. Without a C compiler both run in torch: stage 1 as
  batched products over the compressed keys, stage 2 as one masked product with the tile's union
  of chosen blocks when neighbouring queries chose alike, or with per-query gathers when they did
  not. Stage 1 runs in float32 in both, so they can part only at blocks whose scores tie to
  float32 rounding; stage 2 keeps float32 softmax statistics over products in the model's dtype.
- On a GPU (a model whose tensors are on CUDA, bfloat16 or float16, head_dim 64 or 128) both
  stages run in the CUDA kernels of runtime/cuda_kernel.py, the whole chunk of queries at once;
  where those cannot run, the torch operations above run on the GPU, after a one-time notice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from runtime import cpu_kernel, cuda_kernel
from runtime.config import SparseConfig
from runtime.errors import UnsupportedModelError
from runtime.grouped_matmul import group_scores

# Memory one step of work may take (float32 scores, gathered keys and values): large enough to
# amortise Python's per-step cost, small enough to stay out of fresh pages (on these machines a
# fresh allocation of tens of MB costs more in page faults than the arithmetic done with it).
STEP_BYTES = 16 * 2**20
# A tile takes its queries' union of score-chosen blocks as one product while that union is at
# most this many times one query's blocks; beyond it, a per-query gather costs less (measured:
# per key, the gather path costs about 3x the batched product).
UNION_FACTOR = 3
# Largest exponent in a stage-1 score (the C kernel uses the same cap).
MAX_EXPONENT = 80.0


@dataclass(frozen=True)
class SparseSettings:
    """What the runtime runs: sparse_config's fields plus the LSE switch."""

    kernel_size: int = 32
    kernel_stride: int = 16
    init_blocks: int = 1
    block_size: int = 64
    window_size: int = 2048
    topk: int = 64
    dense_len: int = 8192
    use_lse: bool = True

    def __post_init__(self) -> None:
        for name in ("kernel_size", "kernel_stride", "block_size", "topk"):
            if getattr(self, name) < 1:
                raise UnsupportedModelError(f"sparse attention: {name} must be at least 1 (got {getattr(self, name)})")
        for name in ("init_blocks", "window_size"):
            if getattr(self, name) < 0:
                raise UnsupportedModelError(f"sparse attention: {name} must not be negative (got {getattr(self, name)})")
        if self.dense_len < -1:  # upstream's -1 means sparse from the first token, as 0 does here
            raise UnsupportedModelError(f"sparse attention: dense_len must be -1 or more (got {self.dense_len})")
        s = self.kernel_stride
        if self.block_size % s or self.kernel_size % s or self.kernel_size < s:
            raise UnsupportedModelError(
                f"sparse attention needs block_size ({self.block_size}) and kernel_size ({self.kernel_size}) "
                f"to be multiples of kernel_stride ({s}), kernel_size at least the stride"
            )
        if self.window_size % self.block_size:
            raise UnsupportedModelError(
                f"sparse attention needs window_size ({self.window_size}) to be a multiple of block_size "
                f"({self.block_size})"
            )
        if self.topk <= self.init_blocks:
            raise UnsupportedModelError(
                f"sparse attention: topk ({self.topk}) must exceed init_blocks ({self.init_blocks}), or no "
                "block is ever chosen by score"
            )

    @classmethod
    def from_config(cls, config: SparseConfig | None, **overrides) -> SparseSettings:
        """MiniCPM4-8B's values, then the checkpoint's sparse_config, then explicit overrides."""
        values = {}
        if config is not None:
            values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def local_blocks(self) -> int:
        return self.window_size // self.block_size

    @property
    def selected_blocks(self) -> int:
        return self.topk + self.local_blocks


class CompressedKeys:
    """The compressed keys of one layer (C1, and C2 for the LSE pass), grown from the cached keys."""

    def __init__(self, settings: SparseSettings, batch: int, kv_heads: int, head_dim: int,
                 capacity: int, dtype: torch.dtype, device="cpu"):
        self.settings = settings
        self.kernels = [(settings.kernel_size, settings.kernel_stride)]
        if settings.use_lse:
            self.kernels.append((4 * settings.kernel_size, 4 * settings.kernel_stride))
        self.stores = []  # per kernel kind: [B, Hkv, max kernels, D]
        for size, stride in self.kernels:
            n = max(0, (capacity - size) // stride + 1)
            self.stores.append(torch.empty(batch, kv_heads, n, head_dim, dtype=dtype, device=device))
        self.counts = [0] * len(self.kernels)  # kernels filled so far, per kind

    def update(self, keys: torch.Tensor) -> None:
        """keys: [B, Hkv, S, D], every key of the sequence so far; averages the newly complete kernels."""
        length = keys.shape[2]
        for i, (size, stride) in enumerate(self.kernels):
            done = self.counts[i]
            total = (length - size) // stride + 1 if length >= size else 0
            if total > done:
                window = keys[:, :, done * stride : (total - 1) * stride + size]
                kernels = window.unfold(2, size, stride)  # [B, Hkv, new, D, size]
                self.stores[i][:, :, done:total] = kernels.mean(-1, dtype=torch.float32).to(self.stores[i].dtype)
                self.counts[i] = total

    def truncate(self, length: int) -> None:
        """Keep only the kernels that lie wholly in the first `length` keys (the cache was cut back)."""
        for i, (size, stride) in enumerate(self.kernels):
            self.counts[i] = min(self.counts[i], (length - size) // stride + 1 if length >= size else 0)

    def keys(self, kind: int) -> torch.Tensor:
        """The kernels computed so far, [B, Hkv, n, D], of kind 0 (C1) or 1 (C2)."""
        return self.stores[kind][:, :, : self.counts[kind]]

    def visible(self, kind: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [B, Hkv, n, D], last token position of each kernel [n]) for kernel kind 0 (C1) or 1 (C2)."""
        size, stride = self.kernels[kind]
        keys = self.keys(kind)
        return keys, torch.arange(keys.shape[2], device=keys.device) * stride + size - 1


def select_blocks(q: torch.Tensor, compressed: CompressedKeys, q_start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 for one sequence: the blocks each query token attends.

    q: [Hkv, G, T, D] (one sequence's query heads by group) at positions q_start .. q_start + T - 1;
    length: keys in the sequence. Returns block indices [Hkv, T, K] and their block scores [Hkv, T, K],
    best first (K = min(topk + local blocks, blocks)): +inf marks a forced block, -inf an empty slot
    (fewer blocks exist than K), a finite score a block chosen by score.
    """
    st = compressed.settings
    hkv, g, t, d = q.shape
    n_blocks = -(-length // st.block_size)
    if cpu_kernel.available(d, q.dtype, g) and q.device.type == "cpu":  # the same computation, fused in C
        c2 = compressed.keys(1)[0] if st.use_lse else None
        return cpu_kernel.select_blocks(q, compressed.keys(0)[0], c2, q_start, compressed.kernels,
                                        st.block_size, st.init_blocks, st.local_blocks, n_blocks,
                                        min(st.selected_blocks, n_blocks))
    scale = d**-0.5
    pos = torch.arange(q_start, q_start + t, device=q.device)  # [T]

    # Scores in float32 from the start: a bfloat16 product keeps 3 digits, enough to reorder blocks
    # near the top-k cut. A group's heads share its keys: one product, no broadcast copies.
    rows = q.reshape(hkv, g * t, d).float()

    def logits(keys: torch.Tensor) -> torch.Tensor:  # keys [Hkv, n, D] -> [Hkv, G, T, n] float32
        return group_scores(rows, keys.float()).mul_(scale).view(hkv, g, t, -1)

    c1, ends1 = compressed.visible(0)
    s1 = logits(c1[0])  # [Hkv, G, T, n1]
    if len(ends1) and ends1[-1] > q_start:  # some kernel ends after the first query (never in decode)
        s1.masked_fill_((ends1[None, :] > pos[:, None]), float("-inf"))
    if st.use_lse:
        c2, ends2 = compressed.visible(1)
        s2 = logits(c2[0])  # [Hkv, G, T, n2]
        if len(ends2) and ends2[-1] <= q_start:  # every coarse kernel visible to every query
            lse = torch.logsumexp(s2, dim=-1)  # [Hkv, G, T]
        else:
            seen2 = ends2[None, :] <= pos[:, None]  # [T, n2]
            lse = torch.logsumexp(s2.masked_fill_(~seen2, float("-inf")), dim=-1)
            early = ~seen2.any(dim=-1)  # queries before the first coarse kernel: exact LSE
            if early.any():
                lse = torch.where(early, torch.logsumexp(s1, dim=-1), lse)
    else:
        lse = torch.logsumexp(s1, dim=-1)
    lse = torch.nan_to_num(lse, neginf=0.0)  # no visible kernel at all: every probability is 0 anyway
    # The approximate LSE can sit far below a C1 logit; capping the exponent keeps every score finite,
    # so +inf marks forced blocks only (80: the sum over 32 heads still fits in float32).
    score = s1.sub_(lse.unsqueeze(-1)).clamp_(max=MAX_EXPONENT).exp_().sum(dim=1)  # [Hkv, T, n1], summed over the group

    # Block k: max over the kernels overlapping tokens [B*k, B*k + B).
    per_block = st.block_size // st.kernel_stride
    pad = st.kernel_size // st.kernel_stride - 1
    window = per_block + pad
    right = max(0, n_blocks * per_block + window - per_block - pad - score.shape[-1])
    padded = torch.nn.functional.pad(score, (pad, right), value=float("-inf"))
    block_score = padded.unfold(-1, window, per_block)[..., :n_blocks, :].amax(dim=-1)  # [Hkv, T, nb]

    blocks = torch.arange(n_blocks, device=q.device)[None, :]
    q_block = (pos // st.block_size)[:, None]
    forced = (blocks < st.init_blocks) | ((blocks >= q_block - st.local_blocks) & (blocks <= q_block))
    block_score = block_score.masked_fill(forced, float("inf")).masked_fill(blocks > q_block, float("-inf"))
    # Adjacent blocks often share their best kernel and tie exactly; a stable sort breaks ties
    # towards the earlier block, so the selection is deterministic (topk's order among ties is not).
    values, order = block_score.sort(dim=-1, descending=True, stable=True)
    keep = min(st.selected_blocks, n_blocks)
    return order[..., :keep], values[..., :keep]  # [Hkv, T, K]


def gather_blocks(x: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """x: [Hkv, S, D] with contiguous rows per head (the cache); blocks: [Hkv, ...] indices of
    complete blocks. Returns [Hkv, ..., B, D]: each block copied as one run of B * D values
    (index_select on a [blocks, B * D] view: twice the speed of indexing token by token)."""
    hkv, s, d = x.shape
    n = s // block_size
    out = [torch.index_select(x[h, : n * block_size].reshape(n, block_size * d), 0, blocks[h].reshape(-1))
           for h in range(hkv)]
    return torch.stack(out).view(*blocks.shape, block_size, d)


def attend_tile(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chosen: torch.Tensor, values: torch.Tensor,
                q_start: int, st: SparseSettings) -> torch.Tensor:
    """Stage 2 for a tile of queries that share one query block: each attends its selected blocks.

    q: [Hkv, G, T, D] at positions q_start .. q_start + T - 1, all in block q_start // block_size;
    k, v: [Hkv, S, D] with contiguous rows; chosen, values: [Hkv, T, K] from select_blocks.
    Returns [Hkv, G, T, D].

    Part A, the forced blocks (init and local window), is the same for every query of the tile:
    gathered once. Part B, the blocks chosen by score, differs per query. When the tile's queries
    chose alike (their union is at most UNION_FACTOR times one query's blocks), the union is
    gathered once and masked per query; real models choose alike (the embedded model: union 1.5-2x).
    When they did not (random inputs: the union nears every block), each query gathers its own,
    as upstream's kernel tiles one token's grouped heads. Both are exact; the two parts share one
    softmax, and the queries go through in steps that bound the score tensors' memory.
    With the C kernel (runtime/cpu_kernel.py) every query reads its own ranges in place instead.
    """
    hkv, g, t, d = q.shape
    s, bs = k.shape[1], st.block_size
    dev, dtype = q.device, q.dtype
    q_block = q_start // bs

    # Part A: blocks [0, init) and the window up to the query's own block, causal inside it.
    local_from = max(st.init_blocks, q_block - st.local_blocks) * bs  # the window starts after init
    local_to = min(s, (q_block + 1) * bs)  # keys exist up to the tile's last query
    init_to = min(st.init_blocks * bs, local_to)
    # Part B: the score-chosen blocks follow the +inf (forced) ones in the sorted selection; every
    # query of the tile has the same number of each, all complete blocks wholly in its past.
    first = values[0, 0]
    n_forced = int((first == float("inf")).sum())
    n_scored = int(torch.isfinite(first).sum())
    scored = chosen[..., n_forced : n_forced + n_scored]  # [Hkv, T, Ks]
    if cpu_kernel.available(d, q.dtype, g) and q.device.type == "cpu":
        # Each query its own key ranges, read from the cache in place by the C kernel: per key it
        # is as fast as the batched products below and touches only the keys each query chose.
        return cpu_kernel.attend_ranges(q, k, v, query_ranges(q_start, t, init_to, local_from, scored, bs))
    per_query = False
    if n_scored:
        union, member = block_union(scored, s // bs)
        per_query = union.shape[1] > UNION_FACTOR * n_scored

    k_a = torch.cat([k[:, :init_to], k[:, local_from:local_to]], dim=1)  # [Hkv, F, D], packed
    v_a = torch.cat([v[:, :init_to], v[:, local_from:local_to]], dim=1)
    forced = torch.cat([torch.arange(init_to, device=dev), torch.arange(local_from, max(local_from, local_to), device=dev)])
    width = 0
    if n_scored:
        if not per_query:  # one gather for the tile
            k_b = gather_blocks(k, union, bs).view(hkv, -1, d)  # [Hkv, U*B, D]
            v_b = gather_blocks(v, union, bs).view(hkv, -1, d)
            allowed_b = member.repeat_interleave(bs, dim=-1)  # [Hkv, T, U*B]
        width = (n_scored if per_query else union.shape[1]) * bs

    row_bytes = hkv * g * 4 * (forced.numel() + width) + (2 * hkv * width * d * q.element_size() if per_query else 0)
    step = max(1, min(t, STEP_BYTES // row_bytes))
    out = torch.empty(hkv, g, t, d, dtype=dtype, device=dev)
    scale = d**-0.5
    for lo in range(0, t, step):
        hi = min(t, lo + step)
        qs, n = q[:, :, lo:hi], hi - lo
        pos = torch.arange(q_start + lo, q_start + hi, device=dev)
        logits_a = torch.bmm(qs.reshape(hkv, g * n, d), k_a.transpose(1, 2)).float().view(hkv, g, n, -1)
        logits_a.masked_fill_((forced[None, :] > pos[:, None]), float("-inf"))  # causal in its own block
        peak = logits_a.amax(-1)  # [Hkv, G, n]
        if n_scored and per_query:
            k_b = gather_blocks(k, scored[:, lo:hi], bs).view(hkv, n, -1, d)  # [Hkv, n, Ks*B, D]
            v_b = gather_blocks(v, scored[:, lo:hi], bs).view(hkv, n, -1, d)
            logits_b = torch.matmul(qs.transpose(1, 2), k_b.transpose(-1, -2)).float()  # [Hkv, n, G, Ks*B]
            peak = torch.maximum(peak, logits_b.amax(-1).transpose(1, 2))
        elif n_scored:
            logits_b = torch.bmm(qs.reshape(hkv, g * n, d), k_b.transpose(1, 2)).float().view(hkv, g, n, -1)
            logits_b.masked_fill_(~allowed_b[:, None, lo:hi], float("-inf"))  # [Hkv, G, n, U*B]
            peak = torch.maximum(peak, logits_b.amax(-1))
        # In place throughout: fresh tensors of this size cost more in page faults than the exp itself.
        weights_a = logits_a.sub_(peak.unsqueeze(-1)).mul_(scale).exp_()
        total = weights_a.sum(-1)  # [Hkv, G, n]
        acc = torch.bmm(weights_a.to(dtype).view(hkv, g * n, -1), v_a).view(hkv, g, n, d).float()
        if n_scored and per_query:
            weights_b = logits_b.sub_(peak.transpose(1, 2).unsqueeze(-1)).mul_(scale).exp_()
            total += weights_b.sum(-1).transpose(1, 2)
            acc += torch.matmul(weights_b.to(dtype), v_b).transpose(1, 2).float()
        elif n_scored:
            weights_b = logits_b.sub_(peak.unsqueeze(-1)).mul_(scale).exp_()
            total += weights_b.sum(-1)
            acc += torch.bmm(weights_b.to(dtype).view(hkv, g * n, -1), v_b).view(hkv, g, n, d).float()
        out[:, :, lo:hi] = acc / total.unsqueeze(-1)
    return out


def query_ranges(q_start: int, t: int, init_to: int, local_from: int, scored: torch.Tensor, bs: int) -> torch.Tensor:
    """The token ranges each query of a tile attends: [Hkv, T, 2 + Ks, 2] (start, end), half-open.

    The init blocks, the local window up to and including the query itself (causal), then its
    score-chosen blocks, all complete and in its past.
    """
    hkv, _, ks = scored.shape
    dev = scored.device
    ranges = torch.empty(hkv, t, 2 + ks, 2, dtype=torch.long, device=dev)
    ends = torch.arange(q_start + 1, q_start + t + 1, device=dev)  # causal: up to the query itself
    ranges[:, :, 0, 0], ranges[:, :, 0, 1] = 0, ends.clamp(max=init_to)
    # In the init block itself the window starts past the query: an empty range at the query.
    ranges[:, :, 1, 0], ranges[:, :, 1, 1] = ends.clamp(max=local_from), ends
    ranges[:, :, 2:, 0] = scored * bs
    ranges[:, :, 2:, 1] = scored * bs + bs
    return ranges


def block_union(blocks: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks any query of a tile chose, per group, and who chose them.

    blocks: [Hkv, T, K] (each query's blocks, all < n_blocks). Returns union [Hkv, U] (sorted,
    padded with repeats of a real block where a group's union is smaller) and member [Hkv, T, U]
    (query t chose union block u; False on padding).
    """
    hkv, t, _ = blocks.shape
    dev = blocks.device
    present = torch.zeros(hkv, n_blocks, dtype=torch.bool, device=dev)
    present.scatter_(1, blocks.reshape(hkv, -1), True)
    width = int(present.sum(dim=1).max())
    # Sort each group's present blocks first (stable: ascending block order), pad with its first block.
    order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices[:, :width]  # [Hkv, U]
    real = present.gather(1, order)
    union = torch.where(real, order, order[:, :1])
    column = torch.full((hkv, n_blocks + 1), width, dtype=torch.long, device=dev)
    column.scatter_(1, torch.where(real, order, n_blocks), torch.arange(width, device=dev).expand(hkv, -1))
    member = torch.zeros(hkv, t, width + 1, dtype=torch.bool, device=dev)
    member.scatter_(2, column.gather(1, blocks.reshape(hkv, -1)).view(hkv, t, -1), True)
    return union, member[..., :width]


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int,
                     compressed: CompressedKeys, dense) -> torch.Tensor:
    """InfLLM v2 attention with the signature of model.dense_attention (plus its state).

    q: [B, H, T, D] at positions q_start .. q_start + T - 1; k, v: [B, Hkv, S, D], S = q_start + T;
    compressed: the layer's compressed keys, already updated with k; dense: the dense attention
    used for queries below dense_len. Returns [B, H, T, D].
    """
    st = compressed.settings
    b, h, t, d = q.shape
    hkv = k.shape[1]
    # Queries at positions p with p + 1 < dense_len attend densely (see the module docstring).
    n_dense = min(t, max(0, st.dense_len - 1 - q_start))
    parts = []
    if n_dense:
        parts.append(dense(q[:, :, :n_dense], k[:, :, : q_start + n_dense], v[:, :, : q_start + n_dense], q_start))
    if n_dense < t:
        if b != 1:
            raise UnsupportedModelError("the torch sparse attention runs one sequence at a time (batch size 1)")
        qg = q[0].reshape(hkv, h // hkv, t, d)
        k0, v0 = k[0], v[0]
        if k0.stride(-2) != d or v0.stride() != k0.stride():  # a fresh projection (no cache) is token-major: copy once
            k0, v0 = k0.contiguous(), v0.contiguous()
        if q.is_cuda and cuda_kernel.available(d, q.dtype, h // hkv):  # both stages in CUDA kernels
            out = cuda_kernel.sparse_attention(qg[:, :, n_dense:], k0, v0, q_start + n_dense, compressed)
            parts.append(out.reshape(1, h, t - n_dense, d))
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        n_kernels = sum(compressed.counts)
        stage1_step = max(1, STEP_BYTES // (h * 4 * max(1, n_kernels)))  # float32 scores per query
        outs = []
        lo = n_dense
        while lo < t:  # one tile per query block: its queries share their forced blocks
            hi = min(t, ((q_start + lo) // st.block_size + 1) * st.block_size - q_start)
            length = q_start + hi  # keys up to the tile's last query
            picks = [select_blocks(qg[:, :, a : min(hi, a + stage1_step)], compressed, q_start + a, length)
                     for a in range(lo, hi, stage1_step)]
            chosen, values = (torch.cat(x, dim=1) for x in zip(*picks))
            outs.append(attend_tile(qg[:, :, lo:hi], k0[:, :length], v0[:, :length], chosen, values, q_start + lo, st))
            lo = hi
        parts.append(torch.cat(outs, dim=2).reshape(1, h, t - n_dense, d))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def compressed_cache_bytes(compressed: list[CompressedKeys]) -> int:
    """Memory the compressed keys of all layers take (reported by the benchmarks)."""
    return sum(store.numel() * store.element_size() for c in compressed for store in c.stores)


def resolve_sparse(mode: str, config, overrides: dict | None = None) -> tuple[SparseSettings | None, list[str]]:
    """The settings to run with for `--sparse auto|on|off`, and what to tell the user.

    auto: on for MiniCPM configs that carry a sparse_config (released MiniCPM4 configs do not: upstream
    tells users to add it); on: any model, with its sparse_config or MiniCPM4-8B's values; off: dense.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    notes: list[str] = []
    if mode not in ("auto", "on", "off"):
        raise UnsupportedModelError(f"--sparse must be auto, on or off (got {mode!r})")
    wanted = mode == "on" or (mode == "auto" and config.is_minicpm and config.sparse_config is not None)
    if not wanted:
        if overrides:
            flags = ", ".join(f"--sparse-{k.replace('_', '-')}" for k in overrides)
            notes.append(f"{flags} has no effect: sparse attention is off (add --sparse on)")
        return None, notes
    if config.sparse_config is not None and config.sparse_config.use_nope:
        raise UnsupportedModelError(
            "sparse_config.use_nope=true (stage 1 on keys before RoPE) is not implemented in the torch "
            "runtime; set it to false in config.json or run with --sparse off"
        )
    return SparseSettings.from_config(config.sparse_config, **overrides), notes


def describe(settings: SparseSettings) -> str:
    return (
        f"InfLLM v2 sparse attention from {settings.dense_len} tokens on: top {settings.selected_blocks} "
        f"blocks of {settings.block_size} tokens ({settings.init_blocks} initial, a "
        f"{settings.window_size}-token window, {settings.topk} by score), LSE approximation "
        f"{'on' if settings.use_lse else 'off'}"
    )
