"""GET /api/openapi.json: an OpenAPI 3.1 description of the JSON API, made from the app's own
route table at request time, so every /api route is in it. The DOCS table below adds what the
routes cannot say themselves (request and response schemas, query parameters); a route without
an entry is still described, from its docstring and the operation its guard checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pacs.api.schemas import SCHEMAS
from pacs.security.http import PUBLIC_PATHS
from pacs.security.policy import REQUIRED

_PATH_PARAMETER = re.compile(r"{([^}:]+)(:[^}]*)?}")
_ERRORS = {"400": "bad input", "401": "no credential", "403": "not allowed", "404": "not found", "409": "conflict"}


@dataclass(frozen=True)
class Doc:
    summary: str = ""
    query: tuple[str, ...] = ()  # query parameter names (strings)
    request: str | None = None  # a schema name in SCHEMAS
    response: str | None = None
    status: str = "200"
    media_type: str = "application/json"


_PAGING = ("limit", "offset")
_ORDER_FILTERS = ("status", "modality", "priority", "patient_id", "ordering_provider", "scheduled_from",
                  "scheduled_to", "exported", *_PAGING)
DOCS: dict[tuple[str, str], Doc] = {
    ("POST", "/api/login"): Doc("Log in: sets the session cookie, returns the CSRF token", request="Login",
                                response="Object"),
    ("POST", "/api/orders"): Doc("Create an order", request="OrderCreate", response="OrderWithHistory", status="201"),
    ("GET", "/api/orders"): Doc("List orders, newest first", query=_ORDER_FILTERS, response="OrderList"),
    ("GET", "/api/orders/{order_id}"): Doc("An order with its status history", response="OrderWithHistory"),
    ("GET", "/api/orders/by-number/{order_number}"): Doc("An order by its order number", response="OrderWithHistory"),
    ("GET", "/api/orders/by-accession/{accession}"): Doc("An order by accession number", response="OrderWithHistory"),
    ("PATCH", "/api/orders/{order_id}"): Doc("Change fields of an open order", request="OrderUpdate",
                                             response="OrderWithHistory"),
    ("POST", "/api/orders/{order_id}/status"): Doc("Move an order through the workflow", request="OrderStatusChange",
                                                   response="OrderWithHistory"),
    ("POST", "/api/orders/{order_id}/cancel"): Doc("Cancel an order", request="OrderCancel",
                                                   response="OrderWithHistory"),
    ("GET", "/api/patients/{patient_id}/orders"): Doc("A patient's orders", query=_PAGING, response="OrderList"),
    ("GET", "/api/orders/{order_id}/exports"): Doc("The export batches an order was in", response="ExportBatchList"),
    ("POST", "/api/exports"): Doc("Export orders as CSV, HL7 ORM or PDF", request="ExportRequest",
                                  response="ExportBatch", status="201"),
    ("GET", "/api/exports"): Doc("Export batches, newest first, with their order counts", query=_PAGING,
                                 response="ExportBatchList"),
    ("GET", "/api/exports/{batch_id}"): Doc("An export batch with its orders", response="ExportBatch"),
    ("GET", "/api/exports/{batch_id}/file"): Doc("Download a batch's file (text/csv, application/hl7-v2, "
                                                 "application/pdf)", media_type="application/octet-stream"),
    ("GET", "/api/audit"): Doc("Search the audit trail", query=("user", "patient", "study", "action", "outcome",
                                                                "since", "until", *_PAGING), response="ObjectList"),
    ("GET", "/api/hl7/messages"): Doc("The HL7 messages received, newest first, without their text",
                                      query=("type", "ack_code", "control_id", "received_from", "received_to",
                                             *_PAGING), response="Hl7MessageList"),
    ("GET", "/api/hl7/messages/{message_id}"): Doc("One HL7 message received, with its raw text",
                                                   response="Hl7Message"),
    ("GET", "/api/reconciliation/studies"): Doc("Studies by link state (default UNMATCHED), newest link first",
                                                query=("state", *_PAGING), response="ObjectList"),
    ("GET", "/api/reconciliation/studies/{study}"): Doc("A study's link to its order", response="Object"),
    ("POST", "/api/reconciliation/studies/{study}/link"): Doc(
        "Link a study to an order: {order_id}, {order_number} or {accession_number}", request="Object",
        response="Object"),
    ("POST", "/api/reconciliation/studies/{study}/unlink"): Doc("Unlink a study: back to unmatched", response="Object"),
    ("POST", "/api/reconciliation/studies/{study}/dismiss"): Doc("Leave an unmatched study without an order",
                                                                 response="Object"),
    ("GET", "/api/orders/{order_id}/studies"): Doc("The studies linked to an order", response="ObjectList"),
    ("GET", "/api/orders/{order_id}/performed-steps"): Doc("An order's performed procedure steps (MPPS)",
                                                           response="ObjectList"),
    ("GET", "/api/performed-steps"): Doc("Performed procedure steps (MPPS), newest first",
                                         query=("unlinked", *_PAGING), response="ObjectList"),
    ("GET", "/api/performed-steps/{uid}"): Doc("A performed procedure step with its DICOM JSON", response="Object"),
    ("GET", "/api/reference/modalities"): Doc("Modalities orders may name", response="ObjectList"),
    ("PUT", "/api/reference/modalities/{code}"): Doc(
        "Add or change a modality: {display_name, active}", request="Object", response="Object"),
    ("GET", "/api/reference/body-parts"): Doc("Body parts, each with the modalities that apply to it",
                                              response="ObjectList"),
    ("PUT", "/api/reference/body-parts/{code}"): Doc(
        "Add or change a body part: {display_name, active, modalities}", request="Object", response="Object"),
}


def describe(routes: list[BaseRoute], server_url: str = "") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            clean = _PATH_PARAMETER.sub(r"{\1}", route.path)
            paths.setdefault(clean, {})[method.lower()] = _operation(route, method, clean)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "minipacs JSON API", "version": _version(),
                 "description": "Orders, exports, accounts, remote AEs and the audit trail. DICOMweb (QIDO-RS, "
                                "WADO-RS, STOW-RS, UPS-RS) is under /dicom-web, as PS3.18 describes it."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API token"},
            "basic": {"type": "http", "scheme": "basic"},
            "session": {"type": "apiKey", "in": "cookie", "name": "minipacs_session",
                        "description": "after POST /api/login; changes also need the X-CSRF-Token header"},
        }},
        "security": [{"bearer": []}, {"basic": []}, {"session": []}],
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _operation(route: Route, method: str, path: str) -> dict[str, Any]:
    doc = DOCS.get((method, path), Doc())
    endpoint_doc = (route.endpoint.__doc__ or "").strip()
    summary = doc.summary or endpoint_doc.split("\n")[0].rstrip(".") or route.name.replace("_", " ")
    operation: dict[str, Any] = {"summary": summary, "operationId": f"{method.lower()}_{route.name}_{_slug(path)}"}
    if endpoint_doc and endpoint_doc != summary:
        operation["description"] = " ".join(endpoint_doc.split())
    guard = getattr(route.endpoint, "operation", None)
    if guard is not None:
        permission = REQUIRED[guard]
        operation["x-minipacs-operation"] = guard.value
        operation["x-minipacs-permission"] = permission.value if permission is not None else None
    if path in PUBLIC_PATHS:
        operation["security"] = []
    parameters = [{"name": match.group(1), "in": "path", "required": True, "schema": {"type": "string"}}
                  for match in _PATH_PARAMETER.finditer(path)]
    parameters += [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in doc.query]
    if parameters:
        operation["parameters"] = parameters
    if doc.request:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(doc.request)}}}
    operation["responses"] = _responses(doc)
    return operation


def _responses(doc: Doc) -> dict[str, Any]:
    success: dict[str, Any] = {"description": "success"}
    if doc.response:
        success["content"] = {doc.media_type: {"schema": _ref(doc.response)}}
    elif doc.media_type != "application/json":
        success["content"] = {doc.media_type: {"schema": {"type": "string", "contentEncoding": "binary"}}}
    error = {"content": {"application/json": {"schema": _ref("Error")}}}
    return {doc.status: success, **{code: {"description": text, **error} for code, text in _ERRORS.items()}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("minipacs")
    except PackageNotFoundError:
        return "0"


def openapi(request: Request) -> Response:
    return JSONResponse(describe(request.app.routes))


ROUTES = [Route("/api/openapi.json", openapi, methods=["GET"])]
