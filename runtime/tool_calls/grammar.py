"""Prefix grammars for tool calls: is this text the beginning of a call that satisfies the schema?

Constrained decoding (guard.py) asks one question per candidate token: does the call text written
so far, plus this token, still lead to a valid call? A grammar answers by parsing the whole text
from the start (calls are a few hundred characters, so re-parsing is cheaper than keeping parser
state per candidate) and returning every position where a match may end:

- an index into the text: a complete match ends there (anything after it is not the grammar's);
- PARTIAL: the text ran out while everything so far was valid.

An empty set means the text can never become valid. Alternatives (anyOf, several tools, an enum)
simply return the union of their ends, so no backtracking machinery is needed.

One schema compiler serves two flavours of value syntax: JSON (the `hermes` dialect) and Python
literals (the `minicpm` dialect's keyword arguments: 'single' or "double" quotes, True/False/None;
JSON's true/false/null are accepted as well, since MiniCPM3's template renders values with tojson).
Supported JSON Schema: type (or a list of types), enum, const, properties, required,
additionalProperties, items, minItems, maxItems, anyOf, oneOf, allOf of one schema, minimum, maximum,
minLength, maxLength, local $ref. Other keywords (pattern, format, ...) are not enforced while
writing; the finished call is still checked with jsonschema (tools.argument_errors).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

PARTIAL = -1
Ends = set[int]
Parser = Callable[[str, int], Ends]

MAX_WHITESPACE = 16  # per gap: a model that pads forever is cut off rather than followed
MAX_NUMBER_CHARS = 24  # a model that writes digits forever is stopped too
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
# Every prefix of a JSON number, for judging a number the text ends inside.
NUMBER_PREFIX = re.compile(r"-?((0|[1-9][0-9]*)(\.[0-9]*)?([eE][+-]?[0-9]*)?)?")
INTEGER_PREFIX = re.compile(r"-?(0|[1-9][0-9]*)?")
NUMBER_CHARS = set("-+.eE0123456789")
JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
PYTHON_ESCAPES = {**JSON_ESCAPES, "'": "'", "0": "\0"}


# ---- combinators -------------------------------------------------------------------------------

def literal(s: str) -> Parser:
    def parse(text: str, pos: int) -> Ends:
        rest = text[pos : pos + len(s)]
        if rest == s:
            return {pos + len(s)}
        return {PARTIAL} if s.startswith(rest) and pos + len(rest) == len(text) else set()
    return parse


def whitespace(chars: str = " \t\n\r", at_most: int = MAX_WHITESPACE) -> Parser:
    """Greedy: whatever follows a gap never starts with a space, so one end is enough."""
    def parse(text: str, pos: int) -> Ends:
        end = pos
        while end < len(text) and text[end] in chars:
            end += 1
        if end - pos > at_most:
            return set()
        return {PARTIAL} if end == len(text) else {end}
    return parse


def seq(*parts: Parser) -> Parser:
    def parse(text: str, pos: int) -> Ends:
        frontier = {pos}
        for part in parts:
            nxt: Ends = set()
            for p in frontier:
                if p == PARTIAL:
                    nxt.add(PARTIAL)
                else:
                    nxt |= part(text, p)
            frontier = nxt
            if not frontier:
                break
        return frontier
    return parse


def alt(*options: Parser) -> Parser:
    def parse(text: str, pos: int) -> Ends:
        ends: Ends = set()
        for option in options:
            ends |= option(text, pos)
        return ends
    return parse


# ---- values ------------------------------------------------------------------------------------

def string(python: bool, accept_prefix: Callable[[str], bool] = lambda s: True,
           accept: Callable[[str], bool] = lambda s: True, free: bool = True) -> Parser:
    """A quoted string whose decoded value passes accept (and, while unfinished, accept_prefix).

    free: any value of the right length will do. A string that must be one of a few values (an enum,
    a key) refuses an unfinished \\u or \\x escape, whose character cannot be judged yet."""
    quotes = "\"'" if python else '"'
    escapes = PYTHON_ESCAPES if python else JSON_ESCAPES

    def parse(text: str, pos: int) -> Ends:
        if pos == len(text):
            return {PARTIAL}
        quote = text[pos]
        if quote not in quotes:
            return set()
        value: list[str] = []
        i = pos + 1
        while i < len(text):
            ch = text[i]
            if ch == quote:
                return {i + 1} if accept("".join(value)) else set()
            if ord(ch) < 0x20:  # raw control characters (a newline included) end neither kind of string
                return set()
            if ch == "\\":
                if i + 1 == len(text):
                    sofar = "".join(value)
                    if not free and not any(accept_prefix(sofar + c) for c in escapes.values()):
                        return set()  # no escape could go on to an allowed value
                    break
                code = text[i + 1]
                if code in escapes:
                    value.append(escapes[code])
                    i += 2
                    continue
                width = {"u": 4, "x": 2 if python else 0}.get(code, 0)
                if not width:
                    return set()
                digits = text[i + 2 : i + 2 + width]
                if any(c not in "0123456789abcdefABCDEF" for c in digits):
                    return set()
                if len(digits) < width:
                    if not free:
                        return set()
                    break  # the escape is still being written
                value.append(chr(int(digits, 16)))
                i += 2 + width
                continue
            value.append(ch)
            i += 1
        return {PARTIAL} if accept_prefix("".join(value)) else set()
    return parse


def number(integer: bool, minimum: float | None = None, maximum: float | None = None) -> Parser:
    full, prefix = (INTEGER, INTEGER_PREFIX) if integer else (NUMBER, NUMBER_PREFIX)

    def parse(text: str, pos: int) -> Ends:
        end = pos
        while end < len(text) and text[end] in NUMBER_CHARS:
            end += 1
        run = text[pos:end]
        if len(run) > MAX_NUMBER_CHARS:
            return set()
        if end == len(text):
            if not prefix.fullmatch(run):
                return set()
            if integer and not integer_prefix_in_range(run, minimum, maximum):
                return set()
            return {PARTIAL}
        if not run or not full.fullmatch(run):
            return set()
        value = float(run)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            return set()
        return {end}
    return parse


def integer_prefix_in_range(run: str, minimum: float | None, maximum: float | None) -> bool:
    """Whether some JSON integer that starts with run lies in [minimum, maximum]."""
    lo = -math.inf if minimum is None else minimum
    hi = math.inf if maximum is None else maximum
    negative, digits = run.startswith("-"), run.lstrip("-")
    if not run:
        return lo <= hi
    if not digits:  # "-": a negative integer, or -0
        return lo <= -1 or lo <= 0 <= hi
    if digits == "0":  # JSON allows no digit after a leading 0
        return lo <= 0 <= hi
    d = int(digits)
    for extra in range(0, MAX_NUMBER_CHARS - len(run) + 1):  # d, dX, dXX, ...: magnitudes in [d*10^k, (d+1)*10^k - 1]
        small, large = d * 10**extra, (d + 1) * 10**extra - 1
        low, high = (-large, -small) if negative else (small, large)
        if low <= hi and high >= lo:
            return True
    return False


def keyword_constants(python: bool, wanted: str) -> Parser:
    """true/false/null, and in Python flavour True/False/None as well."""
    spellings = {"boolean": ["true", "false"], "null": ["null"]}[wanted]
    if python:
        spellings += [s.capitalize() if s != "null" else "None" for s in spellings]
    return alt(*(literal(s) for s in spellings))


def render_value(value: Any, python: bool) -> list[str]:
    """Spellings of a constant (for enum/const): JSON, and Python's too in that flavour."""
    spellings = [json.dumps(value, ensure_ascii=False)]
    if python:
        spellings += [repr(value)]
        if isinstance(value, str):
            spellings.append(json.dumps(value, ensure_ascii=False))
    return list(dict.fromkeys(spellings))


