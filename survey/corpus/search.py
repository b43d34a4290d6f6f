"""Search a corpus: bm25 (SQLite FTS5), dense (exact cosine over MiniLM vectors) and hybrid (RRF).

Dense search is an exact scan in numpy: one [N, 384] @ [384] product and a partial sort. The
vectors are read from SQLite once per process and kept until an ingest changes them.
benchmarks/vector_search.py measured this against sqlite-vec and faiss; the README quotes the numbers
and the reasons for the choice.

Hybrid search runs its two halves at once: the dense half (embedding the query, the scan) on a
worker thread, which never touches the database, while the calling thread runs the bm25 query.
Both release the GIL (SQLite while it steps, torch and numpy in their kernels). The scan then runs
on one BLAS thread: OpenBLAS's own threads spin between calls and, beside bm25 on a 2-core machine,
made a hybrid query slower than the two halves one after the other. Measured on the 140K-paper
corpus, p50 over the benchmark's 100 queries: bm25 alone 29 ms, the halves in turn 48 ms, bm25 in
a worker beside a 2-thread scan 56 ms, this arrangement 29 ms (benchmarks/corpus_scale.py).
"""

from __future__ import annotations

import contextlib
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


_blas = None  # threadpoolctl's controllers of the BLAS libraries numpy loaded, found once


@contextlib.contextmanager
def one_blas_thread():
    """BLAS on one thread inside the block (every BLAS library this process loaded), as before after it.
    Process-wide while it lasts: another thread's BLAS call in that window also runs on one thread."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.num_threads for lib in _blas]
    for lib in _blas:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_blas, before):
            lib.set_num_threads(n)


def nearest_beside_bm25(embedder, pks, matrix, query: str, k: int) -> list[tuple[int, float]]:
    with one_blas_thread():
        return nearest(embedder, pks, matrix, query, k)


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


_dense_worker: ThreadPoolExecutor | None = None
_dense_worker_lock = threading.Lock()


def dense_in_background(embedder, pks: np.ndarray, matrix: np.ndarray, query: str, k: int):
    """A future of the dense half's hits, computed on the one dense worker thread of this process."""
    global _dense_worker
    with _dense_worker_lock:
        if _dense_worker is None:
            _dense_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-dense")
    return _dense_worker.submit(nearest_beside_bm25, embedder, pks, matrix, query, k)


def hybrid(corpus: Corpus, query: str, k: int) -> list[tuple[int, float, dict[str, int]]]:
    """RRF of bm25 and dense, each FUSION_DEPTH (or 2k) deep, the dense half on the worker thread.

    What the dense half needs from the database (the vectors, the embedder's check) is read here
    first; the worker only computes, so bm25 in this thread has the corpus to itself (and a caller
    that holds the corpus lock can search: the worker never waits for it)."""
    depth = max(FUSION_DEPTH, 2 * k)
    pks, matrix = corpus.vectors()
    semantic = None
    if len(pks) and query.strip():
        semantic = dense_in_background(corpus.embedder(), pks, matrix, query, depth)
    try:
        lexical = bm25(corpus, query, depth)
    finally:
        semantic_hits = semantic.result() if semantic is not None else []  # never leave the worker running
    return rrf({"bm25": lexical, "dense": semantic_hits}, k)


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
