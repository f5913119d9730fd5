"""Experiments over a whole collection: evaluation runs (every labelled image as a query),
the simulated relevance-feedback study, and the planning of the runs a page asks for.

Everything here goes through the catalogue's loaded stores and the same prepared indexes
and chunk size as a search, so that the figures are those of the search a user runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from .centring import CENTRED_METRICS, all_centred, centres
from .distances import normalise_metric
from .errors import CBIRError, CollectionError, unknown, use_setting
from .evaluation import TIE_RULES, EvaluationReport, evaluate_distances, merge_reports
from .fusion import DEFAULT_NORMALISATION, check_weights, fuse, fusion_method, normalisation_method
from .index import get_backend
from .index.exact import ExactIndex
from .rerank import Rerank, alpha_query_expansion, check_metric, rocchio
from .store import common_ids

if TYPE_CHECKING:
    from .catalogue import StoreCatalogue
    from .store import FeatureStore

#: Queries ranked at once: (EVAL_CHUNK x n) float64 distances per model stay small.
EVAL_CHUNK = 512

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Run:
    """One evaluation the Evaluate page (or a script) asks for."""

    models: tuple[str, ...]
    metric: str
    method: str | None  # a fusion method when len(models) > 1
    rerank: str = "none"


def plan_runs(models: Sequence[str], metrics: Sequence[str], fusions: Sequence[str], reranks: Sequence[str]) -> list[Run]:
    """Each model alone for each metric, plus each fusion of all models; re-ranking
    (cosine only) multiplies the cosine runs."""
    runs = []
    for rr in reranks or ["none"]:
        use = [m for m in metrics if rr == "none" or m == "cosine"]
        runs += [Run((m,), metric, None, rr) for m in models for metric in use]
        if len(models) >= 2:
            runs += [Run(tuple(models), metric, method, rr) for method in fusions for metric in use]
    return runs


#: Why a compared run can change nothing: said by the CLI and the API when they refuse one.
CHANGES_NOTHING = ("changes nothing of the evaluation it is compared with (a normalisation or weights without a fusion "
                   "that reads them, weights in the same ratios, centring under chi-square or Bhattacharyya, which are "
                   "never centred, or the same values)")


def effective_run(run: Mapping) -> tuple:
    """What an evaluation run (a dict of ``models``, ``metric``, ``method``, ``normalisation`` and
    optionally ``weights``, ``rerank``, ``backend``, ``depth``, ``recipe``, ``centre``) computes,
    the settings that change nothing left out: a method, weights or a normalisation with one
    model, weights with an unweighted fusion, a normalisation with rank fusion, centring under
    a histogram metric or with a recipe (which says its own). Two runs with equal tuples give
    the same figures: the CLI and the API refuse such a comparison."""
    method = fusion_method(run.get("method") or "average") if len(run["models"]) > 1 else None
    weights = ()  # their ratios (3:1 is 6:2; none is 1:1), checked (CBIRError) before any work
    if method is not None and method.weighted:
        w = check_weights(run["models"], run.get("weights"))
        weights = tuple(np.round(w / w.sum(), 12).tolist())
    recipe, metric = run.get("recipe"), normalise_metric(run["metric"])
    rerank = run.get("rerank") or Rerank()
    return (tuple(run["models"]), metric, method.name if method else None, weights,
            run.get("normalisation") if method is not None and method.normalised else None,
            rerank if rerank.active else None, run.get("backend"), run.get("depth"),
            None if recipe is None else getattr(recipe, "name", recipe), recipe is None and centres(metric, run.get("centre", True)))


def labelled_ids(catalogue: StoreCatalogue, stores: Mapping[str, FeatureStore]) -> tuple[list[str], list[str]]:
    """The labelled images every store has, in the first store's order, and their labels."""
    collection = catalogue.collection
    if not collection.has_labels:
        raise CollectionError(
            f"collection {collection.name!r} has no labels; add a labels.csv (id,label) "
            "or sort the images into one sub-folder per class"
        )
    ids = [i for i in common_ids([s.ids for s in stores.values()]) if i in collection]
    if len(ids) < 2:
        raise CollectionError("need at least two indexed, labelled images to evaluate")
    labels = [collection.label_of(i) for i in ids]
    if len(set(labels)) == len(labels):
        raise CollectionError(
            f"every one of the {len(ids)} labelled images is alone in its class: no query has a relevant image, "
            "so there is nothing to evaluate (give at least one class two images)"
        )
    return ids, labels


