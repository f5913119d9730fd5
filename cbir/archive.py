"""A zip archive of images unpacked into a new collection folder, safely.

A zip from a user is hostile: it can claim a small size and inflate to terabytes (a zip
bomb), hold ``../../etc/x`` or ``/abs/path`` names (zip slip), symlinks to anywhere, or a
million empty entries. :func:`unpack_zip` checks the whole central directory against
:class:`ZipLimits` *before* writing a byte (entry count, total uncompressed size, the
compression ratio of the archive and of every large entry, free disk space), writes only
images and ``labels.csv`` (every other entry skipped and named), never follows or creates a
link, counts the bytes it actually inflates against what the header declared, and unpacks
into a hidden temporary folder that is renamed into place only when everything succeeded.

Reference: the "zip slip" and "zip bomb" classes, https://snyk.io/research/zip-slip-vulnerability
and Fifield, "A better zip bomb", WOOT 2019.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .collection import LABELS_FILE, image_extensions
from .errors import CollectionExistsError, RequestError

#: Entries larger than this must respect ``ZipLimits.ratio`` on their own (a small file, such
#: as a CSV, may compress 1000:1 without harm).
RATIO_CHECKED_FROM = 1 << 20
#: A central-directory record is 46 bytes plus the name and extra fields: a bound per entry.
DIRECTORY_BYTES_PER_ENTRY = 46 + 1024
#: labels.csv is read whole at every scan: 64 MiB holds about two million rows.
LABELS_MAX_BYTES = 64 << 20
#: Never-images the common zip tools add, skipped without a word each.
_NOISE = ("__MACOSX/", "Thumbs.db", ".DS_Store", "desktop.ini")


class ArchiveError(RequestError):
    """A zip that breaks a bound or is not a zip (HTTP 422: the request is refused whole)."""


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on one archive: ``entries`` (files and folders in the central directory),
    ``total_bytes`` (uncompressed, all entries), ``ratio`` (uncompressed / compressed, the
    whole archive and every entry over 1 MiB); ``free_margin`` bytes of disk left after."""

    entries: int = 100_000
    total_bytes: int = 4 << 30
    ratio: float = 100.0
    free_margin: int = 256 << 20

    @classmethod
    def from_settings(cls, settings) -> "ZipLimits":
        return cls(entries=settings.zip_max_entries, total_bytes=settings.zip_max_mb_unpacked << 20, ratio=settings.zip_max_ratio)


@dataclass
class Unpacked:
    """What :func:`unpack_zip` wrote: ``folder``, ``files`` (images + labels.csv), ``images``, ``bytes``
    written, ``skipped`` (entry name, why), and ``prefix``, the single top folder stripped."""

    folder: Path
    files: int = 0
    images: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    prefix: str = ""


def _is_link(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)  # Unix mode bits


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """The entry's path parts, or None when it could land outside the target (absolute, a
    Windows drive such as ``C:/``, ``..``, a NUL byte). ``b:weird.jpg`` is a file name."""
    name = name.replace("\\", "/")
    drive = len(name) >= 2 and name[0].isalpha() and name[1] == ":" and (len(name) == 2 or name[2] == "/")
    if "\0" in name or name.startswith("/") or drive:
        return None
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    return None if any(p == ".." for p in parts) else parts


