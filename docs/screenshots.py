"""Screenshots of `minicpm chat` in a real terminal, each taken only after checking what is on screen.

    python docs/screenshots.py            writes docs/screenshots/*.svg and prints a report

The script seeds a throwaway MINICPM_HOME with a chat (a question, an answer with reasoning and a
code block, a tool call and its result, the answer after it), starts `minicpm chat --open ID` under
tmux at 110x34 and drives it with keys as a person would: the chat screen, a live reply from the
embedded model, the settings, the command palette and a survey being written (on a 400-paper corpus
it builds from the shipped sample; Esc stops that run after the capture). Before each capture it
waits until everything that screen should show is there; a check that never passes stops the run
with the missing items and the last screen. Exit status 0 only if every check passed.

Unlike the snapshot tests (tests/test_tui_snapshots.py, headless Pilot), this goes through a real
terminal: the app's own start-up, key decoding, colours and a model that really streams.
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python docs/screenshots.py` from anywhere

from benchmarks.chat_screen import model_loaded, prompt_is_empty, prompt_text, usage_line
from benchmarks.tmux import TmuxSession, TmuxTimeout, tmux_available

WIDTH, HEIGHT = 110, 34
OUT = Path(__file__).parent / "screenshots"
TITLE = "Reading a large CSV in chunks"
SURVEY_QUERY = "large language model agents"
SURVEY_PAPERS = 400  # the first papers of the shipped sample: the survey screen's corpus, built in seconds
LIVE_QUESTION = "In one sentence, what is a CSV file?"
Check = Callable[[str], bool]


@dataclass
class Shot:
    name: str
    title: str
    checks: list[str]
    waited: float
    path: Path


class CheckFailed(Exception):
    pass


# -- the seeded chat -------------------------------------------------------------------------------

def seed_chats(home: Path) -> str:
    """Write the chats the screenshots show into home's chat store; return the id of the one opened.
    The opened chat is short enough to fit on the 34-row screen whole, reasoning and tool call included."""
    from tui.engine import ChatOptions
    from tui.store import ConversationStore

    with ConversationStore(home / "chats.sqlite") as store:
        for title in ("Sparse attention at 32K context", "Unit conversions for a recipe", "Tokenizer questions"):
            store.create(title, model="default", backend="auto")
        # Greedy and bounded, so the live reply is short and the same from run to run.
        settings = ChatOptions(temperature=0.0, max_tokens=80, seed=0).to_settings()
        chat = store.create(TITLE, model="default", backend="auto", settings=settings)
        store.add_message(chat.id, "user", "My events.csv is 2.5 GB. About how many rows is that at 120 bytes a row, "
                                           "and how do I load it with pandas?")
        store.add_message(chat.id, "assistant", "", tool_calls=[
            {"id": "call_1", "name": "calculate", "args": {"expression": "2.5e9 / 120"}}])
        store.add_message(chat.id, "tool", '{"expression": "2.5e9 / 120", "result": 20833333.333333332, '
                          '"text": "20833333.3333333"}', tool_call_id="call_1", name="calculate")
        store.add_message(
            chat.id, "assistant",
            "About **20.8 million rows**. Read them in chunks; each chunk is a normal DataFrame:\n\n"
            "```python\nfor chunk in pd.read_csv(\"events.csv\", chunksize=500_000):\n"
            "    total += chunk[\"bytes\"].sum()\n```",
            thinking="20.8 million rows will not fit in memory at once; read_csv's chunksize streams the file.",
            usage={"prompt_tokens": 231, "completion_tokens": 64, "decode_tokens_per_second": 49.8,
                   "context_length": 8192})
        return chat.id


def build_corpus(folder: Path) -> Path:
    """A small paper corpus for the survey screen: the first SURVEY_PAPERS papers of the shipped sample."""
    import gzip
    import itertools

    from survey.corpus import Corpus, shipped_sample

    source = folder.parent / "papers.jsonl"
    with gzip.open(shipped_sample(), "rt", encoding="utf-8") as f:
        source.write_text("".join(itertools.islice(f, SURVEY_PAPERS)), encoding="utf-8")
    with Corpus.open(folder, create=True) as corpus:
        corpus.ingest([source])
    return folder


# -- checking and capturing -----------------------------------------------------------------------

def expect(term: TmuxSession, checks: dict[str, str | Check], timeout: float) -> float:
    """Wait until every check passes on one screen; say which did not, with the screen, if they never do."""
    tests = {what: (lambda s, t=test: t in s) if isinstance(test, str) else test for what, test in checks.items()}
    try:
        return term.wait_for(lambda screen: all(test(screen) for test in tests.values()), timeout=timeout)
    except TmuxTimeout as exc:
        missing = [what for what, test in tests.items() if not test(exc.screen)]
        raise CheckFailed(f"not on screen after {timeout:g} s: {'; '.join(missing) or '(the program exited)'}\n"
                          f"the screen:\n{exc.screen}") from None


def save_svg(ansi: str, path: Path, title: str) -> None:
    """An ANSI capture as an SVG terminal picture (rich's exporter)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(Text.from_ansi(ansi.rstrip("\n")), no_wrap=True, crop=True, overflow="crop")
    path.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(path), title=title)


