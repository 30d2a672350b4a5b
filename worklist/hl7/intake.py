"""What each HL7 v2 message does to the orders, through the same OrderService (and so the same
validation) as the HTTP API.

    ORM^O01, OMI^O23   per ORC: NW new order, CA cancel, DC discontinue, XO change
    SIU^S12 / S13      appointment booked / rescheduled: the time, and the order SCHEDULED
    SIU^S14            appointment modified: its time, length or place
    SIU^S15            appointment cancelled: the order CANCELLED
    ADT^A08            patient update: demographics on the patient's open orders
    ADT^A40            patient merge: the orders of MRG-1's patient move to PID-3's

Every order group of a message is checked before the first is applied, and the receiver applies
a message in one transaction: a message refused, even half-way, changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacs.errors import Conflict, InvalidInput, InvalidMessage, MissingField, NotFound, UnsupportedMessage
from pacs.index.hl7_orders import Hl7OrderRepository
from pacs.index.orders import Order, OrderFilter
from worklist.hl7.mapping import (
    SOURCES,
    OrderGroup,
    coded_texts,
    order_fields,
    order_groups,
    order_keys,
    patient_fields,
    patient_identifier,
    prior_patient,
    schedule_fields,
    schedule_keys,
)
from worklist.hl7.messages import Header, Hl7Message
from worklist.orders import (
    CREATABLE,
    EDITABLE,
    OPEN_STATUSES,
    OrderService,
    OrderStatus,
    check_transition,
    validated_fields,
)

_PAGE = 500


@dataclass(frozen=True)
class Applied:
    outcome: str  # what was done, in words
    patient_id: str | None = None
    orders: tuple[Order, ...] = ()  # created or changed


class Hl7Intake:
    def __init__(self, orders: OrderService, hl7_orders: Hl7OrderRepository) -> None:
        self.orders = orders
        self.hl7_orders = hl7_orders
        self.handlers: dict[tuple[str, str], Callable[[Hl7Message, str], Applied]] = {
            ("ORM", "O01"): self.order_message,
            ("OMI", "O23"): self.order_message,
            ("SIU", "S12"): self.appointment_booked,
            ("SIU", "S13"): self.appointment_rescheduled,
            ("SIU", "S14"): self.appointment_modified,
            ("SIU", "S15"): self.appointment_cancelled,
            ("ADT", "A08"): self.patient_updated,
            ("ADT", "A40"): self.patients_merged,
        }

    def check_supported(self, header: Header) -> None:
        if (header.message_code, header.trigger_event) not in self.handlers:
            taken = ", ".join(f"{code}^{event}" for code, event in self.handlers)
            raise UnsupportedMessage(f"{header.message_type} is not a message type taken here; taken: {taken}")

    def apply(self, message: Hl7Message, actor: str) -> Applied:
        """Apply the message as `actor` (who order histories name); PacsError when refused."""
        header = message.header
        handler = self.handlers[(header.message_code, header.trigger_event)]
        try:
            return handler(message, actor)
        except (InvalidMessage, UnsupportedMessage):
            raise
        except (InvalidInput, Conflict, NotFound) as exc:
            raise type(exc)(explained(str(exc))) from exc

    # ---- ORM^O01 / OMI^O23 ----------------------------------------------------------------------

    def order_message(self, message: Hl7Message, actor: str) -> Applied:
        groups = order_groups(message)
        steps = [self._order_step(group, message, actor) for group in groups]  # all checked first
        changed: list[Order] = []
        done = [step(changed) for step in steps]
        patient = changed[0].patient_id if changed else None
        return Applied("; ".join(done), patient, tuple(changed))

    def _order_step(self, group: OrderGroup, message: Hl7Message, actor: str) -> Callable[[list[Order]], str]:
        control = group.control
        if control == "NW":
            return self._new_order(group, message, actor)
        if control in ("CA", "DC"):
            target = OrderStatus.CANCELLED if control == "CA" else OrderStatus.DISCONTINUED
            order = self._find(*order_keys(group, message), names="ORC-2 / ORC-3 / accession")
            reason = coded_texts(group.orc, 16) or f"{control} from {actor}"
            return self._status_step(order, target, actor, reason)
        if control == "XO":
            order = self._find(*order_keys(group, message), names="ORC-2 / ORC-3 / accession")
            changes = order_fields(group, message)
            if message.first("PID") is not None:
                changes.update(patient_fields(message, identifier=False))
            return self._change_step(order, {k: v for k, v in changes.items() if k in EDITABLE})
        if not control:
            raise MissingField("ORC-1 (order control) is empty", "ORC-1")
        raise InvalidMessage(f"ORC-1 order control {control!r} is not one taken here: NW, CA, DC, XO", "ORC-1")

    def _new_order(self, group: OrderGroup, message: Hl7Message, actor: str) -> Callable[[list[Order]], str]:
        body = {**patient_fields(message), **order_fields(group, message)}
        validated_fields(body, CREATABLE)  # refused before anything of the message is applied
        placer = body.get("placer_order_number")
        taken = self.hl7_orders.order_with_placer_number(placer) if placer else None
        if taken is not None:
            raise Conflict(f"placer order number {placer} is already order {taken}; change it with XO")

        def create(changed: list[Order]) -> str:
            order = self.orders.create(body, created_by=actor)
            changed.append(order)
            return f"NW: created {order.order_number} (accession {order.accession_number})"

        return create

    def _status_step(self, order: Order, target: OrderStatus, actor: str, reason: str
                     ) -> Callable[[list[Order]], str]:
        if order.status == target:
            return lambda changed: f"{order.order_number} was already {target}"
        check_transition(order.status, target)

        def move(changed: list[Order]) -> str:
            moved = self.orders.change_status(order.pk, target, changed_by=actor, reason=reason)
            changed.append(moved)
            return f"{order.order_number} {target}"

        return move

    def _change_step(self, order: Order, changes: dict[str, Any]) -> Callable[[list[Order]], str]:
        validated_fields(changes, EDITABLE)
        if not order.is_open:
            raise Conflict(f"order {order.order_number} is {order.status}; closed orders cannot be changed")

        def change(changed: list[Order]) -> str:
            if not changes:
                return f"{order.order_number}: nothing to change"
            changed.append(self.orders.update(order.pk, changes))
            return f"changed {order.order_number}: {', '.join(sorted(changes))}"

        return change

    def _find(self, placer: str, filler: str, accession: str, *, names: str) -> Order:
        """The order a message names by placer order number, filler order number (our order
        number, or its accession number), or accession number."""
        if not (placer or filler or accession):
            raise MissingField(f"no placer order number, filler order number or accession number ({names})", "ORC-2")
        if placer:
            found = self.orders.search(OrderFilter(placer_order_number=placer, limit=10))
            opened = [o for o in found if o.is_open] or found
            if len(opened) > 1:
                raise Conflict(f"placer order number {placer} names {len(opened)} orders")
            if opened:
                return opened[0]
        for number, lookup in ((filler, self.orders.by_number), (filler, self.orders.by_accession),
                               (accession, self.orders.by_accession)):
            if number:
                try:
                    return lookup(number)
                except NotFound:
                    pass
        sent = ", ".join(f"{k} {v}" for k, v in (("placer", placer), ("filler", filler), ("accession", accession)) if v)
        raise NotFound(f"no order with {sent}")

    # ---- SIU^S12..S15 ---------------------------------------------------------------------------

    def appointment_booked(self, message: Hl7Message, actor: str) -> Applied:
        return self._schedule(message, actor, "appointment booked (SIU^S12)")

    def appointment_rescheduled(self, message: Hl7Message, actor: str) -> Applied:
        if "scheduled_at" not in schedule_fields(message):
            raise MissingField("a rescheduled appointment needs its new start (AIS-4, TQ1-7 or SCH-11.4)", "AIS-4")
        return self._schedule(message, actor, "appointment rescheduled (SIU^S13)")

    def appointment_modified(self, message: Hl7Message, actor: str) -> Applied:
        order = self._find(*schedule_keys(message), "", names="SCH-26 / SCH-27")
        changed: list[Order] = []
        outcome = self._change_step(order, schedule_fields(message))(changed)
        return Applied(outcome, order.patient_id, tuple(changed))

    def appointment_cancelled(self, message: Hl7Message, actor: str) -> Applied:
        order = self._find(*schedule_keys(message), "", names="SCH-26 / SCH-27")
        reason = coded_texts(message.first("SCH"), 6) or "appointment cancelled (SIU^S15)"
        changed: list[Order] = []
        outcome = self._status_step(order, OrderStatus.CANCELLED, actor, reason)(changed)
        return Applied(outcome, order.patient_id, tuple(changed))

    def _schedule(self, message: Hl7Message, actor: str, reason: str) -> Applied:
        order = self._find(*schedule_keys(message), "", names="SCH-26 / SCH-27")
        if order.status not in (OrderStatus.ORDERED, OrderStatus.SCHEDULED):
            raise Conflict(f"order {order.order_number} is {order.status}; it cannot be given an appointment")
        changes = schedule_fields(message)
        validated_fields(changes, EDITABLE)
        current = self.orders.update(order.pk, changes) if changes else order
        if current.status == OrderStatus.ORDERED:
            current = self.orders.change_status(order.pk, OrderStatus.SCHEDULED, changed_by=actor, reason=reason)
        when = current.scheduled_at.isoformat() if current.scheduled_at else "no time"
        return Applied(f"{order.order_number} SCHEDULED at {when}", order.patient_id, (current,))

    # ---- ADT^A08 / A40 --------------------------------------------------------------------------

    def patient_updated(self, message: Hl7Message, actor: str) -> Applied:
        patient_id, issuer = patient_identifier(message.first("PID"), 3, "PID-3")
        changes = patient_fields(message, identifier=False)
        validated_fields(changes, EDITABLE)
        found = self._open_orders(patient_id, issuer)
        if not changes or not found:
            what = "no demographics sent" if not changes else "no open orders"
            return Applied(f"patient {patient_id}: {what}; nothing changed", patient_id)
        changed = tuple(self.orders.update(order.pk, changes) for order in found)
        numbers = ", ".join(o.order_number for o in changed)
        return Applied(f"patient {patient_id}: {', '.join(sorted(changes))} changed on {numbers}", patient_id, changed)

    def _open_orders(self, patient_id: str, issuer: str) -> list[Order]:
        found: list[Order] = []
        statuses = tuple(sorted(OPEN_STATUSES))
        while True:
            page = self.orders.search(OrderFilter(patient_id=patient_id, statuses=statuses, limit=_PAGE,
                                                  offset=len(found)))
            found.extend(page)
            if len(page) < _PAGE:
                break
        return [o for o in found if not issuer or not o.issuer_of_patient_id or o.issuer_of_patient_id == issuer]

    def patients_merged(self, message: Hl7Message, actor: str) -> Applied:
        patient_id, issuer = patient_identifier(message.first("PID"), 3, "PID-3")
        prior = prior_patient(message)
        if prior[0] == patient_id and (not prior[1] or not issuer or prior[1] == issuer):
            raise InvalidMessage(f"MRG-1 names the same patient as PID-3 ({patient_id})", "MRG-1")
        demographics = {k: v for k, v in patient_fields(message, identifier=False).items() if v is not None}
        values = validated_fields({"patient_id": patient_id, **demographics}, CREATABLE)
        values["issuer_of_patient_id"] = issuer
        moved = self.hl7_orders.reassign_patient(prior, values, now=self.orders.clock())
        if not moved:
            return Applied(f"no orders of patient {prior[0]}; nothing moved", patient_id)
        return Applied(f"moved {', '.join(moved)} from patient {prior[0]} to {patient_id}", patient_id)


def explained(text: str) -> str:
    """A validation message with the HL7 field each order field came from."""
    for name, source in SOURCES.items():
        if text.startswith(name + " ") or f" {name} " in text:
            return text.replace(name, f"{name} ({source})", 1)
    return text
