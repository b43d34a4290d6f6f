"""The FastAPI application of `minicpm serve`: routes, API key, errors, and one request's life.

A request's life: its body is validated (pydantic, then check_messages / check_tools, then the
sampling values), it takes a slot or waits in line for one (runtime/server/slots.py), and its
generation starts in a worker thread. The server waits for the first event before answering, so
anything the backend refuses (a prompt that does not fit, a template error) is still a 4xx JSON
error and not a broken stream. Then the events become an OpenAI answer or an SSE stream
(runtime/server/wire.py). A client that disconnects, while queued or while generating, cancels the
generation; the slot is free again once the backend's loop has stopped.

`create_app` takes backends that are already loaded, so tests and benchmarks build the app in
process and the command line (tui/commands/serve.py) only adds argument parsing and uvicorn.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import MiniCPMError
from runtime.events import GenerationEvent
from runtime.server.errors import APIError, error_body, from_exception, validation_error
from runtime.server.requests import (
    ChatRequest,
    CompletionRequest,
    chat_params,
    completion_params,
    completion_prompt,
)
from runtime.server.slots import Generation, QueueFullError, Scored, SlotPool
from runtime.server.wire import ChatReply, CompletionReply, Reply

log = logging.getLogger("uvicorn.error")  # uvicorn prints it next to its own lines
CLIENT_CLOSED = 499  # nginx's status for "the client went away first"; nobody reads it


@dataclass(frozen=True)
class ServedModel:
    """The model id that /v1/models lists, and the other names a request may use for it."""

    id: str
    aliases: frozenset[str]

    def check(self, name: str) -> None:
        if name != self.id and name not in self.aliases:
            raise APIError(404, f"model '{name}' is not served here; this server serves '{self.id}' "
                                "(GET /v1/models lists it)", param="model", code="model_not_found")

    def card(self, created: int, context_length: int) -> dict[str, Any]:
        # max_model_len as vLLM reports it, so clients (our openai backend among them) learn the context.
        return {"id": self.id, "object": "model", "created": created, "owned_by": "minicpm",
                "max_model_len": context_length}


def create_app(backends: Sequence[Any], *, model_id: str | None = None, aliases: Sequence[str] = (),
               api_key: str | None = None, queue_size: int = 16, tool_dialect: str | None = None) -> FastAPI:
    """An OpenAI-compatible app over loaded backends: one slot per backend, then a queue of queue_size.

    model_id: the id clients send as "model" (default: the backend's model label); aliases: other
    accepted names; api_key: when set, /v1/* needs "Authorization: Bearer <api_key>";
    tool_dialect: minicpm | hermes for local backends (None: from the model's chat template).
    """
    if not backends:
        raise ValueError("create_app needs at least one loaded backend")
    if queue_size < 0:
        raise ValueError(f"queue_size must be >= 0 (got {queue_size})")
    first = backends[0]
    served = ServedModel(model_id or first.model_label, frozenset({*aliases, first.model_label}))
    server = Server(SlotPool(list(backends), queue_size), served, first.context_length, tool_dialect)

    app = FastAPI(title="minicpm serve", description="OpenAI-compatible API over the MiniCPM4 local suite",
                  docs_url=None, redoc_url=None)
    app.state.server = server
    add_error_handlers(app)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return server.health(first)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [served.card(server.started, server.context_length)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        served.check(name)
        return served.card(server.started, server.context_length)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        return await server.chat(body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await server.complete(body, request)

    return app


class Server:
    """The state behind the routes: the slot pool, the served model, the context window."""

    def __init__(self, pool: SlotPool, served: ServedModel, context_length: int, tool_dialect: str | None = None):
        self.pool = pool
        self.tool_dialect = tool_dialect
        self.served = served
        self.context_length = context_length
        self.started = int(time.time())

    def health(self, backend: Any) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.served.id,
            "backend": backend.name,
            "context_length": self.context_length,
            "slots": {"total": len(self.pool.backends), "busy": self.pool.busy},
            "queue": {"depth": self.pool.queue_depth, "limit": self.pool.queue_size},
            "stats": asdict(self.pool.stats),
        }

    async def chat(self, body: ChatRequest, request: Request) -> Response:
        from runtime.chat_template import check_template_kwargs
        from runtime.messages import check_messages
        from runtime.tool_calls.tools import check_tool_choice, check_tools

        self.served.check(body.model)
        params, max_tokens = chat_params(body, self.context_length)
        messages = check_messages(body.messages)
        check_tool_choice(body.tool_choice, check_tools(body.tools))
        template_kwargs = body.chat_template_kwargs or {}
        check_template_kwargs(template_kwargs)
        tool_choice = body.tool_choice if body.tool_choice is not None else "auto"

        def start(backend: Any) -> Iterator[GenerationEvent]:
            dialect = self.tool_dialect if backend.name != "openai" else None
            return backend.chat(messages, params, tools=body.tools or None, tool_choice=tool_choice, dialect=dialect,
                                **template_kwargs)

        reply = ChatReply(self.served.id, stream=bool(body.stream), logprobs=params.logprobs,
                          include_usage=body.include_usage)
        return await self.respond(request, start, reply, max_tokens)

    async def complete(self, body: CompletionRequest, request: Request) -> Response:
        self.served.check(body.model)
        params, max_tokens = completion_params(body, self.context_length)
        prompt = completion_prompt(body)
        reply = CompletionReply(self.served.id, stream=bool(body.stream), logprobs=params.logprobs,
                                include_usage=body.include_usage, prompt_chars=len(prompt))
        return await self.respond(request, lambda backend: backend.complete(prompt, params), reply, max_tokens)

    async def respond(self, request: Request, start: Callable[[Any], Iterator[GenerationEvent]], reply: Reply,
                      max_tokens: int | None) -> Response:
        """Queue, generate, answer: the part chat and completions share."""
        watcher = DisconnectWatcher(request)
        try:
            slot = await self.take_slot(watcher)
            if slot is None:
                return Response(status_code=CLIENT_CLOSED)
            backend, headers = slot
            generation = Generation(partial(start, backend), on_finish=partial(self.pool.release, backend),
                                    stats=self.pool.stats, token_text=token_decoder(backend) if reply.logprobs else None)
            watcher.on_disconnect(generation.cancel)
            try:
                # Bad input surfaces here, before any byte of the answer: still a clean 4xx.
                first = await generation.next()
                if first is None:
                    return Response(status_code=CLIENT_CLOSED)
                self.check_room(first.event, max_tokens)
            except BaseException:
                generation.cancel(refused=True)  # its thread stops and gives the slot back
                raise
            if reply.stream:
                watcher.stop()  # from here on Starlette's StreamingResponse watches the connection
                return StreamingResponse(stream_events(generation, first, reply), media_type="text/event-stream",
                                         headers={**headers, "Cache-Control": "no-cache"})
            try:
                body = await collect_events(generation, first, reply)
            finally:
                generation.cancel()
            if body is None:
                return Response(status_code=CLIENT_CLOSED)
            return JSONResponse(body, headers=headers)
        finally:
            watcher.stop()

    async def take_slot(self, watcher: DisconnectWatcher) -> tuple[Any, dict[str, str]] | None:
        """A backend for this request, waiting in line if need be; None if the client left meanwhile.

        The headers say where in line the request started (0: a slot was free) and how long it waited."""
        pool = self.pool
        position = pool.queue_depth + 1 if pool.busy == len(pool.backends) else 0
        t0 = time.monotonic()
        acquire = asyncio.ensure_future(pool.acquire())
        gone = asyncio.ensure_future(watcher.gone.wait())
        try:
            await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            acquire.cancel()  # acquire() passes on a backend it was handed at the same instant
            raise
        finally:
            gone.cancel()
        if not acquire.done():
            acquire.cancel()
            await asyncio.wait({acquire})
            return None
        try:
            backend = acquire.result()
        except QueueFullError:
            raise APIError(503, f"the server is busy: all {len(pool.backends)} slot(s) are generating and the "
                                f"queue is full ({pool.queue_size} waiting); retry shortly",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        if watcher.gone.is_set():
            pool.release(backend)
            return None
        waited = time.monotonic() - t0
        if position:
            log.info("request waited %.2f s in the queue (it came in at place %d)", waited, position)
        return backend, {"X-Queue-Position": str(position), "X-Queue-Seconds": f"{waited:.3f}"}

    def check_room(self, event: GenerationEvent, max_tokens: int | None) -> None:
        """Refuse, as OpenAI does, a max_tokens that does not fit after the prompt (never truncate it)."""
        if max_tokens is None or not event.prompt_tokens:
            return
        total = event.prompt_tokens + max_tokens
        if total > self.context_length:
            raise APIError(400, f"this model's context holds {self.context_length} tokens, but you asked for {total} "
                                f"({event.prompt_tokens} in the prompt, {max_tokens} in the completion); lower "
                                f"max_tokens to at most {self.context_length - event.prompt_tokens} or shorten the prompt",
                           param="max_tokens", code="context_length_exceeded")


async def collect_events(generation: Generation, first: Scored, reply: Reply) -> dict[str, Any] | None:
    """The whole answer of a non-streaming request; None if it was cancelled (the client left)."""
    scored: Scored | None = first
    while scored is not None:
        reply.feed(scored)
        scored = await generation.next()  # on to "end": the slot is free before the client hears back
    return reply.completion() if reply.last is not None else None


async def stream_events(generation: Generation, first: Scored, reply: Reply):
    """Server-sent events in OpenAI's shape, ending with `data: [DONE]`."""
    try:
        if isinstance(reply, ChatReply):
            yield sse(reply.first_chunk())
        scored: Scored | None = first
        while scored is not None:
            event = scored.event
            if event.is_progress:  # an SSE comment: clients ignore it, but it keeps proxies from timing out
                yield f": prefill {event.prompt_processed}/{event.prompt_tokens}\n\n"
            for chunk in reply.feed(scored):
                yield sse(chunk)
            scored = await generation.next()
        if reply.last is not None:
            usage = reply.usage_chunk()
            if usage is not None:
                yield sse(usage)
            yield "data: [DONE]\n\n"
    except Exception as exc:  # the 200 is out already: the error can only travel in the stream
        error = from_exception(exc)
        if error.status >= 500:
            log.exception("generation failed")
        yield sse(error.body())
    finally:
        generation.cancel()  # a client that left mid-stream lands here (CancelledError): stop generating


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def token_decoder(backend: Any) -> Callable[[int], str] | None:
    """Token id -> text for logprobs; None where the backend has no tokenizer (a remote server)."""
    decode = getattr(backend, "decode", None)
    if decode is None or backend.name == "openai":
        return None
    return lambda token: decode([token])


class DisconnectWatcher:
    """Notices when the client of a request closes its connection, while the request waits or runs."""

    def __init__(self, request: Request):
        self.gone = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._task = asyncio.ensure_future(self._watch(request.receive))

    async def _watch(self, receive) -> None:
        # The body has been read already, so the next message the server sends is the disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        for callback in self._callbacks:
            callback()

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        if self.gone.is_set():
            callback()
        else:
            self._callbacks.append(callback)

    def stop(self) -> None:
        self._task.cancel()


class APIKeyMiddleware:
    """Every /v1 route needs "Authorization: Bearer <key>"; /health stays open for probes.

    Plain ASGI, so the key is checked before the body is read or parsed."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode("utf-8")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            problem = self.problem(dict(scope["headers"]).get(b"authorization", b""))
            if problem:
                error = APIError(401, problem, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, header: bytes) -> str | None:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "missing API key: send the header 'Authorization: Bearer <key>' with the key the server was started with"
        if not hmac.compare_digest(token.strip(), self.key):  # constant time: no guessing by timing
            return "invalid API key"
        return None


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; FastAPI's 422 for a malformed body becomes a 400."""

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return validation_error(exc).response()

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(MiniCPMError)
    async def on_user_error(request: Request, exc: MiniCPMError) -> Response:
        return from_exception(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no route {request.url.path}; this server has /v1/models, /v1/chat/completions, "
                        "/v1/completions and /health",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> Response:
        log.error("request failed", exc_info=exc)
        return from_exception(exc).response()
