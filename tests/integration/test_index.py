"""Vector-index backends against the exact reference: FAISS in-process and a real Milvus
standalone server (the PyPI package `milvus`), on the real Wang features."""

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.config import Settings
from cbir.index import BACKENDS, IndexBackendError, UnsupportedMetric, backend_status, check_backend, open_index
from cbir.index.base import top_k
from cbir.index.exact import ExactIndex
from cbir.store import FeatureStore
from cbir.store_format import load_store
from tests.conftest import COLLECTION, ROOT, assert_same_ranking, free_port

LITE0 = ROOT / "features" / "image.orig" / "efficientnet_lite0"


@pytest.fixture(scope="module")
def wang():
    store = load_store(LITE0)
    labels = [scan_collection(COLLECTION).label_of(i) for i in store.ids.tolist()]
    return store, labels


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def settings(tmp_path, **kw) -> Settings:
    return Settings(collection=COLLECTION, features_dir=tmp_path, var_dir=tmp_path / "var", **kw)


def test_backend_names_and_status(tmp_path):
    assert check_backend("FAISS") == "faiss"
    with pytest.raises(ValueError, match="unknown index backend 'annoy'; choose one of: auto, exact, faiss, milvus"):
        check_backend("annoy")
    from cbir.index import resolve_backend

    small = settings(tmp_path, exact_max=1000)
    assert [resolve_backend("auto", n, small) for n in (1000, 1001)] == ["exact", "faiss"]  # by size
    assert resolve_backend("milvus", 10, small) == "milvus" and resolve_backend(None, 10, small) == "exact"
    # auto chose FAISS for chi-square above exact_max, and FAISS then refused the request
    assert resolve_backend("auto", 1001, small, "chi_square") == "exact"
    assert resolve_backend("auto", 1001, small, "cosine", "aqe") == "faiss"
    dba_by = "faiss" if BACKENDS["faiss"].supports_rerank("dba_aqe") else "exact"
    assert resolve_backend("auto", 1001, small, "cosine", "dba_aqe") == dba_by
    status = backend_status(settings(tmp_path))
    assert set(status) == set(BACKENDS) and status["exact"][0] and status["faiss"][0]
    assert status["milvus"] == (False, "set CBIR_MILVUS_URI to a Milvus server")


def test_top_k_hand_worked():
    d = np.array([[0.3, 0.1, np.inf, 0.2]])
    rows, vals = top_k(d, 5)
    assert rows.tolist() == [[1, 3, 0, -1, -1]] and vals[0, :3].tolist() == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "bhattacharyya"])
def test_faiss_hnsw_recall_against_exact(tmp_path, wang, metric):
    store, _ = wang
    q = store.embeddings[:200]
    truth, exact_d = ExactIndex(store.embeddings, metric).search(q, 10)
    index = open_index("faiss", store, tmp_path, metric, settings(tmp_path))
    found, dist = index.search(q, 10)
    assert recall_at(found, truth) >= 0.95
    # the same units as exact (position 1: the first neighbour that is not the query itself)
    np.testing.assert_allclose(dist[:, 1], exact_d[:, 1], rtol=2e-3, atol=1e-3)
    assert (tmp_path / f"faiss-hnsw-{metric}.npz").exists()  # persisted beside the store


def test_faiss_refuses_chi_square_and_reloads(tmp_path, wang):
    store, _ = wang
    with pytest.raises(UnsupportedMetric, match="chi-square.*--backend exact"):
        open_index("faiss", store, tmp_path, "chi_square", settings(tmp_path))
    open_index("faiss", store, tmp_path, "cosine", settings(tmp_path))
    before = (tmp_path / "faiss-hnsw-cosine.npz").stat().st_mtime_ns
    again = open_index("faiss", store, tmp_path, "cosine", settings(tmp_path))
    assert len(again) == len(store) and (tmp_path / "faiss-hnsw-cosine.npz").stat().st_mtime_ns == before


