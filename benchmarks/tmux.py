"""Drive a program in a real terminal: a detached tmux session, typed into with send-keys and read
with capture-pane, the way a person at a terminal would see it.

    with TmuxSession(["python", "-m", "minicpm_suite", "chat"], width=110, height=34) as term:
        term.wait_for("Message (Enter sends")
        term.send_keys("hello", literal=True)
        term.send_keys("Enter")
        seconds = term.wait_for(lambda screen: "last reply" in screen, timeout=60)

Each session runs on its own tmux server (`tmux -L <socket>`, a socket name of its own, and a
config file of its own instead of ~/.tmux.conf), so it never touches a tmux server someone else is
using, and kill() ends only that server. The pane stays open after the program exits (remain-on-exit), so a crash can still be read:
wait_for() stops early with the last screen when the program is gone.

Every capture is a `tmux capture-pane` subprocess (a few milliseconds): that, not the poll interval,
bounds how finely wait_for() can time a change on screen; capture_seconds() measures it.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_numbers = itertools.count()

# Read before the program starts: a POSIX shell runs the command line whatever the user's $SHELL, and
# a program that exits leaves its last screen behind instead of closing the session. The window keeps new-session's -x/-y because no client ever attaches
# ("window-size manual" would say so too, but makes tmux 3.3a's server exit at once).
CONFIG = """\
set -g default-shell /bin/sh
set -g remain-on-exit on
set -g history-limit 2000
set -g status off
"""


class TmuxError(RuntimeError):
    """tmux is missing, or a tmux command failed."""


class TmuxTimeout(TmuxError, TimeoutError):
    """wait_for() gave up: the screen never showed what was expected."""

    def __init__(self, message: str, screen: str):
        super().__init__(message)
        self.screen = screen


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


class TmuxSession:
    """A command running in a detached tmux session of a fixed size (the status line is off, so the
    program gets all `height` rows)."""

    def __init__(self, command: Sequence[str] | str, *, width: int = 110, height: int = 34,
                 env: dict[str, str | None] | None = None, cwd: str | Path | None = None, socket: str | None = None):
        """command: argv (quoted for the shell here) or one shell command line. env: variables set on
        top of this process's environment (None: unset it). socket: the tmux server's -L name (default:
        one of its own). The program's TERM is tmux's ("screen"); pass COLORTERM=truecolor in env for
        24-bit colour, as a modern terminal would."""
        self.tmux = shutil.which("tmux")
        if self.tmux is None:
            raise TmuxError("tmux is not installed (apt-get install tmux): it is needed to drive a real terminal")
        # a command line runs in a subshell, so that its own `exit` still lets the status be written
        self.command = f"( {command} )" if isinstance(command, str) else shlex.join(command)
        self.width, self.height = width, height
        self.env = dict(env or {})
        self.cwd = str(cwd) if cwd is not None else None
        self.socket = socket or f"minicpm-{os.getpid()}-{next(_numbers)}"
        self.target = "main"
        self.started_at: float | None = None  # perf_counter() just before the program was started
        self._dir: tempfile.TemporaryDirectory | None = None
        self._status: Path | None = None  # where the shell writes the program's exit status
        self._socket_path: Path | None = None

    # -- lifetime --------------------------------------------------------------------------------

    def start(self) -> TmuxSession:
        self._dir = tempfile.TemporaryDirectory(prefix="tmux-session-")
        config = Path(self._dir.name) / "tmux.conf"
        config.write_text(CONFIG)
        # The server is new (its own socket), so it starts with exactly this environment; TMUX is
        # dropped so a run from inside someone's tmux is not taken for a nested client.
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        env.update(self.env)
        env = {k: v for k, v in env.items() if v is not None}
        args = ["new-session", "-d", "-s", self.target, "-x", str(self.width), "-y", str(self.height)]
        if self.cwd:
            args += ["-c", self.cwd]
        # tmux 3.3a does not always learn a dead pane's exit status (#{pane_dead_status} can stay
        # empty when the terminal closes first), so the shell that runs the program writes it down.
        self._status = Path(self._dir.name) / "exit-status"
        script = f"{self.command}; echo $? > {shlex.quote(str(self._status))}"
        self.started_at = time.perf_counter()
        try:
            self._tmux(*args, script, env=env, config=config)
            self._socket_path = Path(self._tmux("display-message", "-p", "#{socket_path}").strip())
        except TmuxError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """End the program and this session's tmux server (only it: the socket is this session's own)."""
        if self.tmux is not None and self.started_at is not None:
            subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True)
            self.started_at = None
            self._status = None
        if self._socket_path is not None:  # tmux 3.3a leaves the socket file of a killed server behind
            self._socket_path.unlink(missing_ok=True)
            self._socket_path = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> TmuxSession:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.kill()

    # -- keys and screen -------------------------------------------------------------------------

    def send_keys(self, *keys: str, literal: bool = False) -> None:
        """Key names as tmux spells them ("Enter", "Escape", "C-o", "BSpace"), or with literal=True
        text typed character by character."""
        # "--": text that starts with "-" is typed, not read as an option of send-keys
        self._tmux("send-keys", "-t", self.target, *(["-l"] if literal else []), "--", *keys)

    def type(self, text: str) -> None:
        self.send_keys(text, literal=True)

    def capture(self, ansi: bool = False, history: int = 0) -> str:
        """The visible screen; ansi=True keeps colours and styles as escape sequences (capture-pane -e)
        and every line's trailing spaces (-N), whose background colour is part of the picture.
        history: that many lines of scrollback above it (tmux scrolls a dead pane's screen up one
        line to write "Pane is dead" under it)."""
        return self._tmux("capture-pane", "-p", "-t", self.target, *(["-e", "-N"] if ansi else []),
                          *(["-S", str(-history)] if history else []))

    def is_running(self) -> bool:
        """False once the program has exited (its last screen stays readable)."""
        return self._tmux("display-message", "-p", "-t", self.target, "#{pane_dead}").strip() != "1"

    def exit_status(self, timeout: float = 2.0) -> int | None:
        """The program's exit status as the shell reports it (128+N: killed by signal N); None while
        it runs, or if it was not written down within `timeout` seconds of the pane dying."""
        t0 = time.perf_counter()
        while self._status is not None:
            text = self._status.read_text().strip() if self._status.exists() else ""
            if text:
                return int(text)
            if self.is_running() or time.perf_counter() - t0 > timeout:
                return None
            time.sleep(0.01)
        return None

    def wait_for(self, condition: str | Callable[[str], bool], timeout: float = 10.0, interval: float = 0.01) -> float:
        """Poll the screen until it contains `condition` (a string) or `condition(screen)` is true;
        return the seconds waited. Raises TmuxTimeout with the last screen, sooner if the program exits."""
        check = (lambda screen: condition in screen) if isinstance(condition, str) else condition
        t0 = time.perf_counter()
        checks = 0
        while True:
            screen = self.capture()
            if check(screen):
                return time.perf_counter() - t0
            checks += 1
            if checks % 20 == 0 and not self.is_running():
                screen = self.capture(history=self.height)
                raise TmuxTimeout(f"the program exited (status {self.exit_status()}) before the screen showed "
                                  f"{describe(condition)}; its last screen:\n{screen}", screen)
            if time.perf_counter() - t0 > timeout:
                raise TmuxTimeout(f"after {timeout:g} s the screen still did not show {describe(condition)}; "
                                  f"the last screen:\n{screen}", screen)
            time.sleep(interval)

    def wait_until_still(self, quiet: float = 0.3, timeout: float = 5.0) -> float:
        """Wait until the screen's text has not changed for `quiet` seconds (a blinking cursor, which
        changes only styles, does not count); return the seconds waited. Gives up quietly at timeout."""
        t0 = time.perf_counter()
        last, since = self.capture(), time.perf_counter()
        while time.perf_counter() - since < quiet and time.perf_counter() - t0 < timeout:
            time.sleep(0.02)
            screen = self.capture()
            if screen != last:
                last, since = screen, time.perf_counter()
        return time.perf_counter() - t0

    def capture_seconds(self, samples: int = 50) -> list[float]:
        """How long one capture takes, `samples` times: the resolution of anything timed with wait_for()."""
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            self.capture()
            times.append(time.perf_counter() - t0)
        return times

    def _tmux(self, *args: str, env: dict[str, str] | None = None, config: Path | None = None) -> str:
        server = ["-L", self.socket] + (["-f", str(config)] if config else [])
        done = subprocess.run([self.tmux, *server, *args], capture_output=True, text=True, env=env, cwd=self.cwd)
        if done.returncode != 0:
            why = done.stderr.strip() or done.stdout.strip()
            raise TmuxError(f"tmux {args[0]} failed (exit {done.returncode}): {why}")
        return done.stdout


def describe(condition: str | Callable[[str], bool]) -> str:
    if isinstance(condition, str):
        return repr(condition)
    name = getattr(condition, "__doc__", None) or getattr(condition, "__name__", "")
    return name if name and name != "<lambda>" else "the expected content"
