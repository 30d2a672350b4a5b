"""Browser login: POST /api/login opens a session (HttpOnly cookie + CSRF token), /api/logout
ends it, /api/me says who is logged in, GET /login is a minimal login page."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pacs.api.bodies import json_object
from pacs.audit.trail import Action, AuditEvent, Outcome
from pacs.errors import InvalidInput, NotAuthenticated, TooManyAttempts
from pacs.security.authn import csrf_token
from pacs.security.http import CSRF_COOKIE, SESSION_COOKIE, client_address, principal_of
from pacs.security.principal import Principal
from pacs.threads import run_blocking


async def login(request: Request) -> Response:
    services = request.app.state.services
    fields = await _fields(request)
    username, password = str(fields.get("username", "")), str(fields.get("password", ""))
    address = client_address(request.scope)
    if not username or not password:
        raise InvalidInput("send username and password (JSON or form)")
    try:
        secret, principal = await run_blocking(services.authenticator.login, username, password, address)
    except NotAuthenticated as exc:
        status = 429 if isinstance(exc, TooManyAttempts) else 401
        services.audit.record(
            AuditEvent.of(
                None, "http", Action.LOGIN, Outcome.UNAUTHENTICATED, status=status, actor=username[:128],
                source=address, detail={"reason": str(exc)[:200]},
            )
        )
        raise
    services.audit.record(AuditEvent.of(principal, "http", Action.LOGIN, Outcome.SUCCESS, status=200))
    csrf = csrf_token(secret)
    response = JSONResponse({**_describe(principal), "csrf_token": csrf})
    secure = _secure_cookies(request)
    max_age = services.settings.session_hours * 3600
    # Lax: a link into the viewer from another site arrives signed in; requests that change
    # anything need the X-CSRF-Token header besides the cookie, which another site cannot send.
    response.set_cookie(
        SESSION_COOKIE, secret, max_age=max_age, httponly=True, secure=secure, samesite="lax", path="/"
    )
    # Readable by the page's scripts, which echo it in X-CSRF-Token; another site cannot read it.
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, httponly=False, secure=secure, samesite="lax", path="/")
    return response


async def logout(request: Request) -> Response:
    services = request.app.state.services
    principal = principal_of(request)
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        await run_blocking(services.authenticator.logout, secret)
    services.audit.record(AuditEvent.of(principal, "http", Action.LOGOUT, Outcome.SUCCESS, status=204))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


def me(request: Request) -> Response:
    return JSONResponse(_describe(principal_of(request)))


def login_page(request: Request) -> Response:
    return HTMLResponse(LOGIN_PAGE)


def _describe(principal: Principal) -> dict[str, Any]:
    return {
        "user": principal.name,
        "role": principal.role,
        "permissions": sorted(principal.permissions),
        "referring_physician": principal.referred_by,
    }


async def _fields(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await json_object(request)
    if content_type == "application/x-www-form-urlencoded":
        body = (await request.body()).decode("utf-8", errors="replace")
        return {name: values[0] for name, values in parse_qs(body).items()}
    raise InvalidInput("send the login as application/json or application/x-www-form-urlencoded")


def _secure_cookies(request: Request) -> bool:
    """Secure cookies need HTTPS; browsers also keep them for http://localhost. On plain HTTP
    to another address (a LAN install without TLS) a Secure cookie would never come back."""
    setting = request.app.state.services.settings.cookie_secure
    if setting != "auto":
        return setting == "on"
    if request.url.scheme == "https":
        return True
    host = request.url.hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>minipacs: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}
label{display:block;margin-top:1rem}input{width:100%;padding:.4rem;font-size:1rem}
button{margin-top:1.5rem;padding:.5rem 1.2rem;font-size:1rem}#error{color:#b00020;min-height:1.5rem}</style>
</head><body><h1>minipacs</h1>
<form id="login"><label>User <input name="username" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button><p id="error" role="alert"></p></form>
<script>
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const response = await fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: form.get("username"), password: form.get("password")})});
  if (response.ok) {
    await response.json();  // read to the end: leaving mid-download would abort the request
    const next = new URLSearchParams(location.search).get("next");
    location.assign(next && next.startsWith("/") && !next.startsWith("//") ? next : "/api/me");
  } else {
    document.getElementById("error").textContent = (await response.json()).error;
  }
});
</script></body></html>
"""

ROUTES = [
    Route("/login", login_page, methods=["GET"]),
    Route("/api/login", login, methods=["POST"]),
    Route("/api/logout", logout, methods=["POST"]),
    Route("/api/me", me, methods=["GET"]),
]
