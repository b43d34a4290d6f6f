"""The chat app's steps without its widgets (tui/engine.py, tui/config.py, tui/tool_turns.py), and
`minicpm chat`'s non-interactive flags."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from conftest import run_cli
from runtime.errors import MiniCPMError
from tui.config import ConfigError, TuiConfig
from tui.engine import ChatOptions, HostClosedError, ModelHost, ReplyDelta, ReplyDone, chat_messages, context_usage, stream_reply
from tui_support import ScriptedBackend


def stored(role, content, **fields):
    base = {"thinking": "", "tool_calls": None, "tool_call_id": None, "name": None, "status": "complete", "usage": None}
    return SimpleNamespace(role=role, content=content, **{**base, **fields})


def test_options_check_their_values_and_round_trip_through_settings():
    options = ChatOptions(model="m.gguf", backend="gguf", temperature=0.1, thinking="off", tools=("calc",))
    again = ChatOptions.from_settings("m.gguf", "gguf", json.loads(json.dumps(options.to_settings())))
    assert again == options
    assert options.template_kwargs() == {"enable_thinking": False}
    assert ChatOptions().template_kwargs() == {}
    assert ChatOptions.from_settings("default", "auto", {"unknown_future_field": 1}) == ChatOptions()
    with pytest.raises(MiniCPMError, match="temperature"):
        ChatOptions(temperature=-1)
    with pytest.raises(MiniCPMError, match="server URL"):
        ChatOptions(backend="openai")
    with pytest.raises(MiniCPMError, match="thinking"):
        ChatOptions(thinking="maybe")


def test_chat_messages_leave_out_reasoning_cut_off_replies_and_unanswered_calls():
    messages = chat_messages("Be brief.", [
        stored("user", "hi"),
        stored("assistant", "hello", thinking="greeting"),
        stored("user", "count"),
        stored("assistant", "one two", status="cancelled"),
        stored("user", "note it"),
        stored("assistant", "", tool_calls=[{"id": "a", "name": "add_note", "args": {"title": "x"}},
                                            {"id": "b", "name": "add_note", "args": {"title": "y"}}]),
        stored("tool", '{"id": 1}', tool_call_id="a", name="add_note"),
    ])
    assert messages[:4] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "count"}]
    assert messages[5]["tool_calls"] == [{"id": "a", "type": "function",
                                          "function": {"name": "add_note", "arguments": {"title": "x"}}}]
    assert messages[6] == {"role": "tool", "tool_call_id": "a", "name": "add_note", "content": '{"id": 1}'}
    assert "greeting" not in json.dumps(messages) and "one two" not in json.dumps(messages)


def test_stream_reply_splits_thoughts_and_reports_usage():
    backend = ScriptedBackend("<think>plan the answer</think>The answer is 4.")
    events = list(stream_reply(backend, [{"role": "user", "content": "2+2?"}], ChatOptions()))
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.status == "complete"
    assert done.content == "The answer is 4." and done.thinking == "plan the answer"
    assert done.usage["completion_tokens"] == 6 and done.usage["context_length"] == 4096
    assert any(isinstance(e, ReplyDelta) and e.thought for e in events)
    # a marker's first characters at the very end are text, not a lost thought
    done = list(stream_reply(ScriptedBackend("a <thi"), [{"role": "user", "content": "q"}], ChatOptions()))[-1]
    assert done.content == "a <thi"


def test_stream_reply_cancels_and_reports_backend_errors():
    cancel = threading.Event()
    cancel.set()
    done = list(stream_reply(ScriptedBackend("one two three"), [{"role": "user", "content": "q"}], ChatOptions(),
                             cancel))[-1]
    assert done.status == "cancelled"

    class Failing(ScriptedBackend):
        def chat(self, *args, **kwargs):
            raise MiniCPMError("the server went away")

    done = list(stream_reply(Failing(), [{"role": "user", "content": "q"}], ChatOptions()))[-1]
    assert done.status == "error" and done.error == "the server went away"


def test_context_usage_warns_before_the_context_is_full():
    backend = ScriptedBackend(context_length=10)
    short = ChatOptions(max_tokens=2)
    usage = context_usage(backend, [{"role": "user", "content": "a b c"}], short)
    assert usage.tokens == 3 and usage.warning is None
    usage = context_usage(backend, [{"role": "user", "content": "a b c d e f g h i"}], short)
    assert "90% full" in usage.warning and "room for 1 tokens" in usage.warning
    usage = context_usage(backend, [{"role": "user", "content": " ".join("x" * 12)}], short)
    assert "no longer fits" in usage.warning
    # Below the 80% mark, but the reply's budget (max_tokens) would run past the end of the context.
    usage = context_usage(backend, [{"role": "user", "content": "a b c"}], ChatOptions(max_tokens=8))
    assert "room for 7 tokens of the 8 it may take" in usage.warning


def test_model_host_keeps_one_model_and_reloads_on_change():
    loads = []

    def loader(name, model, **kwargs):
        loads.append((name, model))
        return ScriptedBackend()

    host = ModelHost(loader=loader)
    first = host.get(ChatOptions())
    assert host.get(ChatOptions(temperature=0.1)) is first  # sampling does not reload
    assert host.loaded(ChatOptions(model="other.gguf")) is None
    host.get(ChatOptions(model="other.gguf"))
    assert loads == [("auto", "default"), ("auto", "other.gguf")]


def replying(host: ModelHost) -> tuple[threading.Thread, threading.Event]:
    """A reply worker generating with the chat's model inside busy() until `finish` is set."""
    generating, finish = threading.Event(), threading.Event()

    def reply():
        with host.busy():
            host.get(ChatOptions())
            generating.set()
            finish.wait(10)

    worker = threading.Thread(target=reply)
    worker.start()
    assert generating.wait(10)
    return worker, finish


