"""The survey agent's search engine: the corpus, searched once per keyword, results fused.

MiniCPM4-Survey's search_engine tool takes a list of keywords; each is searched on its own and the
lists are merged by the sum of 1/(rank+1) over the lists a paper appears in (upstream's retriever,
upstream-apps.md section 1.2). Each keyword search is the corpus's hybrid search (bm25 + MiniLM,
reciprocal-rank fusion), so both exact terms and paraphrases find papers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from survey.citations import paper_key
from survey.corpus import Corpus, Paper

MAX_KEYWORDS = 8  # keywords per search call; more is a model run away
MAX_KEYWORD_CHARS = 300


@dataclass
class SearchRecord:
    """One retrieval call: the keywords searched, the paper ids returned (best first), its wall time."""

    queries: list[str]
    ids: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return {"queries": self.queries, "ids": self.ids, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, raw: dict) -> SearchRecord:
        return cls(queries=list(raw["queries"]), ids=list(raw["ids"]), seconds=float(raw["seconds"]))


@dataclass
class Retriever:
    corpus: Corpus
    mode: str = "hybrid"
    _cache: dict[str, Paper] = field(default_factory=dict)

    def search(self, queries: Sequence[str], k: int) -> SearchRecord:
        """Search each keyword, fuse by sum of 1/(rank+1), keep the best k."""
        keywords = clean_keywords(queries)
        started = time.perf_counter()
        scores: dict[str, float] = {}
        for keyword in keywords:
            for rank, paper in enumerate(self.corpus.search(keyword, k=k, mode=self.mode)):
                self._cache.setdefault(paper.id, paper)
                scores[paper.id] = scores.get(paper.id, 0.0) + 1.0 / (rank + 1)
        ids = sorted(scores, key=lambda pid: -scores[pid])[:k]
        return SearchRecord(keywords, ids, time.perf_counter() - started)

    def paper(self, paper_id: str) -> Paper:
        paper = self._cache.get(paper_id) or self.corpus.get(paper_id)
        if paper is None:  # the corpus changed under a resumed run
            raise KeyError(paper_id)
        self._cache[paper_id] = paper
        return paper

    def papers(self, ids: Sequence[str]) -> dict[str, Paper]:
        """id -> Paper for the ids still in the corpus, in the given order."""
        out = {}
        for paper_id in ids:
            try:
                out[paper_id] = self.paper(paper_id)
            except KeyError:
                continue
        return out


def clean_keywords(queries: Sequence[str] | str) -> list[str]:
    """Keywords as the model sent them, trimmed, de-duplicated, bounded; a single string is one keyword."""
    if isinstance(queries, str):
        queries = [queries]
    out: list[str] = []
    for query in queries:
        if not isinstance(query, str):
            continue
        text = " ".join(query.split())[:MAX_KEYWORD_CHARS]
        if text and text.lower() not in (q.lower() for q in out):
            out.append(text)
    return out[:MAX_KEYWORDS]


def format_result(paper: Paper, abstract_chars: int | None = None) -> str:
    """A paper as MiniCPM4-Survey is shown it: bibkey, title, abstract, authors."""
    abstract = paper.abstract if abstract_chars is None else _clip(paper.abstract, abstract_chars)
    return (f"bibkey: {paper_key(paper.id)}\nTitle: {paper.title}\nAbstract: {abstract}\n"
            f"Authors: {', '.join(paper.authors)}")


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    cut = text[:chars].rsplit(" ", 1)[0]
    return cut + " ..."
