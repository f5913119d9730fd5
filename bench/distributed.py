"""Distributed extraction: images/s in one process against a Dask LocalCluster of 1 and 2
workers (one thread each), per bundled model, on the 1,000 images of image.orig; the
scheduler's overhead per chunk; and from both, a projection for larger clusters.

    python bench/distributed.py [--models efficientnet_lite0,...] [--images 1000]

Each run indexes into an empty temporary store, so every image is extracted; the model is
built inside the timed part in every case (in-process: before the first batch; on a
cluster: by each worker on its first chunk). Cluster start-up is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# this file's folder comes first on sys.path and its name would hide the `distributed` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def rate(collection, model: str, runner=None) -> float:
    from cbir.extraction import index_collection

    with tempfile.TemporaryDirectory(prefix="cbir-dist-") as d:
        t = time.perf_counter()
        report = index_collection(collection, model, Path(d), runner=runner)
        return report.extracted / (time.perf_counter() - t)


def _payload(_: int) -> np.ndarray:
    from cbir.distributed import CHUNK

    return np.zeros((CHUNK, 1280), dtype=np.float32)  # what a chunk returns


def overhead_per_chunk(runner, tasks: int = 1000) -> float:
    """Seconds per trivial task that returns a chunk-sized result, on this cluster."""
    from distributed import wait

    runner.client.gather(runner.client.map(_payload, range(50), pure=False))  # warm
    t = time.perf_counter()
    futures = runner.client.map(_payload, range(tasks), pure=False)
    wait(futures)
    runner.client.gather(futures)
    return (time.perf_counter() - t) / tasks


def main() -> None:
    from cbir.collection import scan_collection
    from cbir.distributed import CHUNK, DaskRunner

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(LITE))
    p.add_argument("--images", type=int, default=1000)
    args = p.parse_args()
    collection = scan_collection(ROOT / "image.orig")
    if args.images < len(collection):
        from cbir.collection import Collection

        collection = Collection(root=collection.root, ids=collection.ids[: args.images], paths=collection.paths[: args.images],
                                labels=collection.labels[: args.images] if collection.labels else None, label_source=collection.label_source)
    print(f"{'model':<20}{'in-process':>12}{'1 worker':>10}{'2 workers':>11}{'2w / in-process':>17}   (images/s, {len(collection)} images)")
    per_worker = {}
    for model in args.models.split(","):
        here = rate(collection, model)
        with DaskRunner(workers=1, threads=1) as one:
            r1 = rate(collection, model, one)
        with DaskRunner(workers=2, threads=1) as two:
            r2 = rate(collection, model, two)
        per_worker[model] = r1
        print(f"{model:<20}{here:>12.1f}{r1:>10.1f}{r2:>11.1f}{r2 / here:>17.2f}", flush=True)
    with DaskRunner(workers=2, threads=1) as two:
        o = statistics.median(overhead_per_chunk(two) for _ in range(3))
    print(f"scheduler overhead per chunk (a task returning {CHUNK} x 1280 float32): {1000 * o:.2f} ms", flush=True)
    print(f"projection, chunk = {CHUNK} images, each worker as fast as one here (one core), scheduler bound 1/overhead:")
    print(f"{'model':<20}" + "".join(f"{w:>12} w" for w in (8, 32, 128)) + "   (images/s)")
    for model, r1 in per_worker.items():
        c = CHUNK / r1
        cells = [CHUNK * min(w / (c + o), 1 / o) for w in (8, 32, 128)]
        print(f"{model:<20}" + "".join(f"{x:>14.0f}" for x in cells), flush=True)


if __name__ == "__main__":
    main()
