"""What the chat app does without its widgets: load the chat's model, stream a reply, count the context.

The Textual screens call these from worker threads and show what they yield; nothing here imports
Textual, so the same steps are tested without a terminal.

    ModelHost        one loaded backend at a time, reloaded when a chat asks for another model
    ChatOptions      a chat's model, backend and sampling settings, read from its stored settings
    chat_messages    the stored conversation as OpenAI-shape messages (reasoning left out)
    stream_reply     one assistant reply as ReplyDelta / ReplyProgress events, then ReplyDone
    context_usage    how many tokens the next request will take, against the context window
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.backends.base import KV_DTYPES
from runtime.errors import MiniCPMError
from runtime.events import SamplingParams

# The share of the context window past which the footer warns before the chat runs out of room.
CONTEXT_WARNING = 0.8
THINKING_CHOICES = ("auto", "on", "off")  # auto: leave the model's chat template to decide


@dataclass(frozen=True)
class ChatOptions:
    """A chat's model and sampling settings (stored as JSON in the conversation's settings)."""

    model: str = "default"
    backend: str = "auto"
    base_url: str | None = None  # the openai backend's server
    sparse: str = "auto"  # InfLLM v2 sparse attention on the torch backend: auto | on | off
    quant: str = "none"  # the torch backend's weight quantization: none | int8 | int4 (runtime/quantize.py)
    kv_dtype: str = "auto"  # the torch backend's KV cache: auto (the compute dtype) | float32 | bfloat16
    speculative: str = "none"  # the torch backend's speculative decoding: none | lookup | eagle (runtime/speculative.py)
    draft_model: str | None = None  # eagle: the Eagle head's folder (runtime/eagle.py)
    frspec_vocab: int | None = None  # eagle: draft over FR-Spec's N most frequent tokens (the head's freq_N.pt)
    adapter: str | None = None  # a LoRA adapter folder or shipped name (runtime/adapter.py)
    context_length: int | None = None  # None: the model's own
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    thinking: str = "auto"  # auto | on | off: MiniCPM4.1's enable_thinking, for hybrid-reasoning models
    tools: tuple[str, ...] = ()  # MCP servers whose tools this chat may call

    def __post_init__(self) -> None:
        problems = []
        if self.backend not in ("torch", "gguf", "openai", "auto"):
            problems.append(f"backend must be torch, gguf, openai or auto (got {self.backend!r})")
        if self.sparse not in ("auto", "on", "off"):
            problems.append(f"sparse attention must be auto, on or off (got {self.sparse!r})")
        if self.quant not in ("none", "int8", "int4"):
            problems.append(f"quant must be none, int8 or int4 (got {self.quant!r})")
        if self.kv_dtype not in KV_DTYPES:
            problems.append(f"the KV cache dtype must be {', '.join(KV_DTYPES[:-1])} or {KV_DTYPES[-1]} "
                            f"(got {self.kv_dtype!r})")
        if self.speculative not in ("none", "lookup", "eagle"):
            problems.append(f"speculative decoding must be none, lookup or eagle (got {self.speculative!r})")
        if self.speculative == "eagle" and not self.draft_model:
            problems.append("eagle decoding needs an Eagle head folder (upstream's MiniCPM4-8B-Eagle-FRSpec, or one "
                            "from `minicpm train eagle`)")
        if self.speculative != "eagle" and (self.draft_model or self.frspec_vocab):
            problems.append("an Eagle head folder and an FR-Spec vocabulary apply to eagle decoding only")
        if self.frspec_vocab is not None and self.frspec_vocab < 1:
            problems.append(f"the FR-Spec vocabulary must be at least 1 token (got {self.frspec_vocab})")
        if self.thinking not in THINKING_CHOICES:
            problems.append(f"thinking must be auto, on or off (got {self.thinking!r})")
        if self.context_length is not None and self.context_length < 16:
            problems.append(f"the context must be at least 16 tokens (got {self.context_length})")
        if not self.model.strip():
            problems.append("the model is empty ('default' is the embedded model)")
        if self.adapter is not None and self.backend == "openai":
            problems.append("a LoRA adapter applies to a local model (torch, gguf or auto backend), not a server")
        if self.backend == "openai" and not self.base_url:
            problems.append("the openai backend needs a server URL, e.g. http://127.0.0.1:8000/v1")
        try:
            self.sampling()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise MiniCPMError("; ".join(problems))

    @classmethod
    def from_settings(cls, model: str, backend: str, settings: dict[str, Any]) -> ChatOptions:
        """Options from a stored conversation; fields this version does not know are ignored."""
        known = {k: v for k, v in settings.items() if k in cls.__dataclass_fields__ and k not in ("model", "backend")}
        if "tools" in known:
            known["tools"] = tuple(known["tools"] or ())
        return cls(model=model, backend=backend, **known)

    def to_settings(self) -> dict[str, Any]:
        """The JSON-able settings stored with the conversation (model and backend have columns)."""
        data = asdict(self)
        data.pop("model"), data.pop("backend")
        data["tools"] = list(self.tools)
        return data

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed)

    def template_kwargs(self) -> dict[str, Any]:
        return {} if self.thinking == "auto" else {"enable_thinking": self.thinking == "on"}

    def load_key(self) -> tuple:
        """What decides which backend is loaded: chats that share it share the loaded model."""
        return (self.model, self.backend, self.base_url, self.sparse, self.quant, self.kv_dtype, self.speculative,
                self.draft_model, self.frspec_vocab, self.adapter, self.context_length)


class HostClosedError(MiniCPMError):
    """A model was asked for after the app began to close."""


class ModelHost:
    """Holds one loaded backend. Loading another closes the first, so switching chats between two
    models never keeps both in memory. Thread-safe: workers load and generate, the UI asks what is loaded.

    A backend is never closed under a worker that generates with it (closing llama.cpp's context
    under a decoding thread crashes the process): workers generate inside busy(), and a switch to
    another model waits until no other worker is busy. A worker that is itself busy and asks for
    another model while a second one still generates is refused instead (two such workers would
    wait for each other forever)."""

    def __init__(self, loader=None):
        from runtime.backends.base import load_backend

        self._load_backend = loader or load_backend
        self._state = threading.Condition()  # guards everything below
        self._key: tuple | None = None
        self.backend = None
        self._users = 0  # workers inside busy() now
        self._loading = False  # a worker is closing the old backend and loading the new one
        self._closed = False  # close() ran: the app is going away, nothing loads any more
        self._local = threading.local()  # .depth: how many busy() blocks this thread is in

    @contextmanager
    def busy(self):
        """Held by a worker while it generates: neither a switch to another model nor close() runs under it."""
        with self._state:
            self._users += 1
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            with self._state:
                self._users -= 1
                self._state.notify_all()

    def get(self, options: ChatOptions):
        """The backend for these options, loading it (and closing the one loaded) if needed."""
        key = options.load_key()
        mine = getattr(self._local, "depth", 0)
        with self._state:
            while True:
                if self._closed:
                    raise HostClosedError("the chat is closing: no model loads any more")
                if self.backend is not None and self._key == key and not self._loading:
                    return self.backend
                if not self._loading and self._users <= mine:
                    break
                if mine and not self._loading:
                    raise MiniCPMError(f"another task (a reply or a survey) is still generating with "
                                       f"{self._key[0] if self._key else 'the loaded model'}; "
                                       f"{options.model} can load when it finishes")
                self._state.wait()
            self._loading = True
            old, self.backend, self._key = self.backend, None, None
        backend = None
        try:
            if old is not None and hasattr(old, "close"):
                old.close()
            backend = self._load_backend(options.backend, options.model, context_length=options.context_length,
                                         sparse=options.sparse, quant=options.quant, base_url=options.base_url,
                                         speculative=options.speculative, draft_model=options.draft_model,
                                         frspec_vocab=options.frspec_vocab or 0, adapter=options.adapter,
                                         kv_dtype=options.kv_dtype)
            return backend
        finally:
            with self._state:
                self._loading = False
                if backend is not None:
                    self.backend, self._key = backend, key
                self._state.notify_all()

    def loaded(self, options: ChatOptions):
        """The backend if these options' model is the one loaded, else None (never loads)."""
        with self._state:
            return self.backend if self._key == options.load_key() else None

    def close(self, timeout: float | None = None) -> bool:
        """Close the backend once no worker generates or loads (at most `timeout` seconds of waiting;
        False when it is still in use then, and left open: the process exits without closing it)."""
        with self._state:
            self._closed = True  # a switch still waiting for a reply must not load after this
            if not self._state.wait_for(lambda: self._users == 0 and not self._loading, timeout):
                return False
            if self.backend is not None and hasattr(self.backend, "close"):
                self.backend.close()
            self.backend, self._key = None, None
        return True


