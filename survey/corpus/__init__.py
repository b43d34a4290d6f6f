"""The local paper corpus: SQLite with an FTS5 (bm25) index and MiniLM vectors, searched by bm25,
dense or hybrid retrieval. The `papers` MCP server, the survey agent and `minicpm corpus` use it:

    from survey.corpus import Corpus
    with Corpus.open(path) as corpus:
        for paper in corpus.search("sparse attention for long context", k=10, mode="hybrid"):
            print(paper.score, paper.id, paper.title, paper.url)

Torch and the embedder load only when something needs vectors (ingest, dense or hybrid search).
"""

from survey.corpus.ingest import FileReport, IngestReport
from survey.corpus.paper import Paper
from survey.corpus.readers import FORMATS, Malformed
from survey.corpus.search import MODES
from survey.corpus.store import Corpus, CorpusError, CorpusStats, shipped_sample


def default_corpus_path():
    """The corpus used when none is named: <data dir>/corpora/default (runtime/settings.py)."""
    from runtime.settings import data_path

    return data_path("corpora", "default")


__all__ = [
    "FORMATS",
    "MODES",
    "Corpus",
    "CorpusError",
    "CorpusStats",
    "FileReport",
    "IngestReport",
    "Malformed",
    "Paper",
    "default_corpus_path",
    "shipped_sample",
]