def test_faiss_label_filter_add_remove(tmp_path, wang):
    store, labels = wang
    index = open_index("faiss", store, tmp_path, "cosine", settings(tmp_path))
    buses = np.flatnonzero(np.array(labels) == "buses")
    found, _ = index.search(store.embeddings[:3], 10, rows=buses)
    assert set(found.ravel()) <= set(buses.tolist())
    index.add(store.embeddings[:5])
    assert len(index) == len(store) + 5
    index.remove(np.arange(len(store), len(store) + 5))
    assert len(index) == len(store)
    found, dist = index.search(store.embeddings[7:8], 1)
    assert found[0, 0] == 7 and dist[0, 0] < 1e-3


def test_faiss_ivfpq_is_the_small_option(tmp_path, wang):
    store, _ = wang
    hnsw = open_index("faiss", store, tmp_path, "cosine", settings(tmp_path))
    ivf = open_index("faiss", store, tmp_path, "cosine", settings(tmp_path, faiss_kind="ivfpq"))
    # per vector: 64 one-byte PQ codes instead of 1280 float32 (the codebooks are fixed overhead)
    assert ivf.index.code_size * 16 <= store.dim * 4 and len(hnsw) == len(ivf)
    truth, _ = ExactIndex(store.embeddings, "cosine").search(store.embeddings[:100], 10)
    assert recall_at(ivf.search(store.embeddings[:100], 10)[0], truth) > 0.5


# -- Milvus: a real standalone server ------------------------------------------------------
@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    from milvus import default_server

    base = tmp_path_factory.mktemp("milvus")
    default_server.set_base_dir(str(base))
    default_server.listen_port = free_port()
    before = set(_children(os.getpid()))
    default_server.start()
    pids = [p for p in _children(os.getpid()) if p not in before]  # only what the server started
    try:
        yield f"http://127.0.0.1:{default_server.listen_port}"
    finally:
        default_server.stop()
        for pid in pids:  # every process the server started, stopped by its pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


@pytest.mark.milvus
def test_milvus_recall_filter_and_sync(tmp_path, wang, milvus_uri):
    store, labels = wang
    s = settings(tmp_path, milvus_uri=milvus_uri)
    index = open_index("milvus", store, tmp_path, "cosine", s, labels, "wang_test")
    assert index.synced == {"upserted": 1000, "deleted": 0} and len(index) == 1000
    truth, exact_d = ExactIndex(store.embeddings, "cosine").search(store.embeddings[:100], 10)
    found, dist = index.search(store.embeddings[:100], 10)
    assert recall_at(found, truth) >= 0.95
    np.testing.assert_allclose(dist[:, 1], exact_d[:, 1], rtol=2e-3, atol=1e-3)
    buses = np.flatnonzero(np.array(labels) == "buses")
    found, _ = index.search(store.embeddings[:2], 10, rows=buses)
    assert set(found.ravel()) <= set(buses.tolist())
    # re-indexing: two images changed, one removed -> only those travel
    sigs = store.signatures.copy()
    sigs[[3, 4]] = "changed"
    keep = np.arange(1, len(store))
    changed = FeatureStore(store.model, store.weights, store.embeddings[keep], store.ids[keep], sigs[keep])
    again = open_index("milvus", changed, tmp_path, "cosine", s, [labels[i] for i in keep], "wang_test")
    assert again.synced == {"upserted": 2, "deleted": 1} and len(again) == 999
    again.drop()


@pytest.mark.milvus
def test_milvus_euclidean_and_bhattacharyya_units(tmp_path, wang, milvus_uri):
    store, labels = wang
    small = FeatureStore(store.model, store.weights, store.embeddings[:300], store.ids[:300], store.signatures[:300])
    for metric in ("euclidean", "bhattacharyya"):
        index = open_index("milvus", small, tmp_path, metric, settings(tmp_path, milvus_uri=milvus_uri), labels[:300], "units")
        found, dist = index.search(small.embeddings[:20], 5)
        truth, exact_d = ExactIndex(small.embeddings, metric).search(small.embeddings[:20], 5)
        assert recall_at(found, truth) >= 0.95, metric
        np.testing.assert_allclose(dist[:, 1:], exact_d[:, 1:], rtol=2e-3, atol=1e-3)  # [:, 0]: the query itself
        index.drop()


