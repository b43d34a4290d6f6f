"""Offer a small model only the tools that matter for the task at hand.

Every tool in the prompt costs a small model attention and a few hundred prompt tokens: with the
19 built-in tools, SmolLM2-135M often calls a tool from the wrong server. ToolSelector ranks the
tools by how close their name and description are to the task (all-MiniLM-L6-v2 sentence vectors,
the corpus's embedder, survey/corpus/embed.py) and keeps the best `limit`. Tools the conversation
has already called stay offered, so earlier calls still render and can be repeated.
"""

from __future__ import annotations

import threading

import numpy as np

from mcp_tools.sessions import McpTool


def tool_text(tool: McpTool) -> str:
    """What a tool is about, in words: its name (split at _ and -), its summary and its parameters."""
    summary = (tool.description.strip().splitlines() or [""])[0]
    params = " ".join(tool.input_schema.get("properties", {}))
    return f"{tool.name.replace('_', ' ').replace('-', ' ')}: {summary} ({params})"


class ToolSelector:
    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the tool limit must be at least 1 (got {limit})")
        self.limit = limit
        self._embedder = None
        self._vectors: dict[str, np.ndarray] = {}  # tool_text -> unit vector [384]
        self._lock = threading.Lock()

    def select(self, task: str, tools: list[McpTool], keep: set[str] = frozenset()) -> list[McpTool]:
        """The `limit` tools closest to the task (plus those named in keep), in their original order."""
        if len(tools) <= self.limit:
            return tools
        with self._lock:
            embedder = self._load()
            missing = [tool_text(t) for t in tools if tool_text(t) not in self._vectors]
            if missing:
                self._vectors.update(zip(missing, embedder.encode(missing)))
            query = embedder.encode([task])[0]  # [384], unit length
        scores = np.array([float(self._vectors[tool_text(t)] @ query) for t in tools])
        best = {tools[i].name for i in np.argsort(-scores, kind="stable")[: self.limit]}
        return [t for t in tools if t.name in best or t.name in keep]

    def _load(self):
        if self._embedder is None:
            from survey.corpus.embed import Embedder

            self._embedder = Embedder()
        return self._embedder
