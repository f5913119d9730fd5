"""Paired significance of a difference in mAP (cbir.significance) on synthetic per-query APs."""

import numpy as np
import pytest

from cbir.errors import CBIRError
from cbir.evaluation import EvaluationReport
from cbir.significance import compare, compare_paired, pair_by_query


def report(name, ap, ids=None, collection="wang"):
    ap = np.asarray(ap, dtype=float)
    return EvaluationReport(name=name, metric="cosine", n_queries=ap.size, map=float(np.nanmean(ap)), p_at_10=0, p_at_20=0,
                            r_precision=0, per_class_ap={}, pr_11=[], ap=ap, collection=collection,
                            query_ids=list(ids) if ids is not None else [str(i) for i in range(ap.size)])


def test_a_run_against_itself_differs_by_nothing(rng):
    ap = rng.random(200)
    c = compare(report("a", ap), report("b", ap))
    assert (c.delta, c.low, c.high, c.p_value, c.significant) == (0, 0, 0, 1.0, False)


def test_a_small_consistent_gain_is_significant_and_inside_its_interval(rng):
    base = rng.uniform(0.3, 0.9, 1000)
    run = np.clip(base + 0.02 + rng.normal(0, 0.03, 1000), 0, 1)
    c = compare(report("today", base), report("centred", run))
    true = float((run - base).mean())
    assert c.delta == pytest.approx(true) and c.low < true < c.high and c.significant and c.p_value < 0.001
    assert c.verdict().startswith(f"centred vs today: {true:+.4f} mAP (95% CI {c.low:+.4f} to {c.high:+.4f}, p = ")
    assert c.verdict().endswith("1000 queries): significantly better")
    # two computation paths of the interval: scipy's BCa and a plain percentile bootstrap in numpy, within 0.002
    diff = run - base
    means = diff[np.random.default_rng(1).integers(0, diff.size, (10_000, diff.size))].mean(1)
    assert c.low == pytest.approx(np.percentile(means, 2.5), abs=0.002) and c.high == pytest.approx(np.percentile(means, 97.5), abs=0.002)


def test_noise_is_not_a_finding(rng):
    base = rng.uniform(0.3, 0.9, 300)
    run = base + rng.choice([-0.05, 0.05], 300)  # as many queries up as down
    c = compare_paired("a", base, "b", run)
    assert c.low < 0 < c.high and not c.significant and c.p_value > 0.05


def test_queries_are_paired_by_id_and_left_out_ones_skipped():
    a = report("a", [0.5, np.nan, 0.9, 0.1], ids=["q1", "q2", "q3", "q4"])
    b = report("b", [0.2, 0.6, 0.4, 0.5], ids=["q4", "q3", "q2", "q9"])  # another order, q1 missing, q9 new
    x, y = pair_by_query(a.name, a.query_ids, a.ap, b.name, b.query_ids, b.ap)
    assert x.tolist() == [0.9, 0.1] and y.tolist() == [0.6, 0.2]  # q3 and q4: q2 is a's singleton, q1 and q9 unpaired
    assert compare(a, b).queries == 2
    assert compare(a, b).verdict().endswith("(only 2 paired queries: the interval is unreliable below 20)")
    assert compare(a, b).to_dict()["note"] == "only 2 paired queries: the interval is unreliable below 20"


def test_what_cannot_be_paired_says_why():
    with pytest.raises(CBIRError, match="different collections"):
        compare(report("a", [0.5, 0.6]), report("b", [0.5, 0.6], collection="trip"))
    with pytest.raises(CBIRError, match="share 1 scored queries"):
        compare(report("a", [0.5, 0.6], ids=["x", "y"]), report("b", [0.5, 0.6], ids=["y", "z"]))
    unnamed = report("a", [0.5, 0.6])
    unnamed.query_ids = None
    with pytest.raises(CBIRError, match="do not name their queries"):
        compare(unnamed, report("b", [0.5, 0.6]))
