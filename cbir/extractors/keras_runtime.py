"""Keras' start-up: the models cache as KERAS_HOME, and TensorFlow imported once, quietly
when the caller owns stderr (:func:`quiet_tensorflow_import`)."""

from __future__ import annotations

import contextlib
import os
import sys
from contextvars import ContextVar
from pathlib import Path

from ..config import get_settings

_QUIET: ContextVar[bool] = ContextVar("cbir_quiet_tensorflow_import", default=False)


@contextlib.contextmanager
def quiet_tensorflow_import():
    """Within the block, a first import of TensorFlow (by :func:`ensure_keras_home`) mutes
    its start-up banner on stderr. For the command line, which owns stderr and prints
    one-line errors; servers do not use it (see :func:`ensure_keras_home`)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def ensure_keras_home(quiet: bool | None = None) -> None:
    """Point Keras at the project's models cache, then import TensorFlow and Keras once.

    TensorFlow's C++ start-up banner (oneDNN, CPU features) ignores TF_CPP_MIN_LOG_LEVEL
    in recent releases and would break the CLI's one-line errors, so the CLI mutes stderr
    at the file-descriptor level for the import only (``quiet``; None: whether the caller
    is inside :func:`quiet_tensorflow_import`). Servers leave it alone: the descriptor is
    process-wide and other threads' logs would be lost.
    """
    os.environ.setdefault("KERAS_HOME", str(Path(get_settings().models_cache).resolve()))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:
        return
    if not (_QUIET.get() if quiet is None else quiet):
        import tensorflow  # noqa: F401
        import keras  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
