"""Figures of the hardening work: memory of DBA caches and of decoding a huge 16-bit PNG,
the time of a failed login for a known vs an unknown username, when a password spray that
rotates X-Forwarded-For through a trusted proxy meets 429, the peak memory and outcome of
importing the issue's feature-file bombs, long jobs (a sweep refused, CPU burnt after its
client left, SIGTERM during a sweep) and the first search after /ready. Needs no test packages.

    python bench/hardening.py                     # prints one line per figure
    python bench/hardening.py imports             # only the feature-file bombs
    python bench/hardening.py --jobs [CHECKOUT]   # long jobs and readiness only, of CHECKOUT's
                                                  # code (e.g. a worktree of an older commit)
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
    from cbir.redis_server import wait_stopped
    from cbir.redisdb import get_redis, release_embedded
    from cbir.auth.users import UserStore

    settings = Settings(var_dir=tmp / "var", redis_url=None)
    try:
        yield UserStore(get_redis(settings), **options)
    finally:
        release_embedded(settings)
        wait_stopped(settings)


def login_timing(tmp: Path) -> None:
    from cbir.errors import AuthError

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
    from cbir.errors import AuthError

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


# -- imported features: the bombs, at the sizes --------------------------
class _Allocates:
    def __init__(self, n: int):
        self.n = n

    def __reduce__(self):
        return bytearray, (self.n,)


def _bomb_pickle_bytearray(path: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps([("0", _Allocates(2**31))], protocol=4))  # 44 bytes
    return path


def _bomb_pickle_memo(path: Path) -> Path:
    import pickle

    inner = [float(i) for i in range(1000)]
    vector = [inner] * 1000  # memoised: 1000 references to one list
    path.write_bytes(pickle.dumps([(str(i), vector) for i in range(200)], protocol=4))
    return path


def _bomb_npz(path: Path, shape=(1000, 250_000)) -> Path:
    """Deflated zeros declaring ``shape`` float32, streamed into the zip 4 MB at a time."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    ids = io.BytesIO()
    np.save(ids, np.array([str(i) for i in range(shape[0])]))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ids.npy", ids.getvalue())
        with zf.open("vectors.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            chunk, left = bytes(4 << 20), shape[0] * shape[1] * 4
            while left:
                fh.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return path


def _bomb_parquet(path: Path, rows=1000, width=50_000) -> Path:
    """zstd Parquet of ``rows`` lists of ``width`` float64 zeros, written 50 rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float64()))])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, 50):
            values = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(50 * width)), width).cast(pa.list_(pa.float64()))
            writer.write_table(pa.table({"id": [str(i) for i in range(start, start + 50)], "vector": values}, schema=schema))
    return path


def _bomb_pickle_ndarray(path: Path, n: int = 40_000_000) -> Path:
    """48 bytes: REDUCE numpy.ndarray((n,), dtype('O'))."""
    import struct

    path.write_bytes(b"\x80\x02cnumpy\nndarray\n(J" + struct.pack("<i", n) + b"\x85cnumpy\ndtype\nX\x01\x00\x00\x00O\x85RtR.")
    return path


def _bomb_pickle_scalar(path: Path, n: int = 400_000_000) -> Path:
    """65 bytes: numpy's scalar(dtype('V<n>'))."""
    width = str(n).encode()
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX" + bytes([1 + len(width), 0, 0, 0]) + b"V"
                     + width + b"\x85R\x85R.")
    return path


def _bomb_csv_quoted(path: Path, width: int = 300_000) -> Path:
    """A header whose first field holds a newline, then ``width`` columns (300 KB)."""
    path.write_text('id,"x\ny"' + "," * width + "\n0\n")
    return path


