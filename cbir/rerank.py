"""Re-ranking without training: alpha query expansion, database-side augmentation and
Rocchio relevance feedback, all in the cosine space of L2-normalised features.

* αQE (Radenović, Tolias, Chum, TPAMI 2019): the query becomes the normalised sum of
  itself and its top-n neighbours weighted by ``sim ** alpha`` (negative similarities
  count 0), then the search runs again.
* DBA: every stored vector is replaced the same way by its own neighbourhood mean; done
  once per store, saved beside it and recomputed when the store changes. αQE runs on top.
* Rocchio (1971): ``q' = a q + b mean(relevant) - c mean(non-relevant)``, repeatable.

These need the cosine metric: they average directions on the unit sphere, which the
histogram metrics (chi-square, Bhattacharyya) and raw Euclidean distances do not share.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CBIRError, unknown

RERANK_METHODS = ("none", "aqe", "dba_aqe")
RERANK_LABELS = {"none": "Off", "aqe": "αQE", "dba_aqe": "DBA + αQE"}
DEFAULT_N = 10
DEFAULT_ALPHA = 3.0
ROCCHIO = (1.0, 0.75, 0.15)
_CHUNK = 2048
DBA_FILES = 3  # DBA files kept beside a store (one per (n, alpha)), newest first


@dataclass(frozen=True)
class Rerank:
    method: str = "none"
    n: int = DEFAULT_N
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self):
        if self.method not in RERANK_METHODS:
            raise unknown("re-ranking method", self.method, RERANK_METHODS)
        if not 1 <= int(self.n) <= 100:
            raise CBIRError(f"re-ranking n must be between 1 and 100, got {self.n}")
        if not 0 <= float(self.alpha) <= 20:
            raise CBIRError(f"re-ranking alpha must be between 0 and 20, got {self.alpha}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def label(self) -> str:
        return "" if not self.active else f"{RERANK_LABELS[self.method]} (n={self.n}, α={self.alpha:g})"


@dataclass
class FeedbackRound:
    relevant: list[str] = field(default_factory=list)
    non_relevant: list[str] = field(default_factory=list)


def check_metric(metric: str) -> None:
    if metric != "cosine":
        raise CBIRError(
            f"re-ranking and relevance feedback work in the cosine space of normalised features; "
            f"the {metric} metric does not admit them: choose cosine"
        )


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def alpha_query_expansion(
    queries: np.ndarray, database: np.ndarray, n: int, alpha: float, exclude: np.ndarray | None = None
) -> np.ndarray:
    """(q, d) expanded queries: normalise(q + sum_{top-n} max(sim, 0)^alpha * x).

    ``queries`` and ``database`` are L2-normalised; ``exclude[i]`` is a database row
    that query i may not use (itself, for a collection query), or -1.
    """
    q = np.atleast_2d(queries).astype(np.float32)
    out = np.empty_like(q)
    n = min(n, database.shape[0] - (1 if exclude is not None else 0))
    for start in range(0, q.shape[0], _CHUNK):
        block = q[start : start + _CHUNK]
        sims = block @ database.T
        if exclude is not None:
            ex = np.asarray(exclude[start : start + _CHUNK])
            rows = np.flatnonzero(ex >= 0)
            sims[rows, ex[rows]] = -np.inf
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        s = np.take_along_axis(sims, top, axis=1)
        w = np.clip(s, 0.0, None) ** alpha
        out[start : start + _CHUNK] = block + np.einsum("qk,qkd->qd", w, database[top])
    return l2_normalise(out)


def database_augmentation(database: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Every vector replaced by normalise(x + sum of its top-n other neighbours ^ alpha)."""
    db = l2_normalise(database)
    return alpha_query_expansion(db, db, n, alpha, exclude=np.arange(db.shape[0]))


def rocchio(query: np.ndarray, relevant: np.ndarray, non_relevant: np.ndarray, a: float = ROCCHIO[0], b: float = ROCCHIO[1], c: float = ROCCHIO[2]) -> np.ndarray:
    """a q + b mean(relevant) - c mean(non-relevant), normalised; empty sets contribute 0."""
    q = a * l2_normalise(query)
    if len(relevant):
        q = q + b * l2_normalise(relevant).mean(0)
    if len(non_relevant):
        q = q - c * l2_normalise(non_relevant).mean(0)
    return l2_normalise(q)


def dba_path(store_folder: Path, n: int, alpha: float) -> Path:
    return Path(store_folder) / f"dba-n{n}-a{alpha:g}.npz"


def load_or_build_dba(store, store_folder: Path, n: int, alpha: float) -> tuple[np.ndarray, float]:
    """The DBA matrix of a store (cached on disk, keyed by the store version); seconds spent building."""
    import time

    path = dba_path(store_folder, n, alpha)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("store_version") == store.version and data["embeddings"].shape == store.embeddings.shape:
                    return data["embeddings"], 0.0
        except Exception:
            pass  # damaged or stale: rebuild
    t = time.perf_counter()
    dba = database_augmentation(store.embeddings, n, alpha)
    seconds = time.perf_counter() - t
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dba-", suffix=".npz.tmp", dir=store_folder)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, embeddings=dba, meta=np.array(json.dumps({"store_version": store.version, "n": n, "alpha": alpha, "seconds": seconds})))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        prune_dba_files(store_folder, store.version, keep=path)
    except OSError:
        pass  # read-only features folder: keep it in memory only
    return dba, seconds


def prune_dba_files(store_folder: Path, version: str, keep: Path, limit: int = DBA_FILES) -> None:
    """Delete DBA files of older store versions, and all but the ``limit`` newest others."""
    files = sorted(Path(store_folder).glob("dba-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    kept = 0
    for old in files:
        if old == keep:
            continue
        try:
            with np.load(old, allow_pickle=False) as data:
                current = json.loads(str(data["meta"])).get("store_version") == version
        except Exception:
            current = False
        if current and kept < limit - 1:
            kept += 1
        else:
            old.unlink(missing_ok=True)


def feedback_rounds(raw: Sequence) -> list[FeedbackRound]:
    rounds = []
    for r in raw or []:
        if isinstance(r, FeedbackRound):
            rounds.append(r)
        else:
            rounds.append(FeedbackRound(list(r.get("relevant", [])), list(r.get("non_relevant", []))))
    return rounds
