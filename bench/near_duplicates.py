"""Near-duplicate search on Wang-1000 at three levels of difficulty: how often the source of a
transformed collection image comes first (rank-1), fused over the bundled models (average
of min-max-normalised cosine distances), for today's recipe, centring (the default), the
near_duplicate preset and R-MAC with sqrt and centring.

Each level is 100 collection images (seed 0), each cropped to a share of each side drawn
from the level's range and then rotated 10-30 degrees, saved as a JPEG of quality 8-20,
colour-shifted, or made grey (in turn), as in ``bench/recipes.py``, whose set is the hardest
level here. The issue's goal (near_duplicate rank-1 >= 0.97) was set on a set where today's
recipe scored 0.94: the level whose today's score is nearest that is the comparable one.

    python bench/near_duplicates.py [MODEL ...]   (default: efficientnet_lite0 efficientnet_lite1 efficientnet_lite2)

``--dense`` measures instead what single-vector recipes cannot do, on the hard level: the
query's descriptor against every region of each collection image described at twice the
model's input side (R-MAC's regions, the best region counts: asymmetric regional search), and
Chamfer similarity (each query location's best match among the image's locations, averaged;
as ViSiL, Kordopatis-Zioumis et al., ICCV 2019, scores frames), each split by transformation.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LEVELS = (("hard: crop 45-70% of each side", (0.45, 0.7)), ("medium: crop 60-80%", (0.6, 0.8)),
          ("mild: crop 75-95%", (0.75, 0.95)))
RECIPES = (("today", "today"), ("centring (the default)", "centred"), ("near_duplicate preset", "near_duplicate"),
           ("R-MAC, sqrt, centring", "rmac,sqrt,centre"))


def _bench_recipes():
    spec = importlib.util.spec_from_file_location("bench_recipes", Path(__file__).with_name("recipes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from cbir.collection import scan_collection
    from cbir.engine import Engine
    from cbir.fusion import fuse
    from cbir.images import open_image
    from cbir.recipes import apply_post, fit_post, parse_recipe

    bench = _bench_recipes()
    models = [a for a in sys.argv[1:] if a != "--dense"] or ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    engine = Engine(scan_collection(ROOT / "image.orig"))
    images = [open_image(engine.collection.path_of(i)) for i in engine.collection.ids]
    if "--dense" in sys.argv:
        return dense(engine, models, images, bench.near_duplicates(images, crop=LEVELS[0][1]), bench.map_batches)
    sets = [(name, bench.near_duplicates(images, crop=crop)) for name, crop in LEVELS]
    banks = {m: bench.Bank(engine.extractor(m), images) for m in models}
    query_banks = {(m, name): bench.Bank(engine.extractor(m), [t for _, t in dups]) for m in models for name, dups in sets}
    print(f"Wang-1000 near-duplicates: rank-1 of the source, fused {'+'.join(m.replace('efficientnet_', '') for m in models)}\n")
    print("| recipe | " + " | ".join(name for name, _ in LEVELS) + " |")
    print("| --- |" + " --- |" * len(LEVELS))
    for title, text in RECIPES:
        recipe, row = parse_recipe(text), []
        for name, dups in sets:
            dist = {}
            for m in models:
                x = banks[m].describe(recipe)
                state = fit_post(x, recipe)
                x, q = apply_post(x, recipe, state), apply_post(query_banks[(m, name)].describe(recipe), recipe, state)
                dist[m] = (1 - q @ x.T).astype(np.float64)
            first = np.argmin(fuse(dist, "average") if len(models) > 1 else dist[models[0]], axis=1)
            row.append(float(np.mean(first == np.array([s for s, _ in dups]))))
        print(f"| {title} | " + " | ".join(f"{v:.2f}" for v in row) + " |", flush=True)


def dense(engine, models: list[str], images: list, dups: list, map_batches) -> None:
    """Rank-1 on the hard level of: the default (global, centred), asymmetric regional search and
    Chamfer similarity against the collection described at twice the input side."""
    from cbir.centring import centre, unit_mean
    from cbir.descriptors import l2, pool, rmac_regions
    from cbir.fusion import fuse

    sources, kinds = np.array([s for s, _ in dups]), np.arange(len(dups)) % 4
    scores: dict[str, dict[str, np.ndarray]] = {"global, centred (the default)": {}, "regions of the 2x image, best one": {},
                                                "Chamfer, 2x image locations": {}}
    for m in models:
        extractor = engine.extractor(m)
        side = extractor.input_size
        q = np.concatenate(list(map_batches(extractor, [t for _, t in dups], side)))
        g_db = np.concatenate([pool(b) for b in map_batches(extractor, images, side)])
        g_q, mean = pool(q), unit_mean(g_db)
        scores["global, centred (the default)"][m] = centre(g_q, mean) @ centre(g_db, mean).T
        db2 = np.concatenate(list(map_batches(extractor, images, 2 * side)))  # 1.6 GB float32 for Lite2
        n, h, w, d = db2.shape
        regions = np.stack([l2(pool(db2[:, i:i + r, j:j + r])) for i, j, r in rmac_regions(h, w, 3)], 1)  # (n, 15, d)
        mean = unit_mean(regions.reshape(-1, d))
        scores["regions of the 2x image, best one"][m] = np.einsum("qd,nrd->qnr", centre(g_q, mean), centre(regions, mean)).max(2)
        locations, mean = db2.reshape(-1, d), unit_mean(db2.reshape(-1, d))
        del db2, regions
        loc_db = centre(locations, mean).reshape(n, -1, d).transpose(0, 2, 1).copy()  # (n, d, locations): BLAS's batched products
        del locations
        loc_q = centre(q.reshape(len(q), -1, d), mean)
        scores["Chamfer, 2x image locations"][m] = np.stack([np.matmul(loc, loc_db).max(2).mean(1) for loc in loc_q])
        del loc_db
    print(f"Wang-1000 near-duplicates, hard level: rank-1 of the source, fused {'+'.join(m.replace('efficientnet_', '') for m in models)}\n")
    print("| matching | rank-1 | rotated | JPEG 8-20 | colour-shifted | grey |\n| --- | --- | --- | --- | --- | --- |")
    for title, per_model in scores.items():
        dist = {m: (1 - s).astype(np.float64) for m, s in per_model.items()}
        first = np.argmin(fuse(dist, "average") if len(models) > 1 else dist[models[0]], axis=1) == sources
        print(f"| {title} | {first.mean():.2f} | " + " | ".join(f"{first[kinds == k].mean():.2f}" for k in range(4)) + " |", flush=True)


if __name__ == "__main__":
    main()
