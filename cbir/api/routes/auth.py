"""Login (a bearer token, rate-limited per client) and logout."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security.utils import get_authorization_scheme_param

from ..deps import APIError, CurrentUser, Users, client_host, client_proxy, client_source
from ..schemas import ErrorBody, LoginRequest, TokenResponse

router = APIRouter(prefix="/api", tags=["auth"])
ERRORS = {401: {"model": ErrorBody}, 422: {"model": ErrorBody}, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}}


@router.post("/login", response_model=TokenResponse, responses=ERRORS, summary="Exchange a password for a bearer token")
async def login(body: LoginRequest, users: Users, request: Request) -> TokenResponse:
    source, via = client_source(request), client_proxy(request)
    wait = users.login_allowed(source)
    if wait:
        raise APIError(429, f"too many login attempts from {client_host(request)}: retry in {wait} s", {"Retry-After": str(wait)})
    wait = users.proxy_wait(via)
    if wait:
        raise APIError(429, f"too many failed logins through this proxy: retry in {wait} s", {"Retry-After": str(wait)})
    # bcrypt is deliberately slow: keep it off the event loop
    user = await run_in_threadpool(users.authenticate, body.username, body.password, source, via)
    token = users.issue_token(user.username)
    return TokenResponse(access_token=token, expires_in=users.token_ttl, username=user.username, role=user.role)


@router.post("/logout", responses=ERRORS, summary="Revoke the current token")
def logout(user: CurrentUser, users: Users, request: Request) -> dict:
    _, token = get_authorization_scheme_param(request.headers.get("authorization"))
    users.revoke_token(token)
    users.log("logout", user.username, client_source(request))
    return {"status": "logged out"}