def shoot(term: TmuxSession, name: str, title: str, checks: dict[str, str | Check], timeout: float) -> Shot:
    """Wait until the checks pass on a screen that has stopped changing (a notification that pops up
    over the message box must go first), and save it as docs/screenshots/<name>.svg."""
    t0 = time.perf_counter()
    while True:
        expect(term, checks, max(1.0, timeout - (time.perf_counter() - t0)))
        term.wait_until_still()
        screen = term.capture()
        if all((c in screen) if isinstance(c, str) else c(screen) for c in checks.values()):
            break
        if time.perf_counter() - t0 > timeout:
            raise CheckFailed(f"the screen never stood still with everything on it for {timeout:g} s\n"
                              f"the screen:\n{screen}")
    waited = time.perf_counter() - t0
    path = OUT / f"{name}.svg"
    save_svg(term.capture(ansi=True), path, title)
    return Shot(name, title, list(checks), waited, path)


def answer_below(question: str) -> Check:
    def check(screen: str) -> bool:
        """the assistant's label and a first line of text below the question"""
        lines = [line.split("│", 1)[-1].strip() for line in screen.splitlines()]
        asked = [i for i, line in enumerate(lines) if line == question]
        below = lines[asked[-1] + 1:] if asked else []
        label = next((i for i, line in enumerate(below) if line.startswith("assistant")), None)
        return label is not None and label + 1 < len(below) and bool(below[label + 1])
    return check


def back_to_chat(term: TmuxSession) -> None:
    term.send_keys("Escape")
    expect(term, {"the chat screen's message box is back": lambda s: prompt_text(s) is not None}, 10)


# -- the screens -----------------------------------------------------------------------------------

