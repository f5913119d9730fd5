"""Research tools over HTTP: the fusion weight sweep, features import, and search results
as CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...distances import METRIC_ALIASES, METRICS
from ...evaluation import TIE_RULES
from ...fusion import NORMALISATIONS, FUSIONS
from ...errors import CBIRError
from ...extractors import get_spec
from ...tuning import DEFAULT_STEP, MODELS_RANGE, STEP_RANGE, SWEEP_METHODS
from ..deps import APIError, CurrentUser, Service, Users, client_source
from ..jobs import run_job
from ..schemas import CENTRE_HELP, ErrorBody, RerankParams

router = APIRouter(prefix="/api", tags=["research"])
ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}}
IMPORT_ERRORS = {**ERRORS, 409: {"model": ErrorBody}, 413: {"model": ErrorBody}}
JOB_ERRORS = {**ERRORS, 429: {"model": ErrorBody, "description": "the user's long jobs are all running (Retry-After)"}}


class TuneWeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=MODELS_RANGE[0], max_length=MODELS_RANGE[1])
    method: Literal[SWEEP_METHODS] = "weighted"
    step: float = Field(DEFAULT_STEP, ge=STEP_RANGE[0], le=STEP_RANGE[1], allow_inf_nan=False,
                        description="grid step on the weight simplex; must divide 1")
    metric: str = Field("cosine", max_length=32, description=f"one of {', '.join(METRICS)} (aliases: {', '.join(METRIC_ALIASES)})")
    centre: bool = Field(True, description=CENTRE_HELP)

    @field_validator("step")
    @classmethod
    def _divides_one(cls, step: float) -> float:
        """The engine's own check (a plain 422 before a job slot is taken)."""
        from ...tuning import check_step

        try:
            return check_step(step)
        except CBIRError as exc:
            raise ValueError(str(exc)) from None


@router.post("/tune_weights", responses=JOB_ERRORS, summary="mAP and P@20 of fusion over a grid of weights (2-3 models)")
async def tune_weights(request: Request, service: Service, user: CurrentUser, body: TuneWeightsRequest) -> dict:
    """Every labelled image as a query; each model's distance matrix computed once. Bounded by
    CBIR_SWEEP_MAX_WORK (422), CBIR_JOBS_PER_USER at once (429), stopped if the client goes."""
    from ...tuning import sweep_weights

    result = await run_job(request, user, lambda progress: sweep_weights(
        service.engine, body.models, body.method, body.step, body.metric, progress, centre=body.centre))
    return result.to_dict()


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1, max_length=MODELS_RANGE[1], description="one model, or 2-3 fused")
    metric: str = Field("cosine", max_length=32, description=f"one of {', '.join(METRICS)} (aliases: {', '.join(METRIC_ALIASES)})")
    method: Literal[tuple(FUSIONS)] = "average"
    ties: Literal[TIE_RULES] = Field("stable", description="stable: equal distances in collection order; average: tie-aware")
    queries: int | None = Field(None, ge=1, description="a seeded sample of this many queries (default: every labelled image)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the queries sample")
    normalisation: Literal[tuple(NORMALISATIONS)] = Field("minmax", description="score normalisation of an average or weighted fusion")
    recipe: str | None = Field(None, max_length=120, description=(
        "describe every labelled image now under this descriptor recipe instead of reading the store (one model, cosine): "
        "a preset (today, centred, category, near_duplicate) or pooling[,scales=A+B][,flip][,sqrt][,centre][,pca=D]"))
    centre: bool = Field(True, description=CENTRE_HELP)
    weights: dict[str, float] | None = Field(None, max_length=MODELS_RANGE[1], description=(
        "per-model weights of a weighted fusion (0, or 1e-6 to 1e6: only their ratios count; a model left out weighs 1)"))
    rerank: RerankParams | None = Field(None, description="re-ranking (cosine, stored vectors; not with a recipe)")
    compare: list["CompareRun"] | None = Field(None, max_length=4, description=(
        "runs to compare with this one on the same queries: each changes some of models, metric, method, normalisation, "
        "recipe, centre, weights, rerank; "
        "the answer's comparisons give the paired difference in mAP, its 95% bootstrap interval and a paired "
        "randomisation test's p-value"))


