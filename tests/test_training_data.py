"""The training data builders: MCP trajectories from real executions, survey steps from the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from training.data import mcp_trajectories, survey_samples

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built():
    return anyio.run(mcp_trajectories.build, 1, lambda _: None)


def test_held_out_tools_never_appear_in_training(built):
    train, heldout = built
    held = set(mcp_trajectories.HELD_OUT.values())
    called = {c["function"]["name"] for s in train for m in s["messages"] for c in m.get("tool_calls") or []}
    assert not called & held
    assert {s["expected"]["name"] for s in heldout} == held
    assert {s["server"] for s in train} == set(mcp_trajectories.HELD_OUT)  # every server still teaches


def test_trajectories_follow_minicpm_mcp_and_carry_real_results(built):
    train, _ = built
    for sample in train:
        roles = [m["role"] for m in sample["messages"] if m["role"] != "system"]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert roles[1:-1] == ["assistant", "tool"] * ((len(roles) - 2) // 2)
        final = sample["messages"][-1]["content"]
        assert final.startswith("<|thought_start|>") and "The answer is: " in final
        for m in sample["messages"]:
            if m.get("tool_calls"):
                assert m["content"].startswith("<|thought_start|>") and m["content"].endswith("<|thought_end|>")
    notes = next(s for s in train if s["id"].startswith("notes-get_note"))
    result = json.loads(next(m["content"] for m in notes["messages"] if m["role"] == "tool"))
    assert result.get("title")  # what the notes server really returned for the fixture notebook


def test_the_committed_held_out_split_is_what_the_builder_makes(built):
    _, heldout = built
    committed = (ROOT / "training" / "data" / "mcp" / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in committed] == heldout
    from benchmarks.mcp_eval import load_samples

    assert len(load_samples(ROOT / "training" / "data" / "mcp" / "heldout.jsonl")) == len(heldout)


def test_answers_summarize_the_result():
    assert mcp_trajectories.summarize_result('{"result": 391}') == "391"
    text = mcp_trajectories.summarize_result(json.dumps({"matches": [{"path": "a.py"}, {"path": "b.py"}], "count": 2}))
    assert text.startswith("matches: 2 item(s)") and "count: 2" in text
    assert len(mcp_trajectories.summarize_result("x" * 5000)) <= mcp_trajectories.ANSWER_CHARS


def test_survey_samples_plan_then_write_with_retrieved_citations():
    from agents.survey_agent.actions import parse_response
    from survey.document import SurveyDocument
    from training.rewards import survey_reward

    samples = survey_samples.build(None, ["retrieval-augmented generation"], log=lambda _: None)
    kinds = [s["kind"] for s in samples]
    assert kinds[0] == "query2plan" and kinds.count("plan2survey") >= 2
    document = SurveyDocument(query="retrieval-augmented generation")
    for sample in samples:
        action = parse_response(sample["messages"][-1]["content"])
        assert action.error is None
        document.update(action.update, action.content)  # the survey agent's own document accepts every step
        assert survey_reward(sample["messages"][-1]["content"], sample["retrieved"]) == 1.0
    assert action.tool == "finalize"
    assert "**Retrieved Information**" in samples[1]["messages"][1]["content"]
    assert survey_reward(sample["messages"][-1]["content"].replace(sample["retrieved"][0], "arxivid9999.99999"),
                         sample["retrieved"]) < 1.0
    assert survey_reward("no tags at all", []) == 0.0
