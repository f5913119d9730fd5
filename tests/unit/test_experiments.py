"""Experiments: run planning, sampled evaluation, and the feedback simulation's chunks."""

import numpy as np
import pytest

from cbir.config import Settings
from cbir.engine import Engine
from cbir.experiments import EVAL_CHUNK, Run, plan_runs
from tests.conftest import COLLECTION, ROOT, assert_same_figures


@pytest.fixture(scope="module")
def engine():
    return Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=ROOT / "features"))


def test_plan_runs_hand_worked():
    runs = plan_runs(["a", "b"], ["cosine", "euclidean"], ["rrf"], ["none", "aqe"])
    assert runs == [
        Run(("a",), "cosine", None), Run(("a",), "euclidean", None), Run(("b",), "cosine", None), Run(("b",), "euclidean", None),
        Run(("a", "b"), "cosine", "rrf"), Run(("a", "b"), "euclidean", "rrf"),
        # re-ranking is defined for cosine only
        Run(("a",), "cosine", None, "aqe"), Run(("b",), "cosine", None, "aqe"), Run(("a", "b"), "cosine", "rrf", "aqe"),
    ]
    assert plan_runs(["a"], ["cosine"], ["rrf"], []) == [Run(("a",), "cosine", None)]  # one model: no fusion


def test_sampled_evaluation_is_the_full_one_restricted(engine):
    full = engine.evaluate("efficientnet_lite0")
    part = engine.evaluate("efficientnet_lite0", queries=100, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(1000, 100, replace=False))
    assert part.n_queries == 100 and "100 of 1000 queries, seeded sample, seed 3" in part.name
    assert_same_figures(part.ap, full.ap[rows])  # 100 queries ranked in one chunk vs 1000 in two
    assert engine.evaluate("efficientnet_lite0", queries=5000).n_queries == 1000  # more than there are: all


def test_feedback_simulation_chunks_agree_with_one_pass(engine, monkeypatch):
    whole = engine.evaluate_feedback("efficientnet_lite0", rounds=1, k=20)
    import cbir.experiments as ex

    monkeypatch.setattr(ex, "EVAL_CHUNK", 7)  # many small chunks: same figures
    chunked = engine.evaluate_feedback("efficientnet_lite0", rounds=1, k=20)
    assert EVAL_CHUNK == 512
    for a, b in zip(whole, chunked):  # chunks of 7 vs 512 rows: near ties may swap (tests/conftest.py, TIE)
        assert_same_figures(a.ap, b.ap)
    assert whole[1].map > whole[0].map + 0.05  # Rocchio with true labels helps (0.8556 -> 0.9190)