def test_model_host_never_closes_a_backend_under_a_worker_that_generates():
    closed = []

    class Closing(ScriptedBackend):
        def close(self):
            closed.append(self.model)

    def loader(name, model, **kwargs):
        backend = Closing()
        backend.model = model
        return backend

    host = ModelHost(loader=loader)
    worker, finish = replying(host)
    switched = []
    switch = threading.Thread(target=lambda: switched.append(host.get(ChatOptions(model="other.gguf"))))
    switch.start()  # the settings screen asked for another model: it waits for the reply
    switch.join(0.3)
    assert switch.is_alive() and closed == [] and host.loaded(ChatOptions()) is not None
    # A second worker that generates and wants another model is refused, not left waiting forever.
    with host.busy(), pytest.raises(MiniCPMError, match="still generating"):
        host.get(ChatOptions(model="third.gguf"))
    finish.set()
    worker.join(10)
    switch.join(10)
    assert closed == ["default"] and switched[0].model == "other.gguf"
    assert host.loaded(ChatOptions(model="other.gguf")) is switched[0]
    assert host.close(timeout=1) and closed == ["default", "other.gguf"]


def test_settings_file_errors_name_the_field(tmp_path):
    path = tmp_path / "tui.json"
    assert TuiConfig.load(path).models[0].options.model == "default"  # no file: the embedded model
    for document, message in [
        ("{", "not valid JSON"),
        ('{"colour": "red"}', "unknown setting"),
        ('{"keymap": {"launch": "f1"}}', "unknown binding id"),
        ('{"models": [{"model": "x"}]}', r"models\[0\] needs a \"name\""),
        ('{"new_chat": {"temperature": "hot"}}', "new_chat"),
        ('{"new_chat": {"backend": "openai"}}', "server URL"),
    ]:
        path.write_text(document)
        with pytest.raises(ConfigError, match=message):
            TuiConfig.load(path)
    path.write_text('{"theme": "nord", "keymap": {"new_chat": "f5"}, "new_chat": {"temperature": 0.3}}')
    config = TuiConfig.load(path)
    assert config.keys()["new_chat"] == "f5" and config.keys()["send"] == "enter"
    config.save_theme("gruvbox")
    assert json.loads(path.read_text()) == {"theme": "gruvbox", "keymap": {"new_chat": "f5"},
                                            "new_chat": {"temperature": 0.3}}


def test_chat_cli_lists_chats_and_refuses_bad_input(tmp_path):
    env = {"MINICPM_HOME": str(tmp_path)}
    out = run_cli("chat", "--list", env=env)
    assert out.returncode == 0 and "no saved chats yet" in out.stdout
    out = run_cli("chat", "--paths", env=env)
    assert out.returncode == 0 and str(tmp_path / "chats.sqlite") in out.stdout
    out = run_cli("chat", "--open", "nosuchchat", env=env)
    assert out.returncode == 1 and "nosuchchat" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "tui.json").write_text('{"theme": 3}')
    out = run_cli("chat", "--list", env=env)
    assert out.returncode == 1 and "theme" in out.stderr
    (tmp_path / "tui.json").unlink()
    out = run_cli("chat", "--tools", "nosuchserver", env=env)
    assert out.returncode == 1 and "no MCP server named nosuchserver" in out.stderr


def test_local_models_are_offered_in_the_picker(tmp_path):
    from tui.config import local_models

    (tmp_path / "small.gguf").write_bytes(b"GGUF")
    checkpoint = tmp_path / "MiniCPM4-8B"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    found = {entry.name: entry.options for entry in local_models([tmp_path])}
    assert found == {"MiniCPM4-8B (torch)": ChatOptions(model=str(checkpoint), backend="torch"),
                     "small.gguf (llama.cpp)": ChatOptions(model=str(tmp_path / "small.gguf"), backend="gguf")}