def describe_backend(backend) -> dict[str, str]:
    """What the header shows about a loaded backend: its name, the model, and the attention it runs."""
    from runtime.quantize import Int4Linear, Int8Linear

    attention = "dense attention"
    model = getattr(getattr(backend, "loaded", None), "model", None)
    sparse = getattr(model, "sparse", None)
    if sparse is not None:
        attention = f"InfLLM v2 sparse attention (top {sparse.topk} blocks, from {sparse.dense_len:,} tokens)"
    elif backend.name == "openai":
        attention = "attention on the server"
    if model is not None:
        kinds = {type(m) for m in model.modules()}
        if Int4Linear in kinds or Int8Linear in kinds:
            attention += " · int4 weights" if Int4Linear in kinds else " · int8 weights"
        if getattr(model, "kv_dtype", None) is not None:
            attention += f" · {str(model.kv_dtype).removeprefix('torch.')} KV cache"
    if getattr(backend, "speculative", "none") != "none":
        attention += f" · {backend.speculative} drafts"
    return {"backend": backend.name, "model": backend.model_label, "attention": attention,
            "context": f"{backend.context_length:,} tokens"}


def chat_messages(system_prompt: str, messages: list) -> list[dict[str, Any]]:
    """The stored conversation (tui/store.py StoredMessage rows) as chat messages for a backend.

    Reasoning is never sent back: a model's <think> block cost tokens once and is not part of what
    it said. Cancelled and failed replies are left out, so a cut-off answer does not become context."""
    out: list[dict[str, Any]] = []
    answered = {m.tool_call_id for m in messages if m.role == "tool"}
    if system_prompt.strip():
        out.append({"role": "system", "content": system_prompt})
    for m in messages:
        if m.role == "assistant":
            # A call that never got its result (the app closed while it waited for approval) is left
            # out: a template cannot show a call without its answer.
            calls = [c for c in m.tool_calls or [] if c["id"] in answered]
            if m.status != "complete" and not calls:
                continue
            if not m.content and not calls:
                continue
            entry: dict[str, Any] = {"role": "assistant", "content": m.content}
            if calls:
                entry["tool_calls"] = [{"id": c["id"], "type": "function",
                                        "function": {"name": c["name"], "arguments": c.get("args", {})}}
                                       for c in calls]
            out.append(entry)
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "name": m.name, "content": m.content})
        elif m.role == "user":
            out.append({"role": "user", "content": m.content})
    return out


