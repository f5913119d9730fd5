"""The images of a collection: stable ids, paths and labels.

The scan rule (one rule for every folder; README "Your own collections"):

- an image is a file whose extension is a format the installed Pillow decodes
  (:func:`image_extensions`: JPEG, PNG, BMP, WebP, TIFF, GIF, JFIF, AVIF, ...), found
  recursively; everything else (``labels.csv``, notes) is not an image and is ignored;
- hidden files and hidden folders (a name starting with ".": ``.ipynb_checkpoints/``,
  ``.thumbnails/``) are skipped, the folder with everything in it;
- symbolic links to folders are followed (a class folder may live elsewhere); a link back to
  a folder that contains it (a loop) is refused, a link to nothing is skipped, a link to a
  *file* outside the collection and its linked folders is skipped (``leak.png ->
  /etc/passwd`` in a downloaded archive would be served as an image); a scan stops with an
  error past 5,000,000 entries or 64 folders deep;
- every image skipped for any reason (hidden, broken link, loop, a format this Pillow
  cannot decode such as ``.heic``, an id taken twice, a stray root image) is kept in
  ``Collection.skipped`` as ``(name, why)``; indexing counts and names them.

Ids are the image's path relative to the collection folder, in POSIX form and without
the extension (``"42"``, ``"beach/7"``); when two files differ only by extension the
extension is kept for both. Names are decoded with ``os.fsdecode`` and every byte that
is not UTF-8 is written ``%XX`` (``caf\\xe9.jpg`` -> ``caf%E9``), so an id is valid
text in JSON, CSV and (percent-encoded) URLs whatever bytes the file name holds.

Labels come, in order, from a ``labels.csv`` (``id,label``; UTF-8 with or without a BOM,
anything else is one error naming the file and line) in the folder, from sub-folder
names (images at the root of such a collection are strays: skipped and named, when there
are at most 3 of them or a tenth of the images), or are absent. :func:`add_images` copies uploads
into a collection (the app's Collection page; usable by the API and scripts).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import CBIRError, CollectionError, UnknownImageError, safe_text

LABELS_FILE = "labels.csv"
MAX_FIND_CHARS = 200  # a search text longer than any id or path is cut, not scanned
STRAY_SHARE, STRAY_MIN = 0.1, 3  # a class-folder collection tolerates max(3, a tenth) root images (skipped)

# formats Pillow registers but cannot turn into pixels here: stubs need a plugin of their own
_NOT_DECODED = {"MPEG", "IPTC", "BUFR", "GRIB", "HDF5", "WMF", "PDF", "PALM"}
# common image extensions no installed Pillow plugin reads: named when skipped, never silent
_OTHER_IMAGES = frozenset({".heic", ".heif", ".jxl", ".svg", ".raw", ".cr2", ".cr3", ".nef", ".arw", ".dng",
                           ".orf", ".rw2", ".exr", ".hdr", ".avif", ".avifs", ".eps", ".ps", ".wmf", ".emf"})


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Every extension of a format the installed Pillow can decode (its registered
    extensions, minus formats it only identifies, and EPS without Ghostscript)."""
    from PIL import EpsImagePlugin, Image

    Image.init()
    drop = set(_NOT_DECODED) | (set() if EpsImagePlugin.has_ghostscript() else {"EPS"})
    return frozenset(e.lower() for e, f in Image.registered_extensions().items() if f in Image.OPEN and f not in drop)


LABEL_RE = re.compile(r"[\w .-]{1,40}")


def _natural_key(text: str):
    """Natural order: the ASCII digit runs compare as numbers ("2" < "10"), the rest as text
    (a "²" is text: ``str.isdigit`` would take it for a number that ``int`` refuses)."""
    return [(0, int(t), "") if k % 2 else (1, 0, t) for k, t in enumerate(re.split(r"([0-9]+)", text))]


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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative name, why) of images the scan left out
    label_note: str = ""  # why the labels are not what the folder suggests (e.g. too many root images)
    alias: str | None = None  # the name it is registered under (cbir.collection_registry), if not the folder's
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _labels_memo: dict[tuple, object] = field(default_factory=dict, repr=False)
    _find_memo: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _search_names: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._index = {image_id: i for i, image_id in enumerate(self.ids)}

    @property
    def name(self) -> str:
        """What stores and caches are keyed by: the registered name, else the folder's name."""
        return self.alias or self.root.resolve().name

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

    @property
    def labels_digest(self) -> str:
        """A hash of the collection's name and every (id, label): what a cached answer's labels,
        relevance and figures depend on besides the stores (computed once)."""
        if "digest" not in self._labels_memo:
            digest = hashlib.blake2b(self.name.encode(), digest_size=12)
            for image_id, label in zip(self.ids, self.labels or [None] * len(self.ids)):
                digest.update(f"{image_id}\0{label}\0".encode("utf-8", "surrogateescape"))
            self._labels_memo["digest"] = digest.hexdigest()
        return self._labels_memo["digest"]

    def class_counts(self) -> dict[str, int]:
        return dict(Counter(self.labels)) if self.labels else {}

    def signatures(self) -> list[str]:
        """Content hashes, so that a changed file is re-indexed even after a fresh clone."""
        return [file_signature(p) for p in self.paths]

    def files_digest(self) -> str:
        """One hash of every image's content (:meth:`signatures`, read now: a changed file
        changes it): what an answer computed from the pixels themselves is cached under."""
        return hashlib.blake2b("\n".join(self.signatures()).encode(), digest_size=16).hexdigest()


