"""One record per backend, fusion method and map method; one vector-index path for every
search; one αQE, one "NaN outside the candidates" step and one bounded LRU cache."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.config import Settings
import cbir.distances
from cbir.distances import METRICS, l2_normalise, pairwise_distances
from cbir.engine import Engine
from cbir.errors import UnknownNameError
from cbir.fusion import FUSION_METHODS, FUSIONS, fuse, fusion_method
from cbir.index import AUTO, BACKENDS, CHOICES, IndexBackendError, backend_label, candidate_matrix, expanded_query, get_backend
from cbir.index.base import VectorIndex
from cbir.index.exact import ExactIndex
from cbir.lru import LRU
from cbir.maps import MAP_METHODS, MAPS, map_method, map_status
from cbir.rerank import RERANK_METHODS, Rerank, alpha_query_expansion
from cbir.store_format import load_store
from tests.conftest import assert_same_ranking

ROOT = Path(__file__).resolve().parents[2]
LITE0 = ROOT / "features" / "image.orig" / "efficientnet_lite0"


def _settings(tmp_path, **kw) -> Settings:
    return Settings(collection=ROOT / "image.orig", features_dir=tmp_path, var_dir=tmp_path / "var", **kw)


# -- the records ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_record_answers(name, tmp_path):
    b = get_backend(name)
    assert b.name == name and isinstance(b.label, str) and b.label and b.summary
    assert isinstance(b.exact, bool) and b.approximate is (not b.exact)
    ok, why = b.available(_settings(tmp_path))
    assert isinstance(ok, bool) and isinstance(why, str) and why
    assert b.metrics and set(b.metrics) <= set(METRICS) and all(b.supports_metric(m) for m in b.metrics)
    assert b.reranks and set(b.reranks) <= set(RERANK_METHODS) and {"none", "aqe"} <= set(b.reranks)
    assert backend_label(name) == b.label


def test_backend_records_say_what_differs(tmp_path):
    exact, faiss, milvus = (get_backend(n) for n in ("exact", "faiss", "milvus"))
    assert exact.exact and not faiss.exact and not milvus.exact
    assert exact.metrics == tuple(METRICS) and not faiss.supports_metric("chi_square") and not milvus.supports_metric("chi_square")
    assert exact.supports_rerank("dba_aqe") and faiss.supports_rerank("dba_aqe") and not milvus.supports_rerank("dba_aqe")
    with pytest.raises(IndexBackendError, match="DBA \\+ αQE needs an index over the augmented vectors .*; use --backend faiss or exact") as raised:
        milvus.check_rerank("dba_aqe")
    # each front end in its own words: the app names its menu, the API its JSON field
    assert raised.value.said_to("app").endswith("choose FAISS (HNSW / IVF-PQ) or Exact (numpy) in the Index box")
    assert raised.value.said_to("api").endswith('send "backend": "faiss or exact"')
    assert exact.available(_settings(tmp_path))[0]
    assert milvus.available(_settings(tmp_path)) in {(False, "set CBIR_MILVUS_URI to a Milvus server"), (False, "`pip install pymilvus`")}
    assert CHOICES == (AUTO, *BACKENDS) and backend_label(AUTO)


@pytest.mark.parametrize("lookup, kind", [(get_backend, "index backend"), (fusion_method, "fusion method"), (map_method, "map method")])
def test_registries_reject_unknown_names(lookup, kind):
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'annoy'; choose one of: "):
        lookup("annoy")
    if lookup is get_backend:
        with pytest.raises(UnknownNameError):
            get_backend(AUTO)  # a request's choice, resolved before a record is asked for
        assert get_backend(" FAISS ") is BACKENDS["faiss"]


def test_fusion_and_map_records():
    assert FUSION_METHODS == tuple(FUSIONS)
    for name, f in FUSIONS.items():
        assert f.name == name and f.label and f.short and f.formula and callable(f.fuser)
    assert "SIGIR 2009" in FUSIONS["rrf"].formula and not FUSIONS["average"].weighted
    d = {"a": np.array([[0.1, 0.5, 0.9]]), "b": np.array([[0.9, 0.5, 0.1]])}
    assert np.array_equal(fuse(d, "RRF"), fuse(d, "rrf"))
    assert MAP_METHODS == tuple(MAPS) and map_status()["pca"] == (True, "numpy")
    for name, m in MAPS.items():
        assert m.name == name and m.label and m.description and m.placement and callable(m.fit)
        assert isinstance(m.available()[0], bool) and m.available() == map_status()[name]


def test_no_parallel_label_dicts():
    """The pages and the CLI read labels from the records, not from dicts of their own."""
    import re

    names = [*BACKENDS, *FUSIONS, *MAPS]
    for path in [*(ROOT / "app_pages").glob("*.py"), ROOT / "cbir" / "cli.py"]:
        for found in re.findall(r"\{[^{}]*\}", path.read_text()):
            keys = set(re.findall(r"[\"'](\w+)[\"']\s*:", found))
            assert len(keys & set(names)) < 2, f"{path.name}: {found[:80]}"


# -- one index path ------------------------------------------------------------------------------
def test_the_prepared_index_is_the_exact_index():
    assert not hasattr(cbir.distances, "PreparedIndex") and issubclass(ExactIndex, VectorIndex)
    store = load_store(LITE0)
    assert isinstance(store.index("cosine"), ExactIndex)
    index = get_backend("exact").open(store, LITE0, "cosine", None)
    assert index is store.index("cosine")  # one prepared copy per store and metric


def test_candidates_are_one_function():
    """An approximate index's candidates: NaN outside them; the exact index: every row."""
    x = np.random.default_rng(0).random((50, 8)).astype(np.float32)
    exact = ExactIndex(x, "euclidean")
    q = x[:3] + 0.01
    every = exact.candidates(q, 5, 50)
    assert every.shape == (3, 50) and np.isfinite(every).all()
    some = candidate_matrix(exact, q, 5, 50)  # what FAISS and Milvus answer through VectorIndex.candidates
    assert (np.isfinite(some).sum(1) == 5).all()
    kept = np.isfinite(some)
    np.testing.assert_allclose(some[kept], every[kept], rtol=1e-6)
    assert set(np.flatnonzero(kept[0])) == set(np.argsort(every[0])[:5])


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import shutil

    features = tmp_path_factory.mktemp("features")
    shutil.copytree(LITE0, features / "image.orig" / "efficientnet_lite0", ignore=shutil.ignore_patterns("dba-*", "faiss*", "map-*", "centred_*"))
    return Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=features))


