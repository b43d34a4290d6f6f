"""OpenAI's response shapes, built from GenerationEvents: the one place that knows the wire format.

A Reply consumes one generation's events. Streaming, each `feed` returns the chunks that event
makes; otherwise `feed` accumulates and `completion()` builds the whole answer at the end. One
class serves both responses of an endpoint: ChatReply for /v1/chat/completions,
CompletionReply for /v1/completions. The shapes follow the OpenAI API reference, which is what
the official client parses:
- chat: "chat.completion" with message {role, content, tool_calls}, or "chat.completion.chunk"s
  whose delta carries the role first, then content, then tool_calls (index, id, type, function);
- completions: "text_completion" with choices[0].text, streamed as chunks of the same object;
- finish_reason on the last choice chunk; with stream_options.include_usage a final chunk with no
  choices and the usage (every earlier chunk then has "usage": null);
- logprobs: chat {"content": [{token, logprob, bytes, top_logprobs}]}, completions
  {tokens, token_logprobs, top_logprobs: [{text: logprob}], text_offset}.
Extension: a choice whose tool call the model wrote but which could not be read carries
"tool_call_error" (the reason), so a client can tell the model what went wrong.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import time
import uuid
from typing import Any

from runtime.events import GenerationEvent
from runtime.server.slots import Scored


def usage(event: GenerationEvent | None) -> dict[str, int]:
    prompt = event.prompt_tokens if event else 0
    completion = event.completion_tokens if event else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def token_text(scored: Scored, token: int) -> str:
    # A remote backend gives no token ids to decode: its event's text is the token's text.
    return scored.token_texts.get(token, scored.event.text)


class Reply(ABC):
    """What chat and completions replies share: ids, accumulated text, logprobs, the final event."""

    object_name = ""  # of the non-streaming answer
    chunk_object = ""  # of each stream chunk
    id_prefix = ""

    def __init__(self, model_id: str, *, stream: bool, logprobs: bool, include_usage: bool):
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model_id = model_id
        self.stream = stream
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.parts: list[str] = []
        self.last: GenerationEvent | None = None  # the event with finish_reason, once it came
        self._pending: list[Scored] = []  # scored tokens not yet sent in a stream chunk
        self._scored: list[Scored] = []  # every scored token, for the non-streaming answer

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, scored: Scored) -> list[dict[str, Any]]:
        """Take one event; return the stream chunks it makes (none when not streaming)."""
        event = scored.event
        if self.logprobs and event.token is not None and event.logprob is not None:
            (self._pending if self.stream else self._scored).append(scored)
        if event.text:
            self.parts.append(event.text)
        if event.finish_reason is not None:
            self.last = event
        if not self.stream:
            return []
        chunks = []
        if event.text:
            chunks.append(self._text_chunk(event.text, self._take_pending()))
        if event.finish_reason is not None:
            chunks.extend(self._final_chunks(event, self._take_pending()))
        return chunks

    def usage_chunk(self) -> dict[str, Any] | None:
        """The chunk with no choices that carries the usage, when the client asked for it."""
        if not self.include_usage:
            return None
        return {**self._envelope(), "choices": [], "usage": usage(self.last)}

    def _take_pending(self) -> list[Scored]:
        taken, self._pending = self._pending, []
        return taken

    def _envelope(self, chunk: bool = True) -> dict[str, Any]:
        return {"id": self.id, "object": self.chunk_object if chunk else self.object_name,
                "created": self.created, "model": self.model_id}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = {**self._envelope(), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    @abstractmethod
    def _text_chunk(self, text: str, scored: list[Scored]) -> dict[str, Any]:
        """The streamed chunk that carries a text delta."""

    @abstractmethod
    def _final_chunks(self, event: GenerationEvent, scored: list[Scored]) -> list[dict[str, Any]]:
        """The streamed chunks that close the reply (finish reason, tool calls, usage)."""


class ChatReply(Reply):
    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def first_chunk(self) -> dict[str, Any]:
        """OpenAI's first chunk names the role and has empty content."""
        return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})

    def _logprobs(self, scored: list[Scored]) -> dict[str, Any] | None:
        if not self.logprobs or not scored:
            return None
        return {"content": [chat_logprob(s) for s in scored]}

    def _text_chunk(self, text: str, scored: list[Scored]) -> dict[str, Any]:
        return self._chunk({"index": 0, "delta": {"content": text}, "logprobs": self._logprobs(scored),
                            "finish_reason": None})

    def _final_chunks(self, event: GenerationEvent, scored: list[Scored]) -> list[dict[str, Any]]:
        chunks = []
        if event.tool_calls:
            calls = [{"index": i, **call.to_openai()} for i, call in enumerate(event.tool_calls)]
            chunks.append(self._chunk({"index": 0, "delta": {"tool_calls": calls}, "logprobs": None,
                                       "finish_reason": None}))
        choice = {"index": 0, "delta": {}, "logprobs": self._logprobs(scored), "finish_reason": event.finish_reason}
        if event.tool_call_error:
            choice["tool_call_error"] = event.tool_call_error
        chunks.append(self._chunk(choice))
        return chunks

    def completion(self) -> dict[str, Any]:
        """The non-streaming "chat.completion" object."""
        last = self.last
        calls = [call.to_openai() for call in last.tool_calls] if last else []
        message: dict[str, Any] = {"role": "assistant", "content": self.text or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "logprobs": self._logprobs(self._scored),
                  "finish_reason": last.finish_reason if last else None}
        if last and last.tool_call_error:
            choice["tool_call_error"] = last.tool_call_error
        return {**self._envelope(chunk=False), "choices": [choice], "usage": usage(last)}


def chat_logprob(scored: Scored) -> dict[str, Any]:
    event = scored.event
    text = token_text(scored, event.token)
    return {"token": text, "logprob": event.logprob, "bytes": list(text.encode("utf-8")),
            "top_logprobs": [{"token": (alt := token_text(scored, t)), "logprob": lp, "bytes": list(alt.encode("utf-8"))}
                             for t, lp in event.top_logprobs]}


class CompletionReply(Reply):
    object_name = chunk_object = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model_id: str, *, stream: bool, logprobs: bool, include_usage: bool, prompt_chars: int):
        super().__init__(model_id, stream=stream, logprobs=logprobs, include_usage=include_usage)
        # OpenAI's text_offset counts from the start of the prompt. Each scored token passes
        # through _logprobs once (in its chunk, or in the whole answer), so the offset just runs on.
        self.offset = prompt_chars

    def _logprobs(self, scored: list[Scored]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for s in scored:
            text = token_text(s, s.event.token)
            out["tokens"].append(text)
            out["token_logprobs"].append(s.event.logprob)
            out["top_logprobs"].append({token_text(s, t): lp for t, lp in s.event.top_logprobs})
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out

    def _text_chunk(self, text: str, scored: list[Scored]) -> dict[str, Any]:
        return self._chunk({"index": 0, "text": text, "logprobs": self._logprobs(scored), "finish_reason": None})

    def _final_chunks(self, event: GenerationEvent, scored: list[Scored]) -> list[dict[str, Any]]:
        return [self._chunk({"index": 0, "text": "", "logprobs": self._logprobs(scored) if scored else None,
                             "finish_reason": event.finish_reason})]

    def completion(self) -> dict[str, Any]:
        """The non-streaming "text_completion" object."""
        choice = {"index": 0, "text": self.text, "logprobs": self._logprobs(self._scored),
                  "finish_reason": self.last.finish_reason if self.last else None}
        return {**self._envelope(chunk=False), "choices": [choice], "usage": usage(self.last)}
