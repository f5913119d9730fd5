"""Long jobs (evaluations, weight sweeps, map fits): cancellable between steps, and a few at a time per user.

* :class:`Job` is what a long computation is handed: its ``progress`` callback, which the
  engine already calls between grid points and epochs, raises :class:`Cancelled` once
  :meth:`Job.cancel` was called (the client went away, the server is stopping). The engine
  functions need nothing new: they take a progress callback already.
* :class:`UserSlots` is a counting semaphore per user kept in Redis, so it holds across
  the API's worker processes: a sorted set of leases scored by their expiry. A lease is
  renewed while its job runs and simply expires when a worker dies with it, so a crashed
  worker cannot keep a slot for longer than ``LEASE_SECONDS``.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Callable

from .errors import BusyError, Cancelled
from .redisdb import KEY_PREFIX

Progress = Callable[[int, int], None]

LEASE_SECONDS = 30  # a lease not renewed for this long is free again (a worker died)
RETRY_AFTER = 5  # seconds a refused client is told to wait

# Atomically: drop expired leases, refuse when ``limit`` remain, else add one.
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 1)
return 1
"""


class Job:
    """One long computation: a cancel flag, checked by the progress callback it hands out."""

    def __init__(self, forward: Progress | None = None):
        self._cancelled = threading.Event()
        self._forward = forward
        self.steps = 0  # progress calls so far (tests and logs: is the work still moving?)
        self._release: Callable[[], None] | None = None

    def holds(self, release: Callable[[], None]) -> None:
        """The job holds a slot that ``release`` frees (once, whoever calls first)."""
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def progress(self, done: int, total: int) -> None:
        """Between two steps of the work: stop here if cancelled."""
        if self._cancelled.is_set():
            raise Cancelled("the job was cancelled (client gone or server stopping)")
        self.steps += 1
        if self._forward:
            self._forward(done, total)


class Lease:
    """One slot held by a running job: renewed while it moves, released once."""

    def __init__(self, slots: "UserSlots", username: str, token: str):
        self.slots, self.username, self.token = slots, username, token
        self._renewed = time.monotonic()
        self._held = True

    def renew_if_due(self) -> None:
        """Renew the lease when a third of it has passed (cheap to call at every step)."""
        if self._held and time.monotonic() - self._renewed > LEASE_SECONDS / 3:
            self.slots.renew(self.username, self.token)
            self._renewed = time.monotonic()

    def release(self) -> None:
        """Free the slot (once; later calls do nothing)."""
        if self._held:
            self._held = False
            self.slots.release(self.username, self.token)


class UserSlots:
    """At most ``limit`` concurrent jobs per user, across processes (Redis sorted sets)."""

    def __init__(self, client, limit: int, what: str = "long jobs (evaluations, weight sweeps, map fits)"):
        self.r = client
        self.limit = limit
        self.what = what
        self._acquire = client.register_script(_ACQUIRE_LUA)

    @staticmethod
    def key(username: str) -> str:
        return f"{KEY_PREFIX}jobs:{username}"

    def acquire(self, username: str) -> str:
        """A lease token, or :class:`BusyError` (429, Retry-After) when the user has ``limit``."""
        token = secrets.token_hex(8)
        if not self._acquire(keys=[self.key(username)], args=[time.time(), LEASE_SECONDS, self.limit, token]):
            raise BusyError(f"{username!r} already runs {self.limit} of the {self.what} allowed at once "
                            f"(CBIR_JOBS_PER_USER); try again when it ends", RETRY_AFTER)
        return token

    def lease(self, username: str) -> Lease:
        """:meth:`acquire` as a :class:`Lease` (BusyError when the user has ``limit``)."""
        return Lease(self, username, self.acquire(username))

    def renew(self, username: str, token: str) -> None:
        key = self.key(username)
        pipe = self.r.pipeline()
        pipe.zadd(key, {token: time.time() + LEASE_SECONDS}, xx=True)
        pipe.expire(key, LEASE_SECONDS + 1)
        pipe.execute()

    def release(self, username: str, token: str) -> None:
        self.r.zrem(self.key(username), token)

    def held(self, username: str) -> int:
        """Leases of ``username`` not yet expired."""
        return self.r.zcount(self.key(username), time.time(), "+inf")
