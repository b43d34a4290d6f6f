"""The contract every backend implements, and `load_backend` to pick one by name.

A backend turns chat messages (OpenAI shape: role, content, ...) or a raw prompt into a stream of
GenerationEvents. The CLI, the server, the agents and the TUI see nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from runtime.errors import BackendUnavailableError, MiniCPMError
from runtime.events import GenerationEvent, SamplingParams

BACKENDS = ("torch", "gguf", "openai", "auto")
KV_DTYPES = ("auto", "float32", "bfloat16")  # the torch backend's KV cache (auto: the compute dtype)


class Backend(ABC):
    name: str  # "torch", "gguf"
    model_label: str  # what the model reference resolved to, for the user
    context_length: int  # the most tokens (prompt + output) one generation may span
    notices: list[str]  # what the user must know about this load (a feature that cannot run, ...)
    chat_template: str | None = None  # jinja source; None on a remote server (it applies its own)
    stop_token_ids: set[int] = set()  # ids that end a generation (local backends)
    details: list[str]  # how it was loaded, for --verbose (dtype, dequantized weights, threads)
    # The tool-call dialect when a caller names none: set by an adapter fine-tuned on one
    # (runtime/adapter.py); None lets the chat template decide.
    default_dialect: str | None = None

    @abstractmethod
    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of text; special tokens written in it are recognised."""

    @abstractmethod
    def render_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
        """The prompt text the model's chat template makes of the messages (generation prompt added)."""

    @abstractmethod
    def generate_tokens(self, prompt: list[int], params: SamplingParams, guard=None) -> Iterator[GenerationEvent]:
        """Stream events for a prompt given as token ids.

        guard: a runtime.tool_calls.guard.ToolCallGuard that sees every token and, once the model
        begins a tool call, restricts the tokens to those that keep the call valid."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of token ids, special tokens included (the tool-call markers may be special tokens)."""

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
        """Stream the assistant's reply to messages (OpenAI shape, see runtime/messages.py).

        tools: OpenAI function tools; tool_choice: "auto", "none", "required" or
        {"type": "function", "function": {"name": ...}}; dialect: minicpm | hermes (None: the
        adapter's, else from the chat template); constrained: write tool calls under their JSON schemas. The last event
        carries the parsed tool calls. template_kwargs reach the chat template.
        Raises InvalidRequestError (bad messages or tools) and ContextLengthError before the first event.
        """
        from runtime.tool_calls.local import local_chat

        return local_chat(self, messages, params, tools=tools, tool_choice=tool_choice,
                          dialect=dialect or self.default_dialect, constrained=constrained,
                          template_kwargs=template_kwargs)

    def complete(self, prompt: str, params: SamplingParams) -> Iterator[GenerationEvent]:
        """Stream a continuation of raw text, without the chat template."""
        return self.generate_tokens(self.tokenize(prompt), params)


def check_draft_options(speculative: str, draft_model: str | None, frspec_vocab: int) -> None:
    """The draft flags fit together, before any model loads."""
    if speculative == "eagle" and not draft_model:
        raise MiniCPMError("--speculative eagle needs --draft-model DIR, an Eagle head folder (upstream's "
                           "MiniCPM4-8B-Eagle-FRSpec, or one from `minicpm train eagle`)")
    if draft_model and speculative != "eagle":
        raise MiniCPMError("--draft-model is the Eagle head of --speculative eagle; add that flag")
    if frspec_vocab and speculative != "eagle":
        raise MiniCPMError("--frspec-vocab restricts an Eagle head's draft vocabulary; add --speculative eagle")
    if frspec_vocab < 0:
        raise MiniCPMError(f"--frspec-vocab must be positive (got {frspec_vocab})")


