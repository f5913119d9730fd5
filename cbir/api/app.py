"""FastAPI application factory: ``cbir api`` serves ``create_app()`` with uvicorn."""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, telemetry
from ..cache import ResultCache
from ..config import Settings, get_settings, reset_settings, server_settings
from ..engine import Engine
from ..errors import UNEXPECTED, CBIRError, contract_for, public_paths, said_to
from ..jobs import UserSlots
from .readiness import alive
from ..redisdb import REDIS_DOWN, ServiceUnavailable, get_redis
from ..collection_registry import CollectionRegistry
from ..service import SearchService, Services
from ..auth.bootstrap import bootstrap
from ..auth.users import UserStore
from .deps import APIError
from .middleware import ForwardedFor, RequestLimits, RequestMetrics, SecurityHeaders

log = logging.getLogger("cbir.api")


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def shown_to(request: Request, message: str) -> str:
    """A message as the requester may see it: server paths as they are for an admin, relative
    to the project (or ``…/name`` outside it) for anyone else, a login form included."""
    if getattr(request.state, "role", None) == "admin":  # set by the current_user dependency
        return message
    return public_paths(message, Path.cwd())


def _warm_up(service: SearchService) -> None:
    """Load the stores, build the default extractor and run one search by upload through it
    (TensorFlow traces its graph on the first inference), so the first request is fast."""
    from ..extractors import default_model

    engine = service.engine
    try:
        for name in engine.searchable_models():
            engine.store(name)
        if engine.settings.preload_model:
            model = default_model()
            engine.extractor(model)
            if engine.has_store(model) and len(engine.collection):
                engine.search(model, image=engine.collection.path_of(engine.collection.ids[0]).read_bytes(), top_k=1)
    except Exception as exc:  # a missing model is reported per request
        log.warning("warm-up incomplete: %s", exc)




