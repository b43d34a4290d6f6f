"""The paper corpus (survey/corpus/) and `minicpm corpus`: real SQLite files, the real MiniLM model.

The model loads once for the module (the shared embedder); the main corpus is the first 120 papers of
the shipped arXiv sample, embedded once. Format and resume tests that do not need vectors ingest
with embed=False, so the file stays well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import sqlite3

import numpy as np
import pytest
from conftest import run_cli

from runtime.errors import MiniCPMError
from survey.corpus import Corpus, CorpusError, shipped_sample
from survey.corpus.bibtex import latex_to_text, parse_bibtex
from survey.corpus.readers import Source, detect_format
from survey.corpus.search import fts_query

KAGGLE_SAMPLE = "kaggle_format_sample.jsonl"
N_MAIN = 120


def sample_lines(n: int, start: int = 0) -> list[str]:
    with gzip.open(shipped_sample(), "rt", encoding="utf-8") as f:
        return list(itertools.islice(f, start, start + n))


def write_gz(path, lines: list[str]):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(lines))
    return path


@pytest.fixture(scope="module")
def shared_data():
    """The project's shared data folder: shared/ in the checkout, beside it, or at /work/shared."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in (root / "shared" / "data", root.parent / "shared" / "data", Path("/work/shared/data")):
        if (path / "arxiv" / KAGGLE_SAMPLE).is_file():
            return path
    pytest.skip("the shared Kaggle-format sample is not on this machine")



@pytest.fixture(scope="module")
def embedder():
    from survey.corpus.embed import shared_embedder

    return shared_embedder()


@pytest.fixture(scope="module")
def main_file(tmp_path_factory):
    return write_gz(tmp_path_factory.mktemp("src") / "papers.jsonl.gz", sample_lines(N_MAIN))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, main_file, embedder):
    c = Corpus.open(tmp_path_factory.mktemp("corpus") / "main", create=True)
    report = c.ingest([main_file])
    assert report.added == N_MAIN and report.embedded == N_MAIN
    yield c
    c.close()


# ---- the embedder -------------------------------------------------------------------------------

def test_embedder_matches_sentence_transformers(embedder):
    """Reference: sentence-transformers' all-MiniLM-L6-v2 (transformers BertModel, mean pooling,
    normalisation), first six dimensions."""
    from survey.corpus.embed import Embedder

    reference = np.array([
        [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617],
        [0.052951, -0.057943, 0.046313, -0.025952, 0.057218, -0.017515],
    ], dtype=np.float32)
    texts = ["A man is eating food.", "Sparse attention for long-context language models on end devices."]
    exact = Embedder(precision="float32").encode(texts + ["word " * 600, ""])  # longer than 256 tokens: truncated
    assert exact.shape == (4, 384) and exact.dtype == np.float32
    np.testing.assert_allclose(exact[:2, :6], reference, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(exact, axis=1), 1.0, atol=1e-5)
    fast = embedder.encode(texts)  # the default precision (bfloat16 where the CPU has it)
    assert (fast * exact[:2]).sum(1).min() > 0.999


# ---- search -------------------------------------------------------------------------------------

def test_bm25_finds_a_paper_by_its_title_words(corpus):
    hits = corpus.search("inverse forward differentiation", k=5, mode="bm25")
    assert hits[0].id == "2402.14212" and hits[0].title.startswith("Moonwalk")
    assert hits[0].url == "https://arxiv.org/abs/2402.14212"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bm25_weights_title_above_abstract(corpus):
    # "Mamba" is in MoE-Mamba's title; other papers may mention it in their abstracts only.
    hits = corpus.search("mamba", k=5, mode="bm25")
    assert hits[0].id == "2401.04081"


@pytest.mark.parametrize("query, target", [
    ("predicting the economic output of European countries from news articles", "2401.07179"),
    ("detecting online harassment with a chatbot model", "2402.04088"),
    ("tracking disease-carrying mosquitoes with connected sensors", "2401.16258"),
])
def test_dense_finds_a_paraphrase(corpus, query, target):
    hits = corpus.search(query, k=3, mode="dense")
    assert hits[0].id == target, [(h.id, h.title) for h in hits]
    assert 0 < hits[0].score <= 1


