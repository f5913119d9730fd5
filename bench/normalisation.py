"""Score normalisation before fusion, on Wang-1000 (every image a query, the query excluded):
mAP and P@20 of average fusion of the bundled models under each normalisation of
``cbir.fusion.NORMALISATIONS``, with each one's paired difference in mAP from min-max over
the collection (the default): 95% bootstrap interval and paired randomisation p-value
(``cbir.significance``). RRF, which reads ranks, for reference.

    python bench/normalisation.py

On the stored vectors as they are (centring off, as the README's table says);
`python bench/centring.py` measures the same with centring, the default.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from cbir.collection import scan_collection
    from cbir.engine import Engine
    from cbir.fusion import DEFAULT_NORMALISATION, NORMALISATIONS
    from cbir.significance import compare

    engine = Engine(scan_collection(ROOT / "image.orig"))
    lite = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    print(f"{'models':<10} {'metric':<10} {'normalisation':<22} {'mAP':>7} {'P@20':>7}  Δ mAP vs min-max (95% CI, p)")
    for models in (lite[:2], lite):
        for metric in ("cosine", "euclidean"):
            base = engine.evaluate(models, metric, method="average", normalisation=DEFAULT_NORMALISATION, centre=False)
            for name, record in NORMALISATIONS.items():
                report = base if name == DEFAULT_NORMALISATION else engine.evaluate(models, metric, method="average", normalisation=name, centre=False)
                versus = "" if report is base else (lambda c: f"{c.delta:+.4f} ({c.low:+.4f} to {c.high:+.4f}, p = {c.p_value:.2g})")(compare(base, report))
                print(f"Lite{'+'.join(m[-1] for m in models):<6} {metric:<10} {record.label:<22} {report.map:>7.4f} {report.p_at_20:>7.4f}  {versus}")
            rrf = engine.evaluate(models, metric, method="rrf", centre=False)
            print(f"Lite{'+'.join(m[-1] for m in models):<6} {metric:<10} {'(RRF, ranks)':<22} {rrf.map:>7.4f} {rrf.p_at_20:>7.4f}")


if __name__ == "__main__":
    main()
