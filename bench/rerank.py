"""Re-ranking on Wang-1000 with the bundled models (cosine, n = 10, alpha = 3): mAP and P@20
with and without αQE and DBA+αQE per model and fused, Rocchio feedback with the true labels
of the top 20, the added latency per query, and the DBA precomputation time per store.

On the stored vectors as they are (centring off, as the README's table says);
`python bench/centring.py` measures the same with centring, the default.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from cbir.collection import scan_collection
from cbir.config import Settings
from cbir.engine import Engine
from cbir.evaluation import evaluate_distances
from cbir.rerank import Rerank, alpha_query_expansion, database_augmentation, l2_normalise

ROOT = Path(__file__).resolve().parent.parent
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
SETTINGS = [Rerank(), Rerank("aqe", 10, 3.0), Rerank("dba_aqe", 10, 3.0)]


def main() -> None:
    engine = Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))
    print(f"{'model':<34}{'off mAP':>9}{'P@20':>7}{'αQE mAP':>9}{'P@20':>7}{'DBA+αQE':>9}{'P@20':>7}")
    rows = [(m, [m], None) for m in LITE] + [("Lite0+1+2 average", LITE, "average"), ("Lite0+1+2 RRF", LITE, "rrf")]
    for label, models, method in rows:
        cells = []
        for rr in SETTINGS:
            rep = engine.evaluate(models, "cosine", method=method, rerank=rr, centre=False)
            cells += [rep.map, rep.p_at_20]
        print(f"{label:<34}" + "".join(f"{v:>9.4f}{w:>7.4f}" for v, w in zip(cells[::2], cells[1::2])), flush=True)

    # early fusion, as the reference: L2-normalised concatenation of the three models
    ids = engine.collection.ids
    cat = l2_normalise(np.hstack([l2_normalise(engine.store(m).aligned(ids)) for m in LITE]))
    cells = []
    for rr in SETTINGS:
        db = cat if rr.method != "dba_aqe" else database_augmentation(cat, rr.n, rr.alpha)
        q = db if not rr.active else alpha_query_expansion(db, db, rr.n, rr.alpha, exclude=np.arange(len(ids)))
        d = 1.0 - q @ db.T
        np.fill_diagonal(d, np.inf)
        rep = evaluate_distances(d, engine.collection.labels)
        cells += [rep.map, rep.p_at_20]
    print(f"{'Lite0+1+2 concatenated':<34}" + "".join(f"{v:>9.4f}{w:>7.4f}" for v, w in zip(cells[::2], cells[1::2])), flush=True)

    for m in LITE[:1]:
        before, after = engine.evaluate_feedback(m, rounds=1, k=20, centre=False)
        print(f"Rocchio, 1 round, true labels of the top 20 ({m}): mAP {before.map:.4f} -> {after.map:.4f} ({after.map - before.map:+.4f}), "
              f"P@20 {before.p_at_20:.4f} -> {after.p_at_20:.4f}")

    print("\nlatency per query (median of 200, single model, top 10, in-process):")
    ids = [str(i) for i in range(0, 1000, 5)]
    for rr in SETTINGS:
        engine.search(LITE[0], "cosine", 10, image_id="1", rerank=rr)  # warm (DBA built or loaded here)
        times = []
        for i in ids:
            t = time.perf_counter()
            engine.search(LITE[0], "cosine", 10, image_id=i, rerank=rr)
            times.append(time.perf_counter() - t)
        print(f"  {rr.label or 'off':<28}{1000 * statistics.median(times):8.2f} ms")
    print("\nDBA precomputation per store (n=10, alpha=3):")
    for m in LITE:
        x = engine.store(m).embeddings
        t = time.perf_counter()
        database_augmentation(x, 10, 3.0)
        print(f"  {m:<22}{len(x)} x {x.shape[1]}: {1000 * (time.perf_counter() - t):.0f} ms")
    rng = np.random.default_rng(0)
    big = rng.random((100_000, 1280), dtype=np.float32)
    t = time.perf_counter()
    database_augmentation(big, 10, 3.0)
    print(f"  {'synthetic':<22}100000 x 1280: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
