"""Prometheus metrics (the official ``prometheus-client``): request counts and latencies per
route, search and extraction time per model, cache hits and misses, login failures,
lockouts and rate-limited logins, API workers' warm-up time, long jobs by outcome.

Across uvicorn worker processes the client's multiprocess mode is used:
``cbir api`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder under ``var/`` before
the workers start, and ``/metrics`` aggregates every worker's files. In one process (the
app, tests) the default registry serves.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter("cbir_http_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"])
HTTP_SECONDS = Histogram("cbir_http_request_seconds", "HTTP request latency by route", ["route", "method"], buckets=LATENCY_BUCKETS)
SEARCH_SECONDS = Histogram("cbir_search_seconds", "Ranking time per model (index search, re-ranking)", ["model"], buckets=LATENCY_BUCKETS)
EXTRACT_SECONDS = Histogram("cbir_extract_seconds", "Feature extraction time of an uploaded query per model", ["model"], buckets=LATENCY_BUCKETS)
CACHE = Counter("cbir_cache_requests_total", "Search result cache lookups", ["result"])
LOGIN_FAILURES = Counter("cbir_login_failures_total", "Failed logins (wrong username or password)")
LOCKOUTS = Counter("cbir_lockouts_total", "Accounts locked after repeated failures")
WARM_UP_SECONDS = Histogram("cbir_warm_up_seconds", "An API worker's start-up: stores loaded, default model built and one "
                            "search run (one observation per worker)", buckets=(1, 2.5, 5, 10, 20, 40, 80, 160))
LONG_JOBS = Counter("cbir_long_jobs_total", "Weight sweeps and map fits by outcome (done, failed, cancelled, refused: "
                    "over CBIR_JOBS_PER_USER)", ["outcome"])
RATE_LIMITED = Counter("cbir_login_rate_limited_total", "Login attempts refused by the per-client rate limit")


def observe_timings(timings: dict) -> None:
    """Feed an engine response's ``timings`` (``search:MODEL``, ``extract:MODEL``)."""
    for key, seconds in timings.items():
        kind, _, model = key.partition(":")
        if kind == "search" and model:
            SEARCH_SECONDS.labels(model).observe(seconds)
        elif kind == "extract" and model:
            EXTRACT_SECONDS.labels(model).observe(seconds)


def prepare_multiprocess_dir(var_dir: str | Path) -> Path:
    """A fresh folder for the workers' metric files (stale files would double-count)."""
    folder = Path(var_dir).resolve() / "prometheus"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (all workers' in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return generate_latest(registry), CONTENT_TYPE_LATEST
