"""Tokenizers rebuilt from GGUF vocabularies give llama.cpp's ids; chat templates; streaming text."""

import pytest

from runtime.chat_template import ChatTemplateError, render_chat
from runtime.gguf_model import GGUFModelFile
from runtime.streaming import StreamingDetokenizer
from runtime.tokenizer import Tokenizer

SAMPLES = [
    "Hello world! It's 2026-11-22; numbers 12345 and 3.14159.",
    "café résumé naïve — ünïcödé 日本語の文章 🙂🚀 \u00a0nbsp",
    "   leading spaces, trailing   \n\n\tindented\tcode(x) -> {'a': [1, 2]}\r\n",
    "don't won't I'll we've they're SHE'S",
    "<|im_start|>user\nWhat's up?<|im_end|>\n<|im_start|>assistant\n",
    "",
]


def llama_vocab(path):
    from llama_cpp import Llama

    return Llama(str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def embedded_tok(embedded_path):
    gguf_file = GGUFModelFile(embedded_path)
    return Tokenizer.from_gguf(gguf_file.metadata, embedded_path.name, [2])


@pytest.mark.parametrize("text", SAMPLES)
def test_gpt2_vocab_from_gguf_matches_llama_cpp(embedded_path, embedded_tok, text):
    expected = llama_vocab(embedded_path).tokenize(text.encode(), add_bos=False, special=True)
    assert embedded_tok.encode(text) == expected


@pytest.mark.parametrize("text", SAMPLES)
def test_sentencepiece_vocab_from_gguf_matches_llama_cpp(tiny_gguf, text):
    gguf_file = GGUFModelFile(tiny_gguf)
    tok = Tokenizer.from_gguf(gguf_file.metadata, tiny_gguf.name, [2])
    expected = llama_vocab(tiny_gguf).tokenize(text.encode(), add_bos=True, special=True)
    assert tok.encode(text) == expected
    assert tok.add_bos and tok.encode(text)[0] == 1


def test_hf_tokenizer_and_its_gguf_agree_on_text(tiny_minicpm, tiny_gguf, english_text):
    hf = Tokenizer.from_hf_folder(tiny_minicpm, [2])
    gguf_file = GGUFModelFile(tiny_gguf)
    rebuilt = Tokenizer.from_gguf(gguf_file.metadata, tiny_gguf.name, [2])
    assert hf.encode(english_text) == rebuilt.encode(english_text)
    assert hf.encode(english_text)[0] == hf.bos_token_id == 1  # add_bos_token from tokenizer_config.json


def test_special_tokens_in_text_are_single_tokens(embedded_tok):
    ids = embedded_tok.encode("<|im_start|>user")
    assert ids[0] == 1 and embedded_tok.token_text(ids[0]) == "<|im_start|>"


@pytest.mark.parametrize("text", SAMPLES[:4])
def test_streaming_text_is_the_continuation_of_the_prompt(embedded_tok, tiny_gguf, text):
    gguf_file = GGUFModelFile(tiny_gguf)
    spm = Tokenizer.from_gguf(gguf_file.metadata, tiny_gguf.name, [2])  # byte fallback: emoji = 4 tokens
    for tok in (embedded_tok, spm):
        prompt = tok.encode("Prefix:", add_bos=False)
        ids = tok.encode(text, add_bos=False)
        stream = StreamingDetokenizer(tok.decode, context_ids=prompt)
        pieces = [stream.add(i) for i in ids] + [stream.flush()]
        # A SentencePiece word's leading space is real text after a prompt, so compare continuations.
        assert "".join(pieces) == tok.decode(prompt + ids)[len(tok.decode(prompt)) :]
        assert not any("\ufffd" in p for p in pieces)  # never half a character


def test_chatml_is_the_fallback_template():
    text = render_chat(None, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_switches_pass_through():
    template = "{% if enable_thinking is defined and not enable_thinking %}<no-think>{% endif %}{{ messages[0].content }}"
    assert render_chat(template, [{"role": "user", "content": "q"}], enable_thinking=False) == "<no-think>q"
    assert render_chat(template, [{"role": "user", "content": "q"}]) == "q"


def test_template_errors_are_reported_not_raised_raw():
    strict = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="first message must be from the user"):
        render_chat(strict, [{"role": "assistant", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat("{% if %}", [])


def test_embedded_chat_template_renders_its_default_system_prompt(embedded_tok):
    text = embedded_tok.render_chat([{"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("kind", ["gpt2", "smollm"])
def test_byte_level_tokenizers_convert_to_ggufs_that_llama_cpp_reads_alike(tmp_path, kind):
    """`minicpm convert` names the pre-tokenizer so that llama.cpp splits text as tokenizer.json does."""
    from tiny_checkpoint import make_checkpoint

    from runtime.convert import convert_hf_to_gguf

    folder = make_checkpoint(tmp_path / kind, minicpm=False, tokenizer=kind)
    out = convert_hf_to_gguf(folder, tmp_path / f"{kind}.gguf", outtype="f16")
    gguf_file = GGUFModelFile(out)
    assert gguf_file.metadata["tokenizer.ggml.pre"] == {"gpt2": "gpt-2"}.get(kind, kind)
    hf = Tokenizer.from_hf_folder(folder, [2])
    rebuilt = Tokenizer.from_gguf(gguf_file.metadata, out.name, [2])
    vocab = llama_vocab(out)
    for text in SAMPLES:
        expected = vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert hf.encode(text) == expected == rebuilt.encode(text), text