def contract_response(request: Request, exc: Exception) -> JSONResponse:
    """``exc`` answered as the error contract (``cbir.errors.CONTRACTS``) says: its status,
    ``{"error": message}``, Retry-After when it has ``retry_after``, WWW-Authenticate on a 401;
    an error not in the table is a 500 that shows no detail."""
    contract = contract_for(exc)
    if contract is UNEXPECTED:
        return error_response(contract.status, "internal error; see the server log")
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    if contract.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(contract.status, shown_to(request, said_to(exc, "api")), headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": ...}`` with the status its class carries."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, shown_to(request, exc.message), exc.headers)

    @app.exception_handler(CBIRError)
    async def _cbir_error(request: Request, exc: CBIRError):
        return contract_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        detail = [{"loc": list(e.get("loc", [])), "msg": e.get("msg", "")} for e in errors]
        return error_response(422, shown_to(request, message), detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, shown_to(request, str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        if isinstance(exc, REDIS_DOWN):
            return contract_response(request, ServiceUnavailable("Redis"))
        log.exception("unexpected error on %s", request.url.path)
        return contract_response(request, exc)


def _lifespan(settings: Settings, warm_up: bool, workers_dir: Path | None):
    """Start-up: users, then the warm-up (before the worker accepts a connection) and this
    worker's marker; shut-down: jobs whose requests were cancelled stop at their next step."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            created = bootstrap(app.state.users, settings)
            if created:
                log.info("created users: %s", ", ".join(created))
        except ServiceUnavailable as exc:
            log.warning("%s; users will be created when Redis is back", exc)
        if warm_up:
            t = time.perf_counter()
            await anyio.to_thread.run_sync(_warm_up, app.state.service)
            telemetry.WARM_UP_SECONDS.observe(time.perf_counter() - t)
        if workers_dir is not None:
            workers_dir.mkdir(parents=True, exist_ok=True)
            (workers_dir / str(os.getpid())).touch()
        app.state.warm = True
        yield
        for job in list(app.state.jobs):  # their threads may outlive the loop: free their slots now
            job.cancel()
            job.release()
        if workers_dir is not None:
            (workers_dir / str(os.getpid())).unlink(missing_ok=True)

    return lifespan


def create_app(settings: Settings | None = None, engine: Engine | None = None, warm_up: bool = True,
               workers_dir: Path | None = None) -> FastAPI:
    """``warm_up``: build the default model and run one search before serving (a worker takes
    no connection before its lifespan start-up ends, so no request meets a cold worker);
    ``workers_dir``: where each warm worker leaves a marker, for ``/ready`` to count them."""
    settings = server_settings(settings)  # ConfigError when a server must not run with them

    app = FastAPI(
        title="CBIR workbench API",
        version=__version__,
        description=(
            "Content-based image retrieval over deep features: single-model and combined search, "
            "the collection's images, models and statistics. Log in with POST /api/login and send "
            "`Authorization: Bearer <token>`. Every error is JSON `{\"error\": ...}`."
        ),
        lifespan=_lifespan(settings, warm_up, workers_dir),
    )
    engine = engine or Engine(settings.collection, settings)
    client = get_redis(settings)
    app.state.settings = settings
    app.state.users = UserStore(client, token_ttl=settings.session_minutes * 60, login_rate=settings.login_rate,
                                proxy_failures=settings.login_proxy_failures)
    app.state.service = SearchService(engine, ResultCache(client, enabled=settings.cache))
    app.state.services = Services(app.state.service, CollectionRegistry(settings), settings.open_collections)
    app.state.redis = client
    app.state.started = time.time()
    app.state.warm = False
    app.state.workers_dir = workers_dir
    app.state.job_slots = UserSlots(client, settings.jobs_per_user)
    app.state.jobs = set()

    _install_error_handlers(app)

    from .routes import admin, auth, collections, images, meta, search, tools

    for module in (meta, auth, search, images, tools, collections, admin):
        app.include_router(module.router)
    # Outermost last: forwarded headers (only from trusted proxies) -> headers -> limits -> metrics.
    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestLimits, max_bytes=settings.max_upload_mb * 2**20 + 64 * 1024)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ForwardedFor, trusted=settings.trusted_proxies)
    return app


def app_factory() -> FastAPI:
    """What each uvicorn worker process builds."""
    from ..process import tune_server_process

    tune_server_process()
    settings = get_settings()
    return create_app(settings, workers_dir=_workers_dir(settings, int(os.environ.get(SERVER_PID_ENV, os.getpid()))))


SERVER_PID_ENV = "CBIR_API_SERVER_PID"  # set by serve() for its workers: whose markers to count


def _workers_dir(settings: Settings, server_pid: int) -> Path:
    """One folder per `cbir api` process, so two servers sharing a var folder count their own workers."""
    return Path(settings.var_dir) / "api-workers-warm" / str(server_pid)


def serve(host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    import uvicorn

    from ..telemetry import prepare_multiprocess_dir

    settings = server_settings()  # errors (ConfigError, a bad collection) reach `cbir`'s one line
    Engine(settings.collection, settings)  # fail fast on a bad collection
    if not settings.redis_url:
        from ..redis_server import start_embedded

        start_embedded(settings)  # this parent owns the embedded Redis too, before the workers
    workers = workers or settings.api_workers
    if workers > 1:  # one worker is this process, whose metrics already live in memory: /metrics was empty
        prepare_multiprocess_dir(settings.var_dir)
    os.environ["CBIR_API_WORKERS"] = str(workers)  # the workers' /ready waits for this many warm workers
    reset_settings()  # a single worker runs in this process, whose settings are read already
    os.environ[SERVER_PID_ENV] = str(os.getpid())
    for folder in (Path(settings.var_dir) / "api-workers-warm").glob("*"):  # this pid's (reused) and dead servers'
        if folder.name == str(os.getpid()) or not alive(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
    uvicorn.run(
        "cbir.api.app:app_factory", factory=True, host=host or settings.api_host, port=port or settings.api_port,
        workers=workers, log_level="info",
        timeout_graceful_shutdown=settings.shutdown_seconds,  # then running requests are cancelled, and their jobs
        proxy_headers=False,  # ForwardedFor in create_app, with CBIR_TRUSTED_PROXIES
        server_header=False,
    )
