"""Reading a folder by one scan rule, every skip named; labels.csv encodings; wide images.
Every input is generated in tmp_path."""

import csv
import io
import json
import os
from urllib.parse import quote, unquote

import numpy as np
import pytest
from PIL import Image

from cbir.collection import image_extensions, read_labels_csv, safe_text, scan_collection
from cbir.errors import CollectionError, ImageError
from cbir.images import image_from_array, open_image


def _img(path, colour=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path, format=fmt)
    return path


def _classes(root, names=("cats", "dogs"), n=3):
    for name in names:
        for i in range(n):
            _img(root / name / f"{i}.jpg")


def _skipped(c):
    return dict(c.skipped)


def test_hidden_folders_and_files_are_skipped_and_named(tmp_path):
    _classes(tmp_path)
    _img(tmp_path / ".ipynb_checkpoints" / "0-checkpoint.jpg")
    _img(tmp_path / "cats" / ".thumbnails" / "0.png")
    _img(tmp_path / "dogs" / "._0.jpg")
    c = scan_collection(tmp_path)
    assert c.label_source == "folders" and set(c.labels) == {"cats", "dogs"} and len(c) == 6
    assert not any(i.startswith(".") or "/." in i for i in c.ids)
    assert set(_skipped(c)) == {".ipynb_checkpoints/", "cats/.thumbnails/", "dogs/._0.jpg"}
    assert "hidden folder" in _skipped(c)[".ipynb_checkpoints/"]


def test_symlinked_class_folder_is_followed_and_loops_refused(tmp_path):
    root, elsewhere = tmp_path / "coll", tmp_path / "elsewhere" / "birds"
    _classes(root)
    for i in range(2):
        _img(elsewhere / f"{i}.png")
    os.symlink(elsewhere, root / "birds")
    os.symlink(root, root / "cats" / "loop")  # back to the collection itself
    os.symlink(tmp_path / "nothing.jpg", root / "dogs" / "gone.jpg")
    c = scan_collection(root)
    assert c.label_of("birds/0") == "birds" and c.path_of("birds/1") == root / "birds" / "1.png"
    assert len(c) == 8 and set(c.class_counts()) == {"cats", "dogs", "birds"}
    assert "loop" in _skipped(c)["cats/loop/"] and "link to nothing" in _skipped(c)["dogs/gone.jpg"]


@pytest.mark.parametrize("ext, fmt", [(".tif", "TIFF"), (".tiff", "TIFF"), (".gif", "GIF"), (".jfif", "JPEG"), (".avif", "AVIF")])
def test_every_format_pillow_decodes_is_indexed(tmp_path, ext, fmt):
    if ext not in image_extensions():
        pytest.skip(f"this Pillow cannot decode {ext}")
    _img(tmp_path / "a.jpg")
    _img(tmp_path / f"b{ext}", fmt=fmt)
    c = scan_collection(tmp_path)
    assert c.ids == ["a", "b"] and not c.skipped
    assert open_image(c.path_of("b")).size == (24, 16)


def test_formats_pillow_cannot_decode_are_named_not_silent(tmp_path):
    _img(tmp_path / "a.jpg")
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "notes.txt").write_text("not an image, not a skip")
    c = scan_collection(tmp_path)
    assert c.ids == ["a"] and list(_skipped(c)) == ["phone.heic"]
    assert "installed Pillow" in _skipped(c)["phone.heic"]


def test_a_name_that_is_not_utf8_gets_a_safe_reversible_id(tmp_path):
    _img(tmp_path / "plain.jpg")
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    os.rename(_img(tmp_path / "tmp.jpg"), raw)
    c = scan_collection(tmp_path)
    assert c.ids == ["caf%E9", "plain"]
    assert os.fsencode(c.path_of("caf%E9")) == raw  # the id leads back to the very file
    assert json.loads(json.dumps(c.ids, ensure_ascii=False)) == c.ids
    "caf%E9".encode("utf-8")  # no lone surrogate left
    assert unquote(quote("caf%E9", safe="/")) == "caf%E9"
    buf = io.StringIO()
    csv.writer(buf).writerow(c.ids)
    assert next(csv.reader(io.StringIO(buf.getvalue()))) == c.ids
    assert safe_text(os.fsdecode(b"caf\xe9")) == "caf%E9"


