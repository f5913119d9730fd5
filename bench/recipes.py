"""Descriptor recipes on Wang-1000 (cbir.recipes): for each recipe, mAP of each bundled model
(every image a query against the rest, cosine), of their average fusion, and the
near-duplicate rank-1 rate (100 collection images, each cropped to half its size or so and
then rotated, re-encoded as a low-quality JPEG, colour-shifted or made grey, as queries: is
their source the first result?), with the
extraction cost relative to today's recipe (measured). Then the issue's goals.

Each model's feature maps are computed once per input scale and flip, and every pooling
read from them, so the whole table costs about one extraction per scale and flip.

    python bench/recipes.py [MODEL ...]       (default: efficientnet_lite0 efficientnet_lite1 efficientnet_lite2)
"""

from __future__ import annotations

import io
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = [
    ("today: average pooling", "today"),
    ("centring", "centred"),
    ("signed sqrt, centring", "avg,sqrt,centre"),
    ("2 scales (1, √2)", "avg,scales=1+1.414"),
    ("2 scales + flip + sqrt + centring (category)", "category"),
    ("3 scales + sqrt + centring (near_duplicate)", "near_duplicate"),
    ("MAC", "mac"),
    ("GeM p=3", "gem3"),
    ("GeM p=3, sqrt, centring", "gem3,sqrt,centre"),
    ("R-MAC", "rmac"),
    ("R-MAC, sqrt, centring", "rmac,sqrt,centre"),
    ("centring + PCA 256", "avg,centre,pca=256"),
]


def near_duplicates(images, n: int = 100, seed: int = 0, crop: tuple[float, float] = (0.45, 0.7)):
    """``n`` (source index, transformed image), each a crop of ``crop`` (default 45-70%) of each side followed by
    one of: a rotation of 10-30 degrees, a JPEG at quality 8-20, a colour shift (saturation
    0.2-2, brightness 0.6-1.4), or a conversion to grey. (A single mild transformation left
    every recipe at rank-1 1.00: nothing to tell them apart.)"""
    from PIL import Image, ImageEnhance, ImageOps

    rng = random.Random(seed)
    out = []
    for k, src in enumerate(rng.sample(range(len(images)), n)):
        img = images[src]
        w, h = img.size
        fw, fh = rng.uniform(*crop), rng.uniform(*crop)
        x, y = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
        t = img.crop((int(x), int(y), int(x + fw * w), int(y + fh * h)))
        kind = k % 4
        if kind == 0:
            t = t.rotate(rng.choice([-1, 1]) * rng.uniform(10, 30), resample=Image.BILINEAR)
        elif kind == 1:
            buf = io.BytesIO()
            t.save(buf, format="JPEG", quality=rng.randint(8, 20))
            t = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        elif kind == 2:
            t = ImageEnhance.Brightness(ImageEnhance.Color(t).enhance(rng.uniform(0.2, 2.0))).enhance(rng.uniform(0.6, 1.4))
        else:
            t = ImageOps.grayscale(t).convert("RGB")
        out.append((src, t))
    return out


def map_batches(extractor, images, side: int, flip: bool = False, batch: int = 16):
    """The feature maps of ``images`` resized to ``side`` x ``side`` (mirrored if ``flip``),
    batch by batch: (b, h, w, c) float32 arrays."""
    from cbir.images import resize_rgb

    for start in range(0, len(images), batch):
        pixels = np.stack([resize_rgb(im, side) for im in images[start:start + batch]])
        yield np.asarray(extractor.feature_maps(pixels[:, :, ::-1] if flip else pixels), dtype=np.float32)