def test_hybrid_fuses_both_rankings(corpus):
    query = "federated learning privacy"
    bm25 = [p.id for p in corpus.search(query, k=50, mode="bm25")]
    dense = [p.id for p in corpus.search(query, k=50, mode="dense")]
    hybrid = corpus.search(query, k=10, mode="hybrid")
    assert len(hybrid) == 10
    assert all(p.id in bm25 or p.id in dense for p in hybrid)
    scores = [p.score for p in hybrid]
    assert scores == sorted(scores, reverse=True)
    for p in hybrid:  # each score is the RRF sum of the ranks it reports
        expected = sum(1 / (60 + r) for r in p.ranks.values())
        assert p.score == pytest.approx(expected)
        for mode, rank in p.ranks.items():
            assert (bm25 if mode == "bm25" else dense)[rank - 1] == p.id
    assert any(set(p.ranks) == {"bm25", "dense"} for p in hybrid)
    # the paraphrase that bm25 alone misses still comes out on top through the dense list
    fused = corpus.search("predicting the economic output of European countries from news articles", k=5)
    assert "2401.07179" in [p.id for p in fused]


def test_hybrid_gives_the_same_answer_with_the_corpus_lock_held(corpus):
    """The dense half runs on a worker thread beside bm25 and never waits for the corpus lock, so a
    caller holding it (as the survey evaluation does) gets the same answer, not a deadlock; the
    BLAS threads the scan narrowed to one are given back."""
    query = "mixture of experts language models"
    free = [p.id for p in corpus.search(query, k=8, mode="hybrid")]
    with corpus.lock:
        held = [p.id for p in corpus.search(query, k=8, mode="hybrid")]
    assert held == free and len(free) == 8
    from threadpoolctl import threadpool_info

    assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} != {1} or os.cpu_count() == 1


@pytest.mark.parametrize("query", ['"', "AND", "a OR", "NOT x", "title:foo", "NEAR(a b", "*", "^start", "(x",
                                   "-", "col:\"unterminated", "x AND (y OR", "C++ & C#", "   ", "état-of-the-art"])
def test_fts_syntax_in_queries_never_errors(corpus, query):
    for mode in ("bm25", "hybrid"):
        assert isinstance(corpus.search(query, k=3, mode=mode), list)


def test_fts_query_quotes_every_word():
    assert fts_query('title:foo "bar') == '"title:foo" OR """bar"'
    assert fts_query("the of") == '"the" OR "of"'  # only stopwords: keep them
    assert fts_query("the transformer") == '"transformer"'
    assert fts_query("*** ---") is None


def test_get_and_stats(corpus):
    paper = corpus.get("arXiv:2401.04081v2")
    assert paper and paper.title.startswith("MoE-Mamba")
    assert paper.authors and paper.categories and paper.date.startswith("2024-01")
    assert corpus.get("https://arxiv.org/abs/2401.04081") == paper
    assert corpus.get("0000.00000") is None
    stats = corpus.stats(top=3)
    assert stats.papers == stats.with_vectors == N_MAIN
    assert stats.categories[0] == ("cs.AI", N_MAIN) and len(stats.categories) == 3
    assert stats.date_min <= stats.date_max and stats.size_bytes > 100_000
    assert stats.embedder == "all-MiniLM-L6-v2"


# ---- ingest -------------------------------------------------------------------------------------

def test_reingest_adds_nothing_and_an_id_updates(corpus, main_file, tmp_path):
    again = corpus.ingest([main_file])
    assert (again.added, again.files[0].unchanged, again.embedded) == (0, N_MAIN, 0)
    line = json.loads(sample_lines(1, start=109)[0])  # Moonwalk
    line["title"] = "Moonwalk: Reverse-Mode Gradients Without Storing Activations"
    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps(line) + "\n" + sample_lines(1, start=N_MAIN)[0])  # plus one new paper
    report = corpus.ingest([changed])
    f = report.files[0]
    assert (f.added, f.updated, f.unchanged) == (1, 1, 0)
    assert report.embedded == 2 and report.papers == report.with_vectors == N_MAIN + 1
    assert corpus.get("2402.14212").title.endswith("Without Storing Activations")
    assert corpus.search("storing activations", k=1, mode="bm25")[0].id == "2402.14212"
    stale = corpus.db.execute("SELECT p.id FROM papers_fts f JOIN papers p ON p.pk = f.rowid "
                              "WHERE papers_fts MATCH 'title : \"differentiation\"'").fetchall()
    assert ("2402.14212",) not in stale  # the old title left the index with the update


