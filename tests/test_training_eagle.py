"""`minicpm train eagle` and `minicpm train frspec` on a tiny model: the head learns to predict the
target's greedy tokens, reloads through --draft-model and drafts tokens the target accepts; an
interrupted run resumes; FR-Spec files rank the corpus's tokens and keep the stop ids."""

from __future__ import annotations

import json

import pytest
import torch

from runtime.eagle import load_eagle_draft, read_frequency_file
from runtime.events import SamplingParams
from runtime.generate import stream_generate
from runtime.loading import load_torch_model
from training.config import load_config
from training.eagle import EagleConfig, train_eagle
from training.frspec import frequency_ids, rank_tokens
from tui.cli import main


@pytest.fixture()
def corpus(tmp_path, english_text):
    path = tmp_path / "text.txt"
    path.write_text(english_text, encoding="utf-8")
    return path


def config(tmp_path, model, corpus, **changes) -> EagleConfig:
    settings = {"model": str(model), "data": str(corpus), "limit": None, "out": "run", "seq_len": 64,
                "holdout_rows": 2, "epochs": 8, "batch_rows": 4, "lr": 1.0e-2, "warmup_ratio": 0.1,
                "save_every": 5, "noise": 0.05, **changes}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "eagle.yaml"
    path.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML
    return load_config(EagleConfig, path)


def test_a_trained_head_predicts_the_target_and_its_drafts_are_accepted(tmp_path, tiny_minicpm, corpus, monkeypatch):
    summary = train_eagle(config(tmp_path, tiny_minicpm, corpus), log=lambda m: None, progress=False)
    assert summary["held_out_agreement"] > summary["held_out_agreement_before"] + 0.2
    assert summary["held_out_agreement"] > 0.4
    target = load_torch_model(str(tiny_minicpm), dtype="float32")
    draft = load_eagle_draft(summary["head"], target.model, set(target.tokenizer.stop_token_ids))
    prompt = target.tokenizer.encode("The history of the printing press begins with")
    params = SamplingParams(max_tokens=48, temperature=0)
    plain = [e.token for e in stream_generate(target.model, target.tokenizer, prompt, params) if e.token is not None]
    gated = list(stream_generate(target.model, target.tokenizer, prompt, params, speculative="eagle", eagle=draft))
    assert [e.token for e in gated if e.token is not None] == plain
    import runtime.eagle

    monkeypatch.setattr(runtime.eagle, "DRAFT_CONFIDENCE", 0.0)  # every chain runs to --draft-max
    chained = list(stream_generate(target.model, target.tokenizer, prompt, params, speculative="eagle", eagle=draft))
    assert [e.token for e in chained if e.token is not None] == plain
    every, confident = chained[-1], gated[-1]
    # a random head's drafts pass about once in 600 (the vocabulary); an off-by-one between the
    # head's features and tokens would pass as rarely
    assert every.accepted_tokens >= 0.1 * every.draft_tokens and every.accepted_tokens >= 8
    # the head's confidence tracks acceptance: the drafts it is sure of pass more often
    assert confident.accepted_tokens / confident.draft_tokens > every.accepted_tokens / every.draft_tokens