def _database_and_queries(catalogue: StoreCatalogue, model: str, store: FeatureStore, ids: list[str],
                          rerank: Rerank) -> tuple[np.ndarray, np.ndarray]:
    """The vectors searched and the query vectors of every image, aligned with ``ids``."""
    if not rerank.active:
        db = store.aligned(ids)
        return db, db
    db = store.aligned(ids, catalogue.indexes.rerank_index(model, store, rerank).vectors)
    return db, alpha_query_expansion(db, db, rerank.n, rerank.alpha, exclude=np.arange(len(ids)))


class _Searcher:
    """A vector index seen as a distance matrix over the evaluated ids: ``distances(queries)``
    is (q, len(ids)), every row's distance for the exact index, each query's ``depth``
    candidates and NaN for the rest for an approximate one (so the report is mAP@depth);
    ``rows`` are the store rows of the ids (None: the index's rows already are the ids)."""

    def __init__(self, index, rows: list[int] | None, n: int, depth: int):
        self.index, self.rows, self.n, self.depth = index, rows, n, depth

    def distances(self, queries: np.ndarray) -> np.ndarray:
        full = self.index.candidates(queries, self.depth, self.n)
        return full if self.rows is None else full[:, self.rows]


def _searcher(catalogue: StoreCatalogue, model: str, store: FeatureStore, metric: str, db: np.ndarray, ids: list[str],
              backend: str, depth: int) -> _Searcher:
    if get_backend(backend).exact:  # over the evaluated (possibly re-ranked) vectors themselves
        return _Searcher(ExactIndex(db, metric), None, len(db), depth)
    return _Searcher(catalogue.indexes.vector_index(model, store, metric, backend), store.rows_for(ids), len(store), depth)


def evaluate(
    catalogue: StoreCatalogue,
    models: Sequence[str],
    metric: str = "cosine",
    method: str | None = None,
    weights: Mapping[str, float] | None = None,
    progress: Progress | None = None,
    rerank: Rerank | None = None,
    backend: str = "exact",
    depth: int = 1000,
    queries: int | None = None,
    seed: int = 0,
    ties: str = "stable",
    normalisation: str | None = None,
    centre: bool = True,
) -> EvaluationReport:
    """Every labelled image as a query against the rest (or a seeded sample of ``queries``
    of them, said in the report's name), for one model or a fusion (its scores normalised
    as ``normalisation`` says, :data:`cbir.fusion.NORMALISATIONS`); with an approximate
    ``backend``, over each query's ``depth`` candidates (mAP@depth). ``centre``: on centred
    vectors under cosine and Euclidean (:mod:`cbir.centring`, the default); a run that could
    be centred and is not says "not centred" in its name."""
    t_start = time.perf_counter()
    metric, rerank = normalise_metric(metric), rerank or Rerank()
    _check_evaluation(metric, ties, rerank, backend)
    if len(models) > 1 and method is None:
        method = "average"
    stores = catalogue.stores(models, centred=centres(metric, centre))
    ids, labels = labelled_ids(catalogue, stores)
    data = {m: _database_and_queries(catalogue, m, stores[m], ids, rerank) for m in models}
    # every query is excluded from its own ranking and is one of its own candidates: one more
    prepared = {m: _searcher(catalogue, m, stores[m], metric, db, ids, backend, depth + 1) for m, (db, _) in data.items()}
    n, chunks = len(ids), []
    sample = np.arange(n) if not queries or queries >= n else np.sort(np.random.default_rng(seed).choice(n, queries, replace=False))
    for start in range(0, sample.size, EVAL_CHUNK):
        rows = sample[start : start + EVAL_CHUNK]
        per = {}
        for m, (_, queries) in data.items():
            d = prepared[m].distances(queries[rows]).astype(np.float64)
            d[np.arange(rows.size), rows] = np.inf
            per[m] = d
        d = per[models[0]] if len(models) == 1 else fuse(per, method=method, weights=weights, normalisation=normalisation)
        chunks.append(evaluate_distances(d, labels, rows, ties=ties))
        if progress:
            progress(start + rows.size, sample.size)
    exact = get_backend(backend).exact
    centred = all_centred(stores)  # a tiny store is not centred
    name = _run_name(models, method, normalisation, rerank, None if exact else (backend, depth),
                     None if sample.size == n else (sample.size, n, seed), raw=metric in CENTRED_METRICS and not centred,
                     weights=weights)
    report = merge_reports(chunks, [labels[r] for r in sample], name, metric)
    report.seconds = time.perf_counter() - t_start
    report.depth = None if exact else depth
    report.query_ids = [ids[r] for r in sample]  # pairs this run's AP with another run's (cbir.significance)
    report.centred = centred
    return report


