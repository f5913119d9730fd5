"""The images of a collection: stable ids, paths and labels.

Ids are the image's path relative to the collection folder, in POSIX form and without
the extension (``"42"``, ``"beach/7"``); when two files differ only by extension the
extension is kept for both. Labels come, in order, from a ``labels.csv`` (``id,label``)
in the folder, from sub-folder names, or are absent. :func:`add_images` copies uploads
into a collection (the app's Collection page; usable by the API and scripts).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CBIRError, CollectionError, UnknownImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
LABELS_FILE = "labels.csv"
MAX_FIND_CHARS = 200  # a search text longer than any id or path is cut, not scanned


LABEL_RE = re.compile(r"[\w .-]{1,40}")


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass
class Collection:
    """The images of one collection: ``ids[i]`` (the path relative to ``root``, POSIX
    separators) names the image file ``paths[i]``; ``labels[i]`` is its class (from
    ``labels.csv``, the sub-folders, or None: ``label_source`` says which). Ids are in
    natural order. Lookups raise UnknownImageError for an id not in the collection."""

    root: Path
    ids: list[str]
    paths: list[Path]
    labels: list[str] | None
    label_source: str  # "labels.csv", "folders" or "none"
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _labels_memo: dict[tuple, object] = field(default_factory=dict, repr=False)
    _find_memo: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _search_names: list[str] = field(default_factory=list, repr=False)

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

    def labels_for(self, ids: list[str]):
        """Labels aligned with ``ids`` as an object array (None for ids no longer in the
        collection), or None for an unlabelled collection; memoised for repeated id lists."""
        import numpy as np

        if self.labels is None:
            return None
        key = (len(ids), ids[0] if ids else None, ids[-1] if ids else None, hash(tuple(ids)))
        memo = self._labels_memo
        if key not in memo:
            if len(memo) > 16:
                memo.clear()
            memo[key] = np.array([self.label_of(i) if i in self else None for i in ids], dtype=object)
        return memo[key]

    def check_ids(self, ids, what: str) -> None:
        """CollectionError naming up to five of ``ids`` that are not in the collection."""
        missing = [str(i) for i in ids if str(i) not in self]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise CollectionError(f"{what} names {len(missing)} id(s) not in collection {self.name!r}: {shown}")

    def matching_rows(self, text: str = "") -> range | list[int]:
        """Rows whose id, relative file name or label contains ``text`` (case-insensitive;
        an exact id first; every row for an empty text), memoised for paging."""
        needle = str(text or "").strip().lower()[:MAX_FIND_CHARS]
        if not needle:
            return range(len(self.ids))
        if needle not in self._find_memo:
            if len(self._find_memo) >= 8:
                self._find_memo.pop(next(iter(self._find_memo)))
            labels = self.labels or [""] * len(self.ids)
            rows = [i for i, (name, label) in enumerate(zip(self._names(), labels)) if needle in name or needle in str(label).lower()]
            exact = self._index.get(str(text).strip())
            if exact is not None:
                rows = [exact] + [r for r in rows if r != exact]
            self._find_memo[needle] = rows
        return self._find_memo[needle]

    def find(self, text: str = "", offset: int = 0, limit: int = 12) -> tuple[int, list[str]]:
        """(number of matches of ``text``, the ``limit`` ids from ``offset``): the query
        picker of a million-image collection pages through this instead of one long list."""
        rows = self.matching_rows(text)
        return len(rows), [self.ids[r] for r in rows[max(0, offset) : max(0, offset) + limit]]

    def _names(self) -> list[str]:
        """Lower-case "id relative/path.jpg" of every image, built once."""
        if not self._search_names:
            prefix = str(self.root).rstrip("/") + "/"
            self._search_names = [f"{i} {str(p).removeprefix(prefix)}".lower() for i, p in zip(self.ids, self.paths)]
        return self._search_names

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


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)  # ids of the new images
    rejected: list[str] = field(default_factory=list)  # "name: why", one per refused file


def add_images(collection: Collection, files: list[tuple[str, bytes]], label: str | None = None,
               max_pixels: int | None = None) -> AddReport:
    """Copy uploaded ``(file name, bytes)`` into the collection's folder, without ever
    overwriting: into the root with ``label`` appended to labels.csv when labels come
    from that file, else into an ``uploads/`` sub-folder. Names are cleaned to word
    characters, '.' and '-'; a file that cannot be decoded is refused with the reason.
    The caller rescans the collection (and indexes the new images) afterwards."""
    from .images import DEFAULT_MAX_PIXELS, open_image

    if not os.access(collection.root, os.W_OK):
        raise CollectionError(f"the collection folder {collection.root} is read-only; mount it read-write to add images")
    by_csv = collection.label_source == LABELS_FILE
    if by_csv and not (label and LABEL_RE.fullmatch(label)):
        raise CollectionError("give a label: letters, digits, spaces, '.', '-' or '_' (up to 40)")
    target = collection.root if by_csv else collection.root / "uploads"
    target.mkdir(exist_ok=True)
    report = AddReport()
    for filename, data in files:
        try:
            open_image(data, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)  # refuse what cannot be indexed
        except CBIRError as exc:
            report.rejected.append(f"{filename}: {exc}")
            continue
        name = _free_name(target, filename)
        (target / f"{name}.{filename.rsplit('.', 1)[-1].lower()}").write_bytes(data)
        report.added.append(name if by_csv else f"uploads/{name}")
    if report.added and by_csv:
        with open(collection.root / LABELS_FILE, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([(i, label) for i in report.added])
    return report


def _free_name(folder: Path, filename: str) -> str:
    """``upload_<clean stem>``, with ``_2``, ``_3``... until no image of that stem exists."""
    stem = re.sub(r"[^\w.-]", "_", filename.rsplit(".", 1)[0])[:60] or "upload"
    name, n = f"upload_{stem}", 1
    while any((folder / f"{name}{e}").exists() for e in IMAGE_EXTENSIONS):
        n += 1
        name = f"upload_{stem}_{n}"
    return name
