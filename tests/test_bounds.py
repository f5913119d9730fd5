"""Every cache and every input has a bound: DBA matrices in memory and on disk, decoding
memory for huge-but-legal images."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

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
    """200 searches with distinct (n, alpha): bounded memory, a handful of files."""
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
    a = np.zeros((6300, 6300), np.uint16)
    a[::7, ::5] = 40000
    path = tmp_path / "wide.png"
    Image.fromarray(a).save(path)
    assert path.stat().st_size < 200_000
    probe = textwrap.dedent(f"""
        from cbir.images import open_image
        data = open({str(path)!r}, "rb").read()
        def hwm():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
        base = hwm()
        img = open_image(data)
        peak = hwm() - base
        import numpy as np
        print(img.size[0], img.size[1], img.mode, peak // 1024, float(np.asarray(img).mean()))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    w, h, mode, peak_mb, mean = out.stdout.split()
    assert mode == "RGB" and max(int(w), int(h)) <= 2048
    assert int(peak_mb) < 150, f"decoding cost {peak_mb} MB extra"
    # the content survives the area-averaging: 1 pixel in 35 at 40000/65535 of white
    assert abs(float(mean) - 255 * 40000 / 65535 / 35) < 1.0, mean
