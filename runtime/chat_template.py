"""Chat templates rendered with jinja2 the way HF transformers renders them.

The template comes from tokenizer_config.json (or chat_template.jinja) of an HF checkpoint, or from
`tokenizer.chat_template` inside a GGUF; ChatML is the fallback. Extra keyword arguments reach the
template as variables, which is how switches such as MiniCPM4.1's `enable_thinking` pass through.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from runtime.errors import MiniCPMError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Variables the suite always passes to a template; a caller's switch may not override them.
RESERVED = {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"}


class ChatTemplateError(MiniCPMError):
    """The template cannot be compiled or refuses the messages it was given."""


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile ({exc}); fix or replace it") from None


def check_template_kwargs(template_kwargs: dict[str, Any]) -> None:
    """Refuse switches that would override what the suite itself passes to every template."""
    taken = sorted(set(template_kwargs) & RESERVED)
    if taken:
        raise ChatTemplateError(f"template variable(s) {', '.join(taken)} are set by the suite itself; pass other names")


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    **template_kwargs: Any,
) -> str:
    """Render messages (OpenAI shape: role, content, ...) into the model's prompt text."""
    from jinja2.exceptions import TemplateError

    check_template_kwargs(template_kwargs)
    compiled = _compile(template or CHATML_TEMPLATE)
    try:
        return compiled.render(
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **template_kwargs,
        )
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template rejected the conversation: {exc}") from None
