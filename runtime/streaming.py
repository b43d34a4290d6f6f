"""From token ids to GenerationEvents, the same way for every local backend.

A backend's token layer yields `Step`s (prefill progress, then sampled tokens with their
log-probabilities); `events_from_steps` adds text (without splitting multi-byte characters),
stop tokens and stop strings, usage and timing. No torch here: the llama.cpp path uses it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from runtime.errors import ContextLengthError
from runtime.events import GenerationEvent, SamplingParams

Decode = Callable[[list[int]], str]


def token_budget(prompt_tokens: int, max_tokens: int, context_length: int) -> int:
    """How many tokens may be generated; a prompt that leaves no room is an error, never truncated."""
    if prompt_tokens == 0:
        raise ContextLengthError(
            "the prompt is empty (0 tokens) and this model adds no BOS token, so there is nothing to "
            "continue; give it some text"
        )
    if prompt_tokens >= context_length:
        raise ContextLengthError(
            f"the prompt is {prompt_tokens} tokens but the context holds {context_length}, leaving no room "
            "to generate; shorten the prompt or raise --ctx"
        )
    return min(max_tokens, context_length - prompt_tokens)


@dataclass(frozen=True)
class Step:
    """One item of a token-level stream: prefill progress (token None) or a sampled token."""

    prompt_processed: int
    token: int | None = None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    # Speculative decoding, on the first token a verification forward emitted: draft tokens it
    # checked and how many of them it accepted.
    drafted: int = 0
    accepted: int = 0
    draft_seconds: float = 0.0  # time the drafter took for this step's draft (even one that came out empty)


class StreamingDetokenizer:
    """Turns generated ids into text deltas, never splitting a multi-byte character.

    Decodes a short window of recent ids instead of the whole output each step (the approach of
    vLLM's incremental detokenizer), so a long generation stays linear in time. The window keeps
    left context because some decoders (SentencePiece's leading space, byte fallback) render a
    token differently depending on its neighbours.
    """

    def __init__(self, decode: Decode, context_ids: list[int] | None = None):
        self.decode = decode
        self.ids: list[int] = list(context_ids or [])[-4:]
        self.prefix_offset = 0  # window start
        self.read_offset = len(self.ids)  # ids before this are already emitted

    def _delta(self) -> str:
        prefix = self.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.decode(self.ids[self.prefix_offset :])
        # If the window start changed how the earlier ids render, fall back to the whole window.
        return full[len(prefix) :] if full.startswith(prefix) else full

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.decode(self.ids[self.prefix_offset :]).endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for its next bytes
        delta = self._delta()
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """Whatever is still held back at the end (an incomplete character renders as U+FFFD)."""
        if self.read_offset == len(self.ids):
            return ""
        delta = self._delta()
        self.prefix_offset = self.read_offset = len(self.ids)
        return delta


class StopStringMatcher:
    """Holds back text that may begin a stop string; reports the text before a complete one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""
        self.after = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            self.after = buf[min(hits) :]  # the stop string and what came with it, for callers that go on
            return buf[: min(hits)], True
        keep = 0  # the longest tail of buf that is a prefix of some stop string
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:n]):
                    keep = n
                    break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


def events_from_steps(
    steps: Iterable[Step],
    decode: Decode,
    prompt: list[int],
    params: SamplingParams,
    stop_ids: set[int],
) -> Iterator[GenerationEvent]:
    """Assemble GenerationEvents (runtime/events.py) from a backend's token-level steps.

    `steps` must end after a stop id or when its token budget is spent; prefill time runs from the
    call until the first token, decode time from there to the last token.
    """
    detok = StreamingDetokenizer(decode, context_ids=prompt)
    stops = StopStringMatcher(params.stop)
    n_prompt, n_out = len(prompt), 0
    drafted = accepted = verifications = 0
    drafting = 0.0
    t0 = time.perf_counter()
    t_first: float | None = None

    def event(**kwargs) -> GenerationEvent:
        now = time.perf_counter()
        return GenerationEvent(
            prompt_tokens=n_prompt,
            completion_tokens=n_out,
            prefill_seconds=(t_first or now) - t0,
            decode_seconds=now - t_first if t_first is not None else 0.0,
            draft_tokens=drafted,
            accepted_tokens=accepted,
            verify_steps=verifications,
            draft_seconds=drafting,
            **kwargs,
        )

    def final(reason: str) -> GenerationEvent:
        tail, hit = stops.feed(detok.flush())
        text = tail if hit else tail + stops.flush()
        return event(text=text, finish_reason="stop" if hit else reason, prompt_processed=n_prompt)

    for step in steps:
        if step.token is None:
            yield event(prompt_processed=step.prompt_processed)
            continue
        if t_first is None:
            t_first = time.perf_counter()
        n_out += 1
        if step.drafted:
            drafted, accepted, verifications = drafted + step.drafted, accepted + step.accepted, verifications + 1
        drafting += step.draft_seconds
        scored = {"token": step.token, "logprob": step.logprob, "top_logprobs": step.top_logprobs}
        if step.token in stop_ids:
            yield event(prompt_processed=n_prompt, **scored)  # the stop token has no text
            yield final("stop")
            return
        text, hit = stops.feed(detok.add(step.token))
        yield event(text=text, prompt_processed=n_prompt, **scored)
        if hit:
            yield event(finish_reason="stop", prompt_processed=n_prompt)
            return
    yield final("length")
