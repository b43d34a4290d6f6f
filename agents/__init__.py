"""LangGraph agents: the MCP tool agent and the survey agent, over the runtime's backends."""

from minicpm_suite import require_own_packages

SUITE_PACKAGE = True
require_own_packages("runtime", "mcp_tools", "survey")
