"""The `gguf` backend: any GGUF through llama-cpp-python, behind the generation interface.

A thin adapter: it renders the chat template and assembles events with the same code as the torch
backend (runtime/chat_template.py, runtime/streaming.py) and lets llama.cpp do the forward passes
and the sampling. The KV cache is kept between calls, so the next turn of a chat prefills only
what is new. Torch is imported only to write a constrained tool call (runtime/tool_calls/guard.py),
whose token choice is the torch backend's own code.
Differences from the torch backend: llama-cpp-python applies the repetition penalty over the last
64 generated tokens only (the torch backend also counts the prompt).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

from runtime.backends.base import Backend
from runtime.chat_template import render_chat
from runtime.errors import ModelLoadError, UnsupportedModelError
from runtime.events import MAX_SEED, GenerationEvent, SamplingParams
from runtime.model_ref import resolve_model
from runtime.streaming import Step, events_from_steps, token_budget

# Without --ctx, the model's training context up to this: llama.cpp allocates the whole KV cache
# up front (4 GB for an 8B model at 128K), so longer contexts are asked for explicitly.
DEFAULT_MAX_CONTEXT = 32768


class GGUFBackend(Backend):
    name = "gguf"

    def __init__(self, llm, model_label: str):
        import llama_cpp

        self.llm = llm
        self.model_label = model_label
        self.notices: list[str] = []
        self.details = [f"llama.cpp context of {len(llm.input_ids)} tokens, {llm.n_threads} threads"]
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        # llama.cpp pads its context to a multiple of 256, but llama-cpp-python's token buffer has
        # exactly the size asked for: that is the real limit.
        self.context_length = len(llm.input_ids)
        self.chat_template = llm.metadata.get("tokenizer.chat_template")
        # llama.cpp's own end-of-generation set (EOS, end of turn, and the like, found by name).
        self.stop_ids = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(self.vocab, t)}
        self.stop_token_ids = self.stop_ids
        self.bos_text = self._piece(llm.token_bos())
        self.eos_text = self._piece(llm.token_eos())

    @classmethod
    def load(cls, model: str | None, *, context_length: int | None = None, threads: int | None = None,
             adapter: str | None = None) -> GGUFBackend:
        source = resolve_model(model)
        if source.format != "gguf":
            raise UnsupportedModelError(
                f"the gguf backend runs .gguf files and {source.label} is an HF checkpoint; convert it with "
                "`minicpm convert DIR OUT.gguf` or use --backend torch"
            )
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelLoadError(f"llama-cpp-python is not installed ({exc}); run ./setup.sh") from None
        if context_length is None or adapter is not None:
            from runtime.gguf_model import GGUFModelFile  # imports torch: only when needed

            gguf_file = GGUFModelFile(source.path)
        if context_length is None:
            trained = gguf_file.get("context_length") or DEFAULT_MAX_CONTEXT
            context_length = min(int(trained), DEFAULT_MAX_CONTEXT)
        lora_path = None
        if adapter is not None:  # llama.cpp takes LoRA as a GGUF adapter file, applied on the quantized weights
            from runtime.adapter import gguf_adapter_file, load_adapter

            config = gguf_file.config()
            lora_path = str(gguf_adapter_file(load_adapter(adapter, config), config, gguf_file.architecture))
        threads = threads or os.cpu_count()
        try:
            llm = Llama(
                model_path=str(source.path),
                n_ctx=context_length,
                n_threads=threads,
                n_threads_batch=threads,
                lora_path=lora_path,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"llama.cpp cannot load {source.path} ({exc}); the file is corrupt or its architecture is "
                "unknown to this llama.cpp build"
            ) from None
        if adapter is not None:
            from runtime.adapter import adapter_dialect, adapter_name

            backend = cls(llm, f"{source.label} + LoRA {adapter_name(adapter)}")
            backend.default_dialect = adapter_dialect(adapter)
            return backend
        return cls(llm, source.label)

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def decode(self, ids: list[int]) -> str:
        """llama.cpp's detokenizer on the whole list, special tokens rendered (as the torch tokenizer does:
        tool-call markers and <think> may be special tokens).

        (llama-cpp-python's Llama.detokenize uses a 32-byte buffer per token and returns nothing for
        longer pieces, such as SmolLM2's runs of 80 '#'.)"""
        import ctypes

        import llama_cpp

        if not ids:
            return ""
        tokens = (llama_cpp.llama_token * len(ids))(*ids)
        size = 8 * len(ids) + 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, tokens, len(ids), buf, size, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n  # too small: llama.cpp says how much it needs

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        bos = self.llm.token_bos()
        if len(ids) > 1 and ids[0] == ids[1] == bos:  # the template wrote BOS itself
            ids = ids[1:]
        return ids

    def render_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
        return render_chat(self.chat_template, messages, bos_token=self.bos_text, eos_token=self.eos_text, **template_kwargs)

    def generate_tokens(self, prompt: list[int], params: SamplingParams, guard=None) -> Iterator[GenerationEvent]:
        budget = token_budget(len(prompt), params.max_tokens, self.context_length)
        stop_ids = self.stop_ids | set(params.stop_token_ids)
        steps = self._steps(prompt, params, budget, stop_ids, guard)
        return events_from_steps(steps, self.decode, prompt, params, stop_ids)

    def _reuse_cached_prefix(self, prompt: list[int]) -> int:
        """Keep the KV cache of the longest prefix the last generation shares with prompt.

        The next turn of a chat starts with the whole previous conversation, so only the new
        messages are prefilled. At least the prompt's last token is evaluated again: its logits
        are what the first sample is drawn from.
        """
        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens]
        limit = min(len(cached), len(prompt) - 1)
        shared = 0
        while shared < limit and cached[shared] == prompt[shared]:
            shared += 1
        if shared == 0 or not llm._ctx.kv_cache_seq_rm(-1, shared, -1):
            llm.reset()
            return 0
        llm.n_tokens = shared
        return shared

    def _logprobs(self, token: int, top_n: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        """log p(token) and the top_n alternatives from the logits the token was drawn from."""
        import numpy as np
        from llama_cpp import llama_get_logits_ith

        n_vocab = self.llm.n_vocab()
        logits = np.ctypeslib.as_array(llama_get_logits_ith(self.llm.ctx, -1), shape=(n_vocab,)).astype(np.float64)
        logprobs = logits - logits.max()
        logprobs -= np.log(np.exp(logprobs).sum())
        order = np.argsort(-logprobs)[:top_n]
        return float(logprobs[token]), tuple((int(t), float(logprobs[t])) for t in order)

    def _constrained_token(self, params: SamplingParams, history: list[int], generator, guard) -> int:
        """A token the guard allows, drawn in torch from llama.cpp's logits (runtime/sampling.py)."""
        import numpy as np
        import torch
        from llama_cpp import llama_get_logits_ith

        from runtime.sampling import sample_guarded_token

        raw = np.ctypeslib.as_array(llama_get_logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),))
        logits = torch.from_numpy(raw.copy())  # [V] float32; the buffer changes at the next eval
        # One torch thread: a few ops on one vector gain nothing from more, and torch's OpenMP
        # workers spinning beside llama.cpp's own threads slow its next decode many times over.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            token = sample_guarded_token(logits, params, history, generator, guard)
        finally:
            torch.set_num_threads(threads)
        return token

    def _steps(self, prompt: list[int], params: SamplingParams, budget: int, stop_ids: set[int], guard) -> Iterator[Step]:
        llm = self.llm
        reused = self._reuse_cached_prefix(prompt)
        if reused:
            yield Step(prompt_processed=reused)
        for start in range(reused, len(prompt), llm.n_batch):  # prefill in batches, reporting progress
            llm.eval(prompt[start : start + llm.n_batch])
            yield Step(prompt_processed=min(start + llm.n_batch, len(prompt)))
        seed = params.seed if params.seed is not None else random.randrange(MAX_SEED)
        llm.set_seed(seed)
        generator = None
        # One sampler chain for the whole generation (what Llama.generate does): a chain made per
        # token would draw its random numbers from the same seed every step.
        llm._sampler = llm._init_sampler(temp=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                         min_p=params.min_p, repeat_penalty=params.repetition_penalty)
        history = list(prompt)
        try:
            for i in range(budget):
                token = None
                if guard is None or not guard.constraining:
                    token = int(llm.sample(idx=None))
                if guard is not None and (token is None or not guard.allows(token)):
                    # Inside a call block, or a draw that would open one already invalid.
                    if generator is None:
                        import torch

                        generator = torch.Generator().manual_seed(seed)
                    token = self._constrained_token(params, history, generator, guard)
                    llm._sampler.accept(token)  # the chain's repetition history sees it too
                logprob, top = None, ()
                if params.logprobs or params.top_logprobs:
                    # The logits the token was drawn from are still in the context until the next eval.
                    logprob, top = self._logprobs(token, params.top_logprobs)
                if guard is not None:
                    guard.accept(token)
                yield Step(prompt_processed=len(prompt), token=token, logprob=logprob, top_logprobs=top)
                if token in stop_ids or i == budget - 1:
                    return
                history.append(token)
                llm.eval([token])
        finally:
            llm._sampler = None
