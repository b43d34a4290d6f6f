"""Chats with tools: the MCP servers the app shares, and one user message run by the tool agent.

A chat enables MCP servers by name; its messages then go through agents/tool_agent (LangGraph) with
approval mode `ask`: a call with side effects stops the graph at its interrupt, the chat shows the
call with Approve / Deny, and the answer resumes the same graph. The conversation itself lives in
the chat store (tui/store.py): the agent gets the earlier turns as history and an in-memory
checkpointer for the turn, and the turn's new messages are copied into the store as they happen.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from agents.tool_agent.events import THOUGHT_BLOCK, THOUGHT_MARKERS, AgentEvent, run, strip_thoughts
from mcp_tools.sessions import McpSessions, McpTool, ToolResult
from runtime.errors import MiniCPMError
from tui.engine import ChatOptions


class McpHost:
    """The servers of the mcpServers config (mcp_tools/config.py), started once, shared by every chat."""

    def __init__(self, config_path: str | None = None, report: Callable[[str], None] | None = None):
        self.config_path = config_path
        self.report = report
        self.sessions: McpSessions | None = None
        self.source = ""
        self.failures: dict[str, str] = {}
        self._lock = threading.Lock()

    def open(self) -> McpSessions:
        """Start the servers (first call only; later calls return the open sessions)."""
        from mcp_tools.config import servers_for

        with self._lock:
            if self.sessions is None:
                servers, self.source = servers_for(self.config_path)
                sessions = McpSessions(servers, report=self.report)
                self.failures = sessions.open()
                self.sessions = sessions
            return self.sessions

    def configured(self) -> list[str]:
        """The servers' names as the config gives them, without starting any."""
        from mcp_tools.config import servers_for

        try:
            return [server.name for server in servers_for(self.config_path)[0]]
        except MiniCPMError:
            return []

    @property
    def is_open(self) -> bool:
        return self.sessions is not None

    def servers(self) -> dict[str, list[McpTool]]:
        """{server: its tools}, every configured server (an empty list for one that did not start)."""
        if self.sessions is None:
            return {}
        listing: dict[str, list[McpTool]] = {s.name: [] for s in self.sessions.servers}
        for tool in self.sessions.tools():
            listing.setdefault(tool.server, []).append(tool)
        return listing

    def close(self) -> None:
        with self._lock:
            if self.sessions is not None:
                self.sessions.close()
                self.sessions = None


class EnabledTools:
    """The tools of the servers a chat enabled: what the tool agent may offer and call (the
    McpSessions interface it uses, narrowed)."""

    def __init__(self, sessions: McpSessions, servers: tuple[str, ...]):
        self.sessions = sessions
        self.enabled = set(servers)

    def tools(self) -> list[McpTool]:
        return [t for t in self.sessions.tools() if t.server in self.enabled]

    def tool(self, name: str) -> McpTool | None:
        tool = self.sessions.tool(name)
        return tool if tool is not None and tool.server in self.enabled else None

    def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        if self.tool(name) is None:
            return ToolResult(name, "", f"Error: there is no tool named '{name}' in this chat "
                              f"(tools: {', '.join(t.name for t in self.tools()) or 'none'})", is_error=True)
        return self.sessions.call(name, arguments)


def to_langchain(messages: list[dict[str, Any]]) -> list:
    """Chat messages (tui/engine.chat_messages) as LangChain messages; the system prompt is left to
    the agent, which puts its own tool instructions beside it."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    out = []
    for m in messages:
        if m["role"] == "user":
            out.append(HumanMessage(m["content"]))
        elif m["role"] == "assistant":
            calls = [{"id": c["id"], "name": c["function"]["name"], "args": c["function"]["arguments"]}
                     for c in m.get("tool_calls", [])]
            out.append(AIMessage(m["content"], tool_calls=calls))
        elif m["role"] == "tool":
            out.append(ToolMessage(m["content"], tool_call_id=m["tool_call_id"], name=m.get("name")))
    return out


def stored_form(message) -> dict[str, Any] | None:
    """A LangChain message of the turn as tui/store.py add_message keyword arguments (None: not
    kept, such as the agent's note to the model about an unusable call)."""
    from langchain_core.messages import AIMessage, ToolMessage

    if isinstance(message, AIMessage):
        text = message.content if isinstance(message.content, str) else str(message.content)
        thinking = "\n".join(m.group(0) for m in THOUGHT_BLOCK.finditer(text))
        for start, end in THOUGHT_MARKERS:
            thinking = thinking.replace(start, "").replace(end, "")
        calls = [{"id": c["id"], "name": c["name"], "args": c["args"]} for c in message.tool_calls]
        return {"role": "assistant", "content": strip_thoughts(text), "thinking": thinking.strip(),
                "tool_calls": calls or None}
    if isinstance(message, ToolMessage):
        artifact = message.artifact or {}
        status = "denied" if artifact.get("denied") else ("error" if message.status == "error" else "complete")
        return {"role": "tool", "content": message.content if isinstance(message.content, str) else str(message.content),
                "tool_call_id": message.tool_call_id, "name": message.name, "status": status}
    return None


class ToolTurn:
    """One user message of a chat with tools, run by the tool agent (approval mode `ask`)."""

    def __init__(self, backend, options: ChatOptions, tools: EnabledTools, system_prompt: str,
                 history: list[dict[str, Any]], task: str):
        from langgraph.checkpoint.memory import InMemorySaver

        from agents.chat_model import ChatMiniCPM
        from agents.tool_agent import build_tool_agent
        from agents.tool_agent.prompts import SYSTEM_PROMPT

        self.model = ChatMiniCPM(backend=backend, temperature=options.temperature, top_p=options.top_p,
                                 max_tokens=options.max_tokens, seed=options.seed,
                                 template_kwargs=options.template_kwargs())
        prompt = f"{system_prompt.strip()}\n\n{SYSTEM_PROMPT}" if system_prompt.strip() else SYSTEM_PROMPT
        self.agent = build_tool_agent(self.model, tools, approve="ask", checkpointer=InMemorySaver(), system_prompt=prompt)
        self.session_id = uuid.uuid4().hex[:12]
        self.history = to_langchain([m for m in history if m["role"] != "system"])
        self.task = task
        self.kept = len(self.history) + 1  # messages of the graph state already in the store (history + task)

    def start(self) -> Iterator[AgentEvent]:
        return run(self.agent, self.session_id, task=self.task, history=self.history)

    def resume(self, decisions: dict[str, str], backend=None) -> Iterator[AgentEvent]:
        """Go on after the approval. backend: the model loaded now, when the user switched models
        while the calls waited (the one the turn started with is closed by then)."""
        if backend is not None:
            self.model.backend = backend
        return run(self.agent, self.session_id, resume=decisions)

    def new_messages(self) -> list[dict[str, Any]]:
        """The turn's messages not yet handed out, in store form; each is handed out once."""
        from agents.tool_agent.events import config_for

        messages = self.agent.graph.get_state(config_for(self.agent, self.session_id)).values.get("messages", [])
        fresh = messages[self.kept:]
        self.kept = len(messages)
        return [form for form in map(stored_form, fresh) if form is not None]
