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


def service_env(redis_url: str, tmp: Path, **extra) -> dict:
    import sys

    env = {
        **os.environ,
        "CBIR_REDIS_URL": redis_url,
        "CBIR_DEMO": "1",
        "CBIR_COLLECTION": str(COLLECTION),
        "CBIR_FEATURES_DIR": str(ROOT / "features"),
        "CBIR_VAR_DIR": str(tmp / "var"),
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
    server.redis, server.features = redis, features
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
