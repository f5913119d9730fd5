"""The audit log on Redis: every login, failure, lockout, logout and user change, as JSON
entries ``{time (epoch seconds), event, username, source, outcome, actor}`` in two capped
lists (failed and refused logins apart, so that a flood of them cannot push the rest out)."""

from __future__ import annotations

import json
import time

from ..redisdb import KEY_PREFIX as P, REDIS_DOWN
from .base import RedisBacked

LOG_LENGTH = 10_000  # entries kept per list


class AuditLog(RedisBacked):
    """Writing (never fails: an entry is dropped while Redis is away) and reading the log."""

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
        """The newest ``limit`` events of both lists, newest first; raises ServiceUnavailable."""
        pipe = self.r.pipeline()
        pipe.lrange(f"{P}auth:log", 0, limit - 1)
        pipe.lrange(f"{P}auth:log:attempts", 0, limit - 1)
        main, attempts = self._call(pipe.execute)
        entries = [json.loads(x) for x in main + attempts]
        return sorted(entries, key=lambda e: e["time"], reverse=True)[:limit]
