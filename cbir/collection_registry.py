"""The collections a server knows: a name and a folder each, kept in one JSON file with the
runtime state (``<CBIR_VAR_DIR>/collections.json``), written atomically under a lock.

The default collection (CBIR_COLLECTION, ``image.orig``) is always there, under its folder's
name, and cannot be removed. A name is what stores, caches and URLs use (``features/<name>/``),
so two folders both called ``photos`` live side by side under two names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .collection import Collection, scan_collection
from .config import Settings
from .errors import CollectionError, CollectionExistsError, ForbiddenError, RequestError, UnknownNameError
from .store_format import store_exists, store_lock, write_atomic

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REGISTRY_FILE = "collections.json"


@dataclass(frozen=True)
class CollectionEntry:
    """One registered collection: ``name`` (1-64 of ``A-Za-z0-9_.-``), its ``folder``
    (absolute), who added it and when (Unix seconds), and whether its images were uploaded
    (removed with it) or are a folder of the server's (left in place)."""

    name: str
    folder: str
    added_by: str = "settings"
    added_at: float = 0.0
    uploaded: bool = False
    default: bool = False


class CollectionRegistry:
    """The server's collections. Raises :class:`UnknownNameError` for a name not registered,
    :class:`CollectionExistsError` for a name taken, :class:`RequestError` for a bad name and
    :class:`CollectionError` for a folder that is not a collection."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = Path(settings.var_dir) / REGISTRY_FILE

    @property
    def default(self) -> CollectionEntry:
        folder = Path(self.settings.collection).resolve()
        return CollectionEntry(folder.name, str(folder), default=True)

    def entries(self) -> dict[str, CollectionEntry]:
        """Every collection by name, the default first."""
        stored = self._read()
        out = {self.default.name: self.default}
        out.update({name: CollectionEntry(**e) for name, e in sorted(stored.items()) if name != self.default.name})
        return out

    def get(self, name: str) -> CollectionEntry:
        found = self.entries().get(name)
        if found is None:
            raise UnknownNameError(f"unknown collection {name!r}; choose one of: {', '.join(self.entries())} "
                                   "(or add it: `cbir collections add NAME FOLDER`)")
        return found

    def open(self, name_or_folder: str | Path | None = None) -> Collection:
        """The named collection scanned (None: the default); a path to a folder that is not a
        registered name is scanned as it is (the CLI's ``--collection FOLDER``)."""
        if name_or_folder is None:
            return scan_collection(self.default.folder)
        key, entries = str(name_or_folder), self.entries()  # the file, read once
        if key in entries:
            return scan_collection(entries[key].folder, name=key)
        if os.sep in key or Path(key).is_dir():
            folder = Path(key).resolve()
            taken = entries.get(folder.name)
            if taken is not None and Path(taken.folder).resolve() != folder:
                # its stores would be written over the registered collection's (features/<name>/)
                raise CollectionError(f"the folder {key} has the name of the registered collection {folder.name!r} (another "
                                      f"folder): register it under a name of its own (`cbir collections add NAME {key}`) "
                                      "and use that name")
            return scan_collection(key)
        return scan_collection(self.get(key).folder)  # raises the unknown-name error

    def add(self, name: str, folder: str | Path, actor: str, uploaded: bool = False, confined: bool = False) -> CollectionEntry:
        """Register ``folder`` as ``name`` after scanning it (it must hold images). ``confined``
        (the API, the app): the folder must lie inside CBIR_COLLECTIONS_ROOT (raises
        :class:`cbir.errors.ForbiddenError` otherwise), so a web user cannot publish any
        folder of the server."""
        if confined:
            self.check_confined(folder)
        self._check_new_name(name)
        folder = Path(folder if Path(folder).is_absolute() or not confined else Path(self.settings.collections_root) / folder).resolve()
        collection = scan_collection(folder, name=name)  # CollectionError: missing, not a folder, no images
        self._check_not_inside_uploaded(folder, uploaded)
        with self._locked():
            stored = self._read()
            if name in stored or name == self.default.name:
                raise CollectionExistsError(f"a collection named {name!r} exists; choose another name or remove it first")
            # stores already under this unused name are orphans (a removed collection's, written by an
            # indexing run that outlived the removal, or a folder of that name scanned by path): they
            # describe other images, so they go before the name is given to this folder
            shutil.rmtree(Path(self.settings.features_dir) / name, ignore_errors=True)
            entry = CollectionEntry(name, str(folder), actor, time.time(), uploaded)
            stored[name] = asdict(entry)
            self._write(stored)
        del collection
        return entry

    def add_zip(self, name: str, source: str | Path | bytes, actor: str, limits=None,
                progress: Callable[[int, int], None] | None = None):
        """Unpack the zip ``source`` (path or bytes) into ``CBIR_COLLECTIONS_ROOT/<name>`` and
        register it as an uploaded collection (removed with its images). Returns
        (:class:`CollectionEntry`, :class:`cbir.archive.Unpacked`). Raises what :meth:`add`
        raises, and :class:`cbir.archive.ArchiveError` for a zip that breaks a bound
        (:class:`cbir.archive.ZipLimits`, default from the settings); on any error no folder is
        left behind."""
        from .archive import ZipLimits, unpack_zip

        self._check_new_name(name)
        target = Path(self.settings.collections_root).resolve() / name
        unpacked = unpack_zip(source, target, limits or ZipLimits.from_settings(self.settings), progress)
        try:
            return self.add(name, target, actor, uploaded=True, confined=True), unpacked
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def _check_not_inside_uploaded(self, folder: Path, uploaded: bool) -> None:
        """A folder inside (or around) an uploaded collection's is refused: removing that
        collection deletes its folder, and with it the other collection's images."""
        for other in self.entries().values():
            theirs = Path(other.folder).resolve()
            if (other.uploaded or uploaded) and (folder == theirs or theirs in folder.parents or folder in theirs.parents):
                raise ForbiddenError(f"that folder overlaps the collection {other.name!r}"
                                     + (", whose images were uploaded" if other.uploaded else "")
                                     + ": choose a folder of its own")

    def _check_new_name(self, name: str) -> None:
        if not NAME_RE.fullmatch(name or ""):
            raise RequestError(f"a collection name is 1-64 letters, digits, '_', '.' or '-' and starts with a letter "
                               f"or digit, got {name!r}")
        if name in self.entries():
            raise CollectionExistsError(f"a collection named {name!r} exists; choose another name or remove it first")

    def check_confined(self, folder: str | Path) -> None:
        root = Path(self.settings.collections_root).resolve()
        target = Path(folder if Path(folder).is_absolute() else root / folder).resolve()
        if root not in target.parents:  # strictly inside: the root itself would span every collection in it
            raise ForbiddenError(f"collections are added from folders inside CBIR_COLLECTIONS_ROOT ({root.name}/): "
                                 "copy the images there, or ask an admin to run `cbir collections add`")

    def remove(self, name: str) -> CollectionEntry:
        """Forget ``name`` and delete its feature stores; its images only if they were uploaded."""
        entry = self.get(name)
        if entry.default:
            raise RequestError(f"{name!r} is the default collection (CBIR_COLLECTION): it cannot be removed")
        with self._locked():
            stored = self._read()
            stored.pop(name, None)
            self._write(stored)
        shutil.rmtree(Path(self.settings.features_dir) / name, ignore_errors=True)
        if entry.uploaded:
            shutil.rmtree(entry.folder, ignore_errors=True)
        return entry

    # -- the file -----------------------------------------------------------------------------
    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CollectionError(f"{self.path} is damaged ({exc}); fix or delete it (the default collection "
                                  "needs no entry)") from None
        return data if isinstance(data, dict) else {}

    def _write(self, stored: dict) -> None:
        write_atomic(self.path, lambda fh: fh.write(json.dumps(stored, indent=1, sort_keys=True).encode()))

    def _locked(self):
        """One writer at a time, across processes (the flock the stores use, on this file)."""
        return store_lock(self.path)


def describe(registry: CollectionRegistry, entry: CollectionEntry) -> dict:
    """What a listing shows of one collection: name, folder, images, labels source, the models
    with a feature store for it; ``error`` when its folder cannot be read now."""
    row = {"name": entry.name, "folder": entry.folder, "default": entry.default, "uploaded": entry.uploaded,
           "added_by": entry.added_by, "images": None, "labels": "?", "models": [], "error": None}
    try:
        collection = scan_collection(entry.folder, name=entry.name)
        row.update(images=len(collection), labels=collection.label_source)
    except CollectionError as exc:
        row["error"] = str(exc)
    stores = Path(registry.settings.features_dir) / entry.name
    row["models"] = sorted(p.name for p in stores.iterdir() if p.is_dir() and store_exists(p)) if stores.is_dir() else []
    return row
