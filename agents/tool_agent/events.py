"""A tool-agent run as events: what a terminal or the TUI shows, in the order it happens.

    TextDelta        streamed model text (thought=True inside <|thought_start|>… or <think>…)
    ToolCallEvent    a call the model asked for (and whether it needs the user's approval)
    ApprovalNeeded   the run stopped at interrupt(): answer with run(..., resume=decisions)
    ToolResultEvent  what a call returned (or why it did not run)
    InvalidCallEvent a call the model began but that could not be used; the reason goes back to it
    AnswerEvent      the final reply of the task, thoughts removed
    StepLimitEvent   the step budget ran out; the model was asked to answer without tools

Sessions are LangGraph threads in the agent's checkpointer: run() with a session id continues that
conversation; run() with neither a task nor a resume value finishes a task a dead process left.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langgraph.types import Command

from agents.tool_agent.graph import ToolAgent, invalid_call_reason

THOUGHT_MARKERS = (("<|thought_start|>", "<|thought_end|>"), ("<think>", "</think>"))
THOUGHT_BLOCK = re.compile("|".join(re.escape(a) + r".*?(?:" + re.escape(b) + "|$)" for a, b in THOUGHT_MARKERS),
                           re.DOTALL)


@dataclass(frozen=True)
class TextDelta:
    text: str
    thought: bool = False


@dataclass(frozen=True)
class ToolCallEvent:
    id: str
    name: str
    args: dict[str, Any]
    needs_approval: bool


@dataclass(frozen=True)
class ApprovalNeeded:
    calls: list[dict[str, Any]]  # {"id", "name", "args", "server", "destructive"}


@dataclass(frozen=True)
class ToolResultEvent:
    id: str
    name: str
    text: str
    is_error: bool
    denied: bool = False
    seconds: float = 0.0
    structured: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class InvalidCallEvent:
    error: str


@dataclass(frozen=True)
class AnswerEvent:
    text: str
    steps: int


@dataclass(frozen=True)
class StepLimitEvent:
    max_steps: int


AgentEvent = (TextDelta | ToolCallEvent | ApprovalNeeded | ToolResultEvent | InvalidCallEvent | AnswerEvent
              | StepLimitEvent)


def strip_thoughts(text: str) -> str:
    return THOUGHT_BLOCK.sub("", text).strip()


class ThoughtSplitter:
    """Marks streamed text as thought or not, across chunk boundaries that may split a marker."""

    def __init__(self) -> None:
        self.inside: str | None = None  # the end marker we wait for
        self.pending = ""

    def feed(self, text: str) -> list[TextDelta]:
        self.pending += text
        out = []
        while self.pending:
            wanted = [self.inside] if self.inside else [start for start, _ in THOUGHT_MARKERS]
            hits = [(self.pending.find(m), m) for m in wanted if m in self.pending]
            if hits:
                at, marker = min(hits)
                if at:
                    out.append(TextDelta(self.pending[:at], thought=self.inside is not None))
                self.pending = self.pending[at + len(marker):]
                self.inside = None if self.inside else dict(THOUGHT_MARKERS)[marker]
                continue
            keep = max((k for m in wanted for k in range(1, len(m)) if self.pending.endswith(m[:k])), default=0)
            ready = self.pending[: len(self.pending) - keep]
            if ready:
                out.append(TextDelta(ready, thought=self.inside is not None))
            self.pending = self.pending[len(ready):]
            break
        return out


def config_for(agent: ToolAgent, session_id: str) -> dict[str, Any]:
    # Each step is a few graph nodes; the step limit, not LangGraph's recursion limit, should stop a run.
    return {"configurable": {"thread_id": session_id}, "recursion_limit": 4 * agent.max_steps + 20}


def pending_approval(agent: ToolAgent, session_id: str) -> ApprovalNeeded | None:
    """The approval a session waits for, if it stopped at one."""
    state = agent.graph.get_state(config_for(agent, session_id))
    for interrupt in state.interrupts:
        if isinstance(interrupt.value, dict) and interrupt.value.get("type") == "approval":
            return ApprovalNeeded(interrupt.value["calls"])
    return None


def is_unfinished(agent: ToolAgent, session_id: str) -> bool:
    """A task was under way when the process stopped (or waits for approval)."""
    return bool(agent.graph.get_state(config_for(agent, session_id)).next)


def has_history(agent: ToolAgent, session_id: str) -> bool:
    return bool(agent.graph.get_state(config_for(agent, session_id)).values.get("messages"))


def run(agent: ToolAgent, session_id: str, task: str | None = None, resume: Any = None,
        history: list | None = None) -> Iterator[AgentEvent]:
    """Run a task (or resume an approval, or finish an interrupted task) and yield what happens.

    history: LangChain messages that come before the task in a new session (a chat kept elsewhere,
    such as the TUI's store, whose earlier turns the model should see)."""
    if resume is not None:
        graph_input: Any = Command(resume=resume)
    elif task is not None:
        graph_input = {"messages": [*(history or []), HumanMessage(task)], "steps": 0, "decisions": {}}
    else:
        graph_input = None
    splitter = ThoughtSplitter()
    streamed_text = False
    for mode, payload in agent.graph.stream(graph_input, config_for(agent, session_id),
                                            stream_mode=["messages", "updates"]):
        if mode == "messages":
            chunk, meta = payload
            if isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "call_model" and chunk.content:
                text = chunk.content if isinstance(chunk.content, str) else _text_of(chunk.content)
                streamed_text = True
                yield from splitter.feed(text)
            continue
        for node, update in payload.items():
            if node == "__interrupt__":
                for interrupt in update:
                    if isinstance(interrupt.value, dict) and interrupt.value.get("type") == "approval":
                        yield ApprovalNeeded(interrupt.value["calls"])
                continue
            yield from _events_of_update(agent, node, update or {}, streamed_text)
            if node == "call_model":
                splitter, streamed_text = ThoughtSplitter(), False


def _events_of_update(agent: ToolAgent, node: str, update: dict[str, Any], streamed: bool) -> Iterator[AgentEvent]:
    for message in update.get("messages", []):
        if isinstance(message, AIMessage) and node == "call_model":
            if not streamed and message.content:  # a model that does not stream: show its text whole
                yield from ThoughtSplitter().feed(_text_of(message.content))
            if update.get("steps", 0) > agent.max_steps:
                yield StepLimitEvent(agent.max_steps)
            for call in message.tool_calls:
                tool = agent.sessions.tool(call["name"])
                needs = bool(tool and tool.needs_approval and agent.approve_mode == "ask")
                yield ToolCallEvent(call["id"], call["name"], call["args"], needs)
            for invalid in message.invalid_tool_calls:
                yield InvalidCallEvent(invalid_call_reason(invalid))
            if not message.tool_calls and not message.invalid_tool_calls:
                yield AnswerEvent(strip_thoughts(_text_of(message.content)), update.get("steps", 0))
        elif isinstance(message, ToolMessage):
            artifact = message.artifact or {}
            yield ToolResultEvent(message.tool_call_id, message.name or "", _text_of(message.content),
                                  is_error=message.status == "error", denied=bool(artifact.get("denied")),
                                  seconds=artifact.get("seconds", 0.0), structured=artifact.get("structured"))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") if isinstance(block, dict) else str(block) for block in content or [])
