"""Generation: sampling, stop tokens and strings, events, context limits, and the two backends."""

import math

import pytest
import torch

from runtime.backends.base import load_backend
from runtime.errors import ContextLengthError
from runtime.events import SamplingParams
from runtime.generate import stream_generate
from runtime.loading import load_torch_model
from runtime.sampling import apply_repetition_penalty, filter_logits, sample_token
from runtime.streaming import StopStringMatcher

GREEDY = SamplingParams(max_tokens=20, temperature=0)


@pytest.fixture(scope="module")
def tiny(tiny_minicpm):
    return load_torch_model(str(tiny_minicpm), dtype="float32")


def prompt_ids(loaded, n=30):
    return loaded.tokenizer.encode("We hold these truths to be self-evident, that all men")[:n]


def collect(events):
    events = list(events)
    tokens = [e.token for e in events if e.token is not None]
    return events, tokens, "".join(e.text for e in events)


def test_greedy_follows_the_argmax_of_uncached_forwards(tiny):
    prompt = prompt_ids(tiny)
    _, tokens, _ = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, GREEDY))
    seq = list(prompt)
    with torch.inference_mode():
        for token in tokens:
            # Generation picks LongRoPE factors by the context window (1024 here), as llama.cpp does.
            assert token == int(tiny.model(torch.tensor([seq]), rope_length=1024)[0, -1].argmax())
            seq.append(token)


def test_a_seed_makes_sampling_reproducible(tiny):
    prompt = prompt_ids(tiny)
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=11)
    first = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, params))[1]
    again = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, params))[1]
    other = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=24, temperature=1.0, seed=12)))[1]
    assert first == again and first != other


def test_top_k_one_is_greedy(tiny):
    prompt = prompt_ids(tiny)
    greedy = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, GREEDY))[1]
    top1 = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=20, temperature=1.5, top_k=1, seed=3)))[1]
    assert top1 == greedy


def test_sampling_draws_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0)
    draws = torch.tensor([sample_token(logits, params, [], gen) for _ in range(20000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.softmax(logits, 0), atol=0.01, rtol=0)


def test_filters_keep_what_they_should():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = lambda **kw: torch.isfinite(filter_logits(logits, SamplingParams(temperature=1.0, **kw))).tolist()
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.8) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept(top_p=0.81) == [True, True, True, False]
    assert kept(min_p=0.35) == [True, True, False, False]  # below 0.35 * 0.5 goes
    scaled = filter_logits(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(torch.softmax(scaled, 0), torch.softmax(logits / 0.5, 0))
    tiny = filter_logits(logits, SamplingParams(temperature=1e-45))  # no overflow, no NaN: greedy in effect
    assert torch.softmax(tiny, 0).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_repetition_penalty_is_ctrl_style():
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_stop_strings_cut_the_text_across_token_boundaries():
    matcher = StopStringMatcher(("\nUser:", "###"))
    out = [matcher.feed(piece) for piece in ["Hello", " world\n", "Us", "er: more"]]
    assert out == [("Hello", False), (" world", False), ("", False), ("", True)]
    matcher = StopStringMatcher(("###",))
    assert matcher.feed("a #") == ("a ", False)
    assert matcher.feed(" b") == ("# b", False)  # a false alarm is released
    assert matcher.flush() == ""


def test_events_report_progress_usage_and_length_finish(tiny):
    prompt = (prompt_ids(tiny) * 3)[:50]
    events = list(stream_generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=7, temperature=0), prefill_chunk=16))
    progress = [e.prompt_processed for e in events if e.is_progress]
    assert progress == [16, 32, 48, 50]
    last = events[-1]
    assert last.finish_reason == "length" and last.completion_tokens == 7 and last.prompt_tokens == 50
    assert last.prefill_seconds > 0 and last.decode_seconds > 0
    assert sum(e.token is not None for e in events) == 7


