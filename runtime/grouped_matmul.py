"""Products of each KV group's query rows with that group's keys or values.

One place for a CPU pitfall measured here (torch 2.13, oneDNN): a batched product over a slice of
the preallocated KV cache, whose groups sit `capacity` rows apart instead of packed, takes a slow
path in bfloat16 that copies the operand first (SmolLM2 shape, 16K keys: 2.05 ms against 0.46 ms
for one 2-D product per group). Packed operands and float32 go through one batched product.
"""

from __future__ import annotations

import torch


def _packed(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 or x.stride(0) == x.shape[1] * x.shape[2]


def group_scores(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """rows: [Hkv, M, D], keys: [Hkv, N, D] (rows of D contiguous). Returns rows @ keys^T: [Hkv, M, N]."""
    if _packed(keys):
        return torch.bmm(rows, keys.transpose(1, 2))
    return torch.stack([rows[h] @ keys[h].T for h in range(keys.shape[0])])


def group_mix(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """weights: [Hkv, M, N], values: [Hkv, N, D]. Returns weights @ values: [Hkv, M, D]."""
    if _packed(values):
        return torch.bmm(weights, values)
    return torch.stack([weights[h] @ values[h] for h in range(values.shape[0])])
