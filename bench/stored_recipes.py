"""Recipes stored beside a model's own store (``cbir index --recipe``), on Wang-1000: each
preset of ``cbir.recipes.STORED_RECIPES`` indexed for real into a temporary folder (the
extraction rate against the model's own store, indexed the same way), then evaluated as a
model of its own (every image a query, the query excluded, cosine, centred as every search is
by default) and fused with the model's own store. The stored figures should be those
``python bench/recipes.py`` computes from the images described anew (each scale there is
resized from the original picture; a store decodes at the largest scale and resizes the
smaller ones from it).

    python bench/stored_recipes.py [MODEL]      (default: efficientnet_lite0)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from cbir.collection import scan_collection
    from cbir.config import Settings
    from cbir.engine import Engine
    from cbir.extraction import index_collection
    from cbir.extractors import get_spec, name_of
    from cbir.recipes import PRESETS, STORED_RECIPES

    model = sys.argv[1] if len(sys.argv) > 1 else "efficientnet_lite0"
    collection = scan_collection(ROOT / "image.orig")
    tmp = Path(tempfile.mkdtemp(prefix="bench-stored-recipes-"))
    try:
        settings = Settings(collection=ROOT / "image.orig", features_dir=tmp, var_dir=tmp / "var")
        engine = Engine(collection, settings)
        names = [model, *(name_of(model, p) for p in STORED_RECIPES)]
        rates = {}
        for name in names:
            extractor = engine.extractor(name)
            extractor.features(__import__("numpy").zeros((1, extractor.input_size, extractor.input_size, 3), "uint8"))  # traced
            t = time.perf_counter()
            report = index_collection(collection, name, tmp, extractor=extractor)
            rates[name] = report.images / (time.perf_counter() - t)
        print(f"Wang-1000, {len(collection)} images, {model}; mAP: all images as queries, cosine, centred\n")
        print("| store | label | extraction | cost (x own) | recipe's preset cost | mAP | fused with the own store |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        own = engine.evaluate(model, "cosine")
        print(f"| {model} | {get_spec(model).label} | {rates[model]:.1f} images/s | x1 | x1 | {own.map:.4f} | |")
        for preset, name in zip(STORED_RECIPES, names[1:]):
            rep = engine.evaluate(name, "cosine")
            fused = engine.evaluate([model, name], "cosine", "average")
            print(f"| {name} | {get_spec(name).label} | {rates[name]:.1f} images/s | x{rates[model] / rates[name]:.1f} "
                  f"| x{PRESETS[preset][0].cost:g} | {rep.map:.4f} | {fused.map:.4f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
