"""The runtime's backends as a LangChain chat model, so LangGraph agents can drive any of them.

`ChatMiniCPM` wraps a loaded `runtime.backends.base.Backend` (torch, gguf or a remote OpenAI-compatible
server) and turns its GenerationEvents into LangChain messages:

- text deltas become `AIMessageChunk`s; then one chunk with no text carries the tool calls as
  `tool_call_chunks`, `usage_metadata` and `response_metadata` (finish_reason, model_name, backend,
  timing);
- a tool call the model began but that cannot be used (the event's `tool_call_error`: unknown tool,
  wrong argument types, unreadable text) becomes an entry of `invalid_tool_calls`, so an agent can
  show the model its mistake. Its `args` holds the runtime's error text and its `name` is None.

Why the error text sits in `args`: langchain-core builds a streamed reply by adding chunks, and
`AIMessageChunk.__add__` keeps only `tool_call_chunks`, re-parsing them into `tool_calls` and
`invalid_tool_calls` with `error=None`; an `invalid_tool_calls` entry set directly on a chunk is
dropped, or worse, turned back into a *valid* call with empty arguments. A tool call chunk whose
args are the error text (never a JSON object) comes out of every path as an invalid call that keeps
the text: `invoke`, `stream` merged with `+`, and the protocol-event path (`stream_events(version="v3")`,
whose finished message sets its own generic `error`). `invoke` without streaming
also fills `error`; every path also puts the text in `response_metadata["tool_call_error"]`.
`tool_call_error(message)` reads it back.

A backend runs one generation at a time and is not thread-safe (runtime/server/slots.py), so calls
on one backend take turns on a lock: `batch()` and concurrent async calls run one after another.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json import parse_partial_json
from pydantic import ConfigDict, Field, model_validator

from runtime.backends.base import Backend, load_backend
from runtime.events import GenerationEvent, SamplingParams
from runtime.messages import InvalidRequestError
from runtime.tool_calls.dialects import new_call_id

_DEFAULT = SamplingParams()
# Options a single call may override (`model.invoke(x, temperature=0)` or `model.bind(seed=1)`).
_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")
_SAMPLING_OPTIONS = (*_SAMPLING_FIELDS, "stop_token_ids")
_CALL_OPTIONS = ("tools", "tool_choice", "dialect", "constrained", "template_kwargs")
# Content blocks of an earlier assistant turn that are carried elsewhere (tool_calls) or not shown
# back to the model (its reasoning, as chat templates drop reasoning_content).
_SKIPPED_AI_BLOCKS = {"tool_call", "tool_call_chunk", "invalid_tool_call", "tool_use", "server_tool_call",
                      "server_tool_call_chunk", "server_tool_result", "reasoning", "thinking"}


class ChatMiniCPM(BaseChatModel):
    """A LangChain chat model over a loaded runtime backend (torch, gguf or openai).

    Sampling fields map onto runtime.events.SamplingParams (temperature 0 is greedy); `dialect`
    picks how tools are shown and calls read (None: the one the chat template was made for);
    `constrained` writes tool calls under their JSON schemas; `template_kwargs` reach the chat
    template (e.g. {"enable_thinking": False}).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    backend: Backend = Field(exclude=True)
    max_tokens: int = _DEFAULT.max_tokens
    temperature: float = _DEFAULT.temperature
    top_k: int = _DEFAULT.top_k
    top_p: float = _DEFAULT.top_p
    min_p: float = _DEFAULT.min_p
    repetition_penalty: float = _DEFAULT.repetition_penalty
    seed: int | None = _DEFAULT.seed
    stop: list[str] | None = None
    dialect: Literal["minicpm", "hermes", "openai"] | None = None
    constrained: bool = True
    template_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_sampling(self) -> ChatMiniCPM:
        self._sampling({})  # SamplingParams says what is out of range, at construction
        return self

    @classmethod
    def from_model(cls, model: str = "default", backend: str = "auto", **kwargs: Any) -> ChatMiniCPM:
        """Load `model` on `backend` (runtime.backends.base.load_backend) and wrap it.

        kwargs that load_backend takes (context_length, dtype, threads, sparse, base_url, api_key,
        ...) go to it; the rest are this class's fields (temperature, max_tokens, dialect, ...)."""
        load_names = set(inspect.signature(load_backend).parameters) - {"name", "model"}
        load_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in load_names}
        return cls(backend=load_backend(backend, model, **load_kwargs), **kwargs)

    @property
    def model_name(self) -> str:
        """What the model reference resolved to (also LangSmith's ls_model_name)."""
        return self.backend.model_label

    @property
    def _llm_type(self) -> str:
        return "minicpm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "model_name": self.backend.model_label,
                **{k: getattr(self, k) for k in (*_SAMPLING_FIELDS, "stop", "dialect", "constrained")},
                "template_kwargs": self.template_kwargs}

    # -- tools ---------------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (OpenAI dicts, BaseTools, pydantic models, functions) to every call.

        tool_choice: "auto", "none", "required" (also "any" or True), a tool's name, or
        {"type": "function", "function": {"name": ...}}; None leaves the runtime's default (auto)."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        choice = _tool_choice(tool_choice, formatted)  # a wrong name fails here, not at the first call
        if choice is not None:
            kwargs["tool_choice"] = choice
        return self.bind(tools=formatted, **kwargs)

    # -- generation ----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        first, *rest = [chunk.message for chunk in self._chunks(messages, stop, kwargs)]
        merged = add_ai_message_chunks(first, *rest) if rest else first
        error = merged.response_metadata.get("tool_call_error")
        message = AIMessage(
            content=merged.content,
            tool_calls=merged.tool_calls,
            # Not merged from a stream here, so the error can sit in its own field too.
            invalid_tool_calls=[{**call, "error": call.get("error") or error} for call in merged.invalid_tool_calls],
            usage_metadata=merged.usage_metadata,
            response_metadata=merged.response_metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The base class would call next() on the sync stream from a different executor thread per
        # chunk, holding the backend's lock across those hops: enough waiting streams could then
        # fill the pool and starve the one that holds it. A thread of its own runs the whole
        # generation instead and hands chunks to the event loop. (_agenerate keeps the base class's
        # default, _generate in the executor: it holds the lock within one thread.)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[ChatGenerationChunk | None, BaseException | None]] = asyncio.Queue()
        abandoned = threading.Event()

        def send(item: tuple[ChatGenerationChunk | None, BaseException | None]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop closed: nobody is listening any more
                abandoned.set()

        def produce() -> None:
            chunks = self._chunks(messages, stop, kwargs)
            try:
                for chunk in chunks:
                    if abandoned.is_set():
                        break
                    send((chunk, None))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the event loop's side
                send((None, exc))
                return
            finally:
                chunks.close()  # ends the backend's generation between two tokens, frees the lock
            send((None, None))

        threading.Thread(target=produce, name="ChatMiniCPM-astream", daemon=True).start()
        try:
            while True:
                chunk, exc = await queue.get()
                if exc is not None:
                    raise exc
                if chunk is None:
                    return
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            abandoned.set()

    def _chunks(self, messages: list[BaseMessage], stop: list[str] | None,
                kwargs: dict[str, Any]) -> Iterator[ChatGenerationChunk]:
        """The reply as chunks: text deltas, then one final chunk (calls, usage, metadata)."""
        request = self._request(messages, stop, kwargs)
        final: GenerationEvent | None = None
        with _backend_lock(self.backend):
            events = self.backend.chat(**request)  # raises InvalidRequestError, ContextLengthError
            try:
                for event in events:
                    if event.finish_reason is not None:
                        final = event
                        break
                    if event.text:  # progress events and held-back text carry none
                        yield ChatGenerationChunk(message=AIMessageChunk(content=event.text))
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
        if final is None:
            raise RuntimeError(f"the {self.backend.name} backend's stream ended without a final event")
        if final.text:
            yield ChatGenerationChunk(message=AIMessageChunk(content=final.text))
        # The calls ride on a chunk of their own with no text and no chunk_position: langchain-core's
        # protocol-event bridge (stream_events v3, LangGraph's v2 message streaming) reads
        # tool_call_chunks only from such a chunk; from one marked "last" it takes the parsed
        # tool_calls and silently drops invalid ones. LangChain adds the empty "last" chunk itself.
        yield ChatGenerationChunk(message=self._final_chunk(final))

    def _request(self, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> dict[str, Any]:
        """backend.chat's arguments for one call: the fields, overridden by the call's options."""
        # `stream` is LangChain's own switch (`invoke(x, stream=True)` streams), already acted on.
        unknown = set(kwargs) - set(_SAMPLING_OPTIONS) - set(_CALL_OPTIONS) - {"stream"}
        if unknown:
            raise TypeError(f"ChatMiniCPM got unknown option(s) {', '.join(sorted(unknown))} "
                            f"(it takes {', '.join(_SAMPLING_OPTIONS + _CALL_OPTIONS)} and stop)")
        overrides = {k: kwargs[k] for k in _SAMPLING_OPTIONS if k in kwargs}
        stops = [*(self.stop or []), *(stop or [])]
        overrides["stop"] = tuple(dict.fromkeys(stops))
        tools = [convert_to_openai_tool(tool) for tool in kwargs.get("tools") or ()]
        tool_choice = _tool_choice(kwargs.get("tool_choice"), tools)
        return {
            "messages": to_openai_messages(messages),
            "params": self._sampling(overrides),
            "tools": tools or None,
            "tool_choice": "auto" if tool_choice is None else tool_choice,
            "dialect": kwargs.get("dialect", self.dialect),
            "constrained": kwargs.get("constrained", self.constrained),
            **self.template_kwargs, **(kwargs.get("template_kwargs") or {}),
        }

    def _sampling(self, overrides: dict[str, Any]) -> SamplingParams:
        fields = {k: getattr(self, k) for k in _SAMPLING_FIELDS}
        fields["stop"] = tuple(self.stop or ())
        fields.update(overrides)
        if "stop_token_ids" in fields:
            fields["stop_token_ids"] = tuple(fields["stop_token_ids"] or ())
        return SamplingParams(**fields)

    def _final_chunk(self, event: GenerationEvent) -> AIMessageChunk:
        chunks = [tool_call_chunk(name=call.name, args=json.dumps(call.arguments, ensure_ascii=False),
                                  id=call.id, index=i)
                  for i, call in enumerate(event.tool_calls)]
        metadata: dict[str, Any] = {
            "finish_reason": event.finish_reason,
            "model_name": self.backend.model_label,
            "backend": self.backend.name,
            "prefill_seconds": event.prefill_seconds,
            "decode_seconds": event.decode_seconds,
            "prefill_tokens_per_second": event.prefill_tokens_per_second,
            "decode_tokens_per_second": event.decode_tokens_per_second,
        }
        if event.tool_call_error:
            metadata["tool_call_error"] = event.tool_call_error
            chunks.append(tool_call_chunk(name=None, args=_unparsable(event.tool_call_error), id=new_call_id(),
                                          index=len(chunks)))
        return AIMessageChunk(
            content="",
            tool_call_chunks=chunks,
            usage_metadata={"input_tokens": event.prompt_tokens, "output_tokens": event.completion_tokens,
                            "total_tokens": event.prompt_tokens + event.completion_tokens},
            response_metadata=metadata,
        )


def tool_call_error(message: BaseMessage) -> str | None:
    """Why a tool call the model began could not be used, from a ChatMiniCPM reply (None if none)."""
    error = message.response_metadata.get("tool_call_error")
    if error:
        return error
    invalid = getattr(message, "invalid_tool_calls", None) or []
    return "; ".join(call.get("error") or call.get("args") or "an unreadable tool call" for call in invalid) or None


# -- LangChain messages -> the runtime's OpenAI shape ---------------------------------------------


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the OpenAI-shape dicts backend.chat takes (runtime/messages.py).

    An AIMessage's invalid_tool_calls are not sent back as calls (its text, which holds what the
    model wrote, is). Raises InvalidRequestError for a message or content part it cannot convert."""
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}] ({type(message).__name__})"
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": _text(message.content, where)})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": _text(message.content, where)})
        elif isinstance(message, AIMessage):
            converted: dict[str, Any] = {"role": "assistant",
                                         "content": _text(message.content, where, skip=_SKIPPED_AI_BLOCKS)}
            if message.tool_calls:
                converted["tool_calls"] = [
                    {"id": call.get("id") or "", "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call["args"], ensure_ascii=False)}}
                    for call in message.tool_calls]
            out.append(converted)
        elif isinstance(message, ToolMessage):
            converted = {"role": "tool", "tool_call_id": message.tool_call_id,
                         "content": _text(message.content, where, separator="\n")}
            if message.name:
                converted["name"] = message.name
            out.append(converted)
        elif isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": _text(message.content, where)})
        else:
            raise InvalidRequestError(
                f"{where}: ChatMiniCPM cannot send a {message.type!r} message to the model "
                "(use SystemMessage, HumanMessage, AIMessage, ToolMessage or ChatMessage)")
    return out


def _text(content: str | list[str | dict[str, Any]], where: str, *, skip: set[str] | frozenset[str] = frozenset(),
          separator: str = "") -> str:
    """A message's content as text; content blocks other than text are an error (or skipped)."""
    if isinstance(content, str):
        return content
    parts = []
    for j, block in enumerate(content):
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif isinstance(block, dict) and block.get("type") in skip:
            continue
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise InvalidRequestError(f"{where}: content[{j}] is a {kind!r} block; only text reaches the model")
    return separator.join(parts)


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> str | dict[str, Any] | None:
    """LangChain's tool_choice spellings as the runtime's: auto | none | required | a named tool."""
    names = [tool["function"]["name"] for tool in tools]
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if choice == "any" or choice is True:
        return "required"
    name = choice
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    if isinstance(name, str) and name in names:
        return {"type": "function", "function": {"name": name}}
    if isinstance(name, str):
        raise InvalidRequestError(f"tool_choice names the tool {name!r}, which is not among the bound tools "
                                  f"(known: {', '.join(names) or 'none'})")
    raise InvalidRequestError("tool_choice must be 'auto', 'none', 'required', 'any', a tool's name or "
                              "{'type': 'function', 'function': {'name': ...}}")


def _unparsable(text: str) -> str:
    """text, made sure never to parse as a JSON object, so langchain-core files it as an invalid call."""
    try:
        parsed = parse_partial_json(text)
    except Exception:  # noqa: BLE001 - not JSON at all: exactly what is wanted
        return text
    return text if not isinstance(parsed, dict) else f"error: {text}"


_LOCKS: weakref.WeakKeyDictionary[Backend, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _backend_lock(backend: Backend) -> threading.Lock:
    """The lock that lets one generation at a time run on a backend (shared by every ChatMiniCPM over it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(backend)
        if lock is None:
            lock = _LOCKS[backend] = threading.Lock()
        return lock
