"""One search request, parsed once: the parser's rules, the result cache's key, and what the
engine does with a request (each store looked up once, an upload hashed once and decoded
only when some model needs it, model loading not counted as decoding). No servers."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from cbir.cache import ResultCache
from cbir.config import Settings
from cbir.errors import CBIRError, RequestError, UnknownNameError, contract_for
from cbir.ranking import rank_distances
from cbir.request import MAX_TOP_K, Query, SearchRequest, parse_search
from cbir.rerank import FeedbackRound, Rerank
from tests.conftest import COLLECTION, ROOT

LITE = ["efficientnet_lite0", "efficientnet_lite1"]


# -- the parser --------------------------------------------------------------------------
def test_one_parser_normalises_names_and_aliases():
    r = parse_search(["EfficientNet-Lite0", "efficientnet_lite0", "efficientnet_lite1"], "L2", "5", image_id=412, method="rrf")
    assert r.models == ("efficientnet_lite0", "efficientnet_lite1")  # aliases resolved, duplicates dropped
    assert (r.metric, r.top_k, r.query.image_id, r.method) == ("euclidean", 5, "412", "rrf")
    assert parse_search("efficientnet_lite0", "chi2", image_id="1").metric == "chi_square"
    assert parse_search("efficientnet_lite0", image_id="1", method="rrf").method is None  # one model: nothing to fuse


def test_the_normalisation_is_parsed_and_keys_the_cache():
    """A fusion's score normalisation, any spelling; it is part of the result cache's key (two
    normalisations, two results), and means nothing without a fusion."""
    z = parse_search(LITE, image_id="1", method="average", normalisation="Z-Score")
    assert z.normalisation == "zscore" and parse_search(LITE, image_id="1", method="average").normalisation == "minmax"
    assert z.cache_fields("exact")["normalisation"] == "zscore"
    assert parse_search(LITE, image_id="1", method="average").cache_fields("exact")["normalisation"] == "minmax"
    assert parse_search(LITE[0], image_id="1", normalisation="rank").cache_fields("exact")["normalisation"] is None
    with pytest.raises(UnknownNameError, match="unknown normalisation 'softmax'"):
        parse_search(LITE, image_id="1", method="average", normalisation="softmax")


def test_the_request_is_frozen():
    r = parse_search(LITE, image_id="1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.top_k = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.query.image_id = "2"


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    (dict(models=[]), RequestError, "at least one model"),
    (dict(models=["vgg99"]), UnknownNameError, "unknown model"),
    (dict(metric="manhattan"), UnknownNameError, "unknown metric"),
    (dict(top_k=0), RequestError, "between 1 and"),
    (dict(top_k=MAX_TOP_K + 1), RequestError, "between 1 and"),
    (dict(top_k=2.5), RequestError, "whole number"),
    (dict(top_k=True), RequestError, "whole number"),
    (dict(top_k="abc"), RequestError, "whole number"),
    (dict(depth=2.5), RequestError, "whole number"),
    (dict(models=5), RequestError, "models must be"),
    (dict(models=["efficientnet_lite0", 5]), RequestError, "models must be"),
    (dict(rerank={"method": "aqe", "n": 2.5}), RequestError, "whole number"),
    (dict(rerank={"method": "aqe", "n": "x"}), RequestError, "whole number"),
    (dict(rerank={"method": "aqe", "alpha": "x"}), RequestError, "alpha must be a number"),
    (dict(rerank={"method": "aqe", "k": 3}), RequestError, "rerank is"),
    (dict(weights={"efficientnet_lite0": "x"}), RequestError, "numbers"),
    (dict(weights=5), RequestError, "map model names"),
    (dict(weights=[1.0]), RequestError, "one per model"),
    (dict(weights={"efficientnet_lite0": 1, "EfficientNet-Lite0": 2}), RequestError, "one weight per model"),
    (dict(feedback="x"), RequestError, "list of rounds"),
    (dict(feedback=[{"relevant": "12"}]), RequestError, "list of image ids"),
    (dict(feedback=[{"relevant": ["1"], "extra": []}]), RequestError, "a feedback round is"),
    (dict(method="median"), UnknownNameError, "unknown fusion method"),
    (dict(weights={"efficientnet_lite0": -1}), CBIRError, "weight"),
    (dict(weights={"efficientnet_lite2": 1}), CBIRError, "not searched"),
    (dict(rerank={"method": "aqe"}, metric="euclidean"), CBIRError, "choose cosine"),
    (dict(feedback=[{"relevant": ["1"]}], metric="bhattacharyya"), CBIRError, "choose cosine"),
    (dict(backend="annoy"), UnknownNameError, "unknown index backend"),
    (dict(depth=0), RequestError, "depth"),
    (dict(image_id=None), RequestError, "exactly one query"),
    (dict(image=b"x"), RequestError, "exactly one query"),
    (dict(image_id="x" * 600), RequestError, "at most 512"),
])
def test_bad_values_are_refused_with_a_message(kwargs, error, words):
    given = dict(models=LITE, metric="cosine", top_k=10, image_id="1") | kwargs
    with pytest.raises(error, match=words):
        parse_search(given.pop("models"), given.pop("metric"), given.pop("top_k"), **given)


def test_a_value_out_of_bounds_is_a_422_and_exit_2():
    with pytest.raises(RequestError) as caught:
        parse_search(LITE, top_k=0, image_id="1")
    assert (contract_for(caught.value).status, contract_for(caught.value).exit_code) == (422, 2)


def test_weights_keyed_by_any_spelling_of_a_model():
    r = parse_search(LITE, image_id="1", method="weighted", weights={"EfficientNet-Lite0": 1, "efficientnet-lite1": 2})
    assert r.weight_map == {LITE[0]: 1.0, LITE[1]: 2.0}
    assert parse_search(LITE, image_id="1", weights=[1, 3]).weight_map == {LITE[0]: 1.0, LITE[1]: 3.0}


def test_rerank_and_feedback_from_plain_data():
    r = parse_search(LITE, image_id="1", rerank={"method": "dba_aqe", "n": 5, "alpha": 2},
                     feedback=[{"relevant": ["2"], "non_relevant": ["3"]}])
    assert r.rerank == Rerank("dba_aqe", 5, 2) and r.feedback == (FeedbackRound(["2"], ["3"]),)
    assert parse_search(LITE, image_id="1").rerank == Rerank()  # none


def test_an_upload_is_hashed_once_into_its_key():
    data = (COLLECTION / "412.jpg").read_bytes()
    q = Query(image=data)
    assert q.key.startswith("img:") and q.cache_key() == q.key == Query(image=bytearray(data)).key
    assert Query(image=data + b"\0").key != q.key
    arr = np.zeros((4, 4, 3), np.uint8)
    assert Query(image=arr).key != Query(image=arr.reshape(4, 12)).key  # the shape counts


# -- the result cache's key ----------------------------------------------------------------
def _key(engine, request: SearchRequest) -> str:
    from cbir.service import SearchService

    return SearchService(engine, ResultCache(None))._cache_key(request)


def test_cache_key_is_the_same_for_the_same_search_however_it_was_written(engine):
    a = parse_search(LITE, "l2", 10, image_id="412", method="rrf")
    b = parse_search(["EfficientNet-Lite0", "efficientnet-lite1"], "euclidean", "10", image_id="412", method="rrf")
    assert _key(engine, a) == _key(engine, b)
    # no backend named: the server's default, resolved, is in the key (so is the depth it implies)
    assert _key(engine, parse_search(LITE, image_id="1")) == _key(engine, parse_search(LITE, image_id="1", backend="exact"))


@pytest.mark.parametrize("change", [
    dict(top_k=11), dict(metric="euclidean"), dict(method="average"), dict(image_id="413"), dict(exclude_query=False),
    dict(weights={"efficientnet_lite0": 2}), dict(rerank=Rerank("aqe")), dict(backend="faiss"),
    dict(feedback=[{"relevant": ["2"]}]),
])
def test_cache_key_changes_with_anything_that_changes_the_answer(engine, change):
    base = dict(metric="cosine", top_k=10, image_id="412", method="rrf")
    assert _key(engine, parse_search(LITE, **base)) != _key(engine, parse_search(LITE, **(base | change)))


def test_cache_key_holds_the_server_settings_and_the_labels(engine, monkeypatch):
    """What the server resolves a request to is in the key: CBIR_SEARCH_DEPTH for an
    approximate backend, the FAISS kind; so are the collection's labels (a relabelled
    collection must not be served the old relevance from Redis)."""
    faiss = parse_search(LITE, image_id="412", backend="faiss")
    before = _key(engine, faiss)
    monkeypatch.setattr(engine.settings, "search_depth", 500)
    assert _key(engine, faiss) != before
    monkeypatch.setattr(engine.settings, "faiss_kind", "ivfpq")
    third = _key(engine, faiss)
    # depth 500 asked for, or the server's default of 500: the same answer, the same key
    assert third != before and _key(engine, parse_search(LITE, image_id="412", backend="faiss", depth=500)) == third
    exact = _key(engine, parse_search(LITE, image_id="412"))
    monkeypatch.setitem(engine.collection._labels_memo, "digest", "relabelled")
    assert _key(engine, parse_search(LITE, image_id="412")) != exact


def test_cache_key_changes_with_a_store_version(engine, monkeypatch):
    r = parse_search(LITE, image_id="412")
    before = _key(engine, r)
    store = engine.store(LITE[1])
    monkeypatch.setattr(type(store), "version", property(lambda self: "other"))
    assert _key(engine, r) != before


# -- rank_distances ------------------------------------------------------------------------
def test_rank_distances_orders_counts_and_excludes():
    d = np.array([0.3, np.inf, 0.1, 0.2, 0.5])
    labels = ["a", "a", "b", "a", "a"]
    ranked = rank_distances("m", d, list("vwxyz"), labels, "a", top_k=2)
    assert [h.id for h in ranked.hits] == ["x", "y"]
    assert [h.relevant for h in ranked.hits] == [False, True]
    assert ranked.n_relevant == 3  # "w" (+inf, the query itself) is not counted
    assert ranked.precision_at_k == 0.5 and ranked.recall_at_k == pytest.approx(1 / 3)
    assert ranked.average_precision == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)


def test_rank_distances_of_an_approximate_row_counts_every_relevant_image():
    d = np.array([0.2, np.nan, 0.1, np.nan])  # two candidates returned out of four
    ranked = rank_distances("m", d, list("abcd"), ["x", "x", "y", "x"], "x", top_k=10, depth=2)
    assert [h.id for h in ranked.hits] == ["c", "a"] and ranked.n_relevant == 3
    assert ranked.to_dict()["ap_label"] == "AP@2"


# -- the engine with a request ---------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from cbir.engine import Engine

    features = tmp_path_factory.mktemp("features")
    for m in LITE:
        shutil.copytree(ROOT / "features" / "image.orig" / m, features / "image.orig" / m,
                        ignore=shutil.ignore_patterns("dba-*", "faiss-*", "map-*", "centred_*"))
    return Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=features, var_dir=features / "var"))


def test_one_search_on_two_models_opens_each_store_once(engine, monkeypatch):
    import cbir.catalogue as catalogue

    engine.search(LITE, image_id="412", method="rrf")  # warm: stores loaded, id space built
    stamps = []
    real = catalogue.store_stamp
    monkeypatch.setattr(catalogue, "store_stamp", lambda folder: stamps.append(folder.name) or real(folder))
    engine.search(parse_search(LITE, "cosine", 10, image_id="412", method="rrf", rerank=Rerank("aqe"),
                               feedback=[{"relevant": ["413"]}]))
    assert sorted(stamps) == sorted(LITE), stamps  # one manifest check per model and request


def test_the_engine_trusts_the_request_and_checks_only_the_collection(engine):
    from cbir.errors import UnknownImageError

    with pytest.raises(UnknownImageError):
        engine.search(parse_search(LITE, image_id="no-such-image"))
    with pytest.raises(CBIRError, match="feedback"):
        engine.search(parse_search(LITE, image_id="1", feedback=[{"relevant": ["no-such-image"]}]))
    resp = engine.search(parse_search(LITE, image_id="412"))
    assert resp.query.label == "dinosaurs" and resp.query.image_id == "412"


@pytest.mark.slow  # two Keras models
def test_an_upload_is_decoded_only_when_a_model_needs_its_vector(engine, monkeypatch):
    import cbir.engine as engine_module

    decoded = []
    real = engine_module.open_image
    monkeypatch.setattr(engine_module, "open_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    data = (COLLECTION / "612.jpg").read_bytes() + b"\0" * 7  # an upload no earlier test searched
    first = engine.search(parse_search(LITE[0], image=data))
    assert len(decoded) == 1 and "decode" in first.timings
    again = engine.search(parse_search(LITE[0], "euclidean", 5, image=data))
    assert len(decoded) == 1 and "decode" not in again.timings  # the vector was kept: no decoding
    both = engine.search(parse_search(LITE, image=data, method="average"))
    assert len(decoded) == 2  # one more model needs it: decoded once for the request
    assert both.timings["extract:" + LITE[0]] == 0.0


@pytest.mark.slow
def test_building_a_model_is_not_reported_as_decoding(engine):
    data = (COLLECTION / "613.jpg").read_bytes() + b"\0" * 3
    engine._extractors.clear()  # the next upload search builds the Keras model again
    resp = engine.search(parse_search(LITE[1], image=data))
    load, decode = resp.timings.get(f"load:{LITE[1]}", 0.0), resp.timings["decode"]
    assert load > decode, resp.timings  # seconds to build the model; milliseconds to decode a JPEG


def test_two_stores_in_different_orders_are_aligned_row_by_row(tmp_path):
    """Same ids, same first and last, another order between: the second store's rows must be
    realigned (they were taken as already aligned, and its distances landed on other images)."""
    from cbir.index_cache import IndexCache
    from cbir.store import FeatureStore

    ids_a, ids_b = ["a", "b", "c", "d"], ["a", "c", "b", "d"]
    a = FeatureStore("m1", "none", np.eye(4, dtype=np.float32), ids_a, ["s"] * 4)
    b = FeatureStore("m2", "none", np.eye(4, dtype=np.float32), ids_b, ["s"] * 4)
    assert a.rows_for(ids_a) is None and b.rows_for(ids_a) == [0, 2, 1, 3]

    class Owner:
        settings = Settings(collection=COLLECTION, features_dir=tmp_path, var_dir=tmp_path)
        collection = type("C", (), {"labels_for": staticmethod(lambda ids: None), "__contains__": lambda self, i: True})()

        def store_folder(self, model):
            return tmp_path / model

    space = IndexCache(Owner()).id_space({"m1": a, "m2": b})
    row_b = np.array([10.0, 20.0, 30.0, 40.0])  # b's distances per b-row: a=10, c=20, b=30, d=40
    assert space.ids == ids_a and space.align("m2", row_b).tolist() == [10.0, 30.0, 20.0, 40.0]
    assert space.align("m1", row_b) is row_b  # a's own order: no copy


@pytest.mark.parametrize("kwargs", [
    dict(weights={"efficientnet_lite0": -1}), dict(weights={"efficientnet_lite0": 0, "efficientnet_lite1": 0}),
    dict(rerank={"method": "aqe", "n": 10**9}), dict(rerank={"method": "aqe"}, metric="euclidean"),
    dict(feedback=[{"relevant": ["1"]}] * 21),
])
def test_every_refusal_of_the_parser_is_one_class_one_status(kwargs):
    """A bad value in one field is a 422 whatever its defect (it was 400 or 422 by defect)."""
    given = dict(metric="cosine") | kwargs
    with pytest.raises(RequestError) as refused:
        parse_search(LITE, given.pop("metric"), 10, image_id="1", **given)
    assert contract_for(refused.value).status == 422


def test_fusion_method_in_any_case():
    assert parse_search(LITE, image_id="1", method="RRF").method == "rrf"
