"""Eagle drafting (runtime/eagle.py): upstream's head layout loads and computes what it says,
bad heads are refused by name, FR-Spec's vocabulary keeps the stop ids, and generation with a
head gives the tokens plain decoding gives; a trained head (training/eagle.py) agrees with the
target far more often than a random one and gets its drafts accepted."""

import json

import pytest
import torch
from safetensors.torch import save_file

from runtime import eagle as eagle_module
from runtime.eagle import frspec_vocabulary, load_eagle_draft, load_eagle_head
from runtime.errors import MiniCPMError, ModelLoadError
from runtime.events import SamplingParams
from runtime.generate import stream_generate
from runtime.loading import load_torch_model
from runtime.sparse_attention import SparseSettings


@pytest.fixture(scope="module")
def tiny(tiny_minicpm):
    return load_torch_model(str(tiny_minicpm), dtype="float32")


def upstream_head(folder, target_config: dict, *, seed=0, norms=True, attn_norm=True, extra=None, **config_changes):
    """An Eagle head folder as upstream ships one (tensor names of CPM.cu's loader), random weights."""
    gen = torch.Generator().manual_seed(seed)
    c, inter = target_config["hidden_size"], target_config["intermediate_size"]
    heads, kv = target_config["num_attention_heads"], target_config["num_key_value_heads"]
    d = c // heads

    def lin(o, i):
        return torch.randn(o, i, generator=gen) / i**0.5

    w = {"fc.weight": lin(c, 2 * c), "fc.bias": 0.1 * torch.randn(c, generator=gen),
         "embed_tokens.weight": torch.zeros(target_config["vocab_size"], c),  # stored by some exports; not read
         "layers.0.post_attention_layernorm.weight": torch.ones(c),
         "layers.0.self_attn.q_proj.weight": lin(heads * d, c), "layers.0.self_attn.k_proj.weight": lin(kv * d, c),
         "layers.0.self_attn.v_proj.weight": lin(kv * d, c), "layers.0.self_attn.o_proj.weight": lin(c, heads * d),
         "layers.0.mlp.gate_proj.weight": lin(inter, c), "layers.0.mlp.up_proj.weight": lin(inter, c),
         "layers.0.mlp.down_proj.weight": lin(c, inter)}
    if attn_norm:
        w["layers.0.input_layernorm.weight"] = torch.ones(c)
    if norms:
        w["input_norm1.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
        w["input_norm2.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
    w.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(w, str(folder / "model.safetensors"))
    raw = dict(target_config, num_hidden_layers=1, **config_changes)
    (folder / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    return folder, w


@pytest.fixture(scope="module")
def target_config(tiny_minicpm):
    return json.loads((tiny_minicpm / "config.json").read_text())


def test_the_head_computes_fc_of_the_normed_embedding_and_hidden_state(tiny, target_config, tmp_path):
    """With its layer's output projections zeroed the head is fc(cat(norm1(scale_emb * E[x]), norm2(h))):
    the first C columns of fc take the embedding, as CPM.cu splits fc into fc1 (embedding) and fc2."""
    c = target_config["hidden_size"]
    zero = {"layers.0.self_attn.o_proj.weight": torch.zeros(c, c), "layers.0.mlp.down_proj.weight":
            torch.zeros(c, target_config["intermediate_size"])}
    folder, w = upstream_head(tmp_path / "head", target_config, extra=zero)
    head = load_eagle_head(folder, tiny.model)
    feature, token = torch.randn(1, 1, c), torch.tensor([[5]])
    cache = head.new_cache(4, torch.float32, "cpu", 4)
    out = head(tiny.model, feature, token, cache)

    def rms(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + target_config["rms_norm_eps"])

    embed = tiny.model.model.embed_tokens.weight[5] * target_config["scale_emb"]
    want = (w["fc.weight"][:, :c] @ rms(embed, w["input_norm1.weight"])
            + w["fc.weight"][:, c:] @ rms(feature[0, 0], w["input_norm2.weight"]) + w["fc.bias"])
    assert torch.allclose(out[0, 0], want, atol=1e-5)
    assert cache.length == 1


@pytest.mark.parametrize("sparse", [None, SparseSettings(kernel_size=8, kernel_stride=4, block_size=16, window_size=32,
                                                         topk=3, dense_len=24)])
@pytest.mark.parametrize("frspec", [0, 64])
def test_greedy_eagle_gives_the_tokens_of_plain_greedy(tiny, target_config, tmp_path, monkeypatch, sparse, frspec):
    folder, _ = upstream_head(tmp_path / "head", target_config)
    if frspec:
        torch.save(list(range(100, 300)), folder / "freq_200.pt")
    draft = load_eagle_draft(folder, tiny.model, set(tiny.tokenizer.stop_token_ids), frspec)
    monkeypatch.setattr(eagle_module, "DRAFT_CONFIDENCE", 0.0)  # a random head is unsure: chain anyway
    tiny.model.sparse = sparse
    try:
        prompt = tiny.tokenizer.encode("We hold these truths to be self-evident, that all men are created equal")
        params = SamplingParams(max_tokens=50, temperature=0, repetition_penalty=1.2)
        plain = [e.token for e in stream_generate(tiny.model, tiny.tokenizer, prompt, params) if e.token is not None]
        events = list(stream_generate(tiny.model, tiny.tokenizer, prompt, params, speculative="eagle", draft_max=4,
                                      eagle=draft))
    finally:
        tiny.model.sparse = None
    assert [e.token for e in events if e.token is not None] == plain
    last = events[-1]
    assert last.verify_steps > 0 and last.draft_tokens > last.verify_steps  # chains of several tokens were checked
    assert 0 < last.draft_seconds < last.decode_seconds
    if frspec:
        assert draft.vocab.size == 64 and set(tiny.tokenizer.stop_token_ids) <= set(draft.vocab.ids.tolist())


def test_eagle_sampling_is_seeded_and_keeps_the_budget_and_stops(tiny, target_config, tmp_path, monkeypatch):
    monkeypatch.setattr(eagle_module, "DRAFT_CONFIDENCE", 0.0)
    folder, _ = upstream_head(tmp_path / "head", target_config)
    draft = load_eagle_draft(folder, tiny.model, set(tiny.tokenizer.stop_token_ids))
    prompt = tiny.tokenizer.encode("We hold these truths to be self-evident")

    def tokens(params):
        return [e.token for e in stream_generate(tiny.model, tiny.tokenizer, prompt, params, speculative="eagle",
                                                 eagle=draft) if e.token is not None]

    sampled = SamplingParams(max_tokens=30, temperature=0.8, seed=3)
    assert tokens(sampled) == tokens(sampled)
    plain = [e.token for e in stream_generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=40, temperature=0))
             if e.token is not None]
    for budget in (1, 2, 9):
        assert tokens(SamplingParams(max_tokens=budget, temperature=0)) == plain[:budget]
    stop = plain[12]
    assert tokens(SamplingParams(max_tokens=40, temperature=0, stop_token_ids=(stop,))) == plain[: plain.index(stop) + 1]


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 64}, "hidden_size 64 is not the target's 128"),
    ({"vocab_size": 32000}, "vocab_size 32000 is not the target's"),
    ({"head_dim": 16}, "head_dim 16 is not the target's 32"),
    ({"scale_depth": 2.0}, "scale_depth is 2.0 in the head's config"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantized Eagle head"),
])
def test_heads_for_another_model_are_refused(tiny, target_config, tmp_path, change, message):
    folder, _ = upstream_head(tmp_path / "head", target_config, **change)
    with pytest.raises(ModelLoadError, match=message):
        load_eagle_head(folder, tiny.model)


