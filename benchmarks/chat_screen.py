"""Reading `minicpm chat`'s main screen from a plain capture-pane text, as a person reads it.

    ╭──────────────────────────╮   the message box: the bottom-most rounded box on the screen
    │ what is typed            │   (its placeholder while it is empty)
    ╰──────────────────────────╯
     context 120 / 8,192 tokens · last reply 42 tokens, 48.0 tok/s     <- the usage line
     esc Cancel reply  ^n New chat ...                                  <- Textual's footer

The header (chat title; model, backend, thinking, tools) is the first two lines, right of the history.
Column positions come from the box's own corners, so the history sidebar may be shown or hidden.
"""

from __future__ import annotations

import re

PLACEHOLDER = "Message (Enter sends, Shift+Enter or Ctrl+J new line)"
NOT_LOADED = "loads with the first message"  # in the header until the chat's model is loaded
CONTEXT_SHOWN = re.compile(r"context [\d?,]+ / \d")  # the usage line names the loaded model's window


def _box(lines: list[str]) -> tuple[int, int, int, int] | None:
    """(top row, bottom row, left column, right column) of the message box, or None if none is shown.
    A notification toast may cover the box's right part (its border included): then the box runs to
    the end of the line and its text ends with the toast's."""
    for bottom in range(len(lines) - 1, -1, -1):
        if "╰" in lines[bottom]:
            left = lines[bottom].rindex("╰")
            right = lines[bottom].rindex("╯") if "╯" in lines[bottom][left:] else len(lines[bottom])
            for top in range(bottom - 1, -1, -1):
                if lines[top][left:left + 1] == "╭":
                    return top, bottom, left, right
            return None
    return None


def prompt_text(screen: str) -> str | None:
    """What the message box shows (the placeholder when it is empty); None if there is no box."""
    lines = screen.splitlines()
    box = _box(lines)
    if box is None:
        return None
    top, bottom, left, right = box
    rows = [lines[row][left + 1:right].strip() for row in range(top + 1, bottom)]
    return "\n".join(rows).strip()


def prompt_is_empty(screen: str) -> bool:
    """The box shows its placeholder (in a narrow box, as much of it as fits)."""
    text = (prompt_text(screen) or "").replace("\n", " ")
    return len(text) >= len("Message (") and PLACEHOLDER.startswith(text)


def prompt_shows(screen: str, typed: str) -> bool:
    """The message box holds exactly `typed` (one line of text without spaces, soft-wrapped or not),
    also while a toast covers the box's right part ("▌" is a toast's left edge)."""
    text = (prompt_text(screen) or "").replace("\n", "")
    return text == typed or (text.startswith(typed) and text[len(typed)] in " ▌")


def usage_line(screen: str) -> str:
    """The line under the message box: context usage, the last reply's speed, or what is loading."""
    lines = screen.splitlines()
    box = _box(lines)
    if box is None or box[1] + 1 >= len(lines):
        return ""
    return lines[box[1] + 1][box[2]:].strip()


def header(screen: str) -> str:
    """The chat's title and model line (the first two lines; the history's search box shares them)."""
    return "\n".join(screen.splitlines()[:2])


def model_loaded(screen: str) -> bool:
    """The model is loaded: the usage line shows its context window ("... / 8,192 tokens", known only
    from a loaded backend), nothing is loading, and the header no longer says it loads later. (A
    first frame that has drawn neither line yet is not "loaded".)"""
    usage = usage_line(screen)  # a toast may cover its end: "context ? / 8,192 tok▌"
    return bool(CONTEXT_SHOWN.match(usage)) and "loading" not in usage and NOT_LOADED not in header(screen)
