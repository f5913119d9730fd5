"""Zips uploaded as collections: every bound (entries, size, ratio, disk), zip slip, links,
lying headers, noise and strays skipped and named, the one top folder stripped, nothing left
behind on a refusal. Generated archives of real Wang images."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from cbir.archive import ArchiveError, ZipLimits, unpack_zip
from cbir.collection import scan_collection
from cbir.collection_registry import CollectionRegistry
from cbir.config import Settings
from cbir.errors import CollectionExistsError, contract_for
from tests.conftest import COLLECTION


def _zip(entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED, links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, to in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, to)
    return buf.getvalue()


def _wang(*numbers: int) -> dict[str, bytes]:
    return {f"{n}.jpg": (COLLECTION / f"{n}.jpg").read_bytes() for n in numbers}


def _leftovers(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_zip_of_one_folder_becomes_a_labelled_collection(tmp_path):
    entries = {f"wang/{cls}/{k}": v for cls, nums in (("africa", (0, 1)), ("buses", (300, 301))) for k, v in _wang(*nums).items()}
    entries["wang/notes.txt"] = b"hello"
    entries["__MACOSX/wang/africa/._0.jpg"] = b"junk"
    entries["wang/.thumbnails/0.jpg"] = _wang(0)["0.jpg"]
    done = []
    out = unpack_zip(_zip(entries), tmp_path / "trip", progress=lambda d, t: done.append((d, t)))
    assert out.prefix == "wang" and out.files == 4
    assert dict(out.skipped) == {"wang/notes.txt": "not an image format this server decodes",
                                 "wang/.thumbnails/0.jpg": "hidden (a name starting with '.')"}
    collection = scan_collection(tmp_path / "trip")
    assert collection.label_source == "folders" and collection.class_counts() == {"africa": 2, "buses": 2}
    assert done[-1][0] == done[-1][1] == out.bytes
    assert _leftovers(tmp_path) == ["trip"]  # no staging folder left


@pytest.mark.parametrize("name", ["../evil.jpg", "/etc/evil.jpg", "a/../../evil.jpg", "C:/evil.jpg", "..\\evil.jpg"])
def test_zip_slip_is_refused_whole(tmp_path, name):
    data = _zip({**_wang(0), name: _wang(1)["1.jpg"]})
    with pytest.raises(ArchiveError, match="outside the collection folder"):
        unpack_zip(data, tmp_path / "x" / "c")
    assert _leftovers(tmp_path / "x") == [] and not (tmp_path / "evil.jpg").exists()
    assert contract_for(ArchiveError("x")).status == 422


def test_links_are_never_unpacked(tmp_path):
    out = unpack_zip(_zip(_wang(0, 1), links={"passwd.jpg": "/etc/passwd"}), tmp_path / "c")
    assert ("passwd.jpg", "a symbolic link (links in an archive are never unpacked)") in out.skipped
    assert not (tmp_path / "c" / "passwd.jpg").exists() and out.files == 2


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = _zip({**_wang(0), "zeros.jpg": b"\0" * (20 << 20)})  # 20 MiB of zeros: about 1000:1
    with pytest.raises(ArchiveError, match="inflates"):
        unpack_zip(bomb, tmp_path / "c")
    assert _leftovers(tmp_path) == []


def test_entry_count_and_total_size_bounds(tmp_path):
    with pytest.raises(ArchiveError, match="entries; at most 3"):
        unpack_zip(_zip(_wang(0, 1, 2, 3)), tmp_path / "c", ZipLimits(entries=3))
    size = sum(len(v) for v in _wang(0, 1).values())
    with pytest.raises(ArchiveError, match="unpacks to"):
        unpack_zip(_zip(_wang(0, 1)), tmp_path / "c", ZipLimits(total_bytes=size - 1))
    with pytest.raises(ArchiveError, match="not enough free disk"):
        unpack_zip(_zip(_wang(0, 1)), tmp_path / "c", ZipLimits(free_margin=1 << 60))
    assert _leftovers(tmp_path) == []


def test_an_end_record_that_understates_the_entry_count_is_caught_on_the_directory(tmp_path):
    """zipfile parses the central directory by its size, not by the end record's count."""
    data = bytearray(_zip(_wang(0, 1, 2, 3)))
    end = data.rfind(b"PK\x05\x06")  # the end record: entries on this disk at 8, in total at 10
    for offset in (end + 8, end + 10):
        assert int.from_bytes(data[offset:offset + 2], "little") == 4
        data[offset:offset + 2] = (1).to_bytes(2, "little")
    with pytest.raises(ArchiveError, match="holds 4 entries; at most 3"):
        unpack_zip(bytes(data), tmp_path / "c", ZipLimits(entries=3))
    assert _leftovers(tmp_path) == []


