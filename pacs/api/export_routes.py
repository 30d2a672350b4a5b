"""Order export over HTTP: make a batch, list and read batches, download a batch's file, and an
order's export history. Exports are PHI leaving the system: each batch and each download is
audited once per patient in it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pacs.api.bodies import json_object, non_negative
from pacs.audit.trail import Action, AuditEvent, Outcome
from pacs.errors import InvalidInput
from pacs.index.exports import ExportBatch, ExportRepository
from pacs.security.http import Endpoint, guarded, principal_of
from pacs.security.policy import Operation
from worklist.export import (
    MEDIA_TYPES,
    ExportFormat,
    ExportRequest,
    ExportService,
    export_events,
    file_name,
    parse_format,
    parse_ids,
)

_MAX_LIMIT = 1000
_BODY_FIELDS = frozenset({"format", "order_ids", "all_not_exported", "destination", "force"})


def _exports(request: Request) -> ExportService:
    services = request.app.state.services
    return ExportService(ExportRepository(services.engine), services.blobs)


def _pk(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise InvalidInput("ids are numbers")
    return int(raw)


def batch_summary(batch: ExportBatch) -> dict[str, Any]:
    """A batch in a list: its order count without the orders (GET /api/exports/{id} has them)."""
    return {
        "id": batch.pk, "created_at": batch.created_at.isoformat(), "created_by": batch.created_by,
        "format": batch.format, "destination": batch.destination, "order_count": batch.order_count,
        "file": f"/api/exports/{batch.pk}/file" if batch.blob_key else None,
    }


def batch_json(batch: ExportBatch) -> dict[str, Any]:
    return {**batch_summary(batch), "orders": [{"id": o.pk, "order_number": o.order_number} for o in batch.orders]}


async def create_export(request: Request) -> Response:
    """Export orders as csv, hl7 or pdf: `order_ids` or `all_not_exported`, `destination`, `force`."""
    wanted = parse_export_request(await json_object(request))
    result = _exports(request).export(wanted, created_by=principal_of(request).name)
    request.state.audit["events"] = export_events(result, principal_of(request), "http", status=201)
    body = batch_json(result.batch)
    body["skipped"] = [{"id": o.pk, "order_number": o.order_number} for o in result.skipped]
    body["remaining"] = result.remaining
    return JSONResponse(body, status_code=201, headers={"Location": f"/api/exports/{result.batch.pk}"})


def parse_export_request(body: dict[str, Any]) -> ExportRequest:
    unknown = sorted(set(body) - _BODY_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown export fields: {', '.join(unknown)}")
    if "format" not in body:
        raise InvalidInput(f"format is required: one of {', '.join(ExportFormat)}")
    everything = body.get("all_not_exported", False)
    force, destination = body.get("force", False), body.get("destination", "")
    if not isinstance(everything, bool) or not isinstance(force, bool):
        raise InvalidInput("all_not_exported and force are true or false")
    if not isinstance(destination, str) or len(destination) > 512:
        raise InvalidInput("destination is a label of at most 512 characters")
    if everything == ("order_ids" in body):
        raise InvalidInput('send either "order_ids": [...] or "all_not_exported": true')
    ids = None if everything else parse_ids(body["order_ids"])
    return ExportRequest(parse_format(body["format"]), ids, force=force, destination=destination.strip())


def list_exports(request: Request) -> Response:
    """Export batches, newest first (limit, offset), each with its order count; the orders are in
    GET /api/exports/{id}."""
    params = request.query_params
    batches = ExportRepository(request.app.state.services.engine).batches(
        limit=min(non_negative(params.get("limit"), 100), _MAX_LIMIT), offset=non_negative(params.get("offset"), 0)
    )
    return JSONResponse([batch_summary(batch) for batch in batches])


def get_export(request: Request) -> Response:
    """One export batch with its orders."""
    batch = ExportRepository(request.app.state.services.engine).batch(_pk(request, "batch_id"))
    request.state.audit["detail"] = {"export_batch": batch.pk}
    return JSONResponse(batch_json(batch))


def download(request: Request) -> Response:
    """The batch's file, as it was exported."""
    service = _exports(request)
    batch = service.repository.batch(_pk(request, "batch_id"))
    chunks = service.file(batch)
    principal = principal_of(request)
    request.state.audit["events"] = [
        AuditEvent.of(principal, "http", Action.EXPORT, Outcome.SUCCESS, status=200, patient_id=patient,
                      detail={"export_batch": batch.pk, "operation": "download"})
        for patient in sorted({o.patient_id for o in batch.orders})
    ]
    headers = {"Content-Disposition": f'attachment; filename="{file_name(batch)}"'}
    return StreamingResponse(chunks, media_type=MEDIA_TYPES[ExportFormat(batch.format)], headers=headers)


def order_exports(request: Request) -> Response:
    """The batches an order was exported in, newest first."""
    services = request.app.state.services
    order = services.orders.get(_pk(request, "order_id"), referred_by=principal_of(request).referred_by)
    request.state.audit["patient_id"] = order.patient_id
    batches = ExportRepository(services.engine).batches(order_pk=order.pk)
    return JSONResponse([batch_summary(b) for b in batches])


TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/api/exports", "POST", Operation.EXPORT_ORDERS, create_export),
    ("/api/exports", "GET", Operation.EXPORT_ORDERS, list_exports),
    ("/api/exports/{batch_id}", "GET", Operation.EXPORT_ORDERS, get_export),
    ("/api/exports/{batch_id}/file", "GET", Operation.EXPORT_ORDERS, download),
    ("/api/orders/{order_id}/exports", "GET", Operation.READ_ORDERS, order_exports),
]

ROUTES = [Route(path, guarded(operation, endpoint), methods=[method]) for path, method, operation, endpoint in TABLE]
