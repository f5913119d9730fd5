"""Every cache and every input has a bound: DBA matrices in memory and on disk, decoding
memory for huge-but-legal images."""

import shutil
from pathlib import Path

from cbir.config import Settings
from cbir.engine import Engine
from cbir.rerank import Rerank
from tests.conftest import COLLECTION, ROOT


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_dba_caches_stay_bounded(tmp_path):
    """200 searches with distinct (n, alpha): bounded memory, a handful of files
    (in a process tuned as the API workers and the app are)."""
    from cbir.process import return_large_buffers

    assert return_large_buffers()
    features = tmp_path / "features"
    shutil.copytree(ROOT / "features" / "image.orig" / "efficientnet_lite0", features / "image.orig" / "efficientnet_lite0",
                    ignore=shutil.ignore_patterns("dba-*"))
    engine = Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=features, var_dir=tmp_path / "var"))
    engine.search("efficientnet_lite0", image_id="5", rerank=Rerank("dba_aqe", 10, 3.0))  # warm: store, first matrix
    before = _rss_mb()
    for i in range(200):
        engine.search("efficientnet_lite0", image_id=str(i), rerank=Rerank("dba_aqe", 5 + i % 20, 3.0 + i * 1e-3))
    growth = _rss_mb() - before
    files = list((features / "image.orig" / "efficientnet_lite0").rglob("dba-*.npz"))
    assert growth < 50, f"RSS grew by {growth:.0f} MB"
    assert len(files) <= 3, files
    assert len(engine._dba) <= 2


def test_huge_16_bit_png_decodes_in_bounded_memory(tmp_path):
    """A ~90 KB 6300x6300 16-bit PNG (under the 40 MP limit) must not cost a gigabyte."""
    from bench.hardening import decode_probe, wide_png

    path = wide_png(tmp_path / "wide.png")
    assert path.stat().st_size < 200_000
    r = decode_probe(path)
    assert r["mode"] == "RGB" and max(r["size"]) <= 2048
    assert r["peak_mb"] < 150, f"decoding cost {r['peak_mb']:.0f} MB extra"
    # the content survives the area-averaging: 1 pixel in 35 at 40000/65535 of white
    assert abs(r["mean"] - 255 * 40000 / 65535 / 35) < 1.0, r["mean"]
