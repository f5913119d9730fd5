"""Deployment: the Docker files parsed, the project's nginx.conf run by Debian nginx in front
of the real API and app on loopback, and `make run` itself on a fresh copy of the checkout."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, wait_for_port
from tests.integration.test_app_browser import logged_in

ROOT = Path(__file__).resolve().parents[2]


# -- Docker files ----------------------------------------------------------------------
def test_compose_file():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    core = {name for name, s in services.items() if not s.get("profiles")}
    assert core == {"redis", "app", "api", "nginx"}
    # the milvus profile: the official standalone layout, wired to the app and the API
    milvus = {name for name, s in services.items() if s.get("profiles") == ["milvus"]}
    assert milvus == {"etcd", "minio", "milvus"}
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert services["milvus"]["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert all(services[n]["environment"]["CBIR_MILVUS_URI"] == "http://milvus:19530" for n in ("api", "app"))
    assert not any(services[n].get("ports") for n in milvus)
    # the dask profile: a scheduler and workers from the project's image, dashboard unpublished
    dask = {name for name, s in services.items() if s.get("profiles") == ["dask"]}
    assert dask == {"scheduler", "dask-worker"}
    assert all(services[n]["image"] == services["api"]["image"] for n in dask)  # same image, same non-root user
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"] and not services["scheduler"].get("ports")
    worker = services["dask-worker"]
    assert worker["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert "./image.orig:/app/image.orig:ro" in worker["volumes"]  # the collection at the app's path
    assert worker["environment"]["TF_NUM_INTEROP_THREADS"] == "1"
    assert all(services[n]["environment"]["CBIR_DASK_SCHEDULER"] == "tcp://scheduler:8786" for n in ("api", "app"))
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in services["redis"]["command"] and "redis_data:/data" in services["redis"]["volumes"]
    assert set(compose["volumes"]) == {"redis_data", "models_cache", "features", "etcd_data", "minio_data", "milvus_data"}
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx"}
    assert services["nginx"]["ports"][0].endswith(":80")
    for name, s in services.items():
        assert "healthcheck" in s, name
        assert list(s["networks"]) == ["internal"], name
    assert set(compose["networks"]) == {"internal"}
    # the API believes X-Forwarded-For only from nginx's fixed address
    nginx_ip = services["nginx"]["networks"]["internal"]["ipv4_address"]
    assert services["api"]["environment"]["CBIR_TRUSTED_PROXIES"] == nginx_ip
    assert nginx_ip.startswith(compose["networks"]["internal"]["ipam"]["config"][0]["subnet"].rsplit(".", 1)[0])
    for name in ("app", "api"):
        s = services[name]
        assert "./image.orig:/app/image.orig:ro" in s["volumes"]
        assert {"features:/app/features", "models_cache:/app/models_cache"} <= set(s["volumes"])
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert s["env_file"] == ".env"
        assert s["environment"]["CBIR_REDIS_URL"] == "redis://redis:6379/0"
    assert all(d["condition"] == "service_healthy" for d in services["nginx"]["depends_on"].values())
    assert services["nginx"]["environment"]["APP_UPSTREAM"] == "app:8501"
    assert services["nginx"]["environment"]["API_UPSTREAM"] == "api:8000"
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])
    assert (ROOT / ".env.example").exists()
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    example = (ROOT / ".env.example").read_text()
    assert "CBIR_SECRET_KEY" in example and "CBIR_ADMIN_PASSWORD" in example and "CBIR_DEMO=0" in example
    from cbir.config import PLACEHOLDER_SECRETS

    value = next(l.split("=", 1)[1] for l in example.splitlines() if l.startswith("CBIR_SECRET_KEY="))
    assert value in PLACEHOLDER_SECRETS  # refused at start-up until replaced


def test_dockerfile():
    lines = [l.strip() for l in (ROOT / "Dockerfile").read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    text = "\n".join(lines)
    users = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"HEALTHCHECK .*http://127\.0\.0\.1:8000/health", text, re.S)
    assert "ARG PREFETCH_WEIGHTS" in text and "cbir weights download" in text
    # dependencies are installed before the code is copied (a cached layer)
    deps = next(i for i, l in enumerate(lines) if "pip install ." in l)
    code = next(i for i, l in enumerate(lines) if l.startswith("COPY cbir"))
    assert deps < code
    assert (ROOT / ".dockerignore").exists() and ".venv" in (ROOT / ".dockerignore").read_text()


# -- nginx in front of the real services --------------------------------------------------
def render_template(text: str, env: dict) -> str:
    """What the nginx image does with templates: envsubst limited to the variables given."""
    return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), text)


@pytest.fixture
def nginx(tmp_path, api_server, app_server):
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    env = {"APP_UPSTREAM": f"127.0.0.1:{app_server.port}", "API_UPSTREAM": f"127.0.0.1:{api_server.port}", "NGINX_PORT": f"127.0.0.1:{port}"}
    site = tmp_path / "default.conf"
    site.write_text(render_template((ROOT / "nginx.conf").read_text(), env))
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / d).mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/client_body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {site};
}}
""")
    check = subprocess.run([exe, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([exe, "-c", str(main), "-p", str(tmp_path), "-g", "daemon off;"], stderr=subprocess.PIPE)
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)  # fast shutdown: a graceful one (SIGQUIT) waits for open websockets
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fetch(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()




@pytest.mark.nginx
def test_health_search_and_headers_through_nginx(nginx):
    status, headers, body = fetch(nginx + "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["Server"] == "nginx"  # no version
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "SAMEORIGIN"
    assert headers["Referrer-Policy"]
    assert "frame-ancestors" in headers["Content-Security-Policy"]
    status, _, body = fetch(nginx + "/api/login", json.dumps({"username": "researcher", "password": "umons2024"}).encode(),
                            {"content-type": "application/json"})
    assert status == 200
    token = json.loads(body)["access_token"]
    status, headers, body = fetch(nginx + "/api/search", json.dumps({"image_id": "601", "top_k": 5}).encode(),
                                  {"content-type": "application/json", "authorization": f"Bearer {token}", "accept-encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    import gzip

    data = json.loads(gzip.decompress(body))
    assert [h["label"] for h in data["models"]["efficientnet_lite0"]["results"]] == ["flowers"] * 5
    assert fetch(nginx + "/openapi.json")[0] == 200 and fetch(nginx + "/docs")[0] == 200
    assert fetch(nginx + "/metrics")[0] == 404  # never public through nginx
    # over the upload limit: nginx refuses before the API sees it
    status, _, _ = fetch(nginx + "/api/search", b"x" * (11 * 2**20), {"content-type": "multipart/form-data; boundary=x", "authorization": f"Bearer {token}"})
    assert status == 413


def _declared_only(base: str, path: str, length: int) -> int:
    """The status nginx answers to a PUT that declares ``length`` bytes, before any is sent."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("PUT", path)
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.nginx
def test_the_app_upload_route_takes_a_zip_and_nothing_else_does(nginx):
    """Streamlit's upload route allows the zip limit (CBIR_ZIP_MAX_MB, 200 MB); every other
    route keeps 10 MB. Past 200 MB nginx refuses from the header alone."""
    status, _, _ = fetch(nginx + "/_stcore/upload_file/no-session/no-file", b"x" * (20 * 2**20),
                         {"content-type": "multipart/form-data; boundary=x"}, method="PUT")
    assert status != 413 and status < 500  # through nginx: Streamlit itself refuses an unknown session
    assert _declared_only(nginx, "/_stcore/upload_file/s/f", 201 * 2**20) == 413
    assert _declared_only(nginx, "/api/collections", 11 * 2**20) == 413


@pytest.mark.nginx
def test_forged_forwarded_for_is_replaced_by_nginx(nginx, api_server):
    import redis as redis_lib

    fetch(nginx + "/api/login", json.dumps({"username": "forged-check", "password": "x"}).encode(),
          {"content-type": "application/json", "X-Forwarded-For": "6.6.6.6"})
    log = [json.loads(e) for e in redis_lib.Redis(port=api_server.redis.port).lrange("cbir:auth:log:attempts", 0, 100)]
    entry = next(e for e in log if e["username"] == "forged-check")
    assert entry["source"] == "api:127.0.0.1"  # the address nginx saw, not the one the client claimed


@pytest.mark.nginx
def test_login_burst_is_rate_limited_by_nginx(nginx):
    codes = []
    for _ in range(20):
        status, headers, body = fetch(nginx + "/api/login", json.dumps({"username": "nobody-here", "password": "x"}).encode(),
                                      {"content-type": "application/json"})
        codes.append(status)
    assert codes[0] == 401 and 429 in codes
    assert json.loads(body)["error"].startswith("too many requests")


@pytest.mark.nginx
@pytest.mark.browser
def test_streamlit_renders_through_nginx(nginx, browser):
    """The login form appears only after the websocket (/_stcore/stream) worked through nginx."""
    context = browser.new_context()
    page = context.new_page()
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.set_default_timeout(60_000)
    page.goto(nginx + "/")
    page.get_by_label("Username").wait_for()
    logged_in(page, "student", "multimedia")  # retries a click the cold app's first run dropped
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
    context.close()


# -- make run ----------------------------------------------------------------------------
def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = ROOT / f.decode()
        if src.is_file():
            target = dest / f.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _processes(cmdline_has: str | None = None, environ_has: str | None = None) -> list[str]:
    """Processes (but this one) whose command line holds ``cmdline_has`` or whose environment
    holds the entry ``environ_has`` (every child of a run inherits it), as "pid: command"."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (Path("/proc") / pid / "environ").read_bytes().split(b"\0") if environ_has else []
        except OSError:
            continue
        if (cmdline_has and cmdline_has in cmd) or (environ_has and environ_has.encode() in env):
            found.append(f"{pid}: {cmd[:200]}")
    return found


def _processes_under(path: Path) -> list[str]:
    return _processes(cmdline_has=str(path))


@pytest.mark.slow
def test_make_run_on_a_fresh_copy(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert free > 6 * 2**30, f"make run on a fresh copy installs a whole virtual environment (~3 GB): {free / 2**30:.1f} GiB free in {tmp_path.parent}, free some first"
    checkout = tmp_path / "checkout"
    _copy_checkout(checkout)
    assert not (checkout / ".venv").exists()
    api_port, app_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CBIR_", "VIRTUAL_ENV", "KERAS_HOME"))}
    env.update(CBIR_API_PORT=str(api_port), CBIR_APP_PORT=str(app_port))
    log = tmp_path / "make-run.log"
    proc = subprocess.Popen(["make", "run"], cwd=checkout, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        up = False
        while time.time() < deadline and proc.poll() is None:
            if "press Ctrl-C to stop" in log.read_text(errors="replace"):
                up = True
                break
            time.sleep(1)
        text = log.read_text(errors="replace")
        assert up, text[-3000:]
        assert fetch(f"http://127.0.0.1:{api_port}/health")[0] == 200
        assert fetch(f"http://127.0.0.1:{app_port}/_stcore/health")[0] == 200
        assert f"http://127.0.0.1:{app_port}" in text and f"http://127.0.0.1:{api_port}" in text
        assert "researcher/umons2024" in text
        status, _, body = fetch(f"http://127.0.0.1:{api_port}/api/login", json.dumps({"username": "admin", "password": "password123"}).encode(), {"content-type": "application/json"})
        assert status == 200
        assert _processes_under(checkout), "expected the services to run from the copy"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 30  # the group got SIGINT together: make may exit before its children finish
    while _processes_under(checkout) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_under(checkout) == []
    assert "stopped" in log.read_text(errors="replace")
    shutil.rmtree(checkout)  # its virtual environment: ~3 GB the next tests may need


def test_ctrl_c_during_a_cold_start_stops_everything(tmp_path):
    """Ctrl-C while `make run` waits for the API's workers to warm up: it stopped only once the
    API was ready (25 s later), printing the URLs first; now it stops at once."""
    import sys

    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBIR_")}
    env.update(CBIR_VAR_DIR=str(var), CBIR_DEMO="1", CBIR_API_PORT=str(free_port()), CBIR_APP_PORT=str(free_port()))
    marker = f"CBIR_VAR_DIR={var}"
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "cbir.run"], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "waiting for every API worker" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        time.sleep(1)  # the API is starting, its workers still building their models
        t = time.time()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        proc.wait(60)
        seconds = time.time() - t
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert "press Ctrl-C to stop" not in text and "App:" not in text, text[-2000:]
    assert seconds < 20, (seconds, text[-2000:])
    deadline = time.time() + 30
    while _processes(environ_has=marker) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes(environ_has=marker) == []
    assert "stopped" in text