class CompareRun(BaseModel):
    """A run compared with the evaluation's: the fields given replace the evaluation's."""

    model_config = ConfigDict(extra="forbid")
    models: list[str] | None = Field(None, min_length=1, max_length=MODELS_RANGE[1])
    metric: str | None = Field(None, max_length=32)
    method: Literal[tuple(FUSIONS)] | None = None
    normalisation: Literal[tuple(NORMALISATIONS)] | None = None
    recipe: str | None = Field(None, max_length=120, description="a descriptor recipe; \"store\": the stored vectors")
    centre: bool | None = Field(None, description="centre on the collection's mean (cosine, Euclidean)")
    weights: dict[str, float] | None = Field(None, max_length=MODELS_RANGE[1], description=(
        "per-model weights of a weighted fusion; a run that changes the models and gives none keeps the evaluation's "
        "only if they name none but its models"))
    rerank: RerankParams | None = Field(None, description=(
        "re-ranking: the fields given replace the evaluation's ({\"alpha\": 1} keeps its method and n); "
        "{\"method\": \"none\"}: none"))


EvaluateRequest.model_rebuild()


def _checked_run(engine, run: dict) -> dict:
    """An evaluation run as the engine takes it, checked before any work: models by their
    canonical names (each with a store here: 400 otherwise), the metric by its canonical name,
    weights read as a search reads them, re-ranking a :class:`Rerank` (cosine only), and
    ``recipe`` parsed (None: the store's vectors) under cbir.recipes.check_recipe_run's rules (422)."""
    from ...distances import normalise_metric
    from ...recipes import parse_recipe
    from ...request import bad_request, check_run, parse_weights
    from ...rerank import Rerank

    with bad_request():
        models = list(dict.fromkeys(get_spec(m).name for m in run["models"]))
        metric, rerank = normalise_metric(run["metric"]), Rerank(**run["rerank"]) if run.get("rerank") else Rerank()
        weights, text = parse_weights(models, run.get("weights")), run.get("recipe")
        recipe = parse_recipe(text) if text is not None and text.strip().lower() not in ("", "store") else None
    check_run(engine, models, metric, rerank, recipe, centre=run.get("centre", True))
    return {**run, "models": models, "metric": metric, "weights": weights, "rerank": rerank, "recipe": recipe}


def _compared_run(base: dict, run: CompareRun) -> dict:
    """A compared run: the evaluation's settings with those ``run`` gives. Its ``rerank`` fields
    replace the evaluation's one by one (``{"alpha": 1}`` keeps its method and n); a recipe takes
    its own centring; a run that changes the models and gives no weights keeps the evaluation's
    only if they name none but its models (equal weights otherwise), as ``cbir evaluate --compare``."""
    from ...request import parse_weights

    given = run.model_dump(exclude_unset=True, exclude_none=True)
    out = {**base, **({"centre": True} if run.recipe else {}), **given}
    if "rerank" in given:
        out["rerank"] = {**(base["rerank"] or {}), **given["rerank"]}
    if "models" in given and "weights" not in given and base["weights"]:
        try:
            parse_weights(given["models"], base["weights"])
        except CBIRError:
            out["weights"] = None
    return out


def _planned_runs(engine, body: EvaluateRequest) -> list[dict]:
    """The evaluation's run and one per compared run, every one checked before any work; a
    compared run's refusal names it (``compare[k]: ...``) with the status its error has."""
    from ...errors import contract_for
    from ...experiments import CHANGES_NOTHING, effective_run

    base = body.model_dump(include={"models", "metric", "method", "normalisation", "recipe", "centre", "weights", "rerank"})
    runs = [_checked_run(engine, base)]
    for k, run in enumerate(body.compare or []):
        try:
            runs.append(_checked_run(engine, _compared_run(base, run)))
            same = effective_run(runs[-1]) == effective_run(runs[0])
        except CBIRError as exc:
            raise APIError(contract_for(exc).status, f"compare[{k}]: {exc.said_to('api')}") from None
        if same:
            raise APIError(422, f"compare[{k}] {CHANGES_NOTHING}")
    return runs


