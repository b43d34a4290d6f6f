"""SFT and LoRA on tiny random models: what a fine-tune must get right, checked on its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runtime.adapter import AdapterError, LoRASettings, load_adapter, merge_adapter, read_adapter
from runtime.checkpoint import load_hf_checkpoint
from runtime.loading import load_torch_model
from training import lora
from training.batches import TrainingDataError, encode_conversation, pack, token_log_probs
from training.config import ConfigError, load_config
from training.sft import SFTConfig, lr_at, train_sft

CALC_TOOL = {"type": "function", "function": {
    "name": "calculate", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


def conversation(i: int) -> dict:
    expression = f"{i} * {i + 3}"
    return {"tools": [CALC_TOOL], "messages": [
        {"role": "user", "content": f"What is {expression}?"},
        {"role": "assistant", "content": "<|thought_start|>\nI will calculate it.\n<|thought_end|>",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "calculate", "arguments": json.dumps({"expression": expression})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"result": i * (i + 3)})},
        {"role": "assistant", "content": f"The answer is: {i * (i + 3)}"}]}


def write_data(path: Path, n: int = 12) -> Path:
    path.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(n)), encoding="utf-8")
    return path


def test_loss_covers_the_assistant_turns_only(tiny_llama):
    tokenizer = load_torch_model(str(tiny_llama)).tokenizer
    sample = conversation(4)
    example = encode_conversation(tokenizer, sample["messages"], sample["tools"], "minicpm")
    targets = tokenizer.decode([t for t, m in zip(example.ids, example.loss_mask, strict=True) if m])
    assert "calculate(expression=\"4 * 7\")" in targets and "The answer is: 28" in targets
    assert "What is" not in targets and "Here is a list of functions" not in targets
    assert '{"result": 28}' not in targets  # the tool's result is input, not a target
    assert targets.count("<|im_end|>") == 2  # each assistant turn learns to end


def test_a_conversation_must_end_with_the_assistant(tiny_llama):
    tokenizer = load_torch_model(str(tiny_llama)).tokenizer
    with pytest.raises(TrainingDataError, match="end with an assistant turn"):
        encode_conversation(tokenizer, [{"role": "user", "content": "hi"}])


def test_packed_samples_do_not_see_each_other(tiny_llama):
    loaded = load_torch_model(str(tiny_llama))
    examples = [encode_conversation(loaded.tokenizer, conversation(i)["messages"], [CALC_TOOL], "minicpm") for i in (1, 2, 3)]
    (row,) = pack(examples, 4096)
    assert row.samples == 3
    packed, _ = token_log_probs(loaded.model, row)
    alone = torch.cat([token_log_probs(loaded.model, pack([e], 4096)[0])[0] for e in sorted(examples, key=lambda e: -len(e.ids))])
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    with pytest.raises(TrainingDataError, match="longer than max_tokens"):
        pack(examples, 50)


def test_merged_lora_equals_the_unmerged_forward(tiny_llama):
    model = load_hf_checkpoint(tiny_llama, torch.float32)
    lora.add_lora(model, LoRASettings(r=4, alpha=8))
    for module in lora.lora_modules(model).values():  # B starts at zero; give it something to merge
        torch.nn.init.normal_(module.lora_B, std=0.05)
    ids = torch.randint(3, 500, (1, 24))
    with torch.no_grad():
        unmerged = model(ids)
        assert lora.merge_lora(model) == 3 * 7
        merged = model(ids)
    assert not lora.lora_modules(model)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


def sft_config(tmp_path: Path, model: Path, **changes) -> SFTConfig:
    values = dict(data=str(write_data(tmp_path / "data.jsonl")), out=str(tmp_path / "run"), model=str(model),
                  max_tokens=2048, grad_accum=2, epochs=4, lr=5e-3, warmup_ratio=0.0, save_every=2, threads=2,
                  lora={"r": 4, "alpha": 8})
    values.update(changes)
    from training.config import from_mapping

    return from_mapping(SFTConfig, values, "test")


def test_lora_sft_lowers_the_loss_and_the_adapter_reloads_with_identical_logits(tmp_path, tiny_llama):
    cfg = sft_config(tmp_path, tiny_llama)
    summary = train_sft(cfg, log=lambda _: None, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == summary["steps"] == 12
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses

    # The checkpoint's LoRA weights and the saved adapter (merged by the runtime) give the same logits.
    from safetensors.torch import load_file

    model = load_hf_checkpoint(tiny_llama, torch.float32)
    lora.add_lora(model, LoRASettings(r=4, alpha=8))
    params = dict(model.named_parameters())
    for name, tensor in load_file(str(tmp_path / "run" / "checkpoint" / "trainable.safetensors")).items():
        params[name].data.copy_(tensor)
    merged = load_torch_model(str(tiny_llama), adapter=summary["adapter"]).model
    base = load_torch_model(str(tiny_llama)).model
    ids = torch.randint(3, 500, (1, 32))
    with torch.no_grad():
        trained, from_adapter, untouched = model(ids), merged(ids), base(ids)
    torch.testing.assert_close(from_adapter, trained, atol=2e-3, rtol=1e-3)  # the adapter file is float16
    assert (trained - untouched).abs().max() > 0.1  # and the fine-tune did change the model
    config = json.loads((Path(summary["adapter"]) / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4


def test_an_interrupted_run_resumes_to_the_same_adapter(tmp_path, tiny_llama):
    common = dict(epochs=2, adapter_dtype="float32")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = train_sft(sft_config(tmp_path / "a", tiny_llama, **common), log=lambda _: None, progress=False)
    cfg = sft_config(tmp_path / "b", tiny_llama, **common)
    stopped = train_sft(cfg, log=lambda _: None, progress=False, stop_after=3)
    assert stopped["stopped"] and not (tmp_path / "b" / "run" / "adapter").exists()
    log_file = tmp_path / "b" / "run" / "log.jsonl"
    with open(log_file, "a") as handle:  # a step that ran after the checkpoint, then the process died
        handle.write(json.dumps({"step": 4, "loss": 9.9}) + "\n")
    messages = []
    resumed = train_sft(cfg, log=messages.append, progress=False)
    assert any("resuming at step 3" in m for m in messages)
    assert resumed["steps"] == whole["steps"]
    steps = [json.loads(line)["step"] for line in log_file.read_text().splitlines()]
    assert steps == list(range(1, whole["steps"] + 1))  # step 4 logged once, by the resumed run
    a, b = read_adapter(Path(whole["adapter"])), read_adapter(Path(resumed["adapter"]))
    for name, (wa, wb) in a.tensors.items():
        torch.testing.assert_close(b.tensors[name][0], wa, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.tensors[name][1], wb, atol=1e-6, rtol=1e-5)
    # a changed config is refused rather than mixed into the old run
    with pytest.raises(ConfigError, match="other data or settings"):
        train_sft(sft_config(tmp_path / "b", tiny_llama, **common, lr=1e-3), log=lambda _: None, progress=False)


def test_full_fine_tune_writes_a_merged_folder_and_gguf(tmp_path, tiny_llama):
    cfg = sft_config(tmp_path, tiny_llama, method="full", epochs=2, lr=1e-3, outputs=["merged", "gguf"], gguf_outtype="f32")
    summary = train_sft(cfg, log=lambda _: None, progress=False)
    merged = load_torch_model(summary["merged"])
    base = load_torch_model(str(tiny_llama))
    assert merged.tokenizer.encode("hello world") == base.tokenizer.encode("hello world")
    assert merged.tokenizer.chat_template == base.tokenizer.chat_template
    ids = torch.randint(3, 500, (1, 16))
    with torch.no_grad():
        assert (merged.model(ids) - base.model(ids)).abs().max() > 1e-3
        from_gguf = load_torch_model(summary["gguf"]).model(ids)
        torch.testing.assert_close(from_gguf, merged.model(ids), atol=1e-3, rtol=1e-3)


def test_gguf_backend_applies_the_adapter_as_the_torch_runtime_merges_it(tmp_path, monkeypatch, tiny_minicpm, tiny_gguf):
    """llama.cpp's LoRA (GGUF adapter written by runtime/adapter.py, q/k rows permuted) gives the
    logits of the torch runtime's merged weights."""
    from llama_cpp import Llama

    model = load_hf_checkpoint(tiny_minicpm, torch.float32)
    lora.add_lora(model, LoRASettings(r=4, alpha=8))
    gen = torch.Generator().manual_seed(5)
    for module in lora.lora_modules(model).values():
        module.lora_B.data = torch.randn(module.lora_B.shape, generator=gen) * 0.05
    folder = lora.save_adapter(model, LoRASettings(r=4, alpha=8), tmp_path / "adapter", str(tiny_minicpm))
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    from runtime.adapter import gguf_adapter_file
    from runtime.gguf_model import GGUFModelFile

    config = GGUFModelFile(tiny_gguf).config()
    path = gguf_adapter_file(load_adapter(str(folder), config), config, "minicpm")
    assert path.parent == tmp_path / "home" / "adapters"
    ids = [1, 45, 87, 120, 33, 270, 301]
    plain = Llama(model_path=str(tiny_gguf), n_ctx=64, logits_all=True, verbose=False)
    plain.eval(ids)
    adapted = Llama(model_path=str(tiny_gguf), n_ctx=64, logits_all=True, lora_path=str(path), verbose=False)
    adapted.eval(ids)
    with torch.no_grad():
        expected = load_torch_model(str(tiny_minicpm), adapter=str(folder)).model(torch.tensor([ids]))[0]
    got = torch.tensor(adapted.scores[: len(ids)])
    assert (got - torch.tensor(plain.scores[: len(ids)])).abs().max() > 0.05  # the adapter does something
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3)


