"""The `minicpm` dialect: MiniCPM4-MCP's thought and python-call blocks.

The model writes

    <|thought_start|>why it calls what it calls<|thought_end|>
    <|tool_call_start|>
    ```python
    get_weather(city="Paris", unit="celsius")
    ```
    <|tool_call_end|>

Tools are shown as Python `def` signatures with docstrings, enums as `class X(Enum)` and nested
objects as pydantic models, the layout of MiniCPM3's tool template (../shared/reference/
upstream-apps.md section 2.2). Calls are read with `ast`, never eval. Tool and argument names that
are not Python identifiers (`get-weather`, `class`) are rendered as identifiers and mapped back
through the tool list, so names that mix `-` and `_` come back exactly (upstream's parser turned
every `_` into `-` once it saw one hyphen).
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from typing import Any

from runtime.events import ToolCall
from runtime.tool_calls.dialects import Dialect, new_call_id
from runtime.tool_calls.grammar import PARTIAL, Ends, Parser, SchemaCompiler, alt, literal, seq, whitespace
from runtime.tool_calls.tools import Tool

MAX_CALLS_PER_BLOCK = 8

RULES = """# Function Call Rule and Output Format
- If you can answer without calling a function, answer directly: write your thought, then the answer.
- If a function is needed but the user has not given enough information to call it, write your thought, then ask for what is missing.
- If a function is needed and you have what it needs, write your thought, then the calls.
- Use the default value of a parameter unless the user asked for another.
- Answer in this format:

<|thought_start|>
{why you answer directly, ask for more, or call functions, and your plan}
<|thought_end|>
<|tool_call_start|>
```python
func1(param_name=param_value, other_param=other_value)
func2(param_name=param_value)
```
<|tool_call_end|>
{your answer, or your question to the user}"""


def identifier(name: str) -> str:
    """A Python identifier for a tool or argument name (`get-weather` -> `get_weather`, `class` -> `class_`)."""
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit():
        ident = "_" + ident
    return ident + "_" if keyword.iskeyword(ident) else ident


def identifiers(names: list[str]) -> dict[str, str]:
    """name -> a distinct identifier; a second name with the same identifier gets a numbered suffix."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        ident, n = identifier(name), 2
        while ident in taken:
            ident, n = f"{identifier(name)}_{n}", n + 1
        out[name] = ident
        taken.add(ident)
    return out


def python_literal(value: Any) -> str:
    """A Python literal for a JSON value (True/False/None rather than true/false/null)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {python_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


class _JSONConstants(ast.NodeTransformer):
    """Let `true`, `false` and `null` through, as MiniCPM3's template renders values with tojson."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in ("true", "false", "null"):
            return ast.copy_location(ast.Constant({"true": True, "false": False, "null": None}[node.id]), node)
        return node


def strip_fence(block: str) -> str:
    text = block.strip()
    match = re.search(r"```(?:python|py)?[ \t]*\n?(.*?)(?:```|$)", text, re.S)
    return match.group(1) if match else text


