"""The MCP tool-call evaluation (benchmarks/mcp_eval.py) and its data set (benchmarks/build_mcp_eval.py).

The metric on hand-made calls; the shipped set against the servers' real tool lists; one tiny run
on the embedded model.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import anyio
import pytest
from jsonschema import Draft202012Validator

from benchmarks import build_mcp_eval, mcp_eval
from benchmarks.mcp_eval import load_samples, normalize, same_value, score_call, spread
from runtime.messages import check_messages
from runtime.tool_calls.tools import check_tools

EXPECTED = {"name": "convert_units", "arguments": {"value": 12, "from_unit": "km", "to_unit": "mi"}}
SAMPLES = load_samples(mcp_eval.DATA)


def scores(name, arguments, expected=EXPECTED):
    s = score_call(expected, name, arguments)
    return s.func, s.param, s.value


# ---- the metric ---------------------------------------------------------------------------------

def test_an_exact_call_scores_on_all_three():
    assert scores("convert_units", {"value": 12, "from_unit": "km", "to_unit": "mi"}) == (True, True, True)


def test_the_metrics_are_nested():
    assert scores(None, None) == (False, False, False)  # no call
    assert scores("calculate", {"value": 12, "from_unit": "km", "to_unit": "mi"}) == (False, False, False)
    # right tool, wrong argument names: the values are not even looked at
    assert scores("convert_units", {"amount": 12, "from_unit": "km", "to_unit": "mi"}) == (True, False, False)
    # right names, one wrong value
    assert scores("convert_units", {"value": 12, "from_unit": "km", "to_unit": "miles"}) == (True, True, False)


def test_extra_or_missing_arguments_fail_param():
    assert scores("convert_units", {"value": 12, "from_unit": "km"}) == (True, False, False)
    extra = {"value": 12, "from_unit": "km", "to_unit": "mi", "precision": 2}
    assert scores("convert_units", extra) == (True, False, False)
    # a default the request did not ask for counts as an extra argument, as upstream scores it
    expected = {"name": "list_dir", "arguments": {"path": "docs"}}
    assert scores("list_dir", {"path": "docs", "recursive": False}, expected) == (True, False, False)
    assert scores("list_units", {}, {"name": "list_units", "arguments": {}}) == (True, True, True)


def test_values_are_normalized_on_both_sides():
    assert normalize(" KM ") == "km"
    assert normalize("12") == 12 and normalize("-3.5") == -3.5 and normalize("1e3") == 1000
    assert normalize("True") is True and normalize("false") is False
    assert normalize(["A ", "7"]) == ["a", 7]
    assert scores("convert_units", {"value": "12", "from_unit": " KM", "to_unit": "Mi "}) == (True, True, True)
    assert scores("convert_units", {"value": 12.0, "from_unit": "km", "to_unit": "mi"}) == (True, True, True)
    assert same_value(True, "true") and same_value("TRUE", True)
    assert not same_value(True, 1) and not same_value(1, "true")  # a boolean equals only a boolean
    assert same_value(["Work", "Ideas"], ["work", "ideas"]) and not same_value(["work"], ["work", "ideas"])
    assert not same_value("2025-06-01", "2025-06-01T00:00")  # no date parsing: strings compare as text
    assert not same_value("nan", float("nan"))  # "nan" is not a numeric string


def test_limit_spreads_over_the_set():
    chosen = spread(SAMPLES, 8)
    assert len(chosen) == 8 and len({s.id for s in chosen}) == 8
    assert {s.server for s in chosen} == {s.server for s in SAMPLES}
    assert spread(SAMPLES, None) == SAMPLES and spread(SAMPLES, 10_000) == SAMPLES


def test_bad_data_is_one_clear_message(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "server": "calc", "tools": [], "messages": []}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:1 is not a sample"):
        load_samples(bad)
    with pytest.raises(SystemExit, match="cannot read --data"):
        load_samples(tmp_path / "missing.jsonl")


# ---- the shipped set ----------------------------------------------------------------------------

def test_every_expected_call_is_valid_against_its_servers_real_schema():
    assert 120 <= len(SAMPLES) <= 220
    assert len({s.id for s in SAMPLES}) == len(SAMPLES)
    for s in SAMPLES:
        tools = {t.name: t for t in check_tools(s.tools)}
        assert s.expected["name"] in tools, s.id
        schema = tools[s.expected["name"]].parameters
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(s.expected["arguments"])]
        assert not errors, (s.id, errors)
        messages = check_messages(s.messages)
        assert messages[-1]["role"] in ("user", "tool"), s.id
        assert sum(m["role"] == "user" for m in messages) == 1, s.id


def test_every_tool_of_every_server_is_covered():
    per_tool = Counter((s.server, s.expected["name"]) for s in SAMPLES)
    for s in SAMPLES:  # every tool the sample's server offers has its own samples
        for tool in s.tools:
            assert per_tool[s.server, tool["function"]["name"]] >= 8, (s.server, tool["function"]["name"])
    multi = [s for s in SAMPLES if s.multi_step]
    assert len(multi) >= 16 and {s.server for s in multi} == {s.server for s in SAMPLES}


def test_the_shipped_tool_lists_are_the_servers_own(tmp_path):
    """The set offers what the servers list today (rebuild it with build_mcp_eval when they change)."""
    from mcp_tools.servers import SERVERS

    build_mcp_eval.make_fixture(tmp_path)
    shipped = {s.server: s.tools for s in SAMPLES}
    for server, tools in shipped.items():
        assert server in SERVERS
        assert anyio.run(build_mcp_eval.list_tools, server, tmp_path) == tools, server


@pytest.mark.slow
def test_the_builder_reproduces_the_shipped_file(tmp_path):
    """Deterministic, and every expected call still runs on today's servers (the builder executes them)."""
    out = tmp_path / "set.jsonl"
    assert build_mcp_eval.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == mcp_eval.DATA.read_text(encoding="utf-8")


