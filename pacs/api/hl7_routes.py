"""The HL7 v2 message log over HTTP, for admins troubleshooting an interface: every message
received, with the answer it got and what it did. Reads are audited like any PHI read."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacs.api.bodies import non_negative
from pacs.errors import InvalidInput
from pacs.index.hl7_log import Hl7Log, LoggedMessage, MessageFilter
from pacs.security.http import Endpoint, guarded
from pacs.security.policy import Operation
from worklist.hl7.messages import patient_id_of
from worklist.orders import parse_datetime

_MAX_LIMIT = 1000
# A block that got no answer (cut short) is stored with an empty code; filters and JSON call it "none".
_ACK_CODES = {"AA": "AA", "AE": "AE", "AR": "AR", "NONE": ""}
NO_ANSWER = "none"


def _log(request: Request) -> Hl7Log:
    return Hl7Log(request.app.state.services.engine)


def list_messages(request: Request) -> Response:
    """Newest first. Filters: type (ORM^O01), ack_code (AA, AE, AR, none), control_id,
    received_from and received_to (ISO 8601; to is exclusive), limit, offset."""
    params = request.query_params
    ack_code = params.get("ack_code")
    if ack_code and ack_code.upper() not in _ACK_CODES:
        raise InvalidInput(f"ack_code {ack_code!r} is not one of AA, AE, AR, none")
    received_from, received_to = params.get("received_from"), params.get("received_to")
    where = MessageFilter(
        message_type=params.get("type") or None,
        ack_code=_ACK_CODES[ack_code.upper()] if ack_code else None,
        control_id=params.get("control_id") or None,
        received_from=parse_datetime(received_from, "received_from") if received_from else None,
        received_to=parse_datetime(received_to, "received_to") if received_to else None,
        limit=min(non_negative(params.get("limit"), 100), _MAX_LIMIT),
        offset=non_negative(params.get("offset"), 0),
    )
    request.state.audit["detail"] = {"hl7_log": "search", "query": dict(params)}
    return JSONResponse([message_json(m) for m in _log(request).search(where)])


def get_message(request: Request) -> Response:
    raw = request.path_params["message_id"]
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput("message ids are numbers")
    message = _log(request).get(int(raw))
    request.state.audit["detail"] = {"hl7_log": "read", "message": message.pk, "control_id": message.control_id}
    request.state.audit["patient_id"] = patient_id_of(message.raw or "")
    return JSONResponse(message_json(message))


def message_json(message: LoggedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"id": message.pk}
    for name, value in vars(message).items():
        if name == "pk" or (name == "raw" and value is None):
            continue
        key = "order_id" if name == "order_pk" else name  # as /api/orders/{id} names it
        out[key] = value.isoformat() if hasattr(value, "isoformat") else value
    out["ack_code"] = message.ack_code or NO_ANSWER
    return out


TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/api/hl7/messages", "GET", Operation.READ_HL7_LOG, list_messages),
    ("/api/hl7/messages/{message_id}", "GET", Operation.READ_HL7_LOG, get_message),
]

ROUTES = [Route(path, guarded(operation, endpoint), methods=[method]) for path, method, operation, endpoint in TABLE]