class MiniCPMDialect(Dialect):
    name = "minicpm"
    start_marker = "<|tool_call_start|>"
    end_marker = "<|tool_call_end|>"

    # ---- rendering --------------------------------------------------------------------------------

    def system_prompt(self, tools: list[Tool]) -> str:
        names = identifiers([t.name for t in tools])
        lines = ["# Functions", "Here is a list of functions that you can invoke:", "```python",
                 "from enum import Enum", "from typing import Any, Dict, List, Optional, Union",
                 "from pydantic import BaseModel, Field", ""]
        for tool in tools:
            lines += TypeRenderer(tool).definition(names[tool.name])
        lines += ["```", "", RULES]
        return "\n".join(lines)

    def render_calls(self, calls: list[dict[str, Any]], tools: list[Tool]) -> str:
        names = identifiers([t.name for t in tools])
        lines = []
        for call in calls:
            name = call["function"]["name"]
            tool = next((t for t in tools if t.name == name), None)
            arg_names = argument_identifiers(tool) if tool else {}
            args = ", ".join(f"{arg_names.get(k, identifier(k))}={python_literal(v)}"
                             for k, v in call["function"]["arguments"].items())
            lines.append(f"{names.get(name, identifier(name))}({args})")
        return f"{self.start_marker}\n```python\n" + "\n".join(lines) + f"\n```\n{self.end_marker}"

    def render_result(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"role": "tool", "content": message["content"]}

    # ---- parsing ----------------------------------------------------------------------------------

    def parse_block(self, block: str, tools: list[Tool]) -> tuple[list[ToolCall], list[str]]:
        code = strip_fence(block)
        try:
            tree = ast.parse(code.strip())
        except SyntaxError as exc:
            return [], [f"the tool call is not valid Python call syntax ({exc.msg}, line {exc.lineno}): {code.strip()[:200]!r}"]
        if not tree.body:
            return [], ["the tool-call block holds no call (write name(arg=value) lines in it)"]
        by_ident = {ident: name for name, ident in identifiers([t.name for t in tools]).items()}
        calls, errors = [], []
        for stmt in tree.body:
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
                errors.append(f"only function calls may appear in a tool-call block, not {ast.unparse(stmt)[:100]!r}")
                continue
            call = stmt.value
            func = ast.unparse(call.func)
            name = by_ident.get(func, func)
            if call.args:
                errors.append(f"{name}: pass arguments by keyword (name=value), not by position")
                continue
            tool = next((t for t in tools if t.name == name), None)
            arg_by_ident = {ident: arg for arg, ident in argument_identifiers(tool).items()} if tool else {}
            arguments, bad = {}, None
            for kw in call.keywords:
                if kw.arg is None:
                    bad = f"{name}: **kwargs cannot be read; write each argument as name=value"
                    break
                try:
                    value = ast.literal_eval(_JSONConstants().visit(kw.value))
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    bad = f"{name}: the value of {kw.arg} is not a literal ({ast.unparse(kw.value)[:100]!r})"
                    break
                arguments[arg_by_ident.get(kw.arg, undeclared_name(kw.arg))] = to_json_value(value)
            if bad:
                errors.append(bad)
            else:
                calls.append(ToolCall(new_call_id(), name, arguments))
        return calls, errors

    # ---- constrained decoding ---------------------------------------------------------------------

    def call_grammar(self, tools: list[Tool]) -> Parser:
        names = identifiers([t.name for t in tools])
        ws = whitespace()
        one_call = alt(*(seq(literal(names[t.name]), keyword_arguments(t)) for t in tools))
        tail = seq(ws, literal("```"), ws, literal(self.end_marker))

        def calls(text: str, pos: int, count: int = 1) -> Ends:
            ends: Ends = set()
            for p in one_call(text, pos):
                if p == PARTIAL:
                    ends.add(PARTIAL)
                    continue
                ends |= tail(text, p)
                if count < MAX_CALLS_PER_BLOCK:
                    for q in seq(literal("\n"), whitespace(" \t"))(text, p):
                        ends |= {PARTIAL} if q == PARTIAL else calls(text, q, count + 1)
            return ends

        return seq(ws, literal("```python"), whitespace(" \t"), literal("\n"), whitespace(" \t"), calls)


def undeclared_name(ident: str) -> str:
    """An argument the schema does not declare: only the keyword escape (`class_`) can be undone."""
    return ident[:-1] if ident.endswith("_") and keyword.iskeyword(ident[:-1]) else ident


def argument_identifiers(tool: Tool) -> dict[str, str]:
    return identifiers(list((tool.parameters.get("properties") or {}).keys()))


