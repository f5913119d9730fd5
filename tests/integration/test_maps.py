"""2-D maps of the real Wang features: PCA, UMAP, t-SNE, the cache, placing a new point,
bad parameters, and the API."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from cbir.config import Settings
from cbir.engine import Engine
from cbir.centring import centre
from cbir.errors import CBIRError
from cbir.maps import check_params, embedding_map, map_status
from cbir.derived import save_derived
from cbir.store import FeatureStore
from cbir.store_format import load_store, save_store
from tests.conftest import COLLECTION, ROOT

LITE0 = ROOT / "features" / "image.orig" / "efficientnet_lite0"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    features = tmp_path_factory.mktemp("features")
    shutil.copytree(LITE0, features / "image.orig" / "efficientnet_lite0", ignore=shutil.ignore_patterns("dba-*", "faiss*", "map-*", "centred_*"))
    return Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=features, var_dir=features / "var"))


def _class_separation(coords: np.ndarray, labels: list[str]) -> float:
    """Mean distance to the own class's centre over mean distance to the map's centre."""
    lab = np.array(labels)
    centres = {c: coords[lab == c].mean(0) for c in set(labels)}
    own = np.mean([np.linalg.norm(coords[i] - centres[c]) for i, c in enumerate(labels)])
    return float(own / np.linalg.norm(coords - coords.mean(0), axis=1).mean())


def test_pca_map_is_cached_and_places_a_stored_vector_on_itself(engine):
    import dataclasses
    from types import SimpleNamespace

    import cbir.maps

    first = embedding_map(engine, "efficientnet_lite0", "pca")
    assert first.coords.shape == (1000, 2) and first.seconds > 0
    labels = [engine.collection.label_of(i) for i in first.ids]
    assert _class_separation(first.coords, labels) < 0.8  # classes gather
    again = embedding_map(engine, "efficientnet_lite0", "pca")
    assert again.seconds == 0 and np.array_equal(again.coords, first.coords)  # read from the cache
    assert first.centred and first.to_dict()["centred"] is True  # as a default search sees them
    assert list(engine.store_folder("efficientnet_lite0").glob("centred_map-pca.npz"))
    store = engine.store("efficientnet_lite0")
    # the raw descriptor of a mapped image, centred as the map's vectors are, lands on its own dot
    x, y = first.place(store.vector("412"))
    assert (x, y) == pytest.approx(tuple(first.coords[first.ids.index("412")]), abs=1e-4)
    # the map's mean and axes are kept: a second placement reads none of the store's vectors
    assert any(key[:3] == first.key for key in cbir.maps._PCA_AXES)
    first.store = SimpleNamespace(centre=first.store.centre, embeddings=None)  # (its vectors gone)
    assert first.place(store.vector("777")) == pytest.approx(tuple(first.coords[first.ids.index("777")]), abs=1e-4)
    # the same map file drawn again with an axis's sign flipped (pruned, rebuilt by another
    # process): its points follow the dots drawn, not the axes kept from the other drawing
    flipped = dataclasses.replace(again, coords=again.coords * np.array([-1, 1], np.float32))
    assert flipped.key == first.key
    assert flipped.place(store.vector("412")) == pytest.approx(tuple(flipped.coords[flipped.ids.index("412")]), abs=1e-4)
    # as stored: a map of its own, cached apart (the centred one is not overwritten)
    raw = embedding_map(engine, "efficientnet_lite0", "pca", centre=False)
    assert not raw.centred and raw.seconds > 0 and not np.allclose(np.abs(raw.coords), np.abs(first.coords), atol=1e-2)
    assert raw.place(store.vector("412")) == pytest.approx(tuple(raw.coords[raw.ids.index("412")]), abs=1e-4)
    assert list(engine.store_folder("efficientnet_lite0").glob("map-pca.npz"))
    assert embedding_map(engine, "efficientnet_lite0", "pca").seconds == 0  # both stay cached
    assert embedding_map(engine, "efficientnet_lite0", "pca", centre="off").seconds == 0
    with pytest.raises(CBIRError, match="centre must be true or false"):
        embedding_map(engine, "efficientnet_lite0", "pca", centre="maybe")


def test_a_store_above_the_map_bound_is_mapped_through_a_seeded_sample(engine, monkeypatch):
    import cbir.maps

    monkeypatch.setattr(cbir.maps, "MAP_MAX_POINTS", 300)
    store = engine.store("efficientnet_lite0")
    emap = embedding_map(engine, "efficientnet_lite0", "pca")
    assert emap.coords.shape == (300, 2) and emap.total == 1000 and len(set(emap.ids)) == 300
    assert emap.ids == store.ids[emap.rows].tolist()  # the sample's rows, in store order
    assert embedding_map(engine, "efficientnet_lite0", "pca").ids == emap.ids  # seeded: the same sample, from the cache
    assert emap.to_dict()["sampled"] is True and emap.to_dict()["total"] == 1000
    one = emap.ids[0]
    assert emap.place(store.vector(one)) == pytest.approx(tuple(emap.coords[0]), abs=1e-4)


@pytest.mark.skipif(not (map_status()["umap"][0] and map_status()["tsne"][0]), reason="umap-learn and openTSNE")
def test_umap_and_tsne_separate_classes_and_place_new_points_with_their_fitted_model(tmp_path, monkeypatch):
    import cbir.maps

    src = load_store(LITE0)
    rows = [i for i, image_id in enumerate(src.ids.tolist()) if int(image_id) % 100 < 30]  # 30 of each class
    held_out = [i for i, image_id in enumerate(src.ids.tolist()) if int(image_id) % 100 == 50]  # one of each, not mapped
    folder = tmp_path / "image.orig" / "efficientnet_lite0"
    save_store(FeatureStore(src.model, src.weights, np.asarray(src.embeddings)[rows], src.ids[rows], src.signatures[rows]), folder)
    engine = Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=tmp_path, var_dir=tmp_path / "var"))
    monkeypatch.setattr(cbir.maps, "_FITTED", type(cbir.maps._FITTED)(cbir.maps.FITTED_MAX))
    for method, params, kind in (("umap", {"n_neighbors": 10}, "UMAP"), ("tsne", {"perplexity": 20}, "TSNEEmbedding")):
        ticks = []
        emap = embedding_map(engine, "efficientnet_lite0", method, params, progress=lambda d, t: ticks.append(d / t))
        labels = np.array([engine.collection.label_of(i) for i in emap.ids])
        assert emap.coords.shape == (300, 2) and _class_separation(emap.coords, list(labels)) < 0.6, method
        assert len(set(ticks)) > 3 and ticks[-1] == 1.0 and ticks == sorted(ticks), method  # moves while it runs
        assert type(cbir.maps._FITTED[emap.key]).__name__ == kind  # the fit is kept for placing
        store = engine.store("efficientnet_lite0")
        spread = np.linalg.norm(emap.coords - emap.coords.mean(0), axis=1).mean()
        # a mapped image's own vector, transformed, lands on its own dot (the map's frame: no shift)
        placed = np.array(emap.place(store.vector("412")))
        assert np.linalg.norm(placed - emap.coords[emap.ids.index("412")]) < 0.1 * spread, method
        # images the map never saw land where their nearest images in feature space are: among
        # the label most of those have (their own class, but for monument 250, which looks like food)
        # (in the centred space the map shows)
        assert emap.centred
        mapped = np.asarray(emap.store.embeddings, dtype=np.float32)
        for i in held_out:
            vector = np.asarray(src.embeddings[i])
            point = np.array(emap.place(vector))
            on_map = labels[np.argsort(np.linalg.norm(emap.coords - point, axis=1))[:10]]
            in_features = labels[np.argsort(-(mapped @ centre(vector, emap.store.centre)))[:10]]
            majority = max(set(in_features), key=list(in_features).count)
            assert (on_map == majority).sum() >= 5, (method, src.ids[i], on_map, majority)
        # a map read from the disk cache in a fresh process has no fitted model: placing fits it
        # again (seeded), and the point is the same, in the same frame
        cbir.maps._FITTED.clear()
        again = embedding_map(engine, "efficientnet_lite0", method, params)
        assert again.seconds == 0 and emap.key not in cbir.maps._FITTED
        assert np.array(again.place(store.vector("412"))) == pytest.approx(placed, abs=1e-3), method
        assert emap.key in cbir.maps._FITTED
        if method == "tsne":
            # a cached map the fit does not reproduce (made by other library versions) is
            # replaced by the refit one, so the point and the dots share one frame
            folder, version, name = emap.key
            save_derived(Path(folder), name, version, emap.coords + 5.0)
            cbir.maps._FITTED.clear()
            stale = embedding_map(engine, "efficientnet_lite0", method, params)
            assert stale.coords == pytest.approx(emap.coords + 5.0)
            assert np.array(stale.place(store.vector("412"))) == pytest.approx(placed, abs=1e-3)
            assert embedding_map(engine, "efficientnet_lite0", method, params).coords == pytest.approx(emap.coords, abs=1e-4)
    assert len(cbir.maps._FITTED) <= cbir.maps.FITTED_MAX


def test_bad_map_requests_are_clear():
    with pytest.raises(ValueError, match="unknown map method 'mds'"):
        check_params("mds", None)
    with pytest.raises(CBIRError, match="n_neighbors must be between 2 and 200"):
        check_params("umap", {"n_neighbors": 1})
    with pytest.raises(CBIRError, match="PCA takes no parameters; not perplexity"):
        check_params("pca", {"perplexity": 30})


@pytest.mark.redis
def test_api_map(fresh_redis, tmp_path, engine):
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(fresh_redis.url, tmp_path, features_dir=engine.settings.features_dir), warm_up=False)) as c:
        token = c.post("/api/login", json={"username": "student", "password": "multimedia"}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        r = c.get("/api/map?model=efficientnet_lite0&method=pca", headers=auth)
        assert r.status_code == 200
        body = r.json()
        assert len(body["x"]) == len(body["y"]) == len(body["ids"]) == len(body["labels"]) == 1000 and body["method"] == "pca"
        assert body["total"] == 1000 and body["sampled"] is False and body["centred"] is True
        raw = c.get("/api/map?model=efficientnet_lite0&method=pca&centre=false", headers=auth).json()
        assert raw["centred"] is False and raw["ids"] == body["ids"] and not np.allclose(np.abs(raw["x"]), np.abs(body["x"]), atol=1e-2)
        r = c.get("/api/map?method=pca&centre=maybe", headers=auth)
        assert r.status_code == 422 and "centre" in r.text
        assert c.get("/api/map?method=mds", headers=auth).status_code == 422
        r = c.get("/api/map?method=pca&perplexity=30", headers=auth)
        assert r.status_code == 400 and "PCA takes no parameters" in r.json()["error"]
        assert c.get("/api/map").status_code == 401


@pytest.mark.parametrize("method", ["pca", "umap", "tsne"])
def test_each_map_method_refuses_too_few_points_before_any_work(method, tmp_path, monkeypatch):
    """A 3-image UMAP once raised scipy's TypeError after 23-56 s (a 500): every method states
    its minimum and says so at once, as a 422, without fitting or reading anything."""
    import cbir.maps
    from cbir.errors import TooFewImagesError, contract_for

    record = cbir.maps.MAPS[method]
    assert record.min_points >= 3
    monkeypatch.setattr(cbir.maps, "_pca", lambda x: pytest.fail("fitted"))
    monkeypatch.setattr(cbir.maps, "_umap", lambda *a, **k: pytest.fail("fitted"))
    monkeypatch.setattr(cbir.maps, "_tsne", lambda *a, **k: pytest.fail("fitted"))
    few = np.random.default_rng(0).random((record.min_points - 1, 16)).astype(np.float32)
    with pytest.raises(TooFewImagesError, match=f"{record.label} map needs at least {record.min_points}") as err:
        cbir.maps.fit_map(few, method, check_params(method, None) if map_status()[method][0] else {})
    assert contract_for(err.value).status == 422
    # through a store: refused before the map is read or fitted
    ids = np.arange(record.min_points - 1).astype(str)
    store = FeatureStore("efficientnet_lite0", "w", few, ids, ids)
    folder = tmp_path / "features" / "image.orig" / "efficientnet_lite0"

    class Catalogue:
        def store(self, model):
            return store

        def centred(self, model):  # too few to centre: the store itself
            return store

        def store_folder(self, model):
            return folder

    if map_status()[method][0]:
        with pytest.raises(TooFewImagesError):
            embedding_map(Catalogue(), "efficientnet_lite0", method)
        assert not folder.exists()


@pytest.mark.redis
def test_the_map_page_searches_its_query_again_when_centring_is_turned(engine, fresh_redis, monkeypatch):
    """The Map page (Streamlit's AppTest, logged in): a query shown from the other centring is
    searched again the map's way before the map is drawn (its rings and star were the other
    way's); an uploaded query the page no longer holds is dropped, not drawn with stale rings."""
    import redis as redis_lib
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from cbir.config import Settings as Config, reset_settings
    from cbir.users import UserStore, bootstrap
    from tests.conftest import ROOT

    for key, value in {"CBIR_REDIS_URL": fresh_redis.url, "CBIR_DEMO": "1", "CBIR_COLLECTION": str(COLLECTION),
                       "CBIR_FEATURES_DIR": str(engine.settings.features_dir), "CBIR_VAR_DIR": str(engine.settings.var_dir)}.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    users = UserStore(redis_lib.Redis.from_url(fresh_redis.url, decode_responses=True))
    bootstrap(users, Config(demo=True, var_dir=engine.settings.var_dir))
    stale = {"model": "efficientnet_lite0", "hits": [{"id": "1"}], "ranked": {}, "point": (0.0, 0.0), "how": "", "map": ()}

    def run(result: dict) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app_pages" / "map.py"), default_timeout=120)
        for key, value in dict(authentication_status=True, username="researcher", roles=["researcher"],
                               auth_binding=users.binding("researcher"), map_result=result).items():
            at.session_state[key] = value
        at.run()
        assert not at.exception, at.exception
        return at

    try:
        # a collection image shown as stored, the map now centred: searched again, centred
        at = run({**stale, "query": "id", "id": "412", "vector": None, "centred": False})
        again = at.session_state["map_result"]
        assert again["centred"] is True and again["id"] == "412" and len(again["hits"]) == 10
        assert again["ranked"]["results"][0]["id"] != "412"  # (the query itself excluded, as on the Search page)
        assert again["point"] == pytest.approx(embedding_map(engine, "efficientnet_lite0", "pca").point_of("412"), abs=1e-4)
        assert any("Searched by cosine distance, centred" in c.value for c in at.caption)
        # an upload the page no longer holds (the uploader empties on leaving the page): dropped
        at = run({**stale, "query": "upload", "id": None, "vector": np.zeros(1280, np.float32), "centred": False})
        assert "map_result" not in at.session_state
        assert not any("The star:" in c.value for c in at.caption)
        [chart] = at.get("vega_lite_chart")
        assert "shape" not in chart.proto.spec and "M0,-1L0.22" not in chart.proto.spec  # no star drawn on the map
    finally:
        st.cache_resource.clear()
        monkeypatch.undo()
        reset_settings()
