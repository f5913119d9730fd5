"""What the parts of :class:`cbir.auth.users.UserStore` share: the Redis client and the
one way a command that must succeed is called."""

from __future__ import annotations

import redis

from ..redisdb import KEY_PREFIX as P, REDIS_DOWN, ServiceUnavailable


class RedisBacked:
    """A holder of ``r`` (a ``redis.Redis`` with ``decode_responses=True``)."""

    r: redis.Redis

    def _call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; raises ServiceUnavailable while Redis is away."""
        try:
            return fn(*args, **kwargs)
        except REDIS_DOWN as exc:
            raise ServiceUnavailable() from exc

    @staticmethod
    def _key(username: str) -> str:
        return f"{P}user:{username}"
