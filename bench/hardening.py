"""Figures of the hardening work: memory of DBA caches and of decoding a huge 16-bit PNG,
the time of a failed login for a known vs an unknown username, and when a password spray
that rotates X-Forwarded-For through a trusted proxy meets 429. Needs no test packages.

    python bench/hardening.py            # prints one line per figure
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dba_growth(tmp: Path, requests: int = 200) -> dict:
    """``requests`` DBA searches with distinct (n, alpha) on a copy of the Lite0 store, in a
    process tuned as the API workers and the app are: RSS growth, DBA files beside the
    store, matrices in memory, milliseconds per request."""
    from cbir.config import Settings
    from cbir.engine import Engine
    from cbir.process import return_large_buffers
    from cbir.rerank import Rerank

    return_large_buffers()
    dst = tmp / "features" / "image.orig" / "efficientnet_lite0"
    shutil.copytree(ROOT / "features" / "image.orig" / "efficientnet_lite0", dst, ignore=shutil.ignore_patterns("dba-*"))
    engine = Engine(ROOT / "image.orig", Settings(collection=ROOT / "image.orig", features_dir=tmp / "features", var_dir=tmp / "var"))
    engine.search("efficientnet_lite0", image_id="5", rerank=Rerank("dba_aqe", 10, 3.0))  # warm: store, first matrix
    before, t = rss_mb(), time.perf_counter()
    for i in range(requests):
        engine.search("efficientnet_lite0", image_id=str(i), rerank=Rerank("dba_aqe", 5 + i % 20, 3.0 + i * 1e-3))
    return {"growth_mb": rss_mb() - before, "files": len(list(dst.glob("dba-*.npz"))), "in_memory": len(engine.indexes._dba),
            "ms": (time.perf_counter() - t) / requests * 1000}


def dba_caches(tmp: Path, requests: int = 200) -> None:
    r = dba_growth(tmp, requests)
    print(f"DBA, {requests} requests with distinct (n, alpha): RSS growth {r['growth_mb']:.1f} MB, "
          f"{r['files']} files beside the store, {r['in_memory']} matrices in memory, {r['ms']:.0f} ms per request")


def wide_png(path: Path) -> Path:
    """A ~90 KB 6300x6300 16-bit PNG (under the 40 MP limit): one pixel in 35 at 40000."""
    a = np.zeros((6300, 6300), np.uint16)
    a[::7, ::5] = 40000
    Image.fromarray(a).save(path)
    return path


def decode_probe(path: Path) -> dict:
    """Decode ``path`` in a fresh process: output size and mode, extra peak RSS (VmHWM
    reset before decoding), milliseconds, mean grey level."""
    probe = textwrap.dedent(f"""
        import json, time
        import numpy as np
        from cbir.images import open_image
        def hwm():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        data = open({str(path)!r}, "rb").read()
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
        base = hwm()
        t = time.perf_counter()
        img = open_image(data)
        print(json.dumps({{"size": img.size, "mode": img.mode, "peak_mb": (hwm() - base) / 1024,
                          "ms": (time.perf_counter() - t) * 1000, "mean": float(np.asarray(img).mean())}}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def decoding(tmp: Path) -> None:
    path = wide_png(tmp / "wide16.png")
    r = decode_probe(path)
    print(f"decoding a {path.stat().st_size // 1024} KB 6300x6300 16-bit PNG: extra peak RSS {r['peak_mb']:.0f} MB, "
          f"{r['ms']:.0f} ms, decoded to {tuple(r['size'])}")


@contextlib.contextmanager
def embedded_users(tmp: Path, **options):
    """A UserStore on the project's own embedded Redis in ``tmp`` (no test helpers: the
    bench runs without pytest), stopped on exit."""
    from cbir.config import Settings
    from cbir.redisdb import get_redis, release_embedded, wait_stopped
    from cbir.users import UserStore

    settings = Settings(var_dir=tmp / "var", redis_url=None)
    try:
        yield UserStore(get_redis(settings), **options)
    finally:
        release_embedded(settings)
        wait_stopped(settings)


def login_timing(tmp: Path) -> None:
    from cbir.users import AuthError

    with embedded_users(tmp) as users:
        users.create("alice", "rabbit-hole-tea-7")

        def timed(name: str) -> float:
            users.r.delete(f"cbir:auth:fail:{name}")
            t = time.perf_counter()
            try:
                users.authenticate(name, "wrong-password")
            except AuthError:
                pass
            return time.perf_counter() - t

        timed("warm-up")
        known = statistics.median(timed("alice") for _ in range(4))
        unknown = statistics.median(timed(f"ghost{i}") for i in range(4))
        print(f"failed login: known user {known * 1000:.0f} ms, unknown user {unknown * 1000:.0f} ms (median of 4)")


def spray_through_proxy(tmp: Path, tries: int = 40, budget: int = 30) -> int | None:
    """A password spray from loopback (a trusted proxy) naming a new X-Forwarded-For and a
    new username at every attempt, as the login route checks it: the attempt refused
    first (429), or None when all ``tries`` were let through."""
    from cbir.users import AuthError

    with embedded_users(tmp, login_rate=10, proxy_failures=budget) as users:
        for i in range(1, tries + 1):
            source, via = f"api:10.0.{i // 250}.{i % 250}", "api:127.0.0.1"
            if users.login_allowed(source) or users.proxy_wait(via):
                return i
            try:
                users.authenticate(f"victim{i}", "Summer2024!", source, via)
            except AuthError:
                pass
    return None


def spray(tmp: Path) -> None:
    first = spray_through_proxy(tmp)
    print(f"password spray from loopback, new X-Forwarded-For and username each time: "
          f"{'no 429 in 40 attempts' if first is None else f'429 at attempt {first}'} (budget 30 failures/min per proxy)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cbir-bench-") as d:
        tmp = Path(d)
        dba_caches(tmp)
        decoding(tmp)
        login_timing(tmp)
        spray(tmp)


if __name__ == "__main__":
    main()
