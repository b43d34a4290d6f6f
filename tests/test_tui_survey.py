"""The chat app's survey screen (tui/screens/survey.py) driven headless with Textual's Pilot.

A scripted chat model (the capable instruct model of test_survey_agent.py) writes the survey; the
rest is real: a corpus of a few dozen papers from the shipped sample (MiniLM vectors included), the
survey agent, its SQLite checkpoints and the exported files, all under tmp_path (MINICPM_HOME).
"""

from __future__ import annotations

import threading

import pytest
from test_corpus import sample_lines, write_gz
from test_survey_agent import capable_generic, scripted
from textual.app import App
from textual.widgets import DataTable, Input, Markdown, Static, Tree

from survey.corpus import Corpus
from tui.engine import ChatOptions, ModelHost
from tui.screens.survey import SurveyScreen, active_runs

pytestmark = pytest.mark.asyncio

N_PAPERS = 40
QUERY = "language model agents"


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    source = write_gz(tmp_path_factory.mktemp("src") / "papers.jsonl.gz", sample_lines(N_PAPERS))
    path = tmp_path_factory.mktemp("corpus") / "c"
    with Corpus.open(path, create=True) as corpus:
        corpus.ingest([source])
    return path


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def no_model(*args, **kwargs):
    raise AssertionError("the survey screen loaded the chat's model although a model_factory was given")


class SurveyHost(App):
    """The smallest app that shows the survey screen, as the chat app pushes it."""

    def __init__(self, **screen_options):
        super().__init__()
        self.screen_options = screen_options

    def on_mount(self) -> None:
        self.push_screen(SurveyScreen(ModelHost(loader=no_model), ChatOptions(), **self.screen_options))


def survey_app(corpus, out_dir, respond=capable_generic) -> SurveyHost:
    model = scripted(respond)
    return SurveyHost(corpus=corpus, out_dir=out_dir, model_factory=lambda: model)


async def settle(pilot) -> None:
    """Let the run's worker finish, then the runs list it refreshes on the way out."""
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def start(pilot, query: str, max_steps: int | None = None, *, click: bool = False) -> None:
    """Type the query (and the max model calls), then Enter in the query box, or a click on Start
    (a button ignores a second click within its 0.2 s press animation, so Enter for quick repeats)."""
    screen = pilot.app.screen
    box = screen.query_one("#survey-query", Input)
    box.value = query
    if max_steps is not None:
        screen.query_one("#survey-max-steps", Input).value = str(max_steps)
    if click:
        await pilot.click("#survey-start")
    else:
        box.focus()
        await pilot.press("enter")
    await settle(pilot)


def status(screen) -> str:
    return str(screen.query_one("#survey-status", Static).content)


def outline(screen) -> list[str]:
    labels = []

    def walk(node):
        for child in node.children:
            labels.append(str(child.label))
            walk(child)

    walk(screen.query_one("#survey-outline", Tree).root)
    return labels