@dataclass(frozen=True)
class ContextUsage:
    tokens: int | None  # the prompt the next request sends (None: the backend cannot count, e.g. a server)
    limit: int
    reply_budget: int = 0  # the chat's max_tokens: what the reply may add to the prompt

    @property
    def fraction(self) -> float:
        return (self.tokens or 0) / self.limit if self.limit else 0.0

    @property
    def warning(self) -> str | None:
        if self.tokens is None:
            return None
        if self.tokens >= self.limit:
            return (f"the conversation ({self.tokens:,} tokens) no longer fits the {self.limit:,}-token context: "
                    "start a new chat, delete earlier messages, or load the model with a larger context")
        room = self.limit - self.tokens
        if self.fraction >= CONTEXT_WARNING or room < self.reply_budget:
            cut = f" of the {self.reply_budget:,} it may take" if room < self.reply_budget else ""
            return (f"the context is {self.fraction:.0%} full ({self.tokens:,} of {self.limit:,} tokens): "
                    f"the reply has room for {room:,} tokens{cut}; a new chat starts fresh")
        return None


def context_usage(backend, messages: list[dict[str, Any]], options: ChatOptions) -> ContextUsage:
    """Tokens the prompt of these messages takes on this backend, with the reply's budget in view."""
    try:
        text = backend.render_chat(messages, **options.template_kwargs())
        tokens = len(backend.tokenize(text, add_bos=False))
    except MiniCPMError:  # a remote server renders its own template; it reports usage after the reply
        tokens = None
    return ContextUsage(tokens, backend.context_length, options.max_tokens)


