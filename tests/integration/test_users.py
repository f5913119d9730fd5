import hashlib
import time

import pytest
import redis as redis_lib

from cbir.cache import ResultCache
from cbir.config import PLACEHOLDER_SECRETS, Settings
from cbir.redis_server import embedded_dir, supervisor_pid
from cbir.redisdb import ServiceUnavailable, get_redis, release_embedded
from cbir.auth.bootstrap import DEMO_USERS, bootstrap
from cbir.errors import AuthError, ConfigError, LockedError, UserError
from cbir.auth.users import UserStore

pytestmark = pytest.mark.redis


@pytest.fixture
def users(fresh_redis):
    return UserStore(redis_lib.Redis.from_url(fresh_redis.url, decode_responses=True))


def test_demo_bootstrap_and_login(users, tmp_path):
    created = bootstrap(users, Settings(demo=True, var_dir=tmp_path))
    assert created == [u[0] for u in DEMO_USERS]
    assert bootstrap(users, Settings(demo=True, var_dir=tmp_path)) == []  # only if missing
    for username, password, role, _ in DEMO_USERS:
        assert users.authenticate(username, password).role == role
    stored = users.r.hget("cbir:user:admin", "password")
    assert stored.startswith("$2") and "password123" not in stored


def test_production_refuses_defaults(users, tmp_path):
    with pytest.raises(ConfigError, match="CBIR_ADMIN_PASSWORD"):
        bootstrap(users, Settings(demo=False, var_dir=tmp_path))
    with pytest.raises(ConfigError, match="CBIR_ADMIN_PASSWORD: password too weak"):
        bootstrap(users, Settings(demo=False, admin_password="password123", var_dir=tmp_path))
    for placeholder in PLACEHOLDER_SECRETS:  # published in the repository: refused in every mode
        for demo in (False, True):
            with pytest.raises(ConfigError, match="CBIR_SECRET_KEY"):
                bootstrap(users, Settings(demo=demo, admin_password="Quiet-Harbour-71", secret_key=placeholder, var_dir=tmp_path))
    # no CBIR_SECRET_KEY is fine: a random one is kept in var/secret_key
    s = Settings(demo=False, admin_password="Quiet-Harbour-71", var_dir=tmp_path)
    assert bootstrap(users, s) == ["admin"]
    assert not users.exists("student")
    assert users.authenticate("admin", "Quiet-Harbour-71").role == "admin"


def test_wrong_password_and_unknown_user_say_the_same(users):
    users.create("alice", "rabbit-hole-tea-7", "student")
    with pytest.raises(AuthError, match="wrong username or password"):
        users.authenticate("alice", "nope")
    with pytest.raises(AuthError, match="wrong username or password"):
        users.authenticate("bob", "nope")


def test_lockout_after_five_failures(users):
    users.create("alice", "rabbit-hole-tea-7", "student")
    for _ in range(4):
        with pytest.raises(AuthError) as exc:
            users.authenticate("alice", "bad", source="test")
        assert not isinstance(exc.value, LockedError)
    with pytest.raises(LockedError, match="too many failed logins"):
        users.authenticate("alice", "bad")
    # even the right password is refused while locked
    with pytest.raises(LockedError):
        users.authenticate("alice", "rabbit-hole-tea-7")
    assert 14 * 60 < users.lock_remaining("alice") <= 15 * 60
    log = users.auth_log()
    assert any(e["event"] == "lockout" and e["username"] == "alice" for e in log)
    assert {"time", "username", "source", "outcome"} <= set(log[0])


def test_legacy_hashes_rehashed_on_login(users):
    users.create("old", "mauve-Otter-river", "student")
    salt = "abc"
    users.r.hset("cbir:user:old", "password", f"sha256:{salt}:" + hashlib.sha256((salt + "legacy-pw").encode()).hexdigest())
    users.authenticate("old", "legacy-pw")
    assert users.r.hget("cbir:user:old", "password").startswith("$2")
    users.r.hset("cbir:user:old", "password", "plain-text-pw")
    with pytest.raises(AuthError):
        users.authenticate("old", "wrong")
    assert users.r.hget("cbir:user:old", "password") == "plain-text-pw"  # unchanged on failure
    users.authenticate("old", "plain-text-pw")
    assert users.r.hget("cbir:user:old", "password").startswith("$2")
    assert any(e["event"] == "password_rehashed" for e in users.auth_log())


def test_user_changes(users):
    users.create("bob", "bob-builds-42-Bridges", "researcher", "Bob B", "bob@example.org")
    with pytest.raises(UserError, match="already exists"):
        users.create("bob", "bob-builds-42-Bridges")
    with pytest.raises(UserError, match="unknown role"):
        users.create("carl", "copper-lantern-9x", "king")
    with pytest.raises(UserError, match="at least 10"):
        users.create("carl", "short")
    with pytest.raises(UserError, match="username"):
        users.create("../etc", "copper-lantern-9x")
    users.set_password("bob", "fresh-start-plum-88", actor="admin")
    users.authenticate("bob", "fresh-start-plum-88")
    users.set_role("bob", "admin")
    assert users.get("bob").role == "admin"
    creds = users.credentials()["usernames"]["bob"]
    assert creds["password"].startswith("$2") and creds["roles"] == ["admin"]
    users.delete("bob", actor="admin")
    assert not users.exists("bob")
    events = [e["event"] for e in users.auth_log()]
    assert {"user_created", "password_reset", "role_changed", "user_deleted"} <= set(events)


