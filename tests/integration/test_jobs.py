"""Long jobs over the API: the sweep's step and work bounds, the per-user limit on sweeps and
map fits (429 + Retry-After, across workers through Redis), cancellation when the client
goes, and a SIGTERM that ends `cbir api` in seconds during a sweep."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient

from cbir.api.app import create_app
from tests.conftest import ROOT, RedisServer, api_login, free_port, make_settings, service_env

pytestmark = pytest.mark.redis

TWO = ["efficientnet_lite0", "efficientnet_lite1"]
THREE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture
def client(fresh_redis, tmp_path):
    # a features folder of its own, with no cached map: a map request there is a fit
    features = tmp_path / "features" / "image.orig"
    for m in TWO:
        shutil.copytree(ROOT / "features" / "image.orig" / m, features / m, ignore=shutil.ignore_patterns("map-*", "centred_*", "dba-*"))
    app = create_app(make_settings(fresh_redis.url, tmp_path, features_dir=tmp_path / "features", sweep_max_work=10**9),
                     warm_up=False)
    with TestClient(app) as c:
        yield c


login = api_login


@pytest.mark.parametrize("step", [5e-324, 1e-300, 0.001, 0.75, -0.1, 0.3, 0.1000000001])
def test_odd_steps_are_a_plain_422(client, step):
    r = client.post("/api/tune_weights", json={"models": TWO, "step": step}, headers=login(client))
    assert r.status_code == 422, r.text
    assert "0.01" in r.json()["error"] or "0.5" in r.json()["error"] or "divide 1" in r.json()["error"]
    assert len(r.text) < 1000 and "000000000" not in r.text  # no 300-digit number
    if step == 0.1000000001:
        assert "got 0.1000000001" in r.json()["error"]  # not "got 0.1"


def test_sweep_over_the_work_bound_is_refused_before_any_work(client):
    client.app.state.service.engine.settings.sweep_max_work = 15_000_000  # 6 million fused + 12.8 million matrices
    t = time.perf_counter()
    r = client.post("/api/tune_weights", json={"models": TWO, "step": 0.5}, headers=login(client))
    assert r.status_code == 422 and "CBIR_SWEEP_MAX_WORK" in r.json()["error"], r.text
    assert "19 million" in r.json()["error"] and "15 million" in r.json()["error"]
    assert time.perf_counter() - t < 5  # refused, not computed (a 3-point sweep computes two 1000² matrices first)


def test_jobs_per_user_across_workers(client):
    """A slot taken in Redis (as by another API worker) makes this user's sweep and map fit a
    429 with Retry-After; another user, and a cached map, are not limited; an expired lease
    (a worker that died with it) frees its slot."""
    from cbir.jobs import LEASE_SECONDS, UserSlots

    researcher, student = login(client), login(client, "student", "multimedia")
    other_worker = UserSlots(client.app.state.redis, limit=1)
    token = other_worker.acquire("researcher")
    r = client.post("/api/tune_weights", json={"models": TWO, "step": 0.5}, headers=researcher)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "CBIR_JOBS_PER_USER" in r.json()["error"], r.text
    r = client.get("/api/map", params={"model": TWO[0], "method": "pca"}, headers=researcher)
    assert r.status_code == 429, r.text  # not cached yet: a fit
    assert client.post("/api/tune_weights", json={"models": TWO, "step": 0.5}, headers=student).status_code == 200
    other_worker.release("researcher", token)

    assert client.get("/api/map", params={"model": TWO[0], "method": "pca"}, headers=researcher).status_code == 200  # fitted
    assert other_worker.held("researcher") == 0  # released when the job ended
    token = other_worker.acquire("researcher")
    r = client.get("/api/map", params={"model": TWO[0], "method": "pca"}, headers=researcher)
    assert r.status_code == 200 and r.json()["seconds"] == 0  # cached: read, not limited

    # a lease that was not renewed (its worker died) is free again after LEASE_SECONDS
    client.app.state.redis.zadd(UserSlots.key("researcher"), {token: time.time() - 1})
    assert client.post("/api/tune_weights", json={"models": TWO, "step": 0.5}, headers=researcher).status_code == 200
    assert LEASE_SECONDS <= 60


# -- a real server: disconnect and SIGTERM ---------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children processes (the uvicorn workers)."""
    total = 0.0
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            pids += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


