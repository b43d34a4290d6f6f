"""Verifiable rewards for RL: tool calls checked against the expected call, surveys against rules.

Both read model output, which is untrusted: nothing here raises on what a model writes.
"""

from __future__ import annotations

import json
import re
from typing import Any

CITE = re.compile(r"\\cite\{([^}]*)\}")


def tool_call_reward(text: str, expected: dict[str, Any], tools: list[dict[str, Any]], dialect: str = "minicpm") -> float:
    """A quarter each: the reply holds a call the dialect parses and the tool schema accepts; it names
    the expected tool; its argument names are exactly the expected ones; their values match
    (benchmarks/mcp_eval.py's func / param / value, scored on the first call)."""
    from benchmarks.mcp_eval import score_call
    from runtime.tool_calls.dialects import get_dialect
    from runtime.tool_calls.tools import check_tools

    reply = get_dialect(dialect).parse(text, check_tools(tools))
    if not reply.calls or reply.error:
        return 0.0
    first = reply.calls[0]
    score = score_call(expected, first.name, dict(first.arguments))
    return 0.25 * (1 + score.func + score.param + score.value)


def survey_reward(text: str, retrieved: list[str]) -> float:
    """MiniCPM4-Survey's rule rewards: 0 for an invalid response (the <answer> and <tool_call> JSON
    must parse, English only; agents/survey_agent/actions.py decides), else half for the format and
    half scaled by the share of citations that name retrieved papers (all of them when none is
    cited: citing nothing fabricates nothing)."""
    from agents.survey_agent.actions import parse_response

    action = parse_response(text)
    if action.error is not None:
        return 0.0
    cited = [key.strip() for group in CITE.findall(text) for key in group.split(",") if key.strip()]
    if not cited:
        return 1.0
    known = set(retrieved)
    return 0.5 + 0.5 * sum(key in known for key in cited) / len(cited)


def expected_from_trajectory(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """(the messages before the last call, that call) of a training trajectory; None without calls."""
    for i in range(len(messages) - 1, -1, -1):
        calls = messages[i].get("tool_calls") if messages[i].get("role") == "assistant" else None
        if calls:
            fn = calls[0]["function"]
            arguments = fn["arguments"]
            return messages[:i], {"name": fn["name"],
                                  "arguments": json.loads(arguments) if isinstance(arguments, str) else arguments}
    return None