def test_malformed_records_are_counted_and_skipped(tmp_path):
    good = sample_lines(3)
    lines = [good[0], "{not json\n", json.dumps({"id": "x1", "abstract": "no title"}) + "\n", good[1], "[1, 2]\n",
             json.dumps({"id": "x2", "title": "T", "authors": 7}) + "\n", "\n", good[2], good[0]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(lines))
    with Corpus.open(tmp_path / "c", create=True) as c:
        f = c.ingest([path], embed=False).files[0]
        assert (f.added, f.malformed, f.duplicates, f.records) == (3, 4, 1, 8)
        assert [(m.line, m.reason.split(" ")[0]) for m in f.malformed_examples] == [
            (2, "not"), (3, "no"), (5, "a"), (6, "'authors'")]


def kaggle_record(i: int, **changes) -> str:
    """A made-up paper in exactly the schema of Kaggle's arxiv-metadata-oai-snapshot.json."""
    record = {
        "id": f"2301.{i:05d}", "submitter": "Ada Example", "authors": "Ada Example, Bo Sample and Cy Test",
        "title": f"A Made-Up Study\n  Number {i}", "comments": "9 pages", "journal-ref": None, "doi": None,
        "report-no": None, "categories": "math.PR cs.LG", "license": None,
        "abstract": f"  We study made-up question {i}\nover two lines.\n",
        "versions": [{"version": "v1", "created": "Mon, 2 Jan 2023 10:00:00 GMT"},
                     {"version": "v2", "created": "Fri, 3 Feb 2023 10:00:00 GMT"}],
        "update_date": "2023-02-04",
        "authors_parsed": [["Example", "Ada", ""], ["Sample", "Bo", ""], ["Test", "Cy", "Jr"]],
    }
    return json.dumps({**record, **changes}) + "\n"


def test_kaggle_jsonl_bibtex_and_gzip_all_ingest(tmp_path):
    kaggle = tmp_path / "arxiv-metadata-oai-snapshot.json"
    kaggle.write_text("".join(kaggle_record(i) for i in range(3)) + kaggle_record(3, title=None))
    kaggle_gz = write_gz(tmp_path / "kaggle.json.gz", [kaggle_record(i) for i in range(2, 5)])
    jsonl = write_gz(tmp_path / "papers.jsonl.gz", sample_lines(4))
    bib = tmp_path / "refs.bib"
    bib.write_text(BIBTEX)
    # the same entries, gzipped; one under a new key. The arXiv entry keeps its id whatever its key.
    bib_gz = write_gz(tmp_path / "refs.bib.gz", [BIBTEX.replace("goedel1931", "goedel1931b").replace("vaswani2017", "v17")])
    files = [kaggle, kaggle_gz, jsonl, bib, bib_gz]
    assert [detect_format(p) for p in files] == ["kaggle", "kaggle", "jsonl", "bibtex", "bibtex"]
    with Corpus.open(tmp_path / "c", create=True) as c:
        report = c.ingest(files, embed=False)
        counts = [(f.format, f.added, f.unchanged, f.malformed) for f in report.files]
        assert counts == [("kaggle", 3, 0, 1), ("kaggle", 2, 1, 0), ("jsonl", 4, 0, 0),
                          ("bibtex", 3, 0, 1), ("bibtex", 1, 2, 1)]
        assert report.files[0].malformed_examples[0].line == 4
        assert report.files[3].malformed_examples[0].line == 24  # @misc{broken
        k = c.get("2301.00001")
        assert k.title == "A Made-Up Study Number 1" and k.abstract == "We study made-up question 1 over two lines."
        assert k.authors == ["Ada Example", "Bo Sample", "Cy Test Jr"] and k.categories == ["math.PR", "cs.LG"]
        assert k.date == "2023-01-02" and k.url == "https://arxiv.org/abs/2301.00001"  # the first version's date
        attn = c.get("1706.03762")  # the BibTeX entry with an arXiv eprint
        assert attn.title == "Attention Is All You Need"
        assert attn.authors[:2] == ["Ashish Vaswani", "Noam Shazeer"] and attn.date == "2017-06"
        assert attn.url == "https://arxiv.org/abs/1706.03762" and attn.categories == ["cs.CL"]
        g = c.get("goedel1931")
        assert g.authors == ["Kurt Gödel"] and g.journal == "Monatshefte für Mathematik und Physik"
        assert g.title == "Über formal unentscheidbare Sätze" and g.url == "https://doi.org/10.1007/BF01700692"
        assert c.get("goedel1931b").date == "1931" and c.get("v17") is None
        assert c.get("knuth1984").title == "The TeXbook"
        assert c.search("unentscheidbare", k=1, mode="bm25")[0].id == "goedel1931"