@pytest.mark.milvus
def test_milvus_searches_the_centred_vectors_apart_from_the_raw_ones(tmp_path, milvus_uri):
    """The default (centred) search through a real Milvus server: its own collection (``_centred``),
    the same top 10 as the exact centred search; the raw vectors in another collection."""
    from cbir.engine import Engine

    shutil.copytree(LITE0, tmp_path / "image.orig" / "efficientnet_lite0", ignore=shutil.ignore_patterns("*.npz", "centred-*"))
    engine = Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=tmp_path, var_dir=tmp_path / "var", milvus_uri=milvus_uri))
    for image_id in ("3", "412"):
        exact = engine.search("efficientnet_lite0", image_id=image_id).per_model["efficientnet_lite0"]
        served = engine.search("efficientnet_lite0", image_id=image_id, backend="milvus", depth=100)
        assert served.centred and served.backend == "milvus"
        hits = served.per_model["efficientnet_lite0"].hits
        assert len({h.id for h in hits} & {h.id for h in exact.hits}) >= 9
        np.testing.assert_allclose(hits[0].score, exact.hits[0].score, atol=2e-3)
    centred = engine.indexes.vector_index("efficientnet_lite0", engine.centred("efficientnet_lite0"), "cosine", "milvus")
    raw = engine.indexes.vector_index("efficientnet_lite0", engine.store("efficientnet_lite0"), "cosine", "milvus")
    assert centred.name.endswith("_imagenet_centred_cosine") and raw.name.endswith("_imagenet_cosine") and len(centred) == len(raw) == 1000
    centred.drop()
    raw.drop()


def test_milvus_unreachable_is_one_clear_error(tmp_path, wang):
    store, labels = wang
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(IndexBackendError, match=f"Milvus at {uri}"):
        open_index("milvus", store, tmp_path, "cosine", settings(tmp_path, milvus_uri=uri), labels)
    with pytest.raises(IndexBackendError, match="CBIR_MILVUS_URI"):
        open_index("milvus", store, tmp_path, "cosine", settings(tmp_path), labels)


# -- through the engine, the CLI and the API ---------------------------------------------
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from cbir.engine import Engine

    features = tmp_path_factory.mktemp("features")
    for m in LITE:
        shutil.copytree(ROOT / "features" / "image.orig" / m, features / "image.orig" / m, ignore=shutil.ignore_patterns("dba-*", "faiss-*"))
    return Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=features, var_dir=features / "var"))


def test_wang_map_at_1000_with_faiss_matches_exact(engine):
    for models, method in (("efficientnet_lite0", None), (LITE, "average"), (LITE, "rrf")):
        exact = engine.evaluate(models, "cosine", method=method)
        approx = engine.evaluate(models, "cosine", method=method, backend="faiss")
        assert approx.depth == 1000 and approx.map_label == "mAP@1000" and exact.depth is None
        assert abs(approx.map - exact.map) < 0.005, (models, method, approx.map, exact.map)


def test_search_with_faiss_reports_ap_at_depth(engine):
    exact = engine.search(LITE, "cosine", 10, image_id="412", method="rrf").to_dict()
    approx = engine.search(LITE, "cosine", 10, image_id="412", method="rrf", backend="faiss", depth=100).to_dict()
    assert approx["backend"] == "faiss" and approx["depth"] == 100
    assert approx["combined"]["ap_label"] == "AP@100" and exact["combined"]["ap_label"] == "AP"
    assert [h["id"] for h in approx["combined"]["results"][:5]] == [h["id"] for h in exact["combined"]["results"][:5]]
    assert approx["models"]["efficientnet_lite0"]["relevant_in_collection"] == 99  # recall over all relevant
    from cbir.rerank import Rerank

    aqe = engine.search("efficientnet_lite0", image_id="3", backend="faiss", rerank=Rerank("aqe"))
    assert aqe.per_model["efficientnet_lite0"].hits


def test_neighbour_graph_of_the_exact_index_gives_brute_force_dba(wang):
    from cbir.index import neighbour_graph
    from cbir.rerank import database_augmentation

    store, _ = wang
    x = np.asarray(store.embeddings[:300])
    graph = neighbour_graph(ExactIndex(x, "cosine"), x, 10, batch=128)
    assert graph[0].shape == (300, 10) and not (graph[0] == np.arange(300)[:, None]).any()  # never itself
    np.testing.assert_allclose(database_augmentation(x, 10, 3.0, graph), database_augmentation(x, 10, 3.0), atol=1e-5)


