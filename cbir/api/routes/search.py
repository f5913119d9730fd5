"""Search by collection id (JSON) or by an uploaded image (multipart/form-data)."""

from __future__ import annotations

import json

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ...extractors import default_model
from ...index import get_backend
from ...request import SearchRequest, parse_search
from ..deps import APIError, CurrentUser, Service
from ..middleware import loads_bounded
from ..schemas import CombinedSearchBody, ErrorBody, SearchBody
from .tools import csv_response

router = APIRouter(prefix="/api", tags=["search"])

ERRORS = {
    code: {"model": ErrorBody}
    for code in (400, 401, 404, 413, 415, 422, 503)
}
_JSON_EXAMPLES = {
    "weights": '{"efficientnet_lite0": 2}',
    "rerank": '{"method": "dba_aqe", "n": 10, "alpha": 3}',
    "feedback": '[{"relevant": ["12"], "non_relevant": ["240"]}]',
}
_UPLOAD_FIELDS = {"image": {"type": "string", "format": "binary", "description": "the query image"}}


def _openapi_body(model) -> dict:
    """Document both request forms: JSON by id, multipart with an image."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    form = {
        "type": "object",
        "properties": {
            **{k: ({"type": "string", "description": "comma-separated" if k == "models" else "JSON"} if k in ("models", "weights", "rerank", "feedback") else v)
               for k, v in schema["properties"].items()},
            **_UPLOAD_FIELDS,
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}, "multipart/form-data": {"schema": form}},
        }
    }


def _form_fields(form) -> tuple[dict, UploadFile | None]:
    """Multipart fields as the JSON body would carry them (``models`` comma-separated,
    ``weights``/``rerank``/``feedback`` as JSON text), and the uploaded file."""
    data, upload = {}, None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "image":
                raise APIError(422, f"unexpected file field {key!r}; send the image as 'image'")
            upload = value
        elif key == "models":
            data["models"] = [m for m in value.split(",") if m.strip()] or None
        elif key in _JSON_EXAMPLES:
            try:
                data[key] = loads_bounded(value, key) if value else None
            except json.JSONDecodeError:
                raise APIError(422, f"{key} must be JSON, e.g. " + _JSON_EXAMPLES[key]) from None
            except ValueError as exc:  # nested too deep
                raise APIError(400, str(exc)) from None
        else:
            data[key] = value
    return data, upload


def search_input(model):
    """The one dependency reading a search: a JSON body (query by id) or multipart with a
    file ``image``; validated by the same pydantic model. (Body size and JSON depth are
    bounded by the middleware before this runs.)"""

    async def read(request: Request) -> SearchRequest:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload = None
        if ctype == "application/json":
            try:
                data = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise APIError(400, "request body is not valid JSON") from None
            if not isinstance(data, dict):
                raise APIError(422, "request body must be a JSON object")
        elif ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=16)
            except Exception as exc:
                raise APIError(400, f"malformed multipart body: {exc}") from None
            data, upload = _form_fields(form)
        else:
            raise APIError(415, "send application/json (query by image_id) or multipart/form-data (query by image)")
        try:
            params = model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise APIError(422, f"{where}: {first['msg']}" if where else first["msg"]) from None
        image = await upload.read() if upload is not None else None
        if (params.image_id is None) == (image is None):
            raise APIError(422, "give exactly one query: image_id, or an uploaded image")
        return to_request(params, image)

    return read


def to_request(params, image: bytes | None) -> SearchRequest:
    """The body's fields through the engine's one parser (aliases, bounds, names)."""
    return parse_search(
        params.models or [default_model()], params.metric, params.top_k, image_id=params.image_id, image=image,
        exclude_query=params.exclude_query, method=getattr(params, "method", None), weights=getattr(params, "weights", None),
        rerank=params.rerank.model_dump() if params.rerank else None, feedback=params.feedback,
        backend=params.backend, depth=params.depth, normalisation=getattr(params, "normalisation", None),
        centre=params.centre,
    )


INLINE_MAX_IMAGES = 20_000


async def _dispatch(service, request: SearchRequest) -> dict:
    """Searches by id over small stores take about a millisecond: run them on the event
    loop (a thread hop costs more). Uploads (decoding, a CNN) and big stores go to threads."""
    engine = service.engine
    plan = engine.plan(request)  # once: the backend decides here, and the cache key and the search reuse it
    inline = (not request.query.is_upload and len(engine.collection) <= INLINE_MAX_IMAGES and request.rerank.method != "dba_aqe"
              and get_backend(plan.backend).exact)
    if inline:
        return service.search(request, plan=plan).body
    return (await run_in_threadpool(lambda: service.search(request, plan=plan))).body


@router.post("/search", responses=ERRORS, openapi_extra=_openapi_body(SearchBody), summary="Search with one or more models")
async def search(service: Service, user: CurrentUser, search_request: Annotated[SearchRequest, Depends(search_input(SearchBody))],
                 format: Annotated[Literal["json", "csv"], Query(description="csv: one row per hit, with the parameters")] = "json") -> dict:
    """Per model: ranked results (id, score, label, relevant), P@k, R@k, AP, PR points and time taken."""
    result = await _dispatch(service, search_request)
    return csv_response(result) if format == "csv" else JSONResponse(result)


@router.post(
    "/search_combined", responses=ERRORS, openapi_extra=_openapi_body(CombinedSearchBody),
    summary="Search several models and fuse them (average, weighted, rrf)",
)
async def search_combined(service: Service, user: CurrentUser,
                          search_request: Annotated[SearchRequest, Depends(search_input(CombinedSearchBody))]) -> dict:
    """Each model's results plus the fused ranking under ``combined``."""
    if len(search_request.models) < 2:
        raise APIError(422, "combined search needs at least two models")
    return JSONResponse(await _dispatch(service, search_request))
