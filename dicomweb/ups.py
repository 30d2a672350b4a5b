"""UPS-RS (PS3.18 11): the worklist over DICOMweb, under /dicom-web/workitems.

    GET    /workitems                               Search (11.9)
    POST   /workitems[?{uid}]                       Create (11.4), 201 + Location
    GET    /workitems/{uid}                         Retrieve (11.5)
    POST   /workitems/{uid}[?{transaction}]         Update (11.6); PUT is accepted too
    PUT    /workitems/{uid}/state                   Change State (11.7)
    POST   /workitems/{uid}/cancelrequest           Request Cancellation (11.8), 202
    POST|DELETE /workitems/{uid}/subscribers/{ae}   Subscriptions (11.10-11.12): refused, 403

Handlers only translate: bodies are DICOM JSON (PS3.18 Annex F), the work is in
worklist.ups_service. Refusals carry the message in the body and in a Warning header
(PS3.18 11.7.3.3: `299 <service> "<text>"`).
"""

from __future__ import annotations

import functools
import inspect
import json

from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.content_type import parse_content_type
from dicomweb.errors import error_response, http_status
from dicomweb.media import negotiate_metadata, parse_accept
from dicomweb.responses import base_url, dicom_json_response
from pacs import errors
from pacs.index.workitems import WorkitemIndex
from pacs.security.http import Endpoint, principal_of
from pacs.security.policy import Operation
from worklist.ups import read_dataset, workitem_json
from worklist.ups_query import parse_search
from worklist.ups_service import Outcome, WorkitemService, check_uid

_JSON_TYPES = frozenset({"application/dicom+json", "application/json"})
_MAX_BODY = 1 << 20  # a workitem is a few kilobytes


def _workitems(request: Request) -> WorkitemService:
    return WorkitemService(request.app.state.services.orders)


def _warning(texts: list[str]) -> dict[str, str]:
    """RFC 9111 5.5 Warning header, as QIDO-RS sends it; printable ASCII only."""
    if not texts:
        return {}
    clean = [t.replace('"', "'").encode("ascii", "replace").decode() for t in texts]
    return {"Warning": ", ".join(f'299 minipacs "{t}"' for t in clean)}


def with_warnings(endpoint: Endpoint) -> Endpoint:
    """Refusals answered with their status, message and a Warning header; the guard audits them.
    A plain function stays one (the guard runs those off the event loop)."""
    if inspect.iscoroutinefunction(endpoint):

        async def answer_async(request: Request) -> Response:
            try:
                return await endpoint(request)  # type: ignore[misc, no-any-return]
            except errors.PacsError as exc:
                return _refusal(request, exc)

        return functools.update_wrapper(answer_async, endpoint)

    def answer(request: Request) -> Response:
        try:
            return endpoint(request)  # type: ignore[return-value]
        except errors.PacsError as exc:
            return _refusal(request, exc)

    return functools.update_wrapper(answer, endpoint)


def _refusal(request: Request, exc: errors.PacsError) -> Response:
    status = http_status(exc)
    if status >= 500:
        raise exc
    request.state.audit.setdefault("detail", {})["reason"] = str(exc)[:200]
    response = error_response(status, str(exc))
    response.headers.update(_warning([str(exc)]))
    return response


async def _dataset(request: Request, *, required: bool = True) -> Dataset | None:
    body = await request.body()
    if not body.strip() and not required:
        return None
    media_type = parse_content_type(request.headers.get("content-type", "application/dicom+json")).media_type
    if media_type not in _JSON_TYPES:
        raise errors.UnsupportedMediaType(f"send the workitem as application/dicom+json, not {media_type}")
    if len(body) > _MAX_BODY:
        raise errors.InvalidInput("the workitem is larger than 1 MB")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise errors.InvalidInput("the body is not valid JSON") from None
    return read_dataset(parsed)


def _query_uid(request: Request, name: str) -> str | None:
    """`?{uid}` (PS3.18 11.4.1 and 11.6.1 write the UID alone) or `?{name}={uid}`."""
    query = request.url.query
    if query and "=" not in query and "&" not in query:
        return query
    return request.query_params.get(name) or None


def _note(request: Request, outcome: Outcome | None = None, operation: str = "") -> None:
    uid = request.path_params.get("workitem")
    request.state.audit["detail"] = {"workitem": uid, "operation": operation}
    if outcome is not None:
        request.state.audit["patient_id"] = outcome.order.patient_id
        request.state.audit["study_uid"] = outcome.order.study_instance_uid


def _location(request: Request, uid: str) -> str:
    return f"{base_url(request)}/workitems/{uid}"


def search(request: Request) -> Response:
    negotiate_metadata(parse_accept(request.headers.get("accept")))
    parsed = parse_search(request.query_params.multi_items(), principal_of(request).referred_by)
    found = WorkitemIndex(request.app.state.services.engine).search(parsed.query)
    request.state.audit["detail"] = {"query": dict(request.query_params), "results": len(found)}
    meaning = _workitems(request).modality_meaning
    return dicom_json_response(request, [workitem_json(o, meaning) for o in found], headers=_warning(parsed.warnings))