def _reference_hits(store, distances: np.ndarray, own: int, k: int) -> list[dict]:
    """Top k of a distance row the way the search ranked before the index interface."""
    d = distances.astype(np.float64).copy()
    d[own] = np.inf
    order = np.argsort(d, kind="stable")[:k]
    return [{"id": store.ids[r], "score": float(d[r])} for r in order]


@pytest.mark.parametrize("metric", list(METRICS))
def test_exact_search_through_the_interface_ranks_as_before(engine, metric):
    store = engine.store("efficientnet_lite0")
    for image_id in ("0", "412", "999"):
        own = store.row_of(image_id)
        resp = engine.search("efficientnet_lite0", metric, 20, image_id=image_id, backend="exact", centre=False)
        before = pairwise_distances(store.embeddings[own][None, :], store.embeddings, metric)[0]
        assert_same_ranking(resp.per_model["efficientnet_lite0"].hits, _reference_hits(store, before, own, 20))


def test_exact_aqe_through_the_interface_ranks_as_before(engine):
    """αQE was brute force over the prepared matrix for the exact backend; it now asks the
    exact index for the neighbours, as the approximate backends do."""
    store = engine.store("efficientnet_lite0")
    db = l2_normalise(store.embeddings)
    for image_id in ("0", "412"):
        own = store.row_of(image_id)
        resp = engine.search("efficientnet_lite0", "cosine", 20, image_id=image_id, backend="exact", rerank=Rerank("aqe", 5, 3.0), centre=False)
        q = alpha_query_expansion(db[own][None, :], db, 5, 3.0, exclude=np.array([own]))
        before = pairwise_distances(q, store.embeddings, "cosine")[0]
        assert_same_ranking(resp.per_model["efficientnet_lite0"].hits, _reference_hits(store, before, own, 20))


