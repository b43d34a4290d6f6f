"""The openai backend against two real peers.

- llama-cpp-python's own server (`python -m llama_cpp.server`) on the embedded SmolLM2: streaming,
  greedy determinism, max_tokens and stop strings, logprobs, raw completions, and tool calls under
  its `chatml-function-calling` format (it can only stream a forced call, so that is what is tested).
- A small scripted HTTP server written here, for what a healthy server never does on demand: 429
  with Retry-After, 5xx, dropped connections, stalls, bad keys, in-stream errors, and tool-call
  deltas split and interleaved the way vLLM sends them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from runtime.backends.base import load_backend
from runtime.backends.openai_backend import OpenAIBackend, RemoteServerError, normalise_base_url
from runtime.backends.openai_stream import UNKNOWN_TOKEN
from runtime.errors import BackendUnavailableError, ContextLengthError, MiniCPMError, ModelNotFoundError
from runtime.events import SamplingParams
from runtime.messages import InvalidRequestError

GREEDY = SamplingParams(max_tokens=16, temperature=0, seed=1)
HELLO = [{"role": "user", "content": "Name three colours."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_of(events) -> str:
    return "".join(e.text for e in events)


# ---------------------------------------------------------------- llama-cpp-python's server


@pytest.fixture(scope="session")
def llama_server(embedded_path: Path, tmp_path_factory) -> str:
    """llama_cpp.server with the embedded model under two names: plain chat, and tool calling."""
    folder = tmp_path_factory.mktemp("llama-server")
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "models": [
        {"model": str(embedded_path), "model_alias": "smollm2", "n_ctx": 2048, "verbose": False},
        {"model": str(embedded_path), "model_alias": "smollm2-tools", "n_ctx": 2048, "verbose": False,
         "chat_format": "chatml-function-calling"}]}
    (folder / "config.json").write_text(json.dumps(config))
    log = (folder / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(folder / "config.json")],
                               stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start:\n" + (folder / "server.log").read_text()[-3000:])
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def llama_backend(llama_server) -> OpenAIBackend:
    backend = OpenAIBackend.load("smollm2", base_url=llama_server)
    yield backend
    backend.close()


@pytest.mark.slow
def test_load_picks_and_checks_models(llama_server):
    first = load_backend("openai", "default", base_url=llama_server.removesuffix("/v1"))  # /v1 added
    assert first.model == "smollm2" and first.model_label == f"smollm2 at {llama_server}"
    assert any("first model, smollm2" in n and "smollm2-tools" in n for n in first.notices)
    # llama-cpp-python's server does not report its context: the documented default, said aloud.
    assert first.context_length == 32768 and any("--ctx" in n for n in first.notices)
    assert first.chat_template is None
    first.close()
    tools = OpenAIBackend.load("smollm2-tools", base_url=llama_server, context_length=2048)
    assert tools.context_length == 2048
    tools.close()
    with pytest.raises(ModelNotFoundError, match="does not serve 'nope'; it serves: smollm2, smollm2-tools"):
        OpenAIBackend.load("nope", base_url=llama_server)


@pytest.mark.slow
def test_chat_stream_matches_the_servers_own_reply(llama_backend, llama_server):
    events = list(llama_backend.chat(HELLO, GREEDY))
    *tokens, last = events
    reference = httpx.post(f"{llama_server}/chat/completions", timeout=60, json={
        "model": "smollm2", "messages": HELLO, "max_tokens": 16, "temperature": 0, "seed": 1}).json()
    assert text_of(events) == reference["choices"][0]["message"]["content"] != ""
    # No token ids from a server: text deltas with token None, which is_progress tells from progress.
    assert all(e.token is None and e.text and not e.is_progress and e.finish_reason is None for e in tokens)
    assert last.finish_reason == reference["choices"][0]["finish_reason"]
    assert last.completion_tokens == len(tokens) > 0
    assert last.prefill_seconds > 0 and last.decode_seconds > 0
    assert text_of(llama_backend.chat(HELLO, GREEDY)) == text_of(events)  # greedy is deterministic


@pytest.mark.slow
def test_max_tokens_and_stop_strings(llama_backend):
    events = list(llama_backend.chat(HELLO, SamplingParams(max_tokens=5, temperature=0)))
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 5
    assert len(events) == 6  # llama-cpp-python streams one token per chunk
    full = text_of(llama_backend.chat(HELLO, GREEDY))
    stop = full.split()[2]
    stopped = list(llama_backend.chat(HELLO, SamplingParams(max_tokens=16, temperature=0, seed=1, stop=(stop,))))
    assert text_of(stopped) == full[: full.index(stop)]
    assert stopped[-1].finish_reason == "stop"


@pytest.mark.slow
def test_logprobs_come_through(llama_backend):
    params = SamplingParams(max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    tokens = list(llama_backend.chat(HELLO, params))[:-1]
    assert len(tokens) == 4
    for event in tokens:
        assert {t for t, _ in event.top_logprobs} == {UNKNOWN_TOKEN}  # named by text only on the wire
        values = [lp for _, lp in event.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert event.logprob == pytest.approx(values[0])  # greedy takes the most likely
        assert event.logprob <= 0


@pytest.mark.slow
def test_complete_continues_raw_text(llama_backend):
    events = list(llama_backend.complete("The capital of France is", SamplingParams(max_tokens=6, temperature=0)))
    assert "Paris" in text_of(events)
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 6
    scored = list(llama_backend.complete("One, two,", SamplingParams(max_tokens=3, temperature=0, top_logprobs=2)))
    assert all(len(e.top_logprobs) == 2 for e in scored[:-1])


@pytest.mark.slow
def test_forced_tool_call_from_the_server(llama_server):
    backend = OpenAIBackend.load("smollm2-tools", base_url=llama_server)
    events = list(backend.chat([{"role": "user", "content": "What is the weather in Paris?"}],
                               SamplingParams(max_tokens=40, temperature=0), tools=[WEATHER_TOOL],
                               tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    last = events[-1]
    assert last.finish_reason == "tool_calls" and last.tool_call_error is None
    (call,) = last.tool_calls
    assert call.name == "get_weather" and call.id and isinstance(call.arguments.get("city"), str)
    assert text_of(events) == ""  # the call is not prose
    backend.close()


@pytest.mark.slow
def test_no_token_layer_on_a_server(llama_backend):
    for attempt in (lambda: llama_backend.tokenize("hi"), lambda: llama_backend.decode([1]),
                    lambda: llama_backend.render_chat(HELLO),
                    lambda: llama_backend.generate_tokens([1, 2], GREEDY)):
        with pytest.raises(BackendUnavailableError, match="works on messages and text, not token ids"):
            attempt()


# ---------------------------------------------------------------- a scripted server


Action = Callable[[BaseHTTPRequestHandler], None]
MODELS = {"object": "list", "data": [{"id": "fake-model", "object": "model", "max_model_len": 4096}]}


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next scripted action; GET /v1/models lists one model by default."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.actions: deque[Action] = deque()
        self.requests: list[dict] = []  # method, path, headers, body of each request
        self.client_gone = threading.Event()  # a streaming handler saw the client hang up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is part of the script
            super().handle_error(request, client_address)

    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, like a real server

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def handle_request(self, method: str):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append({"method": method, "path": self.path, "headers": dict(self.headers), "body": body})
        if self.server.actions:
            self.server.actions.popleft()(self)
        elif self.path.endswith("/models"):
            reply(200, MODELS)(self)
        else:
            reply(500, {"error": {"message": "no scripted reply"}})(self)


def reply(status: int, body: dict, headers: dict | None = None) -> Action:
    def act(handler):
        data = json.dumps(body).encode()
        handler.send_response(status)
        headers_out = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        for key, value in headers_out.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)
    return act


def start_stream(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def send_piece(handler, text: str):
    data = text.encode()
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def hang_up(handler):
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return {"object": "chat.completion.chunk", "choices": choices, **({"usage": usage} if usage else {})}


def sse(chunks: list, *, done: bool = True, end: bool = True) -> Action:
    """A 200 event stream of these chunks (dicts become data lines, strings are sent raw)."""
    def act(handler):
        start_stream(handler)
        for item in chunks:
            send_piece(handler, item if isinstance(item, str) else f"data: {json.dumps(item)}\n\n")
        if done:
            send_piece(handler, "data: [DONE]\n\n")
        if end:
            handler.wfile.write(b"0\r\n\r\n")
        else:  # a connection that breaks in the middle of the body
            hang_up(handler)
    return act


def drop(handler):
    """The connection closes before a single byte of the response."""
    hang_up(handler)


def stall(seconds: float) -> Action:
    def act(handler):
        time.sleep(seconds)
        hang_up(handler)
    return act


def endless(handler):
    """One token every 10 ms until the client hangs up."""
    start_stream(handler)
    try:
        for _ in range(1000):
            send_piece(handler, f"data: {json.dumps(chunk({'content': 'la '}))}\n\n")
            time.sleep(0.01)
    except (BrokenPipeError, ConnectionResetError):
        handler.server.client_gone.set()
        handler.close_connection = True


HELLO_REPLY = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
               chunk(finish="stop"), chunk(usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9})]


@pytest.fixture()
def fake():
    server = ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def fake_backend(fake: ScriptedServer, **options) -> OpenAIBackend:
    options = {"backoff_base": 0.01, "max_attempts": 3, **options}
    return OpenAIBackend.load(None, base_url=fake.url, **options)


def test_usage_text_and_sse_details(fake):
    backend = fake_backend(fake)
    assert backend.context_length == 4096 and backend.notices == []  # max_model_len, as vLLM reports it
    # Keep-alive comments, "data:" without its space, a [DONE] followed by junk that must not be read.
    no_space = 'data:{"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
    fake.actions.append(sse([": keep-alive\n\n", HELLO_REPLY[0], no_space, *HELLO_REPLY[2:], "data: [DONE]\n\n",
                             "data: not json\n\n"], done=False))
    events = list(backend.chat(HELLO, GREEDY))
    assert text_of(events) == "Hello" and len(events) == 3
    last = events[-1]
    assert (last.finish_reason, last.prompt_tokens, last.prompt_processed, last.completion_tokens) == ("stop", 7, 7, 2)


def test_sampling_params_on_the_wire(fake, monkeypatch):
    monkeypatch.setenv("MINICPM_API_KEY", "sk-test")
    monkeypatch.setenv("MINICPM_BASE_URL", fake.url.removesuffix("/v1") + "/")
    backend = OpenAIBackend.load("fake-model", backoff_base=0.01)
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    params = SamplingParams(max_tokens=10, temperature=0.5, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                            seed=3, stop=("END",), logprobs=True, top_logprobs=2)
    fake.actions.append(sse(HELLO_REPLY))
    list(backend.chat(messages, params, tools=[WEATHER_TOOL], tool_choice="required", enable_thinking=False))
    request = fake.posts()[-1]
    assert request["path"] == "/v1/chat/completions" and request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'  # a JSON string again
    assert body["messages"][2]["tool_call_id"] == "call_1"
    expected = {"model": "fake-model", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 10,
                "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.2, "seed": 3,
                "stop": ["END"], "logprobs": True, "top_logprobs": 2, "tool_choice": "required",
                "chat_template_kwargs": {"enable_thinking": False}}
    assert {k: body[k] for k in expected} == expected
    assert body["tools"][0]["function"]["name"] == "get_weather"

    # Off values stay off the wire; a budget beyond the context is left to the server.
    fake.actions.append(sse(HELLO_REPLY))
    list(backend.chat(HELLO, SamplingParams(max_tokens=2**31, temperature=0)))
    body = fake.posts()[-1]["body"]
    assert not {"top_k", "min_p", "repetition_penalty", "max_tokens", "seed", "stop", "logprobs", "tools"} & set(body)


def test_bad_requests_fail_before_sending(fake):
    backend = fake_backend(fake)
    with pytest.raises(InvalidRequestError, match="role"):
        backend.chat([{"role": "robot", "content": "hi"}], GREEDY)
    with pytest.raises(InvalidRequestError, match="not among the tools"):
        backend.chat(HELLO, GREEDY, tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "x"}})
    assert fake.posts() == []


def test_tool_call_deltas_are_assembled(fake):
    backend = fake_backend(fake)
    # Two calls interleaved by index, the id and name only in each call's first delta, the
    # arguments in pieces that split JSON tokens (vLLM's shape).
    def call(index, arguments, name=None):
        entry = {"index": index, "function": {"arguments": arguments}}
        if name:
            entry.update(id=f"call_{name}", type="function")
            entry["function"]["name"] = name
        return chunk({"tool_calls": [entry]})
    fake.actions.append(sse([chunk({"role": "assistant", "content": "Checking."}), call(0, "", "get_weather"),
                             call(0, '{"ci'), call(1, '{"q": ', "search"), call(0, 'ty": "Pa'),
                             call(1, '"x"}'), call(0, 'ris"}'), chunk(finish="tool_calls")]))
    events = list(backend.chat(HELLO, GREEDY, tools=[WEATHER_TOOL]))
    last = events[-1]
    assert text_of(events) == "Checking."
    assert last.finish_reason == "tool_calls" and last.tool_call_error is None
    assert len(events) == 2 and last.completion_tokens == 7  # no usage sent: one token per chunk
    assert [(c.id, c.name, c.arguments) for c in last.tool_calls] == [
        ("call_get_weather", "get_weather", {"city": "Paris"}), ("call_search", "search", {"q": "x"})]
    assert all(e.tool_calls == () for e in events[:-1])


def test_malformed_tool_arguments_become_a_tool_call_error(fake):
    backend = fake_backend(fake)
    bad = {"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": '{"city": Paris}'}}
    fake.actions.append(sse([chunk({"tool_calls": [bad]}), chunk(finish="tool_calls")]))
    last = list(backend.chat(HELLO, GREEDY, tools=[WEATHER_TOOL]))[-1]
    assert last.tool_calls == () and last.finish_reason == "stop"
    assert "arguments of get_weather are not valid JSON" in last.tool_call_error and "Paris" in last.tool_call_error


def test_logprobs_of_a_chunk_with_several_tokens(fake):
    backend = fake_backend(fake)

    def scored(content, *pieces, id=None):
        entries = [{"token": t, "logprob": lp, "top_logprobs": [{"token": t, "logprob": lp}]} for t, lp in pieces]
        if id is not None:
            entries[0]["id"] = id
        return {"choices": [{"index": 0, "delta": {"content": content}, "logprobs": {"content": entries}}]}

    fake.actions.append(sse([scored("Hello", ("Hel", -0.5), ("lo", -0.1)),
                             scored(" wörld", (" w", -1.0), ("bytes:\\xc3", -2.0)),  # vLLM's byte-token form
                             scored("!", ("!", -3.0), id=0), chunk(finish="stop")]))
    events = list(backend.chat(HELLO, GREEDY))
    # Split where the tokens spell the text; one event without a logprob where they do not;
    # a server-given id comes through.
    assert [(e.text, e.token, e.logprob) for e in events[:-1]] == [
        ("Hel", None, -0.5), ("lo", None, -0.1), (" wörld", None, None), ("!", 0, -3.0)]
    assert events[0].top_logprobs == ((UNKNOWN_TOKEN, -0.5),)
    assert events[-1].completion_tokens == 5 and not any(e.is_progress for e in events)


def test_reasoning_comes_back_inline(fake):
    backend = fake_backend(fake)
    fake.actions.append(sse([chunk({"reasoning_content": "Hmm, "}), chunk({"reasoning_content": "easy."}),
                             chunk({"content": "Red."}), chunk(finish="stop")]))
    assert text_of(backend.chat(HELLO, GREEDY)) == "<think>Hmm, easy.</think>Red."


def test_429_waits_for_retry_after(fake):
    backend = fake_backend(fake)
    fake.actions.extend([reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}), sse(HELLO_REPLY)])
    start = time.monotonic()
    assert text_of(backend.chat(HELLO, GREEDY)) == "Hello"
    assert time.monotonic() - start >= 0.9  # honoured, though the backoff base is 10 ms
    assert len(fake.posts()) == 2


def test_5xx_drops_and_stalls_before_output_are_retried(fake):
    backend = fake_backend(fake, max_attempts=4, read_timeout=0.3)
    fake.actions.extend([reply(503, {"error": "loading"}), reply(502, {"error": "bad gateway"}), sse(HELLO_REPLY)])
    assert text_of(backend.chat(HELLO, GREEDY)) == "Hello" and len(fake.posts()) == 3
    fake.actions.extend([drop, sse(HELLO_REPLY)])
    assert text_of(backend.chat(HELLO, GREEDY)) == "Hello" and len(fake.posts()) == 5
    fake.actions.extend([stall(1.0), sse(HELLO_REPLY)])  # longer than the read timeout
    assert text_of(backend.chat(HELLO, GREEDY)) == "Hello" and len(fake.posts()) == 7
    # Headers came, then the connection broke before any text: nothing delivered yet, so retried.
    call = chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": "{"}}]})
    fake.actions.extend([sse([HELLO_REPLY[0], call], done=False, end=False), sse(HELLO_REPLY)])
    assert text_of(backend.chat(HELLO, GREEDY)) == "Hello" and len(fake.posts()) == 9


def test_a_server_that_keeps_failing_gives_up_clearly(fake):
    backend = fake_backend(fake)
    fake.actions.extend([reply(500, {"error": {"message": "CUDA out of memory"}})] * 3)
    start = time.monotonic()
    gave_up = r"answered 500 .*CUDA out of memory.*\(3 attempts\); check the server's log"
    with pytest.raises(RemoteServerError, match=gave_up):
        list(backend.chat(HELLO, GREEDY))
    assert len(fake.posts()) == 3 and time.monotonic() - start < 2


def test_client_errors_are_not_retried(fake):
    backend = fake_backend(fake)
    fake.actions.append(reply(401, {"error": {"message": "Invalid API key"}}))
    with pytest.raises(BackendUnavailableError, match="refused the API key.*Invalid API key.*MINICPM_API_KEY"):
        list(backend.chat(HELLO, GREEDY))
    too_long = "This model's maximum context length is 4096 tokens"
    fake.actions.append(reply(400, {"object": "error", "message": too_long}))
    with pytest.raises(ContextLengthError, match="maximum context length is 4096"):
        list(backend.chat(HELLO, GREEDY))
    fake.actions.append(reply(400, {"error": {"message": "temperature must be at most 2"}}))
    with pytest.raises(InvalidRequestError, match=r"rejected the request \(400: temperature must be at most 2\)"):
        list(backend.chat(HELLO, GREEDY))
    fake.actions.append(reply(404, {"object": "error", "message": "The model `fake-model` does not exist."}))
    with pytest.raises(ModelNotFoundError, match="it serves: fake-model"):
        list(backend.chat(HELLO, GREEDY))
    assert len(fake.posts()) == 4


def test_load_errors_say_what_to_fix(fake, monkeypatch):
    fake.actions.append(reply(401, {"error": "bad key"}))
    with pytest.raises(BackendUnavailableError, match="refused the API key"):
        fake_backend(fake)
    fake.actions.append(reply(404, {"detail": "Not Found"}))
    with pytest.raises(BackendUnavailableError, match="must be an OpenAI-compatible API's address"):
        fake_backend(fake)
    fake.actions.append(reply(200, {"object": "list", "data": []}))
    with pytest.raises(ModelNotFoundError, match="lists no models"):
        fake_backend(fake)
    fake.actions.extend([drop, drop])  # retried at load too
    assert fake_backend(fake).model == "fake-model"
    monkeypatch.delenv("MINICPM_BASE_URL", raising=False)
    with pytest.raises(BackendUnavailableError, match="--base-url .* or set MINICPM_BASE_URL"):
        OpenAIBackend.load(None)
    with pytest.raises(BackendUnavailableError, match="must look like http://HOST:PORT/v1"):
        OpenAIBackend.load(None, base_url="localhost:8000")
    monkeypatch.setenv("MINICPM_TIMEOUT", "soon")
    with pytest.raises(MiniCPMError, match="MINICPM_TIMEOUT must be a number of seconds"):
        fake_backend(fake)


def test_unreachable_server(monkeypatch):
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(RemoteServerError, match=rf"cannot connect to the server at http://127.0.0.1:{port}/v1 .*"
                                                r"\(3 attempts\); start the server or fix --base-url"):
        OpenAIBackend.load(None, base_url=f"http://127.0.0.1:{port}", max_attempts=3, backoff_base=0.01)
    assert time.monotonic() - start < 2


def test_failures_after_output_end_the_stream_without_retry(fake):
    backend = fake_backend(fake)
    fake.actions.append(sse(HELLO_REPLY[:3], done=False, end=False))
    received = []
    broken = "after 2 tokens of the reply; the reply is incomplete and was not retried"
    with pytest.raises(RemoteServerError, match=broken):
        received.extend(backend.chat(HELLO, GREEDY))
    assert text_of(received) == "Hello" and len(fake.posts()) == 1

    fake.actions.append(sse([*HELLO_REPLY[:2], {"error": {"message": "engine died"}}], done=False))
    with pytest.raises(RemoteServerError, match="reported an error in its reply: engine died"):
        list(backend.chat(HELLO, GREEDY))
    fake.actions.append(sse(HELLO_REPLY[:2], done=False))  # ended cleanly, but mid-reply
    with pytest.raises(RemoteServerError, match="without finishing the reply"):
        list(backend.chat(HELLO, GREEDY))
    fake.actions.append(sse([], done=False))  # llama-cpp-python's server on a prompt too long for it
    with pytest.raises(RemoteServerError, match="without any output or error"):
        list(backend.chat(HELLO, GREEDY))
    assert len(fake.posts()) == 4


def test_closing_the_stream_hangs_up_on_the_server(fake):
    backend = fake_backend(fake)
    fake.actions.append(endless)
    stream = backend.chat(HELLO, GREEDY)
    assert [next(stream).text for _ in range(3)] == ["la "] * 3
    stream.close()
    assert fake.client_gone.wait(timeout=3)


def test_a_server_that_ignores_stream_true(fake):
    backend = fake_backend(fake)
    fake.actions.append(reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole."},
                                                 "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 3, "completion_tokens": 2}}))
    events = list(backend.chat(HELLO, GREEDY))
    assert text_of(events) == "Whole." and events[-1].completion_tokens == 2 and events[-1].finish_reason == "stop"


def test_normalise_base_url():
    assert normalise_base_url("http://h:8000") == normalise_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalise_base_url(" https://api.example.com/openai/v1 ") == "https://api.example.com/openai/v1"
