"""The `papers` MCP server: search the local paper corpus (survey/corpus/) and read a paper's record.

    minicpm mcp serve papers [--corpus DIR]

The corpus is built by `minicpm corpus ingest` (the survey issue's work); this server only reads it.
Search is bm25 (SQLite FTS5), dense (MiniLM vectors) or hybrid (reciprocal-rank fusion of both);
the default is hybrid when the corpus has vectors and bm25 when it has none. The embedder loads on
the first dense query, so the server starts fast.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from runtime.errors import MiniCPMError

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
ABSTRACT_CHARS = 600  # per search hit: enough to judge relevance without flooding a small model's context


class PaperHit(BaseModel):
    id: str
    title: str
    authors: list[str]
    date: str
    url: str
    score: float
    abstract: str = Field(description=f"the abstract, cut at {ABSTRACT_CHARS} characters")


class SearchResult(BaseModel):
    query: str
    mode: str
    papers: list[PaperHit]


class PaperRecord(BaseModel):
    id: str
    title: str
    authors: list[str]
    categories: list[str]
    date: str
    url: str
    abstract: str


def build_server(corpus_path) -> FastMCP:
    from survey.corpus import Corpus, CorpusError

    try:
        corpus = Corpus.open(corpus_path)
    except CorpusError as exc:
        raise MiniCPMError(str(exc)) from None
    has_vectors = corpus.has_vectors()
    server = FastMCP("papers", log_level="WARNING",
                     instructions="Search the local corpus of paper abstracts (arXiv metadata) and read records.")

    @server.tool(annotations=READ_ONLY)
    def search_papers(
        query: Annotated[str, Field(min_length=1, max_length=500,
                                    description="what to look for, in words, e.g. 'sparse attention for long context'")],
        k: Annotated[int, Field(ge=1, le=50, description="how many papers to return, best first (default 5)")] = 5,
        mode: Annotated[Literal["hybrid", "bm25", "dense"] | None, Field(
            description="bm25: exact words; dense: meaning; hybrid: both (default: hybrid when the corpus has "
                        "vectors, else bm25)")] = None,
    ) -> SearchResult:
        """Search the paper corpus; each hit has its id, title, authors, date, arXiv link and abstract."""
        chosen = mode or ("hybrid" if has_vectors else "bm25")
        if chosen != "bm25" and not has_vectors:
            raise ValueError(f"this corpus has no vectors, so {chosen} search cannot run; use mode 'bm25' "
                             "(or ingest again without --no-vectors)")
        papers = corpus.search(query, k=k, mode=chosen)
        return SearchResult(query=query, mode=chosen, papers=[
            PaperHit(id=p.id, title=p.title, authors=p.authors, date=p.date, url=p.url, score=round(p.score, 4),
                     abstract=p.abstract[:ABSTRACT_CHARS]) for p in papers])

    @server.tool(annotations=READ_ONLY)
    def get_paper(
        id: Annotated[str, Field(min_length=1, description="the paper's id, e.g. '2401.01234' (arXiv ids and "
                                                           "arxiv.org links are accepted)")],
    ) -> PaperRecord:
        """The full record of one paper in the corpus: title, authors, categories, date, link and abstract."""
        paper = corpus.get(id)
        if paper is None:
            raise ValueError(f"no paper with id '{id}' in the corpus; search_papers finds ids")
        return PaperRecord(id=paper.id, title=paper.title, authors=paper.authors, categories=paper.categories,
                           date=paper.date, url=paper.url, abstract=paper.abstract)

    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", metavar="DIR", default=None,
                        help="the corpus folder (default: corpora/default in the suite's data folder)")


def build(args: argparse.Namespace) -> FastMCP:
    from survey.corpus import default_corpus_path

    return build_server(args.corpus or default_corpus_path())