def test_the_real_kaggle_snapshot_sample_reads_whole(tmp_path, shared_data):
    with Corpus.open(tmp_path / "c", create=True) as c:
        f = c.ingest([shared_data / "arxiv" / KAGGLE_SAMPLE], embed=False).files[0]
        assert (f.format, f.added, f.malformed) == ("kaggle", 49, 0)
        k = c.get("2212.11867")
        assert k.authors == ["Marcus Michelen", "Xuan-Truong Vu"]
        assert k.categories == ["math.PR", "math.CA", "math.CV"] and k.date == "2022-12-22"
        assert "\n" not in k.abstract and "  " not in k.title


BIBTEX = r"""% references for the test
@string{mfmp = "Monatshefte f{\"u}r Mathematik und Physik"}

@inproceedings{vaswani2017,
  title     = {Attention Is {All} You Need},
  author    = {Vaswani, Ashish and Shazeer, Noam and others},
  booktitle = {NeurIPS},
  year      = 2017,
  month     = jun,
  eprint    = {1706.03762},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
}

@article{goedel1931,
  author  = "G{\"o}del, Kurt",
  title   = "{\"U}ber formal unentscheidbare S{\"a}tze",
  journal = mfmp,
  year    = {1931},
  doi     = {https://doi.org/10.1007/BF01700692},
  abstract = {On formally undecidable propositions of {Principia Mathematica} and related systems.}
}

@misc{broken,
  title = {An entry whose brace never closes,
  year = 2020

@book{knuth1984, title={The {\TeX}book}, author={Donald E. Knuth}, year={1984}, publisher={Addison-Wesley}}
"""


def test_bibtex_reader_details():
    items = list(parse_bibtex("@comment{x}\n@preamble{\"p\"}\n@article(k1, title = \"A\" # { B}, year = 2001)\n"
                              "@article{k2 title = {no comma}}\n"))
    assert [type(i).__name__ for i in items] == ["BibEntry", "BibError"]
    assert items[0].text("title") == "A B" and items[1].line == 4
    assert latex_to_text(r"Caf\'{e} na\"ive \c{c}a \ss{} 50\% --- {\AA}ngstr\"om") == "Café naïve ça ß 50% — Ångström"


def test_unknown_format_and_unreadable_files(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\nnot papers\n")
    array = tmp_path / "papers.json"
    array.write_text('[{"id": "1", "title": "t"}]')
    with Corpus.open(tmp_path / "c", create=True) as c:
        with pytest.raises(MiniCPMError, match="unknown format"):
            c.ingest([notes])
        with pytest.raises(MiniCPMError, match="JSON array"):
            c.ingest([array])
        with pytest.raises(MiniCPMError, match="no such file"):
            c.ingest([tmp_path / "missing.jsonl"])
        with pytest.raises(MiniCPMError, match="is a folder"):
            c.ingest([tmp_path])
        assert len(c) == 0
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress("".join(sample_lines(200)).encode())[:-2000])
    with Corpus.open(tmp_path / "d", create=True) as c:
        with pytest.raises(MiniCPMError, match="corrupt or cut short"):
            c.ingest([cut], embed=False, batch_size=20)
        assert len(c) > 0  # the batches before the damage are kept
    with pytest.raises(CorpusError, match="no corpus folder"):
        Corpus.open(tmp_path / "nowhere")


