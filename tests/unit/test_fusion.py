import numpy as np
import pytest

from cbir.errors import CBIRError
from cbir.fusion import fuse, minmax_normalise, ranks_from_distances


def test_rrf_hand_worked():
    # model a ranks items 0,1,2; model b ranks 2,0,1
    a = np.array([[0.1, 0.2, 0.3]])
    b = np.array([[0.5, 0.9, 0.1]])
    fused = -fuse({"a": a, "b": b}, method="rrf")[0]
    expected = [1 / 61 + 1 / 62, 1 / 62 + 1 / 63, 1 / 63 + 1 / 61]
    np.testing.assert_allclose(fused, expected)
    assert np.argsort(-fused)[0] == 0


def test_weighted_hand_worked():
    a = np.array([[0.0, 5.0, 10.0]])  # normalised 0, .5, 1
    b = np.array([[4.0, 0.0, 2.0]])  # normalised 1, 0, .5
    fused = fuse({"a": a, "b": b}, method="weighted", weights={"a": 3, "b": 1})[0]
    np.testing.assert_allclose(fused, [(0 * 3 + 1) / 4, (0.5 * 3 + 0) / 4, (1 * 3 + 0.5) / 4])
    avg = fuse({"a": a, "b": b}, method="average")[0]
    np.testing.assert_allclose(avg, [0.5, 0.25, 0.75])


def test_weighted_rrf():
    a = np.array([[0.1, 0.2]])
    b = np.array([[0.2, 0.1]])
    fused = -fuse({"a": a, "b": b}, method="rrf", weights={"a": 2, "b": 1})[0]
    np.testing.assert_allclose(fused, [2 / 61 + 1 / 62, 2 / 62 + 1 / 61])


def test_excluded_items_stay_excluded():
    a = np.array([[np.inf, 0.2, 0.4]])
    b = np.array([[np.inf, 0.3, 0.1]])
    for method in ("average", "weighted", "rrf"):
        fused = fuse({"a": a, "b": b}, method=method)
        assert np.isinf(fused[0, 0])
        assert np.isfinite(fused[0, 1:]).all()
    np.testing.assert_allclose(minmax_normalise(a)[0, 1:], [0, 1])


def test_inputs_not_mutated():
    a = np.array([[3.0, 1.0, 2.0]])
    copy = a.copy()
    fuse({"a": a, "b": a}, method="average")
    np.testing.assert_array_equal(a, copy)


def test_ranks():
    np.testing.assert_array_equal(ranks_from_distances(np.array([0.3, 0.1, 0.2])), [[3, 1, 2]])


@pytest.mark.parametrize(
    "weights, message",
    [({"a": -1, "b": 1}, "non-negative"), ({"a": 0, "b": 0}, "all zero"), ({"c": 1}, "not searched"),
     # only ratios count: 1e308 overflowed the weighted sum and 5e-324 underflowed it (figures with no meaning)
     ({"a": 1e308, "b": 1e308}, r"0 or between 1e-06 and 1e\+06 \(only their ratios count\); got a=1e\+308, b=1e\+308"),
     ({"a": 5e-324, "b": 0}, "0 or between 1e-06")],
)
def test_bad_weights(weights, message):
    a = np.array([[0.1, 0.2]])
    with pytest.raises(CBIRError, match=message):
        fuse({"a": a, "b": a}, method="weighted", weights=weights)


def test_unknown_method():
    with pytest.raises(ValueError, match="average, rrf, weighted"):
        fuse({"a": np.ones((1, 2))}, method="borda")


