"""Automatic metrics for a generated survey (issue 7); benchmarks/survey_eval.py runs them per topic.

Pure functions over a SurveyDocument and the papers of its run; the only model they touch is the
sentence embedder passed in (all-MiniLM-L6-v2, the corpus's own), for citation support.

    structure(document)                          how much of the plan is written, and its shape
    citation_validity(document, retrieved_ids)   do the citations name papers retrieved in the run?
    citation_support(document, papers, embedder, threshold)
                                                 is each cited sentence close to what it cites?
    calibrate_support_threshold(corpus, embedder) the threshold, measured on the corpus itself
    relevant_papers(corpus, topic), coverage(ids, relevant)
                                                 recall of a topic's papers, by a title rule
    latency(seconds)                             p50/p95 of the retrieval calls

Citation support compares a sentence (citations removed) with each paper it cites, as the embedder
sees the paper in the corpus: embedding_text(title, abstract). A sentence counts as supported when
its best cited paper's cosine similarity reaches the threshold. This catches a citation attached to
a sentence about something else; it cannot tell a sentence that paraphrases a paper's abstract from
one that makes a claim the paper does not make, nor the right paper from a near neighbour on the
same subject (calibrate_support_threshold reports how close those neighbours come).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from survey.citations import CITE, key_to_id, split_keys
from survey.corpus.paper import Paper, normalize_id
from survey.corpus.store import PAPER_COLUMNS, embedding_text, paper_from_row
from survey.document import SurveyDocument

PERCENTILES = (5, 25, 50, 75, 95)


# ---- structure ----------------------------------------------------------------------------------

def words(text: str) -> int:
    """Words of prose: whitespace-separated tokens once citations are taken out."""
    return len(strip_citations(text).split())


def structure(document: SurveyDocument) -> dict[str, Any]:
    """How complete the survey is and what shape it has.

    written_share: parts with content / parts in the plan (document.positions(): abstract,
    introduction, every (sub)(sub)section, conclusion); 0 without a plan. max_depth: 1 for sections
    only, 2 with subsections, 3 with sub-subsections, 0 without a plan. Word counts leave citations
    out; the per-part minimum and median are over the written parts."""
    parts = list(document.walk()) if document.planned else []
    written = [(position, node) for position, _, node in parts if node.written]
    counts = [0, 0, 0]  # sections, subsections, sub-subsections
    for position, depth, _ in parts:
        if position.startswith("section"):
            counts[depth] += 1
    part_words = [words(node.content) for _, node in written]
    return {
        "parts": len(parts),
        "written": len(written),
        "written_share": round(len(written) / len(parts), 4) if parts else 0.0,
        "has_title": bool(document.title.strip()),
        "has_abstract": document.abstract.written,
        "has_introduction": document.introduction.written,
        "has_conclusion": document.conclusion.written,
        "sections": counts[0],
        "subsections": counts[1],
        "subsubsections": counts[2],
        "max_depth": max((i + 1 for i, n in enumerate(counts) if n), default=0),
        "words": sum(part_words),
        "words_per_part_min": min(part_words, default=0),
        "words_per_part_median": statistics.median(part_words) if part_words else 0,
        "unwritten": [position for position, _, node in parts if not node.written],
        "complete": document.complete,
    }


def written_texts(document: SurveyDocument) -> list[tuple[str, str]]:
    """(position, content) of every written part, in write order."""
    if not document.planned:
        return []
    return [(position, node.content) for position, _, node in document.walk() if node.written]


# ---- citation validity --------------------------------------------------------------------------

def citation_validity(document: SurveyDocument, retrieved_ids: Iterable[str]) -> dict[str, Any]:
    """Do the survey's citations name papers retrieved in this run?

    Each key of each \\cite{...} is one occurrence; it is valid when key_to_id(key) is among the
    retrieved ids. valid_share is over occurrences, valid_share_distinct over distinct papers;
    both are None when the survey cites nothing (there is nothing to be valid; `citations` says 0).
    parts_citing_share: the written parts that cite at least once."""
    retrieved = {normalize_id(pid) for pid in retrieved_ids}
    occurrences = valid = 0
    distinct: dict[str, bool] = {}
    unresolved: list[dict[str, str]] = []
    parts = written_texts(document)
    citing_parts = 0
    for position, text in parts:
        cites_here = False
        for match in CITE.finditer(text):
            for key in split_keys(match.group(1)):
                cites_here = True
                occurrences += 1
                paper_id = key_to_id(key)
                ok = bool(paper_id) and paper_id in retrieved
                valid += ok
                if paper_id not in distinct:
                    distinct[paper_id] = ok
                    if not ok:
                        unresolved.append({"key": key, "id": paper_id, "position": position})
        citing_parts += cites_here
    return {
        "citations": occurrences,
        "distinct": len(distinct),
        "valid": valid,
        "valid_share": round(valid / occurrences, 4) if occurrences else None,
        "valid_share_distinct": round(sum(distinct.values()) / len(distinct), 4) if distinct else None,
        "unresolved": unresolved,
        "cited_ids": list(distinct),
        "parts_citing_share": round(citing_parts / len(parts), 4) if parts else 0.0,
    }


# ---- sentences ----------------------------------------------------------------------------------

# Words that end with a period without ending a sentence (compared lowercased, without the period).
ABBREVIATIONS = frozenset(("e.g", "i.e", "al", "etc", "vs", "cf", "fig", "figs", "eq", "eqs", "sec", "secs", "tab",
                           "ref", "refs", "approx", "resp", "viz", "ca", "no", "nos", "vol", "pp", "ch", "dr", "mr",
                           "mrs", "ms", "prof", "st", "jr", "inc", "ltd", "co", "corp", "dept", "univ", "u.s", "u.k"))
_CITE_MARK = "\x00{}\x01"  # a citation, hidden while splitting: keys hold dots (arxivid2401.01234)
_MARK = re.compile(r"\x00(\d+)\x01")
_LEADING_MARKS = re.compile(r"^((?:\s*\x00\d+\x01)+)[\s.,;:!?]*")
# A candidate end: . ! ? (repeated), closing quotes or brackets, then space or a citation.
_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|\x00)")
_BLOCK = re.compile(r"\n\s*\n|\n(?=[ \t]*(?:[-*•+]|\d+[.)]|#+)\s)")  # paragraphs, list items, headings


def split_sentences(text: str) -> list[str]:
    """Sentences of survey prose, citations kept with the sentence they close.

    A period ends a sentence when space (or a citation) follows and the next word does not start in
    lower case, unless it closes an abbreviation (e.g., i.e., et al., Fig., ...) or an initial
    ('J. Smith'); a decimal point is never followed by space. 'etc.' ends one only before a capital.
    Citations written after the period ('... shown. \\cite{a} Next') move back to the sentence they
    close. Blank lines, list items and headings always separate."""
    cites: list[str] = []

    def hide(match: re.Match) -> str:
        cites.append(match.group(0))
        return _CITE_MARK.format(len(cites) - 1)

    hidden = CITE.sub(hide, text)
    pieces: list[str] = []
    for block in _BLOCK.split(hidden):
        start = 0
        for match in _END.finditer(block):
            if _ends_sentence(block, match):
                pieces.append(block[start:match.end()])
                start = match.end()
        pieces.append(block[start:])
        pieces.append("")  # a block boundary: nothing moves across it
    sentences: list[str] = []
    previous_open = False
    for piece in pieces:
        if not piece:
            previous_open = False
            continue
        lead = _LEADING_MARKS.match(piece)
        if lead and previous_open and sentences:
            sentences[-1] += " " + " ".join(m.group(0) for m in _MARK.finditer(lead.group(1)))
            piece = piece[lead.end():]
        piece = piece.strip()
        if piece:
            sentences.append(piece)
            previous_open = True
    return [_MARK.sub(lambda m: cites[int(m.group(1))], s).strip() for s in sentences if s.strip()]


def _ends_sentence(block: str, match: re.Match) -> bool:
    rest = block[match.end():].lstrip()
    if match.group(0).startswith(".") and len(match.group(0).rstrip("\"'”’)]")) == 1:
        word = re.search(r"(\S+)$", block[:match.start()])
        word = word.group(1).lstrip("(\"'[").lower() if word else ""
        if word == "etc":
            return not rest or rest[0].isupper() or rest[0] == "\x00"
        if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            return False
    if not rest:
        return True
    nxt = _MARK.sub("", rest).lstrip()[:1] if rest.startswith("\x00") else rest[0]
    return not nxt.islower()


def strip_citations(text: str) -> str:
    """Text without its \\cite{...}s, and without the space they leave before punctuation."""
    text = CITE.sub("", text)
    text = re.sub(r"[(\[]\s*[)\]]", "", text)  # brackets that held only citations
    text = re.sub(r"\s+([.,;:!?)\]])", r"\1", text)
    return " ".join(text.split())


# ---- citation support ---------------------------------------------------------------------------

def citation_support(document: SurveyDocument, papers: Mapping[str, Paper], embedder, threshold: float,
                     ) -> dict[str, Any]:
    """For every sentence carrying a \\cite: the cosine similarity between the sentence (citations
    stripped) and each cited paper's embedding_text(title, abstract), the text the corpus embeds.

    supported_share: sentences whose best cited paper reaches `threshold`; pair_supported_share:
    the same over (sentence, cited paper) pairs, stricter where one sentence cites several papers.
    A cited id missing from `papers` is left out of the comparison (citation_validity reports it);
    a sentence citing only such ids counts in `without_papers`, not in the shares. Shares and means
    are None when no sentence could be compared. Everything is embedded in one encode() call."""
    papers = {normalize_id(pid): paper for pid, paper in papers.items()}
    rows: list[dict[str, Any]] = []
    without = 0
    for position, text in written_texts(document):
        for sentence in split_sentences(text):
            ids = []
            for match in CITE.finditer(sentence):
                ids.extend(pid for pid in (key_to_id(k) for k in split_keys(match.group(1))) if pid not in ids)
            if not ids:
                continue
            known = [pid for pid in ids if pid in papers]
            if not known:
                without += 1
                continue
            rows.append({"position": position, "sentence": strip_citations(sentence), "ids": known})
    cited = list(dict.fromkeys(pid for row in rows for pid in row["ids"]))
    result: dict[str, Any] = {"threshold": threshold, "sentences": len(rows), "without_papers": without}
    if not rows:
        return {**result, "supported": 0, "supported_share": None, "pair_supported_share": None,
                "mean_similarity": None, "median_similarity": None, "per_sentence": []}
    vectors = embedder.encode([row["sentence"] for row in rows] +
                              [embedding_text(papers[pid].title, papers[pid].abstract) for pid in cited])
    sentence_vectors, paper_vectors = vectors[:len(rows)], vectors[len(rows):]
    column = {pid: i for i, pid in enumerate(cited)}
    pairs = pairs_ok = 0
    for row, vector in zip(rows, sentence_vectors, strict=True):
        sims = [float(paper_vectors[column[pid]] @ vector) for pid in row["ids"]]
        best = int(np.argmax(sims))
        row.update(similarity=round(sims[best], 4), best_id=row["ids"][best], supported=sims[best] >= threshold)
        pairs += len(sims)
        pairs_ok += sum(s >= threshold for s in sims)
    similarities = [row["similarity"] for row in rows]
    supported = sum(row["supported"] for row in rows)
    return {**result, "supported": supported, "supported_share": round(supported / len(rows), 4),
            "pair_supported_share": round(pairs_ok / pairs, 4),
            "mean_similarity": round(float(np.mean(similarities)), 4),
            "median_similarity": round(float(np.median(similarities)), 4), "per_sentence": rows}


# ---- threshold calibration ----------------------------------------------------------------------

def corpus_papers(corpus) -> list[tuple[int, Paper]]:
    """(row key, paper) for every paper of a corpus, in insertion order."""
    with corpus.lock:
        rows = corpus.db.execute(f"SELECT pk, {PAPER_COLUMNS} FROM papers ORDER BY pk").fetchall()
    return [(row[0], paper_from_row(row[1:])) for row in rows]


def paper_vectors(corpus, embedder, chosen: list[tuple[int, Paper]]) -> np.ndarray:
    """[n, 384] vectors of embedding_text(title, abstract): the corpus's stored ones where it has them
    (what its dense search compares against), the rest embedded now."""
    pks, matrix = corpus.vectors()
    row = {int(pk): i for i, pk in enumerate(pks)}
    out = np.zeros((len(chosen), embedder.dim), dtype=np.float32)
    missing = [i for i, (pk, _) in enumerate(chosen) if pk not in row]
    for i, (pk, _) in enumerate(chosen):
        if pk in row:
            out[i] = matrix[row[pk]]
    if missing:
        out[missing] = embedder.encode([embedding_text(chosen[i][1].title, chosen[i][1].abstract) for i in missing])
    return out


def percentiles(values: Iterable[float]) -> dict[str, float]:
    values = np.asarray(list(values), dtype=np.float64)
    if not len(values):
        return {}
    out = {f"p{p}": round(float(np.percentile(values, p)), 4) for p in PERCENTILES}
    return {**out, "mean": round(float(values.mean()), 4), "n": len(values)}


def best_balanced_threshold(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximising (TPR + TNR) / 2 for the rule `score >= threshold`.
    Candidates are midpoints between consecutive distinct scores; where several tie (separated
    distributions), the middle of the tied range is taken, so the rule does not hug either side."""
    scores = np.unique(np.concatenate([positives, negatives]))
    candidates = (scores[:-1] + scores[1:]) / 2 if len(scores) > 1 else scores
    pos, neg = np.sort(positives), np.sort(negatives)
    tpr = 1 - np.searchsorted(pos, candidates, side="left") / len(pos)  # share of positives >= t
    tnr = np.searchsorted(neg, candidates, side="left") / len(neg)  # share of negatives < t
    balanced = (tpr + tnr) / 2
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    return float(np.median(candidates[best])), float(balanced.max())