def test_interrupted_ingest_resumes_to_the_full_count(tmp_path, embedder, monkeypatch):
    # short made-up papers: the resume logic is under test here, not the embedder's speed on abstracts
    topics = ["graph neural networks", "speech recognition", "protein folding", "robot grasping", "code generation"]
    lines = [json.dumps({"id": f"2501.{i:05d}", "title": f"Study {i} of {topics[i % 5]}",
                         "abstract": f"We look at {topics[i % 5]} from angle {i}.", "authors": ["A. Author"],
                         "categories": ["cs.LG"], "date": "2025-01-02"}) + "\n" for i in range(60)]
    path = write_gz(tmp_path / "p.jsonl.gz", lines)

    # pass 1 dies after 2 of 6 batches: those stay, with no vectors yet
    real_records = Source.records

    def dying_records(self):
        for n, record in enumerate(real_records(self)):
            if n == 25:
                raise KeyboardInterrupt
            yield record

    monkeypatch.setattr(Source, "records", dying_records)
    with Corpus.open(tmp_path / "c", create=True) as c, pytest.raises(KeyboardInterrupt):
        c.ingest([path], batch_size=10)
    monkeypatch.setattr(Source, "records", real_records)
    with Corpus.open(tmp_path / "c") as c:
        assert (len(c), c.vector_count()) == (20, 0)

    # pass 2 dies after 2 embedding batches of 8: 16 vectors stay, each with its paper
    calls = {"n": 0}
    real_encode = type(embedder).encode

    def dying_encode(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_encode(self, texts)

    monkeypatch.setattr(type(embedder), "encode", dying_encode)
    with Corpus.open(tmp_path / "c") as c, pytest.raises(KeyboardInterrupt):
        c.ingest([path], embed_batch=8)
    monkeypatch.setattr(type(embedder), "encode", real_encode)
    with Corpus.open(tmp_path / "c") as c:
        assert (len(c), c.vector_count()) == (60, 16)
        report = c.ingest([path], embed_batch=8)
        assert report.added == 0 and report.embedded == 44
        assert (report.papers, report.with_vectors) == (60, 60)
    db = sqlite3.connect(tmp_path / "c" / "corpus.sqlite")
    assert db.execute("SELECT count(*) FROM vectors WHERE length(vector) != 384 * 4").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM vectors v LEFT JOIN papers p ON p.pk = v.pk WHERE p.pk IS NULL").fetchone()[0] == 0


# ---- the command line ---------------------------------------------------------------------------

def test_cli_ingest_search_stats(tmp_path):
    src = tmp_path / "few.jsonl.gz"
    write_gz(src, sample_lines(12, start=104) + ["{broken\n"])  # Moonwalk (2402.14212) is the 6th
    corpus_dir = tmp_path / "cli"
    r = run_cli("corpus", "ingest", str(src), "--corpus", str(corpus_dir))
    assert r.returncode == 0, r.stderr
    assert "12 added" in r.stdout and "1 malformed" in r.stdout and "line 13: not JSON" in r.stdout
    assert "12 with vectors" in r.stdout

    r = run_cli("corpus", "ingest", str(src), "--corpus", str(corpus_dir), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["added"], report["malformed"], report["embedded"], report["papers"]) == (0, 1, 0, 12)

    r = run_cli("corpus", "search", 'Moonwalk "inverse (forward) AND', "--corpus", str(corpus_dir), "--json", "--k", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mode"] == "hybrid" and len(out["results"]) == 3
    assert out["results"][0]["id"] == "2402.14212" and out["results"][0]["url"].endswith("2402.14212")

    r = run_cli("corpus", "search", "moonwalk", "--corpus", str(corpus_dir), "--mode", "bm25")
    assert r.returncode == 0 and "Moonwalk" in r.stdout.splitlines()[0]

    r = run_cli("corpus", "stats", "--corpus", str(corpus_dir), "--json")
    stats = json.loads(r.stdout)
    assert stats["papers"] == stats["with_vectors"] == 12 and stats["categories"][0]["category"] == "cs.AI"
    r = run_cli("corpus", "stats", "--corpus", str(corpus_dir))
    assert "12, 12 with vectors" in r.stdout and "cs.AI 12" in r.stdout


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli("corpus", "search", "x", "--corpus", str(tmp_path / "none"))
    assert r.returncode == 1 and "minicpm: error: no corpus folder" in r.stderr and "Traceback" not in r.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    r = run_cli("corpus", "ingest", str(notes), "--corpus", str(tmp_path / "c"), "--no-vectors")
    assert r.returncode == 1 and "unknown format" in r.stderr and "Traceback" not in r.stderr


def test_bm25_and_stats_never_load_torch(corpus):
    """The papers MCP server and `corpus stats` start fast: only vectors need the embedder."""
    import subprocess
    import sys

    code = (f"import sys; from survey.corpus import Corpus; c = Corpus.open({str(corpus.path)!r}); "
            "assert c.search('mamba', k=1, mode='bm25')[0].id == '2401.04081'; c.stats(); "
            "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_missing_input_is_an_error_and_makes_no_corpus(tmp_path):
    from conftest import run_cli

    corpus = tmp_path / "c"
    result = run_cli("corpus", "ingest", str(tmp_path / "missing.jsonl"), "--format", "jsonl", "--corpus", str(corpus))
    assert result.returncode == 1 and "missing.jsonl: no such file" in result.stderr and "Traceback" not in result.stderr
    assert not corpus.exists()
    huge = run_cli("corpus", "search", "x", "--k", "100000000000000000000", "--corpus", str(corpus))
    assert huge.returncode == 1 and "--k must be between 1 and 1000" in huge.stderr


def test_bm25_leaves_out_words_most_papers_match_without_changing_the_ranking(tmp_path):
    """A word in more than half of the papers has FTS5 idf 1e-6: the ranking query leaves it out
    (ranking every paper it matches is most of a query's time at scale), the order stays FTS5's,
    and when the other words match fewer than k papers the full query fills the list."""
    from survey.corpus.search import _ranked, bm25

    papers = [{"id": f"2401.{i:05d}", "title": f"Paper {i} on a model", "date": "2024-01-01",
               "abstract": "We train a model. " + "The sparse attention is sparse. " * (i % 4 if i < 6 else 0)}
              for i in range(12)]
    path = tmp_path / "papers.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in papers))
    with Corpus.open(tmp_path / "corpus", create=True) as c:
        c.ingest([path], embed=False)
        assert c.match_counts(['"model"', '"sparse"']) == (12, [12, 4])
        sql: list[str] = []
        c.db.set_trace_callback(sql.append)
        pruned = bm25(c, "sparse model", 3)
        c.db.set_trace_callback(None)
        full = _ranked(c, '"sparse" OR "model"', 3)
        assert [pk for pk, _ in pruned] == [pk for pk, _ in full]
        assert [s for _, s in pruned] == pytest.approx([s for _, s in full], abs=1e-5)
        assert any("MATCH '\"sparse\"'" in q and "ORDER BY" in q for q in sql)  # ranked without "model"
        assert not any("MATCH '\"sparse\" OR \"model\"'" in q for q in sql)
        # Only 4 papers say "sparse": for 6 results the papers that only say "model" come after them.
        six = bm25(c, "sparse model", 6)
        assert [pk for pk, _ in six] == [pk for pk, _ in _ranked(c, '"sparse" OR "model"', 6)]
        titles = [c.papers_by_pk([pk])[pk].title for pk, _ in six]
        assert all("sparse" in c.papers_by_pk([pk])[pk].abstract for pk, _ in six[:4]) and len(titles) == 6
        # A new paper changes the counts: the cache follows the database.
        path.write_text(json.dumps({"id": "2401.99999", "title": "Sparse", "abstract": "sparse"}) + "\n")
        c.ingest([path], embed=False)
        assert c.match_counts(['"sparse"']) == (13, [5])
