"""Chat messages in the OpenAI shape, checked at the boundary before any template sees them.

Every entry point (CLI, server, agents) hands messages to a backend through `check_messages`, so
a malformed conversation is one clear error, never a template traceback or a silent drop.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.errors import MiniCPMError

ROLES = ("system", "developer", "user", "assistant", "tool")


class InvalidRequestError(MiniCPMError):
    """Messages, tools or options that do not make a valid request."""


def content_text(content: Any, where: str) -> str:
    """A message's content as text: a string, None, or a list of {"type": "text", "text": ...} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequestError(f"{where}.content[{i}] is a '{kind}' part; only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequestError(f"{where}.content must be a string or a list of text parts, not {type(content).__name__}")


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate and normalise messages: content becomes a string; tool_calls keep the OpenAI shape
    with arguments decoded to dicts under "function"."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})")
        clean: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                 "content": content_text(message.get("content"), where)}
        if role == "assistant" and message.get("tool_calls"):
            clean["tool_calls"] = [check_tool_call(c, f"{where}.tool_calls[{j}]")
                                   for j, c in enumerate(message["tool_calls"])]
        elif "content" not in message or (message["content"] is None and role != "assistant"):
            raise InvalidRequestError(f"{where} ({role}) has no content")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise InvalidRequestError(f"{where}.tool_call_id must be a string")
            clean["tool_call_id"] = call_id
            if isinstance(message.get("name"), str):
                clean["name"] = message["name"]
        out.append(clean)
    return out


def check_tool_call(call: Any, where: str) -> dict[str, Any]:
    """An assistant message's tool call, with its JSON-string arguments decoded."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequestError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'arguments': ...}}}}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{where}.function.arguments is not valid JSON ({exc})") from None
    if not isinstance(arguments, dict):
        raise InvalidRequestError(f"{where}.function.arguments must be a JSON object")
    return {"id": call.get("id") or "", "type": "function", "function": {"name": function["name"], "arguments": arguments}}