def test_a_header_that_understates_the_size_is_caught_while_inflating(tmp_path):
    data = bytearray(_zip({**_wang(0), "big.jpg": _wang(1)["1.jpg"]}, method=zipfile.ZIP_STORED))
    # shrink big.jpg's declared size in its local header and in the central directory
    real = len(_wang(1)["1.jpg"])
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("big.jpg")
    central = data.rfind(b"PK\x01\x02")  # the last central-directory record: big.jpg's
    for offset in (info.header_offset + 22, central + 24):  # local: uncompressed size at 22; central: at 24
        assert int.from_bytes(data[offset:offset + 4], "little") == real
        data[offset:offset + 4] = (100).to_bytes(4, "little")
    out = unpack_zip(bytes(data), tmp_path / "c")
    assert out.files == 1 and [n for n, _ in out.skipped] == ["big.jpg"]  # refused, the rest kept
    assert not (tmp_path / "c" / "big.jpg").exists()


def test_not_a_zip_no_image_and_a_taken_folder(tmp_path):
    with pytest.raises(ArchiveError, match="not a readable zip"):
        unpack_zip(b"PK\x03\x04 this is not a zip", tmp_path / "c")
    with pytest.raises(ArchiveError, match="no image"):
        unpack_zip(_zip({"a.txt": b"x"}), tmp_path / "c")
    (tmp_path / "c").mkdir()
    with pytest.raises(CollectionExistsError):
        unpack_zip(_zip(_wang(0)), tmp_path / "c")


def test_registry_adds_a_zip_as_an_uploaded_collection_and_removes_its_images(tmp_path):
    settings = Settings(collection=COLLECTION, features_dir=tmp_path / "f", var_dir=tmp_path / "var",
                        collections_root=tmp_path / "collections")
    registry = CollectionRegistry(settings)
    entry, unpacked = registry.add_zip("mine", _zip(_wang(0, 1, 2)), actor="alice")
    assert entry.uploaded and entry.folder == str((tmp_path / "collections" / "mine").resolve()) and unpacked.files == 3
    assert len(registry.open("mine")) == 3
    with pytest.raises(CollectionExistsError):  # checked before unpacking anything
        registry.add_zip("mine", _zip(_wang(3)), actor="alice")
    with pytest.raises(ArchiveError):
        registry.add_zip("other", _zip({"a.txt": b"x"}), actor="alice")
    assert _leftovers(tmp_path / "collections") == ["mine"]
    registry.remove("mine")
    assert _leftovers(tmp_path / "collections") == []


def test_the_entry_count_is_checked_from_the_end_record_before_parsing(tmp_path, monkeypatch):
    """A zip of many entries is refused before zipfile parses its directory (2.5 million empty
    entries took 21 s and 1.2 GB before the count was checked)."""
    data = _zip({f"{i}.txt": b"" for i in range(50)})
    parsed = []
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: parsed.append(1))
    with pytest.raises(ArchiveError, match="holds 50 entries; at most 10"):
        unpack_zip(data, tmp_path / "c", ZipLimits(entries=10))
    assert parsed == []


def test_odd_names_a_big_labels_csv_and_one_name_for_every_skip(tmp_path):
    entries = {"b:weird.jpg": _wang(0)["0.jpg"], "x/labels.csv": b"id,label\n" + b"a,b\n" * (17 << 20),
               "x/1.jpg": _wang(1)["1.jpg"], "x/1.jpg/": b""}
    out = unpack_zip(_zip(entries), tmp_path / "c", ZipLimits(ratio=10_000))
    skipped = dict(out.skipped)
    assert skipped["x/labels.csv"] == "a labels.csv over 64 MiB"
    assert (tmp_path / "c" / "b:weird.jpg").is_file() and out.images == 2 and out.files == 2
