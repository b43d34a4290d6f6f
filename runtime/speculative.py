"""Speculative decoding on the torch runtime: guess several tokens, check them in one forward.

A decode step reads every weight of the model to produce one token; checking k drafted tokens
costs about the same forward (k + 1 positions instead of 1), so every accepted draft token is a
token for free. The output is the one plain decoding gives:
- greedy (temperature 0): a draft token is accepted while it is the model's argmax at its
  position (after the repetition penalty); the first mismatch is replaced by the argmax, and when
  every draft token passes, the model's next token after them comes free. Identical tokens to
  plain greedy decoding, up to float rounding between a k-token and a 1-token forward.
- sampling: the speculative sampling rule (Leviathan et al. 2023, Chen et al. 2023) with a
  deterministic draft, i.e. a proposal that puts all its mass on the draft token d: accept d with
  probability p(d), where p is the distribution sample_token draws from (penalty, top-k/top-p/
  min-p, temperature); on rejection draw from p with d removed. Each emitted token then has
  exactly the distribution plain sampling gives it.

Drafters:
- `lookup` (prompt lookup decoding; llama.cpp's lookup decoding and Saxena's prompt-lookup):
  find the latest earlier occurrence of the last n tokens (n = 3, then 2, then 1) in the prompt
  and the output so far, and propose the tokens that followed it. It needs no second model and
  pays off where the output copies its input: summaries, code edits, answers quoting a paper.
- `eagle`: an Eagle head on the target's hidden states (runtime/eagle.py), optionally drafting
  over FR-Spec's frequent-token subset of the vocabulary.

The accepted length per verification forward is reported in every GenerationEvent
(draft_tokens, accepted_tokens, verify_steps; runtime/events.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.events import SamplingParams
from runtime.sampling import penalized, sample_token, token_distribution

SPECULATIVE_MODES = ("none", "lookup", "eagle")
NGRAM_SIZES = (3, 2, 1)  # longest first: a longer match predicts its continuation better


class PromptLookup:
    """Drafts from earlier occurrences of the latest n-gram, with an index kept up to date as the
    history grows (each new token costs one dict update per n-gram size, not a scan)."""

    def __init__(self, history: list[int], ngram_sizes: tuple[int, ...] = NGRAM_SIZES):
        self.sizes = ngram_sizes
        self.history: list[int] = []
        self.latest: dict[tuple[int, ...], int] = {}  # n-gram -> position just after its latest occurrence
        self.previous: dict[int, int | None] = {}  # n -> position after the occurrence before the current tail
        self.extend(history)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.history.append(token)
            end = len(self.history)
            for n in self.sizes:
                if end >= n:
                    gram = tuple(self.history[end - n :])
                    self.previous[n] = self.latest.get(gram)
                    self.latest[gram] = end

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest matching tail."""
        if limit <= 0:
            return []
        for n in self.sizes:
            start = self.previous.get(n)
            if start is not None:
                return self.history[start : start + limit]
        return []


@dataclass
class Verdict:
    """What one verification forward decided: the tokens to emit, in order, each with the raw
    logits [V] of its position (for log-probabilities), and how many draft tokens were accepted."""

    tokens: list[tuple[int, torch.Tensor]]
    accepted: int


def verify(logits: torch.Tensor, draft: list[int], params: SamplingParams, history: list[int],
           generator: torch.Generator | None) -> Verdict:
    """logits: [k + 1, V] float32 from one forward of [last token, d1 .. dk] (k = len(draft)); row i
    predicts the token after d_i (row 0 the one after the last token). history: every token so
    far, the last one included. Returns the accepted draft tokens, then one token of the model's
    own: the replacement for the first rejected draft token, or the token after the last draft one.
    """
    out: list[tuple[int, torch.Tensor]] = []
    seen = list(history)
    for i, proposed in enumerate(draft):
        row = logits[i]
        if params.temperature == 0:
            best = int(torch.argmax(penalized(row, params, seen)))
            if best != proposed:
                return Verdict(out + [(best, row)], len(out))
        else:
            probs = token_distribution(row, params, seen)
            accept = float(torch.rand((), generator=generator)) < float(probs[proposed])
            if not accept:  # draw from p with the draft token removed: p(x) for x != d, renormalised
                probs[proposed] = 0.0
                if float(probs.sum()) <= 0:  # p put all its mass on d, yet d lost the draw: cannot happen
                    return Verdict(out + [(proposed, row)], len(out) + 1)
                token = int(torch.multinomial(probs, 1, generator=generator))
                return Verdict(out + [(token, row)], len(out))
        out.append((proposed, row))
        seen.append(proposed)
    row = logits[len(draft)]
    return Verdict(out + [(sample_token(row, params, seen, generator), row)], len(out))
