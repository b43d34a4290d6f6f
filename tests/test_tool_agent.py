"""The tool agent's graph with a scripted model (a real model's wording would make these flaky) and a
real MCP server over stdio: approvals through interrupt(), SQLite sessions that survive the process,
the step limit, unusable calls fed back, repeated lookups."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.checkpoint.sqlite import SqliteSaver

from agents.tool_agent import build_tool_agent
from agents.tool_agent import events as ev
from mcp_tools.config import parse_config
from mcp_tools.sessions import McpSessions

SERVER = str(Path(__file__).parent / "mcp_test_server.py")


class ScriptedModel(BaseChatModel):
    """Replies from a script, one per turn; records what each turn was shown and bound."""

    script: list[AIMessage]
    seen: list[list[Any]] = []
    bound: list[dict[str, Any]] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        return self.bind(tools=tools, tool_choice=tool_choice, **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.seen.append(list(messages))
        self.bound.append(kwargs)
        reply = self.script[min(len(self.seen), len(self.script)) - 1]
        return ChatResult(generations=[ChatGeneration(message=reply)])


def call(tool: str, call_id: str, **args) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": tool, "args": args, "id": call_id, "type": "tool_call"}])


@pytest.fixture(scope="module")
def sessions():
    config = parse_config({"mcpServers": {"test": {"command": sys.executable, "args": [SERVER], "timeout": 10}}})
    with McpSessions(config) as live:
        yield live


def agent_with(script, sessions, tmp_path=None, **options):
    model = ScriptedModel(script=script, seen=[], bound=[])
    saver = SqliteSaver(sqlite3.connect(tmp_path / "agent.sqlite", check_same_thread=False)) if tmp_path else None
    from langgraph.checkpoint.memory import InMemorySaver

    return build_tool_agent(model, sessions, checkpointer=saver or InMemorySaver(), **options), model


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def test_a_read_only_call_runs_without_asking_and_the_answer_follows(sessions):
    agent, model = agent_with([call("echo_env", "c1", name="GIVEN"), AIMessage("It is not set.")], sessions)
    events = list(ev.run(agent, "s1", task="is GIVEN set?"))
    assert kinds(events) == ["ToolCallEvent", "ToolResultEvent", "TextDelta", "AnswerEvent"]
    assert events[0].needs_approval is False and events[1].text == "<unset>"
    assert events[-1].text == "It is not set." and events[-1].steps == 2
    # The model's second turn saw its call's result, and it was offered the server's tools.
    assert model.seen[1][-1].content == "<unset>"
    assert {t["function"]["name"] for t in model.bound[0]["tools"]} >= {"bump", "echo_env"}


def test_ask_stops_before_a_side_effect_and_a_denial_reaches_the_model(sessions):
    agent, model = agent_with([call("bump", "c1", by=1), AIMessage("I did not change it.")], sessions)
    events = list(ev.run(agent, "s2", task="bump it"))
    assert kinds(events) == ["ToolCallEvent", "ApprovalNeeded"]
    assert events[0].needs_approval and events[1].calls[0]["name"] == "bump"
    assert ev.pending_approval(agent, "s2") is not None
    events = list(ev.run(agent, "s2", resume={"c1": "deny"}))
    assert kinds(events)[:1] == ["ToolResultEvent"] and events[0].denied
    assert "did not allow" in model.seen[-1][-1].content
    assert events[-1] == ev.AnswerEvent("I did not change it.", 2)


def test_an_approved_call_runs_once(sessions):
    before = json.loads(sessions.call("bump", {"by": 0}).text)["value"]
    agent, _ = agent_with([call("bump", "c1", by=10), AIMessage("done")], sessions)
    list(ev.run(agent, "s3", task="bump by 10"))
    events = list(ev.run(agent, "s3", resume="approve"))
    result = next(e for e in events if isinstance(e, ev.ToolResultEvent))
    assert not result.is_error and json.loads(result.text)["value"] == before + 10
    assert json.loads(sessions.call("bump", {"by": 0}).text)["value"] == before + 10  # not run twice


def test_never_refuses_side_effects_without_asking(sessions):
    agent, _ = agent_with([call("bump", "c1", by=1), AIMessage("refused")], sessions, approve="never")
    events = list(ev.run(agent, "s4", task="bump"))
    assert "ApprovalNeeded" not in kinds(events)
    assert next(e for e in events if isinstance(e, ev.ToolResultEvent)).denied


def test_a_session_waiting_for_approval_survives_the_process(sessions, tmp_path):
    agent, _ = agent_with([call("bump", "c1", by=1)], sessions, tmp_path)
    assert kinds(ev.run(agent, "durable", task="bump")) == ["ToolCallEvent", "ApprovalNeeded"]
    # A new process: a new agent, model and database connection on the same file.
    again, model = agent_with([AIMessage("bumped")], sessions, tmp_path)
    waiting = ev.pending_approval(again, "durable")
    assert waiting and waiting.calls[0]["args"] == {"by": 1}
    events = list(ev.run(again, "durable", resume="approve"))
    assert not next(e for e in events if isinstance(e, ev.ToolResultEvent)).is_error
    assert events[-1].text == "bumped"
    assert not ev.is_unfinished(again, "durable")
    # The next task in the session sees the whole conversation.
    list(ev.run(again, "durable", task="and now?"))
    assert [m.content for m in model.seen[-1] if isinstance(m, HumanMessage)] == ["bump", "and now?"]


def test_the_step_limit_ends_with_an_answer_without_tools(sessions):
    looping = [call("echo_env", f"c{i}", name=f"V{i}") for i in range(10)]
    agent, model = agent_with(looping, sessions, max_steps=3)
    events = list(ev.run(agent, "s5", task="loop"))
    assert sum(isinstance(e, ev.ToolResultEvent) for e in events) == 3
    assert "StepLimitEvent" in kinds(events) and isinstance(events[-1], ev.AnswerEvent)
    assert model.bound[-1]["tool_choice"] == "none"
    assert "used all 3 steps" in model.seen[-1][-1].content


def test_an_unusable_call_goes_back_to_the_model_with_the_reason(sessions):
    broken = AIMessage("", invalid_tool_calls=[{"name": None, "args": "there is no tool named 'x'", "id": "c1",
                                                "error": "there is no tool named 'x'", "type": "invalid_tool_call"}])
    agent, model = agent_with([broken, AIMessage("ok")], sessions)
    events = list(ev.run(agent, "s6", task="try"))
    assert kinds(events)[0] == "InvalidCallEvent" and "no tool named 'x'" in events[0].error
    assert "no tool named 'x'" in model.seen[1][-1].content


def test_a_repeated_lookup_is_answered_from_the_earlier_result(sessions):
    agent, _ = agent_with([call("echo_env", "c1", name="GIVEN"), call("echo_env", "c2", name="GIVEN"),
                           AIMessage("done")], sessions)
    results = [e for e in ev.run(agent, "s7", task="twice") if isinstance(e, ev.ToolResultEvent)]
    assert "already called echo_env" in results[1].text


def test_thoughts_are_split_from_the_answer_across_chunks():
    splitter = ev.ThoughtSplitter()
    pieces = [d for chunk in ["<|thought_st", "art|>plan", " it<|thought_", "end|>The answer"] for d in splitter.feed(chunk)]
    assert "".join(d.text for d in pieces if d.thought) == "plan it"
    assert "".join(d.text for d in pieces if not d.thought) == "The answer"
    assert ev.strip_thoughts("<think>hmm</think> 42") == "42"


def test_bad_input_is_answered_with_messages_and_the_session_goes_on(tmp_path):
    """A missing server command, a tool that raises, an unknown tool, arguments of the wrong type and a
    path escape on the real `files` server: each is a message, and the model still gets to answer."""
    from mcp_tools.config import builtin_servers

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("vault 8812")
    files = [s for s in builtin_servers(root) if s.name == "files"]
    config = files + parse_config({"mcpServers": {
        "test": {"command": sys.executable, "args": [SERVER]},
        "ghost": {"command": "no-such-mcp-server-binary"},
    }})
    reports = []
    with McpSessions(config, report=reports.append) as live:
        assert any("ghost" in r and "was not found" in r for r in reports)
        script = [AIMessage("", tool_calls=[
            {"name": "fail", "args": {"message": "the disk is full"}, "id": "a", "type": "tool_call"},
            {"name": "launch", "args": {}, "id": "b", "type": "tool_call"},
            {"name": "echo_env", "args": {"name": 7}, "id": "c", "type": "tool_call"},
            {"name": "read_file", "args": {"path": "../secret.txt"}, "id": "d", "type": "tool_call"},
        ]), AIMessage("Nothing worked.")]
        agent, model = agent_with(script, live, approve="auto")
        events = list(ev.run(agent, "bad", task="try everything"))
    results = {e.id: e for e in events if isinstance(e, ev.ToolResultEvent)}
    assert all(r.is_error for r in results.values())
    assert "the disk is full" in results["a"].text
    assert "no tool named 'launch'" in results["b"].text
    assert "7 is not of type 'string'" in results["c"].text
    assert "8812" not in results["d"].text and "leave the root folder" in results["d"].text
    assert events[-1] == ev.AnswerEvent("Nothing worked.", 2)


def test_an_integer_beyond_64_bits_is_sent_back_not_checkpointed(sessions, tmp_path):
    agent, model = agent_with([call("bump", "c1", by=10**30), AIMessage("ok")], sessions, tmp_path, approve="auto")
    events = list(ev.run(agent, "huge", task="bump a lot"))
    assert kinds(events)[0] == "InvalidCallEvent" and "64 bits" in events[0].error
    assert events[-1].text == "ok"  # and the SQLite checkpoints held every step


def test_a_tool_limit_offers_the_tools_closest_to_the_task(sessions):
    agent, model = agent_with([call("echo_env", "c1", name="HOME"), AIMessage("done")], sessions, tool_limit=2)
    list(ev.run(agent, "limited", task="What is the value of the environment variable HOME?"))
    first = [t["function"]["name"] for t in model.bound[0]["tools"]]
    assert len(first) == 2 and "echo_env" in first
    # A tool already called in the task stays offered on the next turn.
    assert "echo_env" in [t["function"]["name"] for t in model.bound[1]["tools"]]


class SmallContextModel(ScriptedModel):
    """Refuses prompts of more than `fits` messages, as the runtime refuses a prompt over --ctx."""

    fits: int = 4

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        from runtime.errors import ContextLengthError

        if len(messages) > self.fits:
            self.seen.append(list(messages))
            raise ContextLengthError("the prompt does not fit")
        return super()._generate(messages, stop, run_manager, **kwargs)


def test_a_session_too_long_for_the_context_keeps_only_the_current_task(sessions):
    from langgraph.checkpoint.memory import InMemorySaver

    model = SmallContextModel(script=[AIMessage("one"), AIMessage("two"), AIMessage("three")], seen=[], bound=[])
    agent = build_tool_agent(model, sessions, checkpointer=InMemorySaver())
    for task in ("first", "second", "third"):
        answer = list(ev.run(agent, "long", task=task))[-1]
    # The third task's prompt (system + 5 messages) did not fit; it ran with the system prompt and itself.
    assert isinstance(answer, ev.AnswerEvent) and answer.text in ("two", "three")
    assert [m.content for m in model.seen[-1][1:]] == ["third"]


def test_a_valid_call_runs_and_an_unusable_one_in_the_same_reply_is_explained(sessions):
    both = AIMessage("", tool_calls=[{"name": "echo_env", "args": {"name": "GIVEN"}, "id": "ok", "type": "tool_call"}],
                     invalid_tool_calls=[{"name": None, "args": "there is no tool named 'y'", "id": "bad",
                                          "error": None, "type": "invalid_tool_call"}])
    agent, model = agent_with([both, AIMessage("done")], sessions)
    list(ev.run(agent, "mixed", task="go"))
    second_turn = model.seen[1]
    assert second_turn[-2].content == "<unset>" and "no tool named 'y'" in second_turn[-1].content


def test_a_huge_tool_result_is_clipped():
    from agents.tool_agent.graph import MAX_RESULT_CHARS, _clip

    clipped = _clip("x" * (MAX_RESULT_CHARS + 500))
    assert len(clipped) < MAX_RESULT_CHARS + 200 and "500 more characters cut" in clipped


def test_a_lookup_repeated_after_a_write_runs_again(sessions):
    script = [call("echo_env", "c1", name="GIVEN"), call("bump", "c2", by=1), call("echo_env", "c3", name="GIVEN"),
              AIMessage("done")]
    agent, _ = agent_with(script, sessions, approve="auto")
    results = [e for e in ev.run(agent, "rw", task="look, write, look") if isinstance(e, ev.ToolResultEvent)]
    assert results[2].text == "<unset>"  # run again, not answered from before the write
