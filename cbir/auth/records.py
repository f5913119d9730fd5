"""User records on Redis: one hash per user (``username``, ``name``, ``email``, ``role``,
``created`` (epoch seconds), the bcrypt ``password``, ``uid`` (random, new at each
creation), ``cred`` (bumped by a password reset or a role change) and ``cred_changed``)
and the set of usernames; creating, listing, changing and deleting them."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass

from ..redisdb import KEY_PREFIX as P
from .audit import AuditLog
from ..errors import ForbiddenError, UserError
from .passwords import check_password_policy, hash_password

ROLES = ("admin", "researcher", "student", "demo")
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,31}$")


@dataclass
class User:
    """A user as the app and the API see it (no password, no identity binding)."""

    username: str
    name: str
    email: str
    role: str
    created: float = 0.0
    disabled: bool = False  # refused at login; every session and token died when it was set

    def to_dict(self) -> dict:
        return asdict(self)


def user_from(data: dict) -> User:
    """The User of a Redis user hash (``HGETALL``, decoded)."""
    return User(data["username"], data.get("name", ""), data.get("email", ""), data.get("role", "student"), float(data.get("created", 0)),
                data.get("disabled") == "1")


class UserRecords(AuditLog):
    """Mixed into UserStore: the records; every change is logged. Raises UserError for
    invalid data, a duplicate or a missing user, ServiceUnavailable while Redis is away."""

    def get(self, username: str) -> User | None:
        data = self._call(self.r.hgetall, self._key(username))
        return user_from(data) if data else None

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

    @staticmethod
    def _not_oneself(username: str, actor: str) -> None:
        """An admin who demoted or disabled themselves could leave the server with no admin."""
        if actor and actor == username:
            raise ForbiddenError("you cannot change your own role or disable yourself: another admin can")

    def set_role(self, username: str, role: str, actor: str = "", source: str = "") -> None:
        """Raises UserError (unknown role, missing user), ForbiddenError (``actor`` is ``username``)."""
        self._not_oneself(username, actor)
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        if not self.exists(username):
            raise UserError(f"no user {username!r}")
        self._call(self.r.hset, self._key(username), "role", role)
        self._credentials_changed(username)
        self.log("role_changed", username, source, f"role={role}", actor)

    def set_disabled(self, username: str, disabled: bool, actor: str = "", source: str = "") -> None:
        """Disable (or enable again) a user: a disabled user's password is refused at login, and
        disabling ends every session and token of theirs. Raises UserError for a missing user."""
        self._not_oneself(username, actor)
        if not self.exists(username):
            raise UserError(f"no user {username!r}")
        self._call(self.r.hset, self._key(username), "disabled", "1" if disabled else "0")
        if disabled:
            self._credentials_changed(username)
        self.log("user_disabled" if disabled else "user_enabled", username, source, "ok", actor)

    def delete(self, username: str, actor: str = "", source: str = "") -> None:
        if not self.exists(username):
            raise UserError(f"no user {username!r}")
        self._call(self.r.delete, self._key(username))
        self._call(self.r.srem, f"{P}users", username)
        self.log("user_deleted", username, source, "ok", actor)
