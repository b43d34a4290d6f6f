"""Responsiveness of `minicpm chat` in a real terminal (tmux): start-up, and keystroke-to-echo latency.

Everything is measured from outside, as a person at the terminal sees it: the app runs in a detached
tmux session (benchmarks/tmux.py) at --width x --height, keys go in with send-keys and the screen is
read with capture-pane every ~10 ms (benchmarks/chat_screen.py finds the message box and the usage
line in the text).

- start-up, --repeats times each with --no-preload and with preload, every run in a fresh
  MINICPM_HOME: seconds from starting the command until the message box shows its placeholder,
  until a character typed then is echoed in the box (so the app really takes input), and with
  preload until the embedded model is loaded (the header names it, nothing says "loading");
- keystroke to echo: one character sent, the time until capture-pane shows it in the message box;
  --keystrokes of them, --gap apart like a typist. Measured idle (model loaded, nothing running;
  the very first keystroke into the box is reported on its own) and while
  the embedded model streams a long story (new_chat max_tokens from --max-tokens, in the settings
  file passed with --config); a keystroke counts as "during streaming" when it was sent after the
  reply's first text was on screen and echoed before the reply's usage ("last reply") appeared.
  If the reply ends too soon, the question is asked again (at most --rounds times);
- the same keystroke-to-echo latency for `cat` in tmux (the terminal's own echo): the floor set by
  tmux, send-keys and polling, which every other number includes.

What bounds the resolution: a latency is the time from just before send-keys until the end of the
capture that first showed the change, so it includes one send-keys call (a tmux client process),
up to one poll interval and one capture; the JSON records their measured costs. The `cat` peer shows
the sum. Writes benchmarks/results/tui_latency.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.chat_screen import PLACEHOLDER, model_loaded, prompt_is_empty, prompt_shows, prompt_text, usage_line
from benchmarks.common import RESULTS, machine, script_main, source_version, write_json
from benchmarks.serve_load import percentile
from benchmarks.tmux import TmuxSession, TmuxTimeout, tmux_available

POLL = 0.01  # seconds between captures
KEYS = "abcdefghijklmnopqrstuvwxyz"
STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle during a storm."
LAST_REPLY = re.compile(r"last reply ([\d,]+) tokens(?:, ([\d.]+) tok/s)?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="start-ups per setting (5)")
    parser.add_argument("--keystrokes", type=int, default=20, metavar="N",
                        help="keystrokes per typing measurement, at most 60 (20)")
    parser.add_argument("--gap", type=float, default=0.15, metavar="S",
                        help="seconds between an echo and the next keystroke (0.15)")
    parser.add_argument("--max-tokens", type=int, default=600, metavar="N",
                        help="new_chat max_tokens: the length of the streamed story (600)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="stories asked at most, until --keystrokes landed during streaming (3)")
    parser.add_argument("--width", type=int, default=110, help="terminal columns (110)")
    parser.add_argument("--height", type=int, default=34, help="terminal rows (34)")
    parser.add_argument("--timeout", type=float, default=300, metavar="S",
                        help="the longest wait for any one thing on screen, e.g. a whole story (300)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tui_latency.json", help="where to write the JSON")


# -- sessions --------------------------------------------------------------------------------------

def chat_session(args: argparse.Namespace, home: Path, *, preload: bool) -> TmuxSession:
    """`minicpm chat` in a fresh data folder, with a settings file that makes replies long."""
    config = home / "tui.json"
    config.write_text(json.dumps({"new_chat": {"max_tokens": args.max_tokens, "seed": 0}}))
    command = [sys.executable, "-m", "minicpm_suite", "chat", "--config", str(config)]
    if not preload:
        command.append("--no-preload")
    env = {"MINICPM_HOME": str(home), "MINICPM_TUI_CONFIG": None, "MINICPM_MCP_CONFIG": None,
           "COLORTERM": "truecolor"}
    return TmuxSession(command, width=args.width, height=args.height, env=env, cwd=home)


def quit_chat(term: TmuxSession) -> None:
    term.send_keys("C-q")
    try:
        term.wait_for(lambda screen: not term.is_running(), timeout=15)
    except TmuxTimeout:
        pass  # kill() ends it anyway


def since(t0: float) -> float:
    return time.perf_counter() - t0


# -- what is measured ------------------------------------------------------------------------------

def startup(args: argparse.Namespace, preload: bool) -> dict:
    """One start of the app: seconds to the placeholder, to an echoed keystroke, to the loaded model."""
    with tempfile.TemporaryDirectory(prefix="minicpm-tui-latency-") as tmp, \
            chat_session(args, Path(tmp), preload=preload) as term:
        t0 = term.started_at
        term.wait_for(PLACEHOLDER, timeout=args.timeout, interval=POLL)
        placeholder = since(t0)
        term.type("x")
        term.wait_for(lambda screen: prompt_shows(screen, "x"), timeout=args.timeout, interval=POLL)
        row = {"placeholder_seconds": placeholder, "interactive_seconds": since(t0)}
        if preload:
            term.wait_for(model_loaded, timeout=args.timeout, interval=POLL)
            row["model_loaded_seconds"] = since(t0)
        quit_chat(term)
    return row


def type_keys(term: TmuxSession, count: int, gap: float, shown, go_on=None) -> list[tuple[float, str]]:
    """Type up to `count` letters one by one: (seconds from send-keys until seen on screen, that
    screen) for each. shown(screen, typed): the screen shows `typed`; go_on(screen): type on?"""
    echoes = []
    typed = ""
    for i in range(count):
        typed += KEYS[i % len(KEYS)]
        seen = {}

        def echoed(screen: str, typed=typed) -> bool:
            seen["screen"] = screen
            return shown(screen, typed)

        t0 = time.perf_counter()
        term.type(typed[-1])
        term.wait_for(echoed, timeout=30, interval=POLL)
        echoes.append((since(t0), seen["screen"]))
        if go_on is not None and not go_on(seen["screen"]):
            break
        time.sleep(gap)
    return echoes


def clear_prompt(term: TmuxSession) -> None:
    term.send_keys("C-u")  # the TextArea's "delete to the start of the line"
    term.wait_for(prompt_is_empty, timeout=10, interval=POLL)


def reply_streaming(question: str):
    """The screen shows the reply's first text under the question (not only its "…" footer)."""

    def check(screen: str) -> bool:
        lines = [line.split("│", 1)[-1].strip() for line in screen.splitlines()]
        asked = [i for i, line in enumerate(lines) if line.startswith(question[:40])]
        if not asked:
            return False
        below = lines[asked[-1] + 1:]
        label = next((i for i, line in enumerate(below) if line.startswith("assistant")), None)
        if label is None:
            return False
        text = []
        for line in below[label + 1:]:
            if line.startswith("╭"):  # the message box: the end of the conversation on screen
                break
            text.append(line)
        return any(line and line != "…" and not line.startswith("loading") for line in text)

    return check


