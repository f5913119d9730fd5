"""Single-query search latency per metric at n = 1e3, 1e4, 1e5 stored vectors, d = 1280 and 2048.

Prints the median of repeated single-query searches (query vs whole store, prepared
once per metric as a loaded feature store is) and the
peak extra memory of the chi-square kernel. Usage: python bench/search.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from cbir.distances import DISTANCES, pairwise_distances
from cbir.index.exact import ExactIndex


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip n = 100,000")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    sizes = [1_000, 10_000] + ([] if args.quick else [100_000])
    print(f"{'n':>8} {'d':>5} " + " ".join(f"{m:>14}" for m in DISTANCES) + "   (median ms per query)")
    for d in (1280, 2048):
        for n in sizes:
            x = rng.random((n, d), dtype=np.float32)
            q = rng.random((1, d), dtype=np.float32)
            row = []
            for metric in DISTANCES:
                index = ExactIndex(x, metric)  # what a loaded feature store keeps per metric
                repeats = 50 if n <= 10_000 else (10 if metric != "chi_square" else 3)
                row.append(median_ms(lambda: index.distances(q), repeats))
            print(f"{n:>8} {d:>5} " + " ".join(f"{v:>14.2f}" for v in row), flush=True)
    # bounded memory: chi-square on the largest store allocates chunks, not (n, d) temporaries
    n, d = sizes[-1], 2048
    x = rng.random((n, d), dtype=np.float32)
    q = rng.random((1, d), dtype=np.float32)
    tracemalloc.start()
    pairwise_distances(q, x, "chi_square")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"chi-square peak extra memory at n={n}, d={d}: {peak / 2**20:.0f} MiB (store itself {x.nbytes / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
