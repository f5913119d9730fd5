"""Long jobs over HTTP: a user slot, the work in a thread, cancelled when the client goes.

The route awaits :func:`run_job`, which runs ``work(progress)`` in the thread pool and, while
it runs, polls ``request.is_disconnected()`` and renews the user's lease. The job is cancelled
(it stops at its next step) when the client disconnects, and when the request task itself
is cancelled: uvicorn does that to requests still running ``CBIR_SHUTDOWN_SECONDS`` after
a SIGTERM, so a sweep cannot hold a stopping server up; that client gets a JSON 503. The
slot is released when the thread really ends, not when the response is abandoned, or at
shutdown (the loop may stop before the thread's callback runs).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from .. import telemetry
from ..errors import BusyError, Cancelled
from ..jobs import Job, Progress, UserSlots
from ..auth.records import User

log = logging.getLogger("cbir.api")
T = TypeVar("T")
POLL_SECONDS = 0.2


async def run_job(request: Request, user: User, work: Callable[[Progress], T], *, limited: bool = True) -> T:
    """``work(job.progress)`` in a thread; ``limited``: one of the user's CBIR_JOBS_PER_USER slots."""
    slots: UserSlots = request.app.state.job_slots
    try:
        lease = slots.lease(user.username) if limited else None
    except BusyError:  # 429 before any work
        telemetry.LONG_JOBS.labels("refused").inc()
        raise
    job = Job()
    if lease:
        def release() -> None:
            try:
                lease.release()
            except Exception as exc:  # the lease expires by itself
                log.warning("could not release a job slot of %s: %s", user.username, exc)

        job.holds(release)  # freed when the thread ends, or at shutdown (the loop may stop first)
    jobs: set = request.app.state.jobs
    jobs.add(job)
    task = asyncio.ensure_future(run_in_threadpool(work, job.progress))

    def finished(_) -> None:  # in the event loop, once the thread has returned or raised
        jobs.discard(job)
        job.release()
        error = None if task.cancelled() else task.exception()
        telemetry.LONG_JOBS.labels("done" if error is None else "cancelled" if isinstance(error, Cancelled) else "failed").inc()
        if isinstance(error, Cancelled):
            log.warning("%s %s of %s: cancelled after %d steps", request.method, request.url.path, user.username, job.steps)

    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                job.cancel()
            if lease:
                lease.renew_if_due()
    except asyncio.CancelledError:  # uvicorn, CBIR_SHUTDOWN_SECONDS after a SIGTERM: a JSON 503, not a bare 500
        raise Cancelled("the server is stopping; the job was cancelled: retry in a moment") from None
    finally:
        job.cancel()  # a no-op when the work is done; else it stops at its next step
        task.add_done_callback(finished)
