"""The similarity decomposition behind "Why did this match?" (cbir.explain), on arrays."""

import numpy as np
import pytest

from cbir.explain import decompose


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_the_maps_split_the_pooled_cosine_exactly(rng):
    f = rng.random((7, 7, 32), dtype=np.float32)
    g = rng.random((8, 6, 32), dtype=np.float32)  # another grid: an image of another size
    similarity, qmap, rmap, pairs = decompose(f, g)
    expected = cosine(f.reshape(-1, 32).mean(0, dtype=np.float64), g.reshape(-1, 32).mean(0, dtype=np.float64))
    # three computation paths of one number in float64 (sums in another order): within 1e-9
    assert similarity == pytest.approx(expected, abs=1e-9)
    assert qmap.shape == (7, 7) and rmap.shape == (8, 6)
    assert float(qmap.mean()) == pytest.approx(expected, abs=1e-6) and float(rmap.mean()) == pytest.approx(expected, abs=1e-6)
    # each query location against the result's descriptor, as the docstring says
    d = g.reshape(-1, 32).mean(0)
    norm = np.linalg.norm(f.reshape(-1, 32).mean(0)) * np.linalg.norm(d)
    assert qmap[2, 3] == pytest.approx(float(f[2, 3] @ d / norm), rel=1e-5)


def test_pairs_are_the_largest_terms_with_no_location_twice(rng):
    f = rng.random((4, 4, 8))
    g = rng.random((4, 4, 8))
    f[1, 2] = g[3, 0] = 5 * np.ones(8)  # one pair of locations far stronger than the rest
    _, _, _, pairs = decompose(f, g, top=5)
    assert pairs[0][:2] == ((1, 2), (3, 0))
    assert len(pairs) == 5 and len({p[0] for p in pairs}) == 5 and len({p[1] for p in pairs}) == 5
    assert [p[2] for p in pairs] == sorted((p[2] for p in pairs), reverse=True)


def test_a_blank_map_gives_zeros_not_nan():
    similarity, qmap, rmap, _ = decompose(np.zeros((7, 7, 4)), np.ones((7, 7, 4)))
    assert similarity == 0 and not qmap.any() and not np.isnan(rmap).any()


def test_maps_of_other_models_are_refused():
    with pytest.raises(ValueError, match="16 and 8 channels"):
        decompose(np.ones((7, 7, 16)), np.ones((7, 7, 8)))
