"""`--backend auto`: pick the backend that suits the model, and say which and why.

- a --base-url: the `openai` backend (the model lives on that server);
- an HF checkpoint folder or hub id: `torch` (llama.cpp needs a GGUF; `minicpm convert` makes one);
- a .gguf file: `gguf`, since llama.cpp runs its quantized weights directly, where the torch
  runtime would dequantize them; unless --sparse on asks for InfLLM v2 sparse attention, which
  llama.cpp lacks, or --quant asks for the torch runtime's int8/int4 linears. (GGUF files carry no
  sparse_config, so `--sparse auto` never turns it on for one.)
"""

from __future__ import annotations

from runtime.backends.base import Backend


def choose_backend(model: str | None, *, context_length: int | None, sparse: str, base_url: str | None,
                   quant: str = "none", speculative: str = "none", kv_dtype: str = "auto") -> tuple[str, str]:
    """(backend name, the reason, for the user)."""
    if base_url:
        return "openai", f"--base-url {base_url} names a server"
    from runtime.model_ref import resolve_model

    source = resolve_model(model)
    if source.format == "hf":
        from runtime.checkpoint import load_hf_config

        config = load_hf_config(source.path)
        if config.is_minicpm and config.sparse_config is not None and sparse != "off":
            return "torch", "a MiniCPM4 checkpoint with a sparse_config: the torch runtime has InfLLM v2 sparse attention"
        return "torch", "an HF checkpoint runs on the torch runtime (llama.cpp would need `minicpm convert` first)"
    if sparse == "on":
        return "torch", "--sparse on: llama.cpp has no InfLLM v2 sparse attention"
    if quant != "none":
        return "torch", f"--quant {quant}: the torch runtime quantizes the weights on load"
    if speculative != "none":
        return "torch", f"--speculative {speculative}: speculative decoding is the torch runtime's"
    if kv_dtype != "auto":
        return "torch", f"--kv-dtype {kv_dtype}: the KV cache's dtype is the torch runtime's choice"
    return "gguf", "a .gguf file on CPU: llama.cpp runs its quantized weights as they are"


def load_auto(model: str | None, **options) -> Backend:
    from runtime.backends.base import load_backend

    name, reason = choose_backend(model, context_length=options.get("context_length"), sparse=options.get("sparse", "auto"),
                                  base_url=options.get("base_url"), quant=options.get("quant", "none"),
                                  speculative=options.get("speculative", "none"),
                                  kv_dtype=options.get("kv_dtype", "auto"))
    backend = load_backend(name, model, **options)
    backend.notices.insert(0, f"--backend auto chose {name}: {reason}")
    return backend
