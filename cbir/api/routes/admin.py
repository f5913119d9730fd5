"""Users and the authentication log (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import AdminUser, Users, client_source
from ..schemas import AddUserRequest, ErrorBody, UpdateUserRequest

router = APIRouter(prefix="/api", tags=["users"])
ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}


@router.post("/add_user", status_code=201, responses=ERRORS, summary="Create a user (admins only)")
def add_user(body: AddUserRequest, admin: AdminUser, users: Users, request: Request) -> dict:
    user = users.create(body.username, body.password, body.role, body.name, body.email, actor=admin.username, source=client_source(request))
    return {"user": user.to_dict()}


@router.patch("/users/{username}", responses=ERRORS, summary="Change a user's role, disable or enable them (admins only)")
def update_user(username: str, body: UpdateUserRequest, admin: AdminUser, users: Users, request: Request) -> dict:
    """403 for your own account (another admin can); 400 for a missing user."""
    source = client_source(request)
    if body.role is not None:
        users.set_role(username, body.role, actor=admin.username, source=source)
    if body.disabled is not None:
        users.set_disabled(username, body.disabled, actor=admin.username, source=source)
    user = users.get(username)
    return {"user": user.to_dict() if user else None}


@router.get("/auth_log", responses=ERRORS, summary="Recent logins, failures, logouts and user changes (admins only)")
def auth_log(admin: AdminUser, users: Users, limit: int = 100) -> dict:
    return {"entries": users.auth_log(max(1, min(limit, 1000)))}
