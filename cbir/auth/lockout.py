"""Lockout: MAX_FAILURES failed logins for a username within FAILURE_WINDOW seconds, from
any source, lock it for LOCK_SECONDS."""

from __future__ import annotations

import secrets
import time

from .. import telemetry
from ..redisdb import KEY_PREFIX as P
from ..errors import LockedError
from .ratelimit import LoginRateLimits

MAX_FAILURES = 5
FAILURE_WINDOW = 15 * 60  # seconds
LOCK_SECONDS = 15 * 60


class Lockout(LoginRateLimits):
    """Mixed into UserStore: failures counted per username (and per relaying proxy)."""

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
