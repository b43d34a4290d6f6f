"""A chat's settings: model and backend (presets from the settings file, local files, remote servers),
system prompt, sampling, InfLLM v2 sparse attention (torch backend), thinking, and its MCP servers.

Returns (ChatOptions, system prompt) on Save, None on Cancel/Esc. Values are checked by ChatOptions
itself, and a problem is shown under the form instead of closing it.
"""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, SelectionList, Static, TextArea

from runtime.errors import MiniCPMError
from tui.engine import ChatOptions


def _number(raw: str, kind, name: str, optional: bool = False):
    raw = raw.strip()
    if not raw and optional:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise MiniCPMError(f"{name} must be {'an integer' if kind is int else 'a number'} (got {raw!r})") from None


class ChatSettings(ModalScreen[tuple[ChatOptions, str] | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, options: ChatOptions, system_prompt: str, *, presets: list, servers: dict[str, int | None]):
        """presets: tui.config.ModelEntry list; servers: {MCP server: its tool count, None if not started}."""
        super().__init__(classes="dialog")
        self.options = options
        self.base = options  # read() puts the form's fields over these
        self.system_prompt = system_prompt
        self.presets = presets
        self.servers = servers

    def compose(self) -> ComposeResult:
        o = self.options
        with VerticalScroll(classes="dialog-box settings"):
            yield Static("[b]Chat settings[/]")
            yield Label("Model preset")
            yield Select([(p.name, i) for i, p in enumerate(self.presets)], prompt="(keep the fields below)",
                         id="preset", allow_blank=True)
            yield Label("Model: 'default', a .gguf file, an HF folder, or a server's model")
            yield Input(o.model, id="model")
            with Horizontal(classes="row"):
                yield Select([(b, b) for b in ("auto", "torch", "gguf", "openai")], value=o.backend, id="backend",
                             allow_blank=False)
                yield Input(o.base_url or "", placeholder="server URL (openai backend)", id="base_url")
            yield Label("InfLLM v2 attention · weights · KV cache (torch only) · thinking")
            with Horizontal(classes="row"):
                yield Select([("attn auto", "auto"), ("sparse", "on"), ("dense", "off")], value=o.sparse, id="sparse",
                             allow_blank=False)
                yield Select([("float", "none"), ("int8", "int8"), ("int4", "int4")], value=o.quant, id="quant",
                             allow_blank=False)
                yield Select([("KV auto", "auto"), ("KV bf16", "bfloat16"), ("KV f32", "float32")], value=o.kv_dtype,
                             id="kv_dtype", allow_blank=False)
                yield Select([(f"think {v}", v) for v in ("auto", "on", "off")], value=o.thinking, id="thinking",
                             allow_blank=False)
            yield Label("Decoding · Eagle head folder · FR-Spec vocabulary (torch only)")
            with Horizontal(classes="row"):
                yield Select([("plain", "none"), ("lookup", "lookup"), ("eagle", "eagle")], value=o.speculative,
                             id="speculative", allow_blank=False)
                yield Input(o.draft_model or "", placeholder="Eagle head folder", id="draft_model")
                yield Input("" if o.frspec_vocab is None else str(o.frspec_vocab), placeholder="full vocabulary",
                            id="frspec_vocab")
            yield Label("Temperature · top p · max tokens · seed · context (tokens)")
            with Horizontal(classes="row"):
                yield Input(str(o.temperature), id="temperature")
                yield Input(str(o.top_p), id="top_p")
                yield Input(str(o.max_tokens), id="max_tokens")
                yield Input("" if o.seed is None else str(o.seed), placeholder="random", id="seed")
                yield Input("" if o.context_length is None else str(o.context_length), placeholder="model's",
                            id="context_length")
            yield Label("System prompt")
            yield TextArea(self.system_prompt, id="system_prompt")
            yield Label("MCP servers this chat may use (side effects ask first)")
            yield SelectionList(*[(f"{name}" + ("" if count is None else f" ({count} tools)"), name, name in o.tools)
                                  for name, count in self.servers.items()], id="tools")
            yield Static("", id="settings-error", classes="error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id != "preset":
            return
        if event.value is Select.NULL:  # back to "keep the fields": the chat's own options again
            self.base = self.options
            return
        preset = self.presets[event.value].options
        self.base = preset  # what the form does not show (the adapter) comes with the preset
        self.query_one("#model", Input).value = preset.model
        self.query_one("#backend", Select).value = preset.backend
        self.query_one("#base_url", Input).value = preset.base_url or ""
        self.query_one("#sparse", Select).value = preset.sparse
        self.query_one("#quant", Select).value = preset.quant
        self.query_one("#kv_dtype", Select).value = preset.kv_dtype
        self.query_one("#speculative", Select).value = preset.speculative
        self.query_one("#draft_model", Input).value = preset.draft_model or ""
        self.query_one("#frspec_vocab", Input).value = "" if preset.frspec_vocab is None else str(preset.frspec_vocab)
        # The preset's context is part of how its model loads; sampling stays the chat's own.
        self.query_one("#context_length", Input).value = "" if preset.context_length is None else str(preset.context_length)

    def read(self) -> ChatOptions:
        """The form's fields over the chat's options (or the chosen preset's). The one setting the form
        does not show, the LoRA adapter, is kept while the model stays the same and runs locally: it
        belongs to that model, and a server loads its own."""
        value = lambda wid: self.query_one(f"#{wid}", Input).value  # noqa: E731
        model, backend = value("model").strip(), self.query_one("#backend", Select).value
        keeps_adapter = model == self.base.model and backend != "openai"
        return replace(
            self.base, adapter=self.base.adapter if keeps_adapter else None,
            model=model, backend=backend,
            base_url=value("base_url").strip() or None, sparse=self.query_one("#sparse", Select).value,
            quant=self.query_one("#quant", Select).value, kv_dtype=self.query_one("#kv_dtype", Select).value,
            speculative=self.query_one("#speculative", Select).value,
            draft_model=value("draft_model").strip() or None,
            frspec_vocab=_number(value("frspec_vocab"), int, "FR-Spec vocabulary", optional=True),
            thinking=self.query_one("#thinking", Select).value,
            temperature=_number(value("temperature"), float, "temperature"),
            top_p=_number(value("top_p"), float, "top p"),
            max_tokens=_number(value("max_tokens"), int, "max tokens"),
            seed=_number(value("seed"), int, "seed", optional=True),
            context_length=_number(value("context_length"), int, "context", optional=True),
            tools=tuple(self.query_one("#tools", SelectionList).selected))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        try:
            options = self.read()
        except MiniCPMError as exc:
            self.query_one("#settings-error", Static).update(str(exc))
            return
        self.dismiss((options, self.query_one("#system_prompt", TextArea).text))
