"""Helpers of the `generic` mode: reading small models' replies, checking them, and the fallbacks.

A 135M model cannot plan a survey or cite reliably in one free-form reply, so the generic mode asks
for one small thing at a time (an outline, a heading, two search queries, a paragraph citing
numbered papers, one sentence about one paper) and checks each reply. What fails its check is
asked again (bounded), then replaced by a fallback that keeps the run grounded:

- outline: the retrieved papers grouped by their MiniLM vectors (k-means), each group a section
  named by the model (or, failing that, by the words that set its titles apart);
- paragraph: one sentence per paper, each written by the model from that paper's abstract and cited
  to it (per-source drafting);
- search queries: the part's title with the survey's query.
Every fallback is logged, and the evaluation counts them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from survey.citations import paper_key

OUTLINE_SECTIONS = (3, 6)  # a usable outline has this many sections
MAX_TITLE_WORDS = 14
FIXED_TITLES = frozenset(["introduction", "conclusion", "conclusions", "abstract", "references", "summary",
                          "background", "related work", "future work", "discussion"])
NUMBERED = re.compile(r"^\s*(?:section\s*)?(\d+)[.)]\s*(\d+)?[.)]?\s*(.+?)\s*$", re.IGNORECASE)
BRACKETS = re.compile(r"\[(\d+(?:\s*(?:,|;|-|–)\s*\d+)*)\]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\[(\\])")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]+")
_STOP = frozenset("""a an the and or of for in on to with from by via using based towards toward into over under
their its our we is are be as at this that these those new study approach approaches method methods framework through
can how what when which while than more less between across analysis paper survey vs versus not without do does
your you it all any via leveraging improving enhancing exploring rethinking beyond toward efficient effective novel
system systems against within among wild""".split())


def clean_line(text: str) -> str:
    """A model's one-line reply without list markers, quotes, markdown emphasis or a trailing period."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"^(?:[-*•]\s+|\d+[.)]\s+|(?:heading|title|query|section)\s*:\s*)", "", line, flags=re.IGNORECASE)
    line = line.strip().strip("*#_`\"'“”").strip()
    return line.rstrip(".:;,").strip()


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def parse_outline(text: str) -> tuple[str, list[dict], str | None]:
    """(title, sections [{"title", "subsections": [{"title"}]}], problem) from the OUTLINE reply."""
    title = ""
    sections: list[dict] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.lower().startswith("title:"):
            title = clean_line(line[6:])
            continue
        match = NUMBERED.match(line)
        if not match:
            continue
        heading = clean_line(match.group(3))
        if not heading or heading.lower() in FIXED_TITLES:
            continue
        if match.group(2) and sections:
            sections[-1]["subsections"].append({"title": heading})
        elif not match.group(2):
            sections.append({"title": heading, "subsections": []})
    low, high = OUTLINE_SECTIONS
    if not low <= len(sections) <= high:
        return title, sections, f"{len(sections)} sections (wanted {low} to {high} numbered lines)"
    seen = set()
    for section in sections:
        n = len(words(section["title"]))
        if not 1 <= n <= MAX_TITLE_WORDS:
            return title, sections, f"section title {section['title']!r} has {n} words"
        key = section["title"].lower()
        if key in seen:
            return title, sections, f"section title {section['title']!r} repeats"
        seen.add(key)
    return title, sections, None


def usable_title(title: str) -> bool:
    return 2 <= len(words(title)) <= 20