@pytest.mark.parametrize("n, alpha", [(1, 0.0), (5, 3.0), (10, 1.5)])
def test_alpha_query_expansion_is_one_implementation(n, alpha):
    """The two former call sites: the brute-force batch (exact evaluation, DBA) and the
    search through an index (every backend's search) give the same expanded query."""
    x = np.random.default_rng(1).standard_normal((300, 32)).astype(np.float32)
    db = l2_normalise(x)
    index = ExactIndex(x, "cosine")
    for own in (0, 17, 299):
        brute = alpha_query_expansion(db[own][None, :], db, n, alpha, exclude=np.array([own]))[0]
        through = expanded_query(index, x, x[own], n, alpha, own)
        np.testing.assert_allclose(through, brute, atol=1e-5)
    upload = np.random.default_rng(2).standard_normal(32).astype(np.float32)  # no own row
    np.testing.assert_allclose(expanded_query(index, x, upload, n, alpha),
                               alpha_query_expansion(l2_normalise(upload)[None, :], db, n, alpha)[0], atol=1e-5)


# -- one LRU ------------------------------------------------------------------------------
def test_lru_keeps_its_bound_and_evicts_the_least_recent():
    cache = LRU(3)
    for i in range(3):
        cache.put(i, str(i))
    assert cache.get(0) == "0"  # 0 is now the most recent
    cache.put(3, "3")
    assert len(cache) == 3 and 1 not in cache and list(cache) == [2, 0, 3]
    built = []
    assert cache.get_or_build(4, lambda: built.append(4) or "4") == "4" and cache.get_or_build(4, lambda: "x") == "4"
    assert built == [4] and len(cache) == 3 and 2 not in cache
    with pytest.raises(ValueError):
        LRU(0)


def test_lru_builds_once_under_threads():
    cache, calls = LRU(2), []
    barrier = threading.Barrier(8)

    def work():
        barrier.wait()
        cache.get_or_build("k", lambda: calls.append(1) or object())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_a_long_build_holds_up_no_other_key():
    """A DBA or FAISS build takes minutes: lookups and builds of other keys (another model's
    id space, an index) go on meanwhile (they waited for the whole build on the shared lock)."""
    shared = threading.RLock()
    dba, spaces = LRU(2, shared), LRU(2, shared)
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(10)
        return "dba"

    worker = threading.Thread(target=lambda: dba.get_or_build("lite0", slow))
    worker.start()
    started.wait(5)
    began = time.perf_counter()
    assert spaces.get_or_build("lite1", lambda: "space") == "space"
    assert dba.get_or_build("lite1", lambda: "other dba") == "other dba"
    waited = time.perf_counter() - began
    release.set()
    worker.join(5)
    assert waited < 1.0 and dba.get("lite0") == "dba"


def test_a_failed_build_is_retried_by_the_next_caller():
    cache = LRU(2)
    with pytest.raises(RuntimeError):
        cache.get_or_build("k", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert cache.get_or_build("k", lambda: 7) == 7


def test_the_engine_caches_are_bounded_lrus(engine):
    from cbir.engine import QUERY_VECTORS_MAX
    from cbir.index_cache import DBA_IN_MEMORY, INDEXES_IN_MEMORY
    from cbir.maps import _FITTED, FITTED_MAX

    assert engine._query_vectors.bound == QUERY_VECTORS_MAX and _FITTED.bound == FITTED_MAX
    assert engine.indexes._dba.bound == DBA_IN_MEMORY and engine.indexes._indexes.bound == INDEXES_IN_MEMORY
    for metric in METRICS:
        for backend in ("exact", "faiss") if metric != "chi_square" else ("exact",):
            engine.indexes.vector_index("efficientnet_lite0", engine.store("efficientnet_lite0"), metric, backend)
    assert len(engine.indexes._indexes) == min(7, INDEXES_IN_MEMORY)