def test_dba_with_faiss_uses_the_hnsw_graph_and_matches_exact(engine):
    from cbir.rerank import Rerank

    dba = Rerank("dba_aqe")
    exact = engine.indexes.rerank_index("efficientnet_lite0", engine.store("efficientnet_lite0"), dba).vectors
    approx = engine.indexes.rerank_index("efficientnet_lite0", engine.store("efficientnet_lite0"), dba, "faiss").vectors  # k-NN graph from HNSW
    assert float(np.mean(np.sum(exact * approx, axis=1))) > 0.999  # the same augmented vectors
    folder = engine.store_folder("efficientnet_lite0")
    assert (folder / "dba-n10-a3-faiss.npz").exists()
    for image_id in ("3", "412", "777"):
        a = engine.search("efficientnet_lite0", image_id=image_id, rerank=dba).per_model["efficientnet_lite0"]
        b = engine.search("efficientnet_lite0", image_id=image_id, rerank=dba, backend="faiss").per_model["efficientnet_lite0"]
        assert_same_ranking(b.hits[:5], a.hits[:5], tie=1e-5)  # FAISS computes its own float32 products
        assert abs(b.average_precision - a.average_precision) < 0.02, (image_id, a.average_precision, b.average_precision)
    # the index over the DBA vectors of the centred view the searches ran on (the default), cached apart from the raw store's
    assert (folder / "centred_faissdba-hnsw-n10-a3.npz").exists() and (folder / "centred_dba-n10-a3-faiss.npz").exists()
    with pytest.raises(IndexBackendError, match="backend faiss or exact"):
        engine.indexes.dba_index("efficientnet_lite0", engine.store("efficientnet_lite0"), dba, "milvus")


@pytest.mark.redis
def test_api_search_with_a_backend(fresh_redis, tmp_path, engine):
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(fresh_redis.url, tmp_path, features_dir=engine.settings.features_dir), warm_up=False)) as c:
        token = c.post("/api/login", json={"username": "student", "password": "multimedia"}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        r = c.post("/api/search", json={"image_id": "5", "backend": "faiss", "depth": 50}, headers=auth)
        assert r.status_code == 200 and r.json()["models"]["efficientnet_lite0"]["ap_label"] == "AP@50"
        r = c.post("/api/search", json={"image_id": "5", "backend": "faiss", "metric": "chi_square"}, headers=auth)
        # the remedy in the API's words (the app's menu and the CLI's flag were both wrong here)
        assert r.status_code == 400 and "chi-square" in r.json()["error"] and r.json()["error"].endswith('send "backend": "exact"')
        r = c.post("/api/search", json={"image_id": "5", "backend": "milvus"}, headers=auth)
        assert r.status_code == 400 and "CBIR_MILVUS_URI" in r.json()["error"]
        r = c.post("/api/search", json={"image_id": "5", "backend": "annoy"}, headers=auth)
        assert r.status_code == 422


def test_approximate_lists_count_every_relevant_image_and_never_the_query(engine):
    """depth 10 on Wang (99 relevant images per query): the query is excluded but was one of
    its own candidates, so one more is fetched (10 hits); recall's denominator is 99 in each
    model's list *and* in the fused one (items no model returned are not "excluded"); the
    evaluation credits no excluded query, so R-precision stays under what 2 x 10 candidates allow."""
    resp = engine.search(LITE[:2], "cosine", 10, image_id="42", method="average", backend="faiss", depth=10)
    for ranked in [*resp.per_model.values(), resp.fused]:
        assert ranked.n_relevant == 99 and ranked.recall_at_k <= 10 / 99 + 1e-12, ranked.name
        assert "42" not in [h.id for h in ranked.hits]
    assert all(len(r.hits) == 10 for r in resp.per_model.values())
    report = engine.evaluate(LITE[:2], "cosine", "average", backend="faiss", depth=10, queries=200)
    assert report.r_precision <= 20 / 99 and report.p_at_10 <= 1.0
    single = engine.evaluate(LITE[0], backend="faiss", depth=10, queries=200)
    exact = engine.evaluate(LITE[0], queries=200)
    assert single.p_at_10 == pytest.approx(exact.p_at_10, abs=0.01)  # the query no longer counted as a hit
