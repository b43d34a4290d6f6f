"""Next-token selection on float32 logits: penalty, top-k, top-p, min-p, temperature, then a draw.

The order is llama.cpp's, so the same settings mean the same distribution on the torch and the
gguf backends: the truncations look at the model's own distribution (temperature 1) and the
temperature then reshapes what is left. Temperature 0 is greedy and ignores all but the penalty.
"""

from __future__ import annotations

import torch

from runtime.events import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, recent: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: divide positive logits of recently seen tokens by `penalty`, multiply negative ones.

    logits: [V] float32; recent: [N] int64 token ids (duplicates are penalised once).
    """
    if penalty == 1.0 or recent.numel() == 0:
        return logits
    logits = logits.clone()
    seen = torch.unique(recent)
    values = logits[seen]
    logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Top-k, top-p and min-p on logits [V] (filtered entries become -inf), then temperature."""
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it does.
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= params.top_p
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    if params.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    # Shift before scaling: the best logit becomes 0, so even a tiny temperature cannot overflow.
    return (logits - logits.max()) / params.temperature


def penalized(logits: torch.Tensor, params: SamplingParams, history: list[int]) -> torch.Tensor:
    """logits [V] with the repetition penalty over the recent history applied (when it is on)."""
    if params.repetition_penalty == 1.0:
        return logits
    recent = history[-params.repetition_window :] if params.repetition_window > 0 else history
    return apply_repetition_penalty(logits, torch.tensor(recent, dtype=torch.long), params.repetition_penalty)


def token_distribution(logits: torch.Tensor, params: SamplingParams, history: list[int]) -> torch.Tensor:
    """The distribution [V] that sample_token draws from (temperature > 0): penalty, filters, softmax."""
    return torch.softmax(filter_logits(penalized(logits, params, history), params), dim=-1)


def sample_token(
    logits: torch.Tensor, params: SamplingParams, history: list[int], generator: torch.Generator | None
) -> int:
    """Pick the next token from logits [V] given the token history (prompt and output so far)."""
    if params.temperature == 0:
        return int(torch.argmax(penalized(logits, params, history)))
    probs = token_distribution(logits, params, history)
    return int(torch.multinomial(probs, 1, generator=generator))


MAX_REDRAWS = 16  # draws from the filtered distribution before walking the ranking


def sample_allowed_token(
    logits: torch.Tensor,
    params: SamplingParams,
    history: list[int],
    generator: torch.Generator | None,
    allows,
) -> int | None:
    """Like sample_token, restricted to tokens that allows(token) accepts (constrained decoding).

    Draws from the filtered distribution and redraws without each rejected token, which samples
    exactly the masked distribution. When the filters (top-k, top-p, min-p) leave no allowed token,
    the constraint wins: the best allowed token by raw logit is taken, walking down the whole
    ranking if need be (a small model may rank the one valid token below thousands of others: the
    rest of a forced tool name, say). None if no token of the vocabulary is allowed.
    """
    logits = penalized(logits, params, history)
    tried: set[int] = set()
    if params.temperature > 0:
        probs = torch.softmax(filter_logits(logits, params), dim=-1)
        for _ in range(MAX_REDRAWS):
            if float(probs.sum()) <= 0:
                break
            token = int(torch.multinomial(probs, 1, generator=generator))
            if allows(token):
                return token
            tried.add(token)
            probs[token] = 0.0
    for token in torch.argsort(logits, descending=True).tolist():
        if token not in tried and allows(token):
            return token
    return None


def sample_guarded_token(
    logits: torch.Tensor, params: SamplingParams, history: list[int], generator: torch.Generator | None, guard
) -> int:
    """The next token under a ToolCallGuard (runtime/tool_calls/guard.py).

    Outside a call block the plain draw stands unless it would open a block that is already invalid
    (a token carrying the start marker and more); inside one, only allowed tokens. When none is,
    the guard gives up and the model goes on unconstrained (the parser reports what it wrote).
    """
    if not guard.constraining:
        token = sample_token(logits, params, history, generator)
        if guard.allows(token):
            return token
    token = sample_allowed_token(logits, params, history, generator, guard.allows)
    if token is None:
        guard.give_up()
        token = sample_token(logits, params, history, generator)
    return token
