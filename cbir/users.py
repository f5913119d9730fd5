"""Users on Redis: bcrypt password hashes, a password policy, roles, lockout after failed
logins, a per-client login rate limit, API tokens bound to the user's identity and
credential version (sliding expiry), and an audit log of every login, failure, logout and
user change.

Every user hash carries ``uid`` (random, new at each creation) and ``cred`` (bumped by a
password reset or a role change). A token, and an app session, remembers the pair it was
issued for; when they differ (reset, role change, delete + re-create) it is dead at once."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass

import threading

import bcrypt
import redis

from .config import PLACEHOLDER_SECRETS, Settings
from . import telemetry
from .errors import CBIRError
from .redisdb import KEY_PREFIX as P, REDIS_DOWN, ServiceUnavailable

ROLES = ("admin", "researcher", "student", "demo")
DEMO_USERS = (
    # username, password, role, display name
    ("admin", "password123", "admin", "Admin"),
    ("researcher", "umons2024", "researcher", "Researcher"),
    ("student", "multimedia", "student", "Student"),
    ("user1", "demo123", "demo", "Demo User"),
)
MAX_FAILURES = 5
FAILURE_WINDOW = 15 * 60
LOCK_SECONDS = 15 * 60
LOG_LENGTH = 10_000
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,31}$")
MIN_PASSWORD = 10
MIN_STRENGTH = 3  # zxcvbn score 0-4: 3 = "safely unguessable" against an offline slow-hash attack
RATE_WINDOW = 60


# One round trip per API request: look the token up, check it was issued for this very
# user (uid) and credentials (cred), and only then slide its expiry and return the user.
_TOKEN_LUA = """
local value = redis.call('GET', KEYS[1])
if not value then return nil end
local uid, cred, username = string.match(value, '^([^:]*):([^:]*):(.*)$')
if not username then return nil end
local user = redis.call('HGETALL', ARGV[2] .. username)
if #user == 0 then return nil end
local fields = {}
for i = 1, #user, 2 do fields[user[i]] = user[i + 1] end
if fields['uid'] ~= uid or fields['cred'] ~= cred then return nil end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return user
"""

_zxcvbn_lock = threading.Lock()  # zxcvbn keeps the user inputs in a module-level dict


def password_problem(password: str, username: str = "") -> str | None:
    """Why ``password`` is refused (length >= 10, not the username, zxcvbn score >= 3), or None."""
    password = password or ""
    if len(password) < MIN_PASSWORD:
        return f"password must have at least {MIN_PASSWORD} characters"
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return f"password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)"
    if username and password.strip().lower() == username.strip().lower():
        return "password must not be the username"
    from zxcvbn import zxcvbn

    with _zxcvbn_lock:
        result = zxcvbn(password, user_inputs=[username] if username else [])
    if result["score"] < MIN_STRENGTH:
        hint = result["feedback"].get("warning") or "it is easy to guess"
        tips = " ".join(result["feedback"].get("suggestions") or [])
        return f"password too weak: {hint.rstrip('.')}. {tips or 'Use a longer phrase of uncommon words.'}".strip()
    return None


def check_password_policy(password: str, username: str = "") -> None:
    problem = password_problem(password, username)
    if problem:
        raise UserError(problem)


_DUMMY_HASH: bytes | None = None


def _dummy_check(password: str) -> None:
    """Spend the time a real bcrypt check costs, so an unknown username answers as slowly."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=12))
    bcrypt.checkpw((password or "").encode()[:MAX_PASSWORD_BYTES], _DUMMY_HASH)


class AuthError(CBIRError):
    """Wrong username or password (never says which)."""

    http_status = 401


class LockedError(AuthError):
    http_status = 429

    def __init__(self, username: str, seconds: int):
        self.seconds = seconds
        super().__init__(
            f"too many failed logins for {username!r}: try again in {max(1, seconds // 60)} minute(s)"
        )


class UserError(CBIRError):
    """Invalid user data, a duplicate or missing user."""


class ConfigError(CBIRError):
    """Start-up refused: secrets missing outside demo mode."""


@dataclass
class User:
    username: str
    name: str
    email: str
    role: str
    created: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


MAX_PASSWORD_BYTES = 72  # bcrypt's limit


