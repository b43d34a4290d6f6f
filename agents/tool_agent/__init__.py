"""The MCP tool agent: a LangGraph loop of model -> (approval) -> tools -> model, with a step limit.

- state.py: what a session keeps (messages, steps taken, approval decisions);
- prompts.py: the system prompt;
- graph.py: the nodes, their routes and build_tool_agent();
- events.py: a run of the graph as events a terminal or the TUI renders (thoughts, text, calls,
  results, the answer, approval requests).
"""

from agents.tool_agent.graph import APPROVAL_MODES, ToolAgent, build_tool_agent

__all__ = ["APPROVAL_MODES", "ToolAgent", "build_tool_agent"]