class SchemaCompiler:
    """Builds parsers for JSON Schema values, resolving local $refs lazily (schemas may recurse)."""

    def __init__(self, root: dict[str, Any], python: bool):
        self.root = root
        self.python = python
        self.ws = whitespace()

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                return {}  # a remote ref: accept any value; jsonschema judges the result
            node: Any = self.root
            for part in filter(None, ref[1:].split("/")):
                node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
            schema, seen = node, seen + 1
        return schema if isinstance(schema, dict) else {}

    def value(self, schema: Any) -> Parser:
        """A parser built when first used, so recursive schemas terminate."""
        built: list[Parser] = []

        def parse(text: str, pos: int) -> Ends:
            if not built:
                built.append(self._build(self.resolve(schema) if isinstance(schema, dict) else {}))
            return built[0](text, pos)
        return parse

    def _build(self, schema: dict[str, Any]) -> Parser:
        if "const" in schema:
            return alt(*(literal(s) for s in render_value(schema["const"], self.python)))
        if "enum" in schema and isinstance(schema["enum"], list):
            values = schema["enum"]
            if values and all(isinstance(v, str) for v in values):
                return string(self.python, lambda s: any(v.startswith(s) for v in values), lambda s: s in values,
                              free=False)
            return alt(*(literal(s) for v in values for s in render_value(v, self.python)))
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                return alt(*(self.value(sub) for sub in schema[key]))
        if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
            return self.value(schema["allOf"][0])
        types = schema.get("type")
        if types is None:
            types = ["object"] if "properties" in schema else ["string", "number", "boolean", "null", "array", "object"]
        elif isinstance(types, str):
            types = [types]
        return alt(*(self._typed(t, schema) for t in types))

    def _typed(self, kind: str, schema: dict[str, Any]) -> Parser:
        if kind == "string":
            lo, hi = schema.get("minLength", 0), schema.get("maxLength")
            return string(self.python, lambda s: hi is None or len(s) <= hi,
                          lambda s: len(s) >= lo and (hi is None or len(s) <= hi))
        if kind in ("number", "integer"):
            return number(kind == "integer", schema.get("minimum"), schema.get("maximum"))
        if kind in ("boolean", "null"):
            return keyword_constants(self.python, kind)
        if kind == "array":
            return self.array(schema.get("items", {}), schema.get("minItems", 0), schema.get("maxItems"))
        if kind == "object":
            return self.object(schema)
        return lambda text, pos: set()

    def array(self, items: Any, min_items: int, max_items: int | None) -> Parser:
        item = self.value(items if isinstance(items, dict) else {})
        ws = self.ws

        def rest(text: str, pos: int, count: int) -> Ends:
            """After an item: `]` if enough were written, or `,` and one more."""
            ends: Ends = set()
            for p in ws(text, pos):
                if p == PARTIAL:
                    ends.add(PARTIAL)
                    continue
                if count >= min_items:
                    ends |= literal("]")(text, p)
                if max_items is None or count < max_items:
                    for q in seq(literal(","), ws)(text, p):
                        ends |= {PARTIAL} if q == PARTIAL else after_item(text, q, count + 1)
            return ends

        def after_item(text: str, pos: int, count: int) -> Ends:
            ends: Ends = set()
            for p in item(text, pos):
                ends |= {PARTIAL} if p == PARTIAL else rest(text, p, count)
            return ends

        def parse(text: str, pos: int) -> Ends:
            ends: Ends = set()
            for p in seq(literal("["), ws)(text, pos):
                if p == PARTIAL:
                    ends.add(PARTIAL)
                    continue
                if min_items == 0:
                    ends |= literal("]")(text, p)
                if max_items is None or max_items > 0:
                    ends |= after_item(text, p, 1)
            return ends
        return parse

    def object(self, schema: dict[str, Any]) -> Parser:
        """A JSON object (`{"key": value, ...}`) under the schema's properties and required keys."""
        key = lambda allowed, open_keys: string(  # noqa: E731
            self.python,
            lambda s: open_keys or any(k.startswith(s) for k in allowed),
            lambda s: s in allowed or (open_keys and s not in allowed),
            free=open_keys,
        )
        return self.members(schema, "{", "}", key, literal(":"), key_text=None)

    def members(self, schema: dict[str, Any], open_: str, close: str, key_parser, separator: Parser,
                key_text: Callable[[str], str] | None) -> Parser:
        """Key-value members between open_ and close, each key at most once, required keys before close.

        key_parser(allowed, open_keys) parses one key; key_text maps a matched key's text back to the
        property name (None: the key is a JSON string, decoded from its quotes).
        """
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        extra = schema.get("additionalProperties", True)
        open_keys = extra is not False and not properties or isinstance(extra, dict)
        ws = self.ws
        value_of = {name: self.value(sub) for name, sub in properties.items()}
        extra_value = self.value(extra if isinstance(extra, dict) else {})

        def key_name(text: str, start: int, end: int) -> str:
            raw = text[start:end]
            if key_text is not None:
                return key_text(raw)
            try:
                return json.loads(raw) if raw.startswith('"') else str(eval_python_string(raw))
            except ValueError:
                return raw

        def member(text: str, pos: int, used: frozenset[str]) -> Ends:
            allowed = [k for k in properties if k not in used]
            ends: Ends = set()
            for k_end in key_parser(allowed, open_keys)(text, pos):
                if k_end == PARTIAL:
                    ends.add(PARTIAL)
                    continue
                name = key_name(text, pos, k_end)
                if name in used:
                    continue
                value = value_of.get(name, extra_value)
                for v_end in seq(ws, separator, ws, value)(text, k_end):
                    ends |= {PARTIAL} if v_end == PARTIAL else after(text, v_end, used | {name})
            return ends

        def after(text: str, pos: int, used: frozenset[str]) -> Ends:
            ends: Ends = set()
            for p in ws(text, pos):
                if p == PARTIAL:
                    ends.add(PARTIAL)
                    continue
                if required <= used:
                    ends |= literal(close)(text, p)
                if open_keys or len(used) < len(properties):
                    for q in seq(literal(","), ws)(text, p):
                        ends |= {PARTIAL} if q == PARTIAL else member(text, q, used)
            return ends

        def parse(text: str, pos: int) -> Ends:
            ends: Ends = set()
            for p in seq(literal(open_), ws)(text, pos):
                if p == PARTIAL:
                    ends.add(PARTIAL)
                    continue
                if not required:
                    ends |= literal(close)(text, p)
                if properties or open_keys:
                    ends |= member(text, p, frozenset())
            return ends
        return parse


def eval_python_string(raw: str) -> str:
    import ast

    value = ast.literal_eval(raw)
    if not isinstance(value, str):
        raise ValueError(raw)
    return value


# ---- the question guard.py asks -----------------------------------------------------------------

def check(grammar: Parser, text: str) -> int | None:
    """Where a complete match ends (the smallest end), PARTIAL if text is a valid beginning, None if invalid."""
    ends = grammar(text, 0)
    complete = [e for e in ends if e != PARTIAL]
    if complete:
        return min(complete)
    return PARTIAL if ends else None