def test_eagle3_missing_and_misshapen_tensors_are_named(tiny, target_config, tmp_path):
    folder, _ = upstream_head(tmp_path / "e3", target_config, extra={"d2t": torch.zeros(10, dtype=torch.long)})
    with pytest.raises(ModelLoadError, match="EAGLE-3"):
        load_eagle_head(folder, tiny.model)
    folder, _ = upstream_head(tmp_path / "bad", target_config, extra={"fc.bias": torch.zeros(7)})
    with pytest.raises(ModelLoadError, match=r"fc.bias has shape \(7,\)"):
        load_eagle_head(folder, tiny.model)
    folder, _ = upstream_head(tmp_path / "odd", target_config, extra={"layers.0.extra.weight": torch.zeros(3)})
    with pytest.raises(ModelLoadError, match="unexpected tensors layers.0.extra.weight"):
        load_eagle_head(folder, tiny.model)
    with pytest.raises(ModelLoadError, match="not a folder"):
        load_eagle_head(tmp_path / "nowhere", tiny.model)


def test_an_eagle1_head_without_norms_loads_and_skips_them(tiny, target_config, tmp_path):
    folder, _ = upstream_head(tmp_path / "e1", target_config, norms=False, attn_norm=False)
    head = load_eagle_head(folder, tiny.model)
    assert head.input_norm1 is None and isinstance(head.layers[0].input_layernorm, torch.nn.Identity)


