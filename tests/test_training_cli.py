"""`minicpm train sft|rl` end to end on a tiny model, and `--adapter` on the CLI."""

from __future__ import annotations

import json

import pytest
from test_training_sft import write_data

from tui.cli import main


def test_train_sft_then_generate_with_the_adapter(tmp_path, tiny_llama, capsys):
    data = write_data(tmp_path / "data.jsonl", n=4)
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {tiny_llama}\ndata: data.jsonl\nout: run\nmax_tokens: 2048\ngrad_accum: 2\n"
                      "epochs: 1\nlr: 1.0e-3\nlora: {r: 2, alpha: 4}\n", encoding="utf-8")
    assert data.exists()
    assert main(["train", "sft", "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["adapter"] == str(tmp_path / "run" / "adapter")
    assert main(["generate", "--model", str(tiny_llama), "--adapter", summary["adapter"], "--prompt", "hi",
                 "--max-tokens", "4", "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"].endswith("+ LoRA adapter")
    # the adapter was trained on MiniCPM4-MCP's dialect, so tool calls default to it with the adapter on
    from runtime.backends.base import load_backend

    assert load_backend("torch", str(tiny_llama), adapter=summary["adapter"]).default_dialect == "minicpm"
    assert load_backend("torch", str(tiny_llama)).default_dialect is None


def test_train_rl_on_tool_calls(tmp_path, tiny_llama, capsys):
    write_data(tmp_path / "data.jsonl", n=2)
    config = tmp_path / "rl.yaml"
    config.write_text(f"model: {tiny_llama}\ntask: tool_calls\ndata: data.jsonl\nout: run\ngroup_size: 2\n"
                      "batch_groups: 1\nchunk: 4\nmax_response: 6\niterations: 3\nlora: {r: 2, alpha: 4}\n",
                      encoding="utf-8")
    assert main(["train", "rl", "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 3 and (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "reward_mean" in json.loads(lines[0])


@pytest.mark.parametrize("body, message", [
    ("data: d.jsonl\nout: run\nlr: fast\n", "lr: expected a number"),
    ("data: missing.jsonl\nout: run\n", "missing.jsonl does not exist"),
])
def test_bad_configs_are_one_line_errors(tmp_path, capsys, body, message):
    config = tmp_path / "c.yaml"
    config.write_text(body, encoding="utf-8")
    assert main(["train", "sft", "--config", str(config)]) == 1
    assert message in capsys.readouterr().err


def test_unknown_adapter_is_refused_before_loading(capsys):
    assert main(["generate", "--adapter", "no-such-adapter", "--prompt", "hi", "--max-tokens", "1"]) == 1
    assert "neither a folder nor a shipped adapter" in capsys.readouterr().err


def test_chat_takes_an_adapter_for_new_chats():
    from tui.cli import build_parser
    from tui.commands.chat import new_chat_options
    from tui.engine import ChatOptions

    args = build_parser().parse_args(["chat", "--adapter", "smollm2-mcp", "--kv-dtype", "bfloat16"])
    options = new_chat_options(ChatOptions(), args)
    assert options.adapter == "smollm2-mcp" and "smollm2-mcp" in options.load_key()
    assert options.kv_dtype == "bfloat16"
    assert ChatOptions.from_settings("default", "auto", {"quant": "int4"}).kv_dtype == "auto"  # a chat from before
    assert ChatOptions.from_settings("default", "auto", options.to_settings()).adapter == "smollm2-mcp"
    from runtime.errors import MiniCPMError

    with pytest.raises(MiniCPMError, match="adapter applies to a local model"):
        ChatOptions(backend="openai", base_url="http://127.0.0.1:1/v1", adapter="smollm2-mcp")