def keyword_arguments(tool: Tool) -> Parser:
    """`(name=value, ...)` under the tool's parameter schema, values as Python literals."""
    arg_idents = argument_identifiers(tool)
    by_ident = {ident: arg for arg, ident in arg_idents.items()}

    def key_parser(allowed: list[str], open_keys: bool) -> Parser:
        options = [literal(arg_idents[k]) for k in allowed]
        if open_keys:
            options.append(any_identifier)
        return alt(*options)

    compiler = SchemaCompiler(tool.parameters, python=True)
    return compiler.members(tool.parameters, "(", ")", key_parser, literal("="), key_text=lambda s: by_ident.get(s, s))


def any_identifier(text: str, pos: int) -> Ends:
    match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, pos)
    if match is None:
        return {PARTIAL} if pos == len(text) else set()
    return {PARTIAL} if match.end() == len(text) else {match.end()}


def to_json_value(value: Any) -> Any:
    """Python literal values as JSON ones: tuples and sets become lists, dict keys strings."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (bytes, complex)) or value is Ellipsis:
        return repr(value)
    return value


class TypeRenderer:
    """A tool as a Python def: parameters typed, enums and nested objects as classes before it."""

    def __init__(self, tool: Tool):
        self.tool = tool
        self.classes: list[str] = []

    def type_of(self, schema: dict[str, Any], hint: str) -> str:
        if not isinstance(schema, dict):
            return "Any"
        if "enum" in schema:
            cls = hint[:1].upper() + hint[1:]
            members = "\n".join(f"    {identifier(str(v)).upper()} = {python_literal(v)}" for v in schema["enum"])
            self.classes.append(f"class {cls}(Enum):\n{members or '    pass'}")
            return cls
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                options = [self.type_of(s, f"{hint}{i}") for i, s in enumerate(schema[key])]
                real = [o for o in options if o != "None"]
                joined = real[0] if len(real) == 1 else f"Union[{', '.join(real)}]"
                return f"Optional[{joined}]" if len(real) < len(options) else joined
        kind = schema.get("type")
        if isinstance(kind, list):
            real = [k for k in kind if k != "null"]
            inner = self.type_of({**schema, "type": real[0]}, hint) if len(real) == 1 else "Any"
            return f"Optional[{inner}]" if "null" in kind else inner
        if kind == "array":
            return f"List[{self.type_of(schema.get('items', {}), hint + 'Item')}]"
        if kind == "object" and schema.get("properties"):
            cls = hint[:1].upper() + hint[1:]
            fields = []
            required = set(schema.get("required") or [])
            for name, sub in schema["properties"].items():
                t = self.type_of(sub, cls + name[:1].upper() + name[1:])
                default = "..." if name in required else "None"
                desc = sub.get("description", "") if isinstance(sub, dict) else ""
                fields.append(f"    {identifier(name)}: {t} = Field({default}, description={json.dumps(desc, ensure_ascii=False)})")
            self.classes.append(f"class {cls}(BaseModel):\n" + "\n".join(fields))
            return cls
        return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "object": "Dict",
                "null": "None"}.get(kind, "Any")

    def definition(self, func_name: str) -> list[str]:
        params = self.tool.parameters.get("properties") or {}
        required = set(self.tool.parameters.get("required") or [])
        idents = argument_identifiers(self.tool)
        signature, docs = [], []
        for name, schema in params.items():
            t = self.type_of(schema, identifier(name))
            schema = schema if isinstance(schema, dict) else {}
            if name in required:
                signature.append(f"{idents[name]}: {t}")
            else:
                default = python_literal(schema["default"]) if "default" in schema else "None"
                signature.append(f"{idents[name]}: {t} = {default}")
            docs.append(f"        {idents[name]} ({t}): {schema.get('description', '').strip()}".rstrip())
        # Required parameters first: Python allows no required parameter after a defaulted one.
        signature.sort(key=lambda s: "=" in s)
        doc = ['    """', *(f"    {line}" for line in (self.tool.description or "").strip().splitlines())]
        if docs:
            doc += ["", "    Args:", *docs]
        doc.append('    """')
        return [*self.classes, *([""] if self.classes else []), f"def {func_name}({', '.join(signature)}):", *doc, ""]
