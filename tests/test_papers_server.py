"""The `papers` MCP server over a real corpus (SQLite + FTS5, built by survey/corpus ingest)."""

from __future__ import annotations

import json
import sys

import pytest
from mcp.shared.memory import create_connected_server_and_client_session

from mcp_tools.servers import papers
from runtime.errors import MiniCPMError

pytestmark = pytest.mark.anyio

PAPERS = [
    {"id": "2506.07900", "title": "MiniCPM4: Ultra-Efficient LLMs on End Devices",
     "abstract": "We present MiniCPM4 with InfLLM v2 trainable sparse attention.", "authors": ["MiniCPM Team"],
     "categories": ["cs.CL"], "date": "2025-06-09"},
    {"id": "2401.00001", "title": "Gardening robots for tomatoes", "abstract": "Robots that water tomato plants.",
     "authors": ["A. Gardener"], "categories": ["cs.RO"], "date": "2024-01-01"},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    from survey.corpus import Corpus

    folder = tmp_path_factory.mktemp("corpus")
    source = folder / "papers.jsonl"
    source.write_text("\n".join(json.dumps(p) for p in PAPERS))
    with Corpus.open(folder / "c", create=True) as corpus:
        corpus.ingest([source], embed=False)
    return folder / "c"


async def test_search_and_get(corpus_dir):
    async with create_connected_server_and_client_session(papers.build_server(corpus_dir)) as session:
        found = await session.call_tool("search_papers", {"query": "sparse attention", "k": 3})
        assert not found.isError
        hits = found.structuredContent["papers"]
        assert found.structuredContent["mode"] == "bm25"  # no vectors in this corpus
        assert hits[0]["id"] == "2506.07900" and hits[0]["url"] == "https://arxiv.org/abs/2506.07900"
        record = await session.call_tool("get_paper", {"id": "arXiv:2506.07900v2"})
        assert record.structuredContent["title"].startswith("MiniCPM4")
        missing = await session.call_tool("get_paper", {"id": "9999.99999"})
        assert missing.isError and "no paper with id" in missing.content[0].text
        dense = await session.call_tool("search_papers", {"query": "robots", "mode": "dense"})
        assert dense.isError and "no vectors" in dense.content[0].text


def test_a_missing_corpus_is_a_clear_error_before_serving(tmp_path):
    with pytest.raises(MiniCPMError, match="minicpm corpus ingest"):
        papers.build_server(tmp_path / "none")


def test_papers_over_stdio(corpus_dir):
    from mcp_tools.config import parse_config
    from mcp_tools.sessions import McpSessions

    config = parse_config({"mcpServers": {"papers": {
        "command": sys.executable, "args": ["-m", "minicpm_suite", "mcp", "serve", "papers", "--corpus", str(corpus_dir)]}}})
    with McpSessions(config) as live:
        result = live.call("search_papers", {"query": "tomato"})
        assert not result.is_error and "Gardening robots" in result.text
        assert not live.tool("search_papers").needs_approval