def check_directory(fh, limits: ZipLimits) -> None:
    """The entry count and the central directory's size from the zip's end record, before
    :class:`zipfile.ZipFile` parses (and keeps in memory) every entry: 2.5 million empty
    entries cost 21 s and 1.2 GB before the count was checked. Raises :class:`ArchiveError`."""
    end = zipfile._EndRecData(fh)  # the standard library's own reader of the (zip64) end record
    fh.seek(0)
    if end is None:
        raise ArchiveError("not a readable zip file (no end-of-archive record)")
    entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    _check_count(max(entries, size // DIRECTORY_BYTES_PER_ENTRY), limits)


def _check_count(entries: int, limits: ZipLimits) -> None:
    """The end record's count can lie (zipfile parses the directory by its size), so the
    count is checked again on the parsed directory."""
    if entries > limits.entries:
        raise ArchiveError(f"the zip holds {entries:,} entries; at most {limits.entries:,} are accepted "
                           "(CBIR_ZIP_MAX_ENTRIES): split it")


def plan_entries(archive: zipfile.ZipFile, limits: ZipLimits) -> tuple[list[tuple[zipfile.ZipInfo, tuple[str, ...]]], list[tuple[str, str]], str]:
    """The entries to write (with their path parts, the single common top folder stripped),
    the entries skipped (name, why), and the stripped prefix. Raises :class:`ArchiveError`
    when the archive as a whole breaks a bound (count, size, ratio) or holds an entry whose
    path leaves the target."""
    infos = archive.infolist()
    _check_count(len(infos), limits)
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > limits.total_bytes:
        raise ArchiveError(f"the zip unpacks to {total / 2**20:,.0f} MiB; at most {limits.total_bytes / 2**20:,.0f} MiB "
                           "are accepted (CBIR_ZIP_MAX_MB_UNPACKED): split it")
    if total > RATIO_CHECKED_FROM and total > limits.ratio * max(packed, 1):
        raise ArchiveError(f"the zip inflates {total / max(packed, 1):,.0f}:1 (at most {limits.ratio:g}:1); images barely "
                           "compress, so this is not a zip of images (a zip bomb?)")
    extensions = image_extensions()
    chosen, skipped = [], []
    for info in infos:
        parts = _safe_parts(info.filename)
        if parts is None:
            raise ArchiveError(f"the zip entry {info.filename!r} would be written outside the collection folder "
                               "(an absolute path or '..'); nothing was unpacked")
        if info.is_dir() or not parts:
            continue
        name = info.filename
        why = None
        if any(info.filename.startswith(n) or parts[-1] == n for n in _NOISE):
            continue
        if _is_link(info):
            why = "a symbolic link (links in an archive are never unpacked)"
        elif info.flag_bits & 0x1:
            why = "encrypted"
        elif any(p.startswith(".") for p in parts):
            why = "hidden (a name starting with '.')"
        elif info.file_size > RATIO_CHECKED_FROM and info.file_size > limits.ratio * max(info.compress_size, 1):
            why = f"inflates {info.file_size / max(info.compress_size, 1):,.0f}:1 (at most {limits.ratio:g}:1)"
        elif parts[-1].lower() != LABELS_FILE and PurePosixPath(parts[-1]).suffix.lower() not in extensions:
            why = "not an image format this server decodes"
        elif parts[-1].lower() == LABELS_FILE and info.file_size > LABELS_MAX_BYTES:
            why = f"a labels.csv over {LABELS_MAX_BYTES >> 20} MiB"
        if why:
            skipped.append((name, why))
        else:
            chosen.append((info, parts))
    prefix = ""
    tops = {parts[0] for _, parts in chosen}
    if len(tops) == 1 and all(len(parts) > 1 for _, parts in chosen):
        prefix = next(iter(tops))  # "wang/africa/1.jpg" -> "africa/1.jpg": the zip of one folder
        chosen = [(info, parts[1:]) for info, parts in chosen]
    return chosen, skipped, prefix


def _copy_counted(source, target, declared: int, name: str) -> int:
    """Copy at most ``declared`` bytes; more means the header lied (refused)."""
    written = 0
    while chunk := source.read(1 << 20):
        written += len(chunk)
        if written > declared:
            raise ArchiveError(f"the zip entry {name!r} inflates past the size its header declares ({declared:,} bytes)")
        target.write(chunk)
    return written


def unpack_zip(source, target: str | Path, limits: ZipLimits = ZipLimits(),
               progress: Callable[[int, int], None] | None = None) -> Unpacked:
    """Unpack the zip ``source`` (a path, its bytes, or a seekable binary file such as an
    upload) into the new folder ``target``.

    ``progress(done, total)`` gets bytes written and the total to write. Raises
    :class:`ArchiveError` for a file that is not a zip, a bound broken (see
    :func:`plan_entries`), not enough free disk, or an archive with no image at all;
    :class:`cbir.errors.CollectionExistsError` when ``target`` exists. On any error nothing
    is left behind."""
    import io

    target = Path(target)
    if target.exists():
        raise CollectionExistsError(f"{target.name}/ exists already: choose another name")
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as fh:
                check_directory(fh, limits)
            archive = zipfile.ZipFile(source)
        else:
            fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source  # an upload: a file object
            check_directory(fh, limits)
            archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"not a readable zip file ({exc})") from None
    with archive:
        chosen, skipped, prefix = plan_entries(archive, limits)
        if not any(parts[-1].lower() != LABELS_FILE for _, parts in chosen):
            raise ArchiveError("the zip holds no image this server can read"
                               + (f" ({len(skipped)} entries skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
        need = sum(info.file_size for info, _ in chosen)
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if need + limits.free_margin > free:
            raise ArchiveError(f"not enough free disk for the zip: it needs {need / 2**20:,.0f} MiB, "
                               f"{max(free - limits.free_margin, 0) / 2**20:,.0f} MiB can be used")
        staging = Path(tempfile.mkdtemp(prefix=f".unpack-{target.name}-", dir=target.parent))
        out = Unpacked(target, skipped=skipped, prefix=prefix)
        try:
            _write_entries(archive, chosen, staging, out, need, progress)
            try:
                staging.rename(target)  # atomic; refused when another upload took the name meanwhile
            except OSError:
                raise CollectionExistsError(f"{target.name}/ was created meanwhile (another upload?): choose another name") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out


def _write_entries(archive: zipfile.ZipFile, chosen, staging: Path, out: Unpacked, need: int,
                   progress: Callable[[int, int], None] | None) -> None:
    """Write the chosen entries under ``staging`` (never through a link, never over a file),
    counting into ``out``; an entry that cannot be written or is damaged is skipped and named."""
    for info, parts in chosen:
        path = staging.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL | O_NOFOLLOW: never through a link, never over a file written before
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except (OSError, ValueError) as exc:  # a duplicate name, a name the file system refuses
            out.skipped.append((info.filename, f"not written ({exc.strerror or exc})"))
            continue
        try:
            with os.fdopen(fd, "wb") as fh, archive.open(info) as src:
                out.bytes += _copy_counted(src, fh, info.file_size, info.filename)
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
            path.unlink(missing_ok=True)
            out.skipped.append((info.filename, f"damaged in the zip ({exc})"))
            continue
        out.files += 1
        out.images += parts[-1].lower() != LABELS_FILE
        if progress:
            progress(out.bytes, need)
