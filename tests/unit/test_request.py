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
def _key(request: SearchRequest, versions=None) -> str:
    return ResultCache.key(request.cache_fields("exact"), versions or {m: "v1" for m in request.models})


def test_cache_key_is_the_same_for_the_same_search_however_it_was_written():
    a = parse_search(LITE, "l2", 10, image_id="412", method="rrf")
    b = parse_search(["EfficientNet-Lite0", "efficientnet-lite1"], "euclidean", "10", image_id="412", method="rrf")
    assert _key(a) == _key(b)
    assert parse_search(LITE, image_id="1", backend=None).cache_fields("exact")["backend"] == "exact"


@pytest.mark.parametrize("change", [
    dict(top_k=11), dict(metric="euclidean"), dict(method="average"), dict(image_id="413"), dict(exclude_query=False),
    dict(weights={"efficientnet_lite0": 2}), dict(rerank=Rerank("aqe")), dict(backend="faiss"), dict(depth=50),
    dict(feedback=[{"relevant": ["2"]}]),
])
def test_cache_key_changes_with_anything_that_changes_the_answer(change):
    base = dict(metric="cosine", top_k=10, image_id="412", method="rrf")
    assert _key(parse_search(LITE, **base)) != _key(parse_search(LITE, **(base | change)))


def test_cache_key_changes_with_a_store_version():
    r = parse_search(LITE, image_id="412")
    assert _key(r, {LITE[0]: "v1", LITE[1]: "v1"}) != _key(r, {LITE[0]: "v1", LITE[1]: "v2"})


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
                        ignore=shutil.ignore_patterns("dba-*", "faiss-*", "map-*"))
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