def take_screenshots(term: TmuxSession) -> list[Shot]:
    shots = [shoot(term, "chat", "minicpm chat: history and a conversation", {
        "the chat's title in the header": TITLE,
        "the embedded model loaded (header names it)": model_loaded,
        "the other chats in the history": "Unit conversions",  # the sidebar cuts long titles
        "the question": "My events.csv is 2.5 GB",
        "the tool call's card, done": lambda s: "tool call: calculate(" in s and "✓" in s,
        "the answer's reasoning, collapsed": "▶ thoughts",
        "the answer's code block": "chunksize=500_000):",
        "the answer's usage": "64 tokens · 49.8 tok/s",
        "the context window in the usage line": lambda s: "8,192 tokens" in usage_line(s),
        "the empty message box": prompt_is_empty,
    }, timeout=60)]

    before = usage_line(term.capture())
    term.type(LIVE_QUESTION)
    expect(term, {"the question typed in the message box": lambda s: prompt_text(s) == LIVE_QUESTION}, 10)
    term.send_keys("Enter")
    shots.append(shoot(term, "live_reply", "minicpm chat: a live reply from the embedded model", {
        "the question in the conversation": LIVE_QUESTION,
        "the start of the model's answer under it": answer_below(LIVE_QUESTION),
        "the message box cleared": prompt_is_empty,
        "the reply finished (a new 'last reply' in the usage line)":
            lambda s: "last reply" in usage_line(s) and usage_line(s) != before,
    }, timeout=120))

    term.send_keys("C-o")
    shots.append(shoot(term, "settings", "minicpm chat: chat settings (Ctrl+O)", {
        "the dialog's title": "Chat settings",
        "the model presets": "Model preset",
        "the chat's sampling (greedy, 80 tokens)": lambda s: "0.0" in s and "80" in s and "Temperature" in s,
        "the system prompt": "System prompt",
    }, timeout=15))
    back_to_chat(term)

    term.send_keys("C-p")
    shots.append(shoot(term, "command_palette", "minicpm chat: the command palette (Ctrl+P)", {
        "the palette's search box": "Search for commands",
        "the chat's own commands": lambda s: all(c in s for c in ("Chat settings", "Export chat", "New chat")),
        "Textual's commands": "Quit the application",
    }, timeout=15))
    back_to_chat(term)

    term.send_keys("C-s")
    expect(term, {"the survey screen": "What should the survey be about?",
                  "the survey screen's keys in the footer": "Resume / open run"}, 15)
    term.type(SURVEY_QUERY)
    term.send_keys("Enter")
    shots.append(shoot(term, "survey", "minicpm chat: a survey being written (Ctrl+S)", {
        "the query as the outline's title": SURVEY_QUERY,
        "parts already written (✓)": "✓ ",
        "the part being written now (▶)": lambda s: s.count("▶ ") >= 1 and "no outline yet" not in s,
        "what the agent is doing and the papers count": lambda s: "now: " in s and " papers" in s,
        "papers retrieved, with their arXiv ids": lambda s: len(re.findall(r"\b2[0-9]{3}\.[0-9]{4,5}\b", s)) >= 3,
        "the run listed with the earlier runs": lambda s: re.search(r"[0-9a-f]{12}  large language model agents", s),
    }, timeout=300))
    back_to_chat(term)  # Esc stops the run after its current step; it stays resumable
    return shots


def main() -> int:
    if not tmux_available():
        print("docs/screenshots.py drives the app in a real terminal and needs tmux (apt-get install tmux)",
              file=sys.stderr)
        return 1
    failure = None
    shots: list[Shot] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minicpm-screenshots-") as tmp:
        home = Path(tmp)
        chat_id = seed_chats(home)
        corpus = build_corpus(home / "corpus")
        command = [sys.executable, "-m", "minicpm_suite", "chat", "--open", chat_id, "--config", str(home / "tui.json"),
                   "--corpus", str(corpus)]
        env = {"MINICPM_HOME": str(home), "MINICPM_MCP_CONFIG": None, "MINICPM_TUI_CONFIG": None,
               "COLORTERM": "truecolor"}
        with TmuxSession(command, width=WIDTH, height=HEIGHT, env=env, cwd=home) as term:
            try:
                shots = take_screenshots(term)
                term.send_keys("C-q")
                expect(term, {"the app quit (Ctrl+Q)": lambda s: not term.is_running()}, 15)
                status = term.exit_status(timeout=10)
                if status != 0:
                    raise CheckFailed(f"the app exited with status {status}:\n{term.capture()}")
            except CheckFailed as exc:
                failure = str(exc)
    print(f"minicpm chat under tmux at {WIDTH}x{HEIGHT}: {len(shots)} screens checked and captured "
          f"in {time.perf_counter() - t0:.1f} s")
    for shot in shots:
        size = shot.path.stat().st_size / 1024
        print(f"  {shot.name:<16} ok after {shot.waited:5.2f} s  {len(shot.checks)} checks  "
              f"{shot.path.relative_to(Path.cwd()) if shot.path.is_relative_to(Path.cwd()) else shot.path} "
              f"({size:.0f} KB)")
    if failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
