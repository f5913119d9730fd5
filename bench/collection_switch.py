"""Time to switch collections in the Streamlit app, in Debian chromium: from picking another
collection in the sidebar to its Search page drawn (its image count shown). The second
collection is N images of image.orig/ (default 500) in class folders, its vectors copied from
the bundled EfficientNet-Lite0 store. Prints the first switch (the collection scanned and
opened) and the median and maximum of later switches back and forth (both open).

    python bench/collection_switch.py [N]
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import ROOT, running_app  # noqa: E402

WANG = ROOT / "image.orig"


def second_collection(root: Path, features: Path, n: int, registry) -> str:
    """``root``/half: the first ``n`` Wang images in class folders, registered, with Lite0 vectors
    (written after the registration: stores under a name no collection holds are orphans)."""
    from cbir.collection import scan_collection
    from cbir.store import FeatureStore
    from cbir.store_format import load_store, save_store, store_dir

    wang = scan_collection(WANG)
    folder = root / "half"
    for image_id in wang.ids[:n]:
        target = folder / wang.label_of(image_id) / f"{image_id}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wang.path_of(image_id), target)  # a copy: file links leaving a collection are skipped
    registry.add("half", folder, actor="bench", confined=True)
    store = load_store(ROOT / "features" / "image.orig" / "efficientnet_lite0")
    half = scan_collection(folder, name="half")
    rows = [store.row_of(i.rsplit("/", 1)[1]) for i in half.ids]
    save_store(FeatureStore("efficientnet_lite0", "imagenet", np.asarray(store.embeddings[rows], dtype=np.float32), half.ids,
                            np.asarray(half.signatures())), store_dir(features, "half", "efficientnet_lite0"))
    return f"{len(half):,}"


def main(n: int = 500) -> None:
    from playwright.sync_api import expect

    work = Path(tempfile.mkdtemp(prefix="cbir-bench-switch-"))
    features = work / "features"
    shutil.copytree(ROOT / "features" / "image.orig" / "efficientnet_lite0", features / "image.orig" / "efficientnet_lite0",
                    ignore=shutil.ignore_patterns("dba-*", "faiss-*", "map-*", "centred_*"))
    try:
        env = {"CBIR_FEATURES_DIR": str(features), "CBIR_COLLECTIONS_ROOT": str(work / "collections")}
        with running_app(**env) as (page, _url, state):
            from cbir.collection_registry import CollectionRegistry
            from cbir.config import Settings

            registry = CollectionRegistry(Settings(var_dir=state, features_dir=features, collections_root=work / "collections"))
            count = second_collection(work / "collections", features, n, registry)  # registered, then its store written
            page.reload()  # the switcher lists the new collection
            page.get_by_text("Images indexed").wait_for()
            box = page.locator("[data-testid='stSidebar']").get_by_role("combobox", name="Collection")
            shown = {"half": count, "image.orig": "1,000"}

            def switch(to: str) -> float:
                page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")
                box.click()
                option = page.get_by_role("option", name=to, exact=True)
                option.wait_for()
                t = time.perf_counter()
                option.click()
                expect(page.get_by_text(re.compile(r"^[\d,]+ images indexed"))).to_have_text(re.compile(f"^{shown[to]} images"),
                                                                                        timeout=120_000)
                page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")
                return time.perf_counter() - t

            first = switch("half")
            later = [switch(to) for _ in range(5) for to in ("image.orig", "half")]
        print(f"collection switch in the app ({count} images vs image.orig's 1,000, Lite0): first {1000 * first:.0f} ms "
              f"(scanned and opened); later {len(later)} switches: median {1000 * statistics.median(later):.0f} ms, "
              f"max {1000 * max(later):.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