def _check_evaluation(metric: str, ties: str, rerank: Rerank, backend: str) -> None:
    """An evaluation's settings that are refused before any work: an unknown tie rule,
    re-ranking under another metric than cosine or on an approximate index."""
    if ties not in TIE_RULES:
        raise unknown("tie rule", ties, TIE_RULES)
    if rerank.active:
        check_metric(metric)
        if get_backend(backend).approximate:
            raise CBIRError("re-ranked evaluation runs on the exact index", remedy=use_setting("backend", "exact", "Exact (numpy)"))


def _run_name(models: Sequence[str], method: str | None, normalisation: str | None, rerank: Rerank,
              approximate: tuple[str, int] | None, sampled: tuple[int, int, int] | None, raw: bool = False,
              weights: Mapping[str, float] | None = None) -> str:
    """An evaluation's name: the model or fusion (with the weights of a weighted one when given,
    and a normalisation other than the default), "not centred" when it could have been, the
    query sample, the re-ranking and an approximate index."""
    name = models[0] if len(models) == 1 else f"{method}({'+'.join(models)})"
    if len(models) > 1 and weights is not None and len(weights) and fusion_method(method).weighted:
        name += " weights " + ":".join(f"{w:g}" for w in check_weights(models, weights))  # (a model left out weighs 1)
    if raw:
        name += " (not centred)"
    norm = normalisation_method(normalisation)
    if len(models) > 1 and fusion_method(method).normalised and norm.name != DEFAULT_NORMALISATION:
        name += f" [{norm.name}]"
    if sampled:
        name += f" ({sampled[0]} of {sampled[1]} queries, seeded sample, seed {sampled[2]})"
    if rerank.active:
        name += f" + {rerank.label}"
    if approximate:
        name += f" [{approximate[0]}, mAP@{approximate[1]}]"
    return name


def evaluate_feedback(catalogue: StoreCatalogue, model: str, rounds: int = 1, k: int = 20, rerank: Rerank | None = None,
                      centre: bool = True) -> list[EvaluationReport]:
    """Simulated relevance feedback: each round, the true labels of the top k of every
    query are given as Rocchio feedback (cosine; centred unless ``centre`` is False). The
    report before and after each round."""
    rerank = rerank or Rerank()
    stores = catalogue.stores([model], centred=centres("cosine", centre))
    ids, labels = labelled_ids(catalogue, stores)
    db, queries = _database_and_queries(catalogue, model, stores[model], ids, rerank)
    index, lab = ExactIndex(db, "cosine"), np.asarray(labels, dtype=object)
    reports = []
    for r in range(rounds + 1):
        chunks, tops = [], []
        for start in range(0, len(ids), EVAL_CHUNK):
            rows = np.arange(start, min(start + EVAL_CHUNK, len(ids)))
            d = index.distances(queries[rows]).astype(np.float64)
            d[np.arange(rows.size), rows] = np.inf
            chunks.append(evaluate_distances(d, labels, rows))
            if r < rounds:
                tops.append(np.argsort(d, axis=1, kind="stable")[:, :k])
        reports.append(merge_reports(chunks, labels, f"{model} feedback round {r}", "cosine"))
        reports[-1].query_ids, reports[-1].collection = list(ids), catalogue.collection.name
        reports[-1].centred = stores[model].centre is not None
        if r < rounds:
            queries = _feedback_round(queries, db, np.concatenate(tops), lab)
    return reports


def _feedback_round(queries: np.ndarray, db: np.ndarray, top: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each query moved by Rocchio towards its relevant top-k and away from the rest."""
    relevant = labels[top] == labels[:, None]
    out = np.empty_like(queries)
    for i in range(queries.shape[0]):
        out[i] = rocchio(queries[i][None], db[top[i][relevant[i]]], db[top[i][~relevant[i]]])[0]
    return out
