"""Generation on the torch runtime, in two layers.

`generate_steps` knows only token ids: chunked prefill into a preallocated KV cache, then one token
per step until a stop id or the token budget. `stream_generate` turns those steps into the suite's
one event type through runtime/streaming.py, shared with the other local backends. Nothing here
prints.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import torch

from runtime.eagle import EagleDrafter
from runtime.events import MAX_SEED, GenerationEvent, SamplingParams
from runtime.model import CausalLM
from runtime.sampling import sample_guarded_token, sample_token
from runtime.speculative import SPECULATIVE_MODES, PromptLookup, verify
from runtime.streaming import Step, events_from_steps, token_budget
from runtime.tokenizer import Tokenizer

PREFILL_CHUNK = 512  # tokens per prefill forward: bounds activation memory, paces progress events
DRAFT_MAX = 8  # draft tokens checked per forward with --speculative (--draft-max)


def scored_step(logits: torch.Tensor, token: int, params: SamplingParams, prompt_len: int) -> Step:
    """A token Step, with log-probabilities from the raw logits [V] when the caller asked for them."""
    if not (params.logprobs or params.top_logprobs):
        return Step(prompt_processed=prompt_len, token=token)
    logprobs = torch.log_softmax(logits, dim=-1)
    top = ()
    if params.top_logprobs:
        values, indices = torch.topk(logprobs, params.top_logprobs)
        top = tuple((int(i), float(v)) for i, v in zip(indices, values))
    return Step(prompt_processed=prompt_len, token=token, logprob=float(logprobs[token]), top_logprobs=top)


@torch.inference_mode()
def generate_steps(
    model: CausalLM,
    prompt: list[int],
    params: SamplingParams,
    stop_ids: set[int],
    context_length: int,
    generator: torch.Generator | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    guard=None,
    speculative: str = "none",
    draft_max: int = DRAFT_MAX,
    eagle=None,
) -> Iterator[Step]:
    """Yield prefill progress, then every sampled token (a stop id included) until done.

    guard: a ToolCallGuard (runtime/tool_calls/guard.py) that sees each token and, inside a tool
    call, restricts the choice to tokens that keep the call valid.
    speculative: none; lookup: draft up to draft_max tokens by prompt lookup; eagle: draft them with
    `eagle`, an EagleDraft (runtime/eagle.py) fed the target's hidden states. Drafts are checked in
    one forward (runtime/speculative.py; same output). A guarded generation decodes token by token:
    the guard must see each token before the next is chosen."""
    if speculative not in SPECULATIVE_MODES:
        raise ValueError(f"unknown speculative decoding mode {speculative!r} (choose {', '.join(SPECULATIVE_MODES)})")
    if (speculative == "eagle") != (eagle is not None):
        raise ValueError("speculative='eagle' needs an Eagle draft head, and only it takes one")
    budget = token_budget(len(prompt), params.max_tokens, context_length)
    cache = model.new_cache(capacity=len(prompt) + budget, rope_length=context_length)
    device = model.model.embed_tokens.weight.device  # a model on a GPU decodes there; sampling stays on the CPU
    ids = torch.tensor([prompt], dtype=torch.long, device=device)  # [1, T]

    drafter = None
    if guard is None and speculative == "lookup":
        drafter = PromptLookup(prompt)
    elif guard is None and speculative == "eagle":
        drafter = eagle.drafter(model, cache.capacity, cache.rope_length)
    for start in range(0, len(prompt), prefill_chunk):
        if isinstance(drafter, EagleDrafter):  # the head needs every position's hidden state
            h = model.hidden_states(ids[:, start : start + prefill_chunk], cache)  # [1, T, C]
            drafter.observe(h[0])
            logits = model.logits(h[:, -1:])[0, -1].cpu()  # [V]
        else:
            logits = model(ids[:, start : start + prefill_chunk], cache, last_logits_only=True)[0, -1].cpu()  # [V]
        yield Step(prompt_processed=min(start + prefill_chunk, len(prompt)))

    history = list(prompt)
    if guard is None:
        pending = [(sample_token(logits, params, history, generator), logits)]
    else:
        pending = [(sample_guarded_token(logits, params, history, generator, guard), logits)]
        guard.accept(pending[0][0])
    drafted = accepted = 0  # of the verification that produced `pending`
    draft_seconds = 0.0  # time the drafter took for it
    emitted = 0
    # Draft length follows acceptance (the heuristic schedule of HF's assisted generation): two more
    # after a fully accepted draft, one fewer otherwise. Checking a position costs a share of a
    # forward, so drafts that keep failing shrink to one token instead of costing eight.
    limit = draft_max
    while True:
        for token, token_logits in pending:
            step = scored_step(token_logits, token, params, len(prompt))
            if drafted or draft_seconds:  # a draft that came out empty still took the drafter's time
                step = dataclasses.replace(step, drafted=drafted, accepted=accepted, draft_seconds=draft_seconds)
            yield step
            drafted = accepted = 0  # counted once, on the first token of the verification
            draft_seconds = 0.0
            emitted += 1
            if token in stop_ids or emitted == budget:
                return
            history.append(token)
            if isinstance(drafter, PromptLookup):
                drafter.extend([token])
        # The last emitted token is not in the cache yet: this forward feeds it (and any draft).
        draft_seconds = -drafter.seconds if isinstance(drafter, EagleDrafter) else 0.0
        if isinstance(drafter, EagleDrafter):
            draft = drafter.draft(history, min(limit, budget - emitted - 1))
            draft_seconds += drafter.seconds
        else:
            draft = drafter.draft(min(limit, budget - emitted - 1)) if drafter is not None else []
        batch = torch.tensor([history[-1:] + draft], device=device)
        length = cache.length
        if isinstance(drafter, EagleDrafter):
            h = model.hidden_states(batch, cache)  # [1, 1 + k, C]
            out = model.logits(h)[0].cpu()  # [1 + k, V]
        else:
            out = model(batch, cache, last_logits_only=not draft)[0].cpu()  # [1 + k, V] (or [1, V])
        if not draft:
            if isinstance(drafter, EagleDrafter):
                drafter.observe(h[0])
            if guard is None:
                pending = [(sample_token(out[-1], params, history, generator), out[-1])]
            else:
                pending = [(sample_guarded_token(out[-1], params, history, generator, guard), out[-1])]
                guard.accept(pending[0][0])
            continue
        verdict = verify(out, draft, params, history, generator)
        cache.truncate(length + 1 + verdict.accepted)  # keep the fed token and the accepted drafts
        if isinstance(drafter, EagleDrafter):
            drafter.observe(h[0, : 1 + verdict.accepted])
        limit = min(draft_max, limit + 2) if verdict.accepted == len(draft) else max(1, limit - 1)
        pending, drafted, accepted = verdict.tokens, len(draft), verdict.accepted


def stream_generate(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt: list[int],
    params: SamplingParams,
    context_length: int | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    guard=None,
    speculative: str = "none",
    draft_max: int = DRAFT_MAX,
    eagle=None,
) -> Iterator[GenerationEvent]:
    """Generate from prompt ids, yielding GenerationEvents (see runtime/events.py)."""
    context_length = context_length or model.config.max_position_embeddings
    token_budget(len(prompt), params.max_tokens, context_length)  # fail now, not at the first next()
    stop_ids = set(tokenizer.stop_token_ids) | set(params.stop_token_ids)
    seed = params.seed if params.seed is not None else random.randrange(MAX_SEED)
    generator = torch.Generator().manual_seed(seed)
    steps = generate_steps(model, prompt, params, stop_ids, context_length, generator, prefill_chunk, guard,
                           speculative, draft_max, eagle)
    return events_from_steps(steps, tokenizer.decode, prompt, params, stop_ids)
