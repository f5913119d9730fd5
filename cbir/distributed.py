"""Feature extraction on Dask distributed: a ``LocalCluster`` of worker processes on this
machine (``--workers N``) or an existing cluster (``--scheduler tcp://host:8786``). The local
cluster speaks mutual TLS with a key made for the run, so no other local user's client can
connect to it (and run code as the indexing user).

The images to extract are cut into chunks of paths. Each chunk is a task: the worker
builds the model once and keeps it for the following chunks (a per-process cache; models
are never pickled, only names travel), decodes with the project's safe decoder and
returns the chunk's vectors, the rows that decoded and the failures. The driver writes
every finished chunk as a shard beside the store (``.shards/<key>.npz``, atomically), so a
driver killed mid-run resumes from the finished shards; the store itself is written once,
at the end, by the usual atomic writer, and the shards are removed. A chunk's key hashes
the model, weights, preprocessing version and the (path, signature) of its images, so a
shard can never be mistaken for another image's features. A worker lost mid-run has its
chunks re-run elsewhere by the scheduler (tasks are pure; two retries on errors).

Workers must see the collection at the same path as the driver (a shared filesystem);
before any work each worker checks that it can read it, and a worker that cannot is named
with the path in one clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import CBIRError
from .store_format import PREPROCESSING_VERSION, write_atomic

CHUNK = 32  # images per task: about 2 s of one core, so scheduling costs (~6 ms) stay small and the last chunks end together
RETRIES = 2
SHARDS = ".shards"
_WORKER_EXTRACTORS: dict[tuple[str, str], object] = {}  # a worker process's models, built once

Progress = Callable[[int, int], None]


class DistributedError(CBIRError):
    """The cluster cannot be reached or cannot do the work (e.g. cannot read the images)."""


@dataclass(frozen=True)
class Chunk:
    key: str
    rows: tuple[int, ...]  # positions in the list of paths to extract


def plan_chunks(paths: Sequence[Path], signatures: Sequence[str], model: str, weights: str, size: int = CHUNK) -> list[Chunk]:
    """Consecutive chunks of ``size`` paths, each keyed by what determines its features."""
    out = []
    for start in range(0, len(paths), size):
        rows = tuple(range(start, min(start + size, len(paths))))
        h = hashlib.blake2b(f"{model}|{weights}|{PREPROCESSING_VERSION}".encode(), digest_size=10)
        for r in rows:
            h.update(f"\n{paths[r]}|{signatures[r]}".encode())
        out.append(Chunk(h.hexdigest(), rows))
    return out


def _threads_for(workers: int) -> int:
    """Threads per local worker so that workers x threads does not exceed the cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# -- what runs on the workers ------------------------------------------------------------
