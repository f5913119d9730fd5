from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "image.orig"

# Keep the tests' converted weights and state out of the work tree.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="cbir-tests-"))
os.environ.setdefault("KERAS_HOME", str(_SESSION_TMP / "models_cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("CBIR_REDIS_URL", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def collection_dir() -> Path:
    return COLLECTION


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture
def small_collection(tmp_path) -> Path:
    """Twelve real Wang images in three classes, with a labels.csv."""
    root = tmp_path / "small"
    root.mkdir()
    lines = ["id,label"]
    for cls, start in (("africa", 0), ("buses", 300), ("dinosaurs", 400)):
        for i in range(start, start + 4):
            shutil.copy(COLLECTION / f"{i}.jpg", root / f"{i}.jpg")
            lines.append(f"{i},{cls}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- services -------------------------------------------------------------------------
import shutil as _shutil
import socket
import subprocess
import time as _time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = _time.time() + timeout
    while _time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            _time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


class RedisServer:
    """A real Debian redis-server on a free loopback port, with append-only persistence."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = _shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--save", "", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(session_tmp):
    server = RedisServer(session_tmp / "redis-main").start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server
    client.flushall()
    client.close()


def make_settings(redis_url: str | None, tmp: Path, **overrides):
    from cbir.config import Settings

    values = dict(
        collection=COLLECTION, features_dir=ROOT / "features", var_dir=tmp / "var",
        redis_url=redis_url, demo=True,
    )
    values.update(overrides)
    return Settings(**values)


class ServiceProcess:
    """A real server process (uvicorn API or Streamlit) on a free loopback port."""

    def __init__(self, argv: list[str], port: int, env: dict, log: Path, ready_path: str = "/health"):
        self.argv, self.port, self.env, self.log, self.ready_path = argv, port, env, log, ready_path
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "ServiceProcess":
        import urllib.request

        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = _time.time() + timeout
        while _time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[:4]} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                _time.sleep(0.3)
        raise TimeoutError(f"{self.url} not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def api_login(client, username: str = "researcher", password: str = "umons2024") -> dict:
    """Bearer headers for ``username`` from ``POST /api/login`` of a TestClient."""
    r = client.post("/api/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def service_env(redis_url: str, tmp: Path, **extra) -> dict:
    import sys

    env = {
        **os.environ,
        "CBIR_REDIS_URL": redis_url,
        "CBIR_DEMO": "1",
        "CBIR_COLLECTION": str(COLLECTION),
        "CBIR_FEATURES_DIR": str(ROOT / "features"),
        "CBIR_VAR_DIR": str(tmp / "var"),
        "CBIR_COLLECTIONS_ROOT": str(tmp / "collections"),  # collections added by a test: never in the checkout
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def api_server(session_tmp):
    """The API as `cbir api` runs it, on its own Redis (other tests flush the shared one)."""
    import sys

    redis = RedisServer(session_tmp / "redis-api").start()
    port = free_port()
    server = ServiceProcess(
        [sys.executable, "-m", "cbir", "api", "--port", str(port)], port,
        service_env(redis.url, session_tmp / "api", CBIR_LOGIN_RATE="1000"), session_tmp / "api.log",
    ).start()
    server.redis = redis
    yield server
    server.stop()
    redis.stop()


@pytest.fixture(scope="session")
def app_server(session_tmp):
    """The Streamlit app on loopback with its own real Redis."""
    import sys

    redis = RedisServer(session_tmp / "redis-app").start()
    features = session_tmp / "app-features"  # its own copy: what the app writes (imports) never reaches the checkout
    shutil.copytree(ROOT / "features", features)
    port = free_port()
    server = ServiceProcess(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        # many tests log in from 127.0.0.1 within a minute: the login rate limit is tested on the API
        port, service_env(redis.url, session_tmp / "app", CBIR_LOGIN_RATE="1000", CBIR_FEATURES_DIR=str(features)),
        session_tmp / "app.log", ready_path="/_stcore/health",
    ).start()
    server.redis, server.features, server.collections_root = redis, features, session_tmp / "app" / "collections"
    yield server
    server.stop()
    redis.stop()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


# -- comparing what two computation paths return ---------------------------------------
#: Scores closer than this are ties. A float32 matrix product of the same rows differs in the
#: last bits with the batch size and with the BLAS kernel OpenBLAS picks for the CPU (Haswell
#: and Zen kernels differ from SkylakeX ones), which is enough to swap two images whose
#: distances agree to ~1e-7. Tests of two paths (chunked vs one pass, batch sizes, backends)
#: compare rankings up to such ties and figures within a stated tolerance, never bit for bit.
TIE = 1e-6


def _pairs(hits) -> list[tuple[str, float]]:
    out = []
    for h in hits:
        if isinstance(h, dict):
            out.append((h["id"], float(h["score"])))
        else:
            out.append((h.id, float(h.score)))
    return out


def assert_same_ranking(hits_a, hits_b, tie: float = TIE) -> None:
    """Two top-k lists (``Hit`` objects or their dicts) agree except where scores are tied.

    Where the ids at a rank differ, each of the two images has, in the other list, a score
    within ``tie`` of the score found at that rank. Scores are compared within each list, so
    two lists on different scales (a fused list and one model's) can be compared; an image
    pushed past the end of the other list is compared across the lists (same scale)."""
    a, b = _pairs(hits_a), _pairs(hits_b)
    assert len(a) == len(b), (len(a), len(b))
    rank_a = {i: r for r, (i, _) in enumerate(a)}
    rank_b = {i: r for r, (i, _) in enumerate(b)}
    for r, ((ia, _), (ib, _)) in enumerate(zip(a, b)):
        if ia == ib:
            continue
        for image, ranks, scores, other in ((ia, rank_b, b, a), (ib, rank_a, a, b)):
            elsewhere = ranks.get(image)
            if elsewhere is None:  # pushed past the end: its score in its own list vs this one's here
                here, there = scores[r][1], other[r][1]
            else:
                here, there = scores[r][1], scores[elsewhere][1]
            assert abs(there - here) <= tie, (
                f"rank {r + 1}: {ia!r} vs {ib!r} are not tied (scores {here:.9g} vs {there:.9g}, tie {tie})")


def assert_same_figures(ap_a, ap_b, map_tol: float = 1e-5, share: float = 0.01) -> None:
    """Per-query average precision of two paths: mAP within ``map_tol``, and at most ``share``
    of the queries differ at all (a near tie swapped; one swap at rank r moves a query's AP by
    at most 1/(R*r), R relevant images)."""
    ap_a, ap_b = np.asarray(ap_a, float), np.asarray(ap_b, float)
    assert ap_a.shape == ap_b.shape
    assert abs(ap_a.mean() - ap_b.mean()) <= map_tol, (ap_a.mean(), ap_b.mean())
    differ = np.flatnonzero(np.abs(ap_a - ap_b) > 1e-12)
    assert differ.size <= max(1, int(share * ap_a.size)), (differ[:10], (ap_a - ap_b)[differ[:10]])
