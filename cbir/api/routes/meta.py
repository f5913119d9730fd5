"""Health, readiness, models, statistics and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
import hmac
import ipaddress
from pathlib import Path

from fastapi.responses import JSONResponse, Response

from ...errors import public_paths
from ...extractors import default_model
from ...redisdb import ping
from ..deps import APIError, CurrentUser, DefaultService, Service, client_host

router = APIRouter(tags=["service"])


@router.get("/health", summary="Liveness: the process answers (touches nothing)")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: Redis reachable, feature stores loaded, every worker's default model built and warm")
def ready(request: Request, service: DefaultService):
    from ..readiness import warm_workers

    state = request.app.state
    redis_ok = ping(state.redis)
    try:
        searchable = service.engine.searchable_models()
    except Exception:
        searchable = []
    expected = state.settings.api_workers if state.workers_dir is not None else 1
    warm = (warm_workers(state.workers_dir) if state.workers_dir is not None else 1) if state.warm else 0
    ok = redis_ok and bool(searchable) and warm >= expected
    body = {"status": "ready" if ok else "not ready", "redis": redis_ok, "models_searchable": searchable,
            "workers_warm": f"{min(warm, expected)}/{expected}"}
    if not ok:
        problems = (([] if redis_ok else ["Redis unreachable"]) + ([] if searchable else ["no feature store: run `cbir index`"])
                    + ([] if warm >= expected else [f"warming up: {min(warm, expected)} of {expected} API workers have built their models"]))
        body["error"] = "; ".join(problems)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/models", tags=["collection"], summary="Every model: availability and why, indexed images")
def models(service: Service, user: CurrentUser) -> dict:
    """Why a model is unavailable names files: relative to the project unless for an admin."""
    info = service.engine.model_info()
    if user.role != "admin":
        info = [{**m, "reason": public_paths(m["reason"], Path.cwd()) if m["reason"] else m["reason"]} for m in info]
    return {"default": default_model(), "models": info}


@router.get("/api/stats", tags=["collection"], summary="Images, models, metrics, searches, cache hit rate, uptime")
def stats(service: Service, user: CurrentUser) -> dict:
    return service.stats()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics", summary="Prometheus metrics (loopback, or Bearer CBIR_METRICS_TOKEN)", include_in_schema=False)
def prometheus_metrics(request: Request) -> Response:
    from ...telemetry import exposition

    token = request.app.state.settings.metrics_token
    sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    allowed = _loopback(client_host(request)) or bool(token and hmac.compare_digest(sent.encode(), token.encode()))
    if not allowed:
        raise APIError(403, "metrics are served to loopback clients, or with `Authorization: Bearer $CBIR_METRICS_TOKEN`")
    body, content_type = exposition()
    return Response(body, media_type=content_type)
