"""The tool agent's graph: call_model -> approve -> run_tools -> call_model ..., until an answer.

    START -> call_model --(tool calls)--> approve -> run_tools -> call_model
                        --(unusable call)--> report_invalid_call -> call_model
                        --(an answer)--> END

Approval (mode, per session): `ask` stops the graph with interrupt() before a call that has side
effects (a tool without MCP's readOnlyHint, not in its server's alwaysAllow) and waits for the user's
approve / deny; `auto` runs every call; `never` runs read-only tools and refuses the rest. Approval
sits in its own node, before run_tools, because LangGraph re-runs an interrupted node from its start
on resume: no tool may have run in the node that asks.

A step is one model turn. After max_steps turns the model gets one last turn with tools switched
off, told to answer from what it has. Checkpoints (SQLite) make every step durable, so a session
killed mid-task resumes from its last finished step.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from agents.tool_agent import prompts
from runtime.errors import ContextLengthError
from agents.tool_agent.state import ToolAgentState
from agents.tool_agent.tool_selection import ToolSelector
from mcp_tools.sessions import McpSessions

APPROVAL_MODES = ("ask", "auto", "never")
DEFAULT_MAX_STEPS = 8


class ToolAgent:
    """The compiled graph and what it needs at run time (the model and the open MCP sessions)."""

    def __init__(self, model: BaseChatModel, sessions: McpSessions, *, approve: str = "ask",
                 max_steps: int = DEFAULT_MAX_STEPS, require_tool: bool = False, tool_limit: int | None = None,
                 checkpointer=None, system_prompt: str = prompts.SYSTEM_PROMPT):
        if approve not in APPROVAL_MODES:
            raise ValueError(f"approve must be one of {', '.join(APPROVAL_MODES)} (got {approve!r})")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 (got {max_steps})")
        self.model = model
        self.sessions = sessions
        self.approve_mode = approve
        self.max_steps = max_steps
        self.require_tool = require_tool  # the first turn of a task must call a tool (small models rarely start one)
        # Offer only the tool_limit tools closest to the task (tool_selection.py); None offers them all.
        self.tool_selector = ToolSelector(tool_limit) if tool_limit else None
        self.system_prompt = system_prompt
        self.graph = self._build().compile(checkpointer=checkpointer)

    # -- nodes -----------------------------------------------------------------------------------

    def call_model(self, state: ToolAgentState) -> dict[str, Any]:
        """One model turn over the whole conversation; tools off once the step budget is spent."""
        steps = state.get("steps", 0)
        tools = [tool.to_openai() for tool in self._offered_tools(state["messages"])]
        messages = [SystemMessage(self.system_prompt), *state["messages"]]
        if steps >= self.max_steps:
            messages.append(HumanMessage(prompts.STEP_LIMIT.format(steps=self.max_steps)))
            model = self.model.bind_tools(tools, tool_choice="none") if tools else self.model
        elif tools:
            model = self.model.bind_tools(tools, tool_choice="required" if self.require_tool and steps == 0 else None)
        else:
            model = self.model
        try:
            reply = model.invoke(messages)
        except ContextLengthError:
            # Earlier tasks of a long session no longer fit: keep the system prompt and this task only.
            current = _current_task_messages(state["messages"])
            if len(current) == len(state["messages"]):
                return {"messages": [AIMessage(prompts.CONTEXT_FULL)], "steps": steps + 1, "decisions": {}}
            try:
                reply = model.invoke([messages[0], *current, *messages[1 + len(state["messages"]):]])
            except ContextLengthError:
                return {"messages": [AIMessage(prompts.CONTEXT_FULL)], "steps": steps + 1, "decisions": {}}
        reply = _refuse_oversized_integers(reply)
        if steps >= self.max_steps and isinstance(reply, AIMessage) and (reply.tool_calls or reply.invalid_tool_calls):
            # A model that calls anyway gets no more tools: keep its words, drop the calls.
            reply = AIMessage(content=reply.content, id=reply.id, response_metadata=reply.response_metadata)
        return {"messages": [reply], "steps": steps + 1, "decisions": {}}

    def _offered_tools(self, messages: list) -> list:
        tools = self.sessions.tools()
        if self.tool_selector is None:
            return tools
        called = {call["name"] for m in messages if isinstance(m, AIMessage) for call in m.tool_calls}
        return self.tool_selector.select(_current_task(messages), tools, keep=called)

    def approve(self, state: ToolAgentState) -> dict[str, Any]:
        """Decide each pending call: by the mode, or by asking the user through interrupt()."""
        calls = _last_ai(state).tool_calls
        decisions: dict[str, str] = {}
        ask = []
        for call in calls:
            tool = self.sessions.tool(call["name"])
            if tool is None or not tool.needs_approval or self.approve_mode == "auto":
                decisions[call["id"]] = "approve"  # unknown tools fail in run_tools with a message for the model
            elif self.approve_mode == "never":
                decisions[call["id"]] = "deny"
            else:
                ask.append({"id": call["id"], "name": call["name"], "args": call["args"], "server": tool.server,
                            "destructive": tool.destructive})
        if ask:
            answer = interrupt({"type": "approval", "calls": ask})
            decisions.update(_read_decisions(answer, [c["id"] for c in ask]))
        return {"decisions": decisions}

    def run_tools(self, state: ToolAgentState) -> dict[str, Any]:
        """Run the approved calls through MCP; every outcome becomes a tool message for the model."""
        decisions = state.get("decisions", {})
        earlier = _earlier_results(state["messages"][:-1], self.sessions)
        out = []
        for call in _last_ai(state).tool_calls:
            name, args, call_id = call["name"], call["args"], call["id"]
            if decisions.get(call_id) != "approve":
                out.append(ToolMessage(prompts.DENIED, tool_call_id=call_id, name=name, status="error",
                                       artifact={"denied": True}))
                continue
            tool = self.sessions.tool(name)
            key = _call_key(name, args)
            if tool is not None and tool.read_only and key in earlier:
                # Small models loop on the same lookup; a read-only call's answer cannot have changed.
                out.append(ToolMessage(prompts.REPEATED.format(name=name, result=earlier[key]), tool_call_id=call_id,
                                       name=name, artifact={"repeated": True}))
                continue
            result = self.sessions.call(name, args)
            out.append(ToolMessage(_clip(result.text), tool_call_id=call_id, name=name,
                                   status="error" if result.is_error else "success",
                                   artifact={"server": result.server, "structured": result.structured,
                                             "seconds": round(result.seconds, 4)}))
        invalid = _last_ai(state).invalid_tool_calls
        if invalid:  # calls in the same reply that could not be used: the model hears why, after the results
            reasons = "; ".join(invalid_call_reason(c) for c in invalid)
            out.append(HumanMessage(prompts.INVALID_CALL.format(error=reasons), additional_kwargs={"tool_call_error": True}))
        return {"messages": out}

    def report_invalid_call(self, state: ToolAgentState) -> dict[str, Any]:
        """A call the model began but that could not be used goes back to it, with the reason."""
        errors = [invalid_call_reason(c) for c in _last_ai(state).invalid_tool_calls]
        return {"messages": [HumanMessage(prompts.INVALID_CALL.format(error="; ".join(errors)),
                                          additional_kwargs={"tool_call_error": True})]}

    # -- routes ----------------------------------------------------------------------------------

    def after_model(self, state: ToolAgentState) -> Literal["approve", "report_invalid_call", "__end__"]:
        reply = _last_ai(state)
        if reply.tool_calls:
            return "approve"
        if reply.invalid_tool_calls and state.get("steps", 0) <= self.max_steps:
            return "report_invalid_call"
        return END

    def _build(self) -> StateGraph:
        graph = StateGraph(ToolAgentState)
        graph.add_node("call_model", self.call_model)
        graph.add_node("approve", self.approve)
        graph.add_node("run_tools", self.run_tools)
        graph.add_node("report_invalid_call", self.report_invalid_call)
        graph.add_edge(START, "call_model")
        graph.add_conditional_edges("call_model", self.after_model)
        graph.add_edge("approve", "run_tools")
        graph.add_edge("run_tools", "call_model")
        graph.add_edge("report_invalid_call", "call_model")
        return graph


def build_tool_agent(model: BaseChatModel, sessions: McpSessions, **options: Any) -> ToolAgent:
    return ToolAgent(model, sessions, **options)


INT64 = 2**63


def _refuse_oversized_integers(reply: AIMessage) -> AIMessage:
    """Model output is untrusted: a call whose arguments hold an integer beyond 64 bits (which no MCP
    server stores, and which the SQLite checkpoints cannot serialise) becomes an unusable call that
    goes back to the model with the reason."""
    if not isinstance(reply, AIMessage) or not reply.tool_calls:
        return reply

    def too_big(value: Any) -> bool:
        if isinstance(value, int) and not isinstance(value, bool):
            return not -INT64 <= value < INT64
        if isinstance(value, dict):
            return any(too_big(v) for v in value.values())
        if isinstance(value, list):
            return any(too_big(v) for v in value)
        return False

    bad = [call for call in reply.tool_calls if too_big(call["args"])]
    if not bad:
        return reply
    invalid = [*reply.invalid_tool_calls, *({
        "type": "invalid_tool_call", "id": call["id"], "name": call["name"], "args": None,
        "error": f"{call['name']}: an integer argument is out of range (integers must fit in 64 bits)"} for call in bad)]
    return reply.model_copy(update={"tool_calls": [c for c in reply.tool_calls if c not in bad],
                                    "invalid_tool_calls": invalid})


MAX_RESULT_CHARS = 8000  # about 2K tokens: one result must not fill a small model's context


def _clip(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return (text[:MAX_RESULT_CHARS] + f"\n[... {len(text) - MAX_RESULT_CHARS} more characters cut; "
            "ask the tool for a smaller part if you need them]")


def _current_task_messages(messages: list) -> list:
    """The messages of the task under way: from the last message a person wrote as a task."""
    for at in range(len(messages) - 1, -1, -1):
        message = messages[at]
        if isinstance(message, HumanMessage) and not message.additional_kwargs.get("tool_call_error"):
            return messages[at:]
    return messages


def _current_task(messages: list) -> str:
    """The user's words for the task under way: the last message a person wrote (not an error report)."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage) and not message.additional_kwargs.get("tool_call_error"):
            return message.content if isinstance(message.content, str) else str(message.content)
    return ""


