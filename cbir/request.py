"""A search, described once, and what it answers.

The API body, the CLI's options and the Search page are each parsed by
:func:`parse_search` into one frozen :class:`SearchRequest`; the engine, the result cache
and the telemetry trust it and check nothing again (validate at the boundary, trust inside,
as scikit-learn's ``metrics/pairwise.py`` does with ``check_pairwise_arrays`` in front of
its private kernels). Only what needs the collection (that an image id exists, the ids a
feedback round marks) is checked by the engine, once, when it runs the request.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np

from .centring import centres, check_flag
from .distances import normalise_metric
from .errors import CBIRError, RequestError, UnknownNameError
from .extractors import get_spec
from .fusion import check_weights, fusion_method, normalisation_method
from .index import check_backend
from .ranking import FusionInputs, RankedList
from .rerank import DEFAULT_ALPHA, DEFAULT_N, FeedbackRound, Rerank, check_metric, feedback_rounds

if TYPE_CHECKING:
    from .catalogue import StoreCatalogue

MAX_TOP_K = 1000
MAX_MODELS = 8
MAX_DEPTH = 100_000
MAX_ID_CHARS = 512


@dataclass(frozen=True)
class Query:
    """What is searched for: a collection image's id, or an uploaded image.

    ``image`` is the encoded file (bytes) or a decoded (h, w[, c]) uint8 array; it is hashed
    once, here (``key``), and decoded by the engine only when some model has no cached
    vector for it. ``label`` is filled in by the engine for a collection image."""

    image_id: str | None = None
    image: bytes | np.ndarray | None = field(default=None, repr=False, compare=False)
    label: str | None = None
    key: str = field(init=False, default="")

    def __post_init__(self):
        if (self.image_id is None) == (self.image is None):
            raise RequestError("give exactly one query: a collection image id or an image")
        if self.image_id is not None:
            image_id = str(self.image_id)
            if len(image_id) > MAX_ID_CHARS:
                raise RequestError(f"an image id has at most {MAX_ID_CHARS} characters")
            object.__setattr__(self, "image_id", image_id)
            object.__setattr__(self, "key", f"id:{image_id}")
            return
        image = self.image
        if isinstance(image, np.ndarray):
            data = image.tobytes() + str(image.shape).encode() + str(image.dtype).encode()
        elif isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
        else:
            raise RequestError(f"an uploaded query is the image file's bytes or an array, not {type(image).__name__}")
        object.__setattr__(self, "key", "img:" + hashlib.blake2b(data, digest_size=16).hexdigest())

    @property
    def is_upload(self) -> bool:
        return self.image is not None

    def cache_key(self) -> str:
        """``id:<id>`` or ``img:<blake2b-128 of the upload>``: the same for the same query."""
        return self.key


@dataclass(frozen=True)
class SearchRequest:
    """One validated search. Build it with :func:`parse_search`.

    ``models`` are canonical registry names, unique, in the order given; ``metric`` is a
    canonical metric name; ``method`` is None unless two or more models are fused;
    ``weights`` (model, weight) pairs, checked non-negative and finite; ``backend`` None
    means the server's CBIR_INDEX_BACKEND; ``depth`` None means max(top_k, CBIR_SEARCH_DEPTH)."""

    models: tuple[str, ...]
    query: Query
    metric: str = "cosine"
    top_k: int = 10
    exclude_query: bool = True
    method: str | None = None
    weights: tuple[tuple[str, float], ...] | None = None
    rerank: Rerank = field(default_factory=Rerank)
    feedback: tuple[FeedbackRound, ...] = ()
    backend: str | None = None
    depth: int | None = None
    normalisation: str = "minmax"  # the fusion's score normalisation (cbir.fusion.NORMALISATIONS)
    centre: bool = True  # centre on the collection's mean under cosine and Euclidean (cbir.centring)

    @property
    def centred(self) -> bool:
        """Whether this search runs on centred vectors (asked, and the metric is one centring serves)."""
        return centres(self.metric, self.centre)

    @property
    def weight_map(self) -> dict[str, float] | None:
        return None if self.weights is None else dict(self.weights)

    def cache_fields(self, backend: str, depth: int | None = None) -> dict:
        """The request's part of the result cache's key, JSON-able: every field, with the
        ``backend`` and ``depth`` the server resolved it to (the service adds the collection,
        its labels and the stores' versions)."""
        return {
            "models": list(self.models),
            "metric": self.metric,
            "top_k": self.top_k,
            "query": self.query.cache_key(),
            "exclude_query": self.exclude_query,
            "method": self.method,
            "weights": self.weight_map,
            "rerank": [self.rerank.method, self.rerank.n, self.rerank.alpha] if self.rerank.active else None,
            "feedback": [{"relevant": list(r.relevant), "non_relevant": list(r.non_relevant)} for r in self.feedback] or None,
            "backend": backend,
            "depth": depth,
            "normalisation": self.normalisation if self.method else None,
            "centred": self.centred,
        }


