"""Tool-call dialects, the constrained-call grammar and tool calls on the local backends."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.events import SamplingParams
from runtime.messages import InvalidRequestError
from runtime.tool_calls.dialects import get_dialect
from runtime.tool_calls.grammar import PARTIAL, check
from runtime.tool_calls.tools import check_tool_choice, check_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get-weather_now",  # a hyphen and an underscore: must come back exactly
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "city name"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "class": {"type": "boolean"},  # a Python keyword
                "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                          "required": ["lat", "lon"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            },
            "required": ["city", "days"],
        },
    },
}
NOTE = {"type": "function", "function": {"name": "add_note", "description": "Save a note",
                                         "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                                        "required": ["text"], "additionalProperties": False}}}
TOOLS = check_tools([WEATHER, NOTE])
DIALECTS = ["hermes", "minicpm"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
names = st.from_regex(r"[a-z][a-z0-9_\-]{0,15}", fullmatch=True)
arg_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True) | st.sampled_from(["class", "from", "def"])


def call(name: str, arguments: dict) -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("dialect", DIALECTS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tool_names=st.lists(names, min_size=1, max_size=3, unique=True), data=st.data())
def test_rendered_calls_parse_back_to_the_same_calls(dialect, tool_names, data):
    d = get_dialect(dialect)
    tools = check_tools([{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in tool_names])
    calls = [call(n, data.draw(st.dictionaries(arg_names, json_values, max_size=4))) for n in tool_names]
    parsed = d.parse("Let me check.\n" + d.render_calls(calls, tools), tools)
    assert parsed.error is None
    assert parsed.content == "Let me check."
    assert [(c.name, c.arguments) for c in parsed.calls] == [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


@pytest.mark.parametrize("dialect", DIALECTS)
@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=string.printable + "<|>_{}()[]\"'`", max_size=200),
       marker=st.sampled_from(["", "<tool_call>", "</tool_call>", "<|tool_call_start|>", "<|tool_call_end|>", "```python\n"]))
def test_parsers_never_raise_on_garbage(dialect, text, marker):
    d = get_dialect(dialect)
    parsed = d.parse(marker + text + marker, TOOLS)
    assert isinstance(parsed.content, str)
    assert all(c.name in {"get-weather_now", "add_note"} for c in parsed.calls)  # only known, valid calls
    if marker == d.start_marker and not parsed.calls:
        assert parsed.error


@pytest.mark.parametrize("dialect", DIALECTS)
def test_invalid_calls_come_back_as_errors_for_the_model(dialect):
    d = get_dialect(dialect)
    bad = [
        call("get-weather_now", {"city": "Paris"}),  # days missing
        call("get-weather_now", {"city": "Paris", "days": "three"}),  # wrong type
        call("get-weather_now", {"city": "Paris", "days": 3, "unit": "kelvin"}),  # not in the enum
        call("send_mail", {"to": "x"}),  # no such tool
    ]
    for c in bad:
        parsed = d.parse(d.render_calls([c], TOOLS), TOOLS)
        assert parsed.calls == ()
        assert parsed.error
    whole = d.render_calls([call("add_note", {"text": "hi"})], TOOLS)
    cut = d.parse(whole[: whole.index("hi")], TOOLS)  # the budget ran out inside the call
    assert cut.calls == () and cut.error


def test_minicpm_prompt_lists_tools_as_python_definitions():
    prompt = get_dialect("minicpm").system_prompt(TOOLS)
    assert "def get_weather_now(city: str, days: int, unit: Unit = None, class_: bool = None" in prompt
    assert "class Unit(Enum):" in prompt and 'CELSIUS = "celsius"' in prompt
    assert "class Where(BaseModel):" in prompt and "lat: float = Field(..." in prompt
    assert "tags: List[str] = None" in prompt
    assert "<|tool_call_start|>" in prompt
    compile(prompt.split("```python\n")[1].split("```")[0], "tools", "exec")  # the listing is real Python


def test_minicpm_reads_json_constants_and_several_calls():
    d = get_dialect("minicpm")
    text = ('<|thought_start|>two lookups<|thought_end|>\n<|tool_call_start|>\n```python\n'
            'get_weather_now(city="Paris", days=2, class_=true)\nadd_note(text=\'it\\\'s done\')\n```\n'
            '<|tool_call_end|>')
    parsed = d.parse(text, TOOLS)
    assert parsed.error is None
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("get-weather_now", {"city": "Paris", "days": 2, "class": True}), ("add_note", {"text": "it's done"})]
    assert "two lookups" in parsed.content


# ---- the grammar constrained decoding writes under ---------------------------------------------------

VALID = [
    call("get-weather_now", {"city": "Paris", "days": 3}),
    call("get-weather_now", {"city": "Ly\"on\\n", "days": 7, "unit": "fahrenheit", "class": False,
                             "where": {"lat": 45.75, "lon": -4.8e-1}, "tags": ["a", "b"]}),
    call("add_note", {"text": ""}),
]
INVALID = [
    call("get-weather_now", {"city": "Paris"}),
    call("get-weather_now", {"city": "Paris", "days": 8}),
    call("get-weather_now", {"city": "Paris", "days": 2.5}),
    call("get-weather_now", {"city": "Paris", "days": 2, "unit": "kelvin"}),
    call("get-weather_now", {"city": "Paris", "days": 2, "tags": ["a", "b", "c", "d"]}),
    call("get-weather_now", {"city": "Paris", "days": 2, "where": {"lat": 1}}),
    call("add_note", {"text": "x", "extra": 1}),
    call("add_note", {"text": 5}),
    call("nope", {}),
]


def block_body(dialect, c) -> str:
    d = get_dialect(dialect)
    return d.render_calls([c], TOOLS).removeprefix(d.start_marker)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_grammar_accepts_valid_calls_and_every_prefix_of_them(dialect):
    grammar = get_dialect(dialect).call_grammar(TOOLS)
    for c in VALID:
        body = block_body(dialect, c)
        assert check(grammar, body) == len(body), body
        for cut in range(len(body)):
            assert check(grammar, body[:cut]) == PARTIAL, (body, cut)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_grammar_rejects_calls_that_break_the_schema(dialect):
    grammar = get_dialect(dialect).call_grammar(TOOLS)
    for c in INVALID:
        assert check(grammar, block_body(dialect, c)) is None, c


def test_tool_choice_must_name_a_known_tool():
    with pytest.raises(InvalidRequestError, match="not among the tools"):
        check_tool_choice({"type": "function", "function": {"name": "send_mail"}}, TOOLS)
    with pytest.raises(InvalidRequestError, match="no tools"):
        check_tool_choice("required", [])
    with pytest.raises(InvalidRequestError, match="valid JSON Schema"):
        check_tools([{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": 3}}}])
    with pytest.raises(InvalidRequestError, match="two tools"):
        check_tools([NOTE, NOTE])


# ---- on the embedded model ---------------------------------------------------------------------------

QUESTION = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def gguf_backend():
    from runtime.backends.base import load_backend

    return load_backend("gguf", "default", context_length=2048)


@pytest.fixture(scope="module")
def torch_backend(embedded_torch):
    from runtime.backends.torch_backend import TorchBackend

    return TorchBackend(embedded_torch, context_length=2048)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name, dialect, temperature", [
    *[("gguf", d, t) for d in DIALECTS for t in (0.0, 1.0)],
    *[("torch", d, 0.0) for d in DIALECTS],  # the same guard; torch decodes the 135M model slower
])
def test_constrained_calls_are_schema_valid_on_the_embedded_model(request, backend_name, dialect, temperature):
    backend = request.getfixturevalue(f"{backend_name}_backend")
    params = SamplingParams(max_tokens=96, temperature=temperature, seed=7)
    events = list(backend.chat(QUESTION, params, tools=[WEATHER, NOTE], tool_choice="required", dialect=dialect))
    last = events[-1]
    assert last.finish_reason == "tool_calls", last
    assert last.tool_calls and last.tool_calls[0].name in {"get-weather_now", "add_note"}
    # A later call may be cut off by the token budget; none may be malformed.
    assert last.tool_call_error is None or "cut off" in last.tool_call_error or "never written" in last.tool_call_error
    assert all(e.text == "" for e in events)  # a forced call: no prose streams


@pytest.mark.slow
def test_a_named_tool_choice_forces_that_tool(gguf_backend):
    choice = {"type": "function", "function": {"name": "add_note"}}
    ask = [{"role": "user", "content": "Save a note that says: buy milk"}]
    last = list(gguf_backend.chat(ask, SamplingParams(max_tokens=64, temperature=0), tools=[WEATHER, NOTE],
                                  tool_choice=choice))[-1]
    assert [c.name for c in last.tool_calls][:1] == ["add_note"]
    assert isinstance(last.tool_calls[0].arguments["text"], str)


@pytest.mark.slow
def test_earlier_calls_and_results_reach_the_prompt(gguf_backend):
    from runtime.tool_calls.local import prepare_messages

    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get-weather_now", "arguments": json.dumps({"city": "Paris", "days": 3})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"forecast": "sunny, 24 C"}'},
    ]
    from runtime.messages import check_messages

    prompt = gguf_backend.render_chat(prepare_messages(check_messages(history), get_dialect("hermes"), TOOLS, TOOLS))
    assert '<tool_call>\n{"name": "get-weather_now", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"forecast": "sunny, 24 C"}\n</tool_response>' in prompt
    assert "<tools>" in prompt
    reply = list(gguf_backend.chat(history, SamplingParams(max_tokens=24, temperature=0), tools=[WEATHER, NOTE]))
    assert reply[-1].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.slow
def test_gguf_reuses_the_kv_cache_of_the_previous_turn(gguf_backend):
    params = SamplingParams(max_tokens=8, temperature=0)
    first = list(gguf_backend.chat(QUESTION, params))
    reply = "".join(e.text for e in first)
    second_turn = QUESTION + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And in Rome?"}]
    events = list(gguf_backend.chat(second_turn, params))
    progress = [e.prompt_processed for e in events if e.is_progress]
    assert progress[0] > len(gguf_backend.tokenize(gguf_backend.render_chat(QUESTION))) - 2  # the old turn was kept
    # and reuse changes nothing: the same reply as from an empty cache
    gguf_backend.llm.reset()
    fresh = list(gguf_backend.chat(second_turn, params))
    assert [e.token for e in fresh if e.token is not None] == [e.token for e in events if e.token is not None]


# ---- dead ends the guard must never walk into (found by the tool-call benchmark) ----------------------

NOTES = check_tools([{"type": "function", "function": {"name": "search_notes", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["query"],
    "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 50}}}}}])
CHARS = [chr(c) for c in range(32, 127)] + ["\n", "></"]  # a toy vocabulary: one token per character


def toy_guard(text: str, forced: bool):
    from runtime.tool_calls.guard import ToolCallGuard

    d = get_dialect("hermes")
    guard = ToolCallGuard(lambda ids: "".join(CHARS[i] for i in ids), d.start_marker, d.call_grammar(NOTES), set(),
                          forced=forced)
    for ch in text:
        token = CHARS.index(ch)
        if not guard.allows(token):
            return guard, False
        guard.accept(token)
    return guard, True


def continuations(guard) -> list[str]:
    return [c for i, c in enumerate(CHARS) if guard.allows(i)]


@pytest.mark.parametrize("text", [
    '{"name": "search_notes", "arguments": {"qu\\u002',  # an escape in a key: its character cannot be judged yet
    '{"name": "search_notes", "arguments": {"qu\\',  # no escaped character continues any key
    '{"name": "search_notes", "arguments": {"query": "x", "limit": 0',  # 0 is below the minimum and cannot grow
    '{"name": "search_notes", "arguments": {"query": "x", "limit": -',
    '{"name": "search_notes", "arguments": {"query": "x", "limit": 6',  # 6 itself is fine, and 60 is too big
])
def test_every_accepted_prefix_still_has_a_valid_continuation(text):
    guard, accepted = toy_guard(text, forced=True)
    assert not accepted or continuations(guard), text


def test_a_token_that_opens_a_broken_block_is_refused_in_prose():
    guard, accepted = toy_guard("Wrap it in <tool_call", forced=False)
    assert accepted
    assert not guard.allows(CHARS.index("></"))  # "<tool_call></": no call starts with "</"
    assert guard.allows(CHARS.index(">"))
