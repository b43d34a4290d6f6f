"""The `hermes` dialect: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen, Hermes, SmolLM2).

Tools are listed as JSON inside <tools></tools> in the system message; a tool's result goes back as
a user turn wrapped in <tool_response></tool_response>, as Qwen2.5's template does, so that
templates with no tool role still render it.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.events import ToolCall
from runtime.tool_calls.dialects import Dialect, new_call_id
from runtime.tool_calls.grammar import SchemaCompiler, alt, literal, seq, whitespace
from runtime.tool_calls.tools import Tool

SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


class HermesDialect(Dialect):
    name = "hermes"
    start_marker = "<tool_call>"
    end_marker = "</tool_call>"

    def system_prompt(self, tools: list[Tool]) -> str:
        return SYSTEM.format(tools="\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools))

    def render_calls(self, calls: list[dict[str, Any]], tools: list[Tool]) -> str:
        return "\n".join(
            f'{self.start_marker}\n{json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)}\n{self.end_marker}'
            for c in calls
        )

    def render_result(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}

    def parse_block(self, block: str, tools: list[Tool]) -> tuple[list[ToolCall], list[str]]:
        text = block.strip()
        if text.startswith("```"):  # some models fence the JSON
            text = text.strip("`").removeprefix("json").strip()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return [], [f"the tool call is not valid JSON ({exc.msg} at character {exc.pos}): {text[:200]!r}"]
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return [], [f'a tool call must be {{"name": "...", "arguments": {{...}}}}, got {text[:200]!r}']
        arguments = data.get("arguments", data.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string, OpenAI-style
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                return [], [f"the arguments of {data['name']} are a string that is not JSON: {arguments[:200]!r}"]
        if not isinstance(arguments, dict):
            return [], [f"the arguments of {data['name']} must be a JSON object"]
        return [ToolCall(new_call_id(), data["name"], arguments)], []

    def call_grammar(self, tools: list[Tool]) -> Any:
        ws = whitespace()
        per_tool = [
            seq(literal(json.dumps(t.name)), ws, literal(","), ws, literal('"arguments"'), ws, literal(":"), ws,
                SchemaCompiler(t.parameters, python=False).value(t.parameters))
            for t in tools
        ]
        return seq(ws, literal("{"), ws, literal('"name"'), ws, literal(":"), ws, alt(*per_tool), ws, literal("}"),
                   ws, literal(self.end_marker))
