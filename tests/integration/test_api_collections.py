"""Several collections in one API: listed, added from a server folder (researchers and
admins), searched with ?collection=NAME beside the default one, removed (admins)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cbir.api.app import create_app
from cbir.collection import scan_collection
from cbir.importing import import_features
from tests.conftest import COLLECTION, ROOT, api_login, make_settings


@pytest.fixture
def api(fresh_redis, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(ROOT / "features" / "image.orig" / "efficientnet_lite0", features / "image.orig" / "efficientnet_lite0",
                    ignore=shutil.ignore_patterns("dba-*", "faiss-*", "map-*", "centred_*"))
    photos = tmp_path / "collections" / "photos"
    for cls, first in (("buses", 300), ("dinosaurs", 400)):
        (photos / cls).mkdir(parents=True)
        for i in range(first, first + 3):
            shutil.copy(COLLECTION / f"{i}.jpg", photos / cls / f"{i}.jpg")
    app = create_app(make_settings(fresh_redis.url, tmp_path, features_dir=features, collections_root=tmp_path / "collections"),
                     warm_up=False)
    with TestClient(app) as client:
        yield client, photos, features


@pytest.mark.redis
def test_two_collections_side_by_side(api):
    client, photos, features = api
    student, researcher, admin = (api_login(client, *who) for who in
                                  (("student", "multimedia"), ("researcher", "umons2024"), ("admin", "password123")))
    refused = client.post("/api/collections", json={"name": "trip", "folder": str(photos)}, headers=student)
    assert refused.status_code == 403
    for outside in ("/", str(COLLECTION), "../../etc"):  # only folders inside CBIR_COLLECTIONS_ROOT
        r = client.post("/api/collections", json={"name": "x", "folder": outside}, headers=researcher)
        assert r.status_code == 403 and "CBIR_COLLECTIONS_ROOT" in r.json()["error"], r.text
    added = client.post("/api/collections", json={"name": "trip", "folder": "photos"}, headers=researcher)
    assert added.status_code == 201 and added.json()["collection"]["images"] == 6, added.text
    assert "folder" not in added.json()["collection"]  # a researcher is not told where the server keeps it
    again = client.post("/api/collections", json={"name": "trip", "folder": str(photos)}, headers=researcher)
    assert again.status_code == 409
    # features for the new collection (random vectors: no model runs in this test)
    ids = scan_collection(photos, name="trip").ids
    np.savez(features.parent / "f.npz", ids=np.array(ids), vectors=np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32))
    import_features(features.parent / "f.npz", "rand", scan_collection(photos, name="trip"), features)

    listed = {c["name"]: c for c in client.get("/api/collections", headers=admin).json()["collections"]}
    assert listed["image.orig"]["default"] and listed["trip"]["models"] == ["imported:rand"] and "folder" in listed["trip"]
    mine = client.post("/api/search?collection=trip", json={"image_id": "buses/300", "models": ["imported:rand"], "top_k": 5},
                       headers=student)
    assert mine.status_code == 200, mine.text
    assert {h["id"] for h in mine.json()["models"]["imported:rand"]["results"]} <= set(ids)
    default = client.post("/api/search", json={"image_id": "300", "top_k": 5}, headers=student)
    assert default.status_code == 200 and all("/" not in h["id"] for h in default.json()["models"]["efficientnet_lite0"]["results"])
    unknown = client.post("/api/search?collection=nope", json={"image_id": "1"}, headers=student)
    assert unknown.status_code == 422 and "unknown collection 'nope'" in unknown.json()["error"]
    assert client.get("/api/available_images?collection=trip", headers=student).json()["total"] == 6

    assert client.delete("/api/collections/trip", headers=researcher).status_code == 403
    gone = client.delete("/api/collections/trip", headers=admin)
    assert gone.status_code == 200 and not (features / "trip").exists() and photos.is_dir()
    assert client.post("/api/search?collection=trip", json={"image_id": "buses/300"}, headers=student).status_code == 422
    assert client.delete("/api/collections/image.orig", headers=admin).status_code == 422


@pytest.mark.redis
def test_a_collection_replaced_by_another_process_is_reopened(api, tmp_path):
    """The API had "trip" open; the CLI (another process, another registry object) removes it
    and adds another folder under the same name: the next request sees the new folder (it
    served the old one's images until a restart)."""
    from cbir.collection_registry import CollectionRegistry

    client, photos, _ = api
    student = api_login(client, "student", "multimedia")
    cli = CollectionRegistry(make_settings(None, tmp_path, collections_root=tmp_path / "collections"))
    cli.add("trip", photos, actor="cli")
    assert client.get("/api/available_images?collection=trip", headers=student).json()["total"] == 6
    other = tmp_path / "collections" / "other"
    other.mkdir()
    shutil.copy(COLLECTION / "0.jpg", other / "0.jpg")
    cli.remove("trip")
    cli.add("trip", other, actor="cli")
    listed = client.get("/api/available_images?collection=trip", headers=student).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == "0"
    cli.remove("trip")
    assert client.get("/api/available_images?collection=trip", headers=student).status_code == 422


@pytest.mark.redis
def test_an_anonymous_request_learns_no_collection_and_opens_none(api):
    """401 before the collection is looked up: no list of names, no folder scanned."""
    client, photos, _ = api
    researcher = api_login(client, "researcher", "umons2024")
    assert client.post("/api/collections", json={"name": "trip", "folder": "photos"}, headers=researcher).status_code == 201
    services = client.app.state.services
    services.forget("trip")
    for url in ("/api/stats?collection=nope", "/api/stats?collection=trip", "/api/models?collection=trip"):
        r = client.get(url)
        assert r.status_code == 401 and "trip" not in r.text and "image.orig" not in r.text, (url, r.text)
    assert "trip" not in services._open
    assert client.get("/ready?collection=trip").status_code in (200, 503) and "trip" not in services._open