class Bank:
    """Pooled, L2-normalised vectors of a set of images for every (scale, flip, pooling) a
    recipe asks for, computed once per (scale, flip) from the feature maps."""

    def __init__(self, extractor, images):
        self.extractor, self.images, self.cache, self.seconds = extractor, images, {}, {}

    def pooled(self, scale: float, flip: bool, pooling: str, p: float) -> np.ndarray:
        from cbir.recipes import l2, pool

        key = (round(scale, 4), flip)
        if key not in self.cache:
            size = max(32, int(round(scale * self.extractor.input_size)))
            parts, t0 = {}, time.perf_counter()
            for maps in map_batches(self.extractor, self.images, size, flip):
                for name, q in (("avg", 0), ("mac", 0), ("gem", 3.0), ("rmac", 0)):
                    parts.setdefault(name, []).append(l2(pool(maps, name, q)))
            self.seconds[key] = time.perf_counter() - t0
            self.cache[key] = {name: np.concatenate(v) for name, v in parts.items()}
        return self.cache[key][pooling]

    def describe(self, recipe) -> np.ndarray:
        from cbir.recipes import l2

        total = sum(self.pooled(s, f, recipe.pooling, recipe.p) for s in recipe.scales for f in ((False, True) if recipe.flip else (False,)))
        if recipe.sqrt:
            total = np.sign(total) * np.sqrt(np.abs(total))
        return l2(total)

    def cost(self, recipe) -> float:
        return sum(self.seconds[(round(s, 4), f)] for s in recipe.scales for f in ((False, True) if recipe.flip else (False,)))


def main() -> None:
    from cbir.collection import scan_collection
    from cbir.engine import Engine
    from cbir.evaluation import evaluate_distances
    from cbir.fusion import fuse
    from cbir.images import open_image
    from cbir.recipes import apply_post, fit_post, parse_recipe
    from cbir.significance import compare_paired

    models = sys.argv[1:] or ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    engine = Engine(scan_collection(ROOT / "image.orig"))
    c = engine.collection
    ids = list(c.ids)
    labels = [c.label_of(i) for i in ids]
    images = [open_image(c.path_of(i)) for i in ids]
    dups = near_duplicates(images)
    banks = {m: (Bank(engine.extractor(m), images), Bank(engine.extractor(m), [t for _, t in dups])) for m in models}
    sources = np.array([s for s, _ in dups])
    print(f"Wang-1000, {len(ids)} queries (cosine, query excluded, full ranking); near-duplicates: {len(dups)} transformed "
          f"images; models {', '.join(models)}; fused = average of the models (min-max)")
    header = " ".join(f"{m.replace('efficientnet_', ''):>7}" for m in models)
    print(f"\n{'recipe':<46} {header} {'fused':>7} {'Δ fused (95% CI)':>26} {'dup@1':>6} {'cost':>5}")
    base_ap, results = None, {}
    for title, text in RECIPES:
        recipe = parse_recipe(text)
        per, dists, dup_d = {}, {}, {}
        for m, (bank, dup_bank) in banks.items():
            x = bank.describe(recipe)
            state = fit_post(x, recipe)
            x, q = apply_post(x, recipe, state), apply_post(dup_bank.describe(recipe), recipe, state)
            d = 1 - x @ x.T
            np.fill_diagonal(d, np.inf)
            dists[m], dup_d[m] = d.astype(np.float64), (1 - q @ x.T).astype(np.float64)
            per[m] = evaluate_distances(dists[m], labels).map
        fused = evaluate_distances(fuse(dists, "average"), labels) if len(models) > 1 else evaluate_distances(dists[models[0]], labels)
        dup_first = np.argmin(fuse(dup_d, "average") if len(models) > 1 else dup_d[models[0]], axis=1)
        rank1 = float(np.mean(dup_first == sources))
        cost = sum(b.cost(recipe) for b, _ in banks.values()) / sum(b.cost(parse_recipe("today")) for b, _ in banks.values())
        if base_ap is None:
            base_ap, delta = fused.ap, ""
        else:
            cmp = compare_paired("today", base_ap, title, fused.ap)
            delta = f"{cmp.delta:+.4f} ({cmp.low:+.4f}, {cmp.high:+.4f})"
        results[text] = (fused.map, rank1)
        print(f"{title:<46} " + " ".join(f"{per[m]:>7.4f}" for m in models) + f" {fused.map:>7.4f} {delta:>26} {rank1:>6.2f} {cost:>4.1f}x",
              flush=True)
    print("\ngoals (issue 21):")
    for what, value, goal in (("centred fused mAP (the proposed default)", results["centred"][0], 0.91),
                              ("category preset fused mAP", results["category"][0], 0.92),
                              ("near-duplicate preset rank-1", results["near_duplicate"][1], 0.97)):
        print(f"  {what:<42} {value:.4f}  goal >= {goal}  {'✓' if value >= goal else '✗'}")


if __name__ == "__main__":
    main()
