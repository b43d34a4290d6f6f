"""The `torch` backend: this project's runtime (runtime/model.py) behind the generation interface."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.backends.base import Backend
from runtime.errors import MiniCPMError
from runtime.events import GenerationEvent, SamplingParams
from runtime.loading import LoadedModel, load_torch_model


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, loaded: LoadedModel, context_length: int | None = None, speculative: str = "none",
                 draft_max: int = 8, eagle=None):
        from runtime.speculative import SPECULATIVE_MODES

        if speculative not in SPECULATIVE_MODES:
            raise MiniCPMError(f"--speculative must be one of {', '.join(SPECULATIVE_MODES)} (got {speculative!r})")
        if draft_max < 1:
            raise MiniCPMError(f"--draft-max must be at least 1 (got {draft_max})")
        if (speculative == "eagle") != (eagle is not None):
            raise MiniCPMError("--speculative eagle needs an Eagle head (--draft-model DIR), and only it takes one")
        self.speculative, self.draft_max, self.eagle = speculative, draft_max, eagle
        self.loaded = loaded
        self.model_label = loaded.source.label
        self.notices = list(loaded.notices)
        self.details = list(loaded.details)
        trained = loaded.config.max_position_embeddings
        if context_length is not None and context_length > trained:
            self.notices.append(
                f"--ctx {context_length} is beyond the {trained} tokens this model was trained for; "
                "expect quality to fall past that point"
            )
        self.context_length = context_length or trained
        self.chat_template = loaded.tokenizer.chat_template
        self.stop_token_ids = set(loaded.tokenizer.stop_token_ids)

    @classmethod
    def load(cls, model: str | None, *, dtype: str = "auto", quant: str = "none", context_length=None, threads=None,
             sparse: str = "auto", sparse_overrides: dict | None = None, speculative: str = "none",
             draft_max: int = 8, adapter: str | None = None, draft_model: str | None = None,
             frspec_vocab: int = 0, kv_dtype: str = "auto") -> TorchBackend:
        import torch

        from runtime.adapter import adapter_dialect, adapter_name
        from runtime.backends.base import KV_DTYPES, check_draft_options
        from runtime.sparse_attention import describe, resolve_sparse

        check_draft_options(speculative, draft_model, frspec_vocab)
        if kv_dtype not in KV_DTYPES:
            raise MiniCPMError(f"--kv-dtype must be one of {', '.join(KV_DTYPES)} (got {kv_dtype!r})")
        if threads:
            torch.set_num_threads(threads)
        loaded = load_torch_model(model, dtype=dtype, quant=quant, adapter=adapter)
        cache_dtype = None if kv_dtype == "auto" else getattr(torch, kv_dtype)  # KV_DTYPES name torch dtypes
        if cache_dtype is not None and cache_dtype != loaded.model.dtype:
            loaded.model.kv_dtype = cache_dtype
            loaded.details.append(f"KV cache in {kv_dtype} (compute in {str(loaded.model.dtype).removeprefix('torch.')}; "
                                  "attention runs in the cache's dtype)")
        settings, notes = resolve_sparse(sparse, loaded.config, sparse_overrides)
        loaded.model.sparse = settings
        loaded.notices.extend(notes)
        loaded.details.append(describe(settings) if settings else "dense attention")
        if settings is not None:
            report_sparse_path()
        eagle = None
        if speculative == "eagle":
            from runtime.eagle import load_eagle_draft

            eagle = load_eagle_draft(draft_model, loaded.model, set(loaded.tokenizer.stop_token_ids), frspec_vocab,
                                     quant)
        if speculative != "none":
            loaded.details.append(f"speculative decoding: {speculative}{f' ({eagle.label})' if eagle else ''}, "
                                  f"up to {draft_max} draft tokens per forward")
        backend = cls(loaded, context_length, speculative, draft_max, eagle)
        if adapter is not None:
            backend.model_label += f" + LoRA {adapter_name(adapter)}"
            backend.default_dialect = adapter_dialect(adapter)
        return backend

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.loaded.tokenizer.encode(text, add_bos=None if add_bos else False)

    def render_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
        return self.loaded.tokenizer.render_chat(messages, **template_kwargs)

    def decode(self, ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(ids)

    def generate_tokens(self, prompt: list[int], params: SamplingParams, guard=None) -> Iterator[GenerationEvent]:
        from runtime.generate import stream_generate

        return stream_generate(self.loaded.model, self.loaded.tokenizer, prompt, params, self.context_length,
                               guard=guard, speculative=self.speculative, draft_max=self.draft_max,
                               eagle=self.eagle)


def report_sparse_path() -> None:
    """Say, once, why sparse attention runs on the CPU path rather than the InfLLM v2 CUDA kernels:
    this backend keeps the model on the CPU (the kernels run for a model placed on a GPU, as the
    benchmarks and the Python API do)."""
    import torch

    from runtime import cuda_kernel
    from runtime.notices import notify_once

    if torch.cuda.is_available():
        notify_once("a GPU is present, but the torch backend runs the model on the CPU (the command line has no "
                    "--device yet), so InfLLM v2 runs on its CPU path, not the CUDA kernels")
    else:
        cuda_kernel.library()  # says why the kernels cannot run here, and that the CPU path runs
