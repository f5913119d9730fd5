from pathlib import Path

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.config import Settings
from cbir.engine import Engine
from cbir.errors import CBIRError
from cbir.rerank import Rerank, alpha_query_expansion, database_augmentation, l2_normalise, rocchio
from cbir.derived import derived_array
from cbir.store import FeatureStore
from cbir.store_format import save_store
from tests.conftest import assert_same_ranking

ROOT = Path(__file__).resolve().parents[2]
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_alpha_qe_hand_worked():
    db = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]], dtype=np.float32)
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    # top-1 neighbour of q is row 0 (sim 1): q' = normalise(q + 1^2 * db[0]) = q
    np.testing.assert_allclose(alpha_query_expansion(q, db, 1, 2.0), q, atol=1e-6)
    # excluding row 0, the neighbour is row 2 (sim sqrt(.5)): weight .5 ** (3/2)... alpha = 2 -> 0.5
    out = alpha_query_expansion(q, db, 1, 2.0, exclude=np.array([0]))
    expected = l2_normalise(q + 0.5 * db[2])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # alpha = 0: plain mean of the query and its neighbours
    out = alpha_query_expansion(q, db, 2, 0.0, exclude=np.array([0]))
    np.testing.assert_allclose(out, l2_normalise(q + db[1] + db[2]), atol=1e-6)


