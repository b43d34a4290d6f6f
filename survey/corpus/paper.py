"""The paper record every part of the suite passes around, and arXiv identifier handling."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

# New-style ids (0704.0001, 2401.01234) and old-style ones (hep-th/9901001, math.GT/0309136),
# each with an optional version suffix.
_ARXIV_NEW = r"\d{4}\.\d{4,5}"
_ARXIV_OLD = r"[a-z][a-z.-]*(?:\.[A-Z]{2})?/\d{7}"
ARXIV_ID = re.compile(rf"^(?:{_ARXIV_NEW}|{_ARXIV_OLD})$")
_ARXIV_IN_TEXT = re.compile(rf"(?:arxiv\.org/(?:abs|pdf)/|arxiv:\s*)({_ARXIV_NEW}|{_ARXIV_OLD})(?:v\d+)?", re.IGNORECASE)


def normalize_id(raw: str) -> str:
    """One spelling per paper: 'arXiv:2401.01234v2' and 'https://arxiv.org/abs/2401.01234' both
    become '2401.01234'; an id that is not arXiv's is kept as written (trimmed)."""
    text = raw.strip()
    found = _ARXIV_IN_TEXT.search(text)
    if found:
        return found.group(1)
    bare = re.sub(r"v\d+$", "", text)
    return bare if ARXIV_ID.match(bare) else text


def find_arxiv_id(text: str) -> str | None:
    """An arXiv id named in free text (a URL, 'arXiv:2401.01234', a journal field), if any."""
    found = _ARXIV_IN_TEXT.search(text or "")
    return found.group(1) if found else None


def is_arxiv_id(paper_id: str) -> bool:
    return bool(ARXIV_ID.match(paper_id))


def default_url(paper_id: str, doi: str = "") -> str:
    if is_arxiv_id(paper_id):
        return f"https://arxiv.org/abs/{paper_id}"
    if doi:
        return f"https://doi.org/{doi}"
    return ""


@dataclass
class Paper:
    """One paper. `score` is set on search results (higher is better; its scale depends on the mode:
    bm25 relevance, cosine similarity, or the reciprocal-rank-fusion sum); `ranks` says, for a hybrid
    result, its 1-based rank in each list it came from."""

    id: str
    title: str
    abstract: str = ""
    authors: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    date: str = ""  # YYYY-MM-DD, or YYYY-MM / YYYY where the source says no more; "" when unknown
    doi: str = ""
    journal: str = ""  # journal reference or venue, as the source writes it
    url: str = ""  # https://arxiv.org/abs/ID for arXiv ids; else the source's URL or the DOI's
    score: float | None = None
    ranks: dict[str, int] | None = None

    def __post_init__(self):
        if not self.url:
            self.url = default_url(self.id, self.doi)

    @property
    def year(self) -> int | None:
        return int(self.date[:4]) if self.date[:4].isdigit() else None

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["score"] is None:
            del out["score"]
        if out["ranks"] is None:
            del out["ranks"]
        return out