def test_labels_csv_with_a_bom_keeps_its_first_row(tmp_path):
    for i in range(3):
        _img(tmp_path / f"{i}.jpg")
    (tmp_path / "labels.csv").write_bytes("0,chat\r\n1,chien\r\n2,chat\r\n".encode("utf-8-sig"))
    c = scan_collection(tmp_path)
    assert c.labels == ["chat", "chien", "chat"]
    (tmp_path / "labels.csv").write_bytes("id,label\n0,café\n1,b\n2,b\n".encode("utf-8-sig"))
    assert scan_collection(tmp_path).label_of("0") == "café"


def test_labels_csv_in_cp1252_is_one_line_naming_file_line_and_fix(tmp_path):
    for i in range(3):
        _img(tmp_path / f"{i}.jpg")
    (tmp_path / "labels.csv").write_bytes("id,label\n0,chat\n1,café\n2,chat\n".encode("cp1252"))
    with pytest.raises(CollectionError) as exc:
        scan_collection(tmp_path)
    message = str(exc.value)
    assert "labels.csv" in message and "line 3" in message and "save it as UTF-8" in message
    assert "\n" not in message
    assert read_labels_csv.__doc__


def test_a_stray_root_image_keeps_the_folder_labels_and_is_named(tmp_path):
    _classes(tmp_path, n=3)
    _img(tmp_path / "stray.jpg")
    c = scan_collection(tmp_path)
    assert c.label_source == "folders" and len(c) == 6 and "stray" not in c
    assert "stray.jpg" in _skipped(c) and "class folder" in _skipped(c)["stray.jpg"]


def test_many_root_images_make_an_unlabelled_collection_that_says_why(tmp_path):
    _classes(tmp_path, n=2)
    for i in range(5):
        _img(tmp_path / f"r{i}.jpg")
    c = scan_collection(tmp_path)
    assert c.label_source == "none" and len(c) == 9 and not c.skipped
    assert "r0" in c.label_note and "5 of 9" in c.label_note


def test_shipped_collection_is_read_as_before(collection_dir):
    c = scan_collection(collection_dir)
    assert len(c) == 1000 and c.ids[:3] == ["0", "1", "2"] and c.label_source == "labels.csv" and not c.skipped
    assert c.path_of("10") == collection_dir / "10.jpg"


def _save(arr, path, **kw):
    Image.fromarray(arr, **kw).save(path)
    return path


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (32, 1))
    p = _save(ramp, tmp_path / "f.tif", mode="F")
    assert Image.open(p).mode == "F"
    out = np.asarray(open_image(p))[:, :, 0]
    assert out.min() == 0 and out.max() == 255 and 110 < out.mean() < 145


def test_float_tiff_with_negative_or_nan_values_is_refused_with_a_reason(tmp_path):
    ramp = np.tile(np.linspace(-1, 1, 64, dtype=np.float32), (32, 1))
    with pytest.raises(ImageError, match="negative values"):
        open_image(_save(ramp, tmp_path / "neg.tif", mode="F"))
    ramp[0, 0] = np.nan
    with pytest.raises(ImageError, match="nan.tif: .*NaN"):
        open_image(_save(ramp, tmp_path / "nan.tif", mode="F"))


def test_12_bit_data_in_a_16_bit_png_uses_its_real_range(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64), (32, 1)).astype(np.uint16)
    p = _save(ramp, tmp_path / "d12.png")
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(open_image(p))[:, :, 0]
    assert out.max() == 255 and 110 < out.mean() < 145
    full = _save((ramp.astype(np.uint32) * 16).astype(np.uint16), tmp_path / "d16.png")  # 16-bit data
    assert np.asarray(open_image(full))[:, :, 0].max() >= 254