@router.post("/evaluate", responses=JOB_ERRORS, summary="mAP, P@10, P@20, R-precision and per-class AP over the collection")
async def evaluate_route(request: Request, service: Service, user: CurrentUser, body: EvaluateRequest) -> dict:
    """Every labelled image as a query against the rest (`cbir evaluate`). Queries with no other
    image of their class are left out of the figures and counted (``singleton_queries_left_out``);
    ``ties`` counts tied groups that mixed relevant and non-relevant images. A long job:
    CBIR_JOBS_PER_USER at once (429), stopped if the client goes."""
    engine = service.engine
    runs = await run_in_threadpool(_planned_runs, engine, body)  # (a store is read to check it)

    def work(progress):
        from ...recipes import evaluate_recipe
        from ...significance import compare

        reports = []
        for i, run in enumerate(runs):
            step = (lambda done, total, i=i: progress(i * total + done, len(runs) * total))
            if run["recipe"] is not None:
                reports.append(evaluate_recipe(engine, run["models"][0], run["recipe"], step, ties=body.ties, metric=run["metric"],
                                               queries=body.queries, seed=body.seed))
                continue
            fused = len(run["models"]) > 1
            reports.append(engine.evaluate(run["models"], run["metric"], method=run["method"] if fused else None,
                                           weights=run["weights"] if fused else None, rerank=run["rerank"],
                                           progress=step, queries=body.queries, seed=body.seed, ties=body.ties,
                                           normalisation=run["normalisation"], centre=run["centre"]))
        body_out = reports[0].to_dict()
        if len(reports) > 1:
            body_out["comparisons"] = [{**compare(reports[0], other).to_dict(), "report": other.to_dict()} for other in reports[1:]]
        return body_out

    return await run_job(request, user, work)


@router.post("/import_features", status_code=201, responses=IMPORT_ERRORS,
             summary="Import features computed elsewhere as the model imported:NAME (researchers and admins)")
async def import_features_route(service: Service, user: CurrentUser, users: Users, request: Request,
                                name: Annotated[str, Form(max_length=48)],
                                file: Annotated[UploadFile, File(description=".npz, .npy, .parquet, .csv or a .pkl list of (path, vector)")],
                                replace: Annotated[bool, Form(description="overwrite an existing imported:NAME (its owner or an admin)")] = False) -> dict:
    """The file's keys are matched to the collection by id, relative path or file name;
    bigger files than the upload limit go through `cbir import-features`. Sizes over the
    CBIR_IMPORT_MAX_* limits are 413; an existing name without replace is 409."""
    from ...importing import ImportLimits, Importer, import_upload

    if user.role not in ("admin", "researcher"):
        raise APIError(403, f"only researchers and admins may import features (you are {user.role})")
    engine = service.engine
    limits = ImportLimits.from_settings(engine.settings, len(engine.collection))
    report = await run_in_threadpool(import_upload, await file.read(), file.filename, name, engine.collection, engine.settings.features_dir,
                                     limits=limits, by=Importer(user.username, admin=user.role == "admin"), replace=replace)
    users.log("features_imported", report.model, client_source(request), "replaced" if report.replaced else "created", user.username)
    return {"model": report.model, "vectors": report.vectors, "dim": report.dim, "unmatched": report.unmatched[:100],
            "unmatched_count": len(report.unmatched), "missing_count": len(report.missing), "replaced": report.replaced,
            "summary": report.summary()}


@router.delete("/import_features/{name}", responses=IMPORT_ERRORS,
               summary="Delete the imported model imported:NAME (its owner or an admin)")
async def delete_imported_route(service: Service, user: CurrentUser, users: Users, request: Request, name: str) -> dict:
    """403 for anyone but the user who imported it and admins; 400 for a model that does not exist."""
    from ...importing import Importer, delete_imported

    engine = service.engine
    model = await run_in_threadpool(delete_imported, name, engine.collection, engine.settings.features_dir,
                                    Importer(user.username, admin=user.role == "admin"))
    users.log("features_deleted", model, client_source(request), "ok", user.username)
    return {"deleted": model}


def csv_response(result: dict) -> Response:
    from ...export import search_csv

    return Response(search_csv(result), media_type="text/csv", headers={"Content-Disposition": "attachment; filename=search.csv"})
