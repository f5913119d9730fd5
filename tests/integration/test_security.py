"""Hardening of the API and the user store, tried as an attacker would: revoked tokens,
request limits, login abuse, password policy, headers, metrics. Real Redis, real images."""

import json
import re
import statistics
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from cbir.api.app import create_app
from cbir.config import PLACEHOLDER_SECRETS, Settings, install_secret
from cbir.errors import UserError
from cbir.auth.users import UserStore
from tests.conftest import COLLECTION, api_login, make_settings

pytestmark = pytest.mark.redis

STRONG = "copper-lantern-9x"


@pytest.fixture
def settings(fresh_redis, tmp_path):
    return make_settings(fresh_redis.url, tmp_path)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, warm_up=False)) as c:
        yield c


@pytest.fixture
def users(fresh_redis):
    return UserStore(redis_lib.Redis.from_url(fresh_redis.url, decode_responses=True))


login = api_login


# -- 3. tokens die with the user's credentials ---------------------------------------------
def test_token_dies_on_password_reset_role_change_and_delete(client, users):
    admin = login(client, "admin", "password123")
    assert client.post("/api/add_user", json={"username": "eve", "password": STRONG, "role": "student"}, headers=admin).status_code == 201
    eve = login(client, "eve", STRONG)
    assert client.get("/api/stats", headers=eve).status_code == 200
    users.set_password("eve", "another-Strong-pass-4", actor="admin")
    assert client.get("/api/stats", headers=eve).status_code == 401  # at once

    eve = login(client, "eve", "another-Strong-pass-4")
    users.set_role("eve", "researcher")
    assert client.get("/api/stats", headers=eve).status_code == 401

    eve = login(client, "eve", "another-Strong-pass-4")
    users.delete("eve")
    assert client.get("/api/stats", headers=eve).status_code == 401
    # re-created with the same name and another role: the old token stays dead
    users.create("eve", STRONG, "admin")
    r = client.get("/api/auth_log", headers=eve)
    assert r.status_code == 401, "an old token must not come back with the new user's role"


def test_failed_token_lookup_changes_nothing(client, users):
    users.token_ttl = 100
    token = users.issue_token("student")
    key = users._token_key(token)
    users.r.expire(key, 50)
    users.set_password("student", "student-Strong-pass-8")
    assert users.user_for_token(token) is None
    assert 0 < users.r.ttl(key) <= 50  # the refused lookup did not slide the expiry


# -- 6. request limits -------------------------------------------------------------------
def test_deeply_nested_json_is_a_400(client):
    headers = login(client)
    deep = "[" * 1000 + "]" * 1000
    r = client.post("/api/search", content=f'{{"image_id": "1", "models": {deep}}}', headers={**headers, "content-type": "application/json"})
    assert r.status_code == 400 and "nested deeper" in r.json()["error"]
    r = client.post("/api/login", content='{"username": ' + deep + "}", headers={"content-type": "application/json"})
    assert r.status_code == 400
    for field in ("weights", "feedback", "rerank"):
        image = (COLLECTION / "3.jpg").read_bytes()
        r = client.post("/api/search_combined", data={"models": "efficientnet_lite0,efficientnet_lite1", field: deep},
                        files={"image": ("q.jpg", image, "image/jpeg")}, headers=headers)
        assert r.status_code == 400 and "nested deeper" in r.json()["error"], (field, r.text)


def _read_response(sock) -> str:
    """One HTTP response, head and body (a loaded machine may send them in separate
    segments), or what came before the server closed the connection."""
    data = b""
    try:
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
            more = sock.recv(65536)
            if not more:
                break
            data += more
    except (ConnectionResetError, TimeoutError):
        pass
    return data.decode(errors="replace")


