"""Ready means ready: /ready answers 200 only when every API worker has built its default
model and run a search through it, so the first upload searches right after are at normal speed."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from fastapi.testclient import TestClient

from cbir.api.app import create_app
from tests.conftest import COLLECTION, ROOT, RedisServer, free_port, make_settings, service_env

pytestmark = pytest.mark.redis


def test_ready_counts_warm_workers(fresh_redis, tmp_path):
    """Each warm worker leaves a marker named by its pid; /ready wants CBIR_API_WORKERS live ones."""
    folder = tmp_path / "warm"
    app = create_app(make_settings(fresh_redis.url, tmp_path, api_workers=2), warm_up=False, workers_dir=folder)
    with TestClient(app) as client:
        assert (folder / str(os.getpid())).exists()  # this process finished its start-up
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["workers_warm"] == "1/2" and "1 of 2 API workers" in r.json()["error"]
        dead = subprocess.Popen(["true"])
        dead.wait()
        (folder / str(dead.pid)).touch()  # a worker that died after warming up does not count
        assert client.get("/ready").status_code == 503
        sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            (folder / str(sibling.pid)).touch()
            r = client.get("/ready")
            assert r.status_code == 200 and r.json()["workers_warm"] == "2/2", r.text
        finally:
            sibling.kill()
            sibling.wait()


def upload(url: str, token: str, path) -> float:
    """Seconds for one upload search of ``path``."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n5\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/api/search", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {token}"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
        r.read()
    return time.perf_counter() - t


def test_first_upload_search_after_ready_is_at_normal_speed(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "cbir", "api", "--port", str(port), "--workers", "2"],
                            env=service_env(redis.url, tmp_path, CBIR_LOGIN_RATE="1000", CBIR_CACHE="0"),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        t0 = time.perf_counter()
        deadline = time.time() + 240
        while True:  # the first 200 of /ready
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        cold = time.perf_counter() - t0
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:  # every worker's, aggregated
            text = r.read().decode()
        assert "cbir_warm_up_seconds_count 2.0" in text, [line for line in text.splitlines() if "warm" in line]
        req = urllib.request.Request(url + "/api/login", json.dumps({"username": "researcher", "password": "umons2024"}).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            token = json.loads(r.read())["access_token"]
        # two workers: the first searches may land on either, and neither may be cold
        first = [upload(url, token, COLLECTION / f"{i}.jpg") for i in (12, 130)]
        warm = min(upload(url, token, COLLECTION / f"{i}.jpg") for i in (305, 410, 520, 640))
        print(f"cold start to ready {cold:.1f} s; first upload searches {first[0]:.2f} s, {first[1]:.2f} s, warm {warm:.2f} s")
        assert max(first) < 3 * warm + 1.0, (first, warm)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        try:  # the server's group, by its pid: its workers too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        redis.stop()


def test_a_killed_worker_is_not_counted_while_it_is_a_zombie():
    """A worker killed by SIGKILL stays a zombie until uvicorn reaps it; signal 0 still reaches
    it, so /ready counted it as warm for 4-6 s."""
    import subprocess
    import time

    from cbir.api.readiness import alive as _alive

    child = subprocess.Popen(["sleep", "30"])
    assert _alive(str(child.pid))
    child.kill()
    deadline = time.time() + 10
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":  # dead, not reaped
        assert time.time() < deadline
        time.sleep(0.05)
    try:
        assert not _alive(str(child.pid))
    finally:
        child.wait()