def retrieve(request: Request) -> Response:
    negotiate_metadata(parse_accept(request.headers.get("accept")))
    service = _workitems(request)
    order = service.get(request.path_params["workitem"], referred_by=principal_of(request).referred_by)
    _note(request, Outcome(order), "retrieve")
    return dicom_json_response(request, [workitem_json(order, service.modality_meaning)])


async def create(request: Request) -> Response:
    dataset = await _dataset(request)
    assert dataset is not None
    requested = _query_uid(request, "workitem")
    in_body = str(dataset.get("SOPInstanceUID", "") or "") or None
    if requested and in_body and requested != in_body:
        raise errors.InvalidInput(f"the workitem UID {requested} differs from the SOPInstanceUID {in_body} sent")
    outcome = _workitems(request).create(dataset, requested or in_body, created_by=principal_of(request).name)
    _note(request, outcome, "create")
    uid = outcome.order.workitem_uid or ""
    location = _location(request, uid)
    headers = {"Location": location, "Content-Location": location, **_warning(outcome.warnings)}
    return Response(status_code=201, headers=headers)


async def update(request: Request) -> Response:
    dataset = await _dataset(request)
    assert dataset is not None
    transaction = _query_uid(request, "transaction") or str(dataset.get("TransactionUID", "") or "") or None
    outcome = _workitems(request).update(request.path_params["workitem"], dataset, transaction)
    _note(request, outcome, "update")
    location = _location(request, request.path_params["workitem"])
    return Response(status_code=200, headers={"Content-Location": location, **_warning(outcome.warnings)})


async def change_state(request: Request) -> Response:
    dataset = await _dataset(request)
    assert dataset is not None
    target = str(dataset.get("ProcedureStepState", "") or "").strip().upper()
    transaction = str(dataset.get("TransactionUID", "") or "") or None
    outcome = _workitems(request).change_state(
        request.path_params["workitem"], target, transaction, changed_by=principal_of(request).name
    )
    _note(request, outcome, f"state {target}")
    return Response(status_code=200, headers=_warning(outcome.warnings))


async def request_cancellation(request: Request) -> Response:
    dataset = await _dataset(request, required=False)
    reason = _cancellation_reason(dataset) if dataset is not None else ""
    outcome = _workitems(request).request_cancellation(
        request.path_params["workitem"], reason, changed_by=principal_of(request).name,
        referred_by=principal_of(request).referred_by,
    )
    _note(request, outcome, "cancel request")
    return Response(status_code=202, headers=_warning(outcome.warnings))


def _cancellation_reason(dataset: Dataset) -> str:
    """ReasonForCancellation (0074,1238), else the meaning of the discontinuation reason code."""
    reason = str(dataset.get("ReasonForCancellation", "") or "")
    codes = dataset.get("ProcedureStepDiscontinuationReasonCodeSequence") or []
    if not reason and codes:
        reason = str(codes[0].get("CodeMeaning", "") or "")
    return reason[:500]


def subscriptions(request: Request) -> Response:
    """Subscriptions need event reports over WebSocket (PS3.18 11.10), which this server does
    not send: refused with 403, as PS3.4 C315 (the SCP does not support event reports)."""
    check_uid(request.path_params["workitem"], "the workitem UID")
    _note(request, None, "subscription")
    raise errors.Forbidden(
        "this server sends no UPS event reports (PS3.4 status C315); poll GET /dicom-web/workitems for changes"
    )


WORKITEM = "/workitems/{workitem}"
SUBSCRIBER = WORKITEM + "/subscribers/{aetitle}"
# (path, method, operation, endpoint), added to the DICOMweb route table.
TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/workitems", "GET", Operation.READ_ORDERS, with_warnings(search)),
    ("/workitems", "POST", Operation.WRITE_ORDERS, with_warnings(create)),
    (WORKITEM, "GET", Operation.READ_ORDERS, with_warnings(retrieve)),
    (WORKITEM, "POST", Operation.WRITE_ORDERS, with_warnings(update)),
    (WORKITEM, "PUT", Operation.WRITE_ORDERS, with_warnings(update)),
    (WORKITEM + "/state", "PUT", Operation.PERFORM_WORKITEMS, with_warnings(change_state)),
    (WORKITEM + "/cancelrequest", "POST", Operation.PERFORM_WORKITEMS, with_warnings(request_cancellation)),
    (SUBSCRIBER, "POST", Operation.READ_ORDERS, with_warnings(subscriptions)),
    (SUBSCRIBER, "DELETE", Operation.READ_ORDERS, with_warnings(subscriptions)),
    (SUBSCRIBER + "/suspend", "POST", Operation.READ_ORDERS, with_warnings(subscriptions)),
]