def typing_in_chat(args: argparse.Namespace, polling: dict) -> dict:
    """Keystroke to echo in the chat's message box: idle, then while the model streams a story."""
    with tempfile.TemporaryDirectory(prefix="minicpm-tui-latency-") as tmp, \
            chat_session(args, Path(tmp), preload=True) as term:
        term.wait_for(model_loaded, timeout=args.timeout, interval=POLL)
        # the model's load notice covers the message box for a few seconds: type once it is gone
        term.wait_for(lambda screen: prompt_text(screen) == PLACEHOLDER, timeout=30, interval=POLL)
        polling["chat_capture_seconds"] = term.capture_seconds(50)
        # The first keystroke into the box is reported apart (it pays for anything done lazily on
        # first input), so that "idle" is the steady state of typing.
        echoes = [seconds for seconds, _ in type_keys(term, args.keystrokes + 1, args.gap, prompt_shows)]
        first, idle = echoes[0], echoes[1:]
        clear_prompt(term)

        during, after, replies = [], [], []
        for _ in range(args.rounds):
            if len(during) >= args.keystrokes:
                break
            term.type(STORY)
            term.wait_for(lambda screen: " ".join((prompt_text(screen) or "").split()) == STORY, timeout=10,
                          interval=POLL)  # soft-wrapped at a space
            term.send_keys("Enter")
            term.wait_for(reply_streaming(STORY), timeout=args.timeout, interval=POLL)
            # Until the reply ends its usage line has no "last reply": an echo seen before that landed
            # while the model was streaming (it was sent after the reply's first text was on screen).
            for seconds, screen in type_keys(term, args.keystrokes - len(during), args.gap, prompt_shows,
                                             go_on=lambda screen: "last reply" not in usage_line(screen)):
                (during if "last reply" not in usage_line(screen) else after).append(seconds)
            term.wait_for(lambda screen: "last reply" in usage_line(screen), timeout=args.timeout, interval=POLL)
            replies.append(last_reply(usage_line(term.capture())))
            clear_prompt(term)
        quit_chat(term)
    return {"first": first, "idle": idle, "streaming": during, "after_streaming": after, "replies": replies}