def test_a_stop_token_ends_generation_without_text(tiny):
    prompt = prompt_ids(tiny)
    greedy = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, GREEDY))[1]
    stop = greedy[3]
    params = SamplingParams(max_tokens=20, temperature=0, stop_token_ids=(stop,))
    events, tokens, text = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, params))
    assert tokens == greedy[: greedy.index(stop) + 1]
    assert events[-1].finish_reason == "stop"
    stop_event = next(e for e in events if e.token == stop)
    assert stop_event.text == "" and events[-1].token is None  # the stop token adds no text


def test_logprobs_are_the_models_log_softmax(tiny):
    prompt = prompt_ids(tiny)
    params = SamplingParams(max_tokens=3, temperature=0, logprobs=True, top_logprobs=3)
    events = [e for e in stream_generate(tiny.model, tiny.tokenizer, prompt, params) if e.token is not None]
    with torch.inference_mode():
        expected = torch.log_softmax(tiny.model(torch.tensor([prompt]), rope_length=1024)[0, -1], -1)
    first = events[0]
    assert first.logprob == pytest.approx(float(expected[first.token]), abs=1e-4)
    assert first.top_logprobs[0][0] == first.token  # greedy picks the most likely
    values = [lp for _, lp in first.top_logprobs]
    assert values == sorted(values, reverse=True) and math.exp(values[0]) <= 1


def test_the_longrope_factors_do_not_depend_on_how_many_tokens_are_asked_for(tiny):
    """The context window picks the factor set, so a longer --max-tokens changes nothing before it."""
    prompt = (prompt_ids(tiny) * 10)[:200]  # with 20 or 100 more tokens: either side of 256
    short = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=20, temperature=0)))[1]
    long = collect(stream_generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=100, temperature=0)))[1]
    assert long[:20] == short


def test_an_empty_prompt_is_an_error(tiny):
    with pytest.raises(ContextLengthError, match="empty"):
        stream_generate(tiny.model, tiny.tokenizer, [], GREEDY)


def test_prompt_longer_than_the_context_is_an_error_and_output_is_clipped(tiny):
    prompt = prompt_ids(tiny, 20)
    with pytest.raises(ContextLengthError, match="20 tokens but the context holds 20"):
        stream_generate(tiny.model, tiny.tokenizer, prompt, GREEDY, context_length=20)
    events = list(stream_generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=100, temperature=0), context_length=25))
    assert events[-1].completion_tokens == 5 and events[-1].finish_reason == "length"


@pytest.mark.parametrize("context", [256, 512])  # LongRoPE short and long factors (original: 256)
def test_torch_and_llama_cpp_backends_generate_the_same_greedy_text(tiny_minicpm, tiny_gguf, context):
    """Same weights (f32 GGUF) and context on both backends: the same tokens, the same event shape."""
    torch_backend = load_backend("torch", str(tiny_minicpm), dtype="float32", context_length=context)
    gguf_backend = load_backend("gguf", str(tiny_gguf), context_length=context)
    prompt = torch_backend.tokenize("We hold these truths")
    assert gguf_backend.tokenize("We hold these truths") == prompt
    # 10 tokens: llama.cpp keeps its KV cache in f16 and this random model meets a near-tie later.
    params = SamplingParams(max_tokens=10, temperature=0)
    a, b = collect(torch_backend.generate_tokens(prompt, params)), collect(gguf_backend.generate_tokens(prompt, params))
    # Token ids only: a random model's output is mostly invalid UTF-8, which each decoder renders
    # its own way (valid text streams identically: tests/test_tokenizer.py).
    assert a[1] == b[1] and len(a[1]) == 10
    assert a[0][-1].finish_reason == b[0][-1].finish_reason == "length"


def test_bad_sampling_settings_are_rejected():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            SamplingParams(temperature=bad)
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=float("nan"))
    for seed in (-1, 2**32 - 1):  # llama.cpp reads 0xFFFFFFFF as "random"
        with pytest.raises(ValueError, match="seed"):
            SamplingParams(seed=seed)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
