"""The UPS state machine (PS3.4 CC.1.1, Table CC.1.1-2) over orders: create, update, change
state and request cancellation of the workitem that each order is. Every status change goes
through OrderService, so the order workflow and its history stay the one record.

A refusal names the PS3.4 status it stands for; UPS_REFUSALS says which domain error each is
(the HTTP edge maps those to 400, 404 and 409 like every other route).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.errors import Conflict, InvalidInput, NotFound, PacsError
from pacs.index.orders import Order, OrderFilter
from worklist.orders import OrderService, OrderStatus
from worklist.ups import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    UPS_STATES,
    changed_fields,
    order_fields,
    ups_state,
)

# PS3.4 CC.2.4 (N-ACTION) and CC.2.5 (N-CREATE, N-SET) statuses, and what each is here.
UPS_REFUSALS: dict[str, tuple[type[PacsError], str]] = {
    "0111": (Conflict, "a workitem with this SOP Instance UID already exists"),
    "C300": (Conflict, "the UPS may no longer be updated (it is {state})"),
    "C301": (InvalidInput, "the Transaction UID is {problem}"),
    "C302": (Conflict, "the UPS is already IN PROGRESS"),
    "C303": (Conflict, "the UPS may only become SCHEDULED when it is created"),
    "C307": (NotFound, "no workitem {uid}"),
    "C309": (InvalidInput, "a new UPS must be SCHEDULED (ProcedureStepState), not {state}"),
    "C310": (Conflict, "the UPS is not yet IN PROGRESS (it is {state}); {hint}"),
    "C311": (Conflict, "the UPS is already COMPLETED"),
    "C312": (Conflict, ("the performer cannot be contacted: this server sends no event reports; the holder "
                       "of the Transaction UID may cancel it with a change of state to CANCELED")),
}
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_ACTOR = "UPS-RS"


def refusal(code: str, **details: str) -> PacsError:
    kind, text = UPS_REFUSALS[code]
    return kind(f"{text.format(**details)} (PS3.4 status {code})")


def check_uid(value: str, what: str) -> str:
    if not (0 < len(value) <= 64 and _UID.fullmatch(value)):
        raise InvalidInput(f"{what} {value[:80]!r} is not a UID")
    return value


@dataclass
class Outcome:
    order: Order
    warnings: list[str] = field(default_factory=list)  # for the Warning header (PS3.18 11)


class WorkitemService:
    def __init__(self, orders: OrderService) -> None:
        self.orders = orders

    def modality_meaning(self, code: str) -> str | None:
        return self.orders.reference.display_name(code) if self.orders.reference is not None else None

    def get(self, uid: str, *, referred_by: str | None = None) -> Order:
        try:
            order = self.orders.repository.by_workitem(uid)
            return self.orders.get(order.pk, referred_by=referred_by)
        except NotFound:
            raise refusal("C307", uid=uid) from None

    def create(self, dataset: Dataset, uid: str | None, *, created_by: str) -> Outcome:
        """N-CREATE (PS3.4 CC.2.5.3.1): a new order, SCHEDULED, with the workitem's UID."""
        state = str(dataset.get("ProcedureStepState", "") or "")
        if state != SCHEDULED:
            raise refusal("C309", state=state or "missing")
        uid = check_uid(uid, "the workitem UID") if uid else generate_uid()
        if self._exists(uid):
            raise refusal("0111")
        fields, ignored = order_fields(dataset)
        if not fields.get("modality"):
            raise InvalidInput("the modality is required: ScheduledStationClassCodeSequence with CodeValue CT, MR, ...")
        study_uid = fields.pop("study_instance_uid", None) or None
        if study_uid and self.orders.search(OrderFilter(study_instance_uid=check_uid(study_uid, "StudyInstanceUID"))):
            raise Conflict(f"StudyInstanceUID {study_uid} already belongs to another order")
        fields.pop("order_number", None)  # ours are assigned (RequestedProcedureID)
        order = self.orders.create(
            _non_empty(fields), created_by=created_by, workitem_uid=uid, study_instance_uid=study_uid
        )
        order = self.orders.change_status(
            order.pk, OrderStatus.SCHEDULED, changed_by=created_by, reason=f"{_ACTOR}: workitem created"
        )
        return Outcome(order, _ignored_warning(ignored))

    def _exists(self, uid: str) -> bool:
        try:
            self.orders.repository.by_workitem(uid)
        except NotFound:
            return False
        return True

    def update(self, uid: str, dataset: Dataset, transaction_uid: str | None) -> Outcome:
        """N-SET (PS3.4 CC.2.6): order fields; while IN PROGRESS only with the Transaction UID."""
        order = self.get(uid)
        state = ups_state(order)
        if state in (COMPLETED, CANCELED):
            raise refusal("C300", state=state)
        if state == IN_PROGRESS:
            _check_transaction(order, transaction_uid)
        if str(dataset.get("ProcedureStepState", state) or state) != state:
            raise InvalidInput("ProcedureStepState is changed with PUT .../state, not with an update")
        fields, ignored = order_fields(dataset)
        changes = changed_fields(fields, order, self.modality_meaning)
        updated = self.orders.update(order.pk, changes) if changes else order
        return Outcome(updated, _ignored_warning(ignored))

    def change_state(self, uid: str, target: str, transaction_uid: str | None, *, changed_by: str) -> Outcome:
        """N-ACTION Change UPS State (PS3.4 CC.2.4.3.1, Table CC.1.1-2)."""
        if target not in UPS_STATES:
            raise InvalidInput(f"ProcedureStepState {target!r} is not one of {', '.join(UPS_STATES)}")
        if not transaction_uid:
            raise refusal("C301", problem="missing: send it as TransactionUID (0008,1195)")
        check_uid(transaction_uid, "TransactionUID")
        order = self.get(uid)
        state = ups_state(order)
        if target == SCHEDULED:
            raise refusal("C303")
        if target == IN_PROGRESS:
            return Outcome(self._claim(order, state, transaction_uid, changed_by))
        return self._finish(order, state, target, transaction_uid, changed_by)

    def _claim(self, order: Order, state: str, transaction_uid: str, changed_by: str) -> Order:
        if state == IN_PROGRESS:
            raise refusal("C302")
        if state != SCHEDULED:
            raise refusal("C300", state=state)
        try:
            if order.status == OrderStatus.ORDERED:  # the order workflow goes through SCHEDULED
                order = self._move(order, OrderStatus.SCHEDULED, changed_by, "claimed")
            return self._move(order, OrderStatus.IN_PROGRESS, changed_by, "claimed",
                              also={"ups_transaction_uid": transaction_uid})
        except Conflict as exc:
            if ups_state(self.orders.repository.get(order.pk)) in (SCHEDULED, IN_PROGRESS):
                raise refusal("C302") from None  # another performer claimed it first
            raise exc

    def _finish(self, order: Order, state: str, target: str, transaction_uid: str, changed_by: str) -> Outcome:
        if state == SCHEDULED:
            hint = "claim it first" if target == COMPLETED else "ask for cancellation with POST .../cancelrequest"
            raise refusal("C310", state=state, hint=hint)
        if state in (COMPLETED, CANCELED) and state != target:
            raise refusal("C300", state=state)
        _check_transaction(order, transaction_uid)
        if state == target:  # PS3.4 B306 / B304: already there, a warning and success
            return Outcome(order, [f"The UPS is already in the requested state of {target}"])
        # A step stopped during performance is a discontinued order (as an MPPS DISCONTINUED).
        status = OrderStatus.COMPLETED if target == COMPLETED else OrderStatus.DISCONTINUED
        return Outcome(self._move(order, status, changed_by, target.lower()))

    def request_cancellation(self, uid: str, reason: str, *, changed_by: str, referred_by: str | None = None) -> Outcome:
        """N-ACTION Request UPS Cancel (PS3.4 CC.2.4.3.2): a SCHEDULED step is canceled at once."""
        order = self.get(uid, referred_by=referred_by)
        state = ups_state(order)
        if state == CANCELED:
            return Outcome(order, [f"The UPS is already in the requested state of {CANCELED}"])
        if state == COMPLETED:
            raise refusal("C311")
        if state == IN_PROGRESS:
            raise refusal("C312")
        text = f"cancellation requested: {reason}" if reason else "cancellation requested"
        return Outcome(self._move(order, OrderStatus.CANCELLED, changed_by, text))

    def _move(self, order: Order, status: str, changed_by: str, what: str,
              also: Mapping[str, Any] | None = None) -> Order:
        try:
            return self.orders.change_status(
                order.pk, status, changed_by=changed_by, reason=f"{_ACTOR}: {what}", expected=order.status,
                also=also,
            )
        except Conflict:  # another client moved it meanwhile: answer for the state it is in now
            current = ups_state(self.orders.repository.get(order.pk))
            raise refusal("C302") if current == IN_PROGRESS else refusal("C300", state=current) from None


def _check_transaction(order: Order, transaction_uid: str | None) -> None:
    if not transaction_uid:
        raise refusal("C301", problem="missing: the step is IN PROGRESS; send its TransactionUID")
    if order.ups_transaction_uid is None:
        raise refusal("C301", problem="not this step's: it was started outside UPS-RS and has none")
    if transaction_uid != order.ups_transaction_uid:
        raise refusal("C301", problem="incorrect")


def _non_empty(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value not in ("", None)}


def _ignored_warning(ignored: list[str]) -> list[str]:
    return [f"These attributes were not kept (no order field holds them): {', '.join(ignored)}"] if ignored else []
