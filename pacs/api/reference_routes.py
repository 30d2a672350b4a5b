"""Reference data over HTTP: the modalities and body parts orders may name (and which
modalities apply to which body part). Anyone who reads orders may list them; admins edit them.
Codes are case-insensitive on the way in and kept upper case (DICOM CS)."""

from __future__ import annotations

from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacs.api.bodies import json_object
from pacs.security.http import Endpoint, guarded
from pacs.security.policy import Operation
from worklist.reference import ReferenceData


def _reference(request: Request) -> ReferenceData:
    reference = request.app.state.services.orders.reference
    assert reference is not None
    return reference


def list_modalities(request: Request) -> Response:
    return JSONResponse([asdict(m) for m in _reference(request).modalities()])


def list_body_parts(request: Request) -> Response:
    return JSONResponse([{**asdict(b), "modalities": list(b.modalities)} for b in _reference(request).body_parts()])


async def put_modality(request: Request) -> Response:
    body = await json_object(request)
    code = request.path_params["code"]
    request.state.audit["detail"] = {"operation": "put modality", "code": code.strip().upper()}
    return JSONResponse(asdict(_reference(request).put_modality(code, body)))


async def put_body_part(request: Request) -> Response:
    body = await json_object(request)
    code = request.path_params["code"]
    request.state.audit["detail"] = {"operation": "put body part", "code": code.strip().upper()}
    part = _reference(request).put_body_part(code, body)
    return JSONResponse({**asdict(part), "modalities": list(part.modalities)})


TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/api/reference/modalities", "GET", Operation.READ_ORDERS, list_modalities),
    ("/api/reference/modalities/{code}", "PUT", Operation.MANAGE_REFERENCE, put_modality),
    ("/api/reference/body-parts", "GET", Operation.READ_ORDERS, list_body_parts),
    ("/api/reference/body-parts/{code}", "PUT", Operation.MANAGE_REFERENCE, put_body_part),
]

ROUTES = [Route(path, guarded(operation, endpoint), methods=[method]) for path, method, operation, endpoint in TABLE]
