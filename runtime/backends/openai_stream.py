"""Reading an OpenAI-compatible server's streamed replies: server-sent events into GenerationEvents.

The wire half of the `openai` backend (runtime/backends/openai_backend.py): SSE framing, chunks of
chat and completion replies, tool-call deltas assembled by index, logprobs split per token where
their text allows, and the final event with usage and the decoded tool calls.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime.events import GenerationEvent, ToolCall

UNKNOWN_TOKEN = -1  # the id of a top_logprobs alternative the server named only by its text


def sse_messages(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each server-sent event; comments (keep-alives) and other fields are dropped."""
    event, data = "", []
    for line in lines:
        if not line:  # a blank line ends one event
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield event or "message", "\n".join(data)


def stream_error(chunk: Any) -> str | None:
    """The message of an error the server reports inside a stream, if this chunk is one."""
    if not isinstance(chunk, dict):
        return "the server sent a stream chunk that is not a JSON object"
    error = chunk.get("error")
    if chunk.get("object") == "error":  # vLLM's in-stream ErrorResponse
        error = chunk
    if not error:
        return None
    if isinstance(error, dict):
        return " ".join(str(error.get("message") or json.dumps(error)).split())
    return " ".join(str(error).split())


# ---------------------------------------------------------------- from chunks to events


@dataclass
class PendingCall:
    """A tool call whose deltas are still arriving: id and name first, arguments in pieces."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, delta: dict[str, Any]) -> None:
        self.id = self.id or str(delta.get("id") or "")
        function = delta.get("function") or {}
        # Some servers (llama-cpp-python) repeat the id and name in every delta: keep the first.
        self.name = self.name or str(function.get("name") or "")
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a non-streamed reply from a lenient server
            arguments = json.dumps(arguments)
        if arguments:
            self.arguments.append(str(arguments))

    def decode(self) -> tuple[ToolCall | None, str | None]:
        """The finished call, or why it cannot be used."""
        if not self.name:
            return None, "the server sent a tool call without a function name"
        raw = "".join(self.arguments).strip()
        try:
            arguments = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            shown = raw if len(raw) <= 200 else raw[:200] + "..."
            return None, f"the arguments of {self.name} are not valid JSON ({exc.msg} at character {exc.pos}): {shown}"
        if not isinstance(arguments, dict):
            return None, f"the arguments of {self.name} must be a JSON object, not {type(arguments).__name__}"
        return ToolCall(self.id or f"call_{uuid.uuid4().hex[:24]}", self.name, arguments), None


@dataclass(frozen=True)
class Scored:
    """One token of a chunk's logprobs: its text, its id where the server says, its log-probability."""

    text: str
    token: int | None
    logprob: float | None
    top_logprobs: tuple[tuple[int, float], ...]


def token_id(entry: dict[str, Any]) -> int | None:
    """A logprobs entry's token id where the server gives one."""
    if isinstance(entry.get("id"), int):  # llama.cpp's server
        return entry["id"]
    token = entry.get("token")
    if isinstance(token, str) and token.startswith("token_id:") and token[9:].isdigit():  # vLLM's opt-in form
        return int(token[9:])
    return None


def as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def chat_scores(logprobs: Any) -> list[Scored]:
    """Per-token scores from a chat chunk's `logprobs.content`."""
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    scored = []
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        top = tuple((token_id(alt) if token_id(alt) is not None else UNKNOWN_TOKEN, float(alt["logprob"]))
                    for alt in entry.get("top_logprobs") or []
                    if isinstance(alt, dict) and as_float(alt.get("logprob")) is not None)
        scored.append(Scored(str(entry.get("token") or ""), token_id(entry), as_float(entry.get("logprob")), top))
    return scored


def completion_scores(logprobs: Any) -> list[Scored]:
    """Per-token scores from a legacy completions chunk (tokens, token_logprobs, top_logprobs dicts)."""
    if not isinstance(logprobs, dict):
        return []
    values = logprobs.get("token_logprobs") or []
    texts = logprobs.get("tokens") or [""] * len(values)
    tops = logprobs.get("top_logprobs") or [None] * len(values)
    scored = []
    for text, logprob, top in zip(texts, values, tops):
        alternatives = sorted(((UNKNOWN_TOKEN, float(lp)) for lp in (top or {}).values() if as_float(lp) is not None),
                              key=lambda alt: -alt[1])
        scored.append(Scored(str(text or ""), None, as_float(logprob), tuple(alternatives)))
    return scored