def test_an_interrupted_eagle_run_resumes_to_the_same_head(tmp_path, tiny_minicpm, corpus):
    whole = train_eagle(config(tmp_path / "a", tiny_minicpm, corpus, epochs=1), log=lambda m: None, progress=False)
    cfg = config(tmp_path / "b", tiny_minicpm, corpus, epochs=1)
    stopped = train_eagle(cfg, log=lambda m: None, progress=False, stop_after=2)
    assert stopped["stopped"]
    resumed = train_eagle(cfg, log=lambda m: None, progress=False)
    assert resumed["steps"] == whole["steps"]
    from safetensors.torch import load_file

    a = load_file(f"{whole['head']}/model.safetensors")
    b = load_file(f"{resumed['head']}/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    changed = config(tmp_path / "b", tiny_minicpm, corpus, epochs=1, lr=5.0e-3)
    (tmp_path / "b" / "run" / "head").rename(tmp_path / "b" / "run" / "head.done")
    with pytest.raises(Exception, match="other data or settings"):
        train_eagle(changed, log=lambda m: None, progress=False)


def test_frspec_files_rank_the_corpus_tokens_and_keep_the_stop_ids(tmp_path, tiny_minicpm, corpus, capsys):
    target = load_torch_model(str(tiny_minicpm), dtype="float32")
    ranked, counts = rank_tokens(target.tokenizer, corpus.read_text().split("\n\n"))
    assert counts[ranked[0]] >= counts[ranked[1]] >= counts[ranked[-1]]
    assert frequency_ids([5, 6, 7, 8], 3, [2]) == [5, 6, 2]
    assert main(["train", "frspec", "--model", str(tiny_minicpm), "--data", str(corpus), "--vocab", "16", "64",
                 "--out", str(tmp_path / "head"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ids = read_frequency_file(tmp_path / "head" / "freq_64.pt", target.config.vocab_size)
    assert len(ids) == 64 and set(target.tokenizer.stop_token_ids) <= set(ids)
    assert ids[0] == ranked[0]
    cover = {v["size"]: v["coverage"] for v in report["files"].values()}
    assert 0 < cover[16] < cover[64] <= 1
    with pytest.raises(SystemExit, match="--out DIR is required"):
        main(["train", "frspec", "--model", str(tiny_minicpm)])
    # Flags of one mode given to another are refused, not ignored.
    with pytest.raises(SystemExit, match=r"minicpm train eagle: --data, --vocab are flags of frspec only"):
        main(["train", "eagle", "--config", "x.yaml", "--data", str(corpus), "--vocab", "64"])
    with pytest.raises(SystemExit, match=r"minicpm train frspec: --config does not apply"):
        main(["train", "frspec", "--config", "x.yaml", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"between 3 \(the stop ids and one more\) and the vocabulary"):
        main(["train", "frspec", "--model", str(tiny_minicpm), "--data", str(corpus), "--vocab", "0",
              "--out", str(tmp_path / "x")])


def test_generate_with_a_trained_head_and_frspec_on_the_command_line(tmp_path, tiny_minicpm, corpus, capsys):
    cfg = tmp_path / "eagle.yaml"
    cfg.write_text(f"model: {tiny_minicpm}\ndata: {corpus}\nlimit: null\nout: run\nseq_len: 64\nholdout_rows: 2\n"
                   "epochs: 8\nbatch_rows: 4\nlr: 1.0e-2\n", encoding="utf-8")
    assert main(["train", "eagle", "--config", str(cfg), "--json"]) == 0
    head = json.loads(capsys.readouterr().out)["head"]
    assert main(["train", "frspec", "--model", str(tiny_minicpm), "--data", str(corpus), "--vocab", "128",
                 "--out", head]) == 0
    capsys.readouterr()
    args = ["generate", "--model", str(tiny_minicpm), "--prompt", "The history of printing", "--max-tokens", "24",
            "--temperature", "0", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--speculative", "eagle", "--draft-model", head, "--frspec-vocab", "128", "--verbose"]) == 0
    captured = capsys.readouterr()
    fast = json.loads(captured.out)
    assert fast["tokens"] == plain["tokens"]
    assert "speculative decoding: eagle (Eagle head head (1 layer, FR-Spec vocabulary 128 of" in captured.err
    if "draft_tokens" in fast:  # the head proposed tokens it was sure of
        assert "draft_seconds" in fast and "s drafting" in captured.err
    assert main([*args, "--speculative", "eagle", "--draft-model", head, "--frspec-vocab", "256"]) == 1
    assert "no frequency file with at least 256 ids" in capsys.readouterr().err
    assert main([*args, "--speculative", "eagle"]) == 1
    assert "needs --draft-model" in capsys.readouterr().err


def test_eagle_data_sources_are_read_and_bad_ones_named(tmp_path, tiny_minicpm, corpus):
    from training.batches import TrainingDataError
    from training.eagle import read_texts

    lines = tmp_path / "more.jsonl"
    lines.write_text('{"text": "one sample"}\n\n{"text": "two"}\n', encoding="utf-8")
    cfg = config(tmp_path / "cfg", tiny_minicpm, corpus, data=[str(corpus), "../more.jsonl"], limit=5)
    assert cfg.data == [str(corpus), str(lines)]  # a relative path resolves against the config's folder
    assert read_texts(str(lines), None)[0] == ["one sample", "two"]
    assert len(read_texts(str(corpus), 5)[0]) == 5
    lines.write_text('{"txt": "x"}\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r'more.jsonl:1: expected an object with a "text" string'):
        read_texts(str(lines), None)
    with pytest.raises(TrainingDataError, match="does not exist"):
        read_texts(str(tmp_path / "missing.txt"), None)


def test_the_self_distillation_builder_writes_prompts_with_the_models_greedy_replies(tmp_path):
    from tiny_checkpoint import make_checkpoint

    from runtime.backends.torch_backend import TorchBackend
    from runtime.events import SamplingParams as Params
    from training.data.eagle_distill import build

    # the survey agent's paragraph prompt is over 1,000 tokens with the tiny tokenizer
    tiny_minicpm = make_checkpoint(tmp_path / "long", max_position_embeddings=4096)
    out = tmp_path / "distill.jsonl"
    assert build(1, 6, out, model=str(tiny_minicpm)) == 2  # a paragraph prompt and a one-sentence prompt
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    backend = TorchBackend.load(str(tiny_minicpm), quant="int4")
    for row in rows:
        prompt, _, reply = row["text"].rpartition("<|im_start|>assistant\n")
        assert prompt and "In one sentence" in rows[1]["text"]
        greedy = [e.token for e in backend.generate_tokens(backend.tokenize(prompt + "<|im_start|>assistant\n"),
                                                           Params(max_tokens=6, temperature=0)) if e.token is not None]
        assert reply == backend.decode(greedy)