def _bomb_parquet_ids(path: Path, rows: int = 300, chars: int = 1_000_000) -> Path:
    """``rows`` dictionary-encoded ids of ``chars`` characters (904 bytes on disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a" * chars] * rows, "vector": [[0.5] * 4] * rows}), path, compression="zstd",
                   use_dictionary=True)
    return path


#: name, builder, the issue's "before" (worker peak growth, outcome); the last four were found
#: in review, their "before" measured on the code the issue's four were first fixed in
IMPORT_BOMBS = (
    ("pickle [(\"0\", bytearray(2**31))]", _bomb_pickle_bytearray, "b.pkl", "OOM-killed"),
    ("pickle, 200 rows x one memoised 1000x1000 list", _bomb_pickle_memo, "m.pkl", "+3.8 GB, 200 x 1,000,000 store (763 MB)"),
    (".npz of deflated zeros, (1000, 250000) float32", _bomb_npz, "z.npz", "+4.8 GB, 954 MB store"),
    ("zstd Parquet, 1000 x 50000 float64", _bomb_parquet, "z.parquet", "+2.1 GB, 1 GB held after"),
    ("pickle calling numpy.ndarray((40_000_000,), dtype('O'))", _bomb_pickle_ndarray, "o.pkl", "+314 MB, kept"),
    ("pickle calling scalar(dtype('V400000000'))", _bomb_pickle_scalar, "v.pkl", "+763 MB peak"),
    ("CSV with a quoted newline in its header, 300,001 columns", _bomb_csv_quoted, "q.csv", "990 MB peak, 20 s, imported"),
    ("Parquet of 300 dictionary-encoded 1 MB ids", _bomb_parquet_ids, "d.parquet", "1.2 GB peak, a 1 MB message"),
)


def import_probe(path: Path, features: Path) -> dict:
    """Import ``path`` in a fresh process (numpy, pandas and pyarrow loaded first): extra
    peak RSS (VmHWM reset before importing), milliseconds, outcome (HTTP status and message)."""
    probe = textwrap.dedent(f"""
        import json, time
        from pathlib import Path
        import numpy as np, pandas, pyarrow.parquet
        from cbir.collection import scan_collection
        from cbir.importing import import_features
        def hwm():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        collection = scan_collection(Path("image.orig"))
        open("/proc/self/clear_refs", "w").write("5")
        base, t = hwm(), time.perf_counter()
        try:
            r = import_features(Path({str(path)!r}), "bomb", collection, Path({str(features)!r}))
            outcome = f"imported {{r.vectors}} x {{r.dim}}"
        except Exception as exc:
            outcome = f"{{getattr(exc, 'http_status', 500)}}: {{exc}}"
        print(json.dumps({{"peak_mb": (hwm() - base) / 1024, "ms": (time.perf_counter() - t) * 1000, "outcome": outcome}}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def import_bombs(tmp: Path) -> None:
    for label, build, name, before in IMPORT_BOMBS:
        path = build(tmp / name)
        r = import_probe(path, tmp / "features")
        size = path.stat().st_size
        print(f"import {label} ({size:,} bytes): before {before} -> after {r['outcome'][:110]}; "
              f"extra peak RSS {r['peak_mb']:.1f} MB, {r['ms']:.0f} ms")
        path.unlink()


def import_race(tmp: Path, writers: int = 8) -> None:
    """``writers`` threads import different files under one name at once, without and then
    with replace: outcomes, and whether the store then loads (every file it names exists)."""
    import threading

    from cbir.collection import scan_collection
    from cbir.importing import Importer, import_features
    from cbir.store_format import load_store

    collection = scan_collection(ROOT / "image.orig")
    files = []
    for i in range(writers):
        files.append(tmp / f"race{i}.npz")
        np.savez(files[-1], ids=np.array(collection.ids), vectors=np.random.default_rng(i).random((len(collection), 64)) * (i + 1))
    for replace in (False, True):
        outcomes, barrier = [], threading.Barrier(writers)

        def run(path: Path) -> None:
            barrier.wait()
            try:
                import_features(path, "race", collection, tmp / "features", by=Importer("bench"), replace=replace)
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(str(getattr(exc, "http_status", type(exc).__name__)))

        threads = [threading.Thread(target=run, args=(f,)) for f in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            loads = f"the store loads ({len(load_store(tmp / 'features' / 'image.orig' / 'imported:race'))} vectors)"
        except Exception as exc:
            loads = f"the store does not load ({exc})"
        counts = ", ".join(f"{outcomes.count(o)} x {o}" for o in sorted(set(outcomes)))
        print(f"{writers} concurrent imports of one name{' with replace' if replace else ''}: before only manifest.json left, "
              f"every search failing -> after {counts}; {loads}")


class _Api:
    """`cbir api` of ``root``'s code on a free port with its own Redis, stopped by pid."""

    def __init__(self, tmp: Path, root: Path, workers: int, **env):
        import os

        from tests.conftest import RedisServer, free_port, service_env

        self.redis = RedisServer(tmp / "redis").start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "api.log"
        self.started = time.perf_counter()
        base = service_env(self.redis.url, tmp, CBIR_LOGIN_RATE="1000", CBIR_CACHE="0",
                           CBIR_COLLECTION=str(ROOT / "image.orig"), CBIR_FEATURES_DIR=str(ROOT / "features"), **env)
        base["KERAS_HOME"] = str(tmp / "models_cache")
        base.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "cbir", "api", "--port", str(self.port), "--workers", str(workers)],
                                     env=base, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=root,
                                     start_new_session=True)  # its workers too are killed by its pid (group) if need be
        self.os = os

    def get(self, path: str, timeout: float = 2) -> int:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def wait(self, path: str, timeout: float = 300) -> float:
        """Seconds from start until ``path`` answers 200."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-2000:])
            try:
                if self.get(path) == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.log.read_text()[-2000:])

    def post(self, path: str, body: dict, token: str | None = None, timeout: float = 30) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def token(self) -> str:
        return self.post("/api/login", {"username": "researcher", "password": "umons2024"})[1]["access_token"]

    def cpu(self) -> float:
        from tests.integration.test_jobs import cpu_seconds

        return cpu_seconds(self.proc.pid)

    def stop(self, wait: float = 20) -> float | None:
        """Seconds SIGTERM takes to end it (None: still running after ``wait``, then killed)."""
        t = time.perf_counter()
        self.proc.terminate()
        try:
            self.proc.wait(wait)
            seconds = time.perf_counter() - t
        except subprocess.TimeoutExpired:
            seconds = None
        try:
            self.os.killpg(self.proc.pid, 9)  # workers the parent left behind (older code)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.redis.stop()
        return seconds


def _start_sweep(api: _Api, token: str, models: list[str], step: float):
    """A sweep request whose answer is never read (the socket, to close when done with it)."""
    import socket

    body = json.dumps({"models": models, "step": step}).encode()
    sock = socket.create_connection(("127.0.0.1", api.port))
    sock.sendall(b"POST /api/tune_weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def long_jobs(tmp: Path, root: Path = ROOT) -> None:
    """The issue's sweep (step 0.001, two models), odd steps and a 1326-point sweep, at the
    default bounds; then, with the work bound lifted so the same work runs before and after:
    CPU seconds the workers burn in the 5 s after a sweep's client hangs up, and how long
    SIGTERM takes to end `cbir api` (2 workers) during a sweep."""
    two, three = ["efficientnet_lite0", "efficientnet_lite1"], ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    api = _Api(tmp / "jobs", root, workers=2, CBIR_PRELOAD_MODEL="0")
    try:
        api.wait("/ready")
        token = api.token()
        for models, step in ((two, 0.001), (two, 5e-324), (two, 1e-300), (three, 0.02)):
            t = time.perf_counter()
            try:
                status, body = api.post("/api/tune_weights", {"models": models, "step": step}, token, timeout=5)
                print(f"sweep step {step:g} x {len(models)} models: {status} in {(time.perf_counter() - t) * 1000:.0f} ms, "
                      f"message of {len(body.get('error', ''))} characters")
            except OSError:
                print(f"sweep step {step:g} x {len(models)} models: accepted, still computing when the client gave up after 5 s")
    finally:
        api.stop()

    api = _Api(tmp / "jobs-unbounded", root, workers=2, CBIR_PRELOAD_MODEL="0", CBIR_SWEEP_MAX_WORK=str(10**12))
    try:
        api.wait("/ready")
        token = api.token()
        sock = _start_sweep(api, token, three, 0.02)
        time.sleep(4)
        sock.close()
        time.sleep(1)
        cpu = api.cpu()
        time.sleep(5)
        print(f"CPU seconds burnt in the 5 s after a sweep's client hung up: {api.cpu() - cpu:.1f}")
        sock = _start_sweep(api, token, three, 0.02)
        time.sleep(4)
    finally:
        seconds = api.stop()
    sock.close()
    print("SIGTERM to `cbir api` (2 workers) during a sweep: " + (f"exited in {seconds:.1f} s" if seconds is not None
                                                                  else "still running after 20 s (killed)"))


def first_search_after_ready(tmp: Path, root: Path = ROOT) -> None:
    """Cold start of `cbir api` with 2 workers until /ready, then the first and a warm upload search."""
    from tests.integration.test_ready import upload

    api = _Api(tmp / "ready", root, workers=2)
    try:
        cold = api.wait("/ready")
        token = api.token()
        first = upload(api.url, token, ROOT / "image.orig" / "12.jpg")
        warm = min(upload(api.url, token, ROOT / "image.orig" / f"{i}.jpg") for i in (305, 410, 520))
        print(f"`cbir api` (2 workers): /ready after {cold:.1f} s; first upload search {first * 1000:.0f} ms, warm {warm * 1000:.0f} ms")
    finally:
        api.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cbir-bench-") as d:
        tmp = Path(d)
        if sys.argv[1:] == ["imports"]:
            import_bombs(tmp)
            import_race(tmp)
            return
        if "--jobs" in sys.argv:
            args = sys.argv[sys.argv.index("--jobs") + 1:]
            root = Path(args[0]).resolve() if args else ROOT
            long_jobs(tmp, root)
            first_search_after_ready(tmp, root)
            return
        dba_caches(tmp)
        decoding(tmp)
        login_timing(tmp)
        spray(tmp)
        import_bombs(tmp)
        import_race(tmp)
        long_jobs(tmp)
        first_search_after_ready(tmp)


if __name__ == "__main__":
    main()
