"""The collection's images: a paged list, files, thumbnails, the 2-D feature map, and why two
images match (explain maps)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from ...errors import CollectionError
from ...maps import MAP_METHODS, embedding_map, map_cached
from ..deps import APIError, CurrentUser, Service
from ..jobs import run_job
from ..schemas import CENTRE_HELP, ErrorBody

router = APIRouter(prefix="/api", tags=["collection"])


@router.get("/available_images", responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}}, summary="Collection images, paged")
def available_images(
    service: Service,
    user: CurrentUser,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    label: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(max_length=200, description="id, file name or label contains this (case-insensitive)")] = None,
) -> dict:
    c = service.engine.collection
    rows = [i for i in c.matching_rows(q or "") if label is None or (c.labels and c.labels[i] == label)]
    page = rows[offset : offset + limit]
    return {
        "total": len(rows),
        "offset": offset,
        "limit": limit,
        "labels": sorted(c.class_counts()),
        "items": [{"id": c.ids[i], "label": c.labels[i] if c.labels else None, "url": f"/api/images/{quote(c.ids[i], safe='/')}"} for i in page],
    }


@router.get(
    "/images/{image_id:path}",
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 200: {"content": {"image/*": {}}}},
    summary="An image file of the collection (or a JPEG thumbnail with ?thumb=SIZE)",
)
def image(service: Service, user: CurrentUser, image_id: str, thumb: Annotated[int | None, Query(ge=16, le=1024)] = None):
    c = service.engine.collection
    try:
        path = c.path_of(image_id)  # ids come from the scan: no path from the request touches the disk
    except CollectionError as exc:
        raise APIError(404, str(exc)) from None
    if thumb is None:  # served as it is, once its header says it is an image (and which)
        return FileResponse(path, media_type=_image_type(path), headers={"Cache-Control": "private, max-age=3600"})
    from ...images import thumbnail_jpeg

    return Response(thumbnail_jpeg(path, thumb, square=False), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/map", responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 422: {"model": ErrorBody},
                                429: {"model": ErrorBody, "description": "the user's long jobs are all running (Retry-After)"}},
            summary="2-D map of one model's features (PCA, UMAP, t-SNE), computed once per store version")
async def feature_map(
    request: Request,
    service: Service,
    user: CurrentUser,
    model: Annotated[str | None, Query(max_length=80)] = None,
    method: Annotated[Literal[MAP_METHODS], Query()] = "pca",
    n_neighbors: Annotated[int | None, Query(ge=2, le=200, description="UMAP")] = None,
    min_dist: Annotated[float | None, Query(ge=0, le=1, description="UMAP")] = None,
    perplexity: Annotated[float | None, Query(ge=2, le=100, description="t-SNE")] = None,
    centre: Annotated[bool, Query(description="map the features centred on the collection's mean, as a default "
                                              "search sees them; false: as stored")] = True,
) -> dict:
    from ...extractors import default_model

    given = {"n_neighbors": n_neighbors, "min_dist": min_dist, "perplexity": perplexity}
    params = {k: v for k, v in given.items() if v is not None}
    model = model or default_model()
    # a fit counts against CBIR_JOBS_PER_USER and stops if the client goes; a cached map is only read
    fit = not await run_in_threadpool(map_cached, service.engine, model, method, params, centre)
    emap = await run_job(request, user, lambda progress: embedding_map(service.engine, model, method, params, progress, centre),
                         limited=fit)
    c = service.engine.collection
    return {**emap.to_dict(), "labels": [c.label_of(i) if i in c else None for i in emap.ids]}


ExplainFormat = Annotated[Literal["png", "json"], Query(description="png: the pair with both maps overlaid; json: the maps as arrays")]
ExplainModel = Annotated[str | None, Query(max_length=80, description="a model this server extracts; default: the default model")]
EXPLAIN_RESPONSES = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody},
                     200: {"content": {"image/png": {}, "application/json": {}}}}


def _explained(service, model: str | None, result: str, image_id: str | None = None, image: bytes | None = None,
               format: str = "png", centre: bool = True) -> Response:
    """One explanation (a CNN pass over two images: run in a thread) as PNG or JSON."""
    from ...explain import png, render
    from ...extractors import default_model

    explanation, query_image, result_image = service.engine.explain(model or default_model(), result, image_id=image_id, image=image,
                                                                                centre=centre)
    body = {**explanation.to_dict(), "query": image_id, "result": result}
    if format == "json":
        return JSONResponse(body)
    pairs = "; ".join(f"{q[0]},{q[1]}>{r[0]},{r[1]}" for q, r, _ in explanation.pairs)
    return Response(png(render(explanation, query_image, result_image)), media_type="image/png",
                    headers={"X-CBIR-Similarity": f"{explanation.similarity:.6f}", "X-CBIR-Pairs": pairs,
                             "X-CBIR-Centred": "true" if explanation.centred else "false", "Cache-Control": "private, max-age=3600"})


@router.get("/explain", responses=EXPLAIN_RESPONSES, summary="Why did this match? Where a query and a result agree (heatmaps)")
async def explain(service: Service, user: CurrentUser, query: Annotated[str, Query(max_length=512, description="the query's collection id")],
                  result: Annotated[str, Query(max_length=512, description="the result's collection id")],
                  model: ExplainModel = None, format: ExplainFormat = "png",
                  centre: Annotated[bool, Query(description=CENTRE_HELP)] = True) -> Response:
    """Each location of the query's final feature map against the result's descriptor, and the
    reverse, as heatmaps over both images, with the best-matching location pairs (numbered
    lines). The maps split the pooled descriptors' cosine similarity exactly: each map's mean is
    ``similarity`` (JSON; the PNG's ``X-CBIR-Similarity`` header): centred on the collection's
    mean unless ``centre=false``, as a default search ranks by."""
    return await run_in_threadpool(_explained, service, model, result, query, None, format, centre)


@router.post("/explain", responses=EXPLAIN_RESPONSES, summary="Why did this match? An uploaded query against a collection image")
async def explain_upload(service: Service, user: CurrentUser,
                         image: Annotated[UploadFile, File(description="the query image (JPEG, PNG, ...)")],
                         result: Annotated[str, Form(max_length=512, description="the result's collection id")],
                         model: Annotated[str | None, Form(max_length=80)] = None,
                         format: Annotated[Literal["png", "json"], Form()] = "png",
                         centre: Annotated[bool, Form(description=CENTRE_HELP)] = True) -> Response:
    """As ``GET /api/explain``, with the query uploaded as multipart field ``image``."""
    data = await image.read()
    return await run_in_threadpool(_explained, service, model, result, None, data, format, centre)


def _image_type(path) -> str:
    """The MIME type of the image file at ``path`` from its header (Pillow reads no pixels);
    404 when it is no image Pillow knows (a file renamed .jpg is not served as one)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return Image.MIME.get(im.format or "", "application/octet-stream")
    except Exception:
        raise APIError(404, "this collection file is not an image") from None
