"""Tool calls: tool schemas in, calls out in the OpenAI shape, on every backend.

- tools.py: checking the tools and tool_choice a caller passes (the request boundary);
- dialects/: how tools are shown to a model and how its calls are read back (`minicpm`, `hermes`);
- grammar.py and guard.py: constrained decoding, so a call is written under its tool's JSON schema;
- local.py: chat with tools on a local backend (torch, gguf), streaming prose and holding back calls.
The `openai` dialect is the remote server's own tool_calls (runtime/backends/openai_backend.py).
The MCP agents (mcp_tools/, agents/) use these same dialects: one implementation.
"""