class Api:
    def __init__(self, tmp, workers: int = 1, **env):
        self.redis = RedisServer(tmp / "redis").start()
        self.port = free_port()
        self.log = tmp / "api.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cbir", "api", "--port", str(self.port), "--workers", str(workers)],
            env=service_env(self.redis.url, tmp, CBIR_LOGIN_RATE="1000", CBIR_PRELOAD_MODEL="0",
                            CBIR_SWEEP_MAX_WORK=str(10**12), **env),
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(self.log.read_text()[-2000:])

    def token(self) -> str:
        req = urllib.request.Request(self.url + "/api/login", json.dumps({"username": "researcher", "password": "umons2024"}).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["access_token"]

    def start_sweep(self) -> socket.socket:
        """A sweep of 1326 points (three models, step 0.02; minutes of CPU), its response not awaited."""
        body = json.dumps({"models": THREE, "step": 0.02}).encode()
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(b"POST /api/tune_weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {self.token()}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return sock

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:  # the server's group, by its pid: workers a failed shutdown left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.redis.stop()


def busy(pid: int, seconds: float) -> float:
    """CPU seconds ``pid`` (with its workers) burns in the next ``seconds``."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


@pytest.fixture
def api(tmp_path):
    server = Api(tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_a_sweep_stops_when_its_client_disconnects(api):
    sock = api.start_sweep()
    assert busy(api.proc.pid, 2.0) > 0.5  # computing
    sock.close()
    time.sleep(1.5)  # a poll (0.2 s) and one grid point
    assert busy(api.proc.pid, 2.0) < 0.5, api.log.read_text()[-2000:]
    assert "cancelled after" in api.log.read_text()
    with urllib.request.urlopen(api.url + "/metrics", timeout=10) as r:
        assert 'cbir_long_jobs_total{outcome="cancelled"} 1.0' in r.read().decode()


def test_sigterm_ends_the_api_within_seconds_during_a_sweep(tmp_path):
    server = Api(tmp_path, workers=2)
    try:
        server.wait_ready()
        sock = server.start_sweep()
        assert busy(server.proc.pid, 2.0) > 0.5
        t = time.perf_counter()
        os.kill(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`cbir api` still running 15 s after SIGTERM: {server.log.read_text()[-1500:]}")
        seconds = time.perf_counter() - t
        sock.settimeout(5)
        try:
            answer = sock.recv(65536).decode(errors="replace")
        except OSError:
            answer = ""
        sock.close()
        assert seconds < 10, seconds  # CBIR_SHUTDOWN_SECONDS (3) + one grid point + exit
        # the client is told, in JSON (it got a bare "Internal Server Error" 500), and the
        # user's slot is free at once (it stayed in Redis until its lease ran out)
        assert answer.startswith("HTTP/1.1 503") and '"error"' in answer and "stopping" in answer, answer[:500]
        import redis as redis_lib

        from cbir.jobs import UserSlots

        assert UserSlots(redis_lib.Redis.from_url(server.redis.url, decode_responses=True), 1).held("researcher") == 0
    finally:
        server.stop()


def test_a_map_fit_stops_at_its_next_step_once_cancelled(tmp_path):
    """t-SNE calls progress every 50 iterations (UMAP every epoch bar refresh): a cancelled
    job raises there, and nothing is cached."""
    from cbir.config import Settings
    from cbir.engine import Engine
    from cbir.errors import Cancelled
    from cbir.jobs import Job
    from cbir.maps import embedding_map, map_cached
    from tests.conftest import COLLECTION

    features = tmp_path / "features" / "image.orig" / TWO[0]
    shutil.copytree(ROOT / "features" / "image.orig" / TWO[0], features, ignore=shutil.ignore_patterns("map-*", "centred_*", "dba-*"))
    engine = Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=tmp_path / "features", var_dir=tmp_path / "var"))
    seen = []
    job = Job(lambda done, total: (seen.append(done), job.cancel()))
    with pytest.raises(Cancelled):
        embedding_map(engine, TWO[0], "tsne", None, job.progress)
    assert seen == [50]  # the first callback ran, the second stopped the fit
    assert not map_cached(engine, TWO[0], "tsne") and not list(features.glob("*map-*"))


# -- the app shares the per-user limit --------------------------------------------------------

def test_the_app_counts_its_sweeps_and_map_fits_with_the_api(fresh_redis, monkeypatch):
    """A second tab (or an API call) while a sweep runs in the app: the app's long job takes
    one of the user's slots in Redis, so a second one is refused with the setting named, and
    the slot is free again when the job ends."""
    from streamlit.testing.v1 import AppTest

    from cbir.config import reset_settings
    from cbir.jobs import UserSlots
    from cbir.redisdb import get_redis

    monkeypatch.setenv("CBIR_REDIS_URL", fresh_redis.url)
    reset_settings()

    def page():
        import streamlit as st

        from app_pages.common import long_job_slot, show_error

        seen = []
        try:
            with long_job_slot(lambda done, total: seen.append(done)) as progress:
                progress(1, 2)
                st.session_state["held_inside"] = True
                with long_job_slot(lambda done, total: None):  # the same user again, at once
                    st.session_state["second_ran"] = True
        except Exception as exc:
            show_error(exc)
        st.session_state["seen"] = seen

    try:
        at = AppTest.from_function(page, default_timeout=60)
        at.session_state["username"] = "researcher"
        at.session_state["roles"] = ["researcher"]
        at.run()
        assert at.session_state["held_inside"] and "second_ran" not in at.session_state
        assert at.session_state["seen"] == [1]
        [error] = at.error
        assert "CBIR_JOBS_PER_USER" in error.value, error.value
        assert UserSlots(get_redis(), 1).held("researcher") == 0  # released when the job ended
    finally:
        monkeypatch.delenv("CBIR_REDIS_URL")
        reset_settings()
