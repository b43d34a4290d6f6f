"""The request bodies `minicpm serve` accepts, and their translation into SamplingParams.

Bodies are pydantic models in strict mode: a wrong JSON type ("max_tokens": "10") is a 400 that
names the field, never a silent coercion. Fields this server does not know are allowed and
ignored, because clients send many (user, metadata, store, ...); fields it knows but cannot honour
(n > 1, penalties, JSON response formats) are refused with a message rather than dropped.

Beyond OpenAI's fields, the samplers of llama.cpp's and vLLM's servers are accepted under their
names there: top_k, min_p, repetition_penalty, and chat_template_kwargs for the chat template.
Defaults are those of `minicpm generate` (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05),
so the server and the command line answer alike.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict

from runtime.events import MAX_SEED, SamplingParams
from runtime.server.errors import APIError

DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What both endpoints share."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(SamplingFields):
    # Checked in depth by runtime.messages.check_messages, whose messages name the bad entry.
    messages: list[Any]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


def refuse(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def requested_max_tokens(body: SamplingFields, context_length: int) -> int | None:
    """max_tokens (or chat's newer max_completion_tokens), checked against the context window."""
    value, param = body.max_tokens, "max_tokens"
    newer = getattr(body, "max_completion_tokens", None)
    if newer is not None:
        if value is not None and value != newer:
            raise refuse(f"max_tokens ({value}) and max_completion_tokens ({newer}) disagree; send one of them",
                         "max_completion_tokens")
        value, param = newer, "max_completion_tokens"
    if value is None:
        return None
    if value < 1:
        raise refuse(f"{param} must be at least 1 (got {value})", param, "invalid_value")
    if value >= context_length:
        raise refuse(f"{param} is too large: {value}. This model's context holds {context_length} tokens, prompt "
                     f"and completion together, so {param} must be below {context_length}", param, "invalid_value")
    return value


def check_common(body: SamplingFields) -> None:
    """Refuse what this server cannot honour instead of ignoring it."""
    if body.n not in (None, 1):
        raise refuse(f"n must be 1: this server generates one choice per request (got {body.n})", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value not in (None, 0):
            raise refuse(f"{name} is not supported (got {value}); use repetition_penalty (1 = off) instead", name)


def sampling_params(body: SamplingFields, *, max_tokens: int | None, default_max_tokens: int,
                    logprobs: bool, top_logprobs: int) -> SamplingParams:
    """SamplingParams from a request; its own checks (ranges) become a 400 naming the field."""
    values = {name: getattr(body, name) if getattr(body, name) is not None else default
              for name, default in DEFAULT_SAMPLING.items()}
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else default_max_tokens,
            repetition_penalty=body.repetition_penalty if body.repetition_penalty is not None else 1.0,
            # No seed: a fresh one per request, drawn here so that every backend samples alike.
            seed=body.seed if body.seed is not None else random.randrange(MAX_SEED),
            stop=tuple(stop),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            **values,
        )
    except ValueError as exc:
        message = str(exc)
        # SamplingParams names the field first ("top_p must be in (0, 1] (got 3)").
        field = message.split(" ", 1)[0]
        raise refuse(message, field if field in SamplingFields.model_fields or field == "top_logprobs" else None,
                     "invalid_value") from None


def chat_params(body: ChatRequest, context_length: int) -> tuple[SamplingParams, int | None]:
    """The sampling settings of a chat request, and the max_tokens it asked for (None: up to the context)."""
    check_common(body)
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise refuse(f"response_format {body.response_format.get('type')!r} is not supported; only 'text' is",
                     "response_format")
    if body.top_logprobs and not body.logprobs:
        raise refuse("top_logprobs needs logprobs: true", "top_logprobs")
    max_tokens = requested_max_tokens(body, context_length)
    # Without max_tokens a chat reply may use the rest of the context, as OpenAI's API does.
    params = sampling_params(body, max_tokens=max_tokens, default_max_tokens=context_length,
                             logprobs=bool(body.logprobs), top_logprobs=body.top_logprobs or 0)
    return params, max_tokens


def completion_params(body: CompletionRequest, context_length: int) -> tuple[SamplingParams, int | None]:
    check_common(body)
    if body.echo:
        raise refuse("echo is not supported; the prompt is yours already", "echo")
    if body.suffix:
        raise refuse("suffix (fill-in-the-middle) is not supported", "suffix")
    if body.best_of not in (None, 1):
        raise refuse(f"best_of must be 1 (got {body.best_of})", "best_of")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_COMPLETION_LOGPROBS:
        raise refuse(f"logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS} (got {body.logprobs})", "logprobs")
    max_tokens = requested_max_tokens(body, context_length)
    # OpenAI's completions default to 16 tokens.
    params = sampling_params(body, max_tokens=max_tokens, default_max_tokens=16,
                             logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0)
    return params, max_tokens


def completion_prompt(body: CompletionRequest) -> str:
    """The one prompt string of a completions request (a list of one string is accepted too)."""
    if isinstance(body.prompt, str):
        return body.prompt
    if len(body.prompt) != 1:
        raise refuse(f"prompt must be one string; a batch of {len(body.prompt)} prompts is not supported "
                     "(send one request per prompt)", "prompt")
    return body.prompt[0]
