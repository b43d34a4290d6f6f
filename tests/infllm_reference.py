"""A slow reference of InfLLM v2 attention, written to be obviously correct rather than fast.

It follows the definition in runtime/sparse_attention.py's docstring literally, one query at a time,
in float64: kernels and blocks by their token ranges (no index arithmetic shared with the fast
path), the selection as sets, and the full [Hkv, T, S] selection mask materialised before a plain
masked softmax.
"""

from __future__ import annotations

import math

import torch

from runtime.sparse_attention import SparseSettings


def kernels(k: torch.Tensor, size: int, stride: int) -> list[tuple[int, int, torch.Tensor]]:
    """(first token, last token, mean key [Hkv, D]) of every complete kernel of k [Hkv, S, D]."""
    out, start = [], 0
    while start + size <= k.shape[1]:
        out.append((start, start + size - 1, k[:, start : start + size].mean(dim=1)))
        start += stride
    return out


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, st: SparseSettings):
    """q: [H, T, D] at positions q_start..; k, v: [Hkv, S, D]. Returns (out [H, T, D], mask
    [Hkv, T, S], selections {(group, query): set of blocks}, block scores {(group, query): {block: score}})."""
    q, k, v = q.double(), k.double(), v.double()
    h, t, d = q.shape
    hkv, s, _ = k.shape
    g = h // hkv
    fine = kernels(k, st.kernel_size, st.kernel_stride)
    coarse = kernels(k, 4 * st.kernel_size, 4 * st.kernel_stride)
    mask = torch.zeros(hkv, t, s, dtype=torch.bool)
    selections, block_scores = {}, {}
    for i in range(t):
        p = q_start + i
        if p + 1 < st.dense_len:
            mask[:, i, : p + 1] = True
            continue
        q_block = p // st.block_size
        for group in range(hkv):
            visible = [(lo, hi, key[group]) for lo, hi, key in fine if hi <= p]
            kernel_score = [0.0] * len(visible)
            for head in range(group * g, (group + 1) * g):
                logits = [float(q[head, i] @ key) / math.sqrt(d) for _, _, key in visible]
                coarse_logits = [float(q[head, i] @ key[group]) / math.sqrt(d) for _, hi, key in coarse if hi <= p]
                normaliser = coarse_logits if st.use_lse and coarse_logits else logits
                lse = math.log(sum(math.exp(x) for x in normaliser)) if normaliser else 0.0
                for j, x in enumerate(logits):
                    kernel_score[j] += math.exp(x - lse)
            scores, forced = {}, set()
            for block in range(q_block + 1):
                first, last = block * st.block_size, (block + 1) * st.block_size - 1
                if block < st.init_blocks or block >= q_block - st.local_blocks:
                    forced.add(block)
                    continue
                overlapping = [kernel_score[j] for j, (lo, hi, _) in enumerate(visible) if lo <= last and hi >= first]
                scores[block] = max(overlapping) if overlapping else float("-inf")
            ranked = sorted(scores, key=lambda b: -scores[b])
            chosen = forced | set(ranked[: max(0, st.selected_blocks - len(forced))])
            selections[group, i] = chosen
            block_scores[group, i] = scores
            for block in chosen:
                lo, hi = block * st.block_size, min((block + 1) * st.block_size, p + 1)
                mask[group, i, lo:hi] = True
    logits = torch.einsum("htd,hsd->hts", q, k.repeat_interleave(g, dim=0)) / math.sqrt(d)
    logits = logits.masked_fill(~mask.repeat_interleave(g, dim=0), float("-inf"))
    out = torch.softmax(logits, dim=-1) @ v.repeat_interleave(g, dim=0)
    return out, mask, selections, block_scores
