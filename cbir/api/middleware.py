"""ASGI middleware of the API: the client's address behind trusted proxies, request limits
enforced while the body streams in, security headers on every response, and Prometheus
request metrics.

Pure ASGI (no BaseHTTPMiddleware): the body is counted chunk by chunk, so a chunked upload
without Content-Length is refused as soon as it passes the limit, not after being read."""

from __future__ import annotations

import ipaddress
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import telemetry
from ..errors import MalformedInputError

MAX_JSON_DEPTH = 32

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
API_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Swagger UI and ReDoc load their script and styles from jsDelivr and use inline code.
DOCS_CSP = (b"default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            b"worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'self'")
DOCS_PATHS = ("/docs", "/redoc")
RETRY_AFTER_503 = b"5"


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in body:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:  # quote
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif ch in (0x5D, 0x7D):
            depth -= 1
    return deepest


def loads_bounded(text: str | bytes, what: str = "JSON"):
    """json.loads that refuses absurd nesting with a MalformedInputError (a ValueError) naming ``what``."""
    data = text.encode() if isinstance(text, str) else text
    if json_depth(data) > MAX_JSON_DEPTH:
        raise MalformedInputError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(data)


async def _send_json(send: Send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class TrustedProxies:
    """``CBIR_TRUSTED_PROXIES``: addresses and networks (``10.0.0.0/8``) whose
    X-Forwarded-For is believed, or ``*`` (any peer is a proxy)."""

    def __init__(self, value: str):
        value = value.strip()
        self.any = value == "*"
        self.hosts, self.networks = set(), []
        for item in ([] if self.any else [h.strip() for h in value.split(",") if h.strip()]):
            try:
                (self.networks.append(ipaddress.ip_network(item, strict=False)) if "/" in item
                 else self.hosts.add(ipaddress.ip_address(item)))
            except ValueError:
                self.hosts.add(item)  # a name, e.g. the test client's "testclient"

    def __contains__(self, host: str) -> bool:
        if self.any:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host in self.hosts
        return ip in self.hosts or any(ip in net for net in self.networks)


def forwarded_client(peer: str, forwarded_for: list[str], trusted: TrustedProxies) -> str:
    """The client's address: ``peer`` when it is not a trusted proxy; otherwise the
    right-most X-Forwarded-For entry that is not a trusted proxy (each proxy appends the
    address it saw; everything left of the first untrusted hop is the client's to forge).
    With ``*`` only the nearest hop is believed: the right-most entry."""
    if peer not in trusted:
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    if not hops:
        return peer
    if trusted.any:
        return hops[-1]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0]  # every hop a trusted proxy: the first one is the client


class ForwardedFor:
    """Sets the request's client to :func:`forwarded_client`, and ``request.state.proxy`` to
    the trusted proxy that relayed it (its failed logins share one budget, so a client that
    rotates X-Forwarded-For through it still meets a limit)."""

    def __init__(self, app: ASGIApp, trusted: str):
        self.app, self.trusted = app, TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            peer, port = scope["client"]
            values = [v.decode("latin1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
            client = forwarded_client(peer, values, self.trusted)
            if client != peer:
                scope["client"] = (client, 0)
                scope.setdefault("state", {})["proxy"] = peer
        await self.app(scope, receive, send)


class RequestLimits:
    """413 for a body over ``max_bytes`` (declared or streamed), 400 for JSON nested too deep."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        limit_mb = self.max_bytes // 2**20
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, f"request body too large: limit is {limit_mb} MB")
        chunks, size = [], 0
        while True:  # read (and count) the body before the app sees any of it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_json(send, 413, f"request body too large: limit is {limit_mb} MB")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype == b"application/json" and json_depth(body) > MAX_JSON_DEPTH:
            return await _send_json(send, 400, f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SecurityHeaders:
    """nosniff, DENY framing, no referrer, a CSP (a looser one for /docs), no-store on every
    JSON answer (tokens, user data), Retry-After on 503, and no ``server`` header."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else API_CSP

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                headers.append((b"content-security-policy", csp))
                ctype = dict(headers).get(b"content-type", b"")
                if ctype.startswith(b"application/json") and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                if message["status"] == 503 and b"retry-after" not in names:
                    headers.append((b"retry-after", RETRY_AFTER_503))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


class RequestMetrics:
    """Counts and latency per route template (``/api/images/{image_id}``, not each id)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            telemetry.HTTP_REQUESTS.labels(path, method, str(status[0])).inc()
            telemetry.HTTP_SECONDS.labels(path, method).observe(time.perf_counter() - start)
