"""The survey screen: write a cited survey from the local paper corpus while watching it happen.

    ┌ query ─────────────────────────────────────────┐ ┌ max model calls ┐ [Start]
    now: writing 2 Tool use (12/300 model calls, 31 papers)
    ┌ outline ────────────────┐ ┌ earlier runs ──────────────────────────────┐
    │ ✓ Introduction          │ │ run id   query   state   date             │ [Resume]
    │ ▶ 1 Planning            │ ├ the finished survey (Markdown) ─────────────┤
    │ · 2 Evaluation          │ │ # Language model agents: a survey ...      │
    ├ papers retrieved ───────┤ │                                            │
    │ id          title       │ │                                            │

The run is the survey agent's (agents/survey_agent), driven as `minicpm survey` drives it: one
checkpoint per step in <data dir>/survey.sqlite, so a run that stops (Esc, a failure, the step
limit, a killed app) resumes from its last step. It runs in a thread worker and hands every state
to the UI with call_from_thread; the screen never waits on the model. Esc goes back and stops the
run at the next step boundary; nothing written is lost. A finished survey is written to the survey
folder (<data dir>/surveys) as <run id>.md, .bib and .html, and shown here.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Markdown, Static, Tree

from agents.survey_agent.graph import DEFAULT_MAX_STEPS
from agents.survey_agent.runs import RunSummary
from runtime.errors import MiniCPMError
from tui.engine import ChatOptions, ModelHost

log = logging.getLogger(__name__)

# Runs a worker of this process is driving (a screen left with Esc finishes its current step first):
# a second screen must not resume one of them, or two writers would race on its checkpoints.
_ACTIVE_RUNS: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def _claim(run_id: str) -> bool:
    with _ACTIVE_LOCK:
        if run_id in _ACTIVE_RUNS:
            return False
        _ACTIVE_RUNS.add(run_id)
        return True


def _release(run_id: str) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE_RUNS.discard(run_id)


def active_runs() -> frozenset[str]:
    """The survey runs a worker of this process is driving now (one left with Esc included, until
    its current step is checkpointed)."""
    with _ACTIVE_LOCK:
        return frozenset(_ACTIVE_RUNS)


class SurveyScreen(Screen):
    """A survey from the local corpus, with its live outline, the papers it found, and earlier runs."""

    BINDINGS = [
        Binding("escape", "back", "Back (stops the run)", id="survey_back"),
        Binding("ctrl+r", "resume", "Resume / open run", id="survey_resume"),
    ]

    DEFAULT_CSS = """
    SurveyScreen #survey-form { height: auto; }
    SurveyScreen #survey-query { width: 1fr; }
    SurveyScreen #survey-max-steps { width: 18; }
    SurveyScreen #survey-status { height: 2; padding: 0 1; color: $text-muted; }
    SurveyScreen #survey-status.error { color: $error; }
    SurveyScreen #survey-body { height: 1fr; }
    SurveyScreen #survey-live { width: 2fr; }
    SurveyScreen #survey-side { width: 3fr; }
    SurveyScreen .survey-heading { padding: 0 1; text-style: bold; }
    SurveyScreen #survey-outline { height: 1fr; }
    SurveyScreen #survey-papers { height: 1fr; }
    SurveyScreen #survey-runs-row { height: 10; }
    SurveyScreen #survey-runs { width: 1fr; }
    SurveyScreen #survey-files { height: auto; padding: 0 1; color: $text-muted; }
    SurveyScreen #survey-document-scroll { height: 1fr; }
    """

    def __init__(self, host: ModelHost, options: ChatOptions, *, corpus: Path | None = None,
                 model_factory: Callable[[], object] | None = None, out_dir: Path | None = None,
                 max_steps: int = DEFAULT_MAX_STEPS):
        """host and options: the chat's loaded model, which writes the survey (greedy, seed 0, as the
        CLI does). corpus: the paper corpus (None: the default one, built from the shipped sample on
        first use; a resumed run reads its own). model_factory: makes the LangChain chat model
        instead (tests). out_dir: where finished surveys are written (None: <data dir>/surveys).
        max_steps: the model calls a start or a resume may make (editable on the screen)."""
        super().__init__()
        self.host = host
        self.options = options
        self.corpus_path = corpus
        self.model_factory = model_factory or self._chat_model
        self.out_dir = out_dir
        self.max_steps = max_steps
        self.run_id: str | None = None  # the run this screen is driving
        self.busy = False  # a run is going, or an earlier run is being opened
        self.state: dict = {}  # the run's latest state, as shown
        self.stop = threading.Event()  # set by Esc: the worker stops at the next step boundary
        self.papers_shown: set[str] = set()
        self.runs: dict[str, RunSummary] = {}  # as listed, by run id
        self.doing = ""
        self.last_event = ""

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="survey-form"):
            yield Input(placeholder="What should the survey be about? e.g. retrieval-augmented generation",
                        id="survey-query")
            yield Input(str(self.max_steps), type="integer", id="survey-max-steps",
                        tooltip="the most model calls this start (or resume) may make")
            yield Button("Start", variant="primary", id="survey-start")
        yield Static("Type a topic and press Start. Esc goes back.", id="survey-status")
        with Horizontal(id="survey-body"):
            with Vertical(id="survey-live"):
                yield Label("Outline", classes="survey-heading")
                tree: Tree[str] = Tree("(no outline yet)", id="survey-outline")
                tree.show_root = True
                yield tree
                yield Label("Papers retrieved", classes="survey-heading")
                yield DataTable(id="survey-papers", cursor_type="row", zebra_stripes=True)
            with Vertical(id="survey-side"):
                yield Label("Earlier runs: Enter resumes an unfinished run or opens a finished one",
                            classes="survey-heading")
                with Horizontal(id="survey-runs-row"):
                    yield DataTable(id="survey-runs", cursor_type="row", zebra_stripes=True)
                    yield Button("Resume", id="survey-resume")
                yield Static("", id="survey-files")
                with VerticalScroll(id="survey-document-scroll"):
                    yield Markdown("", id="survey-document")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#survey-papers", DataTable).add_columns("id", "title")
        runs = self.query_one("#survey-runs", DataTable)
        runs.add_column("run", key="run")
        runs.add_column("query", key="query")
        runs.add_column("state", key="state")
        runs.add_column("date", key="date")
        self.query_one("#survey-query", Input).focus()
        self.load_runs()

    # -- actions ---------------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id in ("survey-query", "survey-max-steps"):
            self.start()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "survey-start":
            self.start()
        elif event.button.id == "survey-resume":
            self.action_resume()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "survey-runs" and event.row_key.value is not None:
            self.resume_or_open(event.row_key.value)

    def start(self) -> None:
        query = self.query_one("#survey-query", Input).value.strip()
        if not query:
            self.error("say what the survey is about: type a topic, e.g. \"sparse attention for long context\"")
            return
        budget = self._budget()
        if budget is None or not self._idle():
            return
        run_id = uuid.uuid4().hex[:12]
        _claim(run_id)
        self._begin(run_id, f"starting survey run {run_id}")
        self.drive(run_id, query, budget)

    def action_resume(self) -> None:
        table = self.query_one("#survey-runs", DataTable)
        if table.row_count == 0:
            self.error("there are no earlier runs yet")
            return
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        self.resume_or_open(row_key.value)

    def resume_or_open(self, run_id: str) -> None:
        """Open a finished run; resume an unfinished one with this screen's model."""
        summary = self.runs.get(run_id)
        if summary is None or not self._idle():
            return
        if summary.finished:
            self._begin(None, f"opening survey run {run_id}")
            self.open_finished(run_id)
            return
        budget = self._budget()
        if budget is None:
            return
        if not _claim(run_id):
            self.error(f"run {run_id} is still finishing its last step; try again in a moment")
            return
        self.query_one("#survey-query", Input).value = summary.query
        self._begin(run_id, f"resuming survey run {run_id} (at most {budget} more model calls)")
        self.drive(run_id, None, budget)

    def action_back(self) -> None:
        if self.run_id is not None:
            self.stop.set()
            self.app.notify(f"survey run {self.run_id} stops after its current step; nothing written is lost: "
                            "resume it from the earlier runs on the survey screen", timeout=8)
        self.app.pop_screen()

    # -- the workers -----------------------------------------------------------------------------

    @work(thread=True, group="survey", exit_on_error=False)
    def drive(self, run_id: str, query: str | None, budget: int) -> None:
        """Start (query given) or resume run_id; at most `budget` model calls."""
        try:
            with self.host.busy():
                self._drive(run_id, query, budget)
        except MiniCPMError as exc:
            self._ui(self.error, str(exc))
        except Exception as exc:  # a model or backend failure: said in a line, not a traceback
            log.exception("survey run %s failed", run_id)
            self._ui(self.error, f"the survey stopped on an error: {type(exc).__name__}: {exc}; "
                                 f"resume run {run_id} from the earlier runs")
        finally:
            _release(run_id)
            self._ui(self._ended)

    def _drive(self, run_id: str, query: str | None, budget: int) -> None:
        from agents.checkpoints import latest_values, sqlite_checkpointer
        from agents.survey_agent import SurveyAgent
        from agents.survey_agent.runs import default_mode, describe, open_corpus
        from runtime.settings import data_path
        from survey.export import to_markdown, write_exports

        with sqlite_checkpointer(data_path("survey.sqlite")) as checkpointer:
            previous = None if query is not None else latest_values(checkpointer, run_id)
            if query is None and previous is None:
                raise MiniCPMError(f"there is no survey run '{run_id}' (runs live in {data_path('survey.sqlite')})")
            path = Path(previous["corpus"]) if previous and previous.get("corpus") else self.corpus_path
            self._ui(self.status, "opening the corpus…")
            with open_corpus(path, note=self._note, progress=self._build_progress) as corpus:
                self._ui(self.status, "loading the model…")
                model = self.model_factory()
                mode = (previous or {}).get("mode") or default_mode(model)
                out_dir = self._out_dir()
                outputs = {fmt: str(out_dir / f"{run_id}{suffix}") for fmt, suffix in _FORMATS.items()}
                agent = SurveyAgent(model, corpus, mode=mode, max_steps=budget, seed=0, checkpointer=checkpointer,
                                    on_activity=lambda what: self._ui(self.activity, what))
                total = (previous or {}).get("steps", 0) + budget
                seen = len(previous.get("log", [])) if previous else 0
                self._ui(self.activity, f"{mode} mode, corpus {corpus.path}")
                for state in agent.stream(run_id, query, max_steps=total, outputs=outputs):
                    if self.stop.is_set():
                        return  # Esc: the screen is gone; the checkpoint holds every finished step
                    entries = state.get("log", [])
                    new_papers = [pid for pid in state.get("retrieved", []) if pid not in self.papers_shown]
                    self.papers_shown.update(new_papers)
                    papers = [(pid, paper.title) for pid, paper in agent.retriever.papers(new_papers).items()]
                    self._ui(self.show_state, state, papers, [describe(e) for e in entries[seen:]])
                    seen = len(entries)
                result = agent.result(run_id)
                markdown = to_markdown(result.document, result.papers)
                written = []
                if result.status == "complete":
                    written = write_exports(result.document, result.papers,
                                            **{fmt: Path(path) for fmt, path in outputs.items()})
        self._ui(self.show_result, run_id, result.status, result.error, markdown, written)

    @work(thread=True, group="survey", exit_on_error=False)
    def open_finished(self, run_id: str) -> None:
        """Show a finished run (its files written to the survey folder if they are not there yet)."""
        try:
            self._open_finished(run_id)
        except MiniCPMError as exc:
            self._ui(self.error, str(exc))
        except Exception as exc:
            log.exception("opening survey run %s failed", run_id)
            self._ui(self.error, f"could not open run {run_id}: {type(exc).__name__}: {exc}")
        finally:
            self._ui(self._ended)

    def _open_finished(self, run_id: str) -> None:
        from agents.checkpoints import latest_values, sqlite_checkpointer
        from agents.survey_agent.retrieval import Retriever
        from agents.survey_agent.runs import open_corpus
        from runtime.settings import data_path
        from survey.document import SurveyDocument
        from survey.export import to_markdown, write_exports

        with sqlite_checkpointer(data_path("survey.sqlite")) as checkpointer:
            values = latest_values(checkpointer, run_id)
        if values is None:
            raise MiniCPMError(f"there is no survey run '{run_id}'")
        path = Path(values["corpus"]) if values.get("corpus") else self.corpus_path
        with open_corpus(path, note=self._note) as corpus:
            found = Retriever(corpus).papers(values.get("retrieved", []))
        document = SurveyDocument.from_dict(values["document"])
        self._ui(self.show_state, values, [(pid, paper.title) for pid, paper in found.items()], [])
        out_dir = self._out_dir()
        targets = {fmt: out_dir / f"{run_id}{suffix}" for fmt, suffix in _FORMATS.items()}
        missing = {fmt: path for fmt, path in targets.items() if not path.exists()}
        if missing:
            write_exports(document, found, **missing)
        self._ui(self.show_result, run_id, "complete", None, to_markdown(document, found), list(targets.values()))

    @work(thread=True, group="runs", exit_on_error=False)
    def load_runs(self) -> None:
        from agents.checkpoints import sqlite_checkpointer
        from agents.survey_agent.runs import earlier_runs
        from runtime.settings import data_path

        try:
            with sqlite_checkpointer(data_path("survey.sqlite")) as checkpointer:
                runs = earlier_runs(checkpointer)
        except Exception as exc:  # a damaged database must not take the screen down
            log.exception("listing survey runs failed")
            self._ui(self.error, f"could not list the earlier runs: {exc}")
            return
        self._ui(self.show_runs, runs)

    # -- from the workers: every UI change goes through here --------------------------------------

    def _ui(self, callback, *args) -> None:
        """Run callback on the UI thread and wait for it, unless the screen has been left (Esc) or
        the app is closing: a worker finishing its last step then has nobody to show it to."""
        if self.stop.is_set() or not self.is_attached:
            return
        try:
            self.app.call_from_thread(callback, *args)
        except RuntimeError:  # the app stopped between the check and the call
            pass

    def _note(self, text: str, level: str) -> None:
        self._ui(self.status, text)
        if level == "warning":
            self._ui(self.notify, text, severity="warning", timeout=8)

    def _build_progress(self):
        """The default corpus being built: ingest's progress callable, shown on the status line."""
        import contextlib

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "embed":
                what = f"embedding {done:,}/{total:,} papers"
            else:
                what = f"reading the sample ({done * 100 // max(total, 1)}%)"
            self._ui(self.status, f"building the default corpus: {what}")

        return contextlib.nullcontext(progress)

    def _chat_model(self):
        """The chat's model as a LangChain chat model, with the survey command's defaults."""
        from agents.chat_model import ChatMiniCPM

        return ChatMiniCPM(backend=self.host.get(self.options), temperature=0.0, seed=0)

    def _out_dir(self) -> Path:
        from runtime.settings import data_path

        out_dir = self.out_dir or data_path("surveys")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MiniCPMError(f"cannot make the survey folder {out_dir}: {exc.strerror or exc}") from None
        return out_dir

    # -- showing -----------------------------------------------------------------------------------

    def status(self, text: str, *, error: bool = False) -> None:
        line = self.query_one("#survey-status", Static)
        line.update(Text(text))
        line.set_class(error, "error")

    def error(self, text: str) -> None:
        self.status(text, error=True)
        self.notify(text, severity="error", timeout=10)

    def activity(self, what: str) -> None:
        self.doing = what
        self._show_progress()

    def show_state(self, state: dict, papers: list[tuple[str, str]], events: list[str]) -> None:
        """One step of the run: the outline, the new papers, the latest event."""
        from agents.survey_agent.runs import part_in_progress
        from survey.document import SurveyDocument

        if self.run_id is not None and self.run_id not in self.runs and not self.state:
            self.load_runs()  # a new run is listed (running) once its first state is checkpointed
        self.state = state
        if events:
            self.last_event = events[-1]
        table = self.query_one("#survey-papers", DataTable)
        for paper_id, title in papers:
            if paper_id not in table.rows:
                table.add_row(paper_id, title, key=paper_id)
        if state.get("document"):
            _draw_outline(self.query_one("#survey-outline", Tree), SurveyDocument.from_dict(state["document"]),
                          part_in_progress(state), state.get("query", ""))
        self._show_progress()

    def _show_progress(self) -> None:
        state = self.state
        counts = (f"{state.get('steps', 0)}/{state.get('max_steps', '?')} model calls · "
                  f"{len(state.get('retrieved', []))} papers") if state else ""
        now = f"now: {self.doing}" if self.doing else ""
        line = "  ·  ".join(part for part in (now, counts) if part)
        self.status(line + (f"\n{self.last_event}" if self.last_event else ""))

    async def show_result(self, run_id: str, status: str, error: str | None, markdown: str,
                          written: list[Path]) -> None:
        await self.query_one("#survey-document", Markdown).update(markdown)
        files = self.query_one("#survey-files", Static)
        if status == "complete":
            files.update(Text("written: " + ", ".join(str(p) for p in written) if written else ""))
            self.status(f"survey run {run_id} is complete" + (f"\n{self.last_event}" if self.last_event else ""))
            self.notify(f"the survey is written: {written[0]}" if written else "the survey is complete", timeout=6)
            return
        files.update(Text(f"unfinished (run {run_id}): below is the survey so far; no files were written"))
        reason = error or "it stopped before the end"
        hint = " (raise the max model calls)" if "step limit" in reason else ""
        self.error(f"the survey is not finished: {reason.replace('; resume with a higher --max-steps', '')}. "
                   f"Resume run {run_id} from the earlier runs{hint}")

    def show_runs(self, runs: list[RunSummary]) -> None:
        table = self.query_one("#survey-runs", DataTable)
        cursor = table.cursor_row
        table.clear()
        self.runs = {run.run_id: run for run in runs}
        active = active_runs()
        for run in runs:
            state = run.status
            if state == "running" and run.run_id not in active:
                state = "stopped"  # its process stopped (Esc, a kill) before the end; resumable
            query = run.query
            if not query and run.run_id == self.run_id:  # its first step is not checkpointed yet
                query = self.state.get("query", "")
            table.add_row(run.run_id, query, state,
                          run.updated.strftime("%Y-%m-%d %H:%M") if run.updated else "", key=run.run_id)
        if runs:
            table.move_cursor(row=min(cursor, len(runs) - 1))

    # -- bookkeeping -------------------------------------------------------------------------------

    def _budget(self) -> int | None:
        raw = self.query_one("#survey-max-steps", Input).value.strip()
        try:
            budget = int(raw)
        except ValueError:
            budget = 0
        if budget < 1:
            self.error(f"the max model calls must be a whole number of at least 1 (got {raw!r})")
            return None
        return budget

    def _idle(self) -> bool:
        if self.busy:
            self.error("a survey is already running here; wait for it, or press Esc to stop it")
            return False
        return True

    def _begin(self, run_id: str | None, message: str) -> None:
        self.run_id, self.busy = run_id, True
        self.state, self.doing, self.last_event = {}, "", ""
        self.papers_shown = set()
        self.query_one("#survey-papers", DataTable).clear()
        tree = self.query_one("#survey-outline", Tree)
        tree.clear()
        tree.root.set_label("(no outline yet)")
        self.query_one("#survey-files", Static).update("")
        self.query_one("#survey-document", Markdown).update("")
        for button in self.query(Button):
            button.disabled = True
        self.status(message)

    def _ended(self) -> None:
        self.run_id, self.busy = None, False
        for button in self.query(Button):
            button.disabled = False
        self.load_runs()


_FORMATS = {"markdown": ".md", "bibtex": ".bib", "html": ".html"}


def _draw_outline(tree: Tree, document, current: str | None, query: str) -> None:
    """The outline: written parts ✓, the part being written ▶ and highlighted, the rest ·."""
    tree.clear()
    tree.root.set_label(Text(document.title or query, style="bold"))
    nodes = {}
    for position, _, node in document.walk():
        if position == current:
            label = Text.assemble(("▶ ", "bold"), (document.label(position), "bold reverse"))
        elif node.written:
            label = Text.assemble(("✓ ", "green"), document.label(position))
        else:
            label = Text.assemble(("· ", "dim"), (document.label(position), "dim"))
        parent = nodes.get(position.rsplit("/", 1)[0]) if "/" in position else tree.root
        nodes[position] = (parent or tree.root).add(label, data=position, expand=True,
                                                    allow_expand=bool(node.children))
    tree.root.expand()