def fallback_title(query: str) -> str:
    text = " ".join(query.split())
    return f"{text[:1].upper()}{text[1:]}: A Survey"


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """Cluster labels [N] for unit vectors [N, D] by spherical k-means (k-means++ start, fixed seed)."""
    n = len(vectors)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centers = [vectors[rng.integers(n)]]
    for _ in range(1, k):
        distance = 1 - np.max(vectors @ np.stack(centers).T, axis=1)  # cosine distance to the nearest center
        distance = np.clip(distance, 0, None) ** 2
        total = distance.sum()
        centers.append(vectors[rng.choice(n, p=distance / total)] if total > 0 else vectors[rng.integers(n)])
    centers = np.stack(centers)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        new = np.argmax(vectors @ centers.T, axis=1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = vectors[labels == c]
            if len(members):
                mean = members.mean(axis=0)
                centers[c] = mean / (np.linalg.norm(mean) or 1.0)
    return labels


def group_papers(ids: Sequence[str], vectors: np.ndarray, k: int, seed: int = 0) -> list[list[str]]:
    """ids grouped by k-means over their vectors; groups keep the ids' order (best first), largest first."""
    labels = kmeans(vectors, k, seed)
    groups: dict[int, list[str]] = {}
    for paper_id, label in zip(ids, labels):
        groups.setdefault(int(label), []).append(paper_id)
    return sorted(groups.values(), key=lambda group: (-len(group), ids.index(group[0])))


def distinctive_heading(titles: Sequence[str], other_titles: Sequence[str], n: int = 2) -> str:
    """A heading from the phrases (1 to 3 words) that set a group's titles apart from the other
    groups' titles: 'Multi-agent systems and reinforcement learning' (the fallback when the model
    cannot name a group)."""
    def phrases(text: str) -> set[str]:
        tokens = [w.lower() for w in _WORD.findall(text)]
        found = set()
        for size in (1, 2, 3):
            for i in range(len(tokens) - size + 1):
                gram = tokens[i:i + size]
                if gram[0] not in _STOP and gram[-1] not in _STOP and len(gram[-1]) > 2:
                    found.add(" ".join(gram))
        return found

    mine = Counter(p for text in titles for p in phrases(text))
    theirs = Counter(p for text in other_titles for p in phrases(text))
    # A phrase inside a longer one that occurs as often says less: keep the longer one only.
    for phrase in list(mine):
        if any(phrase != longer and f" {phrase} " in f" {longer} " and mine[longer] == mine[phrase] for longer in mine):
            del mine[phrase]
    # Frequent here, rare elsewhere; a longer phrase wins a tie (it says more).
    ranked = sorted((p for p in mine if mine[p] >= 2), key=lambda p: (-(mine[p] / (1 + theirs[p])), -len(p.split()), p))
    chosen: list[str] = []
    for phrase in ranked:
        if any(phrase[:5] == c[:5] for c in chosen if f" {c} " not in f" {phrase} "):
            continue  # 'agent' beside 'agentic': one is enough
        inside = [i for i, c in enumerate(chosen) if f" {c} " in f" {phrase} "]
        if inside:  # 'multi-agent' chosen, 'multi-agent reinforcement learning' says more
            chosen = [c for i, c in enumerate(chosen) if i not in inside[1:]]
            chosen[inside[0]] = phrase
        elif not any(f" {phrase} " in f" {c} " for c in chosen) and len(chosen) < n:
            chosen.append(phrase)
    if not chosen or (len(chosen) == 1 and len(chosen[0].split()) == 1):
        return short_title(titles[0])
    text = " and ".join(chosen)
    return text[:1].upper() + text[1:]


_ECHO = re.compile(r"\b(?:heading|section|short|papers?|this is|these|group|survey)\b", re.IGNORECASE)


def short_title(title: str) -> str:
    """A paper title cut to a heading: the part before a colon when it is a phrase of 2+ words."""
    head = title.split(":")[0].strip()
    if ":" in title and 2 <= len(words(head)) <= 8:
        return head
    cut = " ".join(title.split()[:8])
    return cut.rstrip(",;:-")


def usable_heading(text: str) -> bool:
    """A heading, not a sentence about the task: 2 to 8 words, no echo of the prompt's words."""
    n = len(words(text))
    return 2 <= n <= 8 and text.lower() not in FIXED_TITLES and not _ECHO.search(text) and not text.endswith("?")


_NOT_A_QUERY = re.compile(r"https?:|www\.|search quer|here (?:is|are)|we are writing|sure[,!]", re.IGNORECASE)


def parse_keywords(text: str, limit: int = 2) -> list[str]:
    """Search queries from a reply with one per line; preambles, echoes of the prompt and URLs dropped."""
    out: list[str] = []
    for raw in text.splitlines():
        line = clean_line(raw.replace('"', " ").replace("“", " ").replace("”", " "))
        line = " ".join(line.split())
        if _NOT_A_QUERY.search(line) or not re.search(r"[A-Za-z]{3}", line):
            continue
        if 1 <= len(words(line)) <= 10 and line.lower() not in (q.lower() for q in out):
            out.append(line)
    return out[:limit]


def numbers_to_citations(text: str, ids: Sequence[str]) -> tuple[str, list[str]]:
    """'... works [1, 3].' -> '... works \\cite{key1, key3}.' for papers numbered 1..len(ids);
    returns the text and the numbers that named no paper (dropped)."""
    dropped: list[str] = []

    def convert(match: re.Match) -> str:
        numbers: list[int] = []
        for part in re.split(r"\s*[,;]\s*", match.group(1)):
            bounds = re.split(r"\s*[-–]\s*", part)
            if len(bounds) == 2 and int(bounds[1]) - int(bounds[0]) < 10:
                numbers.extend(range(int(bounds[0]), int(bounds[1]) + 1))
            else:
                numbers.extend(int(b) for b in bounds)
        keys = []
        for number in numbers:
            if 1 <= number <= len(ids):
                key = paper_key(ids[number - 1])
                if key not in keys:
                    keys.append(key)
            else:
                dropped.append(str(number))
        return f"\\cite{{{', '.join(keys)}}}" if keys else ""

    converted = BRACKETS.sub(convert, text)
    converted = re.sub(r"(\\cite\{[^}]*\})\s*(?=\\cite)", r"\1 ", converted)
    return re.sub(r"[ \t]+([.,;])", r"\1", re.sub(r"[ \t]{2,}", " ", converted)).strip(), dropped


def paragraph_problem(text: str, cited: int, wanted_citations: int, min_words: int = 30) -> str | None:
    """Why a written paragraph is not good enough (None when it is)."""
    n = len(words(re.sub(r"\\cite\{[^}]*\}", "", text)))
    if n < min_words:
        return f"{n} words (wanted at least {min_words})"
    if re.search(r"(?:^|\s)\d+[.)]\s", text) or "Covers:" in text:
        return "it is a list, not a paragraph"
    if re.search(r"\[\d+\.\d+\]", text):
        return "it has stray section numbers in brackets"
    if cited < wanted_citations:
        return f"{cited} distinct papers cited (wanted at least {wanted_citations})"
    return repetition_problem(text)


def repetition_problem(text: str) -> str | None:
    sentences = [s.strip().lower() for s in SENTENCE_END.split(text) if s.strip()]
    if len(sentences) >= 3 and len(set(sentences)) / len(sentences) < 0.7:
        return "it repeats its sentences"
    tokens = [w.lower() for w in words(text)]
    grams = Counter(tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3))
    if grams and grams.most_common(1)[0][1] > 3:
        return "it repeats a phrase over and over"
    return None


