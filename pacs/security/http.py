"""HTTP side of security: the authentication middleware (who is calling) and the route guard
(may they, and the audit record of what they did). Route tables name the operation of each
route; nothing else decides access."""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb.errors import http_status
from pacs import errors
from pacs.audit.trail import Action, AuditEvent, Outcome
from pacs.security.authn import csrf_token
from pacs.security.policy import Operation, authorize
from pacs.security.principal import Principal, open_principal
from pacs.threads import run_blocking
from viewer_static.routes import is_api_path, is_viewer_asset

SESSION_COOKIE = "minipacs_session"
CSRF_COOKIE = "minipacs_csrf"
CSRF_HEADER = "x-csrf-token"
# Reachable without a credential: the health check, the login page and call, static assets.
# /api/openapi.json describes the API (no patient data) for tools that fetch it without a credential.
PUBLIC_PATHS = frozenset({"/health", "/login", "/api/login", "/api/openapi.json"})
PUBLIC_PREFIXES = ("/static/",)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

AUDIT_ACTION: dict[Operation, Action] = {
    Operation.SEARCH: Action.SEARCH,
    Operation.READ: Action.READ,
    Operation.EXPORT: Action.EXPORT,
    Operation.STORE: Action.STORE,
    Operation.DELETE: Action.DELETE,
    Operation.MANAGE_USERS: Action.ADMIN,
    Operation.MANAGE_AES: Action.ADMIN,
    Operation.READ_AUDIT: Action.AUDIT,
    Operation.OWN_TOKENS: Action.ADMIN,
    Operation.READ_ORDERS: Action.READ,
    Operation.WRITE_ORDERS: Action.ORDER,
    Operation.REVIEW_RECONCILIATION: Action.SEARCH,
    Operation.RECONCILE: Action.ORDER,
    Operation.PERFORM_WORKITEMS: Action.ORDER,
    Operation.EXPORT_ORDERS: Action.EXPORT,
    Operation.READ_HL7_LOG: Action.READ,
    Operation.MANAGE_REFERENCE: Action.ADMIN,
}

Endpoint = Callable[[Request], Response | Awaitable[Response]]


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def principal_of(request: Request) -> Principal:
    principal = request.scope.get("principal")
    if principal is None:  # a guarded route behind no middleware would be a wiring mistake
        raise errors.NotAuthenticated("authentication required")
    return principal


class AuthenticationMiddleware:
    """Puts the caller's Principal in scope["principal"], or answers 401 / 429 / 403 (CSRF)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        address = client_address(scope)
        path: str = scope["path"]
        if services.settings.auth == "off":
            scope["principal"] = open_principal(address)
        elif not (is_public(path) or scope["method"] == "OPTIONS"):
            try:
                scope["principal"] = await _authenticate(services, scope, address)
            except errors.PacsError as exc:
                if _is_page_visit(scope) and type(exc) is errors.NotAuthenticated:
                    await _to_login(scope)(scope, receive, send)
                    return
                await _refuse(services, scope, address, exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_public(path: str) -> bool:
    """Reachable without a credential: PUBLIC_PATHS, PUBLIC_PREFIXES and the viewer's static files
    (scripts, styles, wasm, fonts, images, its app-config.js), which hold no patient data."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or is_viewer_asset(path)


def _is_page_visit(scope: Scope) -> bool:
    """A browser opening a viewer page (/, /viewer?..., /mode/...): it is sent to the login page
    rather than shown a 401 JSON body. API paths keep their 401 for programs."""
    if scope["method"] not in ("GET", "HEAD") or is_api_path(scope["path"]):
        return False
    accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
    return b"text/html" in accept.lower()


def _to_login(scope: Scope) -> Response:
    target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
    return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)


async def _authenticate(services: Any, scope: Scope, address: str) -> Principal:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    authn = services.authenticator
    authorization = headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer" and credential:
        principal = authn.cached("t:" + _sha(credential))
        if principal is not None:
            return principal.at(address)
        return await run_blocking(authn.bearer, credential, address)
    if scheme.lower() == "basic" and credential:
        username, password = _basic(credential)
        return await run_blocking(authn.basic, username, password, address)
    if authorization:
        raise errors.NotAuthenticated(f"unsupported Authorization scheme {scheme!r}; use Bearer or Basic")
    session = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
    if not session:
        raise errors.NotAuthenticated("authentication required: a bearer token, HTTP Basic, or a login session")
    if scope["method"] not in _SAFE_METHODS:
        sent = headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), csrf_token(session).encode()):
            raise errors.Forbidden(f"missing or wrong {CSRF_HEADER} header (required with a session cookie)")
    principal = authn.cached("s:" + _sha(session))
    if principal is not None:
        return principal.at(address)
    return await run_blocking(authn.session, session, address)