def test_a_switch_still_waiting_when_the_app_closes_loads_nothing():
    loads = []
    host = ModelHost(loader=lambda name, model, **kw: loads.append(model) or ScriptedBackend())
    worker, finish = replying(host)
    failures = []

    def switch():
        try:
            host.get(ChatOptions(model="other.gguf"))
        except HostClosedError as exc:
            failures.append(str(exc))

    switching = threading.Thread(target=switch)
    switching.start()
    switching.join(0.2)
    closing = threading.Thread(target=lambda: host.close(timeout=10))
    closing.start()  # the app quits while the reply still runs and the switch still waits
    finish.set()
    for thread in (worker, switching, closing):
        thread.join(10)
    assert loads == ["default"] and failures == ["the chat is closing: no model loads any more"]
    assert host.backend is None


def test_the_header_names_quantized_weights(tiny_minicpm):
    from runtime.backends.torch_backend import TorchBackend
    from tui.engine import describe_backend

    assert describe_backend(TorchBackend.load(str(tiny_minicpm)))["attention"] == "dense attention"
    quantized = describe_backend(TorchBackend.load(str(tiny_minicpm), quant="int8"))
    assert quantized["attention"] == "dense attention · int8 weights" and quantized["backend"] == "torch"
    with pytest.raises(MiniCPMError, match="quant must be none, int8 or int4"):
        ChatOptions(quant="int2")
    drafting = describe_backend(TorchBackend.load(str(tiny_minicpm), speculative="lookup"))
    assert drafting["attention"] == "dense attention · lookup drafts"
    with pytest.raises(MiniCPMError, match="speculative decoding must be none, lookup or eagle"):
        ChatOptions(speculative="medusa")
    assert ChatOptions().load_key() != ChatOptions(speculative="lookup").load_key()  # another backend object


def test_a_kv_cache_in_its_own_dtype_is_named_and_checked(tiny_minicpm):
    from runtime.backends.base import load_backend
    from runtime.backends.torch_backend import TorchBackend
    from tui.engine import describe_backend

    half = TorchBackend.load(str(tiny_minicpm), kv_dtype="bfloat16")  # a float32 model (auto: under 2B)
    assert describe_backend(half)["attention"] == "dense attention · bfloat16 KV cache"
    assert any(d.startswith("KV cache in bfloat16 (compute in float32") for d in half.details)
    assert str(half.loaded.model.new_cache(8).k.dtype) == "torch.bfloat16"
    same = TorchBackend.load(str(tiny_minicpm), kv_dtype="float32")  # the compute dtype already: nothing to do
    assert same.loaded.model.kv_dtype is None and describe_backend(same)["attention"] == "dense attention"
    with pytest.raises(MiniCPMError, match="--kv-dtype must be one of auto, float32, bfloat16"):
        load_backend("torch", str(tiny_minicpm), kv_dtype="int8")
    with pytest.raises(MiniCPMError, match="the KV cache dtype must be auto, float32 or bfloat16"):
        ChatOptions(kv_dtype="float16")
    assert ChatOptions().load_key() != ChatOptions(kv_dtype="bfloat16").load_key()


def test_a_chat_with_eagle_decoding_loads_the_head_and_replies_as_plain_decoding_does(tmp_path, tiny_minicpm):
    from test_eagle import upstream_head
    from tui.engine import describe_backend

    with pytest.raises(MiniCPMError, match="eagle decoding needs an Eagle head folder"):
        ChatOptions(speculative="eagle")
    with pytest.raises(MiniCPMError, match="apply to eagle decoding only"):
        ChatOptions(speculative="lookup", frspec_vocab=64)
    head, _ = upstream_head(tmp_path / "head", json.loads((tiny_minicpm / "config.json").read_text()))
    plain = ChatOptions(model=str(tiny_minicpm), backend="torch", temperature=0.0, max_tokens=12)
    eagle = ChatOptions(model=str(tiny_minicpm), backend="torch", temperature=0.0, max_tokens=12,
                        speculative="eagle", draft_model=str(head))
    assert ChatOptions.from_settings(eagle.model, eagle.backend, eagle.to_settings()) == eagle
    assert eagle.load_key() != plain.load_key()
    messages = [{"role": "user", "content": "Tell me about printing"}]
    host = ModelHost()
    replies = {}
    for name, options in (("plain", plain), ("eagle", eagle)):
        backend = host.get(options)
        replies[name] = "".join(e.text for e in stream_reply(backend, messages, options) if isinstance(e, ReplyDelta))
        if name == "eagle":
            assert describe_backend(backend)["attention"] == "dense attention · eagle drafts"
    host.close()
    assert replies["eagle"] == replies["plain"] and replies["plain"]