def check_whole(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in low..high (a whole float or a numeric string is accepted; a bool,
    a fraction or text is not); :class:`RequestError` otherwise."""
    try:
        k = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        k = None
    if k is None or (k != value and not isinstance(value, str)):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    if not low <= k <= high:
        raise RequestError(f"{name} must be between {low} and {high:,}, got {k}")
    return k


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int in 1..MAX_TOP_K; :class:`RequestError` otherwise."""
    return check_whole("top_k", top_k, 1, MAX_TOP_K)


def _models(models: Sequence[str] | str) -> tuple[str, ...]:
    if not isinstance(models, (str, Sequence)) or any(not isinstance(m, str) for m in ([models] if isinstance(models, str) else models)):
        raise RequestError(f"models must be a model name or a list of names, got {type(models).__name__}")
    names = [models] if isinstance(models, str) else list(models or [])
    if not names:
        raise RequestError("choose at least one model")
    canonical = tuple(dict.fromkeys(get_spec(str(m).strip()).name for m in names))
    if len(canonical) > MAX_MODELS:
        raise RequestError(f"at most {MAX_MODELS} models per search, got {len(canonical)}")
    return canonical


def _depth(depth: object) -> int | None:
    return None if depth is None else check_whole("depth", depth, 1, MAX_DEPTH)


def _weights(models: tuple[str, ...], weights: Mapping[str, float] | Sequence[float] | None):
    """The weights keyed by canonical model names (``EfficientNet-Lite0`` is
    ``efficientnet_lite0``), checked: numbers, non-negative, finite, not all zero, only models
    searched, one per model when given as a list."""
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        pairs = [(_canonical(m), w) for m, w in weights.items()]
    elif isinstance(weights, Sequence) and not isinstance(weights, str):
        if len(weights) != len(models):
            raise RequestError(f"weights: {len(models)} numbers are needed, one per model, got {len(weights)}")
        pairs = list(zip(models, weights))
    else:
        raise RequestError(f"weights must map model names to numbers, got {type(weights).__name__}")
    if any(isinstance(w, bool) or not isinstance(w, (int, float, np.number)) for _, w in pairs):
        raise RequestError("weights must be numbers")
    if len({m for m, _ in pairs}) < len(pairs):
        raise RequestError("weights: one weight per model (two names given for one model)")
    check_weights(models, dict(pairs))
    return tuple((m, float(w)) for m, w in pairs)


def parse_weights(models: Sequence[str] | str, weights: Mapping[str, float] | Sequence[float] | None) -> dict[str, float] | None:
    """Fusion weights for ``models`` (any spelling), keyed by canonical model names: the one
    reading of weights for a search and an evaluation (:class:`RequestError` or
    :class:`~cbir.errors.UnknownNameError` for a bad one; None when none are given)."""
    pairs = _weights(_models(models), weights)
    return None if pairs is None else dict(pairs)


def _canonical(name: object) -> str:
    """A model name as the registry spells it, or the name itself when it names no model
    (check_weights then says it was not searched)."""
    try:
        return get_spec(str(name)).name
    except CBIRError:
        return str(name)


def _rerank(rerank: Rerank | Mapping | None) -> Rerank:
    if rerank is None or isinstance(rerank, Rerank):
        return rerank or Rerank()
    if not isinstance(rerank, Mapping) or set(rerank) - {"method", "n", "alpha"}:
        raise RequestError("rerank is {method, n, alpha}, e.g. {\"method\": \"aqe\", \"n\": 10, \"alpha\": 3}")
    n, alpha = rerank.get("n", DEFAULT_N), rerank.get("alpha", DEFAULT_ALPHA)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) and not (isinstance(n, float) and n.is_integer()):
        raise RequestError(f"rerank n must be a whole number, got {n!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise RequestError(f"rerank alpha must be a number, got {alpha!r}")
    return Rerank(str(rerank.get("method", "none")), int(n), float(alpha))


def _feedback(feedback) -> tuple[FeedbackRound, ...]:
    """Rounds from FeedbackRound objects or {relevant: [...], non_relevant: [...]} mappings."""
    if feedback is None:
        return ()
    if isinstance(feedback, (str, Mapping)) or not isinstance(feedback, Sequence):
        raise RequestError("feedback is a list of rounds, each {relevant: [ids], non_relevant: [ids]}")
    for r in feedback:
        if isinstance(r, FeedbackRound):
            continue
        if not isinstance(r, Mapping) or set(r) - {"relevant", "non_relevant"}:
            raise RequestError("a feedback round is {relevant: [ids], non_relevant: [ids]}")
        for key in ("relevant", "non_relevant"):
            ids = r.get(key, [])
            if isinstance(ids, str) or not isinstance(ids, Sequence) or not all(isinstance(i, (str, int)) for i in ids):
                raise RequestError(f"feedback {key} must be a list of image ids")
    return tuple(feedback_rounds([r if isinstance(r, FeedbackRound) else
                                  FeedbackRound([str(i) for i in r.get("relevant", [])], [str(i) for i in r.get("non_relevant", [])])
                                  for r in feedback]))


def parse_search(
    models: Sequence[str] | str,
    metric: str = "cosine",
    top_k: int = 10,
    query: Query | None = None,
    *,
    image_id: str | None = None,
    image: bytes | np.ndarray | None = None,
    exclude_query: bool = True,
    method: str | None = None,
    weights: Mapping[str, float] | None = None,
    rerank: Rerank | Mapping | None = None,
    feedback: Sequence[FeedbackRound | Mapping] | None = None,
    backend: str | None = None,
    depth: int | None = None,
    normalisation: str | None = None,
    centre: bool = True,
) -> SearchRequest:
    """The one parser of a search, for every front end.

    Accepts model aliases, metric aliases (``l2``, ``chi2``), any case of a fusion method or a
    backend, and re-ranking as a :class:`Rerank` or a mapping. Raises
    :class:`cbir.errors.UnknownNameError` for an unknown model, metric, fusion method or
    backend, and :class:`cbir.errors.RequestError` for any other bad value (out of its bounds,
    of the wrong type, or refused with the metric: re-ranking needs cosine), with a message
    that says what to do: 422 in the API, exit 2 in the CLI."""
    with bad_request():
        return _parse(models, metric, top_k, query, image_id, image, exclude_query, method, weights, rerank, feedback,
                      backend, depth, normalisation, centre)


@contextmanager
def bad_request() -> Iterator[None]:
    """Any :class:`CBIRError` raised inside but an unknown name as a :class:`RequestError`
    (check_weights, Rerank, feedback_rounds, check_metric): one class for a bad request, so a
    search and an evaluation refuse the same value the same way (422 in the API, exit 2)."""
    try:
        yield
    except (UnknownNameError, RequestError):
        raise
    except CBIRError as exc:
        raise RequestError(str(exc)) from None


def check_run(engine: "StoreCatalogue", models: Sequence[str], metric: str, rerank: Rerank, recipe=None,
              backend: str | None = None, centre: bool = True) -> None:
    """Everything an evaluation run needs, checked before any work, the same way for the CLI
    and the API: a recipe's rules (cbir.recipes.check_recipe_run: one model, exact, no
    re-ranking), re-ranking under cosine only, then each model's store.

    ``engine``: a :class:`StoreCatalogue` (the engine is one). Raises :class:`RequestError` for a
    value refused (422, exit 2) and the store's own error for a model without features here (400,
    exit 2)."""
    from .recipes import check_recipe_run

    with bad_request():
        if recipe is not None:
            check_recipe_run(models, metric, rerank.active, backend, centre)
            return
        if rerank.active:
            check_metric(metric)
    for model in models:
        engine.store(model)  # a missing store: its error now, not after the first run's work


def _parse(models, metric, top_k, query, image_id, image, exclude_query, method, weights, rerank, feedback,
           backend, depth, normalisation=None, centre=True) -> SearchRequest:
    names = _models(models)
    metric, k = normalise_metric(metric), check_top_k(top_k)
    method = None if method is None else fusion_method(method).name  # "RRF" is rrf
    rerank, rounds = _rerank(rerank), _feedback(feedback)
    if rerank.active or rounds:
        check_metric(metric)
    return SearchRequest(
        models=names,
        query=query if query is not None else Query(image_id=image_id, image=image),
        metric=metric,
        top_k=k,
        exclude_query=bool(exclude_query),
        method=method if len(names) > 1 else None,
        weights=_weights(names, weights),
        rerank=rerank,
        feedback=rounds,
        backend=None if backend is None else check_backend(backend),
        depth=_depth(depth),
        normalisation=normalisation_method(normalisation).name,
        centre=check_flag("centre", centre),
    )


@dataclass
class SearchResponse:
    """What one :class:`SearchRequest` answers.

    ``per_model``: each model's :class:`cbir.ranking.RankedList` (top k hits with distances,
    lower is closer; P@k, R@k, AP and the PR curve when the collection is labelled);
    ``fused``: the fusion of them (``method``) when two or more models were searched;
    ``backend``: the vector index that served it (``depth``: candidates per model of an
    approximate one, whose AP is AP@depth); ``timings``: seconds per step (``decode``,
    ``load:<model>``, ``extract:<model>``, ``search:<model>``, ``fusion``, ``total``);
    ``inputs``: every model's full distance row, kept for re-fusion, never serialised;
    ``collection``: the name of the collection searched; ``centred``: whether the vectors were
    centred on the collection's mean."""

    query: Query
    metric: str
    top_k: int
    per_model: dict[str, RankedList]
    fused: RankedList | None = None
    method: str | None = None
    weights: dict[str, float] | None = None
    rerank: Rerank | None = None
    feedback_rounds: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = "exact"
    depth: int | None = None
    inputs: FusionInputs | None = field(default=None, repr=False)  # for re-fusion; not part of the JSON
    collection: str | None = None  # the name of the collection searched
    normalisation: str | None = None  # the fusion's score normalisation (average and weighted)
    centred: bool = False  # whether the vectors were centred on the collection's mean (cbir.centring)

    def to_dict(self) -> dict:
        """The JSON body the API returns (and the CLI's ``--json``, the exports)."""
        return {
            "collection": self.collection,
            "query": {"id": self.query.image_id, "label": self.query.label, "upload": self.query.is_upload},
            "metric": self.metric,
            "top_k": self.top_k,
            "models": {m: r.to_dict() for m, r in self.per_model.items()},
            "combined": None if self.fused is None else self.fused.to_dict(),
            "method": self.method,
            "weights": self.weights,
            "normalisation": self.normalisation,
            "centred": self.centred,
            "rerank": None if self.rerank is None or not self.rerank.active else {"method": self.rerank.method, "n": self.rerank.n, "alpha": self.rerank.alpha},
            "feedback_rounds": self.feedback_rounds,
            "backend": self.backend,
            "depth": self.depth,
            "timings": {k: round(v, 5) for k, v in self.timings.items()},
        }
