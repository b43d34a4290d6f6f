"""The tool-call benchmark's data and scoring (benchmarks/tool_calls.py), on hand-written replies: no model."""

from __future__ import annotations

import pytest

from benchmarks.tool_calls import (
    Prompt,
    Record,
    Reply,
    Setting,
    load_prompts,
    markdown_table,
    offered_tools,
    score_reply,
    summarize,
)
from runtime.events import ToolCall
from runtime.tool_calls.dialects import get_dialect
from runtime.tool_calls.tools import check_tools

SERVERS, PROMPTS = load_prompts()
NOTES = check_tools(SERVERS["notes"])
PAPERS = check_tools(SERVERS["papers"])
MAX = 128


def score(text: str, tools=NOTES, expected: str = "search_notes", dialect: str = "hermes", calls=(), error=None,
          tokens: int = 40, constrained: bool = False):
    return score_reply(Reply(text, tuple(calls), error, "stop", tokens), get_dialect(dialect), tools, expected, MAX,
                       constrained)


def test_data_offers_valid_schemas_and_every_expected_tool():
    assert len(PROMPTS) >= 40
    assert len({p.id for p in PROMPTS}) == len(PROMPTS)
    for tools in SERVERS.values():
        for tool in check_tools(tools):  # valid JSON Schema, unique names
            assert tool.parameters["additionalProperties"] is False
            assert tool.description
    for prompt in PROMPTS:
        assert prompt.expected in [t["function"]["name"] for t in offered_tools(SERVERS, prompt)]
    assert {p.kind for p in PROMPTS} == {"simple", "numbers", "enum", "optional", "ambiguous"}
    # --limit takes the first N: the first few already cover every server
    assert {s for p in PROMPTS[:6] for s in p.servers} == set(SERVERS)


def test_a_valid_call_of_the_expected_tool():
    call = ToolCall("call_1", "search_notes", {"query": "budget", "limit": 3})
    s = score('<tool_call>\n{"name": "search_notes", "arguments": {"query": "budget", "limit": 3}}\n</tool_call>',
              calls=[call])
    assert (s.attempted, s.well_formed, s.schema_valid, s.right_tool) == (True, True, True, True)
    assert not (s.budget_failure or s.hit_budget or s.grammar_escape or s.runtime_disagrees)
    assert s.calls == 1 and s.first_call == 'search_notes({"query": "budget", "limit": 3})'


def test_the_wrong_tool_is_well_formed_but_not_right():
    call = ToolCall("call_1", "list_notes", {})
    s = score('<tool_call>{"name": "list_notes", "arguments": {}}</tool_call>', calls=[call])
    assert s.schema_valid and not s.right_tool


def test_out_of_range_integer_is_well_formed_but_schema_invalid():
    # The dialect parser drops the call and reports it; the benchmark reads the text back to see it.
    text = '<tool_call>{"name": "search_notes", "arguments": {"query": "budget", "limit": 0}}</tool_call>'
    s = score(text, error="search_notes: limit: 0 is less than the minimum of 1")
    assert s.well_formed and not s.schema_valid and s.right_tool
    assert not s.runtime_disagrees
    assert any("minimum" in p for p in s.problems)


def test_an_unknown_tool_or_argument_is_schema_invalid():
    s = score('<tool_call>{"name": "find_notes", "arguments": {"query": "x"}}</tool_call>', error="no tool")
    assert s.well_formed and not s.schema_valid and not s.right_tool
    s = score('<tool_call>{"name": "search_notes", "arguments": {"query": "x", "sort": "new"}}</tool_call>',
              error="additional")
    assert s.well_formed and not s.schema_valid


def test_an_invalid_enum_value_in_the_minicpm_dialect():
    text = '<|tool_call_start|>\n```python\nsearch_papers(query="moe", mode="keyword")\n```\n<|tool_call_end|>'
    s = score(text, tools=PAPERS, expected="search_papers", dialect="minicpm", error="mode: not one of")
    assert s.well_formed and not s.schema_valid and s.right_tool
    text = '<|tool_call_start|>\n```python\nsearch_papers(query="moe", k=5, mode="bm25")\n```\n<|tool_call_end|>'
    call = ToolCall("call_1", "search_papers", {"query": "moe", "k": 5, "mode": "bm25"})
    s = score(text, tools=PAPERS, expected="search_papers", dialect="minicpm", calls=[call])
    assert s.schema_valid and s.right_tool and not s.runtime_disagrees


def test_malformed_calls():
    s = score('<tool_call>{"name": "search_notes", "arguments": {"query": }}</tool_call>', error="not valid JSON")
    assert s.attempted and not s.well_formed and not s.budget_failure
    s = score("<|tool_call_start|>\n```python\ndef search(q):\n    return q\n```\n<|tool_call_end|>",
              dialect="minicpm", error="only function calls")
    assert not s.well_formed
    # a block of comments only reads as no call at all
    s = score("<|tool_call_start|>\n```python\n# search the notes\n```\n<|tool_call_end|>", dialect="minicpm")
    assert s.attempted and not s.well_formed and s.calls == 0


