from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...extractors import default_model
from ...redisdb import ping
from ..deps import CurrentUser, Service

router = APIRouter(tags=["service"])


@router.get("/health", summary="Liveness: the process answers (touches nothing)")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: Redis reachable and feature stores loaded")
def ready(request: Request, service: Service):
    redis_ok = ping(request.app.state.redis)
    try:
        searchable = service.engine.searchable_models()
    except Exception:
        searchable = []
    ok = redis_ok and bool(searchable)
    body = {"status": "ready" if ok else "not ready", "redis": redis_ok, "models_searchable": searchable}
    if not ok:
        problems = ([] if redis_ok else ["Redis unreachable"]) + ([] if searchable else ["no feature store: run `cbir index`"])
        body["error"] = "; ".join(problems)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/models", tags=["collection"], summary="Every model: availability and why, indexed images")
def models(service: Service, user: CurrentUser) -> dict:
    return {"default": default_model(), "models": service.engine.model_info()}


@router.get("/api/stats", tags=["collection"], summary="Images, models, metrics, searches, cache hit rate, uptime")
def stats(service: Service, user: CurrentUser) -> dict:
    return service.stats()