def calibrate_support_threshold(corpus, embedder, n: int = 500, seed: int = 0) -> dict[str, Any]:
    """The citation-support threshold, measured on the corpus the survey cites from.

    n papers with an abstract are drawn with the seed. For each, a stand-in for a survey sentence
    that cites it, and the text the metric compares it with (embedding_text of title and abstract):

    positives (the sentence is about the cited paper):
      - title: the paper's title against its abstract (the title left out of the paper's side, so
        the two share no text): a one-line human summary of the paper, as a survey sentence is;
      - sentence: one sentence of the abstract (drawn with the seed, 8 words or more) against the
        title and the rest of the abstract: a paper's own claim in its own words.
    negatives (the sentence cites the wrong paper), against other papers' embedding_text (their
    stored vectors, which the corpus's dense search uses too, embedded now where missing):
      - random: the same title or sentence against a randomly drawn other paper of the same corpus
        (same field, so harder than random text);
      - nearest: against the most similar other paper among the n drawn: a near neighbour on the
        same subject. Reported, not used: embedding similarity cannot tell such a paper from the
        right one, and a threshold set against it would reject most true citations.

    The threshold used is the one that maximises balanced accuracy between all positives (title and
    sentence pooled) and all random negatives: it weighs missing a true citation and accepting a
    wrong one equally, which is what a share of "supported" sentences should mean. The 95th
    percentile of the random negatives (a 5% false-acceptance rate) is reported too, with the share
    of positives it keeps; it is the stricter choice when wrong citations matter more than missed
    ones. Deterministic for a given corpus, seed and embedder precision."""
    rng = np.random.default_rng(seed)
    papers = [(pk, p) for pk, p in corpus_papers(corpus) if len(p.abstract.split()) >= 20 and p.title.strip()]
    if len(papers) < 3:
        raise ValueError(f"calibration needs at least 3 papers with abstracts; the corpus has {len(papers)}")
    n = min(n, len(papers))
    chosen = [papers[i] for i in sorted(rng.choice(len(papers), size=n, replace=False))]
    titles, abstracts, sentences, rests = [], [], [], []
    for _, paper in chosen:
        parts = split_sentences(paper.abstract)
        long = [i for i, s in enumerate(parts) if len(s.split()) >= 8] or list(range(len(parts)))
        pick = long[int(rng.integers(len(long)))]
        titles.append(paper.title)
        abstracts.append(embedding_text("", paper.abstract))
        sentences.append(parts[pick])
        rests.append(embedding_text(paper.title, " ".join(parts[:pick] + parts[pick + 1:])))
    vectors = embedder.encode(titles + abstracts + sentences + rests)
    t, a, s, r = (vectors[i * n:(i + 1) * n] for i in range(4))
    f = paper_vectors(corpus, embedder, chosen)
    other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # a random other paper, never itself
    full_sims = np.concatenate([t, s]) @ f.T  # [2n, n]: each stand-in against every paper
    own = np.concatenate([np.arange(n), np.arange(n)])
    full_sims[np.arange(2 * n), own] = -np.inf
    positives = {"title": np.sum(t * a, axis=1), "sentence": np.sum(s * r, axis=1)}
    negatives = {"random": np.concatenate([np.sum(t * f[other], axis=1), np.sum(s * f[other], axis=1)]),
                 "nearest": full_sims.max(axis=1)}
    pooled = np.concatenate(list(positives.values()))
    threshold, balanced = best_balanced_threshold(pooled, negatives["random"])
    p95 = float(np.percentile(negatives["random"], 95))

    def rates(t: float) -> dict[str, float]:
        return {"positives_kept": round(float(np.mean(pooled >= t)), 4),
                "random_accepted": round(float(np.mean(negatives["random"] >= t)), 4),
                "nearest_accepted": round(float(np.mean(negatives["nearest"] >= t)), 4)}

    return {
        "threshold": round(threshold, 3),
        "method": "max balanced accuracy, positives (title + sentence) vs random same-corpus negatives",
        "balanced_accuracy": round(balanced, 4),
        "at_threshold": rates(threshold),
        "negative_p95": round(p95, 3),
        "at_negative_p95": rates(p95),
        "positives": {name: percentiles(v) for name, v in positives.items()},
        "negatives": {name: percentiles(v) for name, v in negatives.items()},
        "papers": n, "seed": seed, "corpus_papers": len(papers),
        "embedder": getattr(embedder, "name", type(embedder).__name__),
        "precision": getattr(embedder, "precision", None),
    }


