"""Chat with tools on a local backend (torch, gguf): render, generate under the guard, parse.

The steps, for one reply:
1. check the messages, tools and tool_choice (runtime/messages.py, tools.py);
2. pick the dialect: the caller's, or the one the chat template was made for;
3. show the tools: through the template itself when it renders `tools` in that dialect, otherwise
   as the dialect's system-prompt text; earlier calls and tool results become turns the template
   can show;
4. generate, with a ToolCallGuard when calls are constrained; a forced call (tool_choice
   "required" or a named tool) starts the reply with the dialect's start marker;
5. stream the prose, hold back everything from the first start marker on, and parse it into
   tool calls on the final event.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from runtime.events import GenerationEvent, SamplingParams
from runtime.messages import check_messages
from runtime.streaming import StopStringMatcher
from runtime.tool_calls.dialects import Dialect, dialect_for_template, get_dialect
from runtime.tool_calls.guard import ToolCallGuard
from runtime.tool_calls.tools import Tool, check_tool_choice, check_tools


def choose_dialect(explicit: str | None, template: str | None) -> tuple[Dialect, bool]:
    """The dialect, and whether the template itself renders tools in it."""
    detected, _ = dialect_for_template(template)
    dialect = get_dialect(explicit or detected)
    native = bool(template) and re.search(r"\btools\b", template) is not None and dialect.name == detected \
        and dialect.start_marker in template
    return dialect, native


def prepare_messages(messages: list[dict[str, Any]], dialect: Dialect, tools: list[Tool],
                     offered: list[Tool]) -> list[dict[str, Any]]:
    """Messages for a template that knows nothing of tools: the tools in the system message,
    earlier calls as the text the model writes, results as the dialect's result turns."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            calls = dialect.render_calls(message["tool_calls"], tools)
            out.append({"role": "assistant", "content": "\n".join(filter(None, [message["content"], calls]))})
        elif message["role"] == "tool":
            out.append(dialect.render_result(message))
        else:
            out.append({"role": message["role"], "content": message["content"]})
    if offered:
        listing = dialect.system_prompt(offered)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listing}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


def local_chat(backend, messages: Any, params: SamplingParams, *, tools: Any = None,
               tool_choice: Any = "auto", dialect: str | None = None, constrained: bool = True,
               template_kwargs: dict[str, Any] | None = None) -> Iterator[GenerationEvent]:
    """Backend.chat for backends with a local token layer (see the module docstring)."""
    messages = check_messages(messages)
    specs = check_tools(tools)
    choice = check_tool_choice(tool_choice, specs)
    offered = specs if choice != "none" else []
    uses_tools = bool(specs) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if not uses_tools:
        text = backend.render_chat(messages, **(template_kwargs or {}))
        return backend.generate_tokens(backend.tokenize(text), params)

    chosen, native = choose_dialect(dialect, backend.chat_template)
    if native:
        text = backend.render_chat(messages, tools=[t.to_openai() for t in offered] or None, **(template_kwargs or {}))
    else:
        text = backend.render_chat(prepare_messages(messages, chosen, specs, offered), **(template_kwargs or {}))
    forced = choice not in ("auto", "none")
    if forced:
        text += chosen.start_marker
    prompt = backend.tokenize(text)
    if not offered:
        return backend.generate_tokens(prompt, params)
    callable_tools = specs if choice in ("auto", "required") else [t for t in specs if t.name == choice]
    guard = None
    if constrained:
        guard = ToolCallGuard(backend.decode, chosen.start_marker, chosen.call_grammar(callable_tools),
                              set(backend.stop_token_ids) | set(params.stop_token_ids), forced=forced)
    events = backend.generate_tokens(prompt, params, guard)
    return hold_back_calls(events, chosen, specs, opened=forced)


def hold_back_calls(events: Iterator[GenerationEvent], dialect: Dialect, tools: list[Tool],
                    opened: bool = False) -> Iterator[GenerationEvent]:
    """Pass prose through; from the first start marker on, hold the text back and parse it at the end.

    opened: the reply begins inside a call block (its start marker was part of the prompt)."""
    marker = StopStringMatcher((dialect.start_marker,))
    held = dialect.start_marker if opened else None  # None: no call block seen yet
    for event in events:
        if held is None:
            text, hit = marker.feed(event.text)
            if hit:
                held = marker.after
        else:
            text, held = "", held + event.text
        if event.finish_reason is None:
            yield replace(event, text=text)
            continue
        if held is None:
            yield replace(event, text=text + marker.flush())
            return
        parsed = dialect.parse(held, tools)
        error = parsed.error
        if error and event.finish_reason == "length":
            error += " (the reply ran out of tokens: raise max_tokens)"
        yield replace(
            event,
            text="\n".join(part for part in (text, parsed.content) if part),
            finish_reason="tool_calls" if parsed.calls else event.finish_reason,
            tool_calls=parsed.calls,
            tool_call_error=error,
        )
        return
