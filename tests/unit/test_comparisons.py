"""The helpers that compare two computation paths accept tied swaps and nothing else."""

import numpy as np
import pytest

from tests.conftest import assert_same_figures, assert_same_ranking


def hits(*pairs):
    return [{"id": i, "score": s} for i, s in pairs]


def test_a_swap_within_the_tie_is_accepted_and_a_real_one_is_not():
    assert_same_ranking(hits(("a", 0.1), ("b", 0.1 + 1e-7), ("c", 0.3)), hits(("b", 0.1), ("a", 0.1 + 2e-7), ("c", 0.3)))
    with pytest.raises(AssertionError, match="not tied"):
        assert_same_ranking(hits(("a", 0.1), ("b", 0.2)), hits(("b", 0.1), ("a", 0.2)))


def test_a_tie_at_the_end_of_the_list_may_push_an_image_out():
    assert_same_ranking(hits(("a", 0.1), ("b", 0.5)), hits(("a", 0.1), ("z", 0.5 + 1e-7)))
    with pytest.raises(AssertionError):
        assert_same_ranking(hits(("a", 0.1), ("b", 0.4)), hits(("a", 0.1), ("z", 0.5)))


def test_lists_on_different_scales_compare_each_on_its_own():
    fused = hits(("a", 0.0), ("b", 0.5), ("c", 0.5))  # min-max normalised: b and c tie
    model = hits(("a", 0.2), ("c", 0.6), ("b", 0.6000001))
    assert_same_ranking(fused, model)


def test_figures_allow_a_few_queries_to_move_and_no_more():
    a = np.full(1000, 0.8)
    b = a.copy()
    b[3] += 5.8e-6  # what the AMD EPYC run showed
    assert_same_figures(a, b)
    b[:50] += 1e-3
    with pytest.raises(AssertionError):
        assert_same_figures(a, b)
