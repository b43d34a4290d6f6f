"""Speculative decoding (prompt lookup): the drafter, the verification rules, and generation that
gives the tokens plain decoding gives, with fewer forwards where the output copies its input."""

import json

import pytest
import torch
from conftest import run_cli

from runtime.events import SamplingParams
from runtime.generate import stream_generate
from runtime.loading import load_torch_model
from runtime.sparse_attention import SparseSettings
from runtime.speculative import PromptLookup, verify

GREEDY = SamplingParams(max_tokens=40, temperature=0)


@pytest.fixture(scope="module")
def tiny(tiny_minicpm):
    return load_torch_model(str(tiny_minicpm), dtype="float32")


def run(loaded, prompt, params, **options):
    events = list(stream_generate(loaded.model, loaded.tokenizer, prompt, params, **options))
    return [e.token for e in events if e.token is not None], events[-1]


def test_prompt_lookup_drafts_what_followed_the_latest_earlier_match():
    lookup = PromptLookup([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3])
    assert lookup.draft(3) == [4, 9, 2]  # the trigram 1 2 3 seen before: what came after it
    lookup.extend([7])
    assert lookup.draft(3) == []  # 7 never came before
    lookup.extend([2, 3])
    assert lookup.draft(2) == [7, 2]  # trigram 7 2 3 is new; the latest earlier 2 3 was followed by 7 2
    assert PromptLookup([5, 6, 7]).draft(4) == [] and lookup.draft(0) == []


def test_greedy_verification_accepts_the_argmax_run_then_adds_the_models_token():
    logits = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 4, 8, 6]):
        logits[row, best] = 5.0
    verdict = verify(logits, [3, 4, 5], GREEDY, [1, 2], None)  # 3 and 4 match, 5 does not (model says 8)
    assert [t for t, _ in verdict.tokens] == [3, 4, 8] and verdict.accepted == 2
    verdict = verify(logits, [3, 4, 8], GREEDY, [1, 2], None)  # all match: the token after them comes free
    assert [t for t, _ in verdict.tokens] == [3, 4, 8, 6] and verdict.accepted == 3
    assert torch.equal(verdict.tokens[1][1], logits[1])  # each token carries its own position's logits


def test_speculative_sampling_keeps_the_models_distribution():
    """With a point-mass draft, accepting d with p(d) and otherwise drawing from p without d gives
    exactly p, whatever d is: checked over 20,000 draws for a likely, an unlikely and an impossible draft."""
    p = torch.tensor([0.05, 0.4, 0.25, 0.2, 0.1, 0.0])
    logits = torch.log(p).unsqueeze(0).repeat(2, 1)
    params = SamplingParams(max_tokens=2, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    for draft in (1, 4, 5):
        counts = torch.zeros(6)
        for _ in range(n):
            counts[verify(logits, [draft], params, [0], gen).tokens[0][0]] += 1
        assert torch.allclose(counts / n, p, atol=0.012), (draft, counts / n)


@pytest.mark.parametrize("sparse", [None, SparseSettings(kernel_size=8, kernel_stride=4, block_size=16, window_size=32,
                                                         topk=3, dense_len=24)])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.parametrize("kv_dtype", [None, torch.bfloat16])  # --kv-dtype bfloat16: attention in bfloat16
def test_greedy_lookup_gives_the_tokens_of_plain_greedy(tiny, sparse, penalty, kv_dtype):
    """float32, so that a k-token forward rounds as the 1-token one does (a bfloat16 KV cache too:
    each checked query attends as its decode step would); with sparse attention the cache's
    compressed keys must be cut back with the rejected drafts."""
    tiny.model.sparse, tiny.model.kv_dtype = sparse, kv_dtype
    try:
        prompt = tiny.tokenizer.encode("We hold these truths to be self-evident, that all men are created equal, "
                                       "that they are endowed with certain unalienable rights")
        params = SamplingParams(max_tokens=60, temperature=0, repetition_penalty=penalty)
        plain, last_plain = run(tiny, prompt, params)
        fast, last = run(tiny, prompt, params, speculative="lookup", draft_max=5)
    finally:
        tiny.model.sparse, tiny.model.kv_dtype = None, None
    assert fast == plain
    assert last_plain.verify_steps == 0 and last_plain.mean_accepted_length is None
    assert last.verify_steps > 0 and last.accepted_tokens <= last.draft_tokens <= 5 * last.verify_steps
    if penalty == 1.0:  # a random model's greedy output loops: drafts from its own output pass
        assert last.accepted_tokens > 0
    assert last.completion_tokens == len(fast)


def test_a_seeded_speculative_sampling_run_is_reproducible(tiny):
    prompt = tiny.tokenizer.encode("We hold these truths to be self-evident")
    params = SamplingParams(max_tokens=40, temperature=0.7, seed=5)
    first, _ = run(tiny, prompt, params, speculative="lookup")
    again, _ = run(tiny, prompt, params, speculative="lookup")
    assert first == again and 0 < len(first) <= 40


def test_the_token_budget_and_stop_tokens_hold_with_drafts(tiny):
    prompt = tiny.tokenizer.encode("We hold these truths to be self-evident, that all men")
    plain, _ = run(tiny, prompt, SamplingParams(max_tokens=60, temperature=0))
    for budget in (1, 2, 7, 23):  # a draft never runs past the budget
        fast, last = run(tiny, prompt, SamplingParams(max_tokens=budget, temperature=0), speculative="lookup")
        assert fast == plain[:budget] and last.finish_reason == "length"
    stop = plain[10]
    fast, last = run(tiny, prompt, SamplingParams(max_tokens=60, temperature=0, stop_token_ids=(stop,)),
                     speculative="lookup")
    assert fast == plain[: plain.index(stop) + 1] and last.finish_reason == "stop"


def test_an_unknown_mode_is_refused(tiny):
    with pytest.raises(ValueError, match="unknown speculative decoding mode 'medusa'"):
        run(tiny, [1, 2, 3], GREEDY, speculative="medusa")
    with pytest.raises(ValueError, match="needs an Eagle draft head"):
        run(tiny, [1, 2, 3], GREEDY, speculative="eagle")


def test_the_command_line_reports_the_accepted_length(embedded_path):
    text = ("Large language models are increasingly deployed on end-side devices, where memory and compute are "
            "scarce. We present a family of efficient models trained with a sparse attention mechanism that lets each "
            "token attend to a small set of relevant blocks, which cuts the cost of long-context prefill and decoding.")
    args = ["generate", "--backend", "torch", "--prompt", f"Repeat the following text exactly, word for word: {text}",
            "--max-tokens", "40",
            "--temperature", "0", "--json", "--model", str(embedded_path)]
    plain = run_cli(*args)
    fast = run_cli(*args, "--speculative", "lookup", "--verbose")
    assert plain.returncode == 0 and fast.returncode == 0, fast.stderr
    plain_json, fast_json = json.loads(plain.stdout), json.loads(fast.stdout)
    assert fast_json["tokens"] == plain_json["tokens"]  # float32 on the torch backend: the same tokens
    assert fast_json["mean_accepted_length"] > 1.0  # the reply copies the prompt: most drafts pass
    assert "mean accepted length" in fast.stderr and "speculative decoding: lookup" in fast.stderr
    gguf = run_cli(*args[:2], "gguf", *args[3:], "--speculative", "lookup")
    assert gguf.returncode == 0 and "--speculative lookup is the torch backend's" in gguf.stderr
