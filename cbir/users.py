"""Users on Redis: bcrypt password hashes, roles, lockout after failed logins, API tokens
with a sliding expiry, and an audit log of every login, failure, logout and user change."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass

import bcrypt
import redis

from .config import DEMO_SECRET, Settings
from .errors import CBIRError
from .redisdb import REDIS_DOWN, ServiceUnavailable

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
MIN_PASSWORD = 6

P = "cbir:"

# One round trip per API request: look the token up, slide its expiry, return the user hash.
_TOKEN_LUA = """
local username = redis.call('GET', KEYS[1])
if not username then return nil end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local user = redis.call('HGETALL', ARGV[2] .. username)
if #user == 0 then return nil end
return user
"""


class AuthError(CBIRError):
    """Wrong username or password (never says which)."""


class LockedError(AuthError):
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
    def __init__(self, client: redis.Redis, token_ttl: int = 30 * 60):
        self.r = client
        self.token_ttl = token_ttl
        self._recent: dict[str, tuple[User, float]] = {}

    # -- helpers ----------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except REDIS_DOWN as exc:
            raise ServiceUnavailable() from exc

    @staticmethod
    def _key(username: str) -> str:
        return f"{P}user:{username}"

    def log(self, event: str, username: str, source: str = "", outcome: str = "ok", actor: str = "") -> None:
        entry = json.dumps(
            {"time": time.time(), "event": event, "username": username, "source": source, "outcome": outcome, "actor": actor}
        )
        try:
            pipe = self.r.pipeline()
            pipe.lpush(f"{P}auth:log", entry)
            pipe.ltrim(f"{P}auth:log", 0, LOG_LENGTH - 1)
            pipe.execute()
        except REDIS_DOWN:
            pass

    def auth_log(self, limit: int = 200) -> list[dict]:
        return [json.loads(x) for x in self._call(self.r.lrange, f"{P}auth:log", 0, limit - 1)]

    # -- users ------------------------------------------------------------------------
    def get(self, username: str) -> User | None:
        data = self._call(self.r.hgetall, self._key(username))
        if not data:
            return None
        return User(data["username"], data.get("name", ""), data.get("email", ""), data.get("role", "student"), float(data.get("created", 0)))

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

    def create(self, username: str, password: str, role: str = "student", name: str = "", email: str = "", actor: str = "", source: str = "") -> User:
        username = str(username).strip().lower()
        if not USERNAME_RE.match(username):
            raise UserError("username must be 2-32 characters: lowercase letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        if len(password or "") < MIN_PASSWORD:
            raise UserError(f"password must have at least {MIN_PASSWORD} characters")
        if email and not re.match(r"^[^@\s]+@[^@\s]+$", email):
            raise UserError(f"invalid email address {email!r}")
        user = User(username, name or username, email, role, time.time())
        fields = {**{k: str(v) for k, v in user.to_dict().items()}, "password": hash_password(password)}
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
        if len(password or "") < MIN_PASSWORD:
            raise UserError(f"password must have at least {MIN_PASSWORD} characters")
        self._call(self.r.hset, self._key(username), "password", hash_password(password))
        self.log("password_reset", username, source, "ok", actor)

    def set_role(self, username: str, role: str, actor: str = "", source: str = "") -> None:
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        if not self.exists(username):
            raise UserError(f"no user {username!r}")
        self._call(self.r.hset, self._key(username), "role", role)
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

    def record_failure(self, username: str, source: str = "") -> None:
        now = time.time()
        key = f"{P}auth:fail:{username}"
        pipe = self.r.pipeline()
        pipe.zadd(key, {f"{now}:{secrets.token_hex(4)}": now})
        pipe.zremrangebyscore(key, 0, now - FAILURE_WINDOW)
        pipe.zcard(key)
        pipe.expire(key, FAILURE_WINDOW)
        count = self._call(pipe.execute)[2]
        self.log("login", username, source, "failure")
        if count >= MAX_FAILURES:
            self._call(self.r.set, f"{P}auth:lock:{username}", "1", ex=LOCK_SECONDS)
            self._call(self.r.delete, key)
            self.log("lockout", username, source, f"{count} failures")

    def record_success(self, username: str, source: str = "") -> None:
        self._call(self.r.delete, f"{P}auth:fail:{username}")
        self.log("login", username, source, "success")

    def authenticate(self, username: str, password: str, source: str = "") -> User:
        """Check a password; lockout, legacy rehash and logging included."""
        username = str(username or "").strip().lower()
        self.check_not_locked(username, source)
        stored = self._call(self.r.hget, self._key(username), "password")
        ok, rehash = _check_password(stored, password or "") if stored else (False, False)
        if not ok:
            self.record_failure(username, source)
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
        token = secrets.token_urlsafe(32)
        self._call(self.r.set, self._token_key(token), username, ex=self.token_ttl)
        return token

    def user_for_token(self, token: str) -> User | None:
        """The token's user, sliding its expiry; None when unknown or expired.

        Tokens seen recently are remembered in this process, so that a client already
        logged in keeps searching while Redis is briefly away.
        """
        key = self._token_key(token)
        try:
            found = self.r.eval(_TOKEN_LUA, 1, key, self.token_ttl, f"{P}user:")
            user = None
            if found:
                data = dict(zip(found[::2], found[1::2]))
                user = User(data["username"], data.get("name", ""), data.get("email", ""), data.get("role", "student"), float(data.get("created", 0)))
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
    if settings.demo:
        wanted = [(u, p, r, n) for u, p, r, n in DEMO_USERS]
    else:
        check_production_settings(settings)
        wanted = [("admin", settings.admin_password, "admin", "Admin")]
    for username, password, role, name in wanted:
        if store.exists(username):
            continue
        try:
            store.create(username, password, role, name, actor="bootstrap")
            created.append(username)
        except UserError:
            pass  # created meanwhile by a sibling process (app and API workers start together)
    return created


def check_production_settings(settings: Settings) -> None:
    if settings.demo:
        return
    problems = []
    if not settings.admin_password:
        problems.append("set CBIR_ADMIN_PASSWORD")
    if not settings.secret_key or settings.secret_key == DEMO_SECRET or len(settings.secret_key) < 16:
        problems.append("set CBIR_SECRET_KEY to a random string of 16+ characters")
    if problems:
        raise ConfigError("demo mode is off: " + "; ".join(problems) + " (or set CBIR_DEMO=1 for a demo)")