def file_signature(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scan_collection(root: str | Path, name: str | None = None) -> Collection:
    """Scan ``root`` by the scan rule (module docstring); ``name``: the name it is registered
    under, when not the folder's. Raises CollectionError if the folder is missing or holds
    no image, or if labels.csv cannot be read."""
    root = Path(root)
    try:
        exists = root.exists()
    except OSError as exc:  # a name too long, a permission on a parent
        raise CollectionError(f"collection folder {safe_text(str(root))[:200]!r} cannot be read ({exc.strerror})") from None
    if not exists:
        raise CollectionError(f"collection folder {safe_text(str(root))!r} does not exist")
    if not root.is_dir():
        raise CollectionError(f"{safe_text(str(root))!r} is not a folder")
    found, skipped = _walk(root)
    ids, paths = _assign_ids(found, skipped)
    if not ids:
        why = f"; {len(skipped)} skipped, e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise CollectionError(f"collection {safe_text(str(root))!r} holds no images (JPEG, PNG, TIFF, GIF, WebP, ...){why}")
    labels, source, note = _read_labels(root, ids)
    if source == "folders" and None in labels:  # stray root images: the classes stay, the strays go
        keep = [k for k, label in enumerate(labels) if label is not None]
        skipped += [(_shown(paths[k], root), "at the root of a collection labelled by its sub-folders, so it has no "
                     "class: skipped (move it into a class folder)") for k, label in enumerate(labels) if label is None]
        ids, paths, labels = [ids[k] for k in keep], [paths[k] for k in keep], [labels[k] for k in keep]
    return Collection(root=root, ids=ids, paths=paths, labels=labels, label_source=source, skipped=skipped, label_note=note,
                      alias=name)


def _shown(path: Path, root: Path) -> str:
    return safe_text(os.path.relpath(path, root).replace(os.sep, "/"))


#: Bounds of one scan (a link to ``/`` must not walk the whole machine).
MAX_SCAN_ENTRIES = 5_000_000
MAX_SCAN_DEPTH = 64


def _walk(root: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """(relative name, path) of every image under ``root``, and (name, why) of every image
    or folder skipped, following symbolic links but never round a loop."""
    exts = image_extensions()
    found: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []
    allowed = [os.path.realpath(root) + os.sep]  # where a file link may point: the collection, linked folders
    stack = [(str(root), "", (_node(str(root)),))]
    visited = 0
    while stack:
        folder, rel, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((safe_text(rel or ".") + "/", f"folder not readable ({exc.strerror}): skipped"))
            continue
        visited += len(entries)
        if visited > MAX_SCAN_ENTRIES or len(ancestors) > MAX_SCAN_DEPTH:
            raise CollectionError(f"collection {safe_text(str(root))!r} is too large to scan: over {MAX_SCAN_ENTRIES:,} "
                                  f"entries or {MAX_SCAN_DEPTH} folders deep (a link to a whole disk?)")
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            kind, hidden = _kind(entry), entry.name.startswith(".")
            if kind == "dir":
                node = _node(entry.path)
                if hidden:
                    skipped.append((safe_text(name) + "/", "hidden folder: skipped with everything in it"))
                elif node in ancestors:
                    skipped.append((safe_text(name) + "/", "symbolic link back to a folder that contains it (a loop): not followed"))
                else:
                    if entry.is_symlink():  # a class folder living elsewhere: its files may be links into it
                        allowed.append(os.path.realpath(entry.path) + os.sep)
                    stack.append((entry.path, name, ancestors + (node,)))
                continue
            if kind == "file" and entry.is_symlink() and not os.path.realpath(entry.path).startswith(tuple(allowed)):
                # `leak.png -> /etc/passwd` in a downloaded archive would be served as an image
                skipped.append((safe_text(name), "symbolic link to a file outside the collection: not followed"))
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            why = _skip_reason(kind, hidden, ext, exts)
            if why == "":
                found.append((name, Path(entry.path)))
            elif why is not None:
                skipped.append((safe_text(name), why))
    return found, skipped


def _skip_reason(kind: str, hidden: bool, ext: str, exts: frozenset[str]) -> str | None:
    """"" for an image to index, a reason for an image skipped, None for a file that is not an image."""
    if ext not in exts and ext not in _OTHER_IMAGES:
        return None
    if hidden:
        return "hidden file: skipped"
    if kind == "broken":
        return "symbolic link to nothing: skipped"
    if kind != "file":
        return "not a regular file: skipped"
    if ext not in exts:
        return f"{ext} is not a format the installed Pillow can decode: skipped (convert it to PNG or JPEG)"
    return ""


def _node(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _kind(entry: os.DirEntry) -> str:
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        return "broken" if entry.is_symlink() else "other"
    except OSError:
        return "broken"


def _assign_ids(found: list[tuple[str, Path]], skipped: list[tuple[str, str]]) -> tuple[list[str], list[Path]]:
    """Ids in natural order and their paths; an image whose id another image already has
    (only possible with odd names such as ``a.jpg.png`` next to ``a.jpg``) is skipped."""
    rel = [safe_text(name) for name, _ in found]
    stems = Counter(r.rsplit(".", 1)[0] for r in rel)
    ids = [r.rsplit(".", 1)[0] if stems[r.rsplit(".", 1)[0]] == 1 else r for r in rel]
    order = sorted(range(len(ids)), key=lambda i: (_natural_key(ids[i]), rel[i]))
    taken: dict[str, str] = {}
    out_ids, out_paths = [], []
    for i in order:
        if ids[i] in taken:
            skipped.append((rel[i], f"its id {ids[i]!r} is already the id of {taken[ids[i]]}: skipped (rename it)"))
            continue
        taken[ids[i]] = rel[i]
        out_ids.append(ids[i])
        out_paths.append(found[i][1])
    return out_ids, out_paths


def _read_labels(root: Path, ids: list[str]) -> tuple[list[str | None] | None, str, str]:
    """(labels aligned with ``ids``, their source, a note on why they are absent)."""
    labels_file = root / LABELS_FILE
    if labels_file.exists():
        mapping = read_labels_csv(labels_file)
        missing = [i for i in ids if i not in mapping]
        if missing:
            raise CollectionError(
                f"{safe_text(str(labels_file))} has no label for {len(missing)} image(s), e.g. {missing[0]!r}; "
                "add them or delete labels.csv"
            )
        return [mapping[i] for i in ids], LABELS_FILE, ""
    folders = [i.split("/")[0] if "/" in i else None for i in ids]
    classes = {f for f in folders if f is not None}
    strays = [i for i, f in zip(ids, folders) if f is None]
    if len(classes) > 1 and len(strays) <= max(STRAY_MIN, STRAY_SHARE * len(ids)):
        return folders, "folders", ""
    note = "" if len(classes) < 2 else (
        f"labels not taken from the {len(classes)} sub-folders: {len(strays)} of {len(ids)} images are at the root "
        f"(e.g. {strays[0]!r}); move them into class folders or add a labels.csv")
    return None, "none", note


def read_labels_csv(labels_file: Path) -> dict[str, str]:
    """``{id: label}`` from a labels.csv in UTF-8 (a BOM is fine); ids may carry their
    extension. Any other encoding is one CollectionError naming the file, line and fix."""
    data = labels_file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CollectionError(
            f"{safe_text(str(labels_file))}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x}); save it as UTF-8 "
            "(in a spreadsheet: 'CSV UTF-8')"
        ) from None
    mapping: dict[str, str] = {}
    for row in csv.reader(io.StringIO(text, newline="")):
        if len(row) < 2 or (row[0].strip().lower() == "id" and row[1].strip().lower() == "label"):
            continue
        key = row[0].strip()
        mapping[key] = row[1].strip()
        mapping.setdefault(key.rsplit(".", 1)[0], row[1].strip())  # ids written with their extension too
    return mapping


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
    while any((folder / f"{name}{e}").exists() for e in image_extensions()):
        n += 1
        name = f"upload_{stem}_{n}"
    return name
