"""Search a corpus: bm25 (SQLite FTS5), dense (exact cosine over MiniLM vectors) and hybrid (RRF).

Dense search is an exact scan in numpy: one [N, 384] @ [384] product and a partial sort. The
vectors are read from SQLite once per process and kept until an ingest changes them.
benchmarks/vector_search.py measured this against sqlite-vec and faiss; the README quotes the numbers
and the reasons for the choice.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from runtime.errors import MiniCPMError
from runtime.notices import notify_once
from survey.corpus.store import ABSTRACT_WEIGHT, AUTHORS_WEIGHT, TITLE_WEIGHT, Corpus

MODES = ("bm25", "dense", "hybrid")
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
FUSION_DEPTH = 50  # each list contributes at least this many candidates to the fusion

# Words that match nearly every abstract: dropped from bm25 queries unless nothing else is left.
STOPWORDS = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "how", "in", "into", "is", "it", "its", "of", "on", "or", "that", "the", "their", "this", "to", "was", "were", "what", "when", "which", "with", "we", "our", "via", "using", "based", "about", "can", "do", "does", "between", "vs", "versus"])


def fts_query(text: str) -> str | None:
    """An FTS5 query that matches any of the words in text, each quoted: FTS5 operators, column
    filters, parentheses and stray quotes in the input are read as plain words, never as syntax.
    None when the text has no words."""
    terms: list[str] = []
    fallback: list[str] = []
    seen = set()
    for token in text.split():
        words = re.findall(r"\w+", token)
        if not words:
            continue
        quoted = '"' + token.replace('"', '""') + '"'
        key = " ".join(w.lower() for w in words)
        if key in seen:
            continue
        seen.add(key)
        (fallback if len(words) == 1 and key in STOPWORDS else terms).append(quoted)
    terms = terms or fallback
    return " OR ".join(terms) if terms else None


def bm25(corpus: Corpus, query: str, k: int) -> list[tuple[int, float]]:
    """(pk, score) best first; score is FTS5's bm25 negated, so higher is better."""
    match = fts_query(query)
    if match is None:
        return []
    with corpus.lock:
        rows = corpus.db.execute(
            f"SELECT rowid, bm25(papers_fts, {TITLE_WEIGHT}, {ABSTRACT_WEIGHT}, {AUTHORS_WEIGHT}) AS s "
            "FROM papers_fts WHERE papers_fts MATCH ? ORDER BY s LIMIT ?", (match, k)).fetchall()
    return [(pk, -s) for pk, s in rows]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return idx[np.argsort(-scores[idx], kind="stable")]


def dense(corpus: Corpus, query: str, k: int) -> list[tuple[int, float]]:
    """(pk, cosine similarity) best first, exact."""
    if not query.strip():
        return []
    pks, matrix = corpus.vectors()
    if len(pks) == 0:
        return []
    q = corpus.embedder().encode_one(query)
    sims = matrix @ q
    return [(int(pks[i]), float(sims[i])) for i in top_k(sims, k)]


def rrf(lists: dict[str, list[tuple[int, float]]], k: int) -> list[tuple[int, float, dict[str, int]]]:
    """Reciprocal-rank fusion: each list adds 1 / (RRF_K + rank) for the items it holds."""
    fused: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, items in lists.items():
        for rank, (pk, _) in enumerate(items, start=1):
            fused[pk] = fused.get(pk, 0.0) + 1.0 / (RRF_K + rank)
            ranks.setdefault(pk, {})[name] = rank
    order = sorted(fused, key=lambda pk: (-fused[pk], min(ranks[pk].values()), pk))[:k]
    return [(pk, fused[pk], ranks[pk]) for pk in order]


def search(corpus: Corpus, query: str, k: int = 10, mode: str = "hybrid") -> list:
    if mode not in MODES:
        raise MiniCPMError(f"unknown search mode '{mode}'; choose one of {', '.join(MODES)}")
    if k < 1:
        raise MiniCPMError(f"k must be at least 1 (got {k})")
    if mode != "bm25" and corpus.vector_count() == 0:
        if len(corpus) == 0:
            return []
        if mode == "dense":
            raise MiniCPMError(f"the corpus at {corpus.path} has no vectors (it was ingested with --no-vectors): "
                               "run `minicpm corpus ingest` on it again without that flag, or search with --mode bm25")
        notify_once(f"the corpus at {corpus.path} has no vectors yet; hybrid search ran as bm25 only")
        mode = "bm25"
    if mode == "hybrid":
        depth = max(FUSION_DEPTH, 2 * k)
        hits = rrf({"bm25": bm25(corpus, query, depth), "dense": dense(corpus, query, depth)}, k)
        papers = corpus.papers_by_pk(pk for pk, _, _ in hits)
        return [replace(papers[pk], score=score, ranks=r) for pk, score, r in hits if pk in papers]
    hits = bm25(corpus, query, k) if mode == "bm25" else dense(corpus, query, k)
    papers = corpus.papers_by_pk(pk for pk, _ in hits)
    return [replace(papers[pk], score=score) for pk, score in hits if pk in papers]