@dataclass(frozen=True)
class ReplyDelta:
    text: str
    thought: bool = False  # inside <think>…</think> (or MiniCPM's <|thought_start|>…)
    prompt_tokens: int = 0  # the request's prompt, and the reply's tokens so far: the live usage line
    completion_tokens: int = 0


@dataclass(frozen=True)
class ReplyProgress:
    processed: int  # prompt tokens prefilled so far
    total: int


@dataclass(frozen=True)
class ReplyDone:
    content: str  # the answer, reasoning removed
    thinking: str
    status: str  # complete | cancelled | error
    finish_reason: str | None
    usage: dict[str, Any] = field(default_factory=dict)  # prompt_tokens, completion_tokens, seconds, tokens/s
    error: str | None = None


def stream_reply(backend, messages: list[dict[str, Any]], options: ChatOptions,
                 cancel: threading.Event | None = None) -> Iterator[ReplyDelta | ReplyProgress | ReplyDone]:
    """One assistant reply. Ends with exactly one ReplyDone, also when cancelled (status "cancelled",
    the text so far kept) or when the backend fails (status "error", its message in `error`)."""
    from agents.tool_agent.events import ThoughtSplitter

    splitter = ThoughtSplitter()
    answer, thinking = [], []
    last = None
    started = time.perf_counter()

    def done(status: str, finish: str | None, error: str | None = None) -> ReplyDone:
        usage = {"context_length": backend.context_length, "seconds": round(time.perf_counter() - started, 3)}
        if last is not None:
            usage.update(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                         decode_tokens_per_second=round(last.decode_tokens_per_second, 2))
        return ReplyDone("".join(answer).strip(), "".join(thinking).strip(), status, finish, usage, error)

    def feed(text: str) -> Iterator[ReplyDelta]:
        for delta in splitter.feed(text):
            (thinking if delta.thought else answer).append(delta.text)
            yield ReplyDelta(delta.text, delta.thought, last.prompt_tokens, last.completion_tokens)

    events = None
    try:
        events = backend.chat(messages, options.sampling(), **options.template_kwargs())
        for event in events:
            last = event
            if cancel is not None and cancel.is_set():
                yield done("cancelled", None)
                return
            if event.is_progress:
                yield ReplyProgress(event.prompt_processed, event.prompt_tokens)
            elif event.text:
                yield from feed(event.text)
            if event.finish_reason is not None:
                tail, splitter.pending = splitter.pending, ""  # a marker's first characters held back at the end
                if tail:
                    (thinking if splitter.inside else answer).append(tail)
                    yield ReplyDelta(tail, splitter.inside is not None, event.prompt_tokens, event.completion_tokens)
                yield done("complete", event.finish_reason)
                return
        yield done("cancelled" if cancel is not None and cancel.is_set() else "complete", None)
    except MiniCPMError as exc:
        yield done("error", None, str(exc))
    finally:
        if events is not None and hasattr(events, "close"):
            events.close()  # stops a local backend's generation loop where it is
