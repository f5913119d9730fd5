"""Vector-index backends at scale: recall@10 against exact search, query latency, build
time and memory, on synthetic clustered vectors (d = 1280) and on the real Wang features;
DBA through the index's k-NN graph; a memory-mapped float16 store; the API end to end.

    python bench/scale.py                         # every section at small sizes (minutes)
    python bench/scale.py --faiss-n 500000 --milvus-n 100000 --dba-n 100000 \
        --memmap-n 1000000 --api                  # the README's figures (about an hour)

Synthetic data: ``centres`` cluster centres plus Gaussian noise, non-negative like pooled
CNN features. Exact top-10 is the reference (numpy, cosine). ``--api`` serves the FAISS
collection (one hard link per image to one JPEG, labels = cluster) with `cbir api` and
loads it with wrk, 8 clients searching random ids.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hardening import rss_mb  # noqa: E402


def clustered(n: int, d: int = 1280, centres: int = 1000, seed: int = 0, labels: list | None = None) -> np.ndarray:
    """n vectors around ``centres`` centres; the centre of each is appended to ``labels``."""
    rng = np.random.default_rng(seed)
    c = rng.random((centres, d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 50_000):
        k = min(50_000, n - start)
        which = rng.integers(0, centres, k)
        out[start : start + k] = np.abs(c[which] + 0.35 * rng.standard_normal((k, d), dtype=np.float32))
        if labels is not None:
            labels.extend(which.tolist())
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


def store_of(x: np.ndarray, model: str = "synthetic", weights: str = "none"):
    from cbir.store import FeatureStore

    ids = [str(i) for i in range(len(x))]
    return FeatureStore(model, weights, x, ids, ids, manifest={"version": f"synthetic-{len(x)}"})


def synthetic_collection(root: Path, labels: list) -> None:
    """One image per vector (hard links to copies of one Wang JPEG), labelled with its cluster."""
    root.mkdir(parents=True)
    lines = ["id,label"]
    for i in range(len(labels)):
        if i % 60_000 == 0:  # a file system allows some 65,000 links per file
            source = root / f"{i}.jpg"
            shutil.copy(ROOT / "image.orig" / "0.jpg", source)
        else:
            os.link(source, root / f"{i}.jpg")
        lines.append(f"{i},c{labels[i]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def bench_api(root: Path, features: Path, n: int, seconds: int) -> None:
    """`cbir api` (auto backend: FAISS above CBIR_EXACT_MAX) on the synthetic collection,
    8 wrk clients searching random ids; the FAISS index was built by bench_faiss."""
    import httpx

    from bench.api import free_port, load_wrk, start_api

    with tempfile.TemporaryDirectory(prefix="cbir-api-") as d:
        tmp = Path(d)
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d],
                                 stdout=subprocess.DEVNULL)
        try:
            proc, url = start_api(f"redis://127.0.0.1:{port}/0", tmp, False, CBIR_COLLECTION=str(root),
                                  CBIR_FEATURES_DIR=str(features), CBIR_INDEX_BACKEND="auto")
            try:
                token = httpx.post(url + "/api/login", json={"username": "researcher", "password": "umons2024"}).json()["access_token"]
                head = {"Authorization": f"Bearer {token}"}
                t = time.perf_counter()
                first = httpx.post(url + "/api/search", json={"image_id": "1"}, headers=head, timeout=600).json()
                warm = time.perf_counter() - t
                for i in range(40):  # every worker opens the index
                    httpx.post(url + "/api/search", json={"image_id": str(i)}, headers=head, timeout=600)
                print(f"API, {n:,} vectors ({first['backend']}): first search, opening the index, {warm:.1f} s", flush=True)
                for depth in (1000, 100, 10):
                    res = load_wrk(url, token, "/api/search", ["efficientnet_lite0"], 8, seconds, tmp, extra=f', "depth": {depth}',
                                   max_id=n - 1)
                    print(f"API search by id, {n:,} vectors, {first['backend']}, depth {depth} (AP@{depth}), 8 clients: "
                          f"{res['rps']:.0f} req/s, p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms", flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        finally:
            redis.terminate()
            redis.wait(10)


def bench_faiss(n: int, queries: int, kind: str, folder: Path | None = None, labels: list | None = None) -> None:
    """Build, recall and latency; with ``folder``, the store and its index are left there
    (a synthetic collection the API section serves; ``labels`` receives the clusters)."""
    from cbir.index.faiss_backend import FaissIndex, build_faiss

    x = clustered(n, labels=labels)
    q = x[np.random.default_rng(1).choice(n, queries, replace=False)]
    truth = exact_top10(x, q)
    before = rss_mb()
    t = time.perf_counter()
    index = FaissIndex(build_faiss(x, "cosine", kind), "cosine", kind)
    build = time.perf_counter() - t
    print(f"faiss {kind:<5} {n:>9,} x 1280: recall@10 {recall(index.search(q, 10)[0], truth):.3f}, "
          f"p50 {timed_queries(index, q):.2f} ms/query, build {build:.0f} s, index RSS +{rss_mb() - before:.0f} MB", flush=True)
    if folder is not None:
        from cbir.derived import derived_array
        from cbir.store_format import save_store

        store = store_of(x, "efficientnet_lite0", "imagenet")
        save_store(store, folder)
        derived_array(store, folder, f"faiss-{kind}-cosine", index.to_bytes)


def bench_dba(n: int) -> None:
    """DBA precompute: the k-NN graph read from a built HNSW index, then the averaging,
    against brute force on a tenth of the vectors (quadratic: x100 at full size)."""
    from cbir.index import neighbour_graph
    from cbir.index.faiss_backend import FaissIndex, build_faiss
    from cbir.rerank import database_augmentation

    x = clustered(n)
    t = time.perf_counter()
    index = FaissIndex(build_faiss(x, "cosine", "hnsw"), "cosine", "hnsw")
    build = time.perf_counter() - t
    t = time.perf_counter()
    graph = neighbour_graph(index, x, 10)
    t_graph = time.perf_counter() - t
    t = time.perf_counter()
    dba = database_augmentation(x, 10, 3.0, graph)
    t_avg = time.perf_counter() - t
    sub = x[: n // 10]
    t = time.perf_counter()
    exact = database_augmentation(sub, 10, 3.0)
    t_brute = time.perf_counter() - t
    sub_graph = neighbour_graph(FaissIndex(build_faiss(sub, "cosine", "hnsw"), "cosine", "hnsw"), sub, 10)
    agree = float(np.mean(np.sum(database_augmentation(sub, 10, 3.0, sub_graph) * exact, axis=1)))
    print(f"DBA n=10 {n:>9,} x 1280: k-NN graph from HNSW {t_graph:.1f} s + averaging {t_avg:.1f} s = {t_graph + t_avg:.1f} s "
          f"(HNSW build {build:.0f} s, done once for search anyway); brute force on {len(sub):,}: {t_brute:.1f} s "
          f"(x100 = {100 * t_brute:.0f} s projected at {n:,}); mean cosine(graph DBA, brute DBA) {agree:.4f}", flush=True)
    del dba


def bench_memmap(n: int, queries: int = 5) -> None:
    """A float16 store of n x 1280 written once, then opened (memory-mapped) and searched
    exactly in streaming blocks; the page cache is dropped between the two timings when
    possible so the first query is a cold read."""
    from cbir.store_format import load_store, save_store

    with tempfile.TemporaryDirectory(prefix="cbir-memmap-") as d:
        ids = np.array([str(i) for i in range(n)])
        vectors = np.lib.format.open_memmap(Path(d) / "source.npy", mode="w+", dtype=np.float16, shape=(n, 1280))
        for start in range(0, n, 100_000):
            vectors[start : start + 100_000] = clustered(min(100_000, n - start), seed=start)
        from cbir.store import FeatureStore

        t = time.perf_counter()
        save_store(FeatureStore("synthetic", "none", vectors, ids, ids), Path(d) / "store", dtype="float16")
        written = time.perf_counter() - t
        size = sum(f.stat().st_size for f in (Path(d) / "store").glob("*.npy")) / 2**30
        del vectors
        (Path(d) / "source.npy").unlink()
        before = rss_mb()
        t = time.perf_counter()
        store = load_store(Path(d) / "store")
        opened = time.perf_counter() - t
        index = store.index("cosine")
        times = []
        for i in range(queries):
            t = time.perf_counter()
            index.distances(store.vector(str(i * 7919 % n)))
            times.append(time.perf_counter() - t)
        print(f"exact memmap float16 {n:>9,} x 1280 ({size:.2f} GiB on disk, written in {written:.0f} s): open {1000 * opened:.0f} ms, "
              f"streamed query first {times[0]:.2f} s, median of {queries} {statistics.median(times):.2f} s, "
              f"RSS +{rss_mb() - before:.0f} MB", flush=True)


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
            exact = engine.evaluate(models, "cosine", method=method, centre=False)
            approx = engine.evaluate(models, "cosine", method=method, backend="faiss", centre=False)
            print(f"Wang {approx.name}: {approx.map_label} {approx.map:.4f} vs exact mAP {exact.map:.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faiss-n", type=int, default=100_000)
    p.add_argument("--milvus-n", type=int, default=20_000)
    p.add_argument("--dba-n", type=int, default=20_000)
    p.add_argument("--memmap-n", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--api", action="store_true", help="serve the FAISS collection with `cbir api` and load it with wrk")
    p.add_argument("--seconds", type=int, default=20, help="wrk duration")
    p.add_argument("--only", default="wang,faiss,ivfpq,dba,memmap,milvus", help="comma-separated sections")
    p.add_argument("--keep", help="keep the API section's synthetic collection and FAISS index in this folder, and reuse "
                   "them when they are already there (no second build)")
    args = p.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="cbir-scale-") as d:
        work = Path(args.keep) if args.keep else Path(d)
        root, features = work / "synthetic", work / "features"
        if "wang" in only:
            bench_wang()
        labels: list = []
        built = (features / "synthetic" / "efficientnet_lite0" / "manifest.json").exists() and root.exists()
        if "faiss" in only and not (args.api and built):
            bench_faiss(args.faiss_n, args.queries, "hnsw", features / "synthetic" / "efficientnet_lite0" if args.api else None, labels)
        if args.api:
            if not built:
                synthetic_collection(root, labels)
            bench_api(root, features, args.faiss_n, args.seconds)
        if "ivfpq" in only:
            bench_faiss(args.faiss_n, args.queries, "ivfpq")
        if "dba" in only:
            bench_dba(args.dba_n)
        if "memmap" in only:
            bench_memmap(args.memmap_n)
        if "milvus" in only:
            bench_milvus(args.milvus_n, args.queries)


if __name__ == "__main__":
    main()
