"""The login rate limits: per client (a sliding window of ``login_rate`` attempts in any
RATE_WINDOW seconds, in Redis, in this process while Redis is away) and per trusted proxy
(``proxy_failures`` failed logins it relayed in RATE_WINDOW seconds)."""

from __future__ import annotations

import math
import secrets
import time

from .. import telemetry
from ..redisdb import KEY_PREFIX as P, REDIS_DOWN
from .audit import AuditLog

RATE_WINDOW = 60  # seconds


class LoginRateLimits(AuditLog):
    """Mixed into UserStore, which sets ``login_rate``, ``proxy_failures`` and ``_local_rate``."""

    login_rate: int
    proxy_failures: int
    _local_rate: dict[str, list[float]]

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