def test_frspec_vocabulary_takes_the_most_frequent_and_keeps_the_stop_ids(tmp_path):
    torch.save([9, 8, 7, 6, 5, 4, 3], tmp_path / "freq_7.pt")
    torch.save([9, 8, 7], tmp_path / "freq_3.pt")
    assert frspec_vocabulary(tmp_path, 3, set(), 20) == [9, 8, 7]  # the smallest file that is big enough
    assert frspec_vocabulary(tmp_path, 4, {2}, 20) == [9, 8, 7, 2]  # the stop id displaces the 4th
    assert frspec_vocabulary(tmp_path, 4, {8}, 20) == [9, 7, 6, 8]
    with pytest.raises(ModelLoadError, match="leaves no room beside the 2 stop ids"):
        frspec_vocabulary(tmp_path, 2, {2, 3}, 20)
    with pytest.raises(ModelLoadError, match="no frequency file with at least 8 ids"):
        frspec_vocabulary(tmp_path, 8, set(), 20)
    torch.save([1, 1, 2], tmp_path / "freq_3.pt")
    with pytest.raises(ModelLoadError, match="repeated"):
        frspec_vocabulary(tmp_path, 3, set(), 20)


def test_the_backend_checks_the_draft_flags_before_loading():
    from runtime.backends.base import check_draft_options

    with pytest.raises(MiniCPMError, match="needs --draft-model"):
        check_draft_options("eagle", None, 0)
    with pytest.raises(MiniCPMError, match="add that flag"):
        check_draft_options("none", "/some/head", 0)
    with pytest.raises(MiniCPMError, match="--frspec-vocab restricts"):
        check_draft_options("lookup", None, 4096)


def test_the_drafters_head_cache_holds_what_one_pass_over_the_kept_sequence_gives(tiny, target_config, tmp_path,
                                                                                  monkeypatch):
    """However the target's states arrive (prefill chunks, verifications keeping 1 to 3 positions),
    the head's cache ends up as one pass over (state at i, token i+1) would fill it: drafts never
    shift the pairing, and positions built from guessed states are gone."""
    folder, _ = upstream_head(tmp_path / "head", target_config)
    draft = load_eagle_draft(folder, tiny.model, set(tiny.tokenizer.stop_token_ids))
    monkeypatch.setattr(eagle_module, "DRAFT_CONFIDENCE", 0.0)
    seq = tiny.tokenizer.encode("We hold these truths to be self-evident, that all men are created equal, that "
                                "they are endowed by their Creator with certain unalienable Rights")[:40]
    with torch.inference_mode():
        states = tiny.model.hidden_states(torch.tensor([seq]))[0]  # [N, C], as generation gets them
        drafter = draft.drafter(tiny.model, 64, 64)
        drafter.observe(states[:6])
        drafter.observe(states[6:10])  # a prompt of 10 tokens in two prefill chunks
        drafter.draft(seq[:11], 3)  # the first sampled token is seq[10]
        pos = 10
        for kept in (1, 3, 2, 1, 4):
            drafter.observe(states[pos : pos + kept])
            pos += kept
            assert len(drafter.draft(seq[: pos + 1], 3)) >= 1
        assert drafter.cache.length == pos
        reference = draft.head.new_cache(64, torch.float32, "cpu", 64)
        divisor = tiny.model.config.logit_divisor  # the head reads the normed state, before the logit divisor
        draft.head(tiny.model, states[None, :pos] * divisor, torch.tensor([seq[1 : pos + 1]]), reference)
    assert torch.allclose(drafter.cache.k[..., :pos, :], reference.k[..., :pos, :], atol=1e-5)
    assert torch.allclose(drafter.cache.v[..., :pos, :], reference.v[..., :pos, :], atol=1e-5)


def test_with_an_int4_target_the_head_is_quantized_too_and_the_tokens_stay_plain_int4s(tiny_minicpm, target_config,
                                                                                     tmp_path, monkeypatch):
    from runtime.quantize import Int4Linear, Int8Linear

    target = load_torch_model(str(tiny_minicpm), dtype="float32", quant="int4")
    folder, _ = upstream_head(tmp_path / "head", target_config)
    torch.save(list(range(100, 300)), folder / "freq_200.pt")
    draft = load_eagle_draft(folder, target.model, set(target.tokenizer.stop_token_ids), 64, quant="int4")
    assert isinstance(draft.head.layers[0].mlp.gate_up_proj, Int4Linear) and isinstance(draft.vocab.rows, Int8Linear)
    assert "int4 layers" in draft.label
    monkeypatch.setattr(eagle_module, "DRAFT_CONFIDENCE", 0.0)
    prompt = target.tokenizer.encode("We hold these truths to be self-evident, that all men are created equal")
    params = SamplingParams(max_tokens=40, temperature=0)
    plain = [e.token for e in stream_generate(target.model, target.tokenizer, prompt, params) if e.token is not None]
    events = list(stream_generate(target.model, target.tokenizer, prompt, params, speculative="eagle", draft_max=3,
                                  eagle=draft))
    assert [e.token for e in events if e.token is not None] == plain and events[-1].draft_tokens > 0