def load_backend(
    name: str,
    model: str | None,
    *,
    dtype: str = "auto",
    quant: str = "none",
    context_length: int | None = None,
    threads: int | None = None,
    sparse: str = "auto",
    sparse_overrides: dict | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    speculative: str = "none",
    draft_max: int = 8,
    adapter: str | None = None,
    draft_model: str | None = None,
    frspec_vocab: int = 0,
    kv_dtype: str = "auto",
) -> Backend:
    """Load `model` (a model reference, see runtime/model_ref.py) on the named backend.

    sparse: InfLLM v2 attention, auto | on | off (see runtime/sparse_attention.resolve_sparse);
    sparse_overrides: sparse_config fields to replace (topk, window_size, dense_len, use_lse, ...);
    quant: none | int8 | int4, the torch backend's weight quantization (runtime/quantize.py);
    speculative: none | lookup | eagle, the torch backend's speculative decoding, checking up to
    draft_max drafted tokens per forward (runtime/speculative.py); eagle drafts with the head in
    draft_model, over FR-Spec's frspec_vocab most frequent tokens when that is set (runtime/eagle.py);
    base_url, api_key: the openai backend's server (default from MINICPM_BASE_URL / MINICPM_API_KEY);
    adapter: a LoRA adapter folder or shipped name (runtime/adapter.py), torch and gguf backends;
    kv_dtype: auto | float32 | bfloat16, the torch backend's KV cache (auto: the compute dtype).
    """
    if context_length is not None and context_length < 2:
        raise MiniCPMError(f"--ctx must be at least 2 tokens (got {context_length})")
    if threads is not None and threads < 1:
        raise MiniCPMError(f"--threads must be at least 1 (got {threads})")
    if kv_dtype not in KV_DTYPES:
        raise MiniCPMError(f"--kv-dtype must be one of {', '.join(KV_DTYPES)} (got {kv_dtype!r})")
    check_draft_options(speculative, draft_model, frspec_vocab)  # mismatched draft flags fail before any load
    if adapter is not None:  # a mistyped adapter fails before the model loads
        from runtime.adapter import resolve_adapter

        resolve_adapter(adapter)
    if name == "torch":
        from runtime.backends.torch_backend import TorchBackend

        return TorchBackend.load(model, dtype=dtype, quant=quant, context_length=context_length, threads=threads,
                                 sparse=sparse, sparse_overrides=sparse_overrides, speculative=speculative,
                                 draft_max=draft_max, adapter=adapter, draft_model=draft_model,
                                 frspec_vocab=frspec_vocab, kv_dtype=kv_dtype)
    if name == "gguf":
        from runtime.backends.gguf_backend import GGUFBackend

        backend = GGUFBackend.load(model, context_length=context_length, threads=threads, adapter=adapter)
        if sparse == "on" or any(v is not None for v in (sparse_overrides or {}).values()):
            backend.notices.append("llama.cpp has no InfLLM v2 sparse attention: the gguf backend runs "
                                   "dense attention (use --backend torch for sparse)")
        if quant != "none":
            backend.notices.append(f"--quant {quant} is the torch backend's: llama.cpp runs the GGUF's own "
                                   "quantization (use --backend torch to quantize on load)")
        if speculative != "none":
            backend.notices.append(f"--speculative {speculative} is the torch backend's: the gguf backend decodes "
                                   "token by token (use --backend torch)")
        if kv_dtype != "auto":
            backend.notices.append(f"--kv-dtype {kv_dtype} is the torch backend's: llama.cpp keeps its KV cache in "
                                   "float16")
        return backend
    if name == "openai":
        from runtime.backends.openai_backend import OpenAIBackend

        if adapter is not None:
            raise MiniCPMError("--adapter applies LoRA to a local model (torch or gguf backend); an openai server "
                               "loads its adapters itself")
        backend = OpenAIBackend.load(model, base_url=base_url, api_key=api_key, context_length=context_length)
        if quant != "none":
            backend.notices.append(f"--quant {quant} is the torch backend's: the server runs the model as it loaded it")
        if speculative != "none":
            backend.notices.append(f"--speculative {speculative} is the torch backend's: the server decodes as it was "
                                   "configured")
        if kv_dtype != "auto":
            backend.notices.append(f"--kv-dtype {kv_dtype} is the torch backend's: the server keeps its cache as it "
                                   "was configured")
        return backend
    if name == "auto":
        from runtime.backends.auto import load_auto

        return load_auto(model, dtype=dtype, quant=quant, context_length=context_length, threads=threads, sparse=sparse,
                         sparse_overrides=sparse_overrides, base_url=base_url, api_key=api_key,
                         speculative=speculative, draft_max=draft_max, adapter=adapter, draft_model=draft_model,
                         frspec_vocab=frspec_vocab, kv_dtype=kv_dtype)
    raise BackendUnavailableError(f"unknown backend '{name}' (choose one of: {', '.join(BACKENDS)})")
