"""Generation on the torch runtime, in two layers.

`generate_steps` knows only token ids: chunked prefill into a preallocated KV cache, then one token
per step until a stop id or the token budget. `stream_generate` turns those steps into the suite's
one event type through runtime/streaming.py, shared with the other local backends. Nothing here
prints.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from runtime.events import MAX_SEED, GenerationEvent, SamplingParams
from runtime.model import CausalLM
from runtime.sampling import sample_guarded_token, sample_token
from runtime.streaming import Step, events_from_steps, token_budget
from runtime.tokenizer import Tokenizer

PREFILL_CHUNK = 512  # tokens per prefill forward: bounds activation memory, paces progress events


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
) -> Iterator[Step]:
    """Yield prefill progress, then every sampled token (a stop id included) until done.

    guard: a ToolCallGuard (runtime/tool_calls/guard.py) that sees each token and, inside a tool
    call, restricts the choice to tokens that keep the call valid."""
    budget = token_budget(len(prompt), params.max_tokens, context_length)
    cache = model.new_cache(capacity=len(prompt) + budget, rope_length=context_length)
    device = model.model.embed_tokens.weight.device  # a model on a GPU decodes there; sampling stays on the CPU
    ids = torch.tensor([prompt], dtype=torch.long, device=device)  # [1, T]

    for start in range(0, len(prompt), prefill_chunk):
        logits = model(ids[:, start : start + prefill_chunk], cache, last_logits_only=True)[0, -1].cpu()  # [V]
        yield Step(prompt_processed=min(start + prefill_chunk, len(prompt)))

    history = list(prompt)
    for i in range(budget):
        if guard is None:
            token = sample_token(logits, params, history, generator)
        else:
            token = sample_guarded_token(logits, params, history, generator, guard)
            guard.accept(token)
        yield scored_step(logits, token, params, len(prompt))
        if token in stop_ids or i == budget - 1:
            return
        history.append(token)
        logits = model(torch.tensor([[token]], device=device), cache, last_logits_only=True)[0, -1].cpu()


def stream_generate(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt: list[int],
    params: SamplingParams,
    context_length: int | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    guard=None,
) -> Iterator[GenerationEvent]:
    """Generate from prompt ids, yielding GenerationEvents (see runtime/events.py)."""
    context_length = context_length or model.config.max_position_embeddings
    token_budget(len(prompt), params.max_tokens, context_length)  # fail now, not at the first next()
    stop_ids = set(tokenizer.stop_token_ids) | set(params.stop_token_ids)
    seed = params.seed if params.seed is not None else random.randrange(MAX_SEED)
    generator = torch.Generator().manual_seed(seed)
    steps = generate_steps(model, prompt, params, stop_ids, context_length, generator, prefill_chunk, guard)
    return events_from_steps(steps, tokenizer.decode, prompt, params, stop_ids)
