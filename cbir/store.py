"""Feature store: one float32 (n, d) matrix and its ids per collection and model.

A store is a single ``.npz`` file (embeddings, ids, content signatures and a JSON
manifest) plus a human-readable ``manifest.json`` beside it. Writes go to a
temporary file in the same folder and are renamed into place, so an interrupted
``cbir index`` always leaves the previous store readable.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StoreError

#: Bump when preprocessing or pooling changes, so stale features are not mixed in.
PREPROCESSING_VERSION = 1
STORE_FILE = "store.npz"


@dataclass
class FeatureStore:
    model: str
    weights: str
    embeddings: np.ndarray  # (n, d) float32
    ids: np.ndarray  # (n,) str
    signatures: np.ndarray  # (n,) str, content hash of each image
    manifest: dict = field(default_factory=dict)
    _rows: dict[str, int] = field(default_factory=dict, repr=False)
    _indexes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        self.ids = np.asarray(self.ids, dtype=str)
        self.signatures = np.asarray(self.signatures, dtype=str)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != self.ids.shape[0]:
            raise StoreError(f"store shapes disagree: {self.embeddings.shape} vs {self.ids.shape} ids")
        self._rows = {image_id: i for i, image_id in enumerate(self.ids.tolist())}

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def version(self) -> str:
        """Changes whenever the content changes; keys the result cache."""
        return str(self.manifest.get("version", ""))

    def row_of(self, image_id: str) -> int:
        try:
            return self._rows[str(image_id)]
        except KeyError:
            raise StoreError(
                f"image {image_id!r} is not in the {self.model} feature store; run `cbir index --model {self.model}`"
            ) from None

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._rows

    def vector(self, image_id: str) -> np.ndarray:
        return self.embeddings[self.row_of(image_id)]

    def index(self, metric: str):
        """The vectors prepared for ``metric`` (built on first use, then reused)."""
        from .distances import PreparedIndex, normalise_metric

        key = normalise_metric(metric)
        if key not in self._indexes:
            self._indexes[key] = PreparedIndex(self.embeddings, key)
        return self._indexes[key]

    def aligned(self, ids: list[str]) -> np.ndarray:
        """Rows for ``ids`` in that order (all must be present)."""
        return self.embeddings[[self.row_of(i) for i in ids]]


def store_dir(features_dir: Path, collection_name: str, model: str, weights: str = "imagenet") -> Path:
    suffix = "" if weights == "imagenet" else f"@{_weights_tag(weights)}"
    return Path(features_dir) / collection_name / f"{model}{suffix}"


def _weights_tag(weights: str) -> str:
    if weights in ("imagenet", "none"):
        return weights
    return "file-" + Path(weights).stem


def save_store(store: FeatureStore, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    manifest = dict(store.manifest)
    manifest.update(
        model=store.model,
        weights=store.weights,
        preprocessing_version=PREPROCESSING_VERSION,
        dim=store.dim,
        images=len(store),
        created=manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    manifest["version"] = _content_version(store)
    store.manifest = manifest
    target = folder / STORE_FILE
    fd, tmp = tempfile.mkstemp(prefix=".store-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                embeddings=store.embeddings,
                ids=store.ids,
                signatures=store.signatures,
                manifest=np.array(json.dumps(manifest)),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; stores are shared with other users/containers
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return target


def _remove_stale_temporaries(folder: Path, older_than: float = 600.0) -> None:
    """Temporary files left by a killed writer (a live writer's file is younger)."""
    now = time.time()
    for tmp in folder.glob(".store-*.npz.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
        except OSError:
            pass


def _content_version(store: FeatureStore) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    h.update(store.embeddings.tobytes())
    h.update("\n".join(store.ids.tolist()).encode())
    return h.hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_store(folder: Path) -> FeatureStore:
    path = Path(folder) / STORE_FILE
    if not path.exists():
        raise StoreError(f"no feature store at {path}; run `cbir index` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            manifest = json.loads(str(data["manifest"]))
            return FeatureStore(
                model=manifest["model"],
                weights=manifest["weights"],
                embeddings=data["embeddings"],
                ids=data["ids"],
                signatures=data["signatures"],
                manifest=manifest,
            )
    except StoreError:
        raise
    except Exception as exc:  # a damaged file: say which and what to do
        raise StoreError(f"feature store {path} is unreadable ({exc}); delete it and run `cbir index`") from exc


def store_exists(folder: Path) -> bool:
    return (Path(folder) / STORE_FILE).exists()


def merge_update(
    old: FeatureStore | None,
    ids: list[str],
    signatures: list[str],
) -> tuple[list[int], np.ndarray | None]:
    """Which of ``ids`` need extraction; rows to keep from ``old`` aligned to ``ids``.

    Returns (indices into ``ids`` to extract, kept (len(ids), d) matrix with the
    rows already known filled in, or None when nothing can be reused).
    """
    if old is None or len(old) == 0:
        return list(range(len(ids))), None
    kept = np.zeros((len(ids), old.dim), dtype=np.float32)
    todo: list[int] = []
    old_sig = dict(zip(old.ids.tolist(), old.signatures.tolist()))
    for i, (image_id, sig) in enumerate(zip(ids, signatures)):
        if old_sig.get(image_id) == sig:
            kept[i] = old.embeddings[old.row_of(image_id)]
        else:
            todo.append(i)
    return todo, kept
