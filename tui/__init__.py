"""The `minicpm` command line and the Textual terminal UI."""

from minicpm_suite import require_own_packages

SUITE_PACKAGE = True
require_own_packages("runtime", "mcp_tools", "survey", "agents")
