"""Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...).

Loads the model --parallel times (each copy answers one request at a time), then runs uvicorn on
127.0.0.1 until Ctrl+C. Requests beyond the copies wait in a bounded queue whose depth /health
reports. The app itself is runtime/server/; this module parses arguments, loads, binds and prints.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from runtime.errors import MiniCPMError
from tui.commands.generate import add_model_arguments, sparse_options, speculative_options

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only); anything else exposes "
                             "the model to the network, so set --api-key")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: $MINICPM_SERVE_API_KEY; none if unset)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="requests generated at once; each one is a separate copy of the model in memory, "
                             "and the CPU threads are shared out among them (default: 1)")
    parser.add_argument("--queue-size", type=int, default=16, metavar="M",
                        help="requests that may wait for a free copy; beyond them the server answers 503 with "
                             "Retry-After (default: 16)")
    parser.add_argument("--tool-dialect", choices=("auto", "minicpm", "hermes"), default="auto",
                        help="how local models are shown tools and write calls: minicpm (MiniCPM4-MCP's python "
                             "calls), hermes (<tool_call> JSON), auto: from the chat template (default: auto)")
    parser.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="the model id clients send and /v1/models lists (default: from --model, "
                             "e.g. 'default' or a file's name)")


def served_model_id(model: str) -> str:
    """A short id for the model reference: 'default', a file's stem, a folder's name, a hub id."""
    path = Path(model).expanduser()
    if model != "default" and path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return model


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before loading so a taken port fails fast and clearly."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MiniCPMError(f"--host {host} is not an address this machine can listen on ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise MiniCPMError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running? "
                           "pick another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def check_arguments(args: argparse.Namespace) -> None:
    if args.parallel < 1:
        raise MiniCPMError(f"--parallel must be at least 1 (got {args.parallel})")
    if args.queue_size < 0:
        raise MiniCPMError(f"--queue-size must be 0 or more (got {args.queue_size})")
    if not 0 <= args.port <= 65535:
        raise MiniCPMError(f"--port must be between 0 and 65535 (got {args.port})")


def load_backends(args: argparse.Namespace) -> list:
    """--parallel independent copies; without --threads, the cores are shared out among them."""
    from runtime.backends.base import load_backend

    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.parallel) if args.parallel > 1 else None)
    backends = []
    for i in range(args.parallel):
        if args.parallel > 1:
            print(f"minicpm: loading copy {i + 1} of {args.parallel}", file=sys.stderr)
        backends.append(load_backend(args.backend, args.model, dtype=args.dtype, quant=args.quant, context_length=args.ctx,
                                     threads=threads, sparse=args.sparse, sparse_overrides=sparse_options(args),
                                     base_url=args.base_url, **speculative_options(args),
                                     adapter=args.adapter, kv_dtype=args.kv_dtype))
    return backends


def stderr_logging() -> dict:
    """uvicorn's log setup with its access lines on stderr too: stdout carries only the URL."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from runtime.server import create_app

    check_arguments(args)
    api_key = args.api_key or os.environ.get("MINICPM_SERVE_API_KEY") or None
    if not is_loopback(args.host) and not api_key:
        print(f"minicpm: WARNING: listening on {args.host} without an API key: anyone who can reach this machine "
              "can use the model. Set --api-key (or MINICPM_SERVE_API_KEY), or keep the default --host 127.0.0.1.",
              file=sys.stderr)
    sock = bind(args.host, args.port)
    backends = load_backends(args)
    backend = backends[0]
    for notice in backend.notices:
        print(f"minicpm: note: {notice}", file=sys.stderr)
    model_id = args.served_model_name or served_model_id(args.model)
    app = create_app(backends, model_id=model_id, aliases=[args.model], api_key=api_key, queue_size=args.queue_size,
                     tool_dialect=None if args.tool_dialect == "auto" else args.tool_dialect)

    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"minicpm: serving '{model_id}' ({backend.model_label}, {backend.name} backend, context "
          f"{backend.context_length} tokens)", file=sys.stderr)
    print(f"minicpm: {len(backends)} request(s) at once, up to {args.queue_size} queued; "
          f"API key {'required' if api_key else 'off'}; Ctrl+C stops", file=sys.stderr)
    # The URL goes to stdout, alone on its line, for scripts that start the server and read it.
    print(f"http://{shown_host}:{port}/v1", flush=True)
    config = uvicorn.Config(app, log_config=stderr_logging(), log_level="info", timeout_graceful_shutdown=3)
    try:
        # uvicorn handles Ctrl+C: it stops accepting, gives open requests a few seconds (a stream
        # still running then is cancelled, which stops its generation), and exits.
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn raises the signal again once it has shut down; the shutdown was clean
    print("minicpm: server stopped", file=sys.stderr)
    return 0
