"""Vector-index backends at scale: recall@10 against exact search, query latency, build
time and memory, on synthetic clustered vectors (d = 1280) and on the real Wang features.

    python bench/scale.py                         # FAISS 100,000 and Milvus 20,000 vectors
    python bench/scale.py --faiss-n 500000 --milvus-n 100000 --queries 200

Synthetic data: ``centres`` cluster centres plus Gaussian noise, non-negative like pooled
CNN features. Exact top-10 is the reference (numpy, cosine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hardening import rss_mb  # noqa: E402


def clustered(n: int, d: int = 1280, centres: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.random((centres, d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 50_000):
        k = min(50_000, n - start)
        out[start : start + k] = np.abs(c[rng.integers(0, centres, k)] + 0.35 * rng.standard_normal((k, d), dtype=np.float32))
    return out


def exact_top10(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    from cbir.index.exact import ExactIndex

    return ExactIndex(x, "cosine").search(q, 10)[0]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


def timed_queries(index, q: np.ndarray) -> float:
    times = []
    for row in q:
        t = time.perf_counter()
        index.search(row[None, :], 10)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def store_of(x: np.ndarray):
    from cbir.store import FeatureStore

    ids = [str(i) for i in range(len(x))]
    return FeatureStore("synthetic", "none", x, ids, ids, manifest={"version": f"synthetic-{len(x)}"})


def bench_faiss(n: int, queries: int, kind: str) -> None:
    from cbir.index.faiss_backend import FaissIndex, build_faiss

    x = clustered(n)
    q = x[np.random.default_rng(1).choice(n, queries, replace=False)]
    truth = exact_top10(x, q)
    before = rss_mb()
    t = time.perf_counter()
    index = FaissIndex(build_faiss(x, "cosine", kind), "cosine", kind)
    build = time.perf_counter() - t
    print(f"faiss {kind:<5} {n:>9,} x 1280: recall@10 {recall(index.search(q, 10)[0], truth):.3f}, "
          f"p50 {timed_queries(index, q):.2f} ms/query, build {build:.0f} s, index RSS +{rss_mb() - before:.0f} MB", flush=True)


def bench_milvus(n: int, queries: int) -> None:
    from milvus import default_server

    from cbir.config import Settings
    from cbir.index import open_index

    x = clustered(n)
    q = x[np.random.default_rng(1).choice(n, queries, replace=False)]
    truth = exact_top10(x, q)
    with tempfile.TemporaryDirectory(prefix="cbir-milvus-") as d:
        default_server.set_base_dir(d)
        default_server.listen_port = int(os.environ.get("MILVUS_PORT", "29530"))
        default_server.start()
        try:
            uri = f"http://127.0.0.1:{default_server.listen_port}"
            t = time.perf_counter()
            index = open_index("milvus", store_of(x), Path(d), "cosine", Settings(milvus_uri=uri), None, f"bench{n}")
            build = time.perf_counter() - t
            print(f"milvus hnsw {n:>9,} x 1280: recall@10 {recall(index.search(q, 10)[0], truth):.3f}, "
                  f"p50 {timed_queries(index, q):.2f} ms/query, upsert + index {build:.0f} s", flush=True)
            index.drop()
        finally:
            default_server.stop()


def bench_wang() -> None:
    from cbir.config import Settings
    from cbir.engine import Engine

    with tempfile.TemporaryDirectory(prefix="cbir-wang-") as d:
        import shutil

        for m in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
            shutil.copytree(ROOT / "features" / "image.orig" / m, Path(d) / "image.orig" / m, ignore=shutil.ignore_patterns("dba-*", "faiss-*"))
        engine = Engine(ROOT / "image.orig", Settings(collection=ROOT / "image.orig", features_dir=d))
        for models, method in (("efficientnet_lite0", None), (["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], "average")):
            exact = engine.evaluate(models, "cosine", method=method)
            approx = engine.evaluate(models, "cosine", method=method, backend="faiss")
            print(f"Wang {approx.name}: {approx.map_label} {approx.map:.4f} vs exact mAP {exact.map:.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faiss-n", type=int, default=100_000)
    p.add_argument("--milvus-n", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--skip-milvus", action="store_true")
    args = p.parse_args()
    bench_wang()
    bench_faiss(args.faiss_n, args.queries, "hnsw")
    bench_faiss(args.faiss_n, args.queries, "ivfpq")
    if not args.skip_milvus:
        bench_milvus(args.milvus_n, args.queries)


if __name__ == "__main__":
    main()
