"""ChatMiniCPM, the runtime's backends as a LangChain chat model (agents/chat_model.py).

A scripted backend whose chat() replays fixed GenerationEvents covers the conversions, the stream
merge, tool binding and invalid tool calls; the embedded model on llama.cpp covers the real path.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from pydantic import BaseModel, Field, ValidationError

from agents.chat_model import ChatMiniCPM, to_openai_messages, tool_call_error
from runtime.backends.base import Backend
from runtime.errors import ContextLengthError
from runtime.events import GenerationEvent, SamplingParams, ToolCall
from runtime.messages import InvalidRequestError, check_messages

ERROR = "unknown tool 'weather' (known: add)"


class ScriptedBackend(Backend):
    """A backend whose chat() records its arguments and replays `script`."""

    name = "scripted"
    model_label = "scripted-model"
    context_length = 1024

    def __init__(self, script: list[GenerationEvent] | None = None, raises: Exception | None = None):
        self.script = script if script is not None else reply("Hello", " there", "!")
        self.raises = raises
        self.calls: list[dict] = []
        self.notices, self.details = [], []

    def chat(self, messages, params, *, tools=None, tool_choice="auto", dialect=None, constrained=True,
             **template_kwargs):
        self.calls.append({"messages": messages, "params": params, "tools": tools, "tool_choice": tool_choice,
                           "dialect": dialect, "constrained": constrained, "template_kwargs": template_kwargs})
        if self.raises:
            raise self.raises
        return iter(self.script)

    def tokenize(self, text, add_bos=True):
        raise NotImplementedError

    def render_chat(self, messages, **template_kwargs):
        raise NotImplementedError

    def generate_tokens(self, prompt, params, guard=None):
        raise NotImplementedError

    def decode(self, ids):
        raise NotImplementedError


def reply(*texts: str, finish_reason="stop", tool_calls=(), tool_call_error=None) -> list[GenerationEvent]:
    """Progress events, one event per text delta (and a held-back ""), then the final event."""
    usage = {"prompt_tokens": 12, "prompt_processed": 12}
    events = [GenerationEvent(prompt_tokens=12, prompt_processed=6), GenerationEvent(**usage)]
    for i, text in enumerate(texts):
        events.append(GenerationEvent(text=text, token=100 + i, completion_tokens=i + 1, **usage))
    events.append(GenerationEvent(text="", token=99, completion_tokens=len(texts) + 1, **usage))
    events.append(GenerationEvent(finish_reason=finish_reason, tool_calls=tuple(tool_calls),
                                  tool_call_error=tool_call_error, completion_tokens=len(texts) + 1,
                                  prefill_seconds=0.5, decode_seconds=0.25, **usage))
    return events


def merged_stream(model, prompt, **kwargs) -> AIMessageChunk:
    chunks = list(model.stream(prompt, **kwargs))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CALL = ToolCall("call_1", "add", {"a": 2, "b": 3})


def test_invoke_maps_settings_and_returns_text_usage_and_timing():
    backend = ScriptedBackend()
    model = ChatMiniCPM(backend=backend, temperature=0, max_tokens=7, seed=3, top_p=0.9, stop=["\n\n"],
                        dialect="hermes", constrained=False, template_kwargs={"enable_thinking": False})
    message = model.invoke([SystemMessage("Be brief."), HumanMessage("Hi")], stop=["END"])

    assert isinstance(message, AIMessage) and message.content == "Hello there!"
    assert message.usage_metadata == {"input_tokens": 12, "output_tokens": 4, "total_tokens": 16}
    meta = message.response_metadata
    assert meta["finish_reason"] == "stop" and meta["model_name"] == "scripted-model" and meta["backend"] == "scripted"
    assert meta["prefill_seconds"] == 0.5 and meta["prefill_tokens_per_second"] == 24.0
    assert meta["decode_tokens_per_second"] == 12.0  # 3 tokens after the first in 0.25 s
    assert message.tool_calls == [] and message.invalid_tool_calls == []

    call = backend.calls[0]
    assert call["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert call["params"] == SamplingParams(max_tokens=7, temperature=0, top_p=0.9, seed=3, stop=("\n\n", "END"))
    assert (call["dialect"], call["constrained"], call["tools"], call["tool_choice"]) == ("hermes", False, None, "auto")
    assert call["template_kwargs"] == {"enable_thinking": False}

    model.invoke("Hi", temperature=0.5, max_tokens=3, template_kwargs={"enable_thinking": True})
    assert backend.calls[1]["params"].temperature == 0.5 and backend.calls[1]["params"].max_tokens == 3
    assert backend.calls[1]["template_kwargs"] == {"enable_thinking": True}
    assert model._llm_type == "minicpm" and model._identifying_params["model_name"] == "scripted-model"


def test_bad_settings_and_options_fail_clearly():
    with pytest.raises(ValidationError, match="temperature"):
        ChatMiniCPM(backend=ScriptedBackend(), temperature=-1)
    with pytest.raises(ValidationError):
        ChatMiniCPM(backend=ScriptedBackend(), temprature=0)  # a typo is not silently ignored
    with pytest.raises(TypeError, match="unknown option"):
        ChatMiniCPM(backend=ScriptedBackend()).invoke("Hi", temprature=0)


def test_stream_yields_text_deltas_then_calls_usage_and_metadata():
    backend = ScriptedBackend(reply("Let me ", "add.", finish_reason="tool_calls", tool_calls=[CALL]))
    model = ChatMiniCPM(backend=backend)
    chunks = list(model.stream("2+3?"))

    # Progress and held-back events are skipped; the calls chunk comes last but for LangChain's own
    # empty chunk_position="last" marker.
    assert [c.content for c in chunks] == ["Let me ", "add.", "", ""]
    calls = chunks[-2]
    assert chunks[-1].chunk_position == "last" and calls.usage_metadata["input_tokens"] == 12
    assert [c.usage_metadata is not None for c in chunks] == [False, False, True, False]
    assert calls.tool_call_chunks == [{"name": "add", "args": '{"a": 2, "b": 3}', "id": "call_1", "index": 0,
                                            "type": "tool_call_chunk"}]

    merged = merged_stream(model, "2+3?")
    invoked = model.invoke("2+3?")
    for message in (merged, invoked):
        assert message.content == "Let me add."
        assert message.tool_calls == [{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1", "type": "tool_call"}]
        assert message.invalid_tool_calls == []
        assert message.usage_metadata["output_tokens"] == 3
        assert message.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("error", [ERROR, '{"name": "add", "arguments": {"a": "two"}} does not match the schema'])
def test_a_tool_call_error_is_an_invalid_tool_call_in_every_path(error):
    """A valid call and an unusable one in the same reply: the error survives invoke and merged stream."""
    backend = ScriptedBackend(reply("Calling.", finish_reason="tool_calls", tool_calls=[CALL], tool_call_error=error))
    model = ChatMiniCPM(backend=backend)

    class Streaming(BaseCallbackHandler, _StreamingCallbackHandler):
        """What LangGraph attaches for stream_mode="messages": invoke then runs through _stream."""

        def tap_output_iter(self, run_id, output):
            return output

        def tap_output_aiter(self, run_id, output):
            return output

    invoked = model.invoke("go")
    via_stream = model.invoke("go", config={"callbacks": [Streaming()]})
    merged = merged_stream(model, "go")
    with warnings.catch_warnings():  # the protocol-event path, in beta
        warnings.simplefilter("ignore")
        via_events = model.stream_events("go", version="v3").output
    for message in (invoked, via_stream, merged, via_events):
        assert [c["name"] for c in message.tool_calls] == ["add"]  # the good call is kept, and no phantom call
        [bad] = message.invalid_tool_calls
        assert bad["name"] is None and error in bad["args"] and bad["id"].startswith("call_")
        assert message.response_metadata["tool_call_error"] == error
        assert tool_call_error(message) == error
    assert invoked.invalid_tool_calls[0]["error"] == error  # not merged from chunks: the error field is filled
    assert tool_call_error(AIMessage("plain")) is None

    # Sent back to the model, the unusable call is not a call; the good one is.
    [sent] = to_openai_messages([invoked])
    assert [c["function"]["name"] for c in sent["tool_calls"]] == ["add"]


def test_a_reply_with_only_an_error_has_no_tool_calls():
    model = ChatMiniCPM(backend=ScriptedBackend(reply("", tool_call_error=ERROR)))
    for message in (model.invoke("go"), merged_stream(model, "go")):
        assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
        assert message.response_metadata["finish_reason"] == "stop"


def test_bind_tools_accepts_every_tool_shape_and_tool_choice_spelling():
    class Weather(BaseModel):
        """Get the weather for a city."""

        city: str = Field(description="the city")

    @tool
    def search(query: str) -> str:
        """Search the web."""
        return query

    def multiply(x: int, y: int) -> int:
        """Multiply two integers."""
        return x * y

    backend = ScriptedBackend()
    model = ChatMiniCPM(backend=backend)
    model.bind_tools([ADD, Weather, search, multiply], tool_choice="any").invoke("hi")
    call = backend.calls[-1]
    assert [t["function"]["name"] for t in call["tools"]] == ["add", "Weather", "search", "multiply"]
    assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in call["tools"])
    assert call["tools"][0] == ADD
    assert call["tools"][1]["function"]["parameters"]["properties"]["city"]["type"] == "string"
    assert call["tool_choice"] == "required"

    for choice, expected in [(None, "auto"), ("auto", "auto"), ("none", "none"), ("required", "required"),
                             (True, "required"), ("search", {"type": "function", "function": {"name": "search"}}),
                             ({"type": "function", "function": {"name": "add"}},
                              {"type": "function", "function": {"name": "add"}})]:
        model.bind_tools([ADD, search], tool_choice=choice).invoke("hi")
        assert backend.calls[-1]["tool_choice"] == expected, choice
    with pytest.raises(InvalidRequestError, match="'nope'.*known: add"):
        model.bind_tools([ADD], tool_choice="nope")


def test_with_structured_output_reads_the_forced_call():
    class Sum(BaseModel):
        a: int
        b: int

    call = ToolCall("call_9", "Sum", {"a": 1, "b": 2})
    backend = ScriptedBackend(reply(finish_reason="tool_calls", tool_calls=[call]))
    result = ChatMiniCPM(backend=backend).with_structured_output(Sum).invoke("one and two")
    assert result == Sum(a=1, b=2)
    assert backend.calls[0]["tool_choice"] == "required"


def test_messages_convert_to_the_runtime_shape_and_pass_its_check():
    history = [
        SystemMessage("sys"),
        HumanMessage([{"type": "text", "text": "What is "}, "2+3?"]),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1"}],
                  invalid_tool_calls=[{"name": None, "args": ERROR, "id": "call_x", "error": ERROR,
                                       "type": "invalid_tool_call"}]),
        ToolMessage([{"type": "text", "text": "5"}, "(exact)"], tool_call_id="call_1", name="add"),
        AIMessage([{"type": "reasoning", "reasoning": "easy"}, {"type": "text", "text": "It is 5."}]),
        ChatMessage(role="developer", content="dev note"),
    ]
    converted = to_openai_messages(history)
    assert converted == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5\n(exact)", "name": "add"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "developer", "content": "dev note"},
    ]
    checked = check_messages(converted)
    assert checked[2]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 3}

    # A reply from the model goes back in as the same call.
    backend = ScriptedBackend(reply(finish_reason="tool_calls", tool_calls=[CALL]))
    answer = ChatMiniCPM(backend=backend).invoke("2+3?")
    assert to_openai_messages([answer])[0]["tool_calls"] == [CALL.to_openai()]

    with pytest.raises(InvalidRequestError, match="FunctionMessage"):
        to_openai_messages([FunctionMessage("5", name="add")])
    with pytest.raises(InvalidRequestError, match="'image' block"):
        to_openai_messages([HumanMessage([{"type": "image", "url": "http://x/y.png"}])])


@pytest.mark.parametrize("error", [ContextLengthError("the prompt is 5000 tokens; the context holds 1024"),
                                   InvalidRequestError("messages[0].role must be one of ...")])
def test_runtime_errors_propagate_unchanged(error):
    model = ChatMiniCPM(backend=ScriptedBackend(raises=error))
    for run in (model.invoke, lambda x: list(model.stream(x)), lambda x: asyncio.run(model.ainvoke(x))):
        with pytest.raises(type(error)) as caught:
            run("hi")
        assert caught.value is error


def test_async_invoke_and_stream_match_sync():
    model = ChatMiniCPM(backend=ScriptedBackend(reply("a", "b", "c", finish_reason="tool_calls", tool_calls=[CALL])))

    async def main():
        message = await model.ainvoke("x")
        chunks = [c async for c in model.astream("x")]
        return message, chunks

    message, chunks = asyncio.run(main())
    assert message.content == "abc" and message.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert [c.content for c in chunks] == ["a", "b", "c", "", ""]
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.tool_calls == message.tool_calls and merged.usage_metadata == message.usage_metadata


def test_generations_on_one_backend_take_turns_and_an_abandoned_stream_frees_it():
    backend = ScriptedBackend()
    model = ChatMiniCPM(backend=backend)
    stream = model.stream("x")
    next(stream)  # mid-generation: the backend is busy
    finished = threading.Event()
    waiter = threading.Thread(target=lambda: (model.invoke("y"), finished.set()))
    waiter.start()
    assert not finished.wait(0.3)  # the second call waits its turn
    stream.close()  # abandoning the stream lets it in
    assert finished.wait(5)
    waiter.join()

    async def abandon_async():
        async for _ in model.astream("z"):
            break  # leave early; the generation's thread closes it

    asyncio.run(abandon_async())
    assert model.invoke("again").content == "Hello there!"


# -- the embedded model through llama.cpp ----------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_chat():
    from runtime.backends.base import load_backend

    # One thread: on a shared 2-core machine llama.cpp's spinning threads slow each other down.
    backend = load_backend("gguf", "default", context_length=1024, threads=1)
    return ChatMiniCPM(backend=backend, temperature=0, max_tokens=12)


@pytest.mark.slow
def test_the_embedded_model_invokes_and_streams_the_same_text(embedded_chat):
    prompt = [HumanMessage("Name three colours.")]
    message = embedded_chat.invoke(prompt)
    assert isinstance(message, AIMessage) and message.content.strip()
    assert message.usage_metadata["input_tokens"] > 5 and 0 < message.usage_metadata["output_tokens"] <= 12
    assert message.response_metadata["backend"] == "gguf"
    chunks = list(embedded_chat.stream(prompt))
    assert len(chunks) > 3
    assert "".join(c.content for c in chunks) == message.content


@pytest.mark.slow
def test_the_embedded_model_makes_a_forced_schema_valid_call(embedded_chat):
    from jsonschema import validate

    bound = embedded_chat.bind_tools([ADD], tool_choice={"type": "function", "function": {"name": "add"}})
    message = bound.invoke("What is 2 plus 3?", max_tokens=40)
    # SmolLM2 tends to start a second call after the first; cut off by max_tokens, it comes back
    # as an invalid call, and the first stays usable.
    assert message.tool_calls and all(call["name"] == "add" and call["id"] for call in message.tool_calls)
    for call in message.tool_calls:
        validate(call["args"], ADD["function"]["parameters"])
    assert [bad["args"] for bad in message.invalid_tool_calls] == ([tool_call_error(message)] if
                                                                   message.invalid_tool_calls else [])
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert json.loads(to_openai_messages([message])[0]["tool_calls"][0]["function"]["arguments"]) == call["args"]
