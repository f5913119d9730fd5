"""One embedded redis-server per data folder, shared by every process that uses it, stopped
when the last owner exits (however it exits), never orphaned; or kept on purpose."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import COLLECTION, ROOT, ServiceProcess, free_port

pytestmark = pytest.mark.redis

OWNER = """
import sys, time
from cbir.config import Settings
from cbir.redisdb import get_redis
r = get_redis(Settings(var_dir=sys.argv[1]))
r.incr("owners")
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""


def redis_servers(var: Path) -> list[int]:
    """Pids of redis-server processes serving ``var``'s embedded folder."""
    needle = str((var / "redis").resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # redis-server retitles itself "redis-server unixsocket:<folder>/redis.sock"
        if cmd and b"redis-server" in cmd[0] and any(needle.encode() in part for part in cmd):
            pids.append(int(proc.name))
    return pids


def supervisors(var: Path) -> list[int]:
    needle = str((var / "redis").resolve()).encode()
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"cbir.redis_server" in cmd and needle in cmd:
                out.append(int(proc.name))
    return out


def wait_none_left(var: Path, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and (redis_servers(var) or supervisors(var)):
        time.sleep(0.1)
    left = redis_servers(var) + supervisors(var)
    for pid in left:  # never leave a process behind, even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def owners(var: Path, n: int, hold: float) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", OWNER, str(var), str(hold)], stdout=subprocess.PIPE, cwd=ROOT) for _ in range(n)]
    for p in procs:
        assert p.stdout.readline().strip() == b"ready"
    return procs


def test_owners_share_one_server_that_stops_with_the_last(tmp_path):
    var = tmp_path / "var"
    procs = owners(var, 4, hold=3)  # started at the same moment
    assert len(redis_servers(var)) == 1
    for p in procs:
        p.wait(30)
    wait_none_left(var)
    # the data survived the stop: a new owner starts a new server on the same file
    again = owners(var, 1, hold=0)
    again[0].wait(30)
    import redis

    wait_none_left(var)
    assert (var / "redis" / "cbir.db").exists()
    procs = owners(var, 1, hold=2)
    client = redis.Redis(unix_socket_path=str(var / "redis" / "redis.sock"))
    assert int(client.get("owners")) == 6
    client.close()
    procs[0].wait(30)
    wait_none_left(var)


def test_the_dump_of_password_hashes_and_its_folder_are_private(tmp_path):
    """Under the usual umask 022, and with a folder made before the rule, the RDB file of
    users' bcrypt hashes is 0600 and its folder 0700, as the cookie secret is."""
    var = tmp_path / "var"
    (var / "redis").mkdir(parents=True)
    os.chmod(var / "redis", 0o755)
    saved = os.umask(0o022)
    try:
        [p] = owners(var, 1, hold=0)  # its server saves the dump when it stops
        p.wait(30)
        wait_none_left(var)
    finally:
        os.umask(saved)
    dump = var / "redis" / "cbir.db"
    assert dump.exists() and oct(dump.stat().st_mode & 0o777) == oct(0o600)
    assert oct((var / "redis").stat().st_mode & 0o777) == oct(0o700)


def test_an_owner_killed_with_sigkill_still_releases_the_server(tmp_path):
    var = tmp_path / "var"
    [p] = owners(var, 1, hold=600)
    assert len(redis_servers(var)) == 1
    p.kill()
    p.wait()
    wait_none_left(var)


def test_supervisor_killed_takes_redis_with_it(tmp_path):
    var = tmp_path / "var"
    [p] = owners(var, 1, hold=600)
    [sup] = supervisors(var)
    os.kill(sup, signal.SIGKILL)
    try:
        wait_none_left(var, timeout=10)  # PR_SET_PDEATHSIG: redis-server follows its supervisor
    finally:
        p.kill()
        p.wait()


def test_kept_server_is_reused_and_stopped_on_request(tmp_path):
    var = tmp_path / "var"
    env = {**os.environ, "CBIR_VAR_DIR": str(var)}
    cli = [sys.executable, "-m", "cbir", "redis"]
    out = subprocess.run(cli + ["start"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "started" in out.stdout, out.stderr
    try:
        [server] = redis_servers(var)
        for p in owners(var, 2, hold=0):
            p.wait(30)
        time.sleep(1)
        assert redis_servers(var) == [server]  # no owner left, but kept on purpose
        status = subprocess.run(cli + ["status"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert status.returncode == 0 and "running" in status.stdout
    finally:
        stop = subprocess.run(cli + ["stop"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert stop.returncode == 0, stop.stderr
    wait_none_left(var)
    status = subprocess.run(cli + ["status"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert status.returncode == 1 and "not running" in status.stdout


def _env(var: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CBIR_REDIS_URL"}
    env.update(CBIR_DEMO="1", CBIR_COLLECTION=str(COLLECTION), CBIR_FEATURES_DIR=str(ROOT / "features"),
               CBIR_VAR_DIR=str(var), CBIR_PRELOAD_MODEL="0", PYTHONUNBUFFERED="1", PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return env


@pytest.mark.slow
def test_api_with_two_workers_uses_one_embedded_redis(tmp_path):
    """Three cold starts of `cbir api --workers 2` (before the fix, 10 orphans in 5 starts):
    every search answered, nothing left after each stop. `python bench/hardening.py` runs 5."""
    answered = 0
    for start in range(3):
        var = tmp_path / f"var{start}"
        port = free_port()
        api = ServiceProcess([sys.executable, "-m", "cbir", "api", "--port", str(port), "--workers", "2"], port,
                             _env(var), tmp_path / f"api{start}.log")
        try:
            api.start()
            with httpx.Client(base_url=api.url, timeout=30) as http:
                # a fresh connection per request: each may land on either worker
                token = http.post("/api/login", json={"username": "researcher", "password": "umons2024"}).json()["access_token"]
                for i in range(20):
                    r = httpx.post(api.url + "/api/search", json={"image_id": str(i * 7)},
                                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
                    answered += r.status_code == 200
            assert len(redis_servers(var)) == 1
        finally:
            api.stop()
        wait_none_left(var)
    assert answered == 60


@pytest.mark.slow
@pytest.mark.browser
def test_api_and_app_started_together_share_one_redis(tmp_path, browser):
    var = tmp_path / "var"
    api_port, app_port = free_port(), free_port()
    api = ServiceProcess([sys.executable, "-m", "cbir", "api", "--port", str(api_port)], api_port, _env(var), tmp_path / "api.log")
    app = ServiceProcess([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(app_port),
                          "--server.address", "127.0.0.1", "--server.headless", "true"], app_port, _env(var),
                         tmp_path / "app.log", ready_path="/_stcore/health")
    # both launched before either is waited for
    api.proc = subprocess.Popen(api.argv, env=api.env, stdout=open(api.log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    app.proc = subprocess.Popen(app.argv, env=app.env, stdout=open(app.log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        for service in (api, app):
            _wait_ready(service)
        # the app reaches Redis when a browser session runs its script (users, login form)
        page = browser.new_page()
        page.goto(app.url)
        page.get_by_label("Username").wait_for(timeout=60_000)
        page.close()
        r = httpx.post(api.url + "/api/login", json={"username": "student", "password": "multimedia"}, timeout=30)
        assert r.status_code == 200
        assert len(redis_servers(var)) == 1
    finally:
        api.stop()
        app.stop()
    wait_none_left(var)


def _wait_ready(service: ServiceProcess, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(service.log.read_text()[-2000:])
        try:
            if httpx.get(service.url + service.ready_path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(service.log.read_text()[-2000:])
