"""Tool-call dialects: how a model is shown tools and how its calls are read back.

A dialect is a renderer (tools -> system-prompt text; earlier calls and results -> turns the chat
template can show) and a parser (model text -> calls). Parsers never raise on model output: what
they cannot read comes back as an error message for the agent to feed back to the model.
Each dialect also gives the grammar of one call block, which constrained decoding writes under.

- `minicpm` (minicpm.py): MiniCPM4-MCP's python-call blocks;
- `hermes` (hermes.py): `<tool_call>{json}</tool_call>`, Qwen/Hermes style, what SmolLM2 knows;
- `openai`: the remote server's native tool_calls; nothing to render or parse here.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from runtime.events import ToolCall
from runtime.messages import InvalidRequestError
from runtime.tool_calls.grammar import Parser
from runtime.tool_calls.tools import Tool, argument_errors

DIALECTS = ("minicpm", "hermes", "openai")


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into prose and calls; error says what could not be used, for the model to fix."""

    content: str
    calls: tuple[ToolCall, ...] = ()
    error: str | None = None


class Dialect(ABC):
    name: str
    start_marker: str  # the text that opens a call block
    end_marker: str  # and closes it

    @abstractmethod
    def system_prompt(self, tools: list[Tool]) -> str:
        """The text that presents the tools, appended to the system message."""

    @abstractmethod
    def render_calls(self, calls: list[dict[str, Any]], tools: list[Tool]) -> str:
        """An earlier assistant turn's calls (OpenAI shape, arguments as dicts) as the model writes them."""

    @abstractmethod
    def render_result(self, message: dict[str, Any]) -> dict[str, Any]:
        """A tool result message as a turn the chat template can render."""

    @abstractmethod
    def parse_block(self, block: str, tools: list[Tool]) -> tuple[list[ToolCall], list[str]]:
        """The calls in the text between the markers, and what was wrong with the rest."""

    @abstractmethod
    def call_grammar(self, tools: list[Tool]) -> Parser:
        """The grammar of a call block after start_marker, end_marker included (grammar.py)."""

    def parse(self, text: str, tools: list[Tool]) -> ParsedReply:
        """Split model output into prose and calls. Never raises."""
        try:
            return self._parse(text, tools)
        except Exception as exc:  # noqa: BLE001 - model output is untrusted; a parser bug must not crash an agent
            return ParsedReply(content=text, error=f"the tool call could not be read ({type(exc).__name__}: {exc})")

    def _parse(self, text: str, tools: list[Tool]) -> ParsedReply:
        prose, calls, errors = [], [], []
        rest = text
        while True:
            start = rest.find(self.start_marker)
            if start < 0:
                prose.append(rest)
                break
            prose.append(rest[:start])
            body = rest[start + len(self.start_marker) :]
            end = body.find(self.end_marker)
            if end < 0:
                block, rest = body, ""
                if not body.strip():
                    errors.append(f"a tool call was begun with {self.start_marker} but never written")
                    break
            else:
                block, rest = body[:end], body[end + len(self.end_marker) :]
            found, problems = self.parse_block(block, tools)
            if end < 0 and problems:
                problems = [f"a tool call was cut off before {self.end_marker}: " + "; ".join(problems)]
            calls.extend(found)
            errors.extend(problems)
        for call in calls[:]:
            problems = check_call(call, tools)
            if problems:
                calls.remove(call)
                errors.extend(problems)
        content = "".join(prose).strip()
        return ParsedReply(content=content, calls=tuple(calls), error="; ".join(errors) or None)


def check_call(call: ToolCall, tools: list[Tool]) -> list[str]:
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        known = ", ".join(t.name for t in tools) or "none"
        return [f"there is no tool named '{call.name}' (tools: {known})"]
    return [f"{call.name}: {problem}" for problem in argument_errors(tool, call.arguments)]


def get_dialect(name: str) -> Dialect:
    if name == "minicpm":
        from runtime.tool_calls.dialects.minicpm import MiniCPMDialect

        return MiniCPMDialect()
    if name == "hermes":
        from runtime.tool_calls.dialects.hermes import HermesDialect

        return HermesDialect()
    if name == "openai":
        raise InvalidRequestError("the 'openai' dialect is a remote server's own tool calls: use --backend openai")
    raise InvalidRequestError(f"unknown tool-call dialect '{name}' (choose one of: {', '.join(DIALECTS)})")


def dialect_for_template(template: str | None) -> tuple[str, str]:
    """The dialect a chat template was made for, and why: (name, reason)."""
    if template and ("<|tool_call_start|>" in template or "<|thought_start|>" in template):
        return "minicpm", "the chat template uses MiniCPM4-MCP's <|tool_call_start|> blocks"
    if template and "<tool_call>" in template:
        return "hermes", "the chat template uses <tool_call> tags"
    return "hermes", "the chat template names no tool format; hermes <tool_call> JSON is the most widely trained"
