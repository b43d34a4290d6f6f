"""Search a corpus: bm25 (SQLite FTS5), dense (exact cosine over MiniLM vectors) and hybrid (RRF).

Dense search is an exact scan in numpy: one [N, 384] @ [384] product and a partial sort. The
vectors are read from SQLite once per process and kept until an ingest changes them.
benchmarks/vector_search.py measured this against sqlite-vec and faiss; the README quotes the numbers
and the reasons for the choice.

Hybrid search runs its two halves at once: the bm25 query in a worker thread while this thread
embeds the query and scans the vectors. Both release the GIL (SQLite while it steps, torch and numpy
in their kernels), so on two cores a hybrid query costs about its slower half, not the sum
(benchmarks/corpus_scale.py times both on the 140K-paper corpus).
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
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


def fts_terms(text: str) -> list[str]:
    """The words of text as FTS5 terms, each quoted: FTS5 operators, column filters, parentheses and
    stray quotes in the input are read as plain words, never as syntax. Stopwords are left out
    unless nothing else is left."""
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
    return terms or fallback


def fts_query(text: str) -> str | None:
    """An FTS5 query that matches any of the words in text (fts_terms); None when it has no words."""
    terms = fts_terms(text)
    return " OR ".join(terms) if terms else None


def _ranked(corpus: Corpus, match: str, k: int) -> list[tuple[int, float]]:
    with corpus.lock:
        rows = corpus.db.execute(
            f"SELECT rowid, bm25(papers_fts, {TITLE_WEIGHT}, {ABSTRACT_WEIGHT}, {AUTHORS_WEIGHT}) AS s "
            "FROM papers_fts WHERE papers_fts MATCH ? ORDER BY s LIMIT ?", (match, k)).fetchall()
    return [(pk, -s) for pk, s in rows]


def bm25(corpus: Corpus, query: str, k: int) -> list[tuple[int, float]]:
    """(pk, score) best first; score is FTS5's bm25 negated, so higher is better.

    FTS5 ranks every paper that matches any term, and most of a query's time goes to terms that
    match most papers ("model" is in 80% of the 140K arXiv abstracts). Its bm25 gives a term that
    more than half of the papers match an idf of 1e-6 (log((N - n + 0.5) / (n + 0.5)) is negative
    there and FTS5 clamps it), so such a term moves a paper's score by at most about 2e-6 (idf
    times bm25's (k1 + 1)): it is left out of the ranking query while another term remains, which
    can only reorder papers whose scores tie to that precision. Only when fewer than k papers match
    the rest does the full query run, for the papers that match only those terms.
    """
    terms = fts_terms(query)
    if not terms:
        return []
    papers, counts = corpus.match_counts(terms)
    kept = [term for term, n in zip(terms, counts) if 2 * n <= papers]
    if kept and len(kept) < len(terms):
        hits = _ranked(corpus, " OR ".join(kept), k)
        if len(hits) >= k:
            return hits
    return _ranked(corpus, " OR ".join(terms), k)


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
    return nearest(corpus.embedder(), pks, matrix, query, k)


def nearest(embedder, pks: np.ndarray, matrix: np.ndarray, query: str, k: int) -> list[tuple[int, float]]:
    """The scan itself, on vectors already read: no database access, so it never waits on the corpus lock."""
    sims = matrix @ embedder.encode_one(query)  # [N, 384] @ [384]
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


_bm25_worker: ThreadPoolExecutor | None = None
_bm25_worker_lock = threading.Lock()


def bm25_in_background(corpus: Corpus, query: str, k: int):
    """A future of bm25(corpus, query, k), run on the one bm25 worker thread of this process."""
    global _bm25_worker
    with _bm25_worker_lock:
        if _bm25_worker is None:
            _bm25_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-bm25")
    return _bm25_worker.submit(bm25, corpus, query, k)


def hybrid(corpus: Corpus, query: str, k: int) -> list[tuple[int, float, dict[str, int]]]:
    """RRF of bm25 and dense, each FUSION_DEPTH (or 2k) deep; bm25 runs beside the dense half.

    Everything the dense half needs from the database (the vectors, the embedder's check) is read
    before the worker starts, so the two never wait on each other's use of the corpus lock. A caller
    that holds that lock itself gets both halves one after the other: the worker could not take it."""
    depth = max(FUSION_DEPTH, 2 * k)
    pks, matrix = corpus.vectors()
    embedder = corpus.embedder() if len(pks) and query.strip() else None
    if corpus.lock._is_owned():  # noqa: SLF001 (RLock's own "held by this thread?")
        return rrf({"bm25": bm25(corpus, query, depth), "dense": dense(corpus, query, depth)}, k)
    lexical = bm25_in_background(corpus, query, depth)
    try:
        semantic = nearest(embedder, pks, matrix, query, depth) if embedder is not None else []
    finally:
        lexical_hits = lexical.result()  # never leave the worker querying a corpus the caller may close
    return rrf({"bm25": lexical_hits, "dense": semantic}, k)


def search(corpus: Corpus, query: str, k: int = 10, mode: str = "hybrid") -> list:
    if mode not in MODES:
        raise MiniCPMError(f"unknown search mode '{mode}'; choose one of {', '.join(MODES)}")
    if k < 1:
        raise MiniCPMError(f"k must be at least 1 (got {k})")
    if mode != "bm25" and not corpus.has_vectors():
        if len(corpus) == 0:
            return []
        if mode == "dense":
            raise MiniCPMError(f"the corpus at {corpus.path} has no vectors (it was ingested with --no-vectors): "
                               "run `minicpm corpus ingest` on it again without that flag, or search with --mode bm25")
        notify_once(f"the corpus at {corpus.path} has no vectors yet; hybrid search ran as bm25 only")
        mode = "bm25"
    if mode == "hybrid":
        hits = hybrid(corpus, query, k)
        papers = corpus.papers_by_pk(pk for pk, _, _ in hits)
        return [replace(papers[pk], score=score, ranks=r) for pk, score, r in hits if pk in papers]
    hits = bm25(corpus, query, k) if mode == "bm25" else dense(corpus, query, k)
    papers = corpus.papers_by_pk(pk for pk, _ in hits)
    return [replace(papers[pk], score=score) for pk, score in hits if pk in papers]