def _sha(secret: str) -> str:
    from pacs.security.credentials import secret_hash

    return secret_hash(secret)


def _basic(credential: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.NotAuthenticated("malformed HTTP Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise errors.NotAuthenticated("malformed HTTP Basic credentials")
    return username, password


def _cookie(header: str, name: str) -> str:
    if name not in header:
        return ""
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(header)
    except CookieError:  # a malformed Cookie header is no credential, not a server error
        return ""
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else ""


def _refuse(services: Any, scope: Scope, address: str, exc: errors.PacsError) -> Response:
    if isinstance(exc, errors.TooManyAttempts):
        status, outcome = 429, Outcome.UNAUTHENTICATED
    elif isinstance(exc, errors.NotAuthenticated):
        status, outcome = 401, Outcome.UNAUTHENTICATED
    else:
        status, outcome = 403, Outcome.DENIED
    services.audit.record(
        AuditEvent.of(
            None, "http", _guess_action(scope["method"], scope["path"]), outcome, status=status,
            source=address, detail={"method": scope["method"], "path": scope["path"][:300]},
        )
    )
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="minipacs"'
    elif isinstance(exc, errors.TooManyAttempts):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse({"error": str(exc), "status": status}, status_code=status, headers=headers)


def _guess_action(method: str, path: str) -> str:
    """What an unauthenticated request was after, for its audit record."""
    if path.startswith("/api/"):
        return Action.ADMIN
    if method == "POST":
        return Action.STORE
    if method == "DELETE":
        return Action.DELETE
    if path.rstrip("/").endswith(("/studies", "/series", "/instances")):
        return Action.SEARCH
    return Action.READ


def guarded(operation: Operation, endpoint: Endpoint) -> Endpoint:
    """The endpoint, run only for callers allowed `operation`, with an audit record of the outcome.

    Endpoints may add to the record through `request.state.audit` (a dict: study_uid, detail,
    or `events`, a list of ready AuditEvents that replace the default one)."""
    action = AUDIT_ACTION[operation]
    blocking = not inspect.iscoroutinefunction(endpoint)

    async def guard(request: Request) -> Response:
        principal = principal_of(request)
        request.state.audit = {}
        try:
            authorize(principal, operation)
        except errors.Forbidden:
            _record(request, principal, action, Outcome.DENIED, 403)
            raise
        try:
            response: Response
            if blocking:  # as Starlette runs plain-function endpoints: off the event loop
                response = await run_blocking(endpoint, request)  # type: ignore[arg-type]
            else:
                response = await endpoint(request)  # type: ignore[misc]
        except errors.PacsError as exc:
            status = http_status(exc)
            _record(request, principal, action, Outcome.FAILURE, status, reason=str(exc)[:200])
            raise
        except Exception:
            _record(request, principal, action, Outcome.FAILURE, 500)
            raise
        status = response.status_code
        _record(request, principal, action, Outcome.SUCCESS if status < 400 else Outcome.FAILURE, status)
        return response

    guard.__name__ = getattr(endpoint, "__name__", "endpoint")
    guard.__doc__ = endpoint.__doc__
    guard.operation = operation  # type: ignore[attr-defined]  # read by the OpenAPI description
    return guard


def _record(request: Request, principal: Principal, action: str, outcome: str, status: int, reason: str = "") -> None:
    audit = request.app.state.services.audit
    extra: dict[str, Any] = request.state.audit
    if extra.get("events") and outcome != Outcome.DENIED:
        for event in extra["events"]:
            audit.record(event)
        return
    params = request.path_params
    detail: dict[str, Any] = dict(extra.get("detail", {}))
    if action == Action.SEARCH and request.query_params:
        detail["query"] = dict(request.query_params)
    if reason:
        detail["reason"] = reason
    if action in (Action.ADMIN, Action.AUDIT, Action.ORDER):
        detail.setdefault("method", request.method)
        detail.setdefault("path", request.url.path)
    audit.record(
        AuditEvent.of(
            principal, "http", action, outcome, status=status,
            patient_id=extra.get("patient_id"),
            study_uid=params.get("study") or extra.get("study_uid"),
            series_uid=params.get("series"),
            sop_uid=params.get("instance"),
            detail=detail,
        )
    )