def test_fusion_over_the_union_of_candidates_hand_worked():
    """NaN = a model did not return the item (approximate search)."""
    a = np.array([[0.0, 1.0, np.nan, np.nan]])
    b = np.array([[np.nan, 0.5, 0.0, np.nan]])
    # average: a -> [0, 1, worst=1, -], b -> [worst=1, 1, 0, -]
    np.testing.assert_allclose(fuse({"a": a, "b": b}, "average")[0, :3], [0.5, 1.0, 0.5])
    assert np.isnan(fuse({"a": a, "b": b}, "average")[0, 3])  # returned by no model: not a candidate
    # rrf (k = 60): a ranks item0 1st, item1 2nd; b ranks item2 1st, item1 2nd; no term when missing
    rrf = fuse({"a": a, "b": b}, "rrf")[0]
    np.testing.assert_allclose(rrf[:3], [-1 / 61, -(1 / 62 + 1 / 62), -1 / 61])
    assert np.isnan(rrf[3])
    # +inf (the excluded query) stays excluded
    a2 = a.copy()
    a2[0, 0] = np.inf
    assert fuse({"a": a2, "b": b}, "average")[0, 0] == np.inf


# -- score normalisations (cbir.fusion.NORMALISATIONS) ---------------------------------------
def test_zscore_and_rank_hand_worked():
    a = np.array([[1.0, 2.0, 3.0, np.inf]])  # the excluded query (+inf) counts in neither
    b = np.array([[30.0, 10.0, 20.0, np.inf]])
    z = fuse({"a": a, "b": b}, method="average", normalisation="zscore")[0]
    za, zb = (np.array([1, 2, 3]) - 2) / np.sqrt(2 / 3), (np.array([30, 10, 20]) - 20) / np.sqrt(200 / 3)
    np.testing.assert_allclose(z[:3], (za + zb) / 2)
    assert z[3] == np.inf
    r = fuse({"a": a, "b": b}, method="average", normalisation="Rank")[0]  # any case
    np.testing.assert_allclose(r[:3], [(1 / 3 + 3 / 3) / 2, (2 / 3 + 1 / 3) / 2, (3 / 3 + 2 / 3) / 2])


def test_minmax_over_the_top_union_ranks_the_union_first():
    """Min and max over the union of each model's top N (N = 2 here: items 0, 1 from a and
    4, 1 from b), the union ranked first, the rest after it in fused order."""
    from cbir import fusion

    a = np.array([[0.0, 1.0, 5.0, 6.0, 9.0, 100.0]])
    b = np.array([[8.0, 2.0, 9.0, 7.0, 0.0, 3.0]])
    old, fusion.TOP_N = fusion.TOP_N, 2
    try:
        fused = fuse({"a": a, "b": b}, method="average", normalisation="minmax_top")[0]
    finally:
        fusion.TOP_N = old
    union = [0, 1, 4]
    # a over the union {0, 1, 4}: min 0, max 9; b: min 0, max 8
    np.testing.assert_allclose(fused[union], [(0 / 9 + 8 / 8) / 2, (1 / 9 + 2 / 8) / 2, (9 / 9 + 0 / 8) / 2])
    assert set(np.argsort(fused)[:3]) == set(union)  # item 5 is not in a top 2: it comes after the union
    assert fused[5] > fused[union].max() and fused[3] < fused[2]  # the rest in their fused order (3: 6/9+7/8 < 2: 5/9+9/8)


def test_every_normalisation_keeps_exclusions_and_missing_items(rng):
    from cbir.fusion import NORMALISATIONS

    a, b = rng.random((3, 50)), rng.random((3, 50))
    a[:, 7] = b[:, 7] = np.inf  # excluded
    a[:, 9] = np.nan  # not returned by a; returned by b
    a[:, 11] = b[:, 11] = np.nan  # returned by neither
    for name in NORMALISATIONS:
        out = fuse({"a": a, "b": b}, method="weighted", weights={"a": 1, "b": 2}, normalisation=name)
        assert np.isinf(out[:, 7]).all() and np.isnan(out[:, 11]).all() and np.isfinite(out[:, 9]).all(), name
        assert np.isfinite(np.delete(out, [7, 11], axis=1)).all(), name


def test_an_unknown_normalisation_names_the_choices():
    with pytest.raises(CBIRError, match="unknown normalisation 'softmax'; choose one of: minmax, minmax_top, rank, zscore"):
        fuse({"a": np.ones((1, 3)), "b": np.ones((1, 3))}, normalisation="softmax")
