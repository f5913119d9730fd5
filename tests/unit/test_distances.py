import numpy as np
import pytest

from cbir.distances import (
    DISTANCES,
    bhattacharyya_distances,
    chi_square_distances,
    cosine_distances,
    euclidean_distances,
    normalise_metric,
    pairwise_distances,
)


@pytest.fixture
def hist(rng):
    return rng.random((7, 16)).astype(np.float32)


@pytest.mark.parametrize("metric", list(DISTANCES))
def test_symmetric_zero_diagonal_non_negative(metric, hist):
    d = pairwise_distances(hist, hist, metric)
    assert d.shape == (7, 7)
    np.testing.assert_allclose(d, d.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(d), 0, atol=1e-3)
    assert (d >= 0).all()
    off = d[~np.eye(7, dtype=bool)]
    assert (off > 0).all()


def test_hand_worked_values():
    a = np.array([[1.0, 0.0, 1.0]])
    b = np.array([[0.0, 1.0, 1.0]])
    # ||a-b|| = sqrt(2); cos = 1/2 -> 0.5
    assert euclidean_distances(a, b)[0, 0] == pytest.approx(np.sqrt(2), abs=1e-6)
    assert cosine_distances(a, b)[0, 0] == pytest.approx(0.5, abs=1e-6)
    # chi2 = 0.5 * (1/1 + 1/1 + 0/2) = 1
    assert chi_square_distances(a, b)[0, 0] == pytest.approx(1.0, abs=1e-6)
    # p = (.5, 0, .5), r = (0, .5, .5): BC = sqrt(.25) = .5 -> sqrt(1 - .5)
    assert bhattacharyya_distances(a, b)[0, 0] == pytest.approx(np.sqrt(0.5), abs=1e-6)


def test_bhattacharyya_is_scale_invariant(hist):
    d1 = bhattacharyya_distances(hist[:2], hist)
    d2 = bhattacharyya_distances(hist[:2] * 10, hist * 0.1)
    np.testing.assert_allclose(d1, d2, atol=1e-3)  # float32 sqrt(1 - BC) near BC = 1


def test_chi_square_zero_bins_are_ignored():
    a = np.array([[0.0, 2.0]])
    b = np.array([[0.0, 1.0]])
    # only the second bin: 0.5 * 1 / 3
    assert chi_square_distances(a, b)[0, 0] == pytest.approx(1 / 6, abs=1e-6)


@pytest.mark.parametrize("fn", [chi_square_distances, bhattacharyya_distances])
def test_histogram_metrics_reject_negative_features(fn):
    with pytest.raises(ValueError, match="non-negative"):
        fn(np.array([[1.0, -0.5]]), np.array([[1.0, 1.0]]))


@pytest.mark.parametrize("metric", list(DISTANCES))
def test_rejects_bad_shapes(metric):
    with pytest.raises(ValueError, match="widths differ"):
        pairwise_distances(np.ones((2, 3)), np.ones((4, 5)), metric)
    with pytest.raises(ValueError, match="2-D"):
        pairwise_distances(np.ones((2, 3, 1)), np.ones((4, 3)), metric)
    with pytest.raises(ValueError, match="NaN"):
        pairwise_distances(np.array([[np.nan, 1.0]]), np.ones((4, 2)), metric)


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ValueError, match="bhattacharyya, chi_square, cosine, euclidean"):
        pairwise_distances(np.ones((1, 2)), np.ones((1, 2)), "manhattan")
    assert normalise_metric("Chi-Square") == "chi_square"


def test_zero_vector_cosine_is_finite():
    d = cosine_distances(np.zeros((1, 4)), np.ones((2, 4)))
    assert np.isfinite(d).all()


def test_chunked_chi_square_matches_direct(rng, monkeypatch):
    import cbir.distances as dist

    q = rng.random((3, 50)).astype(np.float32)
    x = rng.random((257, 50)).astype(np.float32)
    full = dist.chi_square_distances(q, x)
    monkeypatch.setattr(dist, "_CHUNK_ELEMENTS", 50 * 7)  # 7 rows per chunk
    chunked = dist.chi_square_distances(q, x)
    direct = 0.5 * ((q[:, None, :] - x[None]) ** 2 / (q[:, None, :] + x[None])).sum(-1)
    np.testing.assert_allclose(chunked, full, rtol=1e-5)
    np.testing.assert_allclose(full, direct, rtol=1e-4)


def test_euclidean_matches_numpy(rng):
    q = rng.normal(size=(4, 9))
    x = rng.normal(size=(6, 9))
    expected = np.linalg.norm(q[:, None] - x[None], axis=-1)
    np.testing.assert_allclose(euclidean_distances(q, x), expected, rtol=1e-4, atol=1e-4)


def test_euclidean_distance_to_itself_is_exactly_zero_and_ranks_first():
    from cbir.distances import euclidean_distances
    from cbir.index.exact import ExactIndex

    rng = np.random.default_rng(7)
    x = (rng.random((300, 1280)) * 3).astype(np.float32)  # large norms: the float32 expansion is off near 0
    for d in (euclidean_distances(x, x), ExactIndex(x, "euclidean").distances(x),
              ExactIndex(x, "euclidean", max_bytes=0).distances(x)):  # prepared and streamed
        assert np.all(np.diag(d) == 0.0)
        assert np.array_equal(np.argmin(d, axis=1), np.arange(300))
        # the nearest candidates are the direct distances
        i = np.argsort(d[5])[:10]
        np.testing.assert_allclose(d[5, i], np.linalg.norm(x[i].astype(np.float64) - x[5].astype(np.float64), axis=1), rtol=1e-6)
