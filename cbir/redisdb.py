"""One Redis connection factory: ``CBIR_REDIS_URL`` when set, otherwise the embedded
redis-server of the data folder (:mod:`cbir.redis_server` starts and owns it). Commands
fail fast while Redis is away and raise, or are turned into, :class:`ServiceUnavailable`."""

from __future__ import annotations

import contextlib
import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import Settings, get_settings
from .errors import ServiceUnavailable
from .redis_server import disown, embedded_dir, embedded_url, socket_path

__all__ = ["KEY_PREFIX", "REDIS_DOWN", "ServiceUnavailable", "get_redis", "ping", "release_embedded", "reset_clients"]

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}

#: The one prefix of every key this project writes to Redis (users, tokens, cache, counters).
KEY_PREFIX = "cbir:"

#: Errors meaning "Redis is not there right now" (it may come back).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """A shared client; commands fail fast while Redis is away (one immediate retry, for a
    pooled connection the server closed; redis-py's default is three retries with
    exponential back-off, 4 s or more per command) and reconnect when it returns.
    Raises ServiceUnavailable when the embedded server cannot be started."""
    settings = settings or get_settings()
    url = settings.redis_url or embedded_url(settings)
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=2,
                socket_connect_timeout=2,
                health_check_interval=15,
                retry=Retry(NoBackoff(), 1),
            )
            _clients[url] = client
        return client


def ping(client: redis.Redis) -> bool:
    """Whether ``client``'s server answers (False on any Redis or socket error)."""
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def reset_clients() -> None:
    """Close and forget every shared client (the next get_redis connects anew)."""
    with _lock:
        for c in _clients.values():
            with contextlib.suppress(Exception):
                c.close()
        _clients.clear()


def release_embedded(settings: Settings | None = None) -> None:
    """Close this process's client of the embedded server and stop owning it (it stops
    when no owner is left)."""
    folder = embedded_dir(settings or get_settings())
    with _lock:
        client = _clients.pop(f"unix://{socket_path(folder)}", None)
        if client is not None:
            client.close()
    disown(folder)