def _user_from(data: dict) -> User:
    return User(data["username"], data.get("name", ""), data.get("email", ""), data.get("role", "student"), float(data.get("created", 0)))


def hash_password(password: str) -> str:
    data = password.encode()
    if len(data) > MAX_PASSWORD_BYTES:
        raise UserError(f"password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    if b"\x00" in data:
        raise UserError("password must not contain NUL characters")
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds=12)).decode()


def _check_password(stored: str, password: str) -> tuple[bool, bool]:
    """(matches, needs_rehash). Accepts bcrypt, legacy ``sha256:salt:hex`` and plain text."""
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode()), False
        except ValueError:
            return False, False
    if stored.startswith("sha256:"):
        parts = stored.split(":")
        if len(parts) == 3:
            _, salt, digest = parts
            calc = hashlib.sha256((salt + password).encode()).hexdigest()
            return hmac.compare_digest(calc, digest), True
        return False, False
    return hmac.compare_digest(stored.encode(), password.encode()), True


class UserStore:
    def __init__(self, client: redis.Redis, token_ttl: int = 30 * 60, login_rate: int = 10, proxy_failures: int = 30):
        self.r = client
        self.token_ttl = token_ttl
        self.login_rate = login_rate
        self.proxy_failures = proxy_failures
        self._recent: dict[str, tuple[User, float]] = {}
        self._local_rate: dict[str, list[float]] = {}  # attempt times, used while Redis is away

    # -- helpers ----------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except REDIS_DOWN as exc:
            raise ServiceUnavailable() from exc

    @staticmethod
    def _key(username: str) -> str:
        return f"{P}user:{username}"

    #: Failed and refused logins go to their own list, so that a flood of them cannot push
    #: lockouts, successes and admin actions out of the main log.
    NOISY = {("login", "failure"), ("login", "locked")}

    def log(self, event: str, username: str, source: str = "", outcome: str = "ok", actor: str = "") -> None:
        entry = json.dumps(
            {"time": time.time(), "event": event, "username": username, "source": source, "outcome": outcome, "actor": actor}
        )
        key = f"{P}auth:log:attempts" if (event, outcome) in self.NOISY else f"{P}auth:log"
        try:
            pipe = self.r.pipeline()
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, LOG_LENGTH - 1)
            pipe.execute()
        except REDIS_DOWN:
            pass

    def auth_log(self, limit: int = 200) -> list[dict]:
        """The newest ``limit`` events of both lists, newest first."""
        pipe = self.r.pipeline()
        pipe.lrange(f"{P}auth:log", 0, limit - 1)
        pipe.lrange(f"{P}auth:log:attempts", 0, limit - 1)
        main, attempts = self._call(pipe.execute)
        entries = [json.loads(x) for x in main + attempts]
        return sorted(entries, key=lambda e: e["time"], reverse=True)[:limit]

    def login_allowed(self, source: str) -> int:
        """0 when ``source`` (a client address) may try a login now, else seconds to wait.

        A sliding window: at most ``login_rate`` attempts in any RATE_WINDOW seconds (a fixed
        per-minute window let a client make twice as many across a minute's boundary), kept
        per client in a Redis sorted set shared by every process (in this process while Redis
        is away). Refused attempts are not recorded, so the set holds at most ``login_rate``
        entries; the first refusal of a block is logged."""
        now = time.time()
        try:
            return self._rate_redis(source, now)
        except REDIS_DOWN:
            return self._rate_local(source, now)

    def _rate_redis(self, source: str, now: float) -> int:
        key, member = f"{P}rate:login:{source}", f"{now:.6f}:{secrets.token_hex(4)}"
        pipe = self.r.pipeline()  # MULTI/EXEC: trim, record, count in one step
        pipe.zremrangebyscore(key, 0, now - RATE_WINDOW)
        pipe.zadd(key, {member: now})
        pipe.zcard(key)
        pipe.expire(key, RATE_WINDOW + 1)
        count = pipe.execute()[2]
        if count <= self.login_rate:
            return 0
        pipe = self.r.pipeline()
        pipe.zrem(key, member)  # a refused attempt does not extend the block
        pipe.zrange(key, 0, 0, withscores=True)
        pipe.set(f"{key}:logged", 1, nx=True, ex=RATE_WINDOW)
        _, oldest, first = pipe.execute()
        return self._refused(source, now, oldest[0][1] if oldest else now, bool(first))

    def _rate_local(self, source: str, now: float) -> int:
        recent = [t for t in self._local_rate.get(source, ()) if t > now - RATE_WINDOW]
        if len(recent) < self.login_rate:
            if len(self._local_rate) > 10_000:
                self._local_rate.clear()
            self._local_rate[source] = [*recent, now]
            return 0
        self._local_rate[source] = recent
        return self._refused(source, now, recent[0], False)

    def _refused(self, source: str, now: float, oldest: float, first: bool, why: str = "") -> int:
        telemetry.RATE_LIMITED.inc()
        if first:
            self.log("rate_limited", "", source, why or f"over {self.login_rate} logins/min")
        return max(1, math.ceil(oldest + RATE_WINDOW - now))

    def proxy_wait(self, via: str) -> int:
        """0 when the trusted proxy ``via`` relayed fewer than ``proxy_failures`` failed logins
        in the last RATE_WINDOW seconds, else seconds to wait ("" = a direct connection: 0).

        The per-client limit trusts the address a proxy forwards; a client allowed to act
        as a proxy (loopback, by default) can name a new address at every attempt, and so
        can spray passwords over many usernames. This budget counts what the proxy relayed,
        whatever address it named; a failure per username still locks that username."""
        if not via:
            return 0
        key, now = f"{P}rate:proxy-failures:{via}", time.time()
        try:
            pipe = self.r.pipeline()
            pipe.zremrangebyscore(key, 0, now - RATE_WINDOW)
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            _, count, oldest = pipe.execute()
        except REDIS_DOWN:
            return 0  # the login itself then answers 503
        if count < self.proxy_failures:
            return 0
        pipe = self.r.pipeline()
        pipe.set(f"{key}:logged", 1, nx=True, ex=RATE_WINDOW)
        return self._refused(via, now, oldest[0][1] if oldest else now, bool(pipe.execute()[0]),
                             f"over {self.proxy_failures} failed logins/min through this proxy")

    def _count_proxy_failure(self, via: str) -> None:
        if via:
            now, key = time.time(), f"{P}rate:proxy-failures:{via}"
            pipe = self.r.pipeline()
            pipe.zadd(key, {f"{now:.6f}:{secrets.token_hex(4)}": now})
            pipe.expire(key, RATE_WINDOW + 1)
            self._call(pipe.execute)

    # -- users ------------------------------------------------------------------------
    def get(self, username: str) -> User | None:
        data = self._call(self.r.hgetall, self._key(username))
        return _user_from(data) if data else None

    def binding(self, username: str) -> tuple[str, str, float] | None:
        """(uid, credential version, time of the last credential change) of a user, or None.

        Users stored before identities existed get one here, once."""
        key = self._key(username)
        uid, cred, changed = self._call(self.r.hmget, key, "uid", "cred", "cred_changed")
        if uid is None:
            if not self.exists(username):
                return None
            self._call(self.r.hsetnx, key, "uid", secrets.token_hex(8))
            self._call(self.r.hsetnx, key, "cred", "1")
            self._call(self.r.hsetnx, key, "cred_changed", "0")
            uid, cred, changed = self._call(self.r.hmget, key, "uid", "cred", "cred_changed")
        return uid, cred, float(changed or 0)

    def _credentials_changed(self, username: str) -> None:
        """Bump the credential version: every token and app session of the user dies."""
        pipe = self.r.pipeline()
        pipe.hincrby(self._key(username), "cred", 1)
        pipe.hset(self._key(username), "cred_changed", repr(time.time()))
        self._call(pipe.execute)

    def exists(self, username: str) -> bool:
        return bool(self._call(self.r.exists, self._key(username)))

    def list(self) -> list[User]:
        names = sorted(self._call(self.r.smembers, f"{P}users"))
        return [u for u in (self.get(n) for n in names) if u]

    def credentials(self) -> dict:
        """The streamlit-authenticator credentials dict, with bcrypt hashes from Redis."""
        out = {}
        for u in self.list():
            first, _, last = u.name.partition(" ")
            out[u.username] = {
                "email": u.email or f"{u.username}@localhost",
                "first_name": first or u.username,
                "last_name": last,
                "password": self._call(self.r.hget, self._key(u.username), "password"),
                "roles": [u.role],
                "failed_login_attempts": 0,
                "logged_in": False,
            }
        return {"usernames": out}

    def create(self, username: str, password: str, role: str = "student", name: str = "", email: str = "",
               actor: str = "", source: str = "", policy: bool = True) -> User:
        """A new user. ``policy=False`` only for the published demo accounts in demo mode."""
        username = str(username).strip().lower()
        if not USERNAME_RE.match(username):
            raise UserError("username must be 2-32 characters: lowercase letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        if policy:
            check_password_policy(password, username)
        if email and not re.match(r"^[^@\s]+@[^@\s]+$", email):
            raise UserError(f"invalid email address {email!r}")
        user = User(username, name or username, email, role, time.time())
        fields = {**{k: str(v) for k, v in user.to_dict().items()}, "password": hash_password(password),
                  "uid": secrets.token_hex(8), "cred": "1", "cred_changed": repr(time.time())}
        created = self._call(self.r.hsetnx, self._key(username), "username", username)
        if not created:
            raise UserError(f"user {username!r} already exists")
        self._call(self.r.hset, self._key(username), mapping=fields)
        self._call(self.r.sadd, f"{P}users", username)
        self.log("user_created", username, source, f"role={role}", actor)
        return user

    def set_password(self, username: str, password: str, actor: str = "", source: str = "") -> None:
        if not self.exists(username):
            raise UserError(f"no user {username!r}")
        check_password_policy(password, username)
        self._call(self.r.hset, self._key(username), "password", hash_password(password))
        self._credentials_changed(username)
        self.log("password_reset", username, source, "ok", actor)

    def set_role(self, username: str, role: str, actor: str = "", source: str = "") -> None:
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        if not self.exists(username):
            raise UserError(f"no user {username!r}")
        self._call(self.r.hset, self._key(username), "role", role)
        self._credentials_changed(username)
        self.log("role_changed", username, source, f"role={role}", actor)

    def delete(self, username: str, actor: str = "", source: str = "") -> None:
        if not self.exists(username):
            raise UserError(f"no user {username!r}")
        self._call(self.r.delete, self._key(username))
        self._call(self.r.srem, f"{P}users", username)
        self.log("user_deleted", username, source, "ok", actor)

    # -- authentication -------------------------------------------------------------
    def lock_remaining(self, username: str) -> int:
        ttl = self._call(self.r.ttl, f"{P}auth:lock:{username}")
        return int(ttl) if ttl and ttl > 0 else 0

    def check_not_locked(self, username: str, source: str = "") -> None:
        remaining = self.lock_remaining(username)
        if remaining:
            self.log("login", username, source, "locked")
            raise LockedError(username, remaining)

    def record_failure(self, username: str, source: str = "", via: str = "") -> None:
        """One failed login: counted for ``username`` from every source together (5 in 15
        minutes lock it) and for the proxy ``via`` that relayed it (see :meth:`proxy_wait`)."""
        self._count_proxy_failure(via)
        now = time.time()
        key = f"{P}auth:fail:{username}"
        pipe = self.r.pipeline()
        pipe.zadd(key, {f"{now}:{secrets.token_hex(4)}": now})
        pipe.zremrangebyscore(key, 0, now - FAILURE_WINDOW)
        pipe.zcard(key)
        pipe.expire(key, FAILURE_WINDOW)
        count = self._call(pipe.execute)[2]
        telemetry.LOGIN_FAILURES.inc()
        self.log("login", username, source, "failure")
        if count >= MAX_FAILURES:
            telemetry.LOCKOUTS.inc()
            self._call(self.r.set, f"{P}auth:lock:{username}", "1", ex=LOCK_SECONDS)
            self._call(self.r.delete, key)
            self.log("lockout", username, source, f"{count} failures")

    def record_success(self, username: str, source: str = "") -> None:
        self._call(self.r.delete, f"{P}auth:fail:{username}")
        self.log("login", username, source, "success")

    def authenticate(self, username: str, password: str, source: str = "", via: str = "") -> User:
        """Check a password; lockout, legacy rehash and logging included. ``via``: the trusted
        proxy that relayed the attempt, if any."""
        username = str(username or "").strip().lower()
        self.check_not_locked(username, source)
        stored = self._call(self.r.hget, self._key(username), "password")
        if stored:
            ok, rehash = _check_password(stored, password or "")
        else:
            _dummy_check(password)  # same work as for a real user: no username enumeration
            ok, rehash = False, False
        if not ok:
            self.record_failure(username, source, via)
            self.check_not_locked(username, source)
            raise AuthError("wrong username or password")
        if rehash:
            self._call(self.r.hset, self._key(username), "password", hash_password(password))
            self.log("password_rehashed", username, source, "bcrypt")
        self.record_success(username, source)
        return self.get(username)

    # -- API tokens -----------------------------------------------------------------
    @staticmethod
    def _token_key(token: str) -> str:
        return f"{P}token:" + hashlib.sha256(token.encode()).hexdigest()

    def issue_token(self, username: str) -> str:
        """A bearer token valid while the user's identity and credentials stay the same."""
        found = self.binding(username)
        if found is None:
            raise AuthError("wrong username or password")
        uid, cred, _ = found
        token = secrets.token_urlsafe(32)
        self._call(self.r.set, self._token_key(token), f"{uid}:{cred}:{username}", ex=self.token_ttl)
        return token

    def user_for_token(self, token: str) -> User | None:
        """The token's user, sliding its expiry; None when unknown or expired.

        Tokens seen recently are remembered in this process, so that a client already
        logged in keeps searching while Redis is briefly away.
        """
        key = self._token_key(token)
        try:
            found = self.r.eval(_TOKEN_LUA, 1, key, self.token_ttl, f"{P}user:")
            user = _user_from(dict(zip(found[::2], found[1::2]))) if found else None
        except (REDIS_DOWN + (ServiceUnavailable,)) as exc:
            known = self._recent.get(key)
            if known and known[1] > time.time():
                self._recent[key] = (known[0], time.time() + self.token_ttl)
                return known[0]
            raise ServiceUnavailable() from exc
        if user is None:
            self._recent.pop(key, None)
        else:
            self._recent[key] = (user, time.time() + self.token_ttl)
            if len(self._recent) > 10_000:
                self._recent.pop(next(iter(self._recent)))
        return user

    def revoke_token(self, token: str) -> bool:
        self._recent.pop(self._token_key(token), None)
        return bool(self._call(self.r.delete, self._token_key(token)))


def bootstrap(store: UserStore, settings: Settings) -> list[str]:
    """Demo users in demo mode; outside it, refuse placeholder secrets and ensure an admin."""
    created = []
    check_production_settings(settings)  # in demo mode too: a published secret is refused
    if settings.demo:
        wanted = [(u, p, r, n) for u, p, r, n in DEMO_USERS]
    else:
        wanted = [("admin", settings.admin_password, "admin", "Admin")]
    for username, password, role, name in wanted:
        if store.exists(username):
            continue
        try:
            # the demo accounts' passwords are published: exempt from the policy, demo mode only
            store.create(username, password, role, name, actor="bootstrap", policy=not settings.demo)
            created.append(username)
        except UserError:
            pass  # created meanwhile by a sibling process (app and API workers start together)
    return created


def secret_problems(settings: Settings) -> list[str]:
    """A CBIR_SECRET_KEY that is set must be long and must not be a published placeholder."""
    key = settings.secret_key
    if key is not None and (key in PLACEHOLDER_SECRETS or len(key) < 16):
        return ["CBIR_SECRET_KEY is a published placeholder or under 16 characters: unset it "
                "(a random secret is then kept in var/secret_key) or set a long random string"]
    return []


def check_production_settings(settings: Settings) -> None:
    if settings.demo:
        problems = secret_problems(settings)
        if problems:
            raise ConfigError(problems[0])
        return
    problems = []
    if not settings.admin_password:
        problems.append("set CBIR_ADMIN_PASSWORD")
    else:
        weak = password_problem(settings.admin_password, "admin")
        if weak:
            problems.append(f"CBIR_ADMIN_PASSWORD: {weak}")
    problems += secret_problems(settings)
    if problems:
        raise ConfigError("demo mode is off: " + "; ".join(problems) + " (or set CBIR_DEMO=1 for a demo)")