def drop_repeats(text: str) -> str:
    """text without sentences it already said (small models loop: 'They are used. They are used.')."""
    seen: set[str] = set()
    kept = []
    for sentence in SENTENCE_END.split(" ".join(text.split())):
        key = re.sub(r"\W+", " ", re.sub(r"\\cite\{[^}]*\}|\[\d[^\]]*\]", "", sentence)).strip().lower()
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(sentence)
    return " ".join(kept).strip()


def first_sentence(text: str, min_words: int = 6) -> str | None:
    """The first sentence of a reply, ended with a period; None when there is no usable one."""
    flat = " ".join(text.split())
    flat = re.sub(r"^(?:answer|summary|sentence)\s*:\s*", "", flat, flags=re.IGNORECASE).strip().strip('"“”')
    sentence = SENTENCE_END.split(flat)[0].strip() if flat else ""
    sentence = re.sub(r"\[\d+\]", "", sentence).strip()
    if len(words(sentence)) < min_words:
        return None
    return sentence if sentence[-1] in ".!?" else sentence + "."


def cite_sentence(sentence: str, paper_id: str) -> str:
    """'It does X.' -> 'It does X \\cite{key}.'"""
    body = sentence.rstrip(".!? ")
    return f"{body} \\cite{{{paper_key(paper_id)}}}."


def plain(text: str) -> str:
    """Text without citations, for prompts that summarize written parts."""
    return " ".join(re.sub(r"\s*\\cite\{[^}]*\}", "", text).split())
