"""Every cache and every input has a bound: DBA matrices in memory and on disk, decoding
memory for huge-but-legal images. The bench that prints these figures needs no test packages."""

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def test_dba_caches_stay_bounded(tmp_path):
    """200 searches with distinct (n, alpha): bounded memory, a handful of files (in a fresh
    process tuned as the API workers and the app are: in the pytest worker itself, the
    history of the tests before it moved RSS by 10 to 57 MB, and the test failed in CI)."""
    probe = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from bench.hardening import dba_growth
        from cbir.process import return_large_buffers
        assert return_large_buffers()
        print(json.dumps(dba_growth(Path({str(tmp_path)!r}), 200)))
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["growth_mb"] < 50, f"RSS grew by {r['growth_mb']:.0f} MB"
    assert r["files"] <= 3, r
    assert r["in_memory"] <= 2


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


def test_hardening_bench_runs_without_pytest(tmp_path):
    """`python bench/hardening.py` took its Redis from tests.conftest, so it crashed where
    pytest is not installed; its login figures run on the project's embedded Redis now."""
    probe = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.modules["pytest"] = None  # `import pytest` fails, as with the runtime packages only
        sys.path.insert(0, {str(ROOT)!r})
        import bench.hardening as bench
        bench.login_timing(Path({str(tmp_path / "a")!r}))
        print("429 at", bench.spray_through_proxy(Path({str(tmp_path / "b")!r}), tries=6, budget=3))
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "failed login: known user" in out.stdout and "429 at 4" in out.stdout, out.stdout
