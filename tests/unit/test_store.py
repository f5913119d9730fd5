import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.errors import StoreError
from cbir.store import FeatureStore, merge_update
from cbir.store_format import load_store, save_store

from tests.conftest import COLLECTION, ROOT


def _store(n=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return FeatureStore(
        model="m", weights="none", embeddings=rng.random((n, d)), ids=[str(i) for i in range(n)],
        signatures=[f"s{i}" for i in range(n)],
    )


def test_round_trip(tmp_path):
    s = _store()
    save_store(s, tmp_path)
    t = load_store(tmp_path)
    np.testing.assert_array_equal(t.embeddings, s.embeddings.astype(np.float32))
    assert t.ids.tolist() == s.ids.tolist()
    assert t.embeddings.dtype == np.float32
    for key in ("model", "weights", "preprocessing_version", "dim", "images", "created", "version"):
        assert key in t.manifest
    assert (tmp_path / "manifest.json").exists()
    assert t.row_of("3") == 3
    with pytest.raises(StoreError, match="cbir index"):
        t.row_of("nope")


def test_store_stamp_parses_a_manifest_once_per_version(tmp_path, monkeypatch):
    """The stamp is asked for several times per search: it stats the manifest and parses it
    only when a new version was written (before: a read and a JSON parse every time)."""
    from pathlib import Path

    from cbir.store_format import store_stamp

    save_store(_store(), tmp_path)
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (reads.append(self.name), real(self, *a, **k))[1])
    first = store_stamp(tmp_path)
    assert [store_stamp(tmp_path) for _ in range(5)] == [first] * 5
    assert reads.count("manifest.json") == 1
    time.sleep(0.01)
    save_store(_store(seed=1), tmp_path)
    assert store_stamp(tmp_path) != first
    assert reads.count("manifest.json") == 2
    (tmp_path / "manifest.json").unlink()
    assert store_stamp(tmp_path) is None


def test_missing_and_damaged(tmp_path):
    with pytest.raises(StoreError, match="run `cbir index`"):
        load_store(tmp_path)
    (tmp_path / "store.npz").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="unreadable"):
        load_store(tmp_path)


def test_store_opens_memory_mapped_and_reads_the_legacy_file(tmp_path):
    s = _store(n=50, d=8)
    np.savez(tmp_path / "store.npz", embeddings=s.embeddings, ids=s.ids, signatures=s.signatures,
             manifest=np.array('{"model": "m", "weights": "none", "version": "old"}'))
    legacy = load_store(tmp_path)  # the single-file layout of earlier versions
    assert not isinstance(legacy.embeddings, np.memmap) and legacy.version == "old"
    save_store(legacy, tmp_path)  # rewritten in the folder layout, the old file gone
    assert not (tmp_path / "store.npz").exists()
    t = load_store(tmp_path)
    assert isinstance(t.embeddings, np.memmap) and t.embeddings.flags.writeable is False
    np.testing.assert_array_equal(t.embeddings, s.embeddings)
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.npy")) == ["ids", "signatures", "vectors"]


def test_float16_store_halves_the_file_and_keeps_ranking(tmp_path):
    s = _store(n=200, d=64)
    save_store(s, tmp_path / "f32")
    save_store(FeatureStore("m", "none", s.embeddings, s.ids, s.signatures), tmp_path / "f16", dtype="float16")
    a, b = load_store(tmp_path / "f32"), load_store(tmp_path / "f16")
    assert (a.dtype, b.dtype) == ("float32", "float16") and b.manifest["dtype"] == "float16"
    size = {k: next((tmp_path / k).glob("vectors-*.npy")).stat().st_size for k in ("f32", "f16")}
    assert size["f16"] - 128 == (size["f32"] - 128) // 2  # .npy header + half the bytes
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-3)
    assert b.vector("3").dtype == np.float32
    with pytest.raises(Exception, match="float16 range"):
        save_store(FeatureStore("m", "none", np.full((2, 2), 1e6), ["a", "b"], ["x", "y"]), tmp_path / "big", dtype="float16")


