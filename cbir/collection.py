"""The images of a collection: stable ids, paths and labels.

Ids are the image's path relative to the collection folder, in POSIX form and without
the extension (``"42"``, ``"beach/7"``); when two files differ only by extension the
extension is kept for both. Labels come, in order, from a ``labels.csv`` (``id,label``)
in the folder, from sub-folder names, or are absent.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CollectionError, UnknownImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
LABELS_FILE = "labels.csv"


def _natural_key(text: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass
class Collection:
    root: Path
    ids: list[str]
    paths: list[Path]
    labels: list[str] | None
    label_source: str  # "labels.csv", "folders" or "none"
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {image_id: i for i, image_id in enumerate(self.ids)}

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def index_of(self, image_id: str) -> int:
        try:
            return self._index[str(image_id)]
        except KeyError:
            raise UnknownImageError(
                f"no image with id {image_id!r} in collection {self.name!r} "
                f"({len(self)} images, e.g. {', '.join(self.ids[:3])})"
            ) from None

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._index

    def path_of(self, image_id: str) -> Path:
        return self.paths[self.index_of(image_id)]

    def label_of(self, image_id: str) -> str | None:
        return None if self.labels is None else self.labels[self.index_of(image_id)]

    def class_counts(self) -> dict[str, int]:
        return dict(Counter(self.labels)) if self.labels else {}

    def signatures(self) -> list[str]:
        """Content hashes, so that a changed file is re-indexed even after a fresh clone."""
        return [file_signature(p) for p in self.paths]


def file_signature(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scan_collection(root: str | Path) -> Collection:
    """Scan ``root`` recursively for images. Raises CollectionError if missing or empty."""
    root = Path(root)
    if not root.exists():
        raise CollectionError(f"collection folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise CollectionError(f"{str(root)!r} is not a folder")
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    if not files:
        raise CollectionError(
            f"collection {str(root)!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    rel = [p.relative_to(root).as_posix() for p in files]
    stems = Counter(r.rsplit(".", 1)[0] for r in rel)
    ids = [r.rsplit(".", 1)[0] if stems[r.rsplit(".", 1)[0]] == 1 else r for r in rel]
    order = sorted(range(len(ids)), key=lambda i: _natural_key(ids[i]))
    ids = [ids[i] for i in order]
    paths = [files[i] for i in order]
    labels, source = _read_labels(root, ids)
    return Collection(root=root, ids=ids, paths=paths, labels=labels, label_source=source)


def _read_labels(root: Path, ids: list[str]) -> tuple[list[str] | None, str]:
    labels_file = root / LABELS_FILE
    if labels_file.exists():
        mapping: dict[str, str] = {}
        with open(labels_file, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if len(row) < 2 or (row[0].strip().lower() == "id" and row[1].strip().lower() == "label"):
                    continue
                key = row[0].strip()
                mapping[key] = row[1].strip()
                # accept ids written with their extension too
                mapping.setdefault(key.rsplit(".", 1)[0], row[1].strip())
        missing = [i for i in ids if i not in mapping]
        if missing:
            raise CollectionError(
                f"{labels_file} has no label for {len(missing)} image(s), e.g. {missing[0]!r}; "
                "add them or delete labels.csv"
            )
        return [mapping[i] for i in ids], LABELS_FILE
    folders = [i.split("/")[0] if "/" in i else None for i in ids]
    if all(f is not None for f in folders) and len(set(folders)) > 1:
        return folders, "folders"  # type: ignore[return-value]
    return None, "none"
