"""A small, tolerant BibTeX reader: entries as field dicts, with the line each starts on.

Written here rather than taken from PyPI: the corpus needs only a handful of fields (title, author,
abstract, year, month, eprint, doi, url, journal) and must report a malformed entry by line number and
go on with the next one. bibtexparser 2 can do the parsing but reports failed blocks without a
reason a user can act on, and pulls pylatexenc for the accent decoding that _latex_to_text does in a
few lines. What this reader handles:

- entries `@type{key, name = value, ...}` and `@type(key, ...)`, any case;
- values in braces (nested), in double quotes, bare numbers, @string macros and month names,
  joined with `#`;
- @string definitions, @comment and @preamble (skipped), and text between entries (ignored, as
  BibTeX does);
- common LaTeX in values: accents (\\"o, {\\'e}, \\c{c}), \\ss and friends, escaped specials,
  ~ and the braces that protect capitals.

A malformed entry (no closing brace, a field without `=`, a missing key) is reported and skipped:
reading resumes at the next line that starts with `@`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MONTHS = {m: f"{i:02d}" for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}


@dataclass
class BibEntry:
    line: int
    type: str  # lower case: article, inproceedings, misc, ...
    key: str
    fields: dict[str, str]  # lower-case names; values as written (macros expanded, LaTeX kept)

    def text(self, name: str) -> str:
        """A field as plain text ("" when absent)."""
        return latex_to_text(self.fields.get(name, ""))


@dataclass
class BibError:
    line: int
    reason: str


class _Bad(Exception):
    pass


_ENTRY_START = re.compile(r"@\s*([A-Za-z]+)\s*([{(])")
_NAME = re.compile(r"[A-Za-z0-9_:.+/'-]+")


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.macros = {m: m.capitalize() for m in MONTHS}  # `month = jan` reads as "Jan"

    def line_at(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def skip_ws(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos].isspace():
            self.pos += 1

    def expect(self, chars: str) -> str:
        self.skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] not in chars:
            got = self.text[self.pos:self.pos + 10] or "end of file"
            raise _Bad(f"expected {' or '.join(repr(c) for c in chars)} but found {got!r}")
        self.pos += 1
        return self.text[self.pos - 1]

    def name(self) -> str:
        self.skip_ws()
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise _Bad(f"expected a name but found {self.text[self.pos:self.pos + 10] or 'end of file'!r}")
        self.pos = m.end()
        return m.group(0)

    def braced(self) -> str:
        """The text inside {...} starting at self.pos (on the '{'), nested braces kept."""
        depth, start = 0, self.pos
        text = self.text
        for i in range(self.pos, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    self.pos = i + 1
                    return text[start + 1:i]
            elif c == "@" and text[i - 1] == "\n" and depth > 0:
                break  # an entry starting on its own line: this value was never closed
        raise _Bad("a '{' is never closed")

    def quoted(self) -> str:
        depth, text = 0, self.text
        for i in range(self.pos + 1, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == '"' and depth == 0:
                value = text[self.pos + 1:i]
                self.pos = i + 1
                return value
            elif c == "@" and text[i - 1] == "\n":
                break
        raise _Bad('a \'"\' is never closed')

    def value(self) -> str:
        parts = []
        while True:
            self.skip_ws()
            c = self.text[self.pos:self.pos + 1]
            if c == "{":
                parts.append(self.braced())
            elif c == '"':
                parts.append(self.quoted())
            elif c.isdigit():
                m = re.compile(r"\d+").match(self.text, self.pos)
                parts.append(m.group(0))
                self.pos = m.end()
            elif c and (c.isalpha() or c == "_"):
                macro = self.name().lower()
                parts.append(self.macros.get(macro, macro))
            else:
                raise _Bad(f"expected a value but found {c or 'end of file'!r}")
            self.skip_ws()
            if self.text.startswith("#", self.pos):
                self.pos += 1
                continue
            return "".join(parts)


def _skip_to_next_entry(sc: _Scanner, start: int) -> None:
    """After a malformed entry: resume at the next '@' that begins a line (or the file's end)."""
    m = re.compile(r"^\s*@", re.MULTILINE).search(sc.text, start + 1)
    sc.pos = m.start() if m else len(sc.text)


def parse_bibtex(text: str):
    """Yield BibEntry or BibError, in file order."""
    sc = _Scanner(text)
    while True:
        m = _ENTRY_START.search(text, sc.pos)
        if not m:
            return
        start = m.start()
        line = sc.line_at(start)
        kind = m.group(1).lower()
        close = "}" if m.group(2) == "{" else ")"
        sc.pos = m.end()
        try:
            if kind == "comment":
                if m.group(2) == "{":
                    sc.pos -= 1
                    sc.braced()
                continue
            if kind == "preamble":
                sc.value()
                sc.expect(close)
                continue
            if kind == "string":
                name = sc.name().lower()
                sc.expect("=")
                sc.macros[name] = sc.value()
                sc.expect(close)
                continue
            sc.skip_ws()
            key_match = re.compile(r"[^,\s{}()=\"#%]+").match(text, sc.pos)
            if not key_match:
                raise _Bad("the entry has no citation key")
            key = key_match.group(0)
            sc.pos = key_match.end()
            fields: dict[str, str] = {}
            while True:
                sep = sc.expect("," + close)
                if sep == close:
                    break
                sc.skip_ws()
                if text.startswith(close, sc.pos):  # a trailing comma before the closing brace
                    sc.pos += 1
                    break
                name = sc.name().lower()
                sc.expect("=")
                fields[name] = sc.value()
            yield BibEntry(line=line, type=kind, key=key, fields=fields)
        except _Bad as exc:
            yield BibError(line=line, reason=f"@{kind}: {exc}")
            _skip_to_next_entry(sc, start)


# ---- LaTeX in values ----------------------------------------------------------------------------

_ACCENTS = {  # LaTeX accent command -> Unicode combining character
    '"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", "=": "\u0304",
    ".": "\u0307", "u": "\u0306", "v": "\u030c", "H": "\u030b", "c": "\u0327", "k": "\u0328",
    "r": "\u030a", "d": "\u0323", "b": "\u0331",
}
_LETTERS = {"ss": "ß", "o": "ø", "O": "Ø", "aa": "å", "AA": "Å", "ae": "æ", "AE": "Æ", "oe": "œ",
            "OE": "Œ", "l": "ł", "L": "Ł", "i": "ı", "j": "ȷ"}
_ACCENT_RE = re.compile(r"\\([\"'`^~=.]|[uvHckrdb](?![A-Za-z]))\s*(?:\{\s*(\\?[A-Za-z])\s*\}|(\\?[A-Za-z]))")
_LETTER_RE = re.compile(r"\\(ss|aa|AA|ae|AE|oe|OE|o|O|l|L|i|j)(?![A-Za-z])\s*(?:\{\})?")
_COMMAND_RE = re.compile(r"\\(?:emph|textit|textbf|textrm|texttt|textsc|mathrm|mbox|url|text)\s*(?=\{)")


def _accent(m: re.Match) -> str:
    base = m.group(2) or m.group(3)
    base = {"\\i": "i", "\\j": "j"}.get(base, base)
    return unicodedata.normalize("NFC", base + _ACCENTS[m.group(1)])


_MATH = re.compile(r"(?<!\\)\$[^$]*(?<!\\)\$")


def latex_to_text(value: str) -> str:
    """Plain text for a BibTeX value: accents composed, specials unescaped, braces and extra
    whitespace removed. Math ($...$) is kept as written."""
    parts, last = [], 0
    for m in _MATH.finditer(value):
        parts.append(_text_part(value[last:m.start()]))
        parts.append(m.group(0))
        last = m.end()
    parts.append(_text_part(value[last:]))
    return re.sub(r"\s+", " ", "".join(parts)).strip()


def _text_part(s: str) -> str:
    s = _ACCENT_RE.sub(_accent, s)
    s = _LETTER_RE.sub(lambda m: _LETTERS[m.group(1)], s)
    s = _COMMAND_RE.sub("", s)
    s = re.sub(r"\\(TeX|LaTeX|BibTeX)(?![A-Za-z])", r"\1", s)
    s = re.sub(r"\\([&%$#_])", r"\1", s)
    s = s.replace("\\{", "\ue000").replace("\\}", "\ue001")  # escaped braces survive the brace strip
    s = s.replace("~", " ").replace("{", "").replace("}", "")
    s = s.replace("\ue000", "{").replace("\ue001", "}")
    return s.replace("---", "\u2014").replace("--", "\u2013")


def _split_top_level(value: str) -> list[str]:
    """Split on ' and ' outside braces: '{Barnes and Noble} and A. Smith' is two names."""
    parts, depth, start = [], 0, 0
    for m in re.finditer(r"[{}]|\s+and\s+", value):
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth = max(0, depth - 1)
        elif depth == 0:
            parts.append(value[start:m.start()])
            start = m.end()
    parts.append(value[start:])
    return parts


def split_authors(value: str) -> list[str]:
    """'Last, First and First Last and others' (as written in the .bib) -> ['First Last', 'First Last']."""
    names = []
    for part in _split_top_level(value.strip()):
        part = latex_to_text(part)
        if not part or part.lower() in ("others", "et al.", "et al"):
            continue
        pieces = [p.strip() for p in part.split(",")]
        if len(pieces) == 2:  # Last, First
            part = f"{pieces[1]} {pieces[0]}"
        elif len(pieces) == 3:  # Last, Jr, First
            part = f"{pieces[2]} {pieces[0]} {pieces[1]}"
        names.append(" ".join(part.split()))
    return names
