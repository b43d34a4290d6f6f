"""Citations in survey text: \\cite{key} (several keys comma-separated), as MiniCPM4-Survey writes them.

A key names a corpus paper. The survey agent shows each retrieved paper with its key,
`arxivid<arXiv id>` for arXiv papers (upstream's spelling, which the fine-tune was trained on) and
the paper id itself otherwise; `key_to_id` also reads a bare arXiv id or 'arXiv:...'.

Grounding (`ground`): a key that does not resolve to a paper retrieved in this run is removed from
the text and reported, and a \\cite{} left with no key disappears with it. So every citation in a
saved survey resolves, by construction (upstream raised KeyError on such a key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from survey.corpus.paper import is_arxiv_id, normalize_id

ARXIV_KEY_PREFIX = "arxivid"
# \cite, \citep, \citet, \cite*, with up to two optional [notes] (natbib's \citep[see][p. 3]{key});
# the keys are between the braces.
CITE = re.compile(r"\\cite[tp]?\*?(?:\[[^\]]*\]){0,2}\{([^{}]*)\}")
# A citation with the space before it, so that removing one leaves no double space or " ." behind.
_CITE_WITH_SPACE = re.compile(r"[ \t]*" + CITE.pattern)


def paper_key(paper_id: str) -> str:
    """The citation key a paper is shown with: 'arxivid2401.01234', or the id for non-arXiv papers."""
    return f"{ARXIV_KEY_PREFIX}{paper_id}" if is_arxiv_id(paper_id) else paper_id


def key_to_id(key: str) -> str:
    """The corpus id a key names: 'arxivid2401.01234', 'arXiv:2401.01234v2' and '2401.01234' are one paper."""
    text = key.strip()
    if text.lower().startswith(ARXIV_KEY_PREFIX):
        text = text[len(ARXIV_KEY_PREFIX):].lstrip(":")
    return normalize_id(text)


def split_keys(group: str) -> list[str]:
    return [key.strip() for key in group.split(",") if key.strip()]


def cited_ids(text: str) -> list[str]:
    """Paper ids cited in text, in order of first appearance, each once."""
    seen: dict[str, None] = {}
    for match in CITE.finditer(text):
        for key in split_keys(match.group(1)):
            seen.setdefault(key_to_id(key), None)
    return list(seen)


@dataclass(frozen=True)
class Removed:
    """A citation key taken out of the text, and why."""

    key: str
    reason: str


def ground(text: str, allowed: Iterable[str] | Callable[[str], bool]) -> tuple[str, list[Removed]]:
    """text with every citation key that is not allowed removed (a set of paper ids, or a predicate
    on them). Keys are rewritten to the canonical ids' keys and de-duplicated within a \\cite."""
    is_allowed = allowed if callable(allowed) else set(allowed).__contains__
    removed: list[Removed] = []

    def rewrite(match: re.Match) -> str:
        kept: list[str] = []
        for key in split_keys(match.group(1)):
            paper_id = key_to_id(key)
            if not paper_id or not is_allowed(paper_id):
                removed.append(Removed(key, "not among the papers retrieved in this run"))
            elif paper_key(paper_id) not in kept:
                kept.append(paper_key(paper_id))
        if not kept:
            return ""
        space = match.group(0)[: len(match.group(0)) - len(match.group(0).lstrip(" \t"))]
        return f"{space}\\cite{{{', '.join(kept)}}}"

    return _CITE_WITH_SPACE.sub(rewrite, text), removed


def number_citations(texts: Iterable[str]) -> dict[str, int]:
    """paper id -> reference number, 1-based, in order of first citation across texts (write order)."""
    numbers: dict[str, int] = {}
    for text in texts:
        for paper_id in cited_ids(text):
            numbers.setdefault(paper_id, len(numbers) + 1)
    return numbers


def replace_citations(text: str, render: Callable[[list[str]], str]) -> str:
    """text with each \\cite{...} replaced by render(paper ids): how an exporter shows a citation."""
    return CITE.sub(lambda match: render([key_to_id(key) for key in split_keys(match.group(1))]), text)
