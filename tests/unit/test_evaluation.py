import numpy as np
import pytest

from cbir.evaluation import (
    average_precision,
    evaluate_distances,
    interpolated_pr,
    pr_curve,
    precision_at_k,
    r_precision,
    recall_at_k,
)


def test_hand_worked_ranking():
    rel = np.array([[1, 0, 1, 0, 0, 1]], dtype=bool)  # 3 relevant in the collection
    assert precision_at_k(rel, 3)[0] == pytest.approx(2 / 3)
    assert recall_at_k(rel, 3, 3)[0] == pytest.approx(2 / 3)
    # AP = (1/1 + 2/3 + 3/6) / 3
    assert average_precision(rel, 3)[0] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # 4 relevant in the collection, one never retrieved
    assert average_precision(rel, 4)[0] == pytest.approx((1 + 2 / 3 + 0.5) / 4)
    assert r_precision(rel, 3)[0] == pytest.approx(2 / 3)
    recall, precision = pr_curve(rel[0], 3)
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 2 / 5, 1 / 2])
    interp = interpolated_pr(rel, 3)[0]
    # r <= 1/3 -> 1; r <= 2/3 -> 2/3; r <= 1 -> 1/2
    np.testing.assert_allclose(interp, [1, 1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 0.5, 0.5, 0.5, 0.5])


def test_edge_cases():
    rel = np.zeros((1, 5), dtype=bool)
    assert average_precision(rel, 0)[0] == 0
    assert precision_at_k(rel, 0)[0] == 0
    assert recall_at_k(rel, 3, 0)[0] == 0


def test_ap_matches_sklearn(rng):
    from sklearn.metrics import average_precision_score

    for _ in range(20):
        y = rng.random(200) < 0.2
        if not y.any():
            continue
        scores = rng.random(200)
        order = np.argsort(-scores)
        ours = average_precision(y[order][None, :])[0]
        assert ours == pytest.approx(average_precision_score(y, scores), abs=1e-10)


def test_evaluate_distances_perfect_and_excluded_query():
    # two classes, perfectly separated
    x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    d = np.abs(x - x.T)
    np.fill_diagonal(d, np.inf)
    rep = evaluate_distances(d, ["a"] * 3 + ["b"] * 3)
    assert rep.map == pytest.approx(1.0)
    assert rep.r_precision == pytest.approx(1.0)
    assert rep.per_class_ap == {"a": 1.0, "b": 1.0}
    assert rep.pr_11[-1] == pytest.approx(1.0)
