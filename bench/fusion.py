"""Live fusion tuning and the weight sweep on Wang-1000 with the three bundled models.

* Re-fusion: after one search, the time to fuse the per-model rows already computed with
  another method or weights (what the Search page does when a slider moves), median over
  queries.
* Weight sweep: `cbir tune-weights` for 2 and 3 models, weighted fusion and weighted RRF,
  step 0.1: time, best weights, and the gain over equal weights.

    python bench/fusion.py [--queries 50] [--step 0.1]

On the stored vectors as they are (centring off, as the README's table says);
`python bench/centring.py` measures the same with centring, the default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def main() -> None:
    from cbir.config import Settings
    from cbir.engine import Engine
    from cbir.tuning import sweep_weights

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--step", type=float, default=0.1)
    args = p.parse_args()
    engine = Engine(ROOT / "image.orig", Settings(collection=ROOT / "image.orig", features_dir=ROOT / "features"))
    times: dict[str, list[float]] = {"average": [], "weighted": [], "rrf": []}
    for i in range(args.queries):
        inputs = engine.search(LITE, image_id=str(i * 19 % 1000), method="average").inputs
        for method in times:
            t = time.perf_counter()
            inputs.fuse(method, {"efficientnet_lite0": 0.2, "efficientnet_lite1": 0.5, "efficientnet_lite2": 0.3})
            times[method].append(time.perf_counter() - t)
    print("re-fusion of 3 models x 1000 images (fused list, AP, PR curve), median of "
          f"{args.queries} queries: " + ", ".join(f"{m} {1000 * statistics.median(v):.2f} ms" for m, v in times.items()), flush=True)
    for models in (LITE[:2], LITE):
        for method in ("weighted", "rrf"):
            r = sweep_weights(engine, models, method, args.step, centre=False)
            out = r.to_dict()
            best = ", ".join(f"{m.replace('efficientnet_', '')}={w:g}" for m, w in out["best"]["weights"].items())
            print(f"sweep {method:<8} {'+'.join(m.replace('efficientnet_', '') for m in models):<17} {len(r.map):>3} points "
                  f"in {r.seconds:5.1f} s: best {best}  mAP {out['best']['mAP']:.4f}  P@20 {out['best']['P@20']:.4f}; "
                  f"equal weights mAP {out['equal_weights']['mAP']:.4f} -> gain {out['gain_over_equal']:+.4f}", flush=True)


if __name__ == "__main__":
    main()
