"""`minicpm generate` and `minicpm convert` as a user runs them: output, --json, and bad input."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from test_gguf import with_unknown_quant_type, write_unsupported_architecture


def assert_user_error(result, *words):
    """A user mistake: non-zero exit, one `minicpm: error:` line naming the problem, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("minicpm: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_generate_on_the_embedded_model_streams_an_answer():
    result = run_cli("generate", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_generate_json_reports_text_tokens_counts_and_timings():
    result = run_cli("generate", "--prompt", "Say hello.", "--max-tokens", "12", "--seed", "5", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["text"] and out["completion_tokens"] == len(out["tokens"]) <= 12
    assert out["prompt_tokens"] > 5 and out["prefill_seconds"] > 0 and out["decode_seconds"] >= 0
    assert out["finish_reason"] in ("stop", "length") and out["backend"] == "torch" and out["seed"] == 5
    again = json.loads(run_cli("generate", "--prompt", "Say hello.", "--max-tokens", "12", "--seed", "5", "--json").stdout)
    assert again["tokens"] == out["tokens"]  # a seed reproduces a sampled run


def test_generate_on_llama_cpp_reads_stdin_and_speaks_the_same_json():
    result = run_cli("generate", "--backend", "gguf", "--max-tokens", "8", "--temperature", "0", "--json",
                     input="What is the capital of France?")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["backend"] == "gguf" and out["completion_tokens"] == len(out["tokens"]) > 0


def test_generate_raw_continues_text_without_the_chat_template(tiny_minicpm):
    from runtime.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_hf_folder(tiny_minicpm, [])
    result = run_cli("generate", "--model", str(tiny_minicpm), "--raw", "--prompt", "We hold",
                     "--max-tokens", "4", "--temperature", "0", "--json")
    out = json.loads(result.stdout)
    assert out["prompt_tokens"] == len(tokenizer.encode("We hold"))  # BOS and the text, nothing around it
    assert out["completion_tokens"] == 4


def test_stop_strings_and_system_prompts_reach_the_model():
    args = ["generate", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-tokens", "16", "--json"]
    plain = json.loads(run_cli(*args).stdout)
    assert "Paris" in plain["text"]
    stopped = json.loads(run_cli(*args, "--stop", " Paris").stdout)
    assert stopped["finish_reason"] == "stop" and "Paris" not in stopped["text"]
    assert plain["text"].startswith(stopped["text"])
    system = json.loads(run_cli(*args, "--system", "You answer in one word, always in capital letters.").stdout)
    assert system["prompt_tokens"] != plain["prompt_tokens"]  # the template replaced its default system line


def test_template_args_reach_the_chat_template(tiny_minicpm, tmp_path):
    folder = checkpoint_copy(tiny_minicpm, tmp_path / "ckpt")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% if enable_thinking is defined and not enable_thinking %}/no_think {% endif %}" + config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    args = ["generate", "--model", str(folder), "--prompt", "hi", "--max-tokens", "1", "--json"]
    default = json.loads(run_cli(*args).stdout)
    off = json.loads(run_cli(*args, "--template-arg", "enable_thinking=false").stdout)
    assert off["prompt_tokens"] > default["prompt_tokens"]
    assert_user_error(run_cli(*args, "--template-arg", "messages=1"), "messages", "set by the suite")


def test_tokens_longer_than_32_bytes_keep_their_text_on_llama_cpp():
    """SmolLM2 has single tokens for 80 '#': llama-cpp-python's own detokenizer drops such pieces."""
    prompt = ("#" * 80 + "\n# Section\n") * 4
    args = ["generate", "--raw", "--prompt", prompt, "--temperature", "0", "--max-tokens", "12", "--json"]
    on_torch = json.loads(run_cli(*args).stdout)
    on_llama = json.loads(run_cli(*args, "--backend", "gguf").stdout)
    assert on_torch["tokens"][:3] == on_llama["tokens"][:3]
    assert "#" * 80 in on_torch["text"] and "#" * 80 in on_llama["text"]


@pytest.mark.parametrize("backend", ["torch", "gguf"])
def test_an_empty_raw_prompt(backend):
    assert_user_error(run_cli("generate", "--backend", backend, "--raw", "--prompt", ""), "empty")


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--seed", "-1"], "seed"),
        (["--seed", str(2**40)], "seed"),
        (["--temperature", "nan"], "temperature"),
        (["--repeat-penalty", "nan"], "repetition_penalty"),
        (["--threads", "-1"], "--threads"),
        (["--ctx", "1"], "--ctx must be at least 2"),
        (["--backend", "gguf", "--ctx", "-5"], "--ctx must be at least 2"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--top-logprobs", "3"], "--json"),
    ],
)
def test_bad_flag_values_are_one_line_errors(flags, words):
    assert_user_error(run_cli("generate", "--prompt", "x", *flags), words)


def test_a_tiny_temperature_is_greedy_not_a_crash():
    result = run_cli("generate", "--prompt", "Hi", "--temperature", "1e-30", "--max-tokens", "4")
    assert result.returncode == 0, result.stderr


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "minicpm"
    assert script.exists() or shutil.which("minicpm")
    import subprocess

    out = subprocess.run([str(script) if script.exists() else "minicpm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout and "convert" in out.stdout


def checkpoint_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_config(tiny_minicpm, tmp_path):
    folder = checkpoint_copy(tiny_minicpm, tmp_path / "ckpt")
    (folder / "config.json").unlink()
    assert_user_error(run_cli("generate", "--model", str(folder), "--prompt", "x"), "no config.json")


def test_corrupt_config(tiny_minicpm, tmp_path):
    folder = checkpoint_copy(tiny_minicpm, tmp_path / "ckpt")
    (folder / "config.json").write_text('{"model_type": "minicpm", ')
    assert_user_error(run_cli("generate", "--model", str(folder), "--prompt", "x"), "config.json", "not valid JSON")


def test_missing_weights(tiny_minicpm, tmp_path):
    folder = checkpoint_copy(tiny_minicpm, tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    assert_user_error(run_cli("generate", "--model", str(folder), "--prompt", "x"), "no *.safetensors")


def test_corrupt_weights(tiny_minicpm, tmp_path):
    folder = checkpoint_copy(tiny_minicpm, tmp_path / "ckpt")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert_user_error(run_cli("generate", "--model", str(folder), "--prompt", "x"), "model.safetensors", "re-download")


def test_weights_that_do_not_match_the_config(tiny_minicpm, tmp_path):
    folder = checkpoint_copy(tiny_minicpm, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    assert_user_error(run_cli("generate", "--model", str(folder), "--prompt", "x"), "model.layers.3")


def test_corrupt_gguf(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:4000])
    assert_user_error(run_cli("generate", "--model", str(cut), "--prompt", "x"), "corrupt or truncated")


def test_gguf_of_an_unsupported_architecture(tmp_path):
    path = write_unsupported_architecture(tmp_path / "mamba.gguf")
    assert_user_error(run_cli("generate", "--model", str(path), "--prompt", "x"), "mamba", "--backend gguf")


def test_unknown_quant_type(tiny_gguf, tmp_path):
    path = with_unknown_quant_type(tiny_gguf, tmp_path / "weird.gguf")
    assert_user_error(run_cli("generate", "--model", str(path), "--prompt", "x"), "quantization type")


@pytest.mark.parametrize("backend", ["torch", "gguf"])
def test_prompt_longer_than_the_context(tiny_gguf, backend):
    result = run_cli("generate", "--model", str(tiny_gguf), "--backend", backend, "--ctx", "16",
                     "--prompt", "We hold these truths to be self-evident, that all men are created equal.")
    assert_user_error(result, "the prompt is", "context holds 16")


def test_hub_id_without_network():
    offline = run_cli("generate", "--model", "openbmb/MiniCPM4-0.5B", "--prompt", "x", env={"HF_HUB_OFFLINE": "1"})
    assert_user_error(offline, "openbmb/MiniCPM4-0.5B", "HF_HUB_OFFLINE")
    # Online mode against an address where nothing listens: what a machine without network sees.
    unreachable = run_cli("generate", "--model", "openbmb/MiniCPM4-0.5B", "--prompt", "x",
                          env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": "/tmp/minicpm-test-hf"})
    assert_user_error(unreachable, "cannot download 'openbmb/MiniCPM4-0.5B'")


def test_unknown_model_and_missing_path():
    assert_user_error(run_cli("generate", "--model", "smollm", "--prompt", "x"), "unknown model 'smollm'")
    assert_user_error(run_cli("generate", "--model", "./nowhere/model.gguf", "--prompt", "x"), "does not exist")


def test_gguf_backend_refuses_a_checkpoint_folder(tiny_minicpm):
    assert_user_error(run_cli("generate", "--model", str(tiny_minicpm), "--backend", "gguf", "--prompt", "x"),
                      "minicpm convert")


def test_bad_sampling_options_and_template_args():
    assert_user_error(run_cli("generate", "--prompt", "x", "--top-p", "0"), "top_p")
    assert_user_error(run_cli("generate", "--prompt", "x", "--template-arg", "no-equals"), "KEY=VALUE")


def test_convert_refuses_to_overwrite_without_force(tiny_minicpm, tmp_path):
    out = tmp_path / "tiny.gguf"
    assert run_cli("convert", str(tiny_minicpm), str(out), "--outtype", "f16").returncode == 0
    assert_user_error(run_cli("convert", str(tiny_minicpm), str(out)), "already exists", "--force")
    assert run_cli("convert", str(tiny_minicpm), str(out), "--force", "--json").returncode == 0
    assert not list(tmp_path.glob("*.partial"))  # no temporary file left behind


def test_convert_checks_the_output_before_converting(tiny_minicpm, tmp_path):
    assert_user_error(run_cli("convert", str(tiny_minicpm), str(tmp_path), "--force"), "is a folder")
    assert_user_error(run_cli("convert", str(tiny_minicpm), "/etc/hostname/model.gguf"), "cannot create the folder")


def test_convert_of_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("convert", str(tmp_path / "empty"), str(tmp_path / "x.gguf")), "config.json")


def test_sparse_attention_from_the_command_line(tiny_minicpm, tiny_gguf):
    args = ["generate", "--raw", "--prompt", "We hold these truths to be self-evident, that all men are created equal",
            "--max-tokens", "8", "--temperature", "0", "--verbose"]
    sparse = run_cli(*args, "--model", str(tiny_minicpm), "--sparse", "on", "--sparse-dense-len", "16",
                     "--sparse-window", "64", "--sparse-topk", "2")
    assert sparse.returncode == 0, sparse.stderr
    assert "InfLLM v2 sparse attention from 16 tokens on: top 3 blocks" in sparse.stderr
    dense = run_cli(*args, "--model", str(tiny_minicpm))  # auto: no sparse_config in this checkpoint
    assert "dense attention" in dense.stderr
    ignored = run_cli(*args, "--model", str(tiny_minicpm), "--sparse-topk", "2")
    assert "--sparse-topk has no effect" in ignored.stderr
    on_llama = run_cli(*args, "--model", str(tiny_gguf), "--backend", "gguf", "--sparse", "on")
    assert on_llama.returncode == 0 and "llama.cpp has no InfLLM v2 sparse attention" in on_llama.stderr
    assert_user_error(run_cli(*args, "--model", str(tiny_minicpm), "--sparse", "on", "--sparse-window", "100"),
                      "window_size")


def test_a_kv_cache_dtype_from_the_command_line(tiny_minicpm, tiny_gguf):
    args = ["generate", "--raw", "--prompt", "We hold these truths to be self-evident", "--max-tokens", "8",
            "--temperature", "0", "--verbose"]
    half = run_cli(*args, "--model", str(tiny_minicpm), "--kv-dtype", "bfloat16", "--sparse", "on",
                   "--sparse-dense-len", "4")
    assert half.returncode == 0, half.stderr
    assert "KV cache in bfloat16 (compute in float32" in half.stderr and "generated" in half.stderr
    on_llama = run_cli(*args, "--model", str(tiny_gguf), "--backend", "gguf", "--kv-dtype", "bfloat16")
    assert on_llama.returncode == 0 and "--kv-dtype bfloat16 is the torch backend's" in on_llama.stderr
    wrong = run_cli(*args, "--model", str(tiny_minicpm), "--kv-dtype", "int8")
    assert wrong.returncode != 0 and "invalid choice: 'int8'" in wrong.stderr


def test_runtime_notices_are_said_once(tiny_minicpm):
    """A path that cannot honour sparse attention says so once, however many layers meet it."""
    code = (
        "import logging, torch\n"
        "from tui.cli import show_runtime_notices\n"
        "from runtime.loading import load_torch_model\n"
        "from runtime.sparse_attention import SparseSettings\n"
        "show_runtime_notices()\n"
        f"model = load_torch_model({str(tiny_minicpm)!r}, 'float32').model\n"
        "model.sparse = SparseSettings(block_size=16, kernel_size=8, kernel_stride=4, window_size=32, topk=3, dense_len=0)\n"
        "model(torch.randint(3, 500, (2, 40)))\n"  # a batch of two: the sparse path takes one sequence
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("minicpm: note:")]
    assert len(notes) == 1 and "runs dense attention" in notes[0]
