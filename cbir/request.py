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
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .distances import normalise_metric
from .errors import RequestError, unknown
from .extractors import get_spec
from .fusion import FUSION_METHODS, check_weights
from .index import check_backend
from .ranking import FusionInputs, RankedList
from .rerank import FeedbackRound, Rerank, check_metric, feedback_rounds

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

    @property
    def weight_map(self) -> dict[str, float] | None:
        return None if self.weights is None else dict(self.weights)

    def cache_fields(self, default_backend: str) -> dict:
        """Everything that decides the response, as JSON-able values (the result cache's key)."""
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
            "backend": self.backend or default_backend,
            "depth": self.depth,
        }


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int in 1..MAX_TOP_K; :class:`RequestError` otherwise."""
    if isinstance(top_k, bool):
        raise RequestError(f"top_k must be an integer, got {top_k!r}")
    try:
        k = int(top_k)
    except (TypeError, ValueError):
        raise RequestError(f"top_k must be an integer, got {top_k!r}") from None
    if k != top_k and not isinstance(top_k, str):
        raise RequestError(f"top_k must be an integer, got {top_k!r}")
    if not 1 <= k <= MAX_TOP_K:
        raise RequestError(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
    return k


def _models(models: Sequence[str] | str) -> tuple[str, ...]:
    names = [models] if isinstance(models, str) else list(models or [])
    if not names:
        raise RequestError("choose at least one model")
    canonical = tuple(dict.fromkeys(get_spec(str(m).strip()).name for m in names))
    if len(canonical) > MAX_MODELS:
        raise RequestError(f"at most {MAX_MODELS} models per search, got {len(canonical)}")
    return canonical


def _depth(depth: object) -> int | None:
    if depth is None:
        return None
    try:
        d = int(depth)
    except (TypeError, ValueError):
        raise RequestError(f"depth must be an integer, got {depth!r}") from None
    if not 1 <= d <= MAX_DEPTH:
        raise RequestError(f"depth must be between 1 and {MAX_DEPTH:,}, got {d}")
    return d


def _weights(models: tuple[str, ...], weights: Mapping[str, float] | Sequence[float] | None):
    """The weights as given, checked (non-negative, finite, not all zero, only models searched)."""
    if weights is None:
        return None
    check_weights(models, weights)
    pairs = weights.items() if isinstance(weights, Mapping) else zip(models, weights)
    return tuple((str(m), float(w)) for m, w in pairs)


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
) -> SearchRequest:
    """The one parser of a search, for every front end.

    Accepts model aliases, metric aliases (``l2``, ``chi2``) and re-ranking as a
    :class:`Rerank` or a mapping. Raises :class:`cbir.errors.UnknownNameError` for an
    unknown model, metric, fusion method or backend and :class:`cbir.errors.CBIRError` for
    any other bad value, with a message that says what to do; :class:`cbir.errors.RequestError` for
    a value out of its bounds."""
    names = _models(models)
    metric, k = normalise_metric(metric), check_top_k(top_k)
    if method is not None and method not in FUSION_METHODS:
        raise unknown("fusion method", method, FUSION_METHODS)
    if isinstance(rerank, Mapping):
        rerank = Rerank(**rerank)
    rerank = rerank or Rerank()
    rounds = tuple(feedback_rounds(feedback))
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
    ``inputs``: every model's full distance row, kept for re-fusion, never serialised."""

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

    def to_dict(self) -> dict:
        """The JSON body the API returns (and the CLI's ``--json``, the exports)."""
        return {
            "query": {"id": self.query.image_id, "label": self.query.label, "upload": self.query.is_upload},
            "metric": self.metric,
            "top_k": self.top_k,
            "models": {m: r.to_dict() for m, r in self.per_model.items()},
            "combined": None if self.fused is None else self.fused.to_dict(),
            "method": self.method,
            "weights": self.weights,
            "rerank": None if self.rerank is None or not self.rerank.active else {"method": self.rerank.method, "n": self.rerank.n, "alpha": self.rerank.alpha},
            "feedback_rounds": self.feedback_rounds,
            "backend": self.backend,
            "depth": self.depth,
            "timings": {k: round(v, 5) for k, v in self.timings.items()},
        }
