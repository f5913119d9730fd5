"""Batched feature extraction with decoding in background threads, and indexing a
collection into its feature store (incrementally)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .collection import Collection, safe_text
from .errors import CBIRError, ImageError
from .images import DEFAULT_MAX_PIXELS, load_resized
from .store import DTYPES, FeatureStore, merge_update
from .store_format import load_store, save_store, store_dir, store_exists

Progress = Callable[[int, int], None]


@dataclass
class Extraction:
    features: np.ndarray  # (len(paths), d); rows of failed images are zero
    ok: np.ndarray  # (len(paths),) bool
    failures: list[tuple[str, str]]  # (path, reason)
    seconds: float


def _decode(path, size: int, max_pixels: int):
    try:
        return load_resized(path, size, max_pixels=max_pixels), None
    except ImageError as exc:
        return None, str(exc)
    except Exception as exc:  # never fatal: the image is skipped and reported
        return None, f"{path}: {type(exc).__name__}: {exc}"


def extract_paths(
    extractor,
    paths: Sequence[Path],
    batch_size: int = 32,
    threads: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
) -> Extraction:
    """Features for ``paths``; decoding runs ``threads`` batches ahead of the model."""
    start = time.perf_counter()
    n = len(paths)
    feats = np.zeros((n, extractor.spec.dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    failures: list[tuple[str, str]] = []
    size = extractor.input_size
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    done = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cbir-decode") as pool:
        pending: list[list[Future]] = []

        def submit(b: int) -> None:
            pending.append([pool.submit(_decode, paths[i], size, max_pixels) for i in batches[b]])

        lookahead = 2
        for b in range(min(lookahead, len(batches))):
            submit(b)
        for b, rows in enumerate(batches):
            futures = pending.pop(0)
            if b + lookahead < len(batches):
                submit(b + lookahead)
            arrays, good = [], []
            for row, fut in zip(rows, futures):
                arr, err = fut.result()
                if err is None:
                    arrays.append(arr)
                    good.append(row)
                else:
                    failures.append((safe_text(str(paths[row])), safe_text(err)))
            if arrays:
                _features_into(extractor, arrays, good, feats, ok, failures, paths)
            done += len(rows)
            if progress:
                progress(done, n)
    return Extraction(feats, ok, failures, time.perf_counter() - start)


def _features_into(extractor, arrays, rows, feats, ok, failures, paths) -> None:
    """One batch through the model; if the batch fails, image by image, so one image the
    model chokes on is skipped and named and the rest of the run is kept."""
    try:
        feats[rows] = extractor.features(np.stack(arrays))
        ok[rows] = True
        return
    except Exception:  # noqa: BLE001 - retried one by one below, each failure reported
        pass
    for arr, row in zip(arrays, rows):
        try:
            feats[row] = extractor.features(arr[None])[0]
            ok[row] = True
        except Exception as exc:  # noqa: BLE001 - never fatal: the image is skipped and reported
            failures.append((safe_text(str(paths[row])), f"{safe_text(str(paths[row]))}: the model failed on it "
                             f"({type(exc).__name__}: {safe_text(str(exc))})"))


@dataclass
class IndexReport:
    model: str
    weights: str
    images: int
    extracted: int
    reused: int
    removed: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, why): images that failed to decode
    seconds: float = 0.0
    path: Path | None = None
    scan_skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why): left out by the scan rule

    @property
    def skipped(self) -> list[str]:
        """Every image left out, one "why" line each: by the scan, then at decoding."""
        return [f"{name}: {why}" for name, why in self.scan_skipped] + [why for _, why in self.failures]

    @property
    def rate(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.model}: {self.images} images in store ({self.extracted} extracted, {self.reused} reused, "
            f"{self.removed} removed, {len(self.skipped)} skipped) in {self.seconds:.1f} s"
            + (f", {self.rate:.1f} images/s" if self.extracted else "")
        )


#: Images that failed to decode or extract, kept by id (with the reason) in the store's manifest
#: for the Collection page; the count is always exact.
FAILED_KEPT = 1000


def _reusable_store(folder: Path, dim: int, weights: str, dtype: str | None) -> FeatureStore | None:
    """The existing store when its vectors can be kept (same width and weights, and not
    float16 vectors asked to become float32), else None."""
    if not store_exists(folder):
        return None
    try:
        old = load_store(folder)
    except CBIRError:
        return None  # unreadable: rebuild from scratch
    narrower = old.dtype == "float16" and dtype == "float32"
    return old if old.dim == dim and old.manifest.get("weights") == weights and not narrower else None


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise CBIRError(f"unknown store dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")


def _extract_here(model: str, weights: str, extractor, paths, batch_size, threads, max_pixels, progress) -> Extraction:
    """The one-process path: the model built here (or the one given), decoding in threads."""
    from .extractors import build_extractor

    return extract_paths(extractor or build_extractor(model, weights), paths, batch_size, threads, max_pixels, progress)


def _failed_ids(collection: Collection, rows: list[int], failures: list[tuple[str, str]]) -> list[list[str]]:
    """[id, why] of each failure (reported by path) at ``rows`` of the collection."""
    id_of = {safe_text(str(collection.paths[i])): collection.ids[i] for i in rows}
    return [[id_of.get(path, path), why] for path, why in failures]


def index_collection(
    collection: Collection,
    model: str,
    features_dir: Path,
    weights: str = "imagenet",
    batch_size: int = 32,
    threads: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    extractor=None,
    dtype: str | None = None,
    runner=None,
) -> IndexReport:
    """Extract only new or changed images, drop removed ones, and write the store atomically
    as ``dtype`` (float32 or float16; default: the existing store's, else float32).
    ``runner`` (a :class:`cbir.distributed.DaskRunner`) extracts on a Dask cluster."""
    from .extractors import get_spec

    _check_dtype(dtype)
    spec = get_spec(model)
    folder = store_dir(features_dir, collection.name, spec.name, weights)
    old = _reusable_store(folder, spec.dim, weights, dtype)
    dtype = dtype or (old.dtype if old is not None else "float32")
    signatures = collection.signatures()
    todo, kept = merge_update(old, collection.ids, signatures)
    removed = 0 if old is None else len(set(old.ids.tolist()) - set(collection.ids))
    start = time.perf_counter()
    failures: list[tuple[str, str]] = []
    embeddings = kept if kept is not None else np.zeros((len(collection), spec.dim), dtype=np.float32)
    ok = np.ones(len(collection), dtype=bool)
    if todo:
        paths = [collection.paths[i] for i in todo]
        ext = runner.extract(spec.name, weights, folder, paths, [signatures[i] for i in todo], batch_size, max_pixels, progress) \
            if runner is not None else _extract_here(spec.name, weights, extractor, paths, batch_size, threads, max_pixels, progress)
        embeddings[todo] = ext.features
        ok[todo] = ext.ok
        failures = [(safe_text(str(p)), safe_text(str(why))) for p, why in ext.failures]  # printable, JSON-safe
    elif progress:
        progress(len(collection), len(collection))
    seconds = time.perf_counter() - start
    if not ok.any():
        raise CBIRError(f"no image of {collection.root} could be read; {len(failures)} failed, e.g. {failures[0][1]}")
    keep = np.flatnonzero(ok)
    failed_ids = _failed_ids(collection, [i for i in todo if not ok[i]], failures)
    if todo or removed or old is None or len(old) != len(keep) or old.dtype != dtype or old.manifest.get("failed_count"):
        store = FeatureStore(
            model=spec.name,
            weights=weights,
            embeddings=embeddings[keep],
            ids=np.asarray(collection.ids)[keep],
            signatures=np.asarray(signatures)[keep],
            manifest={"collection": collection.name, "created": old.manifest.get("created") if old else None,
                      "failed": failed_ids[:FAILED_KEPT], "failed_count": len(failed_ids)},
        )
        save_store(store, folder, dtype)
    if runner is not None:
        runner.stored(folder)  # the run's shards are no longer needed
    return IndexReport(model=spec.name, weights=weights, images=len(keep), extracted=len(todo) - len(failures),
                       reused=len(collection) - len(todo), removed=removed, failures=failures, seconds=seconds, path=folder,
                       scan_skipped=list(collection.skipped))
