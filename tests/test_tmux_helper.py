"""benchmarks/tmux.py drives a real terminal; benchmarks/chat_screen.py reads the chat app's screen.

The tmux tests run `cat` and sh (no model, no app): typing, reading, the environment, a program that
exits and its status, a wait that times out, and the session's own tmux server gone after kill().
Skipped where tmux is not installed.
"""

from __future__ import annotations

import subprocess

import pytest

from benchmarks.chat_screen import model_loaded, prompt_is_empty, prompt_shows, prompt_text, usage_line
from benchmarks.tmux import TmuxSession, TmuxTimeout, tmux_available

needs_tmux = pytest.mark.skipif(not tmux_available(), reason="tmux is not installed")


@needs_tmux
def test_text_that_starts_with_a_dash_is_typed():
    with TmuxSession(["cat"], width=40, height=6) as term:
        term.type("-n --help")
        term.wait_for("-n --help", timeout=5)


@needs_tmux
def test_type_read_and_exit():
    with TmuxSession(["cat"], width=40, height=6) as term:
        term.type("hello")
        assert term.wait_for("hello", timeout=5) >= 0
        assert term.is_running() and term.exit_status() is None
        term.send_keys("Enter")
        term.wait_for(lambda screen: screen.splitlines()[:2] == ["hello", "hello"], timeout=5)  # echo, then cat
        assert "hello" in term.capture(ansi=True)
        term.send_keys("C-d")
        term.wait_for(lambda screen: not term.is_running(), timeout=5)
        assert term.exit_status() == 0
        assert term.capture(history=6).startswith("hello\nhello")  # the last screen stays readable


@needs_tmux
def test_a_command_line_gets_its_environment_and_reports_its_status(monkeypatch):
    monkeypatch.setenv("DROPPED", "still here")
    with TmuxSession('echo "$GREETING ${DROPPED:-dropped}"; exit 3', width=40, height=6,
                     env={"GREETING": "broken,", "DROPPED": None}) as term:
        term.wait_for(lambda screen: not term.is_running(), timeout=5)
        assert term.exit_status() == 3 and "broken, dropped" in term.capture(history=6)


@needs_tmux
def test_wait_for_times_out_with_the_screen_and_kill_ends_the_server():
    term = TmuxSession(["cat"], width=40, height=6).start()
    try:
        term.type("abc")
        with pytest.raises(TmuxTimeout) as caught:
            term.wait_for("never shown", timeout=0.2)
        assert "abc" in caught.value.screen and "'never shown'" in str(caught.value)
    finally:
        socket_path = term._socket_path
        term.kill()
    assert subprocess.run(["tmux", "-L", term.socket, "list-sessions"], capture_output=True).returncode != 0
    assert socket_path is not None and not socket_path.exists()


CHAT = """\
 ▊▔▔▔▔▔▔▔▔▔▎ │ New chat
 ▊  search ▎ │ default on auto (loads with the first message) · thinking auto
             │  you
             │╭──────────────────────────────────────────────╮
             ││ {prompt:<44} │
             │╰──────────────────────────────────────────────╯
             │ {usage}
 esc Cancel reply  ^n New chat"""


def test_the_chat_screen_is_read_from_text():
    empty = CHAT.format(prompt="Message (Enter sends, Shift+Enter or Ctrl+J ", usage="loading default…")
    assert prompt_text(empty) == "Message (Enter sends, Shift+Enter or Ctrl+J"
    assert usage_line(empty) == "loading default…" and not model_loaded(empty)
    typed = CHAT.format(prompt="abc", usage="context 12 / 8,192 tokens").replace("(loads with the first message)", "")
    assert prompt_shows(typed, "abc") and not prompt_shows(typed, "ab") and not prompt_is_empty(typed)
    assert model_loaded(typed)
    assert prompt_text("no message box here") is None
    first_frame = CHAT.format(prompt="", usage="").replace("(loads with the first message)", "")
    assert not model_loaded(first_frame)  # nothing drawn yet is not a loaded model
    toasted = CHAT.format(prompt="", usage="context ? / 8,192 tok▌").replace("(loads with the first message)", "")
    assert model_loaded(toasted)  # a notice's toast over the end of the usage line
    narrow = CHAT.format(prompt="Message (Enter sends, Shift+", usage="")  # a narrow box cuts the hint
    assert prompt_is_empty(narrow) and not prompt_is_empty(CHAT.format(prompt="Message", usage=""))


def test_a_toast_over_the_message_box_hides_only_its_right_part():
    screen = """\
  │╭─────────────▌                     ─╮
  ││ abc         ▌ --backend auto chose │
  │╰─────────────▌ gguf                 ▐
  │ context ? / 8▌"""
    assert prompt_shows(screen, "abc") and not prompt_shows(screen, "abcd")


def test_a_missing_tmux_is_named(monkeypatch):
    import benchmarks.tmux as tmux

    monkeypatch.setattr(tmux.shutil, "which", lambda name: None)
    with pytest.raises(tmux.TmuxError, match="tmux is not installed"):
        tmux.TmuxSession(["cat"])