def test_streamed_body_over_the_limit_is_refused_while_streaming(api_server):
    """100 MB chunked, no Content-Length, to the real server: 413 once past the 10 MB limit."""
    import select
    import socket

    token = httpx.post(api_server.url + "/api/login", json={"username": "student", "password": "multimedia"}).json()["access_token"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2**18)  # small, so the bound below is tight
    sock.settimeout(30)
    sock.connect(("127.0.0.1", api_server.port))
    sock.sendall((f"POST /api/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
    chunk = b"%x\r\n" % 2**20 + b"\0" * 2**20 + b"\r\n"
    sent = 0
    try:
        for _ in range(100):
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            sock.sendall(chunk)
            sent += 2**20
    except (BrokenPipeError, ConnectionResetError):
        pass
    head = _read_response(sock)
    sock_sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    sock.close()
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert "too large" in head
    # refused while streaming, not after reading it all: what was sent past the 10 MB limit
    # fits in the two socket buffers (the server's receive window grows up to tcp_rmem's max)
    buffers = sock_sndbuf + int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    assert sent <= 10 * 2**20 + buffers + 2 * 2**20, f"sent {sent / 2**20:.0f} MB before the refusal"
    assert sent < 100 * 2**20  # answered before the body ended


def test_nan_weights_are_422_and_unknown_feedback_ids_400(client):
    headers = login(client)
    both = ["efficientnet_lite0", "efficientnet_lite1"]
    for method in ("average", "weighted", "rrf"):
        r = client.post("/api/search_combined", content=json.dumps({"image_id": "1", "models": both, "method": method,
                        "weights": {"efficientnet_lite0": float("nan")}}), headers={**headers, "content-type": "application/json"})
        assert r.status_code == 422 and "finite" in r.json()["error"], (method, r.text)  # the parser's RequestError
    r = client.post("/api/search", json={"image_id": "1", "feedback": [{"relevant": ["2", "no-such-id"]}]}, headers=headers)
    assert r.status_code == 400 and "no-such-id" in r.json()["error"]


# -- server paths ----------------------------------------------------------------------------
def test_students_see_no_absolute_server_paths(fresh_redis, tmp_path):
    """A model's status (the models cache is outside the project here) and an error about a
    damaged store named absolute paths to anyone; now only to admins."""
    import shutil

    from tests.conftest import ROOT

    features = tmp_path / "features" / "image.orig"
    for model in ("efficientnet_lite0", "efficientnet_lite1"):
        shutil.copytree(ROOT / "features" / "image.orig" / model, features / model)
    next((features / "efficientnet_lite0").glob("vectors-*.npy")).unlink()  # damaged
    settings = make_settings(fresh_redis.url, tmp_path, features_dir=tmp_path / "features")
    absolute = re.compile(r"(?<![\w:/.])/(tmp|root|home|work|usr|opt|srv)/")
    with TestClient(create_app(settings, warm_up=False)) as c:
        student, admin = login(c, "student", "multimedia"), login(c, "admin", "password123")
        shown = c.get("/api/models", headers=student).text
        assert not absolute.search(shown), shown
        assert "…/efficientnet_lite0" in shown or "lacks the files" in shown
        r = c.post("/api/search", json={"image_id": "1", "models": ["efficientnet_lite0"]}, headers=student)
        assert r.status_code >= 400 and "efficientnet_lite0" in r.json()["error"] and not absolute.search(r.json()["error"]), r.text
        assert str(tmp_path) in c.get("/api/models", headers=admin).text  # an admin still sees where
        r = c.post("/api/search", json={"image_id": "1", "models": ["efficientnet_lite0"]}, headers=admin)
        assert str(features) in r.json()["error"]


def test_public_paths_by_hand(tmp_path):
    from cbir.errors import public_paths

    root = tmp_path / "project"
    assert public_paths(f"no feature store at {root}/features/x/m; run `cbir index` first", root) == \
        "no feature store at features/x/m; run `cbir index` first"
    assert public_paths(f"collection '{root}/images' holds no images.", root) == "collection 'images' holds no images."
    assert public_paths(f"weights in {tmp_path}/cache/w.h5.", root) == "weights in …/w.h5."
    for kept in ("missing bearer token: POST /api/login first", "no Dask scheduler answers at tcp://127.0.0.1:9"):
        assert public_paths(kept, root) == kept  # a route and a URL are not server paths


# -- 7. login abuse ------------------------------------------------------------------------
def test_unknown_user_costs_as_much_as_a_wrong_password(users):
    def timed(name):
        t = time.perf_counter()
        with pytest.raises(Exception):
            users.authenticate(name, "not-the-password")
        return time.perf_counter() - t

    timed("nobody")  # the dummy hash is made once
    known, unknown = [], []
    for i in range(4):  # interleaved, so a burst of load on a shared machine slows both alike
        known.append(timed("student"))
        users.r.delete("cbir:auth:fail:student")  # never reach the lockout
        unknown.append(timed(f"ghost{i}"))
    known, unknown = statistics.median(known), statistics.median(unknown)
    assert unknown > 0.5 * known, f"unknown {unknown * 1000:.1f} ms vs known {known * 1000:.1f} ms"


def test_login_rate_limit_per_client(settings):
    settings = settings.model_copy(update={"login_rate": 5})
    with TestClient(create_app(settings, warm_up=False)) as c:
        codes = [c.post("/api/login", json={"username": f"x{i}", "password": "wrong"}).status_code for i in range(7)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
        r = c.post("/api/login", json={"username": "student", "password": "multimedia"})
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60
        assert "too many login attempts" in r.json()["error"]


@pytest.mark.parametrize("redis_up", [True, False])
def test_login_rate_is_a_sliding_window_across_a_minute_boundary(fresh_redis, monkeypatch, redis_up):
    """5 attempts at 11:59:58 and 5 more at 12:00:01 from one client, with 5 allowed a minute:
    the fixed per-minute window allowed all 10 (its counter reset at 12:00:00)."""
    import cbir.auth.ratelimit

    client = redis_lib.Redis.from_url(fresh_redis.url if redis_up else "redis://127.0.0.1:1/0", decode_responses=True)
    users = UserStore(client, login_rate=5)
    boundary = 60 * 29_000_000.0  # a whole minute
    clock = [boundary - 2.0]
    monkeypatch.setattr(cbir.auth.ratelimit.time, "time", lambda: clock[0])
    before = [users.login_allowed("api:9.9.9.9") for _ in range(5)]
    clock[0] = boundary + 1.0
    after = [users.login_allowed("api:9.9.9.9") for _ in range(5)]
    assert before == [0] * 5 and all(wait > 0 for wait in after), (before, after)
    assert after[0] == 57  # the oldest attempt leaves the window at 12:00:58
    assert users.login_allowed("api:1.1.1.1") == 0  # per client
    clock[0] = boundary + 58.5
    assert users.login_allowed("api:9.9.9.9") == 0  # refused attempts did not extend the block


def test_forwarded_for_only_from_trusted_proxies(settings, users):
    with TestClient(create_app(settings, warm_up=False)) as c:  # the test client is not a trusted proxy
        c.post("/api/login", json={"username": "student", "password": "wrong"}, headers={"X-Forwarded-For": "6.6.6.6"})
    with TestClient(create_app(settings.model_copy(update={"trusted_proxies": "testclient"}), warm_up=False)) as c:
        c.post("/api/login", json={"username": "student", "password": "wrong"}, headers={"X-Forwarded-For": "7.7.7.7"})
    sources = [e["source"] for e in users.auth_log() if e["outcome"] == "failure"]
    assert "api:7.7.7.7" in sources and "api:6.6.6.6" not in sources and "api:testclient" in sources


def test_forwarded_client_is_the_right_most_untrusted_hop():
    from cbir.api.middleware import TrustedProxies, forwarded_client

    proxies = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    assert forwarded_client("203.0.113.9", ["6.6.6.6"], proxies) == "203.0.113.9"  # not a proxy: its header is ignored
    assert forwarded_client("127.0.0.1", ["6.6.6.6, 198.51.100.7"], proxies) == "198.51.100.7"  # the left one is forged
    assert forwarded_client("127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.2.3"], proxies) == "198.51.100.7"  # two proxies
    assert forwarded_client("127.0.0.1", ["6.6.6.6", "198.51.100.7"], proxies) == "198.51.100.7"  # two header lines
    assert forwarded_client("127.0.0.1", ["10.9.9.9, 10.1.2.3"], proxies) == "10.9.9.9"  # every hop a proxy
    assert forwarded_client("127.0.0.1", [], proxies) == "127.0.0.1"
    assert forwarded_client("192.0.2.1", ["6.6.6.6, 198.51.100.7"], TrustedProxies("*")) == "198.51.100.7"  # one hop only


def test_a_spray_through_a_trusted_proxy_rotating_forwarded_for_meets_429(settings):
    """From loopback (a trusted proxy), a new X-Forwarded-For and a new username at every
    attempt: the per-client limit and the per-username lock never met each other's attempts,
    so the spray never met 429; the proxy's failure budget (10 here) stops it."""
    settings = settings.model_copy(update={"trusted_proxies": "testclient", "login_proxy_failures": 10})
    with TestClient(create_app(settings, warm_up=False)) as c:
        codes = [c.post("/api/login", json={"username": f"victim{i}", "password": "Summer2024!"},
                        headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(15)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429] * 5, codes
        r = c.post("/api/login", json={"username": "student", "password": "multimedia"}, headers={"X-Forwarded-For": "10.0.1.1"})
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60 and "through this proxy" in r.json()["error"]
    with TestClient(create_app(settings.model_copy(update={"trusted_proxies": "127.0.0.1"}), warm_up=False)) as c:
        # a direct client (not a proxy) has only its own limits
        assert c.post("/api/login", json={"username": "student", "password": "multimedia"}).status_code == 200


def test_one_username_from_rotating_forwarded_for_is_locked(settings):
    settings = settings.model_copy(update={"trusted_proxies": "testclient"})
    with TestClient(create_app(settings, warm_up=False)) as c:
        codes = [c.post("/api/login", json={"username": "student", "password": "wrong"},
                        headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(15)]
    assert codes[:4] == [401] * 4 and set(codes[4:]) == {429}, codes  # 5 failures from any sources lock the username


def test_auth_log_keeps_lockouts_and_admin_actions_during_a_flood(users):
    users.create("victim", STRONG, actor="admin")
    for _ in range(5):
        with pytest.raises(Exception):
            users.authenticate("victim", "wrong")
    pipe = users.r.pipeline()
    for i in range(12_000):  # a flood of failures, more than the log holds
        pipe.lpush("cbir:auth:log:attempts", json.dumps({"time": time.time(), "event": "login", "username": f"f{i}",
                                                          "source": "api:1.2.3.4", "outcome": "failure", "actor": ""}))
    pipe.execute()
    for i in range(10):
        users.log("login", f"g{i}", "api:1.2.3.4", "failure")
    main = [json.loads(x) for x in users.r.lrange("cbir:auth:log", 0, -1)]
    assert any(e["event"] == "lockout" and e["username"] == "victim" for e in main)
    assert any(e["event"] == "user_created" and e["actor"] == "admin" for e in main)
    assert users.r.llen("cbir:auth:log:attempts") <= 12_010
    newest = users.auth_log(20)
    assert newest[0]["username"] == "g9"  # both lists merged, newest first


# -- 8. password policy --------------------------------------------------------------------
@pytest.mark.parametrize("password", ["aaaaaa", "password", "      ", "bobbybobby", "password123", "aaaaaaaaaaaa"])
def test_weak_passwords_refused(users, password):
    with pytest.raises(UserError, match="password"):
        users.create("bobbybobby", password)
    users.create("carol", STRONG)
    with pytest.raises(UserError, match="password"):
        users.set_password("carol", password)


def test_policy_in_the_api_and_demo_exemption(client, settings, users):
    admin = login(client, "admin", "password123")  # demo accounts exist in demo mode only
    r = client.post("/api/add_user", json={"username": "dave", "password": "dave"}, headers=admin)
    assert r.status_code == 400 and "at least 10" in r.json()["error"]
    r = client.post("/api/add_user", json={"username": "dave", "password": "password1234"}, headers=admin)
    assert r.status_code == 400 and "too weak" in r.json()["error"]


# -- 2. the cookie secret ------------------------------------------------------------------
def test_install_secret_is_random_per_install_and_private(tmp_path):
    a = install_secret(Settings(var_dir=tmp_path / "a"))
    b = install_secret(Settings(var_dir=tmp_path / "b"))
    assert a != b and len(a) >= 48 and a not in PLACEHOLDER_SECRETS
    assert install_secret(Settings(var_dir=tmp_path / "a")) == a  # kept
    assert (tmp_path / "a" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert install_secret(Settings(var_dir=tmp_path / "a", secret_key="z" * 40)) == "z" * 40


# -- 9. headers ----------------------------------------------------------------------------
def test_security_headers_on_api_responses(client):
    for r in (client.get("/health"), client.post("/api/login", json={"username": "x", "password": "y"}), client.get("/openapi.json")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    r = client.post("/api/login", json={"username": "student", "password": "multimedia"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert "cdn.jsdelivr.net" in client.get("/docs").headers["content-security-policy"]


def test_503_says_when_to_retry(tmp_path):
    from tests.conftest import free_port

    dead = make_settings(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with TestClient(create_app(dead, warm_up=False)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        r = c.post("/api/login", json={"username": "student", "password": "multimedia"})
        assert r.status_code == 503 and "retry-after" in r.headers


def test_real_server_sends_no_server_header_and_metrics(api_server):
    r = httpx.get(api_server.url + "/health")
    assert "server" not in r.headers and r.headers["x-frame-options"] == "DENY"
    httpx.post(api_server.url + "/api/login", json={"username": "student", "password": "wrong-one"})
    token = httpx.post(api_server.url + "/api/login", json={"username": "student", "password": "multimedia"}).json()["access_token"]
    for i in range(6):  # spread over both workers
        httpx.post(api_server.url + "/api/search", json={"image_id": str(i)}, headers={"Authorization": f"Bearer {token}"})
    text = httpx.get(api_server.url + "/metrics").text
    searches = [line for line in text.splitlines()
                if line.startswith('cbir_http_requests_total{') and 'route="/api/search"' in line and 'status="200"' in line]
    assert searches and sum(float(line.rsplit(" ", 1)[1]) for line in searches) >= 6
    assert any(line.startswith("cbir_login_failures_total") and float(line.rsplit(" ", 1)[1]) >= 1 for line in text.splitlines())
    assert "cbir_search_seconds_bucket" in text and "cbir_cache_requests_total" in text


def test_metrics_refused_to_remote_clients_without_the_token(settings):
    with TestClient(create_app(settings, warm_up=False)) as c:  # "testclient" is not loopback
        assert c.get("/metrics").status_code == 403
    with TestClient(create_app(settings.model_copy(update={"metrics_token": "m" * 32}), warm_up=False)) as c:
        assert c.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32}).status_code == 200
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
