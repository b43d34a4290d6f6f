"""`minicpm serve`: the official openai client against the server, bad requests, the API key, the
queue, and cancellation when a client disconnects.

The model tests run uvicorn in a background thread over the embedded model on llama.cpp. The
queue and disconnect tests use a scripted backend whose tokens come at a known pace and which
records how far it got, so "the generation stopped early" is a fact to assert, not a timing guess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
from conftest import run_cli

from runtime.events import GenerationEvent

MODEL = "default"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@contextmanager
def serving(app):
    """Run app with uvicorn on a free loopback port in a background thread; yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url():
    from runtime.backends.base import load_backend
    from runtime.server import create_app

    # One llama.cpp thread: the test client and uvicorn share this process and the machine's 2 cores,
    # and llama.cpp's threads spin at every barrier, so two of them crawl when a third thread runs.
    backend = load_backend("gguf", "default", context_length=2048, threads=1)
    with serving(create_app([backend], model_id=MODEL, aliases=["smollm2"])) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def post(base_url: str, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{base_url}{path}", content=content, headers={"Content-Type": "application/json"},
                      timeout=60, **kwargs)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- the official openai client, unchanged --------------------------------------------------------


def test_models_lists_the_served_id_and_accepts_its_aliases(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve("smollm2").id == MODEL
    with pytest.raises(openai.NotFoundError, match="this server serves 'default'"):
        client.models.retrieve("gpt-4o")


def test_chat_streams_the_same_text_as_it_answers_in_one_piece(client):
    settings = dict(model=MODEL, messages=QUESTION, temperature=0, seed=7, max_tokens=24)
    whole = client.chat.completions.create(**settings)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 5 and 0 < whole.usage.completion_tokens <= 24
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_continue_raw_text(client):
    whole = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and "Paris" in whole.choices[0].text
    assert whole.usage.completion_tokens <= 6
    streamed = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_logprobs_come_in_openais_shape(client):
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=6,
                                           logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the chosen one is the best
    if reply.choices[0].finish_reason == "length":
        assert "".join(e.token for e in entries) == reply.choices[0].message.content

    legacy = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                       temperature=0, logprobs=2)
    logprobs = legacy.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == len("The capital of France is")


# --- tools (need runtime/tool_calls/local.py) ------------------------------------------------------

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_forced_tool_call_comes_back_as_tool_calls(client):
    reply = client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=WEATHER,
                                           tool_choice=FORCE_WEATHER, temperature=0, max_tokens=64)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments).get("city"), str)


def test_a_streamed_tool_call_arrives_as_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=WEATHER,
                                                 tool_choice=FORCE_WEATHER, temperature=0, max_tokens=64,
                                                 stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].index == 0 and deltas[0].function.name == "get_weather"
    assert isinstance(json.loads("".join(d.function.arguments or "" for d in deltas)), dict)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- bad requests: a 4xx with a message, and the server keeps serving -------------------------------

