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


# -- honest figures on small or odd collections -------------------------------------------
def test_p_at_10_is_the_same_from_a_search_and_from_evaluate_on_six_images():
    from cbir.ranking import rank_distances

    labels = ["a", "a", "a", "b", "b", "b"]
    row = np.array([np.inf, 0.1, 0.5, 0.2, 0.3, 0.9])  # query 0: a, b, b, a, b
    ranked = rank_distances("m", row, [str(i) for i in range(6)], labels, "a", top_k=10)
    report = evaluate_distances(row[None, :], labels, np.array([0]))
    assert ranked.precision_at_k == pytest.approx(0.2)  # 2 relevant / k = 10, not / 5 returned
    assert report.p_at_10 == pytest.approx(ranked.precision_at_k)
    assert ranked.average_precision == pytest.approx(report.map)


def test_singleton_queries_are_left_out_of_the_figures_and_counted():
    labels = ["a", "a", "b", "b", "c"]  # c: a class of one image
    rng = np.random.default_rng(0)
    d = rng.random((5, 5))
    np.fill_diagonal(d, np.inf)
    d[:4, 4] = 5.0  # the singleton image ranks last for the others
    report = evaluate_distances(d, labels)
    assert report.n_queries == 5 and report.n_singleton == 1 and report.n_scored == 4
    assert np.isnan(report.ap[4])
    assert report.map == pytest.approx(np.mean(report.ap[:4]))
    assert "c" not in report.per_class_ap and set(report.per_class_ap) == {"a", "b"}
    out = report.to_dict()
    assert out["singleton_queries_left_out"] == 1 and out["queries_scored"] == 4 and out["queries"] == 5
    assert any("1 of 5 queries left out" in n for n in out["notes"])
    # the same four queries without the singleton (ranked last by them) give the same figures
    alone = evaluate_distances(d[:4, :4], labels[:4])
    assert report.map == pytest.approx(alone.map) and report.r_precision == pytest.approx(alone.r_precision)
    # merged chunks weigh each chunk by the queries it scored
    from cbir.evaluation import merge_reports

    merged = merge_reports([evaluate_distances(d[:2], labels, np.arange(2)), evaluate_distances(d[2:], labels, np.arange(2, 5))],
                           labels, "m", "cosine")
    assert merged.n_singleton == 1 and merged.map == pytest.approx(report.map)
    assert merged.p_at_10 == pytest.approx(report.p_at_10) and merged.r_precision == pytest.approx(report.r_precision)


def test_only_singletons_give_zero_figures_not_nan():
    d = np.array([[np.inf, 1.0], [1.0, np.inf]])
    report = evaluate_distances(d, ["a", "b"])
    assert report.n_singleton == 2 and report.map == 0.0 and report.per_class_ap == {}


def test_ties_with_relevant_items_are_counted_and_tie_aware_ap_is_the_mean_over_orders():
    import itertools

    from cbir.evaluation import tie_aware_average_precision, tie_groups

    # query 0 (class a): a b at 0.5 (tied), a at 0.7, b b at 0.9 (tied, all non-relevant)
    labels = ["a", "a", "b", "a", "b", "b"]
    row = np.array([[np.inf, 0.5, 0.5, 0.7, 0.9, 0.9]])
    stable = evaluate_distances(row, labels, np.array([0]))
    assert stable.ties == 1 and stable.tied_queries == 1 and stable.tie_rule == "stable"
    assert stable.map == pytest.approx((1 + 2 / 3) / 2)  # stable: a (column 1) before b (column 2)
    avg = evaluate_distances(row, labels, np.array([0]), ties="average")
    # both orders of the tied pair: (1 + 2/3)/2 and (1/2 + 2/3)/2
    assert avg.map == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert avg.p_at_10 == pytest.approx(stable.p_at_10)  # P@10 does not cut the tied group
    # brute force over every order of random tied groups
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = rng.integers(0, 3, 6).astype(float)
        rel = rng.random(6) < 0.5
        order = np.argsort(d, kind="stable")
        groups = tie_groups(d[order][None])
        n_rel = int(rel.sum()) + 1  # one relevant item never retrieved
        got = tie_aware_average_precision(rel[order][None], groups, n_rel)[0]
        perms = []
        for p in itertools.permutations(range(6)):
            key = np.lexsort((np.array(p), d))  # every order within the equal values
            perms.append(average_precision(rel[key][None], n_rel)[0])
        assert got == pytest.approx(np.mean(perms))
    with pytest.raises(ValueError, match="unknown tie rule"):
        evaluate_distances(row, labels, np.array([0]), ties="random")


def test_no_ties_give_the_same_figures_under_both_rules():
    rng = np.random.default_rng(1)
    labels = list("aaabbbccc")
    d = rng.random((9, 9))
    np.fill_diagonal(d, np.inf)
    a, b = evaluate_distances(d, labels), evaluate_distances(d, labels, ties="average")
    assert a.ties == 0 and a.map == pytest.approx(b.map) and a.p_at_10 == pytest.approx(b.p_at_10)
    assert a.r_precision == pytest.approx(b.r_precision)
