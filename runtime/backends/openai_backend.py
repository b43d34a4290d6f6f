"""The `openai` backend: any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, CPM.cu's
server) behind the one generation interface.

Where a user outgrows one machine, the model runs on a server and this backend streams its replies
as GenerationEvents, so the CLI, the agents and the TUI work unchanged. It speaks HTTP through httpx
directly rather than the openai SDK: the runtime gains no dependency beyond httpx, and the parts that
matter here stay in our hands: which failures are retried and how long to wait (429, 5xx, dropped
connections, with backoff and Retry-After), closing the response when the consumer stops reading
(the server then stops generating), and the vendor fields the SDK does not know (top_k, min_p,
repetition_penalty, chat_template_kwargs).

What differs from the local backends, all by necessity:
- The server tokenizes and applies its own chat template: there are no token ids here, so
  tokenize/render_chat/generate_tokens/decode raise BackendUnavailableError; use chat()/complete().
- Generated tokens have no known id: as runtime/events.py says, a remote server's events carry
  `token=None` and non-empty `text` (which is what tells them from prefill progress). Only where a
  server reports ids in its logprobs (llama.cpp's `id`, vLLM's "token_id:N" strings) is `token` set.
  Alternatives in `top_logprobs` whose id is unknown carry UNKNOWN_TOKEN (-1, openai_stream.py).
- One event per streamed chunk that has text, or one per token where the chunk's logprobs split its
  text exactly. A chunk of tool-call deltas gives no event (a call's text is held back, as on the
  local backends) but counts towards completion_tokens; the final event's completion_tokens is the
  server's own count when it sends usage.
- Tool calls are the server's (the `openai` dialect): its tool_calls deltas are assembled here and
  decoded on the final event; arguments that are not a JSON object become `tool_call_error`.
- Reasoning that a server splits off (vLLM/SGLang `reasoning_content`) comes back inline as
  `<think>...</think>`, the way a local backend shows a thinking model's text.
- There is no prefill progress: prefill_seconds is the time to the first token, network included.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from runtime.backends.base import Backend
from runtime.errors import BackendUnavailableError, ContextLengthError, MiniCPMError, ModelNotFoundError
from runtime.backends.openai_stream import ReplyAssembler, sse_messages, stream_error
from runtime.events import GenerationEvent, SamplingParams
from runtime.messages import InvalidRequestError, check_messages
from runtime.notices import notify_once

# Assumed when neither --ctx nor the server says: MiniCPM4's native context.
DEFAULT_CONTEXT_LENGTH = 32768
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to open a connection
# Seconds to wait for the next bytes: before the first token this covers the server's queue and
# prefill, which for a long prompt on a busy server takes minutes.
DEFAULT_READ_TIMEOUT = 300.0
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_BACKOFF_BASE = 0.5  # seconds before the second attempt; doubles per attempt, with jitter
MAX_BACKOFF = 30.0  # the longest wait between attempts, Retry-After included
# 501 (not implemented) and 505 (HTTP version) will not change on a second try.
RETRYABLE_STATUS = {429} | set(range(500, 600)) - {501, 505}
# How servers word a prompt that does not fit: vLLM, SGLang, llama.cpp, llama-cpp-python, OpenAI's code.
CONTEXT_WORDS = re.compile(r"context (length|window|size)|maximum context|context_length_exceeded", re.IGNORECASE)


class RemoteServerError(BackendUnavailableError):
    """The OpenAI-compatible server could not be reached, kept failing, or broke off its reply."""


# ---------------------------------------------------------------- settings from arguments and env


def normalise_base_url(url: str) -> str:
    """The server's API root, always ending in /v1: users paste it with and without."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendUnavailableError(
            f"the server address must look like http://HOST:PORT/v1 (got '{url}'); fix --base-url or MINICPM_BASE_URL")
    return url if url.endswith("/v1") else url + "/v1"


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise MiniCPMError(f"{name} must be a number of seconds above 0 (got '{raw}')")
    return value