CHAT = {"model": MODEL, "messages": QUESTION, "max_tokens": 4}
BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "default", "messages": [', 400, "not valid JSON"),
    ("a body that is not an object", b"[1, 2]", 400, "valid dictionary"),
    ("messages of the wrong type", {**CHAT, "messages": "hello"}, 400, "messages"),
    ("max_tokens as a string", {**CHAT, "max_tokens": "10"}, 400, "max_tokens"),
    ("stream as a string", {**CHAT, "stream": "yes"}, 400, "stream"),
    ("no model", {"messages": QUESTION}, 400, "model: Field required"),
    ("an unknown model", {**CHAT, "model": "gpt-4o"}, 404, "this server serves 'default'"),
    ("empty messages", {**CHAT, "messages": []}, 400, "messages must be a non-empty list"),
    ("a message with a bad role", {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ("a huge max_tokens", {**CHAT, "max_tokens": 10**9}, 400, "max_tokens is too large: 1000000000"),
    ("max_tokens 0", {**CHAT, "max_tokens": 0}, 400, "at least 1"),
    ("a negative temperature", {**CHAT, "temperature": -1}, 400, "temperature"),
    ("top_p above 1", {**CHAT, "top_p": 3}, 400, "top_p"),
    ("too many top_logprobs", {**CHAT, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
    ("n above 1", {**CHAT, "n": 2}, 400, "n must be 1"),
    ("an unknown tool in tool_choice", {**CHAT, "tools": WEATHER,
                                        "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     400, "'nope', which is not among the tools"),
    ("a prompt longer than the context", {**CHAT, "messages": [{"role": "user", "content": "word " * 3000}]},
     400, "context holds 2048"),
    ("a prompt plus max_tokens beyond the context", {**CHAT, "max_tokens": 2040}, 400, "in the prompt, 2040 in the completion"),
]


def test_every_bad_request_gets_a_4xx_with_a_message_and_the_server_keeps_serving(base_url):
    for what, body, status, words in BAD_REQUESTS:
        response = post(base_url, "/v1/chat/completions", body)
        assert response.status_code == status, (what, response.text)
        error = response.json()["error"]
        assert words in error["message"], (what, error)
        assert error["type"] == "invalid_request_error"
        # ... and a normal request right after is served
        ok = post(base_url, "/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 1})
        assert ok.status_code == 200, (what, ok.text)
    health = httpx.get(f"{base_url}/health").json()
    assert health["slots"]["busy"] == 0 and health["status"] == "ok"


def test_context_overflow_is_flagged_with_openais_code(base_url):
    overflow = next(body for what, body, *_ in BAD_REQUESTS if what == "a prompt longer than the context")
    error = post(base_url, "/v1/chat/completions", overflow).json()["error"]
    assert error["code"] == "context_length_exceeded"


def test_the_openai_client_raises_bad_request_with_the_servers_message(client):
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model=MODEL, messages=QUESTION, top_p=7)


def test_unknown_routes_answer_in_the_same_error_shape(base_url):
    response = httpx.get(f"{base_url}/v1/nothing")
    assert response.status_code == 404 and "/v1/chat/completions" in response.json()["error"]["message"]


# --- a scripted backend for the queue, cancellation and the API key --------------------------------


class PacedBackend:
    """Writes "x" tokens at a fixed pace and records how many it wrote and whether it was closed."""

    name = "paced"
    model_label = "paced test backend"
    context_length = 4096
    notices: list = []
    details: list = []

    def __init__(self, seconds_per_token: float = 0.01):
        self.seconds_per_token = seconds_per_token
        self.tokens = 0
        self.closed = 0

    def decode(self, ids):
        return "x" * len(ids)

    def chat(self, messages, params, **_):
        return self._events(params)

    def complete(self, prompt, params):
        return self._events(params)

    def _events(self, params):
        try:
            for i in range(params.max_tokens):
                time.sleep(self.seconds_per_token)
                self.tokens += 1
                yield GenerationEvent(text="x", token=1, logprob=0.0, prompt_tokens=3, prompt_processed=3,
                                      completion_tokens=i + 1)
            yield GenerationEvent(finish_reason="length", prompt_tokens=3, prompt_processed=3,
                                  completion_tokens=params.max_tokens)
        finally:
            self.closed += 1


class ToolCallingBackend(PacedBackend):
    """Answers every chat with a short preamble and a call of the first tool it was given."""

    def chat(self, messages, params, *, tools=None, tool_choice="auto", dialect=None, **_):
        from runtime.events import ToolCall

        self.dialect = dialect
        name = tools[0]["function"]["name"]
        yield GenerationEvent(text="Let me look.", token=1, prompt_tokens=3, prompt_processed=3, completion_tokens=1)
        yield GenerationEvent(finish_reason="tool_calls", prompt_tokens=3, completion_tokens=9,
                              tool_calls=(ToolCall("call_1", name, {"city": "Paris"}),))


def test_tool_calls_reach_the_client_in_openais_shape_streaming_or_not():
    """The server's half of tool calls, whatever the model: a scripted backend's calls on the wire."""
    with serving(paced_app(ToolCallingBackend())) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        settings = dict(model="paced", messages=WEATHER_QUESTION, tools=WEATHER, tool_choice=FORCE_WEATHER)
        choice = client.chat.completions.create(**settings).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
        (call,) = choice.message.tool_calls
        assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")
        assert json.loads(call.function.arguments) == {"city": "Paris"}

        chunks = list(client.chat.completions.create(**settings, stream=True))
        (delta,) = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        assert (delta.index, delta.id, delta.function.name) == (0, "call_1", "get_weather")
        assert json.loads(delta.function.arguments) == {"city": "Paris"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_serve_passes_its_tool_dialect_to_local_backends():
    backend = ToolCallingBackend()
    with serving(paced_app(backend, tool_dialect="minicpm")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(model="paced", messages=WEATHER_QUESTION, tools=WEATHER)
    assert backend.dialect == "minicpm"


def paced_app(backend, **options):
    from runtime.server import create_app

    return create_app([backend], model_id="paced", **options)


def health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


def test_a_client_that_disconnects_mid_stream_cancels_its_generation():
    backend = PacedBackend()
    with serving(paced_app(backend)) as url:
        body = {"model": "paced", "messages": QUESTION, "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk: the generation is running
            wait_for(lambda: backend.tokens >= 3, what="tokens")
        # the connection is closed now
        wait_for(lambda: health(url)["slots"]["busy"] == 0, timeout=5, what="the slot to be freed")
        assert backend.closed == 1 and backend.tokens < 1000  # 2000 tokens would take 20 s
        assert health(url)["stats"]["requests_cancelled"] == 1
        ok = post(url, "/v1/completions", {"model": "paced", "prompt": "Hi", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "xx"


def test_a_client_that_gives_up_on_a_plain_request_cancels_it_too():
    backend = PacedBackend()
    with serving(paced_app(backend)) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={"model": "paced", "prompt": "Hi", "max_tokens": 2000}, timeout=0.3)
        wait_for(lambda: backend.closed == 1, timeout=5, what="the generation to stop")
        assert backend.tokens < 1000 and health(url)["stats"]["requests_cancelled"] == 1


def test_requests_beyond_the_slots_queue_visibly_then_get_503():
    backend = PacedBackend(seconds_per_token=0.01)
    with serving(paced_app(backend, queue_size=1)) as url:
        long_body = {"model": "paced", "messages": QUESTION, "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=long_body, timeout=10) as running:
            lines = running.iter_lines()  # kept: a dropped line iterator would close the connection
            assert next(lines).startswith("data: ")
            queued: dict = {}
            waiter = threading.Thread(target=lambda: queued.update(response=post(
                url, "/v1/completions", {"model": "paced", "prompt": "Hi", "max_tokens": 3})))
            waiter.start()
            state = wait_for(lambda: (h := health(url))["queue"]["depth"] == 1 and h, what="the queued request")
            assert state["slots"] == {"total": 1, "busy": 1} and state["queue"]["limit"] == 1

            refused = post(url, "/v1/completions", {"model": "paced", "prompt": "Hi", "max_tokens": 3})
            assert refused.status_code == 503 and refused.headers["Retry-After"]
            assert "queue is full" in refused.json()["error"]["message"]
        # closing the running stream hands its slot to the queued request
        waiter.join(timeout=10)
        response = queued["response"]
        assert response.status_code == 200 and response.json()["choices"][0]["text"] == "xxx"
        assert response.headers["X-Queue-Position"] == "1" and float(response.headers["X-Queue-Seconds"]) > 0
        assert health(url)["stats"]["requests_rejected_queue_full"] == 1


def test_a_client_that_leaves_the_queue_gives_up_its_place():
    backend = PacedBackend(seconds_per_token=0.01)
    with serving(paced_app(backend, queue_size=2)) as url:
        long_body = {"model": "paced", "messages": QUESTION, "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=long_body, timeout=10) as running:
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")
            with pytest.raises(httpx.ReadTimeout):  # queued behind the stream, then the client gives up
                httpx.post(f"{url}/v1/completions", json={"model": "paced", "prompt": "Hi", "max_tokens": 3},
                           timeout=0.5)
            wait_for(lambda: health(url)["queue"]["depth"] == 0, timeout=5, what="the queue to empty")
            assert health(url)["slots"]["busy"] == 1  # the stream still runs; nothing else started
        wait_for(lambda: health(url)["slots"]["busy"] == 0, timeout=5, what="the slot to be freed")
        assert backend.closed == 1  # the queued request never reached the backend


def test_the_api_key_guards_v1_and_leaves_health_open():
    with serving(paced_app(PacedBackend(0), api_key="s3cret")) as url:
        body = {"model": "paced", "prompt": "Hi", "max_tokens": 1}
        missing = post(url, "/v1/completions", body)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
        wrong = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        # malformed JSON without a key is still a 401: the key is checked before the body is read
        assert post(url, "/v1/completions", b"{oops").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="paced", prompt="Hi", max_tokens=2).choices[0].text == "xx"


# --- the command line -------------------------------------------------------------------------------


def test_minicpm_serve_prints_its_url_serves_and_stops_on_ctrl_c():
    process = subprocess.Popen(
        [sys.executable, "-m", "minicpm_suite", "serve", "--backend", "gguf", "--port", "0", "--ctx", "512",
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "MINICPM_SERVE_API_KEY": ""})
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), url
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=4, temperature=0)
        assert reply.choices[0].message.content
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "serving 'default'" in stderr and "server stopped" in stderr and "Traceback" not in stderr


def test_minicpm_serve_refuses_bad_options_in_one_line():
    result = subprocess.run([sys.executable, "-m", "minicpm_suite", "serve", "--parallel", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "minicpm: error: --parallel must be at least 1" in result.stderr


def test_the_openai_backend_talks_to_minicpm_serve(base_url):
    """Our own client against our own server: the same reply as the local backend, tools included."""
    from runtime.backends.base import load_backend
    from runtime.events import SamplingParams

    remote = load_backend("openai", MODEL, base_url=f"{base_url}/v1")
    assert remote.context_length == 2048
    params = SamplingParams(max_tokens=12, temperature=0)
    events = list(remote.chat([{"role": "user", "content": "Name three colours."}], params))
    local = load_backend("gguf", "default", context_length=2048, threads=1)
    expected = "".join(e.text for e in local.chat([{"role": "user", "content": "Name three colours."}], params))
    assert "".join(e.text for e in events) == expected
    assert events[-1].completion_tokens == 12 and events[-1].finish_reason == "length"

    last = list(remote.chat(WEATHER_QUESTION, SamplingParams(max_tokens=48, temperature=0), tools=WEATHER,
                            tool_choice=FORCE_WEATHER))[-1]
    assert last.finish_reason == "tool_calls"
    assert last.tool_calls[0].name == "get_weather" and isinstance(last.tool_calls[0].arguments["city"], str)


def test_generate_with_the_openai_backend_against_minicpm_serve(base_url):
    result = run_cli("generate", "--backend", "openai", "--base-url", base_url, "--model", MODEL,
                     "--prompt", "Say hi", "--max-tokens", "6", "--temperature", "0", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["backend"] == "openai" and out["text"] and out["completion_tokens"] == 6
