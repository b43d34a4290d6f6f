"""Input formats for `minicpm corpus ingest`, detected per file, gzipped or not.

- kaggle: the Kaggle arXiv metadata snapshot (arxiv-metadata-oai-snapshot.json), JSON lines with
  `authors` as one string, `categories` space-separated, `authors_parsed`, `versions`, `update_date`;
- jsonl: one paper a line: `id`, `title`, `abstract`, `authors` (list), `categories` (list), `date`
  (or `published` / `update_date`, of which the first 10 characters are kept);
- bibtex: a .bib file (survey/corpus/bibtex.py).

A source yields (line number, Paper) or (line number, Malformed) in file order; one bad record never
stops the rest. Gzip is recognised by its magic bytes, so `papers.jsonl.gz` and a gzipped file
without the suffix both read.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from runtime.errors import MiniCPMError
from survey.corpus.bibtex import MONTHS, BibEntry, parse_bibtex, split_authors
from survey.corpus.paper import Paper, find_arxiv_id, is_arxiv_id, normalize_id

FORMATS = ("kaggle", "jsonl", "bibtex")
GZIP_MAGIC = b"\x1f\x8b"
SNIFF_LINES = 20  # JSON lines looked at to tell kaggle from jsonl
KAGGLE_KEYS = {"authors_parsed", "update_date", "submitter", "versions", "journal-ref"}


@dataclass
class Malformed:
    line: int
    reason: str


class _Bad(Exception):
    """A record that cannot become a Paper; the message says why."""


# ---- opening files ------------------------------------------------------------------------------

class _Input:
    """A file opened for reading, decompressed when gzipped; position() is in bytes of the file on disk."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.raw = open(path, "rb")
        except IsADirectoryError:
            raise MiniCPMError(f"{path} is a folder; name the files to ingest") from None
        except FileNotFoundError:
            raise MiniCPMError(f"{path}: no such file") from None
        except OSError as exc:
            raise MiniCPMError(f"cannot read {path}: {exc.strerror or exc}") from None
        self.gzipped = self.raw.read(2) == GZIP_MAGIC
        self.raw.seek(0)
        self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gzipped else self.raw

    def position(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        if self.stream is not self.raw:
            self.stream.close()
        self.raw.close()


def _read_error(path: Path, exc: Exception, line: int | None = None) -> MiniCPMError:
    where = f" after line {line}" if line else ""
    if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
        return MiniCPMError(f"{path}: the gzip data is corrupt or cut short{where} ({exc or type(exc).__name__})")
    return MiniCPMError(f"cannot read {path}{where}: {getattr(exc, 'strerror', None) or exc}")


def _peek(path: Path, limit: int = 1 << 16) -> bytes:
    src = _Input(path)
    try:
        return src.stream.read(limit)
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_error(path, exc) from None
    finally:
        src.close()


def detect_format(path: Path) -> str:
    """kaggle, jsonl or bibtex, from the name and the first lines; a MiniCPMError otherwise."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    head = _peek(path)
    if name.endswith((".bib", ".bibtex")):
        return "bibtex"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = text.lstrip()
    if not stripped:
        raise MiniCPMError(f"{path} is empty")
    if stripped.startswith("@"):
        return "bibtex"
    if not stripped.startswith(("{", "[")) and re.search(r"^\s*@\s*[A-Za-z]+\s*[{(]", text, re.MULTILINE):
        return "bibtex"  # a .bib under another name, with a comment or notes before its first entry
    if stripped.startswith("["):
        raise MiniCPMError(f"{path} holds one JSON array; ingest reads JSON lines (one paper object a line): "
                           "convert it, e.g. with `jq -c '.[]' FILE > papers.jsonl`")
    lines = text.splitlines()[:SNIFF_LINES]
    if len(head) == 1 << 16 and len(lines) > 1:
        lines = lines[:-1]  # the last line of the sample may be cut
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            if KAGGLE_KEYS & obj.keys() or isinstance(obj.get("authors"), str) and "abstract" in obj:
                return "kaggle"
            if "title" in obj or "id" in obj:
                return "jsonl"
    raise MiniCPMError(f"{path}: unknown format; ingest reads the Kaggle arXiv snapshot (JSON lines), "
                       "JSON lines of papers (id, title, abstract, authors, categories, date) and BibTeX (.bib)")


# ---- field helpers ------------------------------------------------------------------------------

def _text(value, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "id":
        return str(value)
    if not isinstance(value, str):
        raise _Bad(f"'{name}' is a {type(value).__name__}, not a string")
    return " ".join(value.split())


def _string_list(value, name: str, split: str = r"[\s,]+") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in re.split(split, value.strip()) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [" ".join(v.split()) for v in value if v.strip()]
    raise _Bad(f"'{name}' is neither a list of strings nor a string")


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def _date(value) -> str:
    """YYYY-MM-DD (or YYYY-MM, YYYY) from the start of a date or timestamp; "" when it is not one."""
    if isinstance(value, int) and 1000 <= value <= 9999:
        return str(value)
    if not isinstance(value, str):
        return ""
    m = _DATE.match(value.strip())
    return "-".join(g for g in m.groups() if g) if m else ""


def _require(paper_id: str, title: str) -> None:
    if not paper_id:
        raise _Bad("no 'id'")
    if not title:
        raise _Bad("no 'title'")


def _identity(obj: dict) -> str:
    raw = obj.get("id")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise _Bad("no 'id'" if raw is None else f"'id' is a {type(raw).__name__}, not a string")
    return normalize_id(str(raw))


# ---- records ------------------------------------------------------------------------------------

def paper_from_kaggle(obj: dict) -> Paper:
    paper_id = _identity(obj)
    title = _text(obj.get("title"), "title")
    _require(paper_id, title)
    authors = []
    parsed = obj.get("authors_parsed")
    if isinstance(parsed, list) and parsed and all(isinstance(a, list) for a in parsed):
        for parts in parsed:  # [last, first, suffix]
            parts = [str(p).strip() for p in parts]
            last, first, rest = (parts + ["", "", ""])[0], (parts + ["", ""])[1], parts[2:]
            name = " ".join(p for p in [first, last, *rest] if p)
            if name:
                authors.append(name)
    elif isinstance(obj.get("authors"), list):
        authors = _string_list(obj["authors"], "authors")
    else:
        authors = _string_list(_text(obj.get("authors"), "authors"), "authors", split=r",\s*|\s+and\s+")
    date = ""
    versions = obj.get("versions")
    if isinstance(versions, list) and versions and isinstance(versions[0], dict):
        try:
            date = parsedate_to_datetime(versions[0].get("created", "")).date().isoformat()
        except (TypeError, ValueError):
            date = ""
    date = date or _date(obj.get("update_date"))
    return Paper(
        id=paper_id, title=title, abstract=_text(obj.get("abstract"), "abstract"), authors=authors,
        categories=_string_list(obj.get("categories"), "categories"), date=date,
        doi=_text(obj.get("doi"), "doi"), journal=_text(obj.get("journal-ref"), "journal-ref"),
    )


def paper_from_json(obj: dict) -> Paper:
    paper_id = _identity(obj)
    title = _text(obj.get("title"), "title")
    _require(paper_id, title)
    authors = obj.get("authors")
    authors = (_string_list(authors, "authors", split=r",\s*|\s+and\s+") if isinstance(authors, str)
               else _string_list(authors, "authors"))
    categories = _string_list(obj.get("categories"), "categories")
    primary = obj.get("primary_category")
    if isinstance(primary, str) and primary and primary not in categories:
        categories.insert(0, primary)
    date = ""
    for key in ("date", "published", "update_date", "updated", "year"):
        date = _date(obj.get(key))
        if date:
            break
    journal = obj.get("journal-ref", obj.get("journal_ref", obj.get("journal")))
    return Paper(
        id=paper_id, title=title, abstract=_text(obj.get("abstract"), "abstract"), authors=authors,
        categories=categories, date=date, doi=_text(obj.get("doi"), "doi"), journal=_text(journal, "journal"),
        url=_text(obj.get("url"), "url") if isinstance(obj.get("url"), str) else "",
    )


def paper_from_bibtex(entry: BibEntry) -> Paper:
    f = entry.text
    title = f("title")
    if not title:
        raise _Bad(f"@{entry.type}{{{entry.key}}} has no title")
    doi = re.sub(r"^(?:https?://)?(?:dx\.)?doi\.org/", "", f("doi"), flags=re.IGNORECASE)
    eprint = f("eprint")
    prefix = f("archiveprefix") or f("eprinttype")
    arxiv = None
    if eprint and prefix.lower() in ("", "arxiv") and is_arxiv_id(normalize_id(eprint)):
        arxiv = normalize_id(eprint)
    arxiv = arxiv or find_arxiv_id(f("url")) or find_arxiv_id(f("journal")) or find_arxiv_id(f("note"))
    if not arxiv and doi.lower().startswith("10.48550/arxiv."):
        arxiv = normalize_id(doi[len("10.48550/arxiv."):])
    year = f("year")
    date = _date(year)
    month = f("month").lower()[:3]
    if len(date) == 4 and (month in MONTHS or month.isdigit() and 1 <= int(month) <= 12):
        date += "-" + (MONTHS[month] if month in MONTHS else f"{int(month):02d}")
    categories = [f("primaryclass")] if f("primaryclass") else []
    return Paper(
        id=arxiv or entry.key, title=title, abstract=f("abstract"), authors=split_authors(entry.fields.get("author", "")),
        categories=categories, date=date, doi=doi, journal=f("journal") or f("booktitle"),
        url="" if arxiv else f("url"),
    )


# ---- sources ------------------------------------------------------------------------------------

class Source:
    """One input file: its format, its size on disk, and its records in order."""

    def __init__(self, path: Path, fmt: str | None = None):
        self.path = Path(path)
        if fmt is not None and fmt not in FORMATS:
            raise MiniCPMError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
        if not self.path.is_file():
            raise MiniCPMError(f"{self.path} is a folder; name the files to ingest" if self.path.is_dir()
                               else f"{self.path}: no such file")
        self.format = fmt or detect_format(self.path)
        try:
            self.size = self.path.stat().st_size
        except OSError as exc:
            raise MiniCPMError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self._input: _Input | None = None

    def position(self) -> int:
        """Bytes of the file read so far (of the compressed file, when gzipped)."""
        if self._input is None:
            return 0
        return self.size if self._input.raw.closed else self._input.position()

    def records(self) -> Iterator[tuple[int, Paper | Malformed]]:
        self._input = _Input(self.path)
        try:
            if self.format == "bibtex":
                yield from self._bibtex()
            else:
                yield from self._json_lines(paper_from_kaggle if self.format == "kaggle" else paper_from_json)
        finally:
            self._input.close()

    def _json_lines(self, convert) -> Iterator[tuple[int, Paper | Malformed]]:
        line_no = 0
        stream = self._input.stream  # buffered: open(..., "rb") and GzipFile both read ahead
        while True:
            try:
                raw = stream.readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise _read_error(self.path, exc, line_no) from None
            if not raw:
                return
            line_no += 1
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                yield line_no, Malformed(line_no, "not UTF-8 text")
                continue
            except ValueError as exc:
                yield line_no, Malformed(line_no, f"not JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                yield line_no, Malformed(line_no, f"a JSON {type(obj).__name__}, not an object")
                continue
            try:
                yield line_no, convert(obj)
            except _Bad as exc:
                yield line_no, Malformed(line_no, str(exc))

    def _bibtex(self) -> Iterator[tuple[int, Paper | Malformed]]:
        try:
            data = self._input.stream.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise _read_error(self.path, exc) from None
        text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
        for item in parse_bibtex(text):
            if isinstance(item, BibEntry):
                try:
                    yield item.line, paper_from_bibtex(item)
                except _Bad as exc:
                    yield item.line, Malformed(item.line, str(exc))
            else:
                yield item.line, Malformed(item.line, item.reason)