def test_writer_killed_before_the_manifest_switch_keeps_the_previous_version(tmp_path, monkeypatch):
    save_store(_store(seed=1), tmp_path)
    before = load_store(tmp_path).embeddings.copy()
    real_replace = os.replace

    def fail_at_manifest(src, dst):
        if str(dst).endswith("manifest.json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        save_store(_store(seed=2), tmp_path)  # the new version's .npy files are written
    monkeypatch.undo()
    np.testing.assert_array_equal(load_store(tmp_path).embeddings, before)
    save_store(_store(seed=3), tmp_path)  # the next write clears the orphaned version
    assert len(list(tmp_path.glob("vectors-*.npy"))) == 1


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "chi_square", "bhattacharyya"])
def test_streamed_search_equals_prepared(metric, monkeypatch):
    import cbir.index.exact

    monkeypatch.setattr(cbir.index.exact, "_STREAM_ROWS", 37)  # several blocks, the last one short
    x = np.random.default_rng(0).random((500, 16)).astype(np.float16)
    q = np.random.default_rng(1).random((3, 16))
    streamed = cbir.index.exact.ExactIndex(x, metric, max_bytes=0)
    assert streamed.streamed
    np.testing.assert_allclose(streamed.distances(q), cbir.index.exact.ExactIndex(x, metric).distances(q), atol=1e-6)
    with pytest.raises(Exception, match="backend faiss"):
        streamed.vectors  # re-ranking needs the prepared matrix: a clear error


def test_wang_float16_changes_map_by_less_than_a_thousandth(tmp_path):
    from cbir.config import Settings
    from cbir.engine import Engine

    src = load_store(ROOT / "features" / "image.orig" / "efficientnet_lite0")
    save_store(FeatureStore(src.model, src.weights, src.embeddings, src.ids, src.signatures, dict(src.manifest)),
               tmp_path / "image.orig" / "efficientnet_lite0", dtype="float16")
    maps = {}
    for name, features in (("float32", ROOT / "features"), ("float16", tmp_path)):
        engine = Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=features, var_dir=tmp_path / "var"))
        assert engine.store("efficientnet_lite0").dtype == name
        maps[name] = engine.evaluate("efficientnet_lite0", "cosine").map
    assert abs(maps["float16"] - maps["float32"]) < 0.001


def test_merge_update_reuses_unchanged():
    old = _store(3)
    todo, kept = merge_update(old, ["0", "1", "9"], ["s0", "CHANGED", "s9"])
    assert todo == [1, 2]
    np.testing.assert_array_equal(kept[0], old.embeddings[0])


def test_interrupted_write_keeps_previous(tmp_path, monkeypatch):
    save_store(_store(seed=1), tmp_path)
    before = load_store(tmp_path).embeddings.copy()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_store(_store(seed=2), tmp_path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_store(tmp_path).embeddings, before)
    assert not list(tmp_path.glob(".store-*"))  # temp file cleaned up


@pytest.mark.slow
def test_incremental_index_and_kill(tmp_path, small_collection, collection_dir):
    """Real extraction: re-index only what changed; SIGKILL mid-index leaves the old store."""
    from cbir.extraction import index_collection

    features = tmp_path / "features"
    c = scan_collection(small_collection)
    r1 = index_collection(c, "efficientnet_lite0", features)
    assert (r1.extracted, r1.reused, r1.images) == (12, 0, 12)
    # add one, change one, remove one, add a corrupt one
    shutil.copy(collection_dir / "401.jpg", small_collection / "401b.jpg")
    shutil.copy(collection_dir / "302.jpg", small_collection / "0.jpg")
    (small_collection / "400.jpg").unlink()
    (small_collection / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    labels = (small_collection / "labels.csv").read_text().replace("400,dinosaurs\n", "")
    (small_collection / "labels.csv").write_text(labels + "401b,dinosaurs\nbroken,dinosaurs\n")
    c2 = scan_collection(small_collection)
    r2 = index_collection(c2, "efficientnet_lite0", features)
    assert r2.extracted == 2 and r2.reused == 10 and r2.removed == 1
    assert len(r2.failures) == 1 and "broken" in r2.failures[0][0]
    store = load_store(r2.path)
    assert "400" not in store and "401b" in store and "broken" not in store
    # the changed image now has the features of 302
    np.testing.assert_allclose(store.vector("0"), store.vector("302"), atol=1e-5)

    before = store.embeddings.copy()
    for f in small_collection.glob("*.jpg"):
        f.write_bytes(f.read_bytes() + b"\0")  # every signature changes: full re-extraction
    env = dict(os.environ, CBIR_FEATURES_DIR=str(features))
    argv = [sys.executable, "-m", "cbir", "index", "-q", "--collection", str(small_collection), "-m", "efficientnet_lite0", "--batch-size", "1"]
    # SIGKILL at moments spread over start-up, extraction and the write: the store on disk
    # is always complete, either the previous one or the new one, never a mix.
    for delay in (0.5, 2.0, 3.5, 5.0, 6.5):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        now = load_store(r2.path)  # never raises: the file is always whole
        assert sorted(now.ids.tolist()) == sorted(store.ids.tolist())
        if np.array_equal(now.embeddings, before):
            continue  # killed before the rename: the previous store
        # killed after the rename: the whole new store, with every new signature
        assert set(now.signatures.tolist()).isdisjoint(store.signatures.tolist())
        np.testing.assert_allclose(now.embeddings, before, atol=1e-4)
        break
