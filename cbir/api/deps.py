"""Shared handles (engine, search service, user store) injected into routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..service import SearchService
from ..auth.records import User
from ..auth.users import UserStore


class APIError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)


def get_default_service(request: Request) -> SearchService:
    """The default collection's service, for the routes that need no login (``/ready``)."""
    return request.app.state.services.default


def get_users(request: Request) -> UserStore:
    return request.app.state.users


bearer = HTTPBearer(auto_error=False, description="token from POST /api/login")


async def current_user(
    request: Request,
    users: Annotated[UserStore, Depends(get_users)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    # Async on purpose: two loopback Redis round trips cost less than a thread hop.
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise APIError(401, "missing bearer token: POST /api/login first", {"WWW-Authenticate": "Bearer"})
    user = users.user_for_token(creds.credentials)
    if user is None:
        raise APIError(401, "token expired or invalid: log in again", {"WWW-Authenticate": "Bearer"})
    request.state.role = user.role  # error messages show server paths to admins only
    return user


def get_service(request: Request, user: Annotated[User, Depends(current_user)], collection: Annotated[str | None, Query(
        max_length=64, description="a collection's name (GET /api/collections); default: the default collection")] = None,
) -> SearchService:
    """The search service of the collection the request names (``?collection=NAME``), once the
    caller is authenticated: an anonymous request neither learns which names exist nor makes
    the server scan a collection (the 401 comes first)."""
    return request.app.state.services.get(collection)


async def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != "admin":
        raise APIError(403, f"only admins may do this (you are {user.role})")
    return user


def client_host(request: Request) -> str:
    """The client's address. X-Forwarded-For is applied by the ForwardedFor middleware (the
    right-most hop that is not a proxy listed in CBIR_TRUSTED_PROXIES)."""
    return request.client.host if request.client else ""


def client_proxy(request: Request) -> str:
    """The trusted proxy that relayed the request, or "" for a direct connection."""
    proxy = getattr(request.state, "proxy", "")
    return f"api:{proxy}" if proxy else ""


def client_source(request: Request) -> str:
    return f"api:{client_host(request)}"


Service = Annotated[SearchService, Depends(get_service)]
DefaultService = Annotated[SearchService, Depends(get_default_service)]
Users = Annotated[UserStore, Depends(get_users)]
CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