def test_running_out_of_tokens_is_told_apart():
    text = '<tool_call>{"name": "search_notes", "arguments": {"query": "bud'
    cut = "a tool call was cut off before </tool_call> (did the token budget run out?): ..."
    s = score(text, error=cut, tokens=MAX)
    assert not s.well_formed and s.budget_failure and s.hit_budget
    # the same text when the model itself ended the reply: a plain failure, and under constraints an escape
    s = score(text, error=cut, tokens=20, constrained=True)
    assert not s.well_formed and not s.budget_failure and s.grammar_escape
    # a first call that is complete, then a second block cut off by the budget: valid, but hit_budget
    call = ToolCall("call_1", "search_notes", {"query": "budget"})
    text = '<tool_call>{"name": "search_notes", "arguments": {"query": "budget"}}</tool_call>\n<tool_call>{"na'
    s = score(text, calls=[call], error=cut, tokens=MAX, constrained=True)
    assert s.schema_valid and s.hit_budget and not s.budget_failure and not s.grammar_escape


def test_a_block_that_could_never_become_a_call_is_not_a_budget_failure():
    # A key the schema does not allow, written through an escape, then looping until the budget:
    # what a guard that gave up lets through (the grammar refuses it).
    text = '<tool_call>\n{"name": "search_notes", "arguments": {"qu\\u0022\\u0022\\u0022\\u00'
    s = score(text, error="a tool call was cut off ...", tokens=MAX, constrained=True)
    assert not s.well_formed and not s.budget_failure and s.hit_budget and s.grammar_escape
    # unconstrained, a model that loops on fences is not "only out of budget" either
    s = score("<tool_call>\n```\n\n```\n\n```\n\n```", error="cut off", tokens=MAX)
    assert not s.budget_failure and s.hit_budget and not s.grammar_escape
    # while a long but valid string value is
    s = score('<tool_call>{"name": "search_notes", "arguments": {"query": "late late late late', error="cut off",
              tokens=MAX, constrained=True)
    assert s.budget_failure and not s.grammar_escape


def test_a_finished_invalid_block_under_constraints_is_a_grammar_escape():
    text = '<tool_call>{"name": "search_notes", "arguments": {"query": "x", "limit": 99}}</tool_call>'
    assert score(text, error="limit", constrained=True).grammar_escape
    assert not score(text, error="limit", constrained=False).grammar_escape


def test_no_call_in_auto_mode_and_the_runtime_cross_check():
    s = score("Your notes about the budget are probably in the finance folder.")
    assert not s.attempted and not s.well_formed and not s.runtime_disagrees
    # the event must carry what the text holds: a valid call missing from tool_calls is a disagreement
    s = score('<tool_call>{"name": "list_notes", "arguments": {"limit": 5}}</tool_call>')
    assert s.schema_valid and s.runtime_disagrees


def test_summary_counts_shares_and_table():
    setting = Setting("gguf", "hermes", "required", True, 0.0)
    prompt = Prompt("p", ("notes",), "simple", "search my notes", "search_notes")
    good = '<tool_call>{"name": "search_notes", "arguments": {"query": "x"}}</tool_call>'
    bad = '<tool_call>{"name": "search_notes", "arg'
    records = [Record(prompt, Reply(good, completion_tokens=20), score(good, tokens=20), 1.0),
               Record(prompt, Reply(bad, completion_tokens=MAX), score(bad, tokens=MAX, error="cut off"), 3.0)]
    row = summarize(setting, records)
    assert row["prompts"] == 2 and row["counts"]["well_formed"] == 1 and row["counts"]["budget_failure"] == 1
    assert row["shares"]["schema_valid"] == 0.5 and row["mean_seconds"] == 2.0 and row["mean_completion_tokens"] == 74.0
    assert [f["prompt"] for f in row["example_failures"]] == ["p"] and row["example_failures"][0]["budget_failure"]
    table = markdown_table([row])
    assert "| gguf | hermes | required | yes | 0 | 2 | 100% (2) | 50% (1) | 50% (1) | 50% (1) | 1 |" in table


@pytest.mark.parametrize("dialect", ["hermes", "minicpm"])
def test_a_rendered_call_scores_valid_in_each_dialect(dialect):
    # The dialect's own rendering of a valid call (what a model that follows the prompt writes) scores valid.
    d = get_dialect(dialect)
    call = {"id": "c", "type": "function",
            "function": {"name": "add_note", "arguments": {"title": "Dentist", "body": "Tuesday 10", "tags": ["health"]}}}
    text = d.render_calls([call], NOTES)
    s = score(text, expected="add_note", dialect=dialect, calls=[ToolCall("c", "add_note", call["function"]["arguments"])])
    assert s.schema_valid and s.right_tool and not s.runtime_disagrees