class _Picky:
    """A stand-in model that fails on any batch holding a pure-blue image."""

    input_size = 32

    def __init__(self, dim):
        self.spec = type("Spec", (), {"dim": dim})()

    def features(self, batch):
        if (batch[..., 2] > 200).all(axis=(1, 2)).any():
            raise RuntimeError("the model chokes")
        return np.ones((len(batch), self.spec.dim), np.float32)


def test_one_image_the_model_fails_on_costs_only_itself(tmp_path):
    from cbir.extraction import index_collection
    from cbir.extractors import get_spec
    from cbir.store_format import load_store

    root = tmp_path / "c"
    for i in range(5):
        _img(root / f"{i}.png")
    _img(root / "blue.png", colour=(0, 0, 255))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    _img(root / ".hidden" / "x.png")
    c = scan_collection(root)
    spec = get_spec("efficientnet_lite0")
    report = index_collection(c, spec.name, tmp_path / "f", extractor=_Picky(spec.dim), batch_size=8)
    assert report.images == 5 and report.extracted == 5
    assert "2 skipped" not in report.summary() and "3 skipped" in report.summary()
    lines = report.skipped
    assert lines[0].startswith(".hidden/: hidden folder") and any("blue.png: the model failed" in s for s in lines)
    assert any("broken.jpg" in s for s in lines)
    assert sorted(load_store(report.path).ids.tolist()) == ["0", "1", "2", "3", "4"]


def test_a_file_link_out_of_the_collection_is_not_followed(tmp_path):
    """`leak.png -> /etc/passwd` (a downloaded archive) is skipped and named; a file link into
    the collection, or into a linked class folder, still counts."""
    root, elsewhere = tmp_path / "coll", tmp_path / "elsewhere" / "birds"
    _classes(root)
    _img(elsewhere / "0.png")
    os.symlink(elsewhere, root / "birds")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    os.symlink(secret, root / "cats" / "leak.png")
    os.symlink(root / "dogs" / "0.jpg", root / "cats" / "alias.png")  # inside: followed
    os.symlink(elsewhere / "0.png", root / "dogs" / "bird.png")  # into a linked folder: followed
    c = scan_collection(root)
    assert "cats/leak" not in c and "cats/alias" in c and "dogs/bird" in c and "birds/0" in c
    assert "outside the collection" in _skipped(c)["cats/leak.png"]


def test_a_scan_is_bounded(tmp_path, monkeypatch):
    import cbir.collection as collection

    _classes(tmp_path / "coll")
    monkeypatch.setattr(collection, "MAX_SCAN_ENTRIES", 3)
    with pytest.raises(CollectionError, match="too large to scan"):
        scan_collection(tmp_path / "coll")


def test_the_api_serves_a_collection_file_only_when_it_is_an_image(tmp_path):
    from cbir.api.deps import APIError
    from cbir.api.routes.images import _image_type

    _img(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_text("root:x:0:0")  # not an image, whatever its name
    assert _image_type(tmp_path / "a.jpg") == "image/jpeg"
    with pytest.raises(APIError) as refused:
        _image_type(tmp_path / "b.jpg")
    assert refused.value.status == 404


def test_an_array_query_follows_the_decoding_rule_of_files():
    """12-bit data in uint16 is scaled by 4095 (it saturated to white), floats in [0, 1] by 255
    and rounded, negative values refused (they became black)."""
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 65)  # up to 4095
    grey = np.asarray(image_from_array(a))[..., 0]
    assert grey.max() == 255 and abs(float(grey.mean()) - 127.5) < 2
    assert np.asarray(image_from_array(np.full((2, 2), 0.5)))[0, 0, 0] == 128
    with pytest.raises(ImageError, match="negative"):
        image_from_array(np.full((2, 2), -0.5))
