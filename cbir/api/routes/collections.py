"""The collections the server knows (``cbir.collection_registry``): list them (everyone),
add one from a folder on the server (researchers and admins), remove one (admins). Every
other route takes ``?collection=NAME`` (default: the default collection)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from ...collection_registry import describe
from ..deps import AdminUser, APIError, CurrentUser, Users, client_source
from ..schemas import ErrorBody

router = APIRouter(prefix="/api", tags=["collections"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422)}


class AddCollectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, description="1-64 letters, digits, '_', '.' or '-'")
    folder: str = Field(min_length=1, max_length=4096, description="a folder of images inside CBIR_COLLECTIONS_ROOT "
                        "(absolute, or relative to it)")


def _row(registry, entry, role: str) -> dict:
    row = describe(registry, entry)
    if role != "admin":  # where the server keeps its files is an admin's business
        row.pop("folder")
        row["error"] = row["error"] and "the collection folder cannot be read"
    return row


@router.get("/collections", responses=ERRORS, summary="Every collection: name, images, labels, models indexed")
async def list_collections(request: Request, user: CurrentUser) -> dict:
    registry = request.app.state.services.registry
    rows = await run_in_threadpool(lambda: [_row(registry, e, user.role) for e in registry.entries().values()])
    return {"collections": rows}


@router.post("/collections", status_code=201, responses=ERRORS, summary="Add a folder of the server as a collection (researchers and admins)")
async def add_collection(request: Request, user: CurrentUser, users: Users, body: AddCollectionRequest) -> dict:
    if user.role not in ("admin", "researcher"):
        raise APIError(403, f"only researchers and admins may add collections (you are {user.role})")
    registry = request.app.state.services.registry
    entry = await run_in_threadpool(lambda: registry.add(body.name, body.folder, f"api:{user.username}", confined=True))
    users.log("collection_added", entry.name, client_source(request), "ok", user.username)
    return {"collection": _row(registry, entry, user.role)}


@router.delete("/collections/{name}", responses=ERRORS, summary="Remove a collection and its feature stores (admins)")
async def remove_collection(request: Request, admin: AdminUser, users: Users, name: str) -> dict:
    services = request.app.state.services
    entry = await run_in_threadpool(services.registry.remove, name)
    services.forget(entry.name)
    users.log("collection_removed", entry.name, client_source(request), "ok", admin.username)
    return {"removed": entry.name, "images_deleted": entry.uploaded}
