"""MCP client sessions, tool-call dialects and the suite's built-in MCP servers (MiniCPM4-MCP)."""

from minicpm_suite import require_own_packages

SUITE_PACKAGE = True
require_own_packages("runtime")
