"""Dense search for the paper corpus: exact numpy against sqlite-vec and faiss, at 10K and 140K vectors.

What the corpus needs from its vector search (survey/corpus/search.py): top-10 by cosine over
384-d MiniLM vectors for corpora from a few thousand papers (the shipped sample) to ~140K (the
arXiv cs.AI/CL/CV set in shared data), answered in well under the ~10-30 ms it takes to embed the
query itself, with exact (or near-exact) recall, and no index that a killed ingest can leave out
of step with the papers table.

Each backend gets the same vectors and queries:

- numpy: the corpus's method. Vectors are float32 blobs in SQLite; a process reads them into one
  [N, 384] matrix once (`load`, the cost a one-shot `minicpm corpus search` pays), then each query
  is a mat-vec product and an argpartition. Exact: its top-10 is the ground truth.
- sqlite-vec (vec0 table, brute force in 0.1.x): needs a sqlite3 module that can load extensions.
  The stdlib one is tried first; many Python builds (this machine's included) compile that out, so
  apsw (which bundles its own SQLite) is used when installed, else the backend is reported as
  unavailable, with the reason.
- faiss (faiss-cpu, when installed): IndexFlatIP (exact) and IndexHNSWFlat (approximate; build
  time and recall@10 matter there).

Vectors are synthetic (make_vectors): unit vectors in topics and sub-topics, a rough stand-in for the
structure of real embeddings (isotropic random vectors have no near neighbours, a worst case that
says little about HNSW on real data). Queries are slightly perturbed data points. Latency is per single query (batch 1), p50 and p95 over
--queries queries, after one warm-up query. With --embedder, the time to embed one query with
all-MiniLM-L6-v2 is measured too, for scale.

Writes benchmarks/results/vector_search.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, script_main, write_json

BACKENDS = ("numpy", "sqlite-vec", "faiss-flat", "faiss-hnsw")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10000,140000", help="comma-separated corpus sizes (10000,140000)")
    parser.add_argument("--queries", type=int, default=100, metavar="N", help="queries per size (100)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (10)")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (384, MiniLM's)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated: {', '.join(BACKENDS)}")
    parser.add_argument("--hnsw-m", type=int, default=32, metavar="M", help="HNSW graph degree (32)")
    parser.add_argument("--hnsw-ef", type=int, default=64, metavar="EF", help="HNSW efSearch (64)")
    parser.add_argument("--embedder", action="store_true", help="also time embedding one query with MiniLM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "vector_search.json", help="where to write the JSON")


# ---- data ---------------------------------------------------------------------------------------

def make_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors in topics (one per 1,000 points) and sub-topics (one per 10): a point's nearest
    neighbours sit at cosine ~0.8 and a random pair near 0, roughly as with MiniLM abstracts."""
    topics = rng.standard_normal((max(1, n // 1000), dim)).astype(np.float32)
    subtopics = topics[rng.integers(0, len(topics), max(1, n // 10))]
    subtopics += 0.8 * rng.standard_normal(subtopics.shape).astype(np.float32)
    x = subtopics[rng.integers(0, len(subtopics), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_queries(data: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    q = data[rng.integers(0, len(data), count)] + 0.03 * rng.standard_normal((count, data.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top_k(data: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = data @ q
    idx = np.argpartition(-sims, k - 1)[:k]
    return idx[np.argsort(-sims[idx])]


def timed(fn, queries: np.ndarray) -> tuple[list[np.ndarray], dict]:
    fn(queries[0])  # warm-up
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(np.asarray(fn(q)))
        times.append((time.perf_counter() - t) * 1000)
    return found, {"p50_ms": round(float(np.percentile(times, 50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3)}


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return round(hits / sum(len(t) for t in truth), 4)


# ---- backends -----------------------------------------------------------------------------------

def bench_numpy(data, queries, k, workdir: Path) -> dict:
    """The corpus's way: float32 blobs in SQLite, read into one matrix, then an exact scan."""
    db_path = workdir / "vectors.sqlite"
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE vectors (pk INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
    t = time.perf_counter()
    db.executemany("INSERT INTO vectors VALUES (?, ?)", ((i, v.tobytes()) for i, v in enumerate(data)))
    db.commit()
    insert_s = time.perf_counter() - t
    db.close()
    t = time.perf_counter()
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT pk, vector FROM vectors ORDER BY pk").fetchall()
    pks = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), data.shape[1])
    load_s = time.perf_counter() - t
    db.close()
    found, lat = timed(lambda q: pks[exact_top_k(matrix, q, k)], queries)
    return {"found": found, **lat, "build_s": round(insert_s, 3), "load_s": round(load_s, 3),
            "memory_mb": round(matrix.nbytes / 2**20, 1)}


def _sqlite_vec_connection(path: Path):
    """(connection, how) with sqlite-vec loaded, or (None, why not)."""
    try:
        import sqlite_vec
    except ImportError:
        return None, "the sqlite-vec package is not installed"
    db = sqlite3.connect(path)
    if hasattr(db, "enable_load_extension"):
        try:
            db.enable_load_extension(True)
            sqlite_vec.load(db)
            return db, "stdlib sqlite3"
        except (sqlite3.Error, AttributeError) as exc:
            db.close()
            stdlib_reason = str(exc)
    else:
        db.close()
        stdlib_reason = "this Python's sqlite3 module was built without extension loading"
    try:
        import apsw
    except ImportError:
        return None, f"{stdlib_reason}, and apsw is not installed"
    db = apsw.Connection(str(path))
    db.enable_load_extension(True)
    db.load_extension(sqlite_vec.loadable_path())
    return db, f"apsw {apsw.apsw_version()} ({stdlib_reason})"


def bench_sqlite_vec(data, queries, k, workdir: Path) -> dict:
    db, how = _sqlite_vec_connection(workdir / "vec.sqlite")
    if db is None:
        return {"unavailable": how}
    db.execute(f"CREATE VIRTUAL TABLE items USING vec0(embedding float[{data.shape[1]}])")
    t = time.perf_counter()
    db.execute("BEGIN")
    for start in range(0, len(data), 5000):
        chunk = data[start:start + 5000]
        rows = [(start + i + 1, v.tobytes()) for i, v in enumerate(chunk)]
        db.executemany("INSERT INTO items(rowid, embedding) VALUES (?, ?)", rows)
    db.execute("COMMIT")
    build_s = time.perf_counter() - t

    def query(q):
        rows = db.execute("SELECT rowid FROM items WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                          (q.astype(np.float32).tobytes(), k)).fetchall()
        return np.array([r[0] - 1 for r in rows])

    found, lat = timed(query, queries)
    db.close()
    return {"found": found, **lat, "build_s": round(build_s, 3), "via": how}


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def bench_faiss_flat(data, queries, k, workdir: Path) -> dict:
    faiss = _faiss()
    if faiss is None:
        return {"unavailable": "faiss-cpu is not installed"}
    t = time.perf_counter()
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    build_s = time.perf_counter() - t
    found, lat = timed(lambda q: index.search(q[None], k)[1][0], queries)
    return {"found": found, **lat, "build_s": round(build_s, 3), "via": f"faiss {faiss.__version__}"}


def bench_faiss_hnsw(data, queries, k, workdir: Path, m: int = 32, ef: int = 64) -> dict:
    faiss = _faiss()
    if faiss is None:
        return {"unavailable": "faiss-cpu is not installed"}
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.add(data)
    build_s = time.perf_counter() - t
    index.hnsw.efSearch = ef
    found, lat = timed(lambda q: index.search(q[None], k)[1][0], queries)
    return {"found": found, **lat, "build_s": round(build_s, 3), "via": f"faiss {faiss.__version__}, M={m}, efSearch={ef}"}


# ---- run ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backends: {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    rng = np.random.default_rng(args.seed)
    results = []
    for n in sizes:
        data = make_vectors(n, args.dim, rng)
        queries = make_queries(data, args.queries, rng)
        truth = [exact_top_k(data, q, args.k) for q in queries]
        with tempfile.TemporaryDirectory() as tmp:
            for name in backends:
                t = time.perf_counter()
                if name == "faiss-hnsw":
                    out = bench_faiss_hnsw(data, queries, args.k, Path(tmp), m=args.hnsw_m, ef=args.hnsw_ef)
                else:
                    out = {"numpy": bench_numpy, "sqlite-vec": bench_sqlite_vec,
                           "faiss-flat": bench_faiss_flat}[name](data, queries, args.k, Path(tmp))
                if "found" in out:
                    out["recall_at_k"] = recall(out.pop("found"), truth)
                out = {"backend": name, "vectors": n, **out, "total_s": round(time.perf_counter() - t, 2)}
                results.append(out)
                print(f"  {name:<11} n={n:>7,}: " + ", ".join(f"{k}={v}" for k, v in out.items()
                                                              if k not in ("backend", "vectors")), flush=True)
    embed = None
    if args.embedder:
        from survey.corpus.embed import Embedder

        embedder = Embedder()
        embedder.encode_one("warm-up")
        times = []
        for text in ("sparse attention for long-context language models", "retrieval-augmented generation survey",
                     "tool calling with small language models on device", "diffusion models for video generation") * 5:
            t = time.perf_counter()
            embedder.encode_one(text)
            times.append((time.perf_counter() - t) * 1000)
        embed = {"model": embedder.name, "precision": embedder.precision,
                 "p50_ms": round(float(np.percentile(times, 50)), 2)}
    result = {
        "benchmark": "vector_search",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "numpy": np.__version__},
        "settings": {"k": args.k, "dim": args.dim, "queries": args.queries, "seed": args.seed,
                     "data": "synthetic unit vectors: a topic per 1,000 points, a sub-topic per 10"},
        "query_embedding": embed,
        "results": results,
    }
    write_json(args.out, result)
    print()
    print(f"| backend | vectors | p50 ms | p95 ms | recall@{args.k} | build s | load s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "unavailable" in r:
            print(f"| {r['backend']} | {r['vectors']:,} | unavailable: {r['unavailable']} | | | | |")
            continue
        print(f"| {r['backend']} | {r['vectors']:,} | {r['p50_ms']} | {r['p95_ms']} | {r['recall_at_k']} | "
              f"{r['build_s']} | {r.get('load_s', '')} |")
    if embed:
        print(f"\nembedding one query ({embed['model']}, {embed['precision']}): p50 {embed['p50_ms']} ms")
    return 0


if __name__ == "__main__":
    script_main(sys.modules[__name__])
