"""Imaging orders over HTTP. Providers see only the orders they placed; every route is guarded
by the operation the table below names."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacs.api.bodies import json_object, non_negative
from pacs.errors import InvalidInput
from pacs.index.orders import Order, OrderFilter, StatusChange
from pacs.security.http import Endpoint, guarded, principal_of
from pacs.security.policy import Operation
from pacs.security.principal import normalized_person_name
from worklist.orders import OrderService, parse_status, scheduled_range, validated_fields

_MAX_LIMIT = 1000
_FILTERS = frozenset({"modality", "priority"})


def _orders(request: Request) -> OrderService:
    return request.app.state.services.orders


def _referred_by(request: Request) -> str | None:
    return principal_of(request).referred_by


def _pk(request: Request) -> int:
    raw = request.path_params["order_id"]
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput("order ids are numbers")
    return int(raw)


def _note(request: Request, operation: str, order: Order) -> None:
    request.state.audit["detail"] = {"operation": operation, "order": order.order_number}
    request.state.audit["patient_id"] = order.patient_id


def _answer(request: Request, order: Order, status_code: int = 200) -> Response:
    request.state.audit["patient_id"] = order.patient_id
    body = order_json(order)
    body["history"] = [change_json(c) for c in _orders(request).history(order.pk)]
    # The studies reconciliation linked to it (pacs.api.reconcile_routes has the details).
    linked = request.app.state.services.reconciler.studies(order_pk=order.pk, limit=1000)
    body["studies"] = [row["study_instance_uid"] for row in linked]
    return JSONResponse(body, status_code=status_code)


async def create_order(request: Request) -> Response:
    order = _orders(request).create(await json_object(request), created_by=principal_of(request).name)
    _note(request, "create", order)
    return _answer(request, order, 201)


def list_orders(request: Request) -> Response:
    """Filters: status, modality, priority, patient_id, ordering_provider, scheduled_from and
    scheduled_to (inclusive dates), exported (true: exported at least once; false: not yet), limit, offset."""
    params = request.query_params
    values = validated_fields({k: params[k] for k in _FILTERS if params.get(k)}, _FILTERS)
    status = params.get("status")
    reference = _orders(request).reference
    if values.get("modality") and reference is not None:
        reference.check_known_modality(values["modality"])
    low, high = scheduled_range(params.get("scheduled_from"), params.get("scheduled_to"))
    provider = params.get("ordering_provider")
    exported = _exported(params.get("exported"))
    where = OrderFilter(
        status=parse_status(status).value if status else None,
        modality=values.get("modality"),
        priority=values.get("priority"),
        patient_id=params.get("patient_id") or None,
        ordering_provider=normalized_person_name(provider) if provider else None,
        scheduled_from=low,
        scheduled_to=high,
        referred_by=_referred_by(request),
        not_exported=exported is False,
        exported=exported is True,
        limit=min(non_negative(params.get("limit"), 100), _MAX_LIMIT),
        offset=non_negative(params.get("offset"), 0),
    )
    request.state.audit["detail"] = {"query": dict(params)}
    return JSONResponse([order_json(o) for o in _orders(request).search(where)])


def _exported(text: str | None) -> bool | None:
    if text is None or text == "":
        return None
    if text.lower() not in ("true", "false"):
        raise InvalidInput(f"exported must be true or false, not {text!r}")
    return text.lower() == "true"


def get_order(request: Request) -> Response:
    return _answer(request, _orders(request).get(_pk(request), referred_by=_referred_by(request)))


def get_by_number(request: Request) -> Response:
    number = request.path_params["order_number"]
    return _answer(request, _orders(request).by_number(number, referred_by=_referred_by(request)))


def get_by_accession(request: Request) -> Response:
    accession = request.path_params["accession"]
    return _answer(request, _orders(request).by_accession(accession, referred_by=_referred_by(request)))


async def change_order(request: Request) -> Response:
    order = _orders(request).update(_pk(request), await json_object(request))
    _note(request, "update", order)
    return _answer(request, order)


async def change_status(request: Request) -> Response:
    body = await json_object(request)
    status, reason = body.get("status"), body.get("reason", "")
    if not isinstance(status, str) or not isinstance(reason, str):
        raise InvalidInput('send {"status": "...", "reason": "..."} with strings')
    order = _orders(request).change_status(_pk(request), status, changed_by=principal_of(request).name, reason=reason)
    _note(request, f"status {order.status}", order)
    return _answer(request, order)


async def cancel_order(request: Request) -> Response:
    body = await json_object(request) if await request.body() else {}
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidInput("reason must be a string")
    order = _orders(request).cancel(_pk(request), changed_by=principal_of(request).name, reason=reason)
    _note(request, "cancel", order)
    return _answer(request, order)


def patient_orders(request: Request) -> Response:
    patient_id = request.path_params["patient_id"]
    params = request.query_params
    request.state.audit["patient_id"] = patient_id
    found = _orders(request).patient_orders(
        patient_id, referred_by=_referred_by(request),
        limit=min(non_negative(params.get("limit"), 100), _MAX_LIMIT), offset=non_negative(params.get("offset"), 0),
    )
    return JSONResponse([order_json(o) for o in found])


def order_json(order: Order) -> dict[str, Any]:
    out: dict[str, Any] = {"id": order.pk}
    for name, value in vars(order).items():
        if name != "pk":
            out[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return out


def change_json(change: StatusChange) -> dict[str, Any]:
    return {
        "from_status": change.from_status, "to_status": change.to_status, "changed_by": change.changed_by,
        "changed_at": change.changed_at.isoformat(), "reason": change.reason,
    }


TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/api/orders", "POST", Operation.WRITE_ORDERS, create_order),
    ("/api/orders", "GET", Operation.READ_ORDERS, list_orders),
    ("/api/orders/by-number/{order_number}", "GET", Operation.READ_ORDERS, get_by_number),
    ("/api/orders/by-accession/{accession}", "GET", Operation.READ_ORDERS, get_by_accession),
    ("/api/orders/{order_id}", "GET", Operation.READ_ORDERS, get_order),
    ("/api/orders/{order_id}", "PATCH", Operation.WRITE_ORDERS, change_order),
    ("/api/orders/{order_id}/status", "POST", Operation.WRITE_ORDERS, change_status),
    ("/api/orders/{order_id}/cancel", "POST", Operation.WRITE_ORDERS, cancel_order),
    ("/api/patients/{patient_id}/orders", "GET", Operation.READ_ORDERS, patient_orders),
]

ROUTES = [Route(path, guarded(operation, endpoint), methods=[method]) for path, method, operation, endpoint in TABLE]
