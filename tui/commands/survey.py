"""Write a literature survey from the local paper corpus: Plan-Retrieve-Write, every citation grounded.

    minicpm survey "QUERY" [--corpus DIR] [--out survey.md] [--bib refs.bib] [--html survey.html]
                           [--mode generic|minicpm] [--max-steps N]
    minicpm survey --resume RUN_ID                 continue a run that stopped (killed, failed, out of steps)

Progress (outline, the part being written, papers retrieved) is shown live on stderr. Without
--out the Markdown goes to stdout. Every step is checkpointed in <data dir>/survey.sqlite; a run
that fails keeps its partial survey there and in <out>.partial.md, and --resume continues it.
When no --corpus is named and the default corpus does not exist yet, it is built from the arXiv
sample that ships with the suite (2,000 papers, about a minute).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from runtime.errors import MiniCPMError
from tui.commands.generate import add_model_arguments, sparse_options, speculative_options

FORMATS = (("out", "markdown"), ("bib", "bibtex"), ("html", "html"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", help="the survey's topic, e.g. \"retrieval-augmented generation\"")
    parser.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                        help="the corpus folder (default: <data dir>/corpora/default, built from the shipped "
                             "sample if it does not exist)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="write the Markdown here (default: stdout)")
    parser.add_argument("--bib", type=Path, default=None, metavar="FILE", help="write the references as BibTeX here")
    parser.add_argument("--html", type=Path, default=None, metavar="FILE", help="write a standalone HTML page here")
    parser.add_argument("--mode", choices=("generic", "minicpm"), default=None,
                        help="minicpm: MiniCPM4-Survey's own action format (for the fine-tune); generic: step-wise "
                             "prompts any instruct model follows (default: minicpm for a MiniCPM4-Survey model, "
                             "else generic)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N", help="most model calls in the run (300)")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue this run (its id is printed when it starts)")
    add_model_arguments(parser, default_backend="auto")  # auto: the embedded GGUF runs on llama.cpp
    parser.add_argument("--max-tokens", type=int, default=None, metavar="N",
                        help="most tokens per model call (generic 320, minicpm 2048)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (0): the same run gives the same survey")
    parser.add_argument("--json", action="store_true",
                        help="print each event as one JSON line, then the result, instead of the live view")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agents.checkpoints import latest_values, sqlite_checkpointer
    from agents.survey_agent.runs import default_mode
    from runtime.settings import data_path

    _check(args)
    console = Console(stderr=True, highlight=False)
    with sqlite_checkpointer(data_path("survey.sqlite")) as checkpointer:
        previous = None
        if args.resume:
            previous = latest_values(checkpointer, args.resume)
            if previous is None:
                raise MiniCPMError(f"there is no survey run '{args.resume}' (runs live in {data_path('survey.sqlite')})")
        corpus = _open_corpus(args, previous, console)
        with corpus:
            model = _load_model(args, console)
            mode = args.mode or (previous or {}).get("mode") or default_mode(model)
            outputs = _outputs(args, previous)
            return _drive(args, model, corpus, mode, outputs, checkpointer, previous, console)


def _check(args: argparse.Namespace) -> None:
    if args.resume is None:
        if args.query is None:
            raise MiniCPMError("say what the survey is about: minicpm survey \"QUERY\" (or --resume RUN_ID)")
        if not args.query.strip():
            raise MiniCPMError("the survey query is empty")
    elif args.query is not None:
        raise MiniCPMError("--resume continues a run with its own query; drop the QUERY")
    if args.max_steps is not None and args.max_steps < 1:
        raise MiniCPMError(f"--max-steps must be at least 1 (got {args.max_steps})")
    if args.max_tokens is not None and args.max_tokens < 16:
        raise MiniCPMError(f"--max-tokens must be at least 16 (got {args.max_tokens})")
    targets = [getattr(args, flag) for flag, _ in FORMATS if getattr(args, flag) is not None]
    for path in targets:
        if path.is_dir():
            raise MiniCPMError(f"{path} is a folder; name a file to write")
        if not path.parent.exists():
            raise MiniCPMError(f"cannot write {path}: the folder {path.parent} does not exist")
    if len({p.resolve() for p in targets}) < len(targets):
        raise MiniCPMError("--out, --bib and --html must be different files")


def _open_corpus(args, previous, console):
    from rich.markup import escape

    from agents.survey_agent.runs import open_corpus
    from tui.commands.corpus import IngestProgress

    path = args.corpus or (Path(previous["corpus"]) if previous and previous.get("corpus") else None)
    styles = {"info": "dim", "warning": "yellow"}
    return open_corpus(path, note=lambda text, level: console.print(f"[{styles[level]}]{escape(text)}[/]"),
                       progress=lambda: IngestProgress(enabled=console.is_terminal))


def _load_model(args, console):
    from rich.markup import escape

    from agents.chat_model import ChatMiniCPM
    from runtime.backends.base import load_backend

    backend = load_backend(args.backend, args.model, dtype=args.dtype, quant=args.quant, context_length=args.ctx, threads=args.threads,
                           sparse=args.sparse, sparse_overrides=sparse_options(args), base_url=args.base_url,
                           **speculative_options(args), adapter=args.adapter,
                           kv_dtype=args.kv_dtype)
    for notice in backend.notices:
        console.print(f"[yellow]minicpm: note: {escape(notice)}[/]")
    return ChatMiniCPM(backend=backend, temperature=0.0, seed=args.seed)


def _outputs(args, previous) -> dict[str, str]:
    """format -> path: this invocation's flags, else (on resume) the run's own."""
    named = {fmt: str(getattr(args, flag).resolve()) for flag, fmt in FORMATS if getattr(args, flag) is not None}
    return named or dict((previous or {}).get("outputs") or {})


def _drive(args, model, corpus, mode, outputs, checkpointer, previous, console) -> int:
    from agents.survey_agent import SurveyAgent
    from survey.export import to_markdown, write_exports

    run_id = args.resume or uuid.uuid4().hex[:12]
    view = JsonView() if args.json else LiveView(console, run_id)
    agent = SurveyAgent(model, corpus, mode=mode, max_steps=args.max_steps or 300, max_tokens=args.max_tokens,
                        seed=args.seed, checkpointer=checkpointer, on_activity=view.activity)
    seen = len(previous.get("log", [])) if previous else 0
    if previous and previous.get("status") == "complete":
        console.print(f"[dim]run {run_id} is already complete; writing its files again[/]")
    elif not args.json:
        verb = "resuming" if previous else "starting"
        console.print(f"[dim]{verb} survey run {run_id} ({mode} mode, corpus {corpus.path}); "
                      f"continue it after a stop with: minicpm survey --resume {run_id}[/]")
    started = time.perf_counter()
    try:
        with view:
            for state in agent.stream(run_id, None if previous else args.query, max_steps=args.max_steps,
                                      outputs=outputs):
                entries = state.get("log", [])
                for entry in entries[seen:]:
                    view.event(entry, state)
                seen = len(entries)
                view.state(state)
    except KeyboardInterrupt:
        console.print(f"\n[yellow]stopped. Nothing written is lost: continue with minicpm survey --resume {run_id}[/]")
        return 130
    result = agent.result(run_id)
    seconds = time.perf_counter() - started
    finished = result.status == "complete"
    paths = {fmt: Path(path) for fmt, path in outputs.items()}
    if not finished:
        paths = {fmt: path.with_name(f"{path.stem}.partial{path.suffix}") for fmt, path in paths.items()}
    written = write_exports(result.document, result.papers, **paths)
    if "markdown" not in paths and not args.json:
        print(to_markdown(result.document, result.papers))
    if args.json:
        print(json.dumps({"event": "result", "run_id": run_id, "status": result.status, "error": result.error,
                          "steps": result.steps, "seconds": round(seconds, 1), "references": len(result.cited),
                          "papers_retrieved": len(result.papers), "files": [str(p) for p in written],
                          **({"markdown": to_markdown(result.document, result.papers)} if "markdown" not in paths else {})},
                         ensure_ascii=False), flush=True)
    _summary(console, result, seconds, written, run_id)
    return 0 if finished else 1


def _summary(console, result, seconds, written, run_id) -> None:
    from rich.markup import escape

    files = ", ".join(escape(str(p)) for p in written)
    if result.status == "complete":
        console.print(f"[green]survey complete[/]: {len(result.cited)} references, {result.steps} model calls, "
                      f"{seconds:.0f} s" + (f"; wrote {files}" if files else ""))
        return
    console.print(f"[red]the survey is not finished: {escape(result.error or 'stopped')}[/]")
    if files:
        console.print(f"the partial survey is in {files}")
    console.print(f"continue with: minicpm survey --resume {run_id}")


class LiveView:
    """A live panel on stderr: the outline (written parts ticked), what the model is doing now,
    papers retrieved and citations so far. Off a terminal, one line per event instead."""

    def __init__(self, console, run_id: str):
        self.console, self.run_id = console, run_id
        self.live = None
        self.doing = "starting"
        self.last: dict = {}
        self.started = time.perf_counter()

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def activity(self, what: str) -> None:
        self.doing = what
        if self.live is not None:
            self.live.update(self._render())

    def state(self, state: dict) -> None:
        self.last = state
        if self.live is not None:
            self.live.update(self._render())

    def event(self, entry: dict, state: dict) -> None:
        if self.live is None:
            from rich.markup import escape

            from agents.survey_agent.runs import describe

            self.console.print(escape(describe(entry)), style=_STYLES.get(entry.get("kind"), "dim"))

    def _render(self):
        from rich.console import Group
        from rich.markup import escape
        from rich.panel import Panel
        from rich.text import Text
        from rich.tree import Tree

        from agents.survey_agent.runs import describe
        from survey.document import SurveyDocument

        state = self.last
        if not state.get("document"):
            return Text(f"… {self.doing}", style="dim")
        document = SurveyDocument.from_dict(state["document"])
        tree = Tree(escape(document.title or state.get("query", "")), guide_style="dim")
        if document.planned:
            branches = {}
            for position, depth, node in document.walk():
                mark = "[green]✓[/]" if node.written else "[dim]·[/]"
                label = f"{mark} {escape(document.label(position))}"
                parent = branches.get(position.rsplit("/", 1)[0]) if "/" in position else tree
                branches[position] = (parent or tree).add(label)
        recent = [describe(e) for e in state.get("log", [])[-3:]]
        footer = Text.assemble(
            (f"{len(state.get('retrieved', []))} papers retrieved · {state.get('steps', 0)} model calls · "
             f"{time.perf_counter() - self.started:.0f} s\n", "bold"),
            (f"now: {self.doing}\n", "cyan"), *[(line + "\n", "dim") for line in recent])
        return Panel(Group(tree, footer), title=f"survey {self.run_id}", border_style="blue")


class JsonView:
    """One JSON object per event on stdout, for scripts."""

    def __enter__(self) -> JsonView:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def activity(self, what: str) -> None:
        pass

    def state(self, state: dict) -> None:
        pass

    def event(self, entry: dict, state: dict) -> None:
        print(json.dumps({"event": entry.get("kind"), **entry}, ensure_ascii=False), flush=True)


_STYLES = {"write": "green", "plan": "bold", "retry": "yellow", "fallback": "yellow", "invalid": "yellow",
           "removed": "yellow", "failed": "red", "complete": "green"}