def env_count(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise MiniCPMError(f"{name} must be a whole number of at least 1 (got '{raw}')")
    return int(raw)


def find_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("MINICPM_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


# ---------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try a request and how long to wait between tries (exponential, with jitter)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE

    def delay(self, failed_attempts: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server knows best when it will have room again
            return min(retry_after, MAX_BACKOFF)
        # "Equal jitter": half the exponential step fixed, half random, so clients that failed
        # together do not all come back at the same moment.
        step = min(self.backoff_base * 2 ** (failed_attempts - 1), MAX_BACKOFF)
        return step / 2 + random.uniform(0, step / 2)


class Retry(Exception):
    """A failure worth another attempt: 429, 5xx, or a connection that failed before any output."""

    def __init__(self, problem: str, fix: str, retry_after: float | None = None):
        super().__init__(problem)
        self.problem, self.fix, self.retry_after = problem, fix, retry_after

    def give_up(self, attempts: int) -> RemoteServerError:
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        return RemoteServerError(f"{self.problem} ({tries}); {self.fix}")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


# ---------------------------------------------------------------- talking to the server


def server_message(response: httpx.Response) -> str:
    """The server's own explanation of an error response, on one short line."""
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        body = response.text
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            body = error.get("message") or error
        elif error:
            body = error
        elif "message" in body or "detail" in body:  # vLLM's ErrorResponse; FastAPI's validation errors
            body = body.get("message") or body.get("detail")
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else (text or response.reason_phrase or "no message")


class ServerConnection:
    """An httpx client for one server, with the retry policy and the errors a user can act on."""

    def __init__(self, base_url: str, api_key: str | None, *, connect_timeout: float, read_timeout: float,
                 retry: RetryPolicy):
        self.base_url = base_url
        self.read_timeout = read_timeout
        self.retry = retry
        self.served_models: list[str] = []
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read: the longest silence between two chunks of a stream, not a limit on the whole reply.
        self.client = httpx.Client(base_url=base_url, headers=headers,
                                   timeout=httpx.Timeout(read_timeout, connect=connect_timeout))

    def close(self) -> None:
        self.client.close()

    def transport_failure(self, exc: httpx.TransportError) -> Retry:
        """What a connection-level failure before any output means, as a retryable failure."""
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return Retry(f"cannot connect to the server at {self.base_url} ({exc or type(exc).__name__})",
                         "start the server or fix --base-url / MINICPM_BASE_URL")
        if isinstance(exc, httpx.TimeoutException):
            return Retry(f"the server at {self.base_url} sent nothing for {self.read_timeout:g} s",
                         "it may be overloaded or stuck: check it, or wait longer with MINICPM_TIMEOUT=SECONDS")
        return Retry(f"the connection to {self.base_url} dropped before the reply began ({exc or type(exc).__name__})",
                     "check the server's log; it may have crashed or restarted")

    def check_status(self, response: httpx.Response) -> None:
        """Raise Retry for 429/5xx and the right MiniCPMError for any other failed status."""
        if response.is_success:
            return
        response.read()
        status, message = response.status_code, server_message(response)
        where = response.request.url.path
        if status in RETRYABLE_STATUS:
            raise Retry(f"the server at {self.base_url} answered {status} to {where} ({message})",
                        "check the server's log, or try again later",
                        retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise BackendUnavailableError(
                f"the server at {self.base_url} refused the API key ({status}: {message}); set the right key in "
                "MINICPM_API_KEY (or OPENAI_API_KEY)")
        if status == 404 and where.endswith("/models"):
            raise BackendUnavailableError(
                f"{self.base_url}/models does not exist (404); --base-url must be an OpenAI-compatible API's "
                "address, e.g. http://127.0.0.1:8000/v1")
        if status == 404:
            served = ", ".join(self.served_models) or "none listed"
            raise ModelNotFoundError(
                f"the server at {self.base_url} answered 404 to {where} ({message}); check --model "
                f"(it serves: {served}) and whether the server offers {where}")
        if status in (400, 413, 422) and CONTEXT_WORDS.search(message):
            raise ContextLengthError(
                f"the server says the request does not fit its context ({message}); shorten the conversation or "
                "lower max_tokens")
        raise InvalidRequestError(f"the server at {self.base_url} rejected the request ({status}: {message})")

    def get_json(self, path: str) -> Any:
        """GET path (relative to the base URL) with retries; its JSON body."""
        failure: Retry | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            if failure is not None:
                time.sleep(self.retry.delay(attempt - 1, failure.retry_after))
            try:
                response = self.client.get(path)
                self.check_status(response)
            except Retry as retry:
                failure = retry
                continue
            except httpx.TransportError as exc:
                failure = self.transport_failure(exc)
                continue
            try:
                return response.json()
            except ValueError:
                raise RemoteServerError(
                    f"{self.base_url}/{path} did not answer with JSON; is --base-url an OpenAI-compatible "
                    "API (e.g. http://127.0.0.1:8000/v1)?") from None
        assert failure is not None
        raise failure.give_up(self.retry.max_attempts)


# ---------------------------------------------------------------- the backend


def server_context_length(entry: dict[str, Any]) -> int | None:
    """The context length a /models entry reports, where the server says (vLLM, SGLang, llama.cpp)."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for value in (entry.get("max_model_len"), entry.get("context_length"), entry.get("max_context_length"),
                  meta.get("n_ctx"), meta.get("n_ctx_train")):
        if isinstance(value, int) and value > 1:
            return value
    return None


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checked messages in the wire shape: tool-call arguments go back to JSON strings."""
    out = []
    for message in check_messages(messages):
        message = dict(message)
        if "tool_calls" in message:
            message["tool_calls"] = [
                {**call, "function": {**call["function"],
                                      "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False)}}
                for call in message["tool_calls"]]
        if message.get("tool_call_id") is None:
            message.pop("tool_call_id", None)
        out.append(message)
    return out


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, connection: ServerConnection, model: str, context_length: int, notices: list[str],
                 details: list[str]):
        self.connection = connection
        self.model = model
        self.model_label = f"{model} at {connection.base_url}"
        self.context_length = context_length
        self.notices = notices
        self.details = details
        self.chat_template = None  # the server applies its own

    @classmethod
    def load(
        cls,
        model: str | None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        context_length: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_attempts: int | None = None,
        backoff_base: float | None = None,
    ) -> OpenAIBackend:
        """Connect to the server at base_url (else MINICPM_BASE_URL) and pick `model` from its /models.

        model "default" or None: the first model the server lists. The API key comes from api_key,
        else MINICPM_API_KEY, else OPENAI_API_KEY. Timeouts in seconds (read: MINICPM_TIMEOUT);
        max_attempts (MINICPM_MAX_ATTEMPTS) and backoff_base set the retries.
        """
        url = base_url or os.environ.get("MINICPM_BASE_URL")
        if not url:
            raise BackendUnavailableError(
                "the openai backend needs a server address: pass --base-url http://HOST:PORT/v1 or set "
                "MINICPM_BASE_URL")
        retry = RetryPolicy(max_attempts=max_attempts or env_count("MINICPM_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS),
                            backoff_base=DEFAULT_BACKOFF_BASE if backoff_base is None else backoff_base)
        connection = ServerConnection(
            normalise_base_url(url), find_api_key(api_key),
            connect_timeout=connect_timeout or DEFAULT_CONNECT_TIMEOUT,
            read_timeout=read_timeout or env_seconds("MINICPM_TIMEOUT", DEFAULT_READ_TIMEOUT), retry=retry)
        try:
            return cls._pick_model(connection, model, context_length)
        except BaseException:
            connection.close()
            raise

    @classmethod
    def _pick_model(cls, connection: ServerConnection, model: str | None, context_length: int | None) -> OpenAIBackend:
        listing = connection.get_json("models")
        entries = [e for e in (listing.get("data") if isinstance(listing, dict) else None) or []
                   if isinstance(e, dict) and isinstance(e.get("id"), str)]
        connection.served_models = [e["id"] for e in entries]
        served = ", ".join(connection.served_models)
        notices: list[str] = []
        if not entries:
            raise ModelNotFoundError(f"the server at {connection.base_url} lists no models; check that it loaded one")
        if model in (None, "", "default"):
            entry = entries[0]
            if len(entries) > 1:
                notices.append(f"using the server's first model, {entry['id']} (it also serves: "
                               f"{', '.join(connection.served_models[1:])}; pick one with --model)")
        else:
            entry = next((e for e in entries if e["id"] == model), None)
            if entry is None:
                raise ModelNotFoundError(
                    f"the server at {connection.base_url} does not serve '{model}'; it serves: {served} "
                    "(pass one of them with --model)")
        if context_length is None:
            context_length = server_context_length(entry)
            if context_length is None:
                context_length = DEFAULT_CONTEXT_LENGTH
                notices.append(f"the server does not report its context length; assuming {context_length} tokens "
                               "(set it with --ctx)")
        retry = connection.retry
        details = [f"OpenAI-compatible server at {connection.base_url}, serving: {served}",
                   (f"timeouts: connect {connection.client.timeout.connect:g} s, between chunks "
                    f"{connection.read_timeout:g} s; up to {retry.max_attempts} attempts per request")]
        return cls(connection, entry["id"], context_length, notices, details)

    def close(self) -> None:
        self.connection.close()

    # -- no token layer on a remote server

    def _no_tokens(self, what: str) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"the openai backend works on messages and text, not token ids: the server {what} itself; use "
            "chat() or complete() (or a local backend, --backend torch or gguf, for token-level work)")

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        raise self._no_tokens("tokenizes")

    def decode(self, ids: list[int]) -> str:
        raise self._no_tokens("detokenizes")

    def render_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
        raise self._no_tokens("applies its chat template")

    def generate_tokens(self, prompt: list[int], params: SamplingParams, guard=None) -> Iterator[GenerationEvent]:
        raise self._no_tokens("tokenizes the prompt")

    # -- generation

    def chat(
        self,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] = "auto",
        dialect: str | None = None,
        constrained: bool = True,
        **template_kwargs: Any,
    ) -> Iterator[GenerationEvent]:
        """Stream the reply from the server's /chat/completions.

        Tools are passed natively and the server parses the calls (the `openai` dialect); `dialect`
        and `constrained` are the server's business here. template_kwargs travel as
        chat_template_kwargs (vLLM, SGLang and llama.cpp's server read them, e.g. enable_thinking).
        Bad messages or tools raise InvalidRequestError now, before any request is sent.
        """
        from runtime.tool_calls.tools import check_tool_choice, check_tools

        if dialect not in (None, "openai"):
            notify_once(f"the openai backend leaves tool calls to the server; dialect '{dialect}' is not used")
        body = {"messages": wire_messages(messages), **self.sampling_fields(params, chat=True)}
        checked_tools = check_tools(tools)
        if checked_tools:
            choice = check_tool_choice(tool_choice, checked_tools)
            body["tools"] = [tool.to_openai() for tool in checked_tools]
            body["tool_choice"] = (choice if choice in ("auto", "none", "required")
                                   else {"type": "function", "function": {"name": choice}})
        if template_kwargs:
            body["chat_template_kwargs"] = template_kwargs
        return self.stream("chat/completions", body, endpoint="chat")

    def complete(self, prompt: str, params: SamplingParams) -> Iterator[GenerationEvent]:
        """Stream a continuation of raw text from the server's /completions."""
        if not isinstance(prompt, str):
            raise InvalidRequestError("the prompt must be text")
        body = {"prompt": prompt, **self.sampling_fields(params, chat=False)}
        return self.stream("completions", body, endpoint="completions")

    def sampling_fields(self, params: SamplingParams, *, chat: bool) -> dict[str, Any]:
        """SamplingParams in the wire's terms."""
        fields: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True},
                                  "temperature": params.temperature, "top_p": params.top_p}
        # A budget the context cannot hold (the CLI's -1 is 2**31) is left to the server, which then
        # generates until its context is full; sending it would be rejected.
        if params.max_tokens < self.context_length:
            fields["max_tokens"] = params.max_tokens
        if params.stop:
            fields["stop"] = list(params.stop)
        if params.seed is not None:
            fields["seed"] = params.seed
        if params.logprobs or params.top_logprobs:
            if chat:
                fields["logprobs"] = True
                if params.top_logprobs:
                    fields["top_logprobs"] = params.top_logprobs
            else:
                fields["logprobs"] = params.top_logprobs
        # Not in OpenAI's API, so sent only when they do something: vLLM, SGLang and llama.cpp read
        # them, a strict server may reject them. Off, the server's own defaults apply.
        if params.top_k > 0:
            fields["top_k"] = params.top_k
        if params.min_p > 0:
            fields["min_p"] = params.min_p
        if params.repetition_penalty != 1.0:
            fields["repetition_penalty"] = params.repetition_penalty  # vLLM, SGLang
            fields["repeat_penalty"] = params.repetition_penalty  # llama.cpp's name
            fields["repeat_last_n"] = params.repetition_window
        if params.stop_token_ids:
            fields["stop_token_ids"] = list(params.stop_token_ids)
        return fields

    def stream(self, path: str, body: dict[str, Any], *, endpoint: str) -> Iterator[GenerationEvent]:
        """POST body and stream the reply's events, retrying only while nothing has been yielded.

        Once an event has reached the caller a retry would repeat or contradict it, so a failure
        after that point ends the stream with a RemoteServerError. Closing this generator closes the
        response, and a server stops generating for a client that went away.
        """
        connection = self.connection
        failure: Retry | None = None
        for attempt in range(1, connection.retry.max_attempts + 1):
            if failure is not None:
                time.sleep(connection.retry.delay(attempt - 1, failure.retry_after))
            reply = ReplyAssembler(endpoint)
            try:
                with connection.client.stream("POST", path, json=body) as response:
                    connection.check_status(response)
                    yield from self.reply_events(response, reply)
                yield reply.final_event()
                return
            except Retry as retry:
                failure = retry
            except httpx.TransportError as exc:
                if reply.delivered:
                    raise self.broken_off(reply, exc) from None
                failure = connection.transport_failure(exc)
        assert failure is not None
        raise failure.give_up(connection.retry.max_attempts)

    def broken_off(self, reply: ReplyAssembler, exc: httpx.TransportError) -> RemoteServerError:
        what = (f"sent nothing for {self.connection.read_timeout:g} s" if isinstance(exc, httpx.TimeoutException)
                else f"dropped the connection ({exc or type(exc).__name__})")
        return RemoteServerError(
            f"the server at {self.connection.base_url} {what} after {reply.generated} tokens of the reply; the "
            "reply is incomplete and was not retried, since part of it was already delivered")

    def reply_events(self, response: httpx.Response, reply: ReplyAssembler) -> Iterator[GenerationEvent]:
        """The events of one successful response: SSE, or one JSON body from a server that does not stream."""
        base = self.connection.base_url
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            try:
                chunks = [response.json()]
            except ValueError:
                raise RemoteServerError(f"the server at {base} answered with JSON that does not parse") from None
        else:
            chunks = self.sse_chunks(response, reply)
        for chunk in chunks:
            problem = stream_error(chunk)
            if problem is not None:
                if CONTEXT_WORDS.search(problem) and not reply.delivered:
                    raise ContextLengthError(f"the server says the request does not fit its context ({problem}); "
                                             "shorten the conversation or lower max_tokens")
                raise RemoteServerError(f"the server at {base} reported an error in its reply: {problem}")
            yield from reply.feed(chunk)
        if isinstance(chunks, list):
            reply.done = True
        if not reply.complete:
            if reply.generated:
                raise RemoteServerError(
                    f"the server at {base} ended the stream after {reply.generated} tokens without finishing the "
                    "reply; it is incomplete (check the server's log)")
            raise RemoteServerError(
                f"the server at {base} ended its reply without any output or error; its log says why (llama-cpp-"
                "python's server does this when a request fails, e.g. a prompt longer than its context)")

    def sse_chunks(self, response: httpx.Response, reply: ReplyAssembler) -> Iterator[Any]:
        for event, data in sse_messages(response.iter_lines()):
            if data.strip() == "[DONE]":
                reply.done = True
                return
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                shown = data if len(data) <= 200 else data[:200] + "..."
                raise RemoteServerError(f"the server at {self.connection.base_url} sent a stream chunk that is not "
                                        f"JSON: {shown}") from None
            if event == "error" and isinstance(chunk, dict) and "error" not in chunk:
                chunk = {"error": chunk}
            yield chunk
