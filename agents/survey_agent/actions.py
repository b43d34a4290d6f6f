"""MiniCPM4-Survey's action format, read from model output (untrusted: never raises).

Every response carries two blocks (upstream-apps.md section 1.3):

    <think> ... </think>
    <answer> {"update": <position>, "content": <text, or the plan object>} </answer>
    <think> ... </think>
    <tool_call> {"name": "search_engine", "arguments": {"query": ["...", "..."]}} </tool_call>

Either action may be skipped with {}. `finalize` (or an empty tool call) asks to end the survey. A
response is usable only when both blocks are present and their JSON parses, and it has no CJK
characters (upstream's rule: the surveys are English-only).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
CJK = re.compile(r"[\u4e00-\u9fa5]")
FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass
class Action:
    """What one response asks for. error is set (and nothing else used) when it cannot be used."""

    update: str | None = None  # the position to write, None to skip
    content: Any = None
    tool: str | None = None  # "search_engine" | "finalize" | None (no call: also a finalize request)
    keywords: list[str] = field(default_factory=list)
    next_plan: str = ""  # the response's second part (think + tool call), shown to the model next step
    error: str | None = None


def parse_response(text: str) -> Action:
    if CJK.search(text):
        return Action(error="the response contains CJK characters; write the survey in English only")
    answers, calls = ANSWER.findall(text), TOOL_CALL.findall(text)
    if not answers:
        return Action(error="no <answer>...</answer> block (write {} inside it to skip the update)")
    if not calls:
        return Action(error="no <tool_call>...</tool_call> block (call search_engine or finalize)")
    answer, problem = _json(answers[0], "<answer>")
    if problem:
        return Action(error=problem)
    call, problem = _json(calls[0], "<tool_call>")
    if problem:
        return Action(error=problem)
    action = Action(next_plan=_next_plan(text))
    if answer:
        if "update" not in answer or "content" not in answer:
            return Action(error='the <answer> object needs "update" and "content" (or be {} to skip)')
        if not isinstance(answer["update"], str):
            return Action(error='"update" must be a position string such as "section-1/subsection-2"')
        action.update, action.content = answer["update"], answer["content"]
    if call:
        name = call.get("name")
        if name == "search_engine":
            arguments = call.get("arguments") or {}
            query = arguments.get("query") if isinstance(arguments, dict) else None
            if isinstance(query, str):
                query = [query]
            if not isinstance(query, list) or not any(isinstance(q, str) and q.strip() for q in query):
                return Action(error='search_engine needs {"query": ["keyword", ...]} with at least one keyword')
            action.tool, action.keywords = "search_engine", [q for q in query if isinstance(q, str)]
        elif name == "finalize":
            action.tool = "finalize"
        else:
            return Action(error=f"unknown tool {name!r}: the tools are search_engine and finalize")
    return action


def _json(block: str, where: str) -> tuple[dict | None, str | None]:
    text = FENCE.sub("", block.strip())
    if not text:
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"the JSON in {where} does not parse: {exc.msg} at char {exc.pos}"
    if not isinstance(value, dict):
        return None, f"{where} must hold a JSON object"
    return value, None


def _next_plan(text: str) -> str:
    """The response's "Next Plan": the think before the tool call, and the call itself."""
    call_at = text.find("<tool_call>")
    thinks = [m for m in THINK.finditer(text) if m.end() <= call_at]
    think = thinks[-1].group(0) if len(thinks) >= 2 or (thinks and text.find("<answer>") < thinks[-1].start()) else ""
    end = text.find("</tool_call>", call_at)
    return f"{think}\n{text[call_at:end + len('</tool_call>')]}".strip()
