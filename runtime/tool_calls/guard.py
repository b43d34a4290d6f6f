"""Constrained decoding of tool calls: a guard that watches the tokens a backend generates.

While the model writes prose the guard only watches. Once the text contains the dialect's start
marker, every candidate token must keep the call block a valid beginning of a call under the
tools' schemas (grammar.py); the backend asks `allows(token)` for its sampled token and, on a no,
draws again without it (runtime/sampling.py: sample_allowed_token). When the block is complete,
end marker included, the reply may only open another block or end: a small model that goes on
to invent the tool's answer in prose is stopped there, as a turn with tool calls ends with them.

Asking about the sampled token, rather than masking the whole vocabulary, costs one parse per
step in the common case where the model already wanted a valid token, and keeps the distribution
the masked one: a rejected token's mass is spread over the rest by renormalising.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.tool_calls.grammar import MAX_WHITESPACE, PARTIAL, Parser, check

Decode = Callable[[list[int]], str]
# Stands in for a character whose UTF-8 bytes are not all generated yet (decoded as one U+FFFD at
# the end): any non-ASCII character is judged alike by the grammar inside a free string, and is
# refused where only ASCII may go (a tool name, a number, JSON punctuation).
UNFINISHED_CHARACTER = "\u00e9"


def judged(text: str) -> str:
    """Text as the grammar should judge it: an unfinished last character becomes a stand-in; U+FFFD
    anywhere else stays, as the invalid bytes it is."""
    return text[:-1] + UNFINISHED_CHARACTER if text.endswith("\ufffd") else text


class ToolCallGuard:
    def __init__(self, decode: Decode, start_marker: str, grammar: Parser, stop_ids: set[int],
                 forced: bool = False):
        """forced: the prompt already ends with start_marker (tool_choice required or named), so
        the first token is already inside a call block."""
        self.decode = decode
        self.start_marker = start_marker
        self.grammar = grammar
        self.stop_ids = stop_ids
        self.ids: list[int] = []
        self.text = ""  # all generated text so far
        self.body_start: int | None = 0 if forced else None  # where the open call block's text begins
        self.after_start: int | None = None  # where the text after the last finished block begins
        self.scan_from = 0  # where to look for the next start marker
        self.gave_up = False
        self._peeked: tuple[tuple[int, int], str] | None = None  # ((position, token), text) of the last look
        self.calls_completed = 0

    @property
    def constraining(self) -> bool:
        """Inside a call block, or after one (where only another block or the end may follow)."""
        return self.body_start is not None or self.after_start is not None

    def _text_with(self, token: int) -> str:
        # The generated text with one more token; decoding from a few tokens back keeps tokenizers
        # that render a piece by its neighbours (SentencePiece spaces) exact. The last answer is
        # kept: accept() asks again for the token allows() has just judged.
        if self._peeked is not None and self._peeked[0] == (len(self.ids), token):
            return self._peeked[1]
        window = self.ids[-4:]
        before = self.decode(window)
        after = self.decode(window + [token])
        text = self.text + after[len(before) :] if after.startswith(before) else self.decode(self.ids + [token])
        self._peeked = ((len(self.ids), token), text)
        return text

    def _next_block(self, text: str) -> tuple[bool, int | None]:
        """After a block: (still valid, where the next block's body starts if its marker is complete)."""
        tail = judged(text[self.after_start :])
        rest = tail.lstrip(" \t\r\n")
        if len(tail) - len(rest) > MAX_WHITESPACE:
            return False, None
        if len(rest) < len(self.start_marker):
            return self.start_marker.startswith(rest), None
        if not rest.startswith(self.start_marker):
            return False, None
        body_start = len(text) - len(rest) + len(self.start_marker)
        return check(self.grammar, judged(text[body_start:])) is not None, body_start

    def allows(self, token: int) -> bool:
        """Whether token keeps the reply valid: inside a block, under the grammar; after one, only
        another block or the end; in prose, anything that does not open a broken block."""
        if not self.constraining:
            # Prose: anything, unless the token completes a start marker and carries text after it
            # that no call can begin with.
            text = self._text_with(token)
            found = text.find(self.start_marker, self.scan_from)
            return found < 0 or check(self.grammar, judged(text[found + len(self.start_marker) :])) is not None
        if token in self.stop_ids:
            return self.body_start is None  # a block must be finished first
        text = self._text_with(token)
        if self.body_start is None:
            return self._next_block(text)[0]
        return check(self.grammar, judged(text[self.body_start :])) is not None

    def accept(self, token: int) -> None:
        """Record the token the backend chose."""
        self.text = self._text_with(token)
        self.ids.append(token)
        if self.after_start is not None:
            valid, body_start = self._next_block(self.text)
            if body_start is None:
                return
            self.after_start, self.body_start = None, body_start
        elif self.body_start is None:
            found = self.text.find(self.start_marker, self.scan_from)
            if found < 0:
                # keep scanning where a marker split across tokens may begin
                self.scan_from = max(self.scan_from, len(self.text) - len(self.start_marker) + 1)
                return
            self.body_start = found + len(self.start_marker)
        end = check(self.grammar, judged(self.text[self.body_start :]))
        if end is not None and end != PARTIAL:
            self.after_start = self.body_start + end
            self.body_start = None
            self.calls_completed += 1

    def give_up(self) -> None:
        """No allowed token could be found: let the model finish unconstrained (the parser reports it)."""
        self.scan_from = len(self.text)
        self.body_start = self.after_start = None
        self.gave_up = True
