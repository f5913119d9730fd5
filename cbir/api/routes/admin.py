"""Users and the authentication log (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import AdminUser, Users, client_source
from ..schemas import AddUserRequest, ErrorBody

router = APIRouter(prefix="/api", tags=["users"])
ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}


@router.post("/add_user", status_code=201, responses=ERRORS, summary="Create a user (admins only)")
def add_user(body: AddUserRequest, admin: AdminUser, users: Users, request: Request) -> dict:
    user = users.create(body.username, body.password, body.role, body.name, body.email, actor=admin.username, source=client_source(request))
    return {"user": user.to_dict()}


@router.get("/auth_log", responses=ERRORS, summary="Recent logins, failures, logouts and user changes (admins only)")
def auth_log(admin: AdminUser, users: Users, limit: int = 100) -> dict:
    return {"entries": users.auth_log(max(1, min(limit, 1000)))}
