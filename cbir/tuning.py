"""Fusion weights tuned on the labels: mAP and P@20 of weighted fusion (or weighted RRF)
for every point of a grid on the weight simplex, every labelled image as a query.

Each model's (n, n) distance matrix is computed once; a grid point costs one fusion and
one evaluation of the fused matrix. Weights on the simplex sum to 1 (only their ratios
matter to both methods), so two models give a line and three a triangle.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .centring import all_centred, centres
from .distances import normalise_metric
from .errors import CBIRError, RequestError, WorkLimitError
from .extractors import get_spec
from .evaluation import evaluate_distances
from .fusion import fuse
from .index.exact import ExactIndex

if TYPE_CHECKING:
    from .catalogue import StoreCatalogue

SWEEP_METHODS = ("weighted", "rrf")  # the methods whose result depends on the weights
MODELS_RANGE = (2, 3)
MAX_POINTS = 2000  # grid points per sweep (step 0.05 with three models is 231)
DEFAULT_STEP = 0.1
STEP_RANGE = (0.01, 0.5)  # 0.01 with two models is 101 points; 0.5 is the coarsest grid that has a middle
#: The unit of a sweep's work is one fused distance (a weighting of one model's distance,
#: then ranked: ~60 ns here). RRF ranks every model's matrix again at each point: twice that.
METHOD_COST = {"weighted": 1.0, "rrf": 2.0}
#: One element (query x image x dimension) of a model's distance matrix, in those units,
#: measured on Wang-1000 with 1280-d features on 2 cores: a BLAS product for cosine,
#: Euclidean and Bhattacharyya (~0.3 ns), an elementwise loop for chi-square (~12 ns).
MATRIX_COST = {"cosine": 0.005, "euclidean": 0.005, "bhattacharyya": 0.005, "chi_square": 0.2}
#: The distance matrices and the copies fusion makes: (models + 2) x images² float64.
MAX_SWEEP_BYTES = 2 << 30
MATRIX_ROWS = 256  # a distance matrix is computed in blocks of rows, a cancellation point after each


def check_step(step: float) -> float:
    """``step`` as a float, finite, within STEP_RANGE and dividing 1 (no huge number is ever printed)."""
    low, high = STEP_RANGE
    try:
        step = float(step)
    except (TypeError, ValueError):
        raise CBIRError(f"the step must be a number between {low:g} and {high:g}") from None
    if not math.isfinite(step) or not low <= step <= high:
        raise CBIRError(f"the step must be between {low:g} and {high:g} (e.g. 0.1, 0.05, 0.25)")
    if abs(round(1 / step) * step - 1) > 1e-9:
        raise CBIRError(f"the step must divide 1 (e.g. 0.1, 0.05, 0.25), got {step:.10g}")
    return step


def grid_points(models: int, step: float) -> int:
    """How many points :func:`simplex_grid` gives (step already checked)."""
    k = round(1 / step)
    return (k + 1) * (k + 2) // 2 if models == 3 else k + 1


def sweep_work(points: int, dims: Sequence[int], images: int, method: str = "weighted", metric: str = "cosine") -> int:
    """A sweep's work in fused distances: each grid point fuses the models' (images x images)
    matrices and ranks the result (``METHOD_COST``), after each model's matrix is computed once
    (``dims`` per model x images² elements at ``MATRIX_COST`` of its metric)."""
    fused = points * len(dims) * images * images * METHOD_COST[method]
    matrices = sum(dims) * images * images * MATRIX_COST[metric]
    return int(fused + matrices)


def check_sweep_work(points: int, dims: Sequence[int], images: int, max_work: int, method: str = "weighted",
                     metric: str = "cosine") -> None:
    """:class:`WorkLimitError` (422) when a sweep would cost more than ``max_work`` fused
    distances, or its matrices would take more than ``MAX_SWEEP_BYTES``."""
    work = sweep_work(points, dims, images, method, metric)
    if work > max_work:
        raise WorkLimitError(
            f"this sweep would cost {work / 1e6:,.0f} million distance units ({points} weightings x {len(dims)} models x "
            f"{images}² labelled images fused by {method}, and the {metric} distance matrices); the bound is "
            f"{max_work / 1e6:,.0f} million (CBIR_SWEEP_MAX_WORK): use a larger step, fewer models or another metric")
    memory = (len(dims) + 2) * images * images * 8
    if memory > MAX_SWEEP_BYTES:
        raise WorkLimitError(f"this sweep's distance matrices would take {memory / 2**30:.1f} GiB ({images}² labelled images); "
                             f"the bound is {MAX_SWEEP_BYTES / 2**30:.0f} GiB: sweep on a smaller collection")


def simplex_grid(models: int, step: float = DEFAULT_STEP) -> np.ndarray:
    """(P, models) weights, multiples of ``step`` summing to 1, in lexicographic order."""
    if not MODELS_RANGE[0] <= models <= MODELS_RANGE[1]:
        raise CBIRError(f"a weight sweep takes {MODELS_RANGE[0]} or {MODELS_RANGE[1]} models, got {models}")
    step = check_step(step)
    k = round(1 / step)
    count = grid_points(models, step)
    if count > MAX_POINTS:
        raise CBIRError(f"step {step:g} gives {count} weight combinations; at most {MAX_POINTS}: use a larger step")
    points = [c for c in itertools.product(range(k + 1), repeat=models - 1) if sum(c) <= k]
    return np.array([[*c, k - sum(c)] for c in points], dtype=float) / k


@dataclass
class SweepResult:
    models: list[str]
    method: str
    metric: str
    step: float
    weights: np.ndarray  # (P, models)
    map: np.ndarray  # (P,)
    p_at_20: np.ndarray  # (P,)
    equal: dict = field(default_factory=dict)  # mAP and P@20 with equal weights
    queries: int = 0
    centred: bool = False  # vectors centred on the collection's mean (cbir.centring)
    seconds: float = 0.0

    @property
    def best(self) -> int:
        """Index of the best point by mAP (ties: the first, i.e. the lexicographically smallest)."""
        return int(np.argmax(self.map))

    def best_weights(self) -> dict[str, float]:
        return {m: round(float(w), 6) for m, w in zip(self.models, self.weights[self.best])}

    def to_dict(self) -> dict:
        b = self.best
        return {
            "models": self.models, "method": self.method, "metric": self.metric, "step": self.step, "queries": self.queries,
            "centred": self.centred,
            "points": [{"weights": dict(zip(self.models, map(float, w))), "mAP": round(float(m), 6), "P@20": round(float(p), 6)}
                       for w, m, p in zip(self.weights, self.map, self.p_at_20)],
            "best": {"weights": self.best_weights(), "mAP": round(float(self.map[b]), 6), "P@20": round(float(self.p_at_20[b]), 6)},
            "equal_weights": {k: round(v, 6) for k, v in self.equal.items()},
            "gain_over_equal": round(float(self.map[b]) - self.equal["mAP"], 6),
            "seconds": round(self.seconds, 2),
        }


def sweep_weights(catalogue: StoreCatalogue, models: Sequence[str], method: str = "weighted", step: float = DEFAULT_STEP,
                  metric: str = "cosine", progress: Callable[[int, int], None] | None = None,
                  centre: bool = True) -> SweepResult:
    """mAP and P@20 of ``method`` fusion at every grid point, all labelled images as queries
    (on centred vectors under cosine and Euclidean unless ``centre`` is False: :mod:`cbir.centring`).

    Refused (:class:`WorkLimitError`) above ``catalogue.settings.sweep_max_work`` distances fused.
    ``progress`` is called after the distance matrices and after every point; it may raise
    to stop the sweep there (:class:`cbir.jobs.Job` does when cancelled)."""
    from .experiments import labelled_ids

    began = time.perf_counter()
    if method not in SWEEP_METHODS:
        raise CBIRError(f"a weight sweep needs a weighted method ({', '.join(SWEEP_METHODS)}); {method!r} ignores the weights")
    models = list(dict.fromkeys(get_spec(m).name for m in models))  # any spelling of a model, once
    if not MODELS_RANGE[0] <= len(models) <= MODELS_RANGE[1]:
        raise RequestError(f"a weight sweep fuses {MODELS_RANGE[0]} to {MODELS_RANGE[1]} different models, got {len(models)}")
    grid = simplex_grid(len(models), step)
    metric = normalise_metric(metric)
    stores = catalogue.stores(models, centred=centres(metric, centre))
    ids, labels = labelled_ids(catalogue, stores)
    dims = [s.dim for s in stores.values()]
    check_sweep_work(len(grid), dims, len(ids), catalogue.settings.sweep_max_work, method, metric)
    dists = {}
    for m in models:  # each model's full distance matrix, once, in blocks of rows
        db = stores[m].aligned(ids)
        index = ExactIndex(db, metric)
        d = np.empty((len(ids), len(ids)))
        for start in range(0, len(ids), MATRIX_ROWS):
            d[start : start + MATRIX_ROWS] = index.distances(db[start : start + MATRIX_ROWS])
            if progress:
                progress(0, len(grid))  # a cancellation point (chi-square takes seconds per block)
        np.fill_diagonal(d, np.inf)
        dists[m] = d
    result = SweepResult(models, method, metric, step, grid, np.zeros(len(grid)), np.zeros(len(grid)), queries=len(ids),
                         centred=all_centred(stores))
    for i, w in enumerate(grid):
        report = evaluate_distances(fuse(dists, method, dict(zip(models, w))), labels)
        result.map[i], result.p_at_20[i] = report.map, report.p_at_20
        if progress:
            progress(i + 1, len(grid))
    equal = evaluate_distances(fuse(dists, method, {m: 1.0 for m in models}), labels)
    result.equal = {"mAP": equal.map, "P@20": equal.p_at_20}
    result.seconds = time.perf_counter() - began
    return result