# ---- coverage -----------------------------------------------------------------------------------

def relevant_papers(corpus, topic: Mapping[str, Any]) -> set[str]:
    """A topic's relevant papers: those whose title matches any of topic["title_patterns"]
    (Python regexes, case-insensitive). A transparent rule, independent of the retriever under test;
    it misses relevant papers that do not name the topic in their title, so coverage is recall of
    the papers that clearly are on the topic."""
    patterns = topic.get("title_patterns") or []
    if not patterns:
        raise ValueError(f"topic {topic.get('query')!r} has no title_patterns")
    rule = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    with corpus.lock:
        rows = corpus.db.execute("SELECT id, title FROM papers").fetchall()
    return {pid for pid, title in rows if rule.search(title)}


def coverage(found_ids: Iterable[str], relevant_ids: Iterable[str]) -> dict[str, Any]:
    """Recall of the relevant papers among found ids (cited or retrieved), and on_topic_share: the
    found ids that are relevant (a lower bound on precision: the title rule misses some on-topic
    papers). recall is None when there is no relevant paper."""
    found = {normalize_id(pid) for pid in found_ids}
    relevant = {normalize_id(pid) for pid in relevant_ids}
    hit = found & relevant
    return {"relevant": len(relevant), "found": len(found), "hit": len(hit),
            "recall": round(len(hit) / len(relevant), 4) if relevant else None,
            "on_topic_share": round(len(hit) / len(found), 4) if found else None}


# ---- latency ------------------------------------------------------------------------------------

def latency(seconds: Iterable[float]) -> dict[str, Any]:
    """p50, p95, mean and max of durations in seconds (None when there are none)."""
    values = np.asarray(list(seconds), dtype=np.float64)
    if not len(values):
        return {"count": 0, "p50": None, "p95": None, "mean": None, "max": None}
    return {"count": len(values), "p50": round(float(np.percentile(values, 50)), 4),
            "p95": round(float(np.percentile(values, 95)), 4), "mean": round(float(values.mean()), 4),
            "max": round(float(values.max()), 4)}
