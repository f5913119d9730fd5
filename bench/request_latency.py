"""Latency and peak memory of one search request in-process: 400 searches by id on Lite0 +
Lite1 fused by RRF (after 20 warm ones), median and p90, and the process's peak RSS.

    python bench/request_latency.py                 # this checkout
    PYTHONPATH=OLD_CHECKOUT python bench/request_latency.py   # run from OLD_CHECKOUT: another version
"""

import resource
import statistics
import time

from cbir.engine import Engine

MODELS = ["efficientnet_lite0", "efficientnet_lite1"]


def main() -> None:
    engine = Engine("image.orig")
    for i in range(20):
        engine.search(MODELS, image_id=str(i), method="rrf")
    times = []
    for i in range(400):
        t0 = time.perf_counter()
        engine.search(MODELS, image_id=str(i % 1000), method="rrf")
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"by-id search, 2 models + RRF, 400 queries: median {1000 * statistics.median(times):.2f} ms, "
          f"p90 {1000 * times[int(0.9 * len(times))]:.2f} ms, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