def test_adapters_for_another_model_are_refused(tmp_path, tiny_llama, tiny_minicpm):
    from tiny_checkpoint import make_checkpoint

    model = load_hf_checkpoint(tiny_llama, torch.float32)
    lora.add_lora(model, LoRASettings(r=2, alpha=2, targets=("q_proj",)))
    folder = lora.save_adapter(model, LoRASettings(r=2, alpha=2, targets=("q_proj",)), tmp_path / "ad", "x")
    narrow = make_checkpoint(tmp_path / "narrow", minicpm=False, hidden_size=64)
    with pytest.raises(AdapterError, match="q_proj is 128x128 in the adapter but 64x64 in the model"):
        load_torch_model(str(narrow), adapter=str(folder))
    shallow = make_checkpoint(tmp_path / "shallow", minicpm=False, num_hidden_layers=1)
    with pytest.raises(AdapterError, match="layers.1.self_attn.q_proj, which this model lacks"):
        load_torch_model(str(shallow), adapter=str(folder))
    other = load_hf_checkpoint(tiny_minicpm, torch.float32)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 3}))
    with pytest.raises(AdapterError, match="not rank 3"):
        merge_adapter(other, read_adapter(folder))
    with pytest.raises(AdapterError, match="neither a folder nor a shipped adapter"):
        load_torch_model(str(tiny_llama), adapter=str(tmp_path / "missing"))
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        read_adapter(folder)


def test_config_files_are_checked_key_by_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d.jsonl\nout: run\nlearning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        load_config(SFTConfig, path)
    path.write_text("data: d.jsonl\nout: run\nepochs: two\n")
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_config(SFTConfig, path)
    path.write_text("data: d.jsonl\nout: run\nmethod: qlora\n")
    with pytest.raises(ConfigError, match="method must be lora or full"):
        load_config(SFTConfig, path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(SFTConfig, path)
    path.write_text("data: d.jsonl\nout: run\n")
    cfg = load_config(SFTConfig, path)
    assert cfg.data == str(tmp_path / "d.jsonl") and cfg.out == str(tmp_path / "run")  # relative to the file


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = SFTConfig(data="d", out="o", lr=1.0, warmup_ratio=0.1, min_lr_ratio=0.1)
    rates = [lr_at(s, 100, cfg) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] == pytest.approx(0.1, abs=0.01)