def limit_threads(threads: int) -> None:
    """TensorFlow's intra-op threads = ``threads``, inter-op 1, one BLAS/OpenMP pool alike;
    effective when called before TensorFlow starts (a fresh worker process)."""
    os.environ.update(OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1")
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except (ImportError, RuntimeError):  # no TensorFlow, or it already runs with its threads
        pass


def check_readable(root: str, sample: list[str]) -> str | None:
    """On a worker: None when the collection folder and a sample of its images can be read."""
    try:
        if not os.path.isdir(root):
            return f"{root} is not a folder here"
        for path in sample:
            with open(path, "rb") as fh:
                fh.read(16)
    except OSError as exc:
        return f"{exc.strerror or exc} ({exc.filename or root})"
    return None


def extract_chunk(model: str, weights: str, paths: list[str], batch_size: int, max_pixels: int, threads: int | None) -> dict:
    """On a worker: the chunk's features with the worker's cached model (TensorFlow limited
    to ``threads`` on a local cluster; a remote worker keeps its own settings)."""
    from .extractors import build_extractor
    from .extraction import extract_paths

    key = (model, weights)
    if key not in _WORKER_EXTRACTORS:
        if threads:
            limit_threads(threads)
        _WORKER_EXTRACTORS[key] = build_extractor(model, weights)
    ext = extract_paths(_WORKER_EXTRACTORS[key], [Path(p) for p in paths], batch_size, 1, max_pixels)
    return {"features": ext.features, "ok": ext.ok, "failures": ext.failures, "seconds": ext.seconds}


# -- the driver ----------------------------------------------------------------------------
class DaskRunner:
    """A Dask client for one indexing run: ``workers`` local processes, or the cluster at
    ``scheduler``. Use as a context manager; a local cluster is stopped on exit."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, threads: int | None = None, chunk: int = CHUNK,
                 security=None):
        if not workers and not scheduler:
            raise DistributedError("give --workers N (a local cluster) or --scheduler tcp://host:8786")
        if chunk < 1:
            raise DistributedError(f"a chunk holds at least one image, got {chunk}")
        self.workers, self.scheduler, self.chunk = workers, scheduler, chunk
        self.threads = threads or (_threads_for(workers) if workers else None)  # a cluster's workers keep their own
        self.client = self.cluster = None
        # a local cluster makes its own (see __enter__); an existing one: this, or Dask's config (distributed.comm.tls.*)
        self.security = security
        self.resumed = 0  # images of the last run read from an interrupted run's shards

    def __enter__(self) -> DaskRunner:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - a dependency
            raise DistributedError("distributed extraction needs `pip install dask distributed`") from exc
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout="5s", security=self.security)
            except (OSError, TimeoutError) as exc:
                raise DistributedError(f"no Dask scheduler answers at {self.scheduler} ({exc}); start one or check "
                                       "CBIR_DASK_SCHEDULER") from None
        else:
            env = {"OMP_NUM_THREADS": str(self.threads), "TF_NUM_INTRAOP_THREADS": str(self.threads),
                   "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
            self.security = local_security()
            with _blank_main():
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True, protocol="tls://",
                                            host="127.0.0.1", security=self.security, dashboard_address="127.0.0.1:0",
                                            env=env, silence_logs=50)
            self.client = Client(self.cluster, security=self.security)
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def dashboard(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)

    def worker_pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)

    def check_workers(self, root: Path, paths: Sequence[Path]) -> None:
        """Every worker reads the collection folder and a few of its images, or a clear error."""
        sample = [str(p) for p in list(paths)[:: max(1, len(paths) // 3)][:3]]
        answers = self.client.run(check_readable, str(root), sample)
        if not answers:
            raise DistributedError(f"the Dask cluster at {self.scheduler or 'localhost'} has no worker")
        bad = {w: why for w, why in answers.items() if why}
        if bad:
            worker, why = next(iter(bad.items()))
            raise DistributedError(f"Dask worker {worker} cannot read the collection at {root}: {why}; the images must be "
                                   "on a filesystem every worker mounts at the same path")

    def stored(self, folder: Path) -> None:
        """The store of ``folder`` is written: this run's shards go."""
        clear_shards(folder)

    def extract(self, model: str, weights: str, folder: Path, paths: list[Path], signatures: list[str],
                batch_size: int, max_pixels: int, progress: Progress | None = None):
        """Features of ``paths`` (signatures aligned), chunk by chunk on the cluster; chunks
        whose shard a previous, interrupted run left are read instead of re-extracted."""
        from distributed import as_completed

        from .extractors import get_spec
        from .extraction import Extraction

        start = time.perf_counter()
        shards = Path(folder) / SHARDS
        shards.mkdir(parents=True, exist_ok=True)
        feats = np.zeros((len(paths), get_spec(model).dim), dtype=np.float32)
        ok, failures, done = np.zeros(len(paths), dtype=bool), [], 0
        chunks = plan_chunks(paths, signatures, model, weights, self.chunk)
        todo = []
        for chunk in chunks:
            part = _read_shard(shards / f"{chunk.key}.npz")
            if part is None:
                todo.append(chunk)
                continue
            done += _place(chunk, part, paths, feats, ok, failures)
        self.resumed = done
        if progress:
            progress(done, len(paths))
        if todo:
            self.check_workers(Path(os.path.commonpath([str(p.parent) for p in paths])), paths)
            futures = {self.client.submit(extract_chunk, model, weights, [str(paths[r]) for r in c.rows], batch_size, max_pixels,
                                          self.threads, key=f"cbir-extract-{c.key}", retries=RETRIES): c for c in todo}
            for future in as_completed(futures):
                chunk, part = futures[future], _result(future)
                _write_shard(shards / f"{chunk.key}.npz", part)
                done += _place(chunk, part, paths, feats, ok, failures)
                if progress:
                    progress(done, len(paths))
        return Extraction(feats, ok, failures, time.perf_counter() - start)


def local_security():
    """Mutual TLS with a key and certificate made for this run only (``Security.temporary``):
    a plain TCP scheduler runs whatever any local user's ``Client(addr).run(...)`` sends, as
    the indexing user; this one talks only to holders of the run's key (this driver and the
    workers it spawns), which never leaves this process tree."""
    from distributed import Security

    try:
        return Security.temporary()
    except ImportError as exc:  # pragma: no cover - a dependency
        raise DistributedError("a local Dask cluster needs `pip install cryptography` (for its TLS key)") from exc


@contextlib.contextmanager
def _blank_main():
    """Worker processes are spawned, and a spawned child first re-runs its parent's
    ``__main__`` script; under Streamlit that script is the app itself, which must not run
    in a worker. The tasks live in this module, so the workers need no ``__main__``."""
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _result(future) -> dict:
    try:
        return future.result()
    except CBIRError:
        raise
    except Exception as exc:
        raise DistributedError(f"a Dask worker failed on a chunk ({type(exc).__name__}: {exc})") from None


def _place(chunk: Chunk, part: dict, paths: list[Path], feats: np.ndarray, ok: np.ndarray, failures: list) -> int:
    rows = list(chunk.rows)
    feats[rows] = part["features"]
    ok[rows] = part["ok"]
    failures.extend((str(p), str(why)) for p, why in part["failures"])
    return len(rows)


def _write_shard(path: Path, part: dict) -> None:
    failures = np.array([f"{p}\t{why}" for p, why in part["failures"]], dtype=str)
    write_atomic(path, lambda fh: np.savez(fh, features=part["features"], ok=part["ok"], failures=failures), prefix=".shard-",
                 fsync=False)


def _read_shard(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            failures = [tuple(line.split("\t", 1)) for line in data["failures"].tolist()]
            return {"features": data["features"], "ok": data["ok"], "failures": failures}
    except Exception:  # a damaged shard: extract that chunk again
        return None


def clear_shards(folder: Path) -> None:
    """After the store is written, the shards of the run are no longer needed."""
    shutil.rmtree(Path(folder) / SHARDS, ignore_errors=True)
