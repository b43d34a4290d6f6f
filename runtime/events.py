"""The one generation interface every backend speaks: sampling settings in, GenerationEvents out.

The CLI, the server, the agents and the TUI consume only these types, so they work the same on the
torch runtime, on llama.cpp and on a remote OpenAI-compatible server. This module imports nothing
heavy (no torch), so a llama.cpp-only path stays light.

A stream is a sequence of events:
- prefill progress: `prompt_processed` rises towards `prompt_tokens`, with no token and no text;
- one event per generated token: `token`, its `logprob`, and `text`, the new text it completes
  (possibly "" while a multi-byte character or a possible stop string is held back);
- a final event with `finish_reason` set, carrying any text still held back, and, when the model
  called tools, the parsed `tool_calls` (finish_reason "tool_calls") or the `tool_call_error` that
  says why its attempt could not be read (runtime/tool_calls/).
Every event carries the running usage and timing, so a consumer can stop reading at any point.
While a tool call is being written its text is held back, so `text` deltas are the reply's prose only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "tool_calls"]
# Seeds are 32-bit in llama.cpp, whose 0xFFFFFFFF means "pick one at random": one range for all backends.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 means greedy (argmax)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off; drops tokens below min_p * p(most likely)
    repetition_penalty: float = 1.0  # 1: off; CTRL-style, over the last `repetition_window` tokens
    repetition_window: int = 64
    seed: int | None = None  # None: a fresh random seed per call
    stop: tuple[str, ...] = ()  # generation ends before any of these strings
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's own EOS ids
    logprobs: bool = False  # report the chosen token's log-probability
    top_logprobs: int = 0  # and this many alternatives

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1 (got {self.max_tokens})")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be a number >= 0 (got {self.temperature})")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (got {self.top_k})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1) (got {self.min_p})")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            problems.append(f"repetition_penalty must be a number > 0 (got {self.repetition_penalty})")
        if self.seed is not None and not 0 <= self.seed < MAX_SEED:
            problems.append(f"seed must be between 0 and {MAX_SEED - 1} (got {self.seed})")
        if not 0 <= self.top_logprobs <= 20:
            problems.append(f"top_logprobs must be between 0 and 20 (got {self.top_logprobs})")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: a tool name and its arguments, already parsed from JSON."""

    id: str  # "call_..." locally; the server's id on the openai backend
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI wire shape, whose arguments are a JSON string."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass(frozen=True)
class GenerationEvent:
    text: str = ""  # new text since the previous event
    token: int | None = None  # the generated token id, on per-token events (None from a remote server)
    logprob: float | None = None  # log p(token) under the model's raw distribution (no sampling transforms)
    top_logprobs: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first
    finish_reason: FinishReason | None = None  # set on the last event only
    tool_calls: tuple[ToolCall, ...] = ()  # last event only: the calls the reply asked for
    tool_call_error: str | None = None  # last event only: why a tool call the model began is unusable
    prompt_tokens: int = 0
    prompt_processed: int = 0  # prompt tokens prefilled so far (progress of a long prefill)
    completion_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    # Speculative decoding (runtime/speculative.py), running totals: draft tokens checked, those
    # accepted, and the verification forwards that checked them.
    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_steps: int = 0
    draft_seconds: float = 0.0  # of decode_seconds, the time spent drafting (an Eagle head's forwards)

    @property
    def is_progress(self) -> bool:
        # A remote server (the openai backend) reports no token ids: its deltas are text with token None.
        return self.token is None and self.finish_reason is None and not self.text

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_processed / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def mean_accepted_length(self) -> float | None:
        """Draft tokens accepted per verification forward (None without speculative decoding);
        each such forward also emits one token of the model's own."""
        return self.accepted_tokens / self.verify_steps if self.verify_steps else None

    @property
    def decode_tokens_per_second(self) -> float:
        # The first token comes out of prefill; the decode rate counts the tokens after it.
        steps = max(self.completion_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0
