"""Every cache and every input has a bound: DBA matrices in memory and on disk, decoding
memory for huge-but-legal images."""


def test_dba_caches_stay_bounded(tmp_path):
    """200 searches with distinct (n, alpha): bounded memory, a handful of files
    (in a process tuned as the API workers and the app are)."""
    from bench.hardening import dba_growth
    from cbir.process import return_large_buffers

    assert return_large_buffers()
    r = dba_growth(tmp_path, 200)
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
