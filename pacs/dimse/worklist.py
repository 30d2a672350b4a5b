"""DIMSE edges of the worklist: Modality Worklist C-FIND (PS3.4 K) and Modality Performed
Procedure Step N-CREATE / N-SET (PS3.4 F.7). Thin: each translates the event into a worklist
service call and the outcome into a status, with an audit record.

Access: querying the worklist reads patient data, so it needs the query access a calling AE has
with `--access query` or `all`; reporting a performed step is a write, so MPPS needs `store` or
`all`. A modality that does both (the usual case) is added with `--access all`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacs import errors
from pacs.audit.trail import Action, Outcome
from pacs.dimse import access, handlers, status
from pacs.security.policy import Operation
from pacs.services import Services
from worklist.mpps import StepOutcome

log = logging.getLogger("pacs.dimse")
SCHEDULED_STEPS = "ScheduledProcedureStepSequence"


def handle_find(event: Event, services: Services) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND of any information model: the worklist's here, the archive's in handlers.py."""
    if event.request.AffectedSOPClassUID == ModalityWorklistInformationFind:
        yield from handle_worklist_find(event, services)
    else:
        yield from handlers.handle_find(event, services)


def handle_worklist_find(event: Event, services: Services) -> Iterator[tuple[int, Dataset | None]]:
    principal = access.permitted(event, services, Operation.SEARCH, Action.SEARCH)
    if principal is None:
        yield access.NOT_AUTHORIZED, None
        return
    try:
        identifier = event.identifier
        found = services.worklist.matching(identifier)
        plan = services.worklist.plan(identifier)
    except errors.PacsError as exc:
        log.warning("MWL C-FIND from %s refused: %s", handlers.peer(event), type(exc).__name__)  # may quote PHI
        code = status.status_for(exc, service="query")
        access.record(services, principal, Action.SEARCH, Outcome.FAILURE, code, detail={"reason": str(exc)[:200]})
        yield code, None
        return
    except Exception as exc:  # noqa: BLE001  # pydicom raises many kinds for an identifier it cannot decode
        log.warning("MWL C-FIND from %s: unreadable identifier (%s)", handlers.peer(event), type(exc).__name__)
        yield status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    log.info("MWL C-FIND from %s: %d item(s)", handlers.peer(event), len(found))
    access.record(
        services, principal, Action.SEARCH, Outcome.SUCCESS, status.SUCCESS,
        detail={"worklist": worklist_summary(identifier), "results": len(found)},
    )
    syntax = str(event.context.transfer_syntax)
    for values in found:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        yield status.PENDING, services.worklist.answer(plan, values, syntax)


def worklist_summary(identifier: Dataset) -> dict[str, str]:
    """The query's non-empty keys, those of the Scheduled Procedure Step item included."""
    summary = access.identifier_summary(identifier)
    items = identifier.get(SCHEDULED_STEPS) or []
    if items:
        summary.update(access.identifier_summary(items[0]))
    return summary


def handle_mpps_create(event: Event, services: Services) -> tuple[Any, Dataset | None]:
    principal = access.permitted(event, services, Operation.STORE, Action.ORDER)
    if principal is None:
        return access.NOT_AUTHORIZED, None
    uid = str(cast(N_CREATE, event.request).AffectedSOPInstanceUID or "").strip()
    if not uid:
        # PS3.4 F.7.2.1.1: the SCU provides the SOP Instance UID of the step it creates.
        return _refusal(services, principal, errors.MissingAttribute("the N-CREATE names no Affected SOP Instance UID"))
    try:
        outcome = services.performed_steps.create(uid, event.attribute_list, _calling(event))
    except errors.PacsError as exc:
        return _refusal(services, principal, exc, uid)
    except Exception as exc:  # noqa: BLE001  # pydicom raises many kinds for a list it cannot decode
        log.warning("MPPS N-CREATE from %s: unreadable attribute list (%s)", handlers.peer(event), type(exc).__name__)
        return _refusal(services, principal, errors.InvalidAttributeValue("the attribute list cannot be read"), uid)
    _record_step(services, principal, "create", outcome)
    return status.SUCCESS, None


def handle_mpps_set(event: Event, services: Services) -> tuple[Any, Dataset | None]:
    principal = access.permitted(event, services, Operation.STORE, Action.ORDER)
    if principal is None:
        return access.NOT_AUTHORIZED, None
    uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID or "").strip()
    try:
        outcome = services.performed_steps.update(uid, event.modification_list, _calling(event))
    except errors.PacsError as exc:
        return _refusal(services, principal, exc, uid)
    except Exception as exc:  # noqa: BLE001  # as for N-CREATE
        log.warning("MPPS N-SET from %s: unreadable modification list (%s)", handlers.peer(event), type(exc).__name__)
        return _refusal(services, principal, errors.InvalidAttributeValue("the modification list cannot be read"), uid)
    _record_step(services, principal, "set", outcome)
    return status.SUCCESS, None


def _calling(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _refusal(services: Services, principal: Any, exc: errors.PacsError, uid: str = "") -> tuple[Dataset, None]:
    """A failure status with the reason in Error Comment (PS3.7 C.4), audited."""
    code = status.status_for(exc, service="procedure-step")
    log.warning("MPPS %s refused (0x%04X): %s", uid, code, type(exc).__name__)
    access.record(services, principal, Action.ORDER, Outcome.FAILURE, code,
                  detail={"mpps": uid, "reason": str(exc)[:200]})
    answer = Dataset()
    answer.Status = code
    answer.ErrorComment = str(exc)[:64]
    if isinstance(exc, errors.Conflict) and not isinstance(exc, errors.DuplicateInstance):
        answer.ErrorID = status.MPPS_MAY_NO_LONGER_BE_UPDATED
    return answer, None


def _record_step(services: Services, principal: Any, operation: str, outcome: StepOutcome) -> None:
    step, order = outcome.step, outcome.order
    log.info("MPPS %s %s: %s, order %s%s", operation, step.sop_instance_uid, step.status,
             order.order_number if order else "none", f" -> {', '.join(outcome.moves)}" if outcome.moves else "")
    access.record(
        services, principal, Action.ORDER, Outcome.SUCCESS, status.SUCCESS,
        patient_id=order.patient_id if order else None, study_uid=step.study_instance_uid,
        detail={"mpps": step.sop_instance_uid, "operation": operation, "status": step.status,
                "order": order.order_number if order else None, "order_moves": list(outcome.moves)},
    )
