"""`make run`: the quick start. Checks the collection and its features, starts an embedded
Redis (unless CBIR_REDIS_URL is set), the REST API and the Streamlit app, prints where
they are, and on Ctrl-C (or SIGTERM) stops all of them, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

from .auth.bootstrap import DEMO_USERS
from .config import server_settings
from .errors import EXIT_BAD_INPUT, CBIRError, contract_for

ROOT = Path(__file__).resolve().parent.parent


def _say(msg: str) -> None:
    print(f"[cbir] {msg}", flush=True)


def prepare_collection(settings) -> None:
    from .collection import scan_collection
    from .engine import Engine
    from .extractors import default_model

    collection = scan_collection(settings.collection)
    engine = Engine(collection, settings)
    model = default_model()
    info = {m["name"]: m for m in engine.model_info()}
    _say(f"collection {collection.root}: {len(collection)} images, labels from {collection.label_source}")
    if info[model]["indexed"] == len(collection):
        _say(f"features of {model} ready ({info[model]['indexed']} images)")
        return
    _say(f"indexing {collection.root} with {model} (new or changed images only)…")
    subprocess.run([sys.executable, "-m", "cbir", "index", "-m", model, "--collection", str(collection.root)], check=True)


class Stop(Exception):
    """Ctrl-C or SIGTERM while the services start: stop waiting for them."""


def _wait_http(url: str, proc: subprocess.Popen, stopping: Callable[[], bool], timeout: float = 300) -> None:
    """Until ``url`` answers 200 (a 503 from /ready is an OSError too: keep waiting), unless
    ``stopping()`` turns true (Ctrl-C during a cold start stops it within 2 s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stopping():
            raise Stop
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 15
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _start_services(settings, env: dict, procs: list[subprocess.Popen], stopping: Callable[[], bool]) -> None:
    """The API and the app in their own sessions (stopped by :func:`_stop`), once they answer."""
    api = subprocess.Popen(
        [sys.executable, "-m", "cbir", "api", "--host", settings.api_host, "--port", str(settings.api_port)],
        env=env, start_new_session=True,
    )
    procs.append(api)
    app = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", settings.app_host,
         "--server.port", str(settings.app_port), "--server.headless", "true", "--server.maxUploadSize", str(settings.zip_max_mb)],
        env=env, start_new_session=True,
    )
    procs.append(app)
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    app_url = f"http://{settings.app_host}:{settings.app_port}"
    started = time.time()
    _say("waiting for every API worker to build and warm its model (8 s on an idle 2-core machine)…")
    # /ready, not /health: 200 only once every worker has built its default model and run a
    # search through it, so the first search after the URLs print is answered at normal speed
    _wait_http(api_url + "/ready", api, stopping)
    _wait_http(app_url + "/_stcore/health", app, stopping)
    _say(f"ready in {time.time() - started:.0f} s")
    print()
    _say(f"App:  {app_url}")
    _say(f"API:  {api_url}   (OpenAPI docs at {api_url}/docs)")
    if settings.demo:
        _say("demo logins: " + ", ".join(f"{u}/{p} ({r})" for u, p, r, _ in DEMO_USERS))
    _say("press Ctrl-C to stop")


def main() -> int:
    try:
        settings = server_settings()  # ConfigError: the servers would refuse to start
        os.chdir(ROOT)
        prepare_collection(settings)
    except Exception as exc:
        print(f"cbir: error: {exc}", file=sys.stderr)
        return contract_for(exc).exit_code if isinstance(exc, CBIRError) else EXIT_BAD_INPUT

    env = dict(os.environ)
    if settings.redis_url:
        _say(f"Redis: {settings.redis_url}")
    else:
        from .redis_server import embedded_dir, embedded_path, start_embedded, supervisor_pid

        # This process, the API and the app each own the one embedded server of var/redis;
        # it stops by itself when the last of them exits, however it exits.
        start_embedded(settings)
        _say(f"Redis: embedded (supervisor pid {supervisor_pid(embedded_dir(settings))}), data in {embedded_path(settings)}")

    procs: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _start_services(settings, env, procs, lambda: stopping)
        while not stopping:
            for p in procs:
                if p.poll() is not None:
                    _say(f"a service exited (status {p.returncode}); stopping the rest")
                    stopping = True
            time.sleep(0.3)
    except (RuntimeError, TimeoutError) as exc:
        print(f"cbir: error: {exc}", file=sys.stderr)
        return_code = 1
    except Stop:
        return_code = 0
    else:
        return_code = 0
    finally:
        _say("stopping…")
        _stop(procs)
        if not settings.redis_url:
            from .redis_server import wait_stopped
            from .redisdb import release_embedded

            release_embedded(settings)
            if not wait_stopped(settings):
                _say("the embedded Redis keeps running for its other owners (`cbir redis status`)")
        _say("stopped")
    return return_code


if __name__ == "__main__":
    sys.exit(main())