def test_a_disabled_user_is_refused_and_loses_every_session(users, fresh_redis, tmp_path):
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app
    from cbir.errors import ForbiddenError
    from tests.conftest import make_settings

    users.create("dora", "dusty-violin-77-Keys", "student")
    binding = users.binding("dora")
    users.set_disabled("dora", True, actor="admin", source="test")
    assert users.get("dora").disabled and users.binding("dora")[1] != binding[1]  # every session and token of hers ends
    with pytest.raises(AuthError, match="this account is disabled"):
        users.authenticate("dora", "dusty-violin-77-Keys")
    with pytest.raises(AuthError, match="wrong username or password"):  # the wrong password says nothing more
        users.authenticate("dora", "not-her-password-1")
    users.set_disabled("dora", False, actor="admin", source="test")
    assert users.authenticate("dora", "dusty-violin-77-Keys").username == "dora"
    # nobody demotes or disables themselves (the server could be left with no admin)
    with pytest.raises(ForbiddenError):
        users.set_role("admin2", "student", actor="admin2")
    with pytest.raises(ForbiddenError):
        users.set_disabled("admin2", True, actor="admin2")
    events = [e["event"] for e in users.auth_log()]
    assert {"user_disabled", "user_enabled", "login_refused"} <= set(events)
    # the same through the API: PATCH /api/users/{username}, admins only
    with TestClient(create_app(make_settings(fresh_redis.url, tmp_path), warm_up=False)) as c:
        def auth(name, password):
            return {"Authorization": "Bearer " + c.post("/api/login", json={"username": name, "password": password}).json()["access_token"]}

        admin = auth("admin", "password123")
        r = c.patch("/api/users/dora", json={"role": "researcher", "disabled": True}, headers=admin)
        assert r.status_code == 200 and r.json()["user"]["role"] == "researcher" and r.json()["user"]["disabled"] is True
        refused = c.post("/api/login", json={"username": "dora", "password": "dusty-violin-77-Keys"})
        assert refused.status_code == 401 and "disabled" in refused.json()["error"]
        assert c.patch("/api/users/admin", json={"disabled": True}, headers=admin).status_code == 403
        assert c.patch("/api/users/nobody", json={"role": "student"}, headers=admin).status_code == 400
        assert c.patch("/api/users/dora", json={"role": "king"}, headers=admin).status_code == 422
        student = auth("student", "multimedia")
        assert c.patch("/api/users/dora", json={"disabled": False}, headers=student).status_code == 403


def test_tokens_slide_and_expire(users):
    import time

    users.create("tok", "copper-lantern-9x")
    users.token_ttl = 3
    t = users.issue_token("tok")
    time.sleep(1.8)
    assert users.user_for_token(t).username == "tok"  # sliding: ttl back to 3 s
    time.sleep(1.8)  # 3.6 s after issue: alive only because the use above slid it
    assert users.user_for_token(t) is not None
    time.sleep(3.3)
    assert users.user_for_token(t) is None
    assert users.user_for_token("made-up") is None


def test_dead_redis_is_a_clear_error(tmp_path, fresh_redis):
    """A Redis that drops every connection: a clear error for users, the cache bypassed; each
    command makes one immediate retry (redis-py's default makes three, with back-off: 4 s a
    command, 12 s a search; 16 connections here), and after a failure the cache leaves Redis
    alone for a while."""
    import socket
    import threading

    from cbir import redisdb

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    attempts = []

    def drop_every_connection():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            attempts.append(1)
            conn.close()

    threading.Thread(target=drop_every_connection, daemon=True).start()
    try:
        client = get_redis(Settings(redis_url=f"redis://127.0.0.1:{server.getsockname()[1]}/0", var_dir=tmp_path))
        with pytest.raises(ServiceUnavailable, match="unavailable"):
            UserStore(client).authenticate("admin", "password123")
        assert 1 <= len(attempts) <= 4  # (connect + command) x (try + one retry)
        cache = ResultCache(client)
        assert cache.get("k") is None  # bypassed, no exception
        tried = len(attempts)
        assert tried <= 8
        cache.set("k", {"a": 1})
        cache.count_search()
        assert cache.stats()["redis"] is False
        assert cache.get("k") is None
        assert len(attempts) == tried  # skipped while down
        cache._down_until = 0.0  # the pause is over: Redis is tried again
        cache.get("k")
        assert len(attempts) > tried
        cache._down_until, cache._flushed_at = 0.0, 0.0
        cache.count_search()  # a flush that fails keeps its counts
        cache.r, cache._down_until = redis_lib.Redis.from_url(fresh_redis.url, decode_responses=True), 0.0  # Redis is back
        assert cache.stats()["searches_performed"] == 2
    finally:
        server.close()
        redisdb.reset_clients()


def test_cache_and_counters(fresh_redis):
    client = redis_lib.Redis.from_url(fresh_redis.url, decode_responses=True)
    cache = ResultCache(client)
    k1 = cache.key({"q": 1}, {"m": "v1"})
    assert k1 != cache.key({"q": 1}, {"m": "v2"})  # a new store version is a new key
    assert cache.get(k1) is None
    cache.set(k1, {"answer": 42})
    assert cache.get(k1) == {"answer": 42}
    cache.count_search()
    s = cache.stats()
    assert s["searches_performed"] == 1 and s["cache_hit_rate"] == 0.5


def test_embedded_redis(tmp_path):
    settings = Settings(var_dir=tmp_path / "var", redis_url=None)
    client = get_redis(settings)
    assert client.ping()
    users = UserStore(client)
    users.create("emb", "copper-lantern-9x")
    assert users.authenticate("emb", "copper-lantern-9x").username == "emb"
    assert (tmp_path / "var" / "redis").is_dir()
    release_embedded(settings)  # the last owner: the server saves and stops
    folder = embedded_dir(settings)
    deadline = time.time() + 20
    while supervisor_pid(folder) is not None and time.time() < deadline:
        time.sleep(0.1)
    assert supervisor_pid(folder) is None and (folder / "cbir.db").exists()
