"""Chat with a model in the terminal UI: streaming Markdown, history, tools with approval, surveys.

    minicpm chat                          a new chat with the settings file's defaults (embedded model)
    minicpm chat --model FILE.gguf        a new chat with another model (see --backend, --base-url)
    minicpm chat --open ID                reopen a chat from the history
    minicpm chat --list [--json]          the saved chats, without starting the UI
    minicpm chat --paths                  where the history, the settings file and the MCP config live

Keys: Enter sends, Shift+Enter or Ctrl+J a new line, Esc cancels a reply, Ctrl+P the command palette,
Ctrl+N new chat, Ctrl+O settings, Ctrl+S survey, Ctrl+T thinking, Ctrl+B history, Ctrl+Y copy answer,
Ctrl+Q quit; rebind them in the settings file's "keymap".
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from runtime.backends.base import KV_DTYPES
from runtime.errors import MiniCPMError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="'default' (embedded SmolLM2), a .gguf file, an HF checkpoint folder or a server's model "
                             "(default: the settings file's new_chat model)")
    parser.add_argument("--backend", choices=("torch", "gguf", "openai", "auto"), default=None,
                        help="the backend for a new chat (default: the settings file's, auto)")
    parser.add_argument("--base-url", default=None, metavar="URL", help="the openai backend's server")
    parser.add_argument("--sparse", choices=("auto", "on", "off"), default=None,
                        help="InfLLM v2 sparse attention on the torch backend for a new chat")
    parser.add_argument("--quant", choices=("none", "int8", "int4"), default=None,
                        help="quantize the weights on load for a new chat on the torch backend (runtime/quantize.py)")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default=None,
                        help="the KV cache's dtype for a new chat on the torch backend (auto: the compute dtype; "
                             "bfloat16 halves the cache of a model computing in float32)")
    parser.add_argument("--speculative", choices=("none", "lookup", "eagle"), default=None,
                        help="speculative decoding for a new chat on the torch backend: prompt-lookup drafts, or an "
                             "Eagle head's (runtime/speculative.py, runtime/eagle.py)")
    parser.add_argument("--draft-model", default=None, metavar="DIR",
                        help="the Eagle head of --speculative eagle (upstream's or one from `minicpm train eagle`)")
    parser.add_argument("--frspec-vocab", type=int, default=None, metavar="N",
                        help="--speculative eagle: draft over FR-Spec's N most frequent tokens (the head's freq_N.pt)")
    parser.add_argument("--adapter", default=None, metavar="DIR|NAME",
                        help="a LoRA adapter for a new chat: a PEFT folder (`minicpm train sft`) or a shipped one, "
                             "e.g. smollm2-mcp (the embedded model's MCP tool-call fine-tune)")
    parser.add_argument("--system", default=None, help="the system prompt of a new chat")
    parser.add_argument("--tools", default=None, metavar="SERVERS",
                        help="comma-separated MCP servers a new chat may use, e.g. calc,clock")
    parser.add_argument("--mcp-config", default=None, metavar="FILE",
                        help="an mcpServers JSON file (default: MINICPM_MCP_CONFIG, <data dir>/mcp.json, else the "
                             "built-in servers)")
    parser.add_argument("--corpus", type=Path, default=None, metavar="DIR", help="the survey screen's paper corpus")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="the chat settings file (default: MINICPM_TUI_CONFIG or <data dir>/tui.json)")
    parser.add_argument("--db", type=Path, default=None, metavar="FILE",
                        help="the chat history database (default: <data dir>/chats.sqlite)")
    parser.add_argument("--open", default=None, metavar="ID", help="reopen this chat")
    parser.add_argument("--list", action="store_true", help="print the saved chats and exit")
    parser.add_argument("--json", action="store_true", help="with --list: one JSON object per chat")
    parser.add_argument("--paths", action="store_true", help="print where the chat keeps its files and exit")
    parser.add_argument("--no-preload", action="store_true",
                        help="load the model with the first message instead of at start")


def run(args: argparse.Namespace) -> int:
    from tui.config import TuiConfig, default_path
    from tui.store import ConversationStore

    config = TuiConfig.load(args.config)
    config.new_chat = new_chat_options(config.new_chat, args)
    db = args.db.expanduser() if args.db else None
    if args.paths:
        from mcp_tools.config import default_config_path
        from runtime.settings import data_path

        print(f"history:  {db or data_path('chats.sqlite')}")
        print(f"settings: {args.config or default_path()}")
        print(f"mcp:      {args.mcp_config or default_config_path()}")
        print(f"surveys:  {data_path('surveys')}")
        return 0
    store = ConversationStore(db) if db else ConversationStore.default()
    try:
        if args.list:
            return list_chats(store, as_json=args.json)
        if args.open:
            store.get(args.open)  # a clear error before the UI starts
        from tui.app import ChatApp
        from tui.tool_turns import McpHost

        check_tools_exist(config.new_chat.tools, args.mcp_config)
        app = ChatApp(store, config, mcp=McpHost(args.mcp_config), open_chat=args.open, corpus=args.corpus,
                      preload=not args.no_preload, system_prompt=args.system or "")
        app.run()
        return app.return_code or 0
    finally:
        store.close()


def new_chat_options(options, args: argparse.Namespace):
    """The settings file's new-chat options with the command line's on top."""
    changes = {}
    if args.model is not None:
        changes["model"] = args.model
        if args.backend is None:
            changes["backend"] = "auto"
    for name in ("backend", "base_url", "sparse", "quant", "kv_dtype", "speculative", "draft_model", "frspec_vocab",
                 "adapter"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.base_url is not None and args.backend is None:
        changes["backend"] = "openai"
    if args.tools is not None:
        changes["tools"] = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    return replace(options, **changes) if changes else options


def list_chats(store, *, as_json: bool) -> int:
    from tui.widgets.history import age

    chats = store.list()
    if as_json:
        for c in chats:
            print(json.dumps({"id": c.id, "title": c.title, "model": c.model, "backend": c.backend,
                              "created": c.created, "updated": c.updated}, ensure_ascii=False))
        return 0
    if not chats:
        print("no saved chats yet: start one with `minicpm chat`")
        return 0
    for c in chats:
        print(f"{c.id}  {age(c.updated):>12}  {c.title}  [{c.model}]")
    return 0


def check_tools_exist(names, mcp_config) -> None:
    """Unknown --tools names fail before the UI starts."""
    if not names:
        return
    from mcp_tools.config import servers_for

    known = [s.name for s in servers_for(mcp_config)[0]]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MiniCPMError(f"--tools: no MCP server named {', '.join(unknown)} (configured: {', '.join(known) or 'none'})")