def last_reply(usage: str) -> dict:
    match = LAST_REPLY.search(usage)
    if match is None:
        return {"usage_line": usage}
    return {"completion_tokens": int(match.group(1).replace(",", "")),
            "tokens_per_second": float(match.group(2)) if match.group(2) else None}


def typing_in_cat(args: argparse.Namespace, polling: dict) -> list[float]:
    """The floor: the same keystrokes echoed by the terminal itself (`cat` waiting for a line)."""
    with TmuxSession(["cat"], width=args.width, height=args.height) as term:
        term.wait_for(lambda screen: True, timeout=10)
        polling["cat_capture_seconds"] = term.capture_seconds(50)
        sends = []
        for _ in range(20):
            t0 = time.perf_counter()
            term.send_keys("")  # an empty send-keys: the cost of the tmux client call alone
            sends.append(since(t0))
        polling["send_keys_seconds"] = sends
        echoes = type_keys(term, args.keystrokes, args.gap, lambda screen, typed: screen.splitlines()[0] == typed)
        return [seconds for seconds, _ in echoes]


# -- the report ------------------------------------------------------------------------------------

def stats(values: list[float], scale: float = 1.0, digits: int = 3, samples: bool = False) -> dict:
    """n, p50, p95 (nearest rank) and max, in seconds (scale 1) or milliseconds (scale 1000);
    samples: also every value, in the order measured."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    scaled = [v * scale for v in values]
    result = {"n": len(values), "p50": round(percentile(scaled, 50), digits),
              "p95": round(percentile(scaled, 95), digits), "max": round(max(scaled), digits)}
    if samples:
        result["samples"] = [round(v, digits) for v in scaled]
    return result


def command_line(args: argparse.Namespace) -> str:
    return (f"minicpm bench tui_latency --repeats {args.repeats} --keystrokes {args.keystrokes} --gap {args.gap} "
            f"--max-tokens {args.max_tokens} --width {args.width} --height {args.height}")


def table(result: dict) -> str:
    rows = ["| measurement | n | p50 | p95 | max |", "|---|---:|---:|---:|---:|"]
    for setting in ("no_preload", "preload"):
        for key, what in (("placeholder", "start → message box shown"),
                          ("interactive", "start → typed character echoed"),
                          ("model_loaded", "start → model loaded")):
            s = result["startup"][setting].get(key)
            if s:
                rows.append(f"| {what} ({setting.replace('_', '-')}) | {s['n']} | {s['p50']:.2f} s | "
                            f"{s['p95']:.2f} s | {s['max']:.2f} s |")
    first = result["typing"]["chat_first_keystroke"]
    rows.append(f"| first keystroke → echo: chat, model loaded, idle | 1 | {first:.1f} ms | | |")
    for key, what in (("cat", "keystroke → echo: `cat` in tmux (floor)"), ("chat_idle", "keystroke → echo: chat, idle"),
                      ("chat_streaming", "keystroke → echo: chat, model streaming"),
                      ("chat_after_streaming", "keystroke → echo: chat, after the reply ended")):
        s = result["typing"][key]
        if s["n"]:
            rows.append(f"| {what} | {s['n']} | {s['p50']:.1f} ms | {s['p95']:.1f} ms | {s['max']:.1f} ms |")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if not tmux_available():
        raise SystemExit("tui_latency drives the app in a real terminal and needs tmux (apt-get install tmux)")
    if not 1 <= args.keystrokes <= 60:
        raise SystemExit("--keystrokes must be 1 to 60 (the typed letters stay on one line of the message box)")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    polling: dict = {"interval_seconds": POLL}
    floor = typing_in_cat(args, polling)
    starts = {}
    for preload in (False, True):
        runs = []
        for i in range(args.repeats):
            runs.append(startup(args, preload))
            print(f"start {'with' if preload else 'without'} preload {i + 1}/{args.repeats}: "
                  + ", ".join(f"{k.removesuffix('_seconds')} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
        starts["preload" if preload else "no_preload"] = runs
    typing = typing_in_chat(args, polling)
    print(f"typing: {len(typing['streaming'])} keystrokes during streaming, replies {typing['replies']}", flush=True)

    startup_stats = {}
    for setting, runs in starts.items():
        startup_stats[setting] = {key.removesuffix("_seconds"): stats([r[key] for r in runs]) for key in runs[0]}
        startup_stats[setting]["runs"] = [{k: round(v, 3) for k, v in r.items()} for r in runs]
    result = {
        "benchmark": "tui_latency",
        "source": source_version("tui", "benchmarks"),
        "command": command_line(args),
        "machine": machine() | {"load_average_before": round(load_before, 2),
                                "load_average_after": round(os.getloadavg()[0], 2)},
        "settings": {"terminal": f"{args.width}x{args.height} (tmux, COLORTERM=truecolor)", "repeats": args.repeats,
                     "keystrokes": args.keystrokes, "gap_seconds": args.gap, "max_tokens": args.max_tokens,
                     "story": STORY, "model": "default (embedded SmolLM2-135M, gguf)", "seed": 0},
        "polling": {
            "interval_seconds": POLL,
            "capture_ms": stats(polling["chat_capture_seconds"], 1000, 2),
            "capture_ms_cat": stats(polling["cat_capture_seconds"], 1000, 2),
            "send_keys_ms": stats(polling["send_keys_seconds"], 1000, 2),
            "note": "a latency runs from just before send-keys to the end of the first capture that shows the "
                    "change: it includes one send-keys, up to one interval and one capture; `cat` shows that floor",
        },
        "startup_seconds": startup_stats,
        "typing_ms": {
            "cat": stats(floor, 1000, 1, samples=True),
            "chat_first_keystroke": round(typing["first"] * 1000, 1),
            "chat_idle": stats(typing["idle"], 1000, 1, samples=True),
            "chat_streaming": stats(typing["streaming"], 1000, 1, samples=True),
            "chat_after_streaming": stats(typing["after_streaming"], 1000, 1, samples=True),
            "keystrokes_during_streaming": len(typing["streaming"]),
            "keystrokes_sent_while_asking": len(typing["streaming"]) + len(typing["after_streaming"]),
            "replies": typing["replies"],
        },
        "wall_seconds": round(since(t0), 1),
    }
    print(table({"startup": startup_stats, "typing": result["typing_ms"]}))
    print(f"capture-pane: p50 {result['polling']['capture_ms']['p50']} ms per capture, polled every "
          f"{POLL * 1000:.0f} ms; load average before {load_before:.2f}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
