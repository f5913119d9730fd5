import shutil

import numpy as np
import pytest
from PIL import Image

from cbir.collection import scan_collection
from cbir.errors import CollectionError, ImageError
from cbir.images import open_image


def test_wang_collection(collection_dir):
    c = scan_collection(collection_dir)
    assert len(c) == 1000
    assert c.ids[:3] == ["0", "1", "2"]
    assert c.label_source == "labels.csv"
    assert c.label_of("0") == "africa" and c.label_of("999") == "food"
    assert set(c.class_counts().values()) == {100}
    assert len(c.class_counts()) == 10


def test_find_by_id_file_name_or_label_with_paging(tmp_path, collection_dir):
    c = scan_collection(collection_dir)
    assert c.find("", 995, 10) == (1000, ["995", "996", "997", "998", "999"])
    assert c.find("41", 0, 3) == (20, ["41", "141", "241"])  # the exact id first, then in order
    assert c.find("412") == (1, ["412"])
    assert c.find("Dinosaurs", 95, 10) == (100, ["495", "496", "497", "498", "499"])  # a label, last page
    assert c.find(".JPG", 0, 0)[0] == 1000 and c.find("nothing-like-this") == (0, [])
    nested = tmp_path / "nested"
    (nested / "cats").mkdir(parents=True)
    shutil.copy(collection_dir / "1.jpg", nested / "cats" / "tabby.jpg")
    assert scan_collection(nested).find("cats/tab") == (1, ["cats/tabby"])  # the relative path


def test_folder_labels_and_recursion(tmp_path, collection_dir):
    for cls, i in (("beach", 100), ("buses", 300)):
        (tmp_path / cls).mkdir()
        shutil.copy(collection_dir / f"{i}.jpg", tmp_path / cls / f"{i}.jpg")
    Image.open(collection_dir / "400.jpg").save(tmp_path / "beach" / "x.png")
    c = scan_collection(tmp_path)
    assert c.label_source == "folders"
    assert sorted(c.ids) == ["beach/100", "beach/x", "buses/300"]
    assert c.label_of("beach/x") == "beach"


def test_no_labels(tmp_path, collection_dir):
    shutil.copy(collection_dir / "0.jpg", tmp_path / "a.jpg")
    c = scan_collection(tmp_path)
    assert not c.has_labels and c.label_source == "none"


def test_same_stem_keeps_extension(tmp_path, collection_dir):
    shutil.copy(collection_dir / "0.jpg", tmp_path / "a.jpg")
    Image.open(collection_dir / "0.jpg").save(tmp_path / "a.png")
    assert sorted(scan_collection(tmp_path).ids) == ["a.jpg", "a.png"]


def test_missing_and_empty(tmp_path):
    with pytest.raises(CollectionError, match="does not exist"):
        scan_collection(tmp_path / "nope")
    with pytest.raises(CollectionError, match="holds no images"):
        scan_collection(tmp_path)


def test_incomplete_labels_csv(small_collection):
    (small_collection / "labels.csv").write_text("id,label\n0,africa\n")
    with pytest.raises(CollectionError, match="no label"):
        scan_collection(small_collection)


def test_unknown_id_is_clear(collection_dir):
    with pytest.raises(CollectionError, match="no image with id 'x'"):
        scan_collection(collection_dir).index_of("x")


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "LA", "P", "I;16", "1"])
def test_every_mode_becomes_rgb(tmp_path, collection_dir, mode):
    src = Image.open(collection_dir / "0.jpg").convert("RGB")
    if mode == "I;16":
        arr = (np.asarray(src.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr.astype("<u2"))  # 16-bit greyscale (I;16)
        path = tmp_path / "x.png"
    else:
        img = src.convert(mode)
        path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    img.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == src.size
    if mode == "I;16":  # 16-bit scaled down, not clipped to white
        assert 20 < np.asarray(out).mean() < 235


def test_bad_images(tmp_path, collection_dir):
    data = (collection_dir / "0.jpg").read_bytes()
    with pytest.raises(ImageError, match="empty"):
        open_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        open_image(b"hello, I am text")
    with pytest.raises(ImageError, match="truncated"):
        open_image(data[: len(data) // 2])
    big = Image.new("L", (8000, 6000))
    p = tmp_path / "big.png"
    big.save(p)
    with pytest.raises(ImageError, match="megapixel"):
        open_image(p.read_bytes(), max_pixels=40_000_000)