def test_negative_similarities_do_not_pull():
    db = np.array([[-1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    out = alpha_query_expansion(q, db, 2, 1.0)
    np.testing.assert_allclose(out, q, atol=1e-6)  # both weights are max(sim, 0) = 0


def test_rocchio_hand_worked():
    q = np.array([[1.0, 0.0]])
    rel = np.array([[0.0, 1.0]])
    non = np.array([[1.0, 0.0]])
    out = rocchio(q, rel, non, a=1, b=0.75, c=0.15)
    np.testing.assert_allclose(out, l2_normalise(np.array([[0.85, 0.75]])), atol=1e-6)
    np.testing.assert_allclose(rocchio(q, np.zeros((0, 2)), np.zeros((0, 2))), q)


def test_dba_cached_and_invalidated(tmp_path, rng):
    x = rng.random((50, 8)).astype(np.float32)
    store = FeatureStore("m", "none", x, [str(i) for i in range(50)], ["s"] * 50)
    save_store(store, tmp_path)
    dba, seconds = derived_array(store, tmp_path, "dba-n5-a3", lambda: database_augmentation(store.embeddings, 5, 3.0))
    assert (tmp_path / "dba-n5-a3.npz").exists()
    np.testing.assert_allclose(dba, database_augmentation(x, 5, 3.0))
    again, seconds2 = derived_array(store, tmp_path, "dba-n5-a3", lambda: 1 / 0)  # loaded, not rebuilt
    assert seconds2 == 0.0 and np.array_equal(again, dba)
    changed = FeatureStore("m", "none", x * np.linspace(1, 2, 8, dtype=np.float32), store.ids, store.signatures)
    save_store(changed, tmp_path)
    fresh, seconds3 = derived_array(changed, tmp_path, "dba-n5-a3", lambda: database_augmentation(changed.embeddings, 5, 3.0))
    assert seconds3 > 0 and not np.allclose(fresh, dba)


def test_bad_parameters_and_metric():
    with pytest.raises(ValueError, match="re-ranking method"):
        Rerank("magic")
    with pytest.raises(CBIRError, match="between 1 and 100"):
        Rerank("aqe", n=0)
    engine = Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))
    with pytest.raises(CBIRError, match="bhattacharyya metric does not admit"):
        engine.search("efficientnet_lite0", "bhattacharyya", image_id="3", rerank=Rerank("aqe"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The shipped features (test_bundled checks that they match a fresh extraction), copied
    so that the DBA files this writes stay out of the checkout."""
    import shutil

    features = tmp_path_factory.mktemp("features")
    for m in LITE:
        shutil.copytree(ROOT / "features" / "image.orig" / m, features / "image.orig" / m, ignore=shutil.ignore_patterns("dba-*", "faiss*", "map-*", "centred_*"))
    return Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=features))


@pytest.mark.slow
def test_dba_aqe_quality_lite0(engine):
    base = engine.evaluate("efficientnet_lite0", "cosine").map
    aqe = engine.evaluate("efficientnet_lite0", "cosine", rerank=Rerank("aqe", 10, 3.0)).map
    dba = engine.evaluate("efficientnet_lite0", "cosine", rerank=Rerank("dba_aqe", 10, 3.0)).map
    assert base < aqe < dba
    assert aqe >= 0.90 and dba >= 0.93, (base, aqe, dba)


@pytest.mark.slow
def test_fused_three_models_with_dba_aqe(engine):
    rep = engine.evaluate(LITE, "cosine", method="average", rerank=Rerank("dba_aqe", 10, 3.0))
    assert rep.map >= 0.95 and rep.p_at_20 >= 0.97, rep.to_dict()


@pytest.mark.slow
def test_rocchio_feedback_raises_map(engine):
    before, after = engine.evaluate_feedback("efficientnet_lite0", rounds=1, k=20)
    assert after.map > before.map + 0.03, (before.map, after.map)


def test_search_with_rerank_and_feedback_rounds():
    engine = Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))
    plain = engine.search("efficientnet_lite0", "cosine", 20, image_id="55").per_model["efficientnet_lite0"]
    rr = engine.search("efficientnet_lite0", "cosine", 20, image_id="55", rerank=Rerank("dba_aqe")).per_model["efficientnet_lite0"]
    assert rr.average_precision > plain.average_precision
    assert "55" not in [h.id for h in rr.hits]
    fb = [{"relevant": [h.id for h in plain.hits if h.relevant], "non_relevant": [h.id for h in plain.hits if not h.relevant]}]
    refined = engine.search("efficientnet_lite0", "cosine", 20, image_id="55", feedback=fb).per_model["efficientnet_lite0"]
    assert refined.average_precision > plain.average_precision
    two = engine.search("efficientnet_lite0", "cosine", 20, image_id="55", feedback=fb * 2)
    assert two.feedback_rounds == 2
    fused = engine.search(LITE, "cosine", 10, image_id="55", method="rrf", rerank=Rerank("aqe"))
    assert fused.fused is not None and fused.to_dict()["rerank"]["method"] == "aqe"


@pytest.mark.slow
def test_search_by_array_matches_search_by_file():
    from PIL import Image

    engine = Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))
    arr = np.asarray(Image.open(ROOT / "image.orig" / "612.jpg").convert("RGB"))
    by_array = engine.search("efficientnet_lite0", "cosine", 5, image=arr).per_model["efficientnet_lite0"]
    by_file = engine.search("efficientnet_lite0", "cosine", 5, image=(ROOT / "image.orig" / "612.jpg").read_bytes()).per_model["efficientnet_lite0"]
    assert_same_ranking(by_array.hits, by_file.hits)
    assert by_array.hits[0].id == "612"
    with pytest.raises(CBIRError, match="shape"):
        engine.search("efficientnet_lite0", "cosine", 5, image=np.zeros((4, 4, 2)))


@pytest.mark.slow
def test_an_upload_searched_again_is_not_extracted_again(monkeypatch):
    """The Map page searches with an upload and then places its vector; the Search page
    searches the same upload again with other settings: one extraction, bounded memory."""
    engine = Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))
    extractor = engine.extractor("efficientnet_lite0")
    calls = []
    real = extractor.features
    monkeypatch.setattr(extractor, "features", lambda arr: calls.append(len(arr)) or real(arr))
    data = (ROOT / "image.orig" / "612.jpg").read_bytes()
    first = engine.search("efficientnet_lite0", "cosine", 5, image=data)
    vector = engine.query_vector("efficientnet_lite0", image=data)
    again = engine.search("efficientnet_lite0", "cosine", 10, image=data)
    assert len(calls) == 1
    assert [h.id for h in again.per_model["efficientnet_lite0"].hits[:5]] == [h.id for h in first.per_model["efficientnet_lite0"].hits]
    fresh = Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))
    np.testing.assert_allclose(vector, fresh.query_vector("efficientnet_lite0", image=data), atol=1e-6)
    assert not vector.flags.writeable  # shared by the searches that reuse it
    monkeypatch.setattr(engine._query_vectors, "bound", 2)  # the LRU that QUERY_VECTORS_MAX bounds
    for name in ("613.jpg", "614.jpg"):  # two newer uploads push 612 out
        engine.query_vector("efficientnet_lite0", image=(ROOT / "image.orig" / name).read_bytes())
    engine.query_vector("efficientnet_lite0", image=data)
    assert len(calls) == 4 and len(engine._query_vectors) == 2
