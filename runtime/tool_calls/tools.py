"""The tools and tool_choice of a request, checked once at the boundary.

Tools come in the OpenAI shape: {"type": "function", "function": {"name", "description",
"parameters": <JSON Schema of an object>}}. MCP tools are converted to it by mcp_tools/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from runtime.messages import InvalidRequestError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")  # OpenAI allows a-z, A-Z, 0-9, _ and -, up to 64
EMPTY_OBJECT = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_OBJECT))

    def to_openai(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def check_tools(tools: Any) -> list[Tool]:
    """Validate OpenAI-shape tools; their parameter schemas must themselves be valid JSON Schema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequestError("tools must be a list of {'type': 'function', 'function': {...}} objects")
    out: list[Tool] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise InvalidRequestError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidRequestError(f"{where}.function.name must be letters, digits, '_', '-' or '.' (got {name!r})")
        if any(t.name == name for t in out):
            raise InvalidRequestError(f"{where}: two tools are named '{name}'")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise InvalidRequestError(f"{where}.function.description must be a string")
        parameters = function.get("parameters") or dict(EMPTY_OBJECT)
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise InvalidRequestError(f"{where}.function.parameters must be a JSON Schema of type 'object'")
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            raise InvalidRequestError(f"{where}.function.parameters is not a valid JSON Schema: {exc.message}") from None
        out.append(Tool(name, description, parameters))
    return out


def check_tool_choice(tool_choice: Any, tools: list[Tool]) -> str | None:
    """Normalise tool_choice to "auto", "none", "required" or a tool's name (a forced call)."""
    if tool_choice is None:
        return "auto" if tools else "none"
    if tool_choice in ("auto", "none", "required"):
        if tool_choice == "required" and not tools:
            raise InvalidRequestError("tool_choice is 'required' but no tools were given")
        return tool_choice
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        if not any(t.name == name for t in tools):
            known = ", ".join(t.name for t in tools) or "none"
            raise InvalidRequestError(f"tool_choice names the tool {name!r}, which is not among the tools (known: {known})")
        return name
    raise InvalidRequestError("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}")


def argument_errors(tool: Tool, arguments: Any) -> list[str]:
    """Why arguments do not satisfy the tool's schema (empty when they do)."""
    from jsonschema import Draft202012Validator

    if not isinstance(arguments, dict):
        return [f"arguments of {tool.name} must be an object"]
    validator = Draft202012Validator(tool.parameters)
    return [f"{'/'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message}"
            for e in sorted(validator.iter_errors(arguments), key=lambda e: list(map(str, e.absolute_path)))]
