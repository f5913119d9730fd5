"""Is a difference in mAP a finding? Paired tests over the queries two evaluations share.

Two runs (models, metrics, fusions, re-rankings, recipes) evaluated on the same queries give
two average precisions per query. Their difference is judged per query, as trec_eval-style
tools and ranx's ``compare`` do:

- the **mean paired difference** in AP (run minus baseline: the difference in mAP over the
  paired queries);
- its **95% bootstrap interval** over queries (``scipy.stats.bootstrap``, BCa, resampling
  the per-query differences; Efron & Tibshirani 1993);
- a **paired randomisation test** (``scipy.stats.permutation_test``, ``permutation_type=
  "samples"``: each query's two APs swapped at random, i.e. the sign of its difference
  flipped), two-sided; Smucker, Allan & Carterette, "A comparison of statistical
  significance tests for information retrieval evaluation", CIKM 2007.

Queries are paired by id; a query one run left out (a singleton class, a model that does
not cover it) is left out of the pair, and the count says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CBIRError
from .evaluation import EvaluationReport

#: Resamples of the bootstrap and of the randomisation test (the p-value's resolution is
#: 1/(N+1)); seeded, so a comparison reproduces.
N_RESAMPLES = 10_000
#: The level of the interval.
CONFIDENCE = 0.95
#: Below this p-value a difference is called significant.
ALPHA = 0.05
#: Below this many paired queries the bootstrap interval is unreliable (it can exclude 0 while
#: the randomisation test says p = 0.5 for 3 queries): said with the figures.
FEW_QUERIES = 20


@dataclass(frozen=True)
class Comparison:
    """``run`` against ``baseline`` over ``queries`` paired queries: ``delta`` the mean paired
    difference in AP (run - baseline), ``low``/``high`` its 95% bootstrap interval, ``p_value``
    the two-sided paired randomisation test's, ``baseline_map``/``run_map`` over the paired
    queries only."""

    baseline: str
    run: str
    queries: int
    baseline_map: float
    run_map: float
    delta: float
    low: float
    high: float
    p_value: float
    n_resamples: int = N_RESAMPLES

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    @property
    def note(self) -> str | None:
        """What a reader must know about these figures (too few queries), or None."""
        if self.queries < FEW_QUERIES:
            return f"only {self.queries} paired queries: the interval is unreliable below {FEW_QUERIES}"
        return None

    def verdict(self) -> str:
        """One line a reader can quote."""
        sign = "better" if self.delta > 0 else "worse"
        found = f"significantly {sign}" if self.significant else f"not significant at {ALPHA:g}"
        return (f"{self.run} vs {self.baseline}: {self.delta:+.4f} mAP (95% CI {self.low:+.4f} to {self.high:+.4f}, "
                f"p = {self.p_value:.3g}, {self.queries} queries): {found}" + (f" ({self.note})" if self.note else ""))

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline, "run": self.run, "queries_paired": self.queries,
            "baseline_mAP": round(self.baseline_map, 6), "run_mAP": round(self.run_map, 6),
            "delta_mAP": round(self.delta, 6), "ci95": [round(self.low, 6), round(self.high, 6)],
            "p_value": round(self.p_value, 6), "significant": self.significant, "n_resamples": self.n_resamples,
            "note": self.note,
            "tests": "paired bootstrap (BCa) 95% interval and two-sided paired randomisation test over per-query AP",
        }


def paired_ap(baseline: EvaluationReport, run: EvaluationReport) -> tuple[np.ndarray, np.ndarray]:
    """The two runs' AP on the queries both scored, in one order: (q,) float64 each. Raises
    CBIRError when a report has no query ids, the collections differ, or the runs share fewer
    than two scored queries."""
    if baseline.query_ids is None or run.query_ids is None:
        raise CBIRError("these evaluations do not name their queries, so they cannot be paired; evaluate them again")
    if baseline.collection != run.collection:
        raise CBIRError(f"{baseline.name} and {run.name} were evaluated on different collections "
                        f"({baseline.collection} and {run.collection}): there is nothing to pair")
    return pair_by_query(baseline.name, baseline.query_ids, baseline.ap, run.name, run.query_ids, run.ap)


def pair_by_query(baseline_name: str, baseline_ids: Sequence[str], baseline_ap: Sequence[float | None],
                  run_name: str, run_ids: Sequence[str], run_ap: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per-query APs (None or NaN: a query left out) paired by query id: (q,) float64 each."""
    def scored(ap) -> bool:
        return ap is not None and not np.isnan(ap)

    theirs = {q: ap for q, ap in zip(run_ids, run_ap) if scored(ap)}
    pairs = [(ap, theirs[q]) for q, ap in zip(baseline_ids, baseline_ap) if scored(ap) and q in theirs]
    if len(pairs) < 2:
        raise CBIRError(f"{baseline_name} and {run_name} share {len(pairs)} scored queries: a paired test needs at least two")
    a, b = np.array(pairs, dtype=np.float64).T
    return a, b


def compare(baseline: EvaluationReport, run: EvaluationReport, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Comparison:
    """``run`` against ``baseline``, paired by query (see the module docstring). Raises
    CBIRError as :func:`paired_ap` does."""
    a, b = paired_ap(baseline, run)
    return compare_paired(baseline.name, a, run.name, b, n_resamples, seed)


def compare_paired(baseline_name: str, a: np.ndarray, run_name: str, b: np.ndarray, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> Comparison:
    """The :class:`Comparison` of paired per-query APs ``b`` (the run) against ``a`` (the
    baseline), (q,) float64 each, q >= 2; seeded (``seed``), so it reproduces."""
    from scipy import stats

    diff = b - a
    rng = np.random.default_rng(seed)
    if np.ptp(diff) == 0:  # every query moved by the same amount (e.g. twice the same run): no spread to resample
        low = high = float(diff[0])
        p_value = 1.0 if diff[0] == 0 else 1.0 / (n_resamples + 1)
    else:
        ci = stats.bootstrap((diff,), np.mean, confidence_level=CONFIDENCE, n_resamples=n_resamples, method="BCa",
                             vectorized=True, rng=rng).confidence_interval
        low, high = float(ci.low), float(ci.high)
        test = stats.permutation_test((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), permutation_type="samples",
                                      n_resamples=n_resamples, alternative="two-sided", vectorized=True, rng=rng)
        p_value = float(test.pvalue)
    return Comparison(baseline_name, run_name, int(diff.size), float(a.mean()), float(b.mean()), float(diff.mean()),
                      low, high, p_value, n_resamples)
