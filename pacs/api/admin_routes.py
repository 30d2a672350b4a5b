"""Administration over HTTP: users and their tokens, remote AEs, and the audit trail.
Every route is guarded by the operation the table below names."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacs.api.bodies import json_object, non_negative
from pacs.errors import InvalidInput
from pacs.index.accounts import Token, User, as_utc
from pacs.index.audit import AuditFilter
from pacs.index.remote_aes import RemoteAE, validated
from pacs.security.http import Endpoint, guarded, principal_of
from pacs.security.policy import Operation

_AUDIT_MAX_LIMIT = 1000


def _services(request: Request) -> Any:
    return request.app.state.services


def _note(request: Request, operation: str, target: str) -> None:
    request.state.audit["detail"] = {"operation": operation, "target": target}


def _text(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value


# ---- users ----------------------------------------------------------------------------------


def list_users(request: Request) -> Response:
    return JSONResponse([user_json(u) for u in _services(request).accounts.users()])


async def add_user(request: Request) -> Response:
    body = await json_object(request)
    username = _text(body, "username") or ""
    _note(request, "add-user", username)
    user = _services(request).accounts.add_user(
        username, _text(body, "role") or "", _text(body, "password"), _text(body, "provider_name")
    )
    return JSONResponse(user_json(user), status_code=201)


async def change_user(request: Request) -> Response:
    """PATCH: any of role (with provider_name), password, disabled."""
    body = await json_object(request)
    username = request.path_params["username"]
    accounts = _services(request).accounts
    _note(request, "change-user " + ",".join(sorted(body)), username)
    user = accounts.repository.user(username)
    if "role" in body or "provider_name" in body:
        user = accounts.set_role(username, _text(body, "role") or user.role, _text(body, "provider_name"))
    if "password" in body:
        user = accounts.set_password(username, _text(body, "password") or "")
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise InvalidInput("disabled must be true or false")
        user = accounts.set_disabled(username, body["disabled"])
    return JSONResponse(user_json(user))


def list_tokens(request: Request) -> Response:
    username = request.path_params["username"]
    _services(request).accounts.repository.user(username)  # 404 for an unknown user
    return JSONResponse([token_json(t) for t in _services(request).accounts.tokens(username)])


async def add_token(request: Request) -> Response:
    return await _issue(request, request.path_params["username"])


async def add_own_token(request: Request) -> Response:
    """Any user may create tokens for themselves (for scripts and DICOMweb clients)."""
    return await _issue(request, principal_of(request).name)


async def _issue(request: Request, username: str) -> Response:
    body = await json_object(request) if await request.body() else {}
    days = body.get("days")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool)):
        raise InvalidInput("days must be an integer")
    _note(request, "add-token", username)
    issued = _services(request).accounts.issue_token(
        username, label=_text(body, "label", "") or "", scopes=_text(body, "scopes", "") or "", days=days
    )
    return JSONResponse(
        {"id": issued.pk, "token": issued.secret, "expires_at": issued.expires_at.isoformat()}, status_code=201
    )


def revoke_token(request: Request) -> Response:
    raw = request.path_params["token_id"]
    if not raw.isdigit():
        raise InvalidInput("token ids are numbers")
    _note(request, "revoke-token", raw)
    _services(request).accounts.revoke_token(int(raw))
    return Response(status_code=204)


def user_json(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "role": user.role,
        "provider_name": user.provider_name,
        "disabled": user.disabled,
        "has_password": user.password_hash is not None,
        "created_at": user.created_at.isoformat(),
    }


def token_json(token: Token) -> dict[str, Any]:
    return {
        "id": token.pk,
        "user": token.user.username,
        "label": token.label,
        "scopes": token.scopes.split(",") if token.scopes else [],
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat(),
        "revoked": token.revoked_at is not None,
    }


# ---- remote AEs ---------------------------------------------------------------------------


def list_aes(request: Request) -> Response:
    return JSONResponse([ae_json(ae) for ae in _services(request).remote_aes.all()])


async def add_ae(request: Request) -> Response:
    body = await json_object(request)
    port = body.get("port")
    if not isinstance(port, int) or isinstance(port, bool):
        raise InvalidInput("port must be an integer")
    ae = validated(
        _text(body, "ae_title") or "", _text(body, "host") or "", port,
        _text(body, "role", "technologist") or "", _text(body, "access", "all") or "",
    )
    _note(request, "add-ae", ae.ae_title)
    _services(request).remote_aes.add(ae)
    return JSONResponse(ae_json(ae), status_code=201)


def remove_ae(request: Request) -> Response:
    title = request.path_params["ae_title"]
    _note(request, "remove-ae", title)
    _services(request).remote_aes.remove(title)
    return Response(status_code=204)


def ae_json(ae: RemoteAE) -> dict[str, Any]:
    return {"ae_title": ae.ae_title, "host": ae.host, "port": ae.port, "role": ae.role, "access": ae.access}


# ---- audit trail --------------------------------------------------------------------------


def search_audit(request: Request) -> Response:
    """Filters: user, patient, study, action, outcome, since, until (ISO 8601), limit, offset."""
    params = request.query_params
    where = AuditFilter(
        actor=params.get("user") or None,
        patient_id=params.get("patient") or None,
        study_uid=params.get("study") or None,
        action=params.get("action") or None,
        outcome=params.get("outcome") or None,
        since=_time(params.get("since")),
        until=_time(params.get("until")),
        limit=min(non_negative(params.get("limit"), 100), _AUDIT_MAX_LIMIT),
        offset=non_negative(params.get("offset"), 0),
    )
    request.state.audit["detail"] = {"filter": {k: v for k, v in params.items()}}
    rows = _services(request).audit.search(where)
    return JSONResponse([audit_json(row) for row in rows])


def audit_json(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["occurred_at"] = as_utc(row["occurred_at"]).isoformat()
    out["detail"] = json.loads(row["detail"] or "{}")
    out["id"] = out.pop("pk")
    return out


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not an ISO 8601 date or time") from None
    return as_utc(parsed)


TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/api/users", "GET", Operation.MANAGE_USERS, list_users),
    ("/api/users", "POST", Operation.MANAGE_USERS, add_user),
    ("/api/users/{username}", "PATCH", Operation.MANAGE_USERS, change_user),
    ("/api/users/{username}/tokens", "GET", Operation.MANAGE_USERS, list_tokens),
    ("/api/users/{username}/tokens", "POST", Operation.MANAGE_USERS, add_token),
    ("/api/tokens/{token_id}", "DELETE", Operation.MANAGE_USERS, revoke_token),
    ("/api/me/tokens", "POST", Operation.OWN_TOKENS, add_own_token),
    ("/api/aes", "GET", Operation.MANAGE_AES, list_aes),
    ("/api/aes", "POST", Operation.MANAGE_AES, add_ae),
    ("/api/aes/{ae_title}", "DELETE", Operation.MANAGE_AES, remove_ae),
    ("/api/audit", "GET", Operation.READ_AUDIT, search_audit),
]

ROUTES = [Route(path, guarded(operation, endpoint), methods=[method]) for path, method, operation, endpoint in TABLE]
