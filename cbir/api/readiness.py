"""Which API workers are warm: a marker file per worker pid, written once its warm-up ended.

Below both the app factory (which writes and clears the markers) and the ``/ready`` route
(which counts them), so neither imports the other."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: str) -> bool:
    """``pid`` (a marker's name) is a running process: not gone, and not a zombie (a worker
    killed by SIGKILL stays one until uvicorn reaps it, and signal 0 still reaches it)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def warm_workers(folder: Path) -> int:
    """API worker processes of this server that finished their warm-up (a marker file per
    live worker pid in ``folder``)."""
    return sum(alive(marker.name) for marker in folder.glob("*"))
