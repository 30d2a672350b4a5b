"""Reconciliation over HTTP: the studies that matched no order, staff linking them to an order
(or leaving them), the studies and performed procedure steps of an order, and the steps that
named no order. Every route is guarded by the operation the table below names."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacs.api.bodies import json_object, non_negative
from pacs.errors import InvalidInput
from pacs.index.orders import Order
from pacs.index.performed_steps import PerformedStep
from pacs.index.study_links import UNMATCHED, StudyLink
from pacs.security.http import Endpoint, guarded, principal_of
from pacs.security.policy import Operation
from pacs.services import Services

_MAX_LIMIT = 1000


def _services(request: Request) -> Services:
    return request.app.state.services


def _order_pk(request: Request) -> int:
    raw = request.path_params["order_id"]
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput("order ids are numbers")
    return int(raw)


def _page(request: Request) -> dict[str, int]:
    params = request.query_params
    return {"limit": min(non_negative(params.get("limit"), 100), _MAX_LIMIT),
            "offset": non_negative(params.get("offset"), 0)}


def list_studies(request: Request) -> Response:
    """Studies by link state: `state` UNMATCHED (default), LINKED or DISMISSED."""
    state = (request.query_params.get("state") or UNMATCHED).strip().upper()
    rows = _services(request).reconciler.studies(state=state, **_page(request))
    request.state.audit["detail"] = {"query": dict(request.query_params), "results": len(rows)}
    return JSONResponse([_study_json(row) for row in rows])


def get_link(request: Request) -> Response:
    link = _services(request).reconciler.link_of(request.path_params["study"])
    return JSONResponse(link_json(link))


async def link_study(request: Request) -> Response:
    """Body: {"order_id": N}, {"order_number": "ORD-..."} or {"accession_number": "..."}."""
    order = _order_named(_services(request), await json_object(request))
    link = _services(request).reconciler.link(request.path_params["study"], order, by=principal_of(request).name)
    _note(request, "link", order)
    return JSONResponse(link_json(link))


def unlink_study(request: Request) -> Response:
    link = _services(request).reconciler.unlink(request.path_params["study"], by=principal_of(request).name)
    request.state.audit["detail"] = {"operation": "unlink"}
    return JSONResponse(link_json(link))


def dismiss_study(request: Request) -> Response:
    link = _services(request).reconciler.dismiss(request.path_params["study"], by=principal_of(request).name)
    request.state.audit["detail"] = {"operation": "dismiss"}
    return JSONResponse(link_json(link))


def order_studies(request: Request) -> Response:
    """The studies linked to an order (providers: only of their own orders)."""
    services = _services(request)
    order = services.orders.get(_order_pk(request), referred_by=principal_of(request).referred_by)
    request.state.audit["patient_id"] = order.patient_id
    rows = services.reconciler.studies(order_pk=order.pk, limit=_MAX_LIMIT)
    return JSONResponse([_study_json(row) for row in rows])


def order_steps(request: Request) -> Response:
    services = _services(request)
    order = services.orders.get(_order_pk(request), referred_by=principal_of(request).referred_by)
    request.state.audit["patient_id"] = order.patient_id
    return JSONResponse([step_json(s) for s in services.performed_steps.search(order_pk=order.pk, limit=_MAX_LIMIT)])


def list_steps(request: Request) -> Response:
    """Performed procedure steps, newest first; `unlinked=true`: those that named no order."""
    unlinked = (request.query_params.get("unlinked") or "").lower()
    if unlinked not in ("", "true", "false"):
        raise InvalidInput("unlinked is true or false")
    steps = _services(request).performed_steps.search(unlinked=unlinked == "true", **_page(request))
    request.state.audit["detail"] = {"query": dict(request.query_params), "results": len(steps)}
    return JSONResponse([step_json(s) for s in steps])


def get_step(request: Request) -> Response:
    return JSONResponse(step_json(_services(request).performed_steps.get(request.path_params["uid"]), full=True))


def _order_named(services: Services, body: dict[str, Any]) -> Order:
    names = {k: v for k, v in body.items() if k in ("order_id", "order_number", "accession_number")}
    if len(names) != 1 or set(body) - set(names):
        raise InvalidInput('send one of {"order_id": N}, {"order_number": "..."}, {"accession_number": "..."}')
    (key, value), = names.items()
    if key == "order_id":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput("order_id must be a number")
        return services.orders.get(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{key} must be a non-empty string")
    if key == "order_number":
        return services.orders.by_number(value.strip())
    return services.orders.by_accession(value.strip())


def _note(request: Request, operation: str, order: Order) -> None:
    request.state.audit["detail"] = {"operation": operation, "order": order.order_number}
    request.state.audit["patient_id"] = order.patient_id


def link_json(link: StudyLink) -> dict[str, Any]:
    return {
        "study_instance_uid": link.study_instance_uid, "state": link.state, "order_id": link.order_pk,
        "order_number": link.order_number, "accession_number": link.accession_number, "linked_by": link.linked_by,
        "updated_at": link.updated_at.isoformat() if link.updated_at else None,
    }


def _study_json(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["order_id"] = out.pop("order_pk")
    out["updated_at"] = row["updated_at"].isoformat()
    return out


def step_json(step: PerformedStep, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in vars(step).items():
        if name == "attributes_json":
            if full:
                out["attributes"] = json.loads(value)  # DICOM JSON (PS3.18 F.2)
            continue
        out["order_id" if name == "order_pk" else name] = value.isoformat() if hasattr(value, "isoformat") else value
    return out


TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/api/reconciliation/studies", "GET", Operation.REVIEW_RECONCILIATION, list_studies),
    ("/api/reconciliation/studies/{study}", "GET", Operation.REVIEW_RECONCILIATION, get_link),
    ("/api/reconciliation/studies/{study}/link", "POST", Operation.RECONCILE, link_study),
    ("/api/reconciliation/studies/{study}/unlink", "POST", Operation.RECONCILE, unlink_study),
    ("/api/reconciliation/studies/{study}/dismiss", "POST", Operation.RECONCILE, dismiss_study),
    ("/api/performed-steps", "GET", Operation.REVIEW_RECONCILIATION, list_steps),
    ("/api/performed-steps/{uid}", "GET", Operation.REVIEW_RECONCILIATION, get_step),
    ("/api/orders/{order_id}/studies", "GET", Operation.READ_ORDERS, order_studies),
    ("/api/orders/{order_id}/performed-steps", "GET", Operation.READ_ORDERS, order_steps),
]

ROUTES = [Route(path, guarded(operation, endpoint), methods=[method]) for path, method, operation, endpoint in TABLE]
