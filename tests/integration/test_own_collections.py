"""A generated collection with every kind of awkward file, through `cbir index`, the
feature store and the REST API: every skip named, nothing extracted thrown away."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cbir.store_format import load_store, store_dir
from tests.conftest import COLLECTION, ServiceProcess, free_port, service_env


@pytest.fixture
def awkward(tmp_path):
    """Two class folders of real Wang images, and one of each awkward thing."""
    root = tmp_path / "mine"
    for cls, start in (("africa", 0), ("buses", 300)):
        (root / cls).mkdir(parents=True)
        for i in range(start, start + 3):
            (root / cls / f"{i}.jpg").write_bytes((COLLECTION / f"{i}.jpg").read_bytes())
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "0-checkpoint.jpg").write_bytes((COLLECTION / "0.jpg").read_bytes())
    (root / "stray.jpg").write_bytes((COLLECTION / "1.jpg").read_bytes())
    raw = os.path.join(os.fsencode(root / "africa"), b"caf\xe9.jpg")
    with open(raw, "wb") as fh:
        fh.write((COLLECTION / "5.jpg").read_bytes())
    Image.fromarray(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1)), mode="F").save(root / "buses" / "scan.tif")
    (root / "buses" / "broken.jpg").write_bytes((COLLECTION / "2.jpg").read_bytes()[:500])
    (root / "buses" / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    return root


def _cbir(*args, env):
    return subprocess.run([sys.executable, "-m", "cbir", *args], capture_output=True, text=True, env={**os.environ, **env})


@pytest.mark.slow
def test_index_names_every_skip_and_keeps_what_was_extracted(awkward, tmp_path):
    env = {"CBIR_FEATURES_DIR": str(tmp_path / "f")}
    r = _cbir("index", "-q", "--collection", str(awkward), "-m", "efficientnet_lite0", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "8 extracted" in out and "4 skipped" in out, out  # 6 Wang + café + float TIFF; hidden, stray, heic, broken
    for name in (".ipynb_checkpoints/", "stray.jpg", "phone.heic", "broken.jpg"):
        assert name in out, (name, out)
    store = load_store(store_dir(tmp_path / "f", "mine", "efficientnet_lite0", "imagenet"))
    assert "africa/caf%E9" in store.ids.tolist() and "buses/scan" in store.ids.tolist() and len(store) == 8
    r = _cbir("search", "--collection", str(awkward), "-m", "efficientnet_lite0", "--id", "africa/caf%E9", "-k", "2", env=env)
    assert r.returncode == 0 and "africa" in r.stdout, r.stderr

    # what the Collection page shows per model: indexed, missing, failed (named), stale, skipped
    from cbir.config import Settings
    from cbir.engine import Engine

    def coverage():
        return Engine(awkward, Settings(collection=awkward, features_dir=tmp_path / "f", var_dir=tmp_path / "var")).coverage("efficientnet_lite0")

    c = coverage()
    assert (c["images"], c["indexed"], c["missing"], c["failed"], c["stale"], c["skipped"]) == (9, 8, 0, 1, 0, 3), c
    assert [i for i, _ in c["failed_list"]] == ["buses/broken"] and "broken.jpg" in c["failed_list"][0][1]
    (awkward / "buses" / "303.jpg").write_bytes((COLLECTION / "303.jpg").read_bytes())
    (awkward / "africa" / "0.jpg").unlink()
    c = coverage()
    assert (c["indexed"], c["missing"], c["failed"], c["stale"]) == (7, 1, 1, 1), c


def test_cli_lists_all_skipped_on_request(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    (root / "0.jpg").write_bytes((COLLECTION / "0.jpg").read_bytes())
    for i in range(12):
        (root / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    env = {"CBIR_FEATURES_DIR": str(tmp_path / "f")}
    r = _cbir("index", "-q", "--collection", str(root), "-m", "efficientnet_lite0", env=env)
    assert r.returncode == 0 and "12 skipped" in r.stdout and "2 more (--all-skipped" in r.stdout, r.stdout + r.stderr
    r = _cbir("index", "-q", "--collection", str(root), "-m", "efficientnet_lite0", "--all-skipped", env=env)
    assert r.stdout.count("  skipped ") == 12 and "bad11.jpg" in r.stdout


def test_labels_csv_in_cp1252_is_one_line_from_the_cli(tmp_path):
    root = tmp_path / "cp"
    root.mkdir()
    (root / "0.jpg").write_bytes((COLLECTION / "0.jpg").read_bytes())
    (root / "labels.csv").write_bytes("0,caf\xe9\n".encode("cp1252"))
    r = _cbir("index", "--collection", str(root), env={"CBIR_FEATURES_DIR": str(tmp_path / "f")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "labels.csv: line 1 is not UTF-8" in lines[0], r.stderr


@pytest.mark.redis
def test_api_lists_and_serves_an_image_whose_name_is_not_utf8(awkward, fresh_redis, tmp_path):
    """A real `cbir api` (Starlette's TestClient decodes a path twice, a server once)."""
    import json
    import urllib.request

    port = free_port()
    env = service_env(fresh_redis.url, tmp_path, CBIR_COLLECTION=str(awkward), CBIR_FEATURES_DIR=str(tmp_path / "f"))
    server = ServiceProcess([sys.executable, "-m", "cbir", "api", "--port", str(port)], port, env, tmp_path / "api.log").start()
    try:
        def get(path, token=None):
            req = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read()

        login = urllib.request.Request(server.url + "/api/login", data=json.dumps({"username": "researcher", "password": "umons2024"}).encode(),
                                       headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(login, timeout=30) as r:
            token = json.loads(r.read())["access_token"]
        page = json.loads(get("/api/available_images?q=caf", token))
        item = page["items"][0]
        assert item == {"id": "africa/caf%E9", "label": "africa", "url": "/api/images/africa/caf%25E9"}
        assert get(item["url"], token) == (COLLECTION / "5.jpg").read_bytes()
        assert len(json.loads(get("/api/available_images?limit=1000", token))["items"]) == 9  # the scan keeps broken.jpg: only decoding finds it broken
    finally:
        server.stop()


@pytest.mark.redis
def test_collection_page_names_what_the_scan_skipped(awkward, fresh_redis, tmp_path, monkeypatch):
    """The Collection page (run by Streamlit's AppTest, logged in as an admin) lists the skips."""
    import redis as redis_lib
    from streamlit.testing.v1 import AppTest

    import streamlit as st

    from cbir.config import Settings, reset_settings
    from cbir.users import UserStore, bootstrap
    from tests.conftest import ROOT

    for key, value in {"CBIR_REDIS_URL": fresh_redis.url, "CBIR_DEMO": "1", "CBIR_COLLECTION": str(awkward),
                       "CBIR_FEATURES_DIR": str(tmp_path / "f"), "CBIR_VAR_DIR": str(tmp_path / "var")}.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    users = UserStore(redis_lib.Redis.from_url(fresh_redis.url, decode_responses=True))
    bootstrap(users, Settings(demo=True, var_dir=tmp_path / "var"))
    at = AppTest.from_file(str(ROOT / "app_pages" / "collection.py"), default_timeout=120)
    at.session_state["authentication_status"] = True
    at.session_state["username"] = "admin"
    at.session_state["roles"] = ["admin"]
    at.session_state["auth_binding"] = users.binding("admin")
    try:
        at.run()
    finally:  # this process's next test must not see this collection
        st.cache_resource.clear()
        monkeypatch.undo()
        reset_settings()
    assert not at.exception, at.exception
    [expander] = [e for e in at.expander if "skipped while reading the folder" in e.label]
    assert expander.label.startswith("3 file(s)")  # hidden folder, stray, heic (broken.jpg fails only at decoding)
    shown = expander.dataframe[0].value
    assert set(shown["File"]) == {".ipynb_checkpoints/", "stray.jpg", "buses/phone.heic"}


def _wang_subset_store(folder, features, ids):
    """The bundled Wang EfficientNet-Lite0 vectors of ``ids``, stored for the collection in ``folder``."""
    from cbir.store import FeatureStore
    from cbir.store_format import save_store
    from tests.conftest import ROOT

    wang = load_store(ROOT / "features" / "image.orig" / "efficientnet_lite0")
    rows = [wang.row_of(i) for i in ids]
    save_store(FeatureStore("efficientnet_lite0", "imagenet", np.asarray(wang.embeddings[rows], dtype=np.float32), ids,
                            wang.signatures[rows]), store_dir(features, folder.name, "efficientnet_lite0"))


def test_images_removed_from_the_folder_since_indexing_are_not_ranked(small_collection, tmp_path):
    """A store holding images no longer in the folder (deleted after indexing): searches and
    evaluations rank the folder's images only (they ranked the deleted ones too)."""
    from cbir.config import Settings
    from cbir.engine import Engine

    ids = sorted(p.stem for p in small_collection.glob("*.jpg"))
    _wang_subset_store(small_collection, tmp_path / "f", ids)
    (small_collection / "301.jpg").unlink()
    (small_collection / "302.jpg").unlink()
    engine = Engine(small_collection, Settings(collection=small_collection, features_dir=tmp_path / "f", var_dir=tmp_path / "var"))
    ranked = engine.search(["efficientnet_lite0"], "cosine", 20, image_id="300").per_model["efficientnet_lite0"]
    got = [h.id for h in ranked.hits]
    assert len(got) == 9 and not {"301", "302"} & set(got), got  # 10 images in the folder, the query left out
    assert ranked.n_relevant == 1  # 303: the one other bus still in the folder
    assert engine.evaluate(["efficientnet_lite0"], "cosine").n_queries == 10


def test_a_query_alone_in_its_class_has_no_ap_rather_than_ap_0(small_collection, tmp_path):
    """AP and recall are undefined with no relevant image: the search says so (None, and a line
    in the CLI) instead of scoring 0, as the evaluation leaves such queries out of mAP."""
    from cbir.config import Settings
    from cbir.engine import Engine

    labels = small_collection / "labels.csv"
    labels.write_text(labels.read_text().replace("400,dinosaurs", "400,lonely"))
    ids = sorted(p.stem for p in small_collection.glob("*.jpg"))
    _wang_subset_store(small_collection, tmp_path / "f", ids)
    engine = Engine(small_collection, Settings(collection=small_collection, features_dir=tmp_path / "f", var_dir=tmp_path / "var"))
    alone = engine.search(["efficientnet_lite0"], "cosine", 5, image_id="400").per_model["efficientnet_lite0"]
    assert alone.n_relevant == 0 and alone.precision_at_k == 0.0
    assert alone.average_precision is None and alone.recall_at_k is None and alone.pr_recall == []
    assert alone.to_dict()["average_precision"] is None
    from cbir.export import search_csv

    response = engine.search(["efficientnet_lite0"], "cosine", 5, image_id="400").to_dict()
    assert response["collection"] == "small"  # every export names its collection
    assert search_csv(response).splitlines()[1].endswith(",small,True")  # the collection, centred (12 images)
    other = engine.search(["efficientnet_lite0"], "cosine", 5, image_id="401").per_model["efficientnet_lite0"]
    assert other.n_relevant == 2 and other.average_precision > 0
    report = engine.evaluate(["efficientnet_lite0"], "cosine")
    assert report.n_singleton == 1 and report.n_scored == 11 and report.to_dict()["collection"] == "small"
    r = _cbir("search", "--collection", str(small_collection), "-m", "efficientnet_lite0", "--id", "400", "-k", "3",
              env={"CBIR_FEATURES_DIR": str(tmp_path / "f")})
    assert r.returncode == 0 and "AP undefined: the query is the only image of its class" in r.stdout, r.stdout + r.stderr


def test_cli_adds_a_zip_as_a_collection_and_refuses_a_bomb_in_one_line(tmp_path):
    import io
    import zipfile

    env = {"CBIR_VAR_DIR": str(tmp_path / "var"), "CBIR_COLLECTIONS_ROOT": str(tmp_path / "collections"),
           "CBIR_FEATURES_DIR": str(tmp_path / "f")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for cls, first in (("africa", 0), ("buses", 300)):
            for i in range(first, first + 2):
                z.write(COLLECTION / f"{i}.jpg", f"mine/{cls}/{i}.jpg")
        z.writestr("mine/notes.txt", "x")
    (tmp_path / "mine.zip").write_bytes(buf.getvalue())
    r = _cbir("collections", "add", "mine", str(tmp_path / "mine.zip"), env=env)
    assert r.returncode == 0 and "unpacked 4 file(s)" in r.stdout and "skipped mine/notes.txt" in r.stdout, r.stdout + r.stderr
    listed = _cbir("collections", "list", env=env).stdout
    assert "mine" in listed and "folders" in listed
    r = _cbir("collections", "remove", "mine", env=env)
    assert r.returncode == 0 and "and its uploaded images" in r.stdout and not (tmp_path / "collections" / "mine").exists()

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(COLLECTION / "0.jpg", "0.jpg")
        z.writestr("zeros.png", b"\0" * (30 << 20))
    (tmp_path / "bomb.zip").write_bytes(bomb.getvalue())
    r = _cbir("collections", "add", "bomb", str(tmp_path / "bomb.zip"), env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "zip bomb" in r.stderr, r.stderr
    assert list((tmp_path / "collections").iterdir()) == []