# ---- a run, with a scripted backend ---------------------------------------------------------------

class ScriptedServer:
    """Stands in for an OpenAI-compatible server: answers each request from a script keyed by the last message."""

    name = "openai"
    model_label = "scripted"
    chat_template = None

    def __init__(self, script):
        self.stop_token_ids = set()
        self.script = script
        self.requests = []

    def chat(self, messages, params, *, tools, tool_choice, dialect, constrained):
        from runtime.events import GenerationEvent, ToolCall

        self.requests.append((params.temperature, tool_choice, len(tools)))
        calls, error = self.script[messages[-1]["content"]]
        yield GenerationEvent(text="Sure.")
        yield GenerationEvent(finish_reason="tool_calls" if calls else "stop", tool_call_error=error,
                              tool_calls=tuple(ToolCall(f"call_{i}", n, a) for i, (n, a) in enumerate(calls)))


def write_set(path, samples):
    path.write_text("".join(json.dumps({"id": s.id, "server": s.server, "tools": s.tools, "messages": s.messages,
                                        "expected": s.expected}) + "\n" for s in samples))


def test_a_run_scores_the_first_accepted_call_and_counts_rejections(tmp_path, monkeypatch):
    from runtime.backends import base

    exact, wrong, rejected = [s for s in SAMPLES if s.server == "clock" and not s.multi_step][:2] + \
        [next(s for s in SAMPLES if s.server == "notes" and s.multi_step)]
    script = {
        exact.messages[-1]["content"]: ([(exact.expected["name"], exact.expected["arguments"]), ("list_units", {})], None),
        wrong.messages[-1]["content"]: ([(wrong.expected["name"], {k: "nope" for k in wrong.expected["arguments"]})], None),
        rejected.messages[-1]["content"]: ([], "get_note: 'id' is a required property"),
    }
    server = ScriptedServer(script)
    monkeypatch.setattr(base, "load_backend", lambda *a, **k: server)
    write_set(tmp_path / "set.jsonl", [exact, wrong, rejected])
    parser = argparse.ArgumentParser()
    mcp_eval.add_arguments(parser)
    out = tmp_path / "result.json"
    assert mcp_eval.run(parser.parse_args(["--data", str(tmp_path / "set.jsonl"), "--backend", "openai",
                                           "--out", str(out)])) == 0
    result = json.loads(out.read_text())
    assert result["dialect"] == "openai" and len(result["results"]) == 1  # constraining is the server's business
    row = result["results"][0]
    assert row["constrained"] is None and row["tool_choice"] == "auto"
    assert row["counts"] == {"func": 2, "param": 2, "value": 1, "called": 2, "rejected_calls": 1}
    assert row["per_server"]["clock"]["value"] == 0.5 and row["per_server"]["notes"]["func"] == 0.0
    assert row["multi_step"]["samples"] == 1
    assert {e["kind"] for e in row["example_failures"]} == {"wrong values", "rejected call"}
    assert all(r == (0.0, "auto", len(s.tools)) for r, s in zip(server.requests, [exact, wrong, rejected]))


# ---- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_tiny_run_on_the_embedded_model(tmp_path):
    calc = [s for s in SAMPLES if s.server == "calc" and not s.multi_step and not mcp_eval.system_text(s)][:3]
    data = tmp_path / "three.jsonl"
    write_set(data, calc)
    parser = argparse.ArgumentParser()
    mcp_eval.add_arguments(parser)
    out = tmp_path / "result.json"
    args = parser.parse_args(["--data", str(data), "--max-tokens", "40", "--threads", "1", "--tool-choice", "required",
                              "--out", str(out)])
    assert mcp_eval.run(args) == 0
    result = json.loads(out.read_text())
    assert result["backend"] == "gguf" and result["dialect"] == "hermes"
    assert [r["constrained"] for r in result["results"]] == [True, False]
    for row in result["results"]:
        a = row["average"]
        assert row["samples"] == 3 and set(row["per_server"]) == {"calc"}
        assert a["func"] >= a["param"] >= a["value"]
        assert a["called"] >= a["func"]
    assert len(result["replies"]) == 6
    assert result["results"][0]["counts"]["called"] >= 1  # a forced, constrained call is written
