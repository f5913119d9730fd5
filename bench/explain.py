"""Why did this match? Time to explain one query-result pair of Wang-1000, per model: decode
both images, run them through the model up to its pooling (one batch of two) and split the
similarity over their locations (``Engine.explain``), then draw the pair with both heatmaps
(``cbir.explain.render`` + PNG). The model is built and traced once before timing, as the
app and the API keep it. Goal: under 300 ms a pair on EfficientNet-Lite0.

    python bench/explain.py [PAIRS] [MODEL ...]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from cbir.collection import scan_collection
    from cbir.engine import Engine
    from cbir.explain import png, render

    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    models = sys.argv[2:] or ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    engine = Engine(scan_collection(ROOT / "image.orig"))
    ids = engine.collection.ids
    rng = random.Random(0)
    chosen = [(rng.choice(ids), rng.choice(ids)) for _ in range(pairs)]
    print(f"{pairs} random pairs of Wang-1000, one at a time, 2 cores")
    print(f"{'model':<20} {'explain median':>15} {'p95':>7} {'max':>7} {'+ drawing median':>17} {'total median':>13}  goal")
    for model in models:
        t0 = time.perf_counter()
        engine.explain(model, ids[1], image_id=ids[0])  # build + trace, not timed
        built = time.perf_counter() - t0
        explain_ms, draw_ms = [], []
        for query, result in chosen:
            t0 = time.perf_counter()
            explanation, q, r = engine.explain(model, result, image_id=query)
            t1 = time.perf_counter()
            png(render(explanation, q, r))
            t2 = time.perf_counter()
            explain_ms.append(1000 * (t1 - t0))
            draw_ms.append(1000 * (t2 - t1))
        total = [a + b for a, b in zip(explain_ms, draw_ms)]
        p95 = sorted(explain_ms)[int(0.95 * (len(explain_ms) - 1))]
        goal = ("< 300 ms " + ("✓" if statistics.median(total) < 300 else "✗")) if model == "efficientnet_lite0" else ""
        print(f"{model:<20} {statistics.median(explain_ms):>12.0f} ms {p95:>4.0f} ms {max(explain_ms):>4.0f} ms "
              f"{statistics.median(draw_ms):>14.0f} ms {statistics.median(total):>10.0f} ms  {goal}   (first call {built:.1f} s)")


if __name__ == "__main__":
    main()
