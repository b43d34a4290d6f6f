"""`--backend auto` and the one interface across backends."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from runtime.backends.auto import choose_backend


def test_auto_sends_checkpoints_to_torch_and_gguf_files_to_llama_cpp(tiny_minicpm, tmp_path, embedded_path):
    assert choose_backend(str(tiny_minicpm), context_length=None, sparse="auto", base_url=None)[0] == "torch"
    assert choose_backend(str(embedded_path), context_length=None, sparse="auto", base_url=None)[0] == "gguf"
    name, why = choose_backend("default", context_length=None, sparse="on", base_url=None)
    assert name == "torch" and "sparse" in why
    assert choose_backend("default", context_length=None, sparse="auto", base_url="http://127.0.0.1:9/v1")[0] == "openai"
    name, why = choose_backend("default", context_length=None, sparse="auto", base_url=None, kv_dtype="bfloat16")
    assert name == "torch" and "--kv-dtype bfloat16" in why

    sparse_ckpt = tmp_path / "sparse"
    sparse_ckpt.mkdir()
    for f in tiny_minicpm.iterdir():
        (sparse_ckpt / f.name).write_bytes(f.read_bytes())
    config = json.loads((sparse_ckpt / "config.json").read_text())
    config["sparse_config"] = {"dense_len": 128}
    (sparse_ckpt / "config.json").write_text(json.dumps(config))
    name, why = choose_backend(str(sparse_ckpt), context_length=None, sparse="auto", base_url=None)
    assert name == "torch" and "sparse" in why


@pytest.mark.slow
def test_auto_says_what_it_chose_and_why():
    result = run_cli("generate", "--backend", "auto", "--prompt", "Hi", "--max-tokens", "4", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "minicpm: note: --backend auto chose gguf: a .gguf file" in result.stderr


@pytest.mark.slow
def test_torch_and_gguf_agree_through_chat_on_the_embedded_model(embedded_torch):
    """The same greedy reply through Backend.chat on both local backends (same weights, same template)."""
    from runtime.backends.base import load_backend
    from runtime.backends.torch_backend import TorchBackend
    from runtime.events import SamplingParams

    messages = [{"role": "user", "content": "Name three colours."}]
    params = SamplingParams(max_tokens=12, temperature=0)
    torch_text = "".join(e.text for e in TorchBackend(embedded_torch, 2048).chat(messages, params))
    gguf_text = "".join(e.text for e in load_backend("gguf", "default", context_length=2048).chat(messages, params))
    assert torch_text and gguf_text
    # Q4_1 dequantized on torch vs quantized dot products in llama.cpp: the first words agree.
    assert torch_text.split()[:3] == gguf_text.split()[:3]