def split_by_token(text: str, scores: list[Scored]) -> list[Scored]:
    """The events of one chunk's text: one per scored token where their texts make up the chunk's text
    exactly and none is empty (an empty, id-less event would read as prefill progress), else one event
    that carries a single token's logprob, or none when several tokens share it."""
    if len(scores) > 1 and "".join(s.text for s in scores) == text and all(s.text for s in scores):
        return scores
    if len(scores) == 1:
        return [Scored(text, scores[0].token, scores[0].logprob, scores[0].top_logprobs)]
    return [Scored(text, None, None, ())]


class ReplyAssembler:
    """Turns one reply's chunks into GenerationEvents and keeps what the final event needs."""

    def __init__(self, endpoint: str):
        self.chat = endpoint == "chat"
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.generated = 0  # tokens so far: one per chunk with output, or per logprobs entry
        self.delivered = 0  # events handed to the caller; after the first, a retry is no longer possible
        self.prompt_tokens = 0  # from the server's usage report
        self.reported_completion: int | None = None
        self.server_finish: str | None = None
        self.done = False  # [DONE] seen
        self.calls: dict[int, PendingCall] = {}
        self.thinking = False  # inside reasoning text the server sent separately

    @property
    def complete(self) -> bool:
        """Whether the server said the reply is over (a finish reason or [DONE])."""
        return self.done or self.server_finish is not None

    def event(self, **fields: Any) -> GenerationEvent:
        now = time.perf_counter()
        first = self.first_token_at
        return GenerationEvent(prompt_tokens=self.prompt_tokens, prompt_processed=self.prompt_tokens,
                               completion_tokens=self.generated,
                               prefill_seconds=(first or now) - self.started,
                               decode_seconds=now - first if first is not None else 0.0, **fields)

    def feed(self, chunk: dict[str, Any]) -> list[GenerationEvent]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
            if usage.get("completion_tokens") is not None:
                self.reported_completion = int(usage["completion_tokens"])
        events = []
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:  # we ask for one reply (n=1)
                events += self.feed_choice(choice)
        return events

    def feed_choice(self, choice: dict[str, Any]) -> list[GenerationEvent]:
        if choice.get("finish_reason"):
            self.server_finish = choice["finish_reason"]
        if self.chat:
            # "message": a server that ignored stream=true and answered with one JSON body.
            delta = choice.get("delta") or choice.get("message") or {}
            text = self.chat_text(delta)
            tool_deltas = delta.get("tool_calls") or []
            for position, call in enumerate(tool_deltas):
                if isinstance(call, dict):
                    # The index says which call a delta continues (a non-streamed message has none).
                    index = call["index"] if isinstance(call.get("index"), int) else position
                    self.calls.setdefault(index, PendingCall()).add(call)
            scores = chat_scores(choice.get("logprobs"))
        else:
            text, tool_deltas = str(choice.get("text") or ""), []
            scores = completion_scores(choice.get("logprobs"))
        if not (text or tool_deltas or scores):
            return []  # a role-only opening chunk, a bare finish reason: no token
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.generated += max(len(scores), 1)
        if not text:
            return []  # tool-call deltas: held back until the final event
        events = [self.event(text=piece.text, token=piece.token, logprob=piece.logprob,
                             top_logprobs=piece.top_logprobs) for piece in split_by_token(text, scores)]
        self.delivered += len(events)
        return events

    def chat_text(self, delta: dict[str, Any]) -> str:
        """A delta's visible text, with separately sent reasoning put back inline as <think>...</think>."""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        content = delta.get("content") or ""
        text = ""
        if reasoning:
            text += reasoning if self.thinking else "<think>" + reasoning
            self.thinking = True
        if content and self.thinking:
            text += "</think>"
            self.thinking = False
        return text + content

    def final_event(self) -> GenerationEvent:
        calls, problems = [], []
        for index in sorted(self.calls):
            call, problem = self.calls[index].decode()
            if call is not None:
                calls.append(call)
            else:
                problems.append(problem)
        if self.server_finish in ("tool_calls", "function_call") and not self.calls:
            problems.append("the server said the reply calls tools but sent no tool calls")
        error = "; ".join(problems) or None
        # A call that cannot be used makes the whole turn a failed attempt: the caller feeds the
        # error back to the model instead of running half of what it asked for.
        tool_calls = () if error else tuple(calls)
        if tool_calls:
            reason = "tool_calls"
        else:
            reason = "length" if self.server_finish == "length" else "stop"
        if self.reported_completion is not None:
            self.generated = self.reported_completion
        return self.event(text="</think>" if self.thinking else "", finish_reason=reason, tool_calls=tool_calls,
                          tool_call_error=error)
