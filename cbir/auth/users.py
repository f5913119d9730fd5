"""Users on Redis: :class:`UserStore` puts together the records (:mod:`.records`), password
checks (:mod:`.passwords`), lockout (:mod:`.lockout`), login rate limits
(:mod:`.ratelimit`), API tokens (:mod:`.tokens`) and the audit log (:mod:`.audit`).

Every user hash carries ``uid`` (random, new at each creation) and ``cred`` (bumped by a
password reset or a role change). A token, and an app session, remembers the pair it was
issued for; when they differ (reset, role change, delete + re-create) it is dead at once."""

from __future__ import annotations

import redis

from ..errors import AccountDisabledError, AuthError
from .lockout import Lockout
from .passwords import check_password, dummy_check, hash_password
from .records import User, UserRecords
from .tokens import Tokens


class UserStore(UserRecords, Lockout, Tokens):
    """Users, logins and tokens on one Redis ``client`` (``decode_responses=True``).

    ``token_ttl``: seconds a token lives unused (sliding expiry); ``login_rate``: login
    attempts per client per minute; ``proxy_failures``: failed logins per minute a trusted
    proxy may relay. Raises AuthError / LockedError on a refused login, UserError on
    invalid user data, ServiceUnavailable while Redis is away."""

    def __init__(self, client: redis.Redis, token_ttl: int = 30 * 60, login_rate: int = 10, proxy_failures: int = 30):
        self.r = client
        self.token_ttl = token_ttl
        self.login_rate = login_rate
        self.proxy_failures = proxy_failures
        self._recent: dict[str, tuple[User, float]] = {}
        self._local_rate: dict[str, list[float]] = {}  # attempt times, used while Redis is away

    def authenticate(self, username: str, password: str, source: str = "", via: str = "") -> User:
        """Check a password; lockout, legacy rehash and logging included. ``via``: the trusted
        proxy that relayed the attempt, if any."""
        username = str(username or "").strip().lower()
        self.check_not_locked(username, source)
        stored = self._call(self.r.hget, self._key(username), "password")
        if stored:
            ok, rehash = check_password(stored, password or "")
        else:
            dummy_check(password)  # same work as for a real user: no username enumeration
            ok, rehash = False, False
        if not ok:
            self.record_failure(username, source, via)
            self.check_not_locked(username, source)
            raise AuthError("wrong username or password")
        if rehash:
            self._call(self.r.hset, self._key(username), "password", hash_password(password))
            self.log("password_rehashed", username, source, "bcrypt")
        user = self.get(username)
        if user is None or user.disabled:  # said only to who knows the password
            self.log("login_refused", username, source, "disabled")
            raise AccountDisabledError("this account is disabled; an admin can enable it again")
        self.record_success(username, source)
        return user