def _last_ai(state: ToolAgentState) -> AIMessage:
    for message in reversed(state["messages"]):
        if isinstance(message, AIMessage):
            return message
    raise ValueError("the conversation has no assistant message")


def invalid_call_reason(invalid: dict[str, Any]) -> str:
    """Why a call was unusable. LangChain chat models put it in `error`; ours, whose streamed chunks
    lose `error` when merged, keep it in `args` (agents/chat_model.py)."""
    return invalid.get("error") or (invalid.get("args") if isinstance(invalid.get("args"), str) else None) \
        or "the call could not be read"


def _read_decisions(answer: Any, ids: list[str]) -> dict[str, str]:
    """The user's answer to an approval request: "approve"/"deny" (or a bool) for all, or per call id.
    Anything unclear is a denial: a side effect runs only on a clear yes."""
    if isinstance(answer, bool):
        answer = "approve" if answer else "deny"
    if isinstance(answer, str):
        return {i: ("approve" if answer == "approve" else "deny") for i in ids}
    if isinstance(answer, dict):
        return {i: ("approve" if answer.get(i) in ("approve", True) else "deny") for i in ids}
    return {i: "deny" for i in ids}


def _call_key(name: str, args: dict[str, Any]) -> str:
    return name + json.dumps(args, sort_keys=True, ensure_ascii=False)


def _earlier_results(messages: list, sessions: McpSessions) -> dict[str, str]:
    """call key -> the result text, for successful read-only calls since the last call with side effects
    (after a write, the same lookup may answer differently)."""
    calls = {}
    results: dict[str, str] = {}
    for message in messages:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                calls[call["id"]] = call
        elif isinstance(message, ToolMessage) and message.status != "error" and message.tool_call_id in calls:
            call = calls[message.tool_call_id]
            tool = sessions.tool(call["name"])
            if tool is not None and tool.read_only:
                results[_call_key(call["name"], call["args"])] = message.content
            elif not (message.artifact or {}).get("repeated"):
                results.clear()
    return results