def runs(screen) -> list[list[str]]:
    table = screen.query_one("#survey-runs", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_a_survey_runs_live_and_the_finished_document_is_shown_and_written(corpus_path, tmp_path):
    out = tmp_path / "surveys"
    app = survey_app(corpus_path, out)
    async with app.run_test(size=(160, 50)) as pilot:
        screen = app.screen
        await start(pilot, QUERY, click=True)
        assert "is complete" in status(screen), status(screen)
        assert outline(screen) == ["✓ Abstract", "✓ Introduction", "✓ 1 Planning with language models",
                                   "✓ 1.1 Task decomposition", "✓ 2 Tool use and retrieval", "✓ 3 Evaluation of agents",
                                   "✓ Conclusion"]
        assert str(screen.query_one("#survey-outline", Tree).root.label) == "Language model agents: a survey"
        papers = screen.query_one("#survey-papers", DataTable)
        assert papers.row_count >= 5
        paper_id, title = papers.get_row_at(0)
        with Corpus.open(corpus_path) as corpus:
            assert corpus.get(paper_id).title == title
        [run_id] = [path.stem for path in out.glob("*.md")]
        assert {p.name for p in out.iterdir()} == {f"{run_id}.md", f"{run_id}.bib", f"{run_id}.html"}
        document = screen.query_one("#survey-document", Markdown).source
        assert document == (out / f"{run_id}.md").read_text()
        assert document.startswith("# Language model agents: a survey") and "## References" in document
        assert str(out / f"{run_id}.md") in str(screen.query_one("#survey-files", Static).content)
        assert runs(screen)[0][:3] == [run_id, QUERY, "complete"]


async def test_bad_input_is_said_in_a_line_not_a_traceback(corpus_path, tmp_path):
    app = survey_app(tmp_path / "no-corpus", tmp_path / "out")
    async with app.run_test(size=(160, 50)) as pilot:
        screen = app.screen
        await start(pilot, "   ")
        assert "say what the survey is about" in status(screen)
        await start(pilot, QUERY, max_steps=0)
        assert "at least 1" in status(screen)
        await start(pilot, QUERY, max_steps=300)
        assert "no corpus folder at" in status(screen) and "no-corpus" in status(screen)
        assert screen.query_one("#survey-start").disabled is False  # ready for another try
        assert not (tmp_path / "out").exists()

    Corpus.open(tmp_path / "empty", create=True).close()
    app = survey_app(tmp_path / "empty", tmp_path / "out")
    async with app.run_test(size=(160, 50)) as pilot:
        await start(pilot, QUERY)
        assert "is empty" in status(app.screen)

    def broken(system, user, n):
        raise RuntimeError("the backend went away")

    app = survey_app(corpus_path, tmp_path / "out", respond=broken)
    async with app.run_test(size=(160, 50)) as pilot:
        await start(pilot, QUERY)
        line = status(app.screen)
        assert "the survey stopped on an error: RuntimeError: the backend went away" in line
        assert "resume run" in line


async def test_a_run_cut_short_is_listed_unfinished_and_resuming_it_completes_it(corpus_path, tmp_path):
    out = tmp_path / "surveys"
    app = survey_app(corpus_path, out)
    async with app.run_test(size=(160, 50)) as pilot:
        screen = app.screen
        await start(pilot, QUERY, max_steps=3)
        assert "not finished" in status(screen) and "step limit (3 model calls)" in status(screen)
        assert "--max-steps" not in status(screen)  # the CLI's advice; here it is the max model calls field
        [[run_id, query, state, _]] = runs(screen)
        assert (query, state) == (QUERY, "failed")
        assert not out.exists() or not list(out.iterdir())  # only a finished survey is written
        written_before = [label for label in outline(screen) if label.startswith("✓")]

        screen.query_one("#survey-max-steps", Input).value = "100"
        screen.query_one("#survey-runs", DataTable).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert "is complete" in status(screen), status(screen)
        assert runs(screen)[0][:3] == [run_id, QUERY, "complete"]
        assert set(written_before) <= set(outline(screen)) and all(l.startswith("✓") for l in outline(screen))
        assert (out / f"{run_id}.html").is_file()

        # Opening the finished run shows it again, without a model call.
        (out / f"{run_id}.bib").unlink()
        await pilot.click("#survey-resume")
        await settle(pilot)
        assert screen.query_one("#survey-document", Markdown).source == (out / f"{run_id}.md").read_text()
        assert (out / f"{run_id}.bib").is_file()  # a missing file is written again


async def test_escape_stops_the_run_at_the_next_step_and_it_is_listed_as_stopped(corpus_path, tmp_path):
    holding, release = threading.Event(), threading.Event()

    def slow(system, user, n):
        if n == 2:
            holding.set()
            release.wait(10)
        return capable_generic(system, user, n)

    app = survey_app(corpus_path, tmp_path / "surveys", respond=slow)
    async with app.run_test(size=(160, 50)) as pilot:
        app.screen.query_one("#survey-query", Input).value = QUERY
        await pilot.click("#survey-start")
        while not holding.is_set():
            await pilot.pause(0.05)
        await pilot.press("escape")
        assert not isinstance(app.screen, SurveyScreen)
        assert any("stops after its current step" in n.message for n in app._notifications)
        assert active_runs()  # the run finishes the step it is in
        release.set()
        while active_runs():
            await pilot.pause(0.05)
        app.push_screen(SurveyScreen(ModelHost(loader=no_model), ChatOptions(), corpus=corpus_path))
        await settle(pilot)
        [[_, query, state, _]] = runs(app.screen)
        assert (query, state) == (QUERY, "stopped")
