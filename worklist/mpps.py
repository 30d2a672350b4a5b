"""Modality Performed Procedure Steps (PS3.4 F.7): what a modality reports it did, and the order
status that follows from it.

    N-CREATE, status IN PROGRESS   -> the order goes to IN_PROGRESS (through SCHEDULED if ORDERED)
    N-SET, status COMPLETED        -> the order goes to COMPLETED
    N-SET, status DISCONTINUED     -> the order goes to DISCONTINUED

A step is linked to the order its Scheduled Step Attributes Sequence names: by StudyInstanceUID,
else AccessionNumber, else Requested Procedure ID (our order number); the first item that names
an order wins. A step naming no order (an unscheduled exam) is kept unlinked and listed for staff.
Each order move goes through the order workflow, so it is in the order's history with the AE
that caused it; an order that can no longer move (cancelled meanwhile) keeps its status, and the
step is recorded all the same: the modality's account of what it did is never refused for that.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from pydicom.dataset import Dataset

from pacs.errors import Conflict, InvalidAttributeValue, MissingAttribute, MissingAttributeValue, NotFound
from pacs.index.orders import Order, OrderFilter
from pacs.index.performed_steps import PerformedStep, PerformedStepRepository
from worklist.dicom_time import parse_dicom_datetime
from worklist.orders import OrderService, OrderStatus, utcnow

log = logging.getLogger(__name__)

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)  # PS3.3 C.4.14 Performed Procedure Step Status
FINAL = frozenset({COMPLETED, DISCONTINUED})
SSAS = "ScheduledStepAttributesSequence"
# Type 1 at N-CREATE (PS3.4 Table F.7.2-1): absent -> 0x0120, empty -> 0x0121.
REQUIRED_AT_CREATE = (
    SSAS, "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus", "Modality",
)
# "Not allowed" in N-SET (Table F.7.2-1). Modalities often send them again unchanged; the
# values given at N-CREATE are kept rather than the request refused.
FIXED_AFTER_CREATE = frozenset({
    SSAS, "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "ReferencedPatientSequence", "PerformedStationAETitle", "PerformedStationName", "PerformedLocation",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "PerformedProcedureStepID", "Modality",
    "StudyID", "SOPInstanceUID", "SOPClassUID",
})
# The order workflow a step walks along; DISCONTINUED is reachable from any open status.
_FORWARD = (OrderStatus.ORDERED, OrderStatus.SCHEDULED, OrderStatus.IN_PROGRESS, OrderStatus.COMPLETED)
_ORDER_TARGET = {IN_PROGRESS: OrderStatus.IN_PROGRESS, COMPLETED: OrderStatus.COMPLETED,
                 DISCONTINUED: OrderStatus.DISCONTINUED}


@dataclass(frozen=True)
class StepOutcome:
    step: PerformedStep
    order: Order | None  # the linked order, as it is after the step's effect
    moves: tuple[str, ...] = ()  # the order statuses entered


class MppsService:
    def __init__(
        self, steps: PerformedStepRepository, orders: OrderService, zone: tzinfo | None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.steps = steps
        self.orders = orders
        self.zone = zone
        self.clock = clock

    def create(self, sop_instance_uid: str, attributes: Dataset, calling_ae: str) -> StepOutcome:
        """N-CREATE: record a new step IN PROGRESS and start its order."""
        _require(attributes, REQUIRED_AT_CREATE)
        items = attributes[SSAS].value
        for item in items:  # Type 1 in every item as well, with the same two statuses
            _require(item, ("StudyInstanceUID",), within=f"{SSAS} > ")
        status = _status(attributes)
        if status != IN_PROGRESS:
            raise InvalidAttributeValue(f"a performed procedure step is created IN PROGRESS, not {status!r}")
        order = self._find_order(items)
        now = self.clock()
        first = items[0]
        self.steps.create(PerformedStep(
            sop_instance_uid=sop_instance_uid, status=status, calling_ae_title=calling_ae[:16],
            attributes_json=_json(attributes), created_at=now, updated_at=now,
            order_pk=order.pk if order else None,
            performed_station_ae_title=_text(attributes, "PerformedStationAETitle", 16),
            modality=_text(attributes, "Modality", 16),
            study_instance_uid=_text(first, "StudyInstanceUID", 64) or (order.study_instance_uid if order else None),
            accession_number=_text(first, "AccessionNumber", 16) or (order.accession_number if order else None),
            started_at=self._instant(attributes, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
            performed_series=performed_series(attributes),
        ))
        return self._effect(self.steps.get(sop_instance_uid), order, calling_ae)

    def update(self, sop_instance_uid: str, modification: Dataset, calling_ae: str) -> StepOutcome:
        """N-SET: change a step still IN PROGRESS; COMPLETED or DISCONTINUED ends it (and its order)."""
        current = self.steps.get(sop_instance_uid)
        if current.status in FINAL:
            # Error Comment holds 64 characters: the reason first, without the UID the peer knows.
            raise Conflict(f"the step is {current.status} and may no longer be updated")
        status = _status(modification) if "PerformedProcedureStepStatus" in modification else current.status
        merged = Dataset.from_json(current.attributes_json)
        for element in modification:
            if element.keyword not in FIXED_AFTER_CREATE:
                merged[element.tag] = element
        values: dict[str, Any] = {
            "status": status, "attributes_json": _json(merged), "updated_at": self.clock(),
            "performed_series": performed_series(merged),
        }
        if status in FINAL:
            ended = self._instant(merged, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
            values["ended_at"] = ended or self.clock()
        self.steps.update(sop_instance_uid, current.status, values)
        order = self._order(current.order_pk)
        step = self.steps.get(sop_instance_uid)
        return self._effect(step, order, calling_ae) if status != current.status else StepOutcome(step, order)

    def get(self, sop_instance_uid: str) -> PerformedStep:
        return self.steps.get(sop_instance_uid)

    def search(self, **where: Any) -> list[PerformedStep]:
        return self.steps.search(**where)

    def _find_order(self, items: Any) -> Order | None:
        for item in items:
            for keyword, lookup in (
                ("StudyInstanceUID", self._by_study), ("AccessionNumber", self.orders.by_accession),
                ("RequestedProcedureID", self.orders.by_number),
            ):
                value = str(item.get(keyword, "") or "").strip()
                if not value:
                    continue
                try:
                    return lookup(value)
                except NotFound:
                    continue
        return None

    def _by_study(self, study_uid: str) -> Order:
        found = self.orders.search(OrderFilter(study_instance_uid=study_uid, limit=1))
        if not found:
            raise NotFound(f"no order for study {study_uid}")
        return found[0]

    def _order(self, pk: int | None) -> Order | None:
        if pk is None:
            return None
        try:
            return self.orders.get(pk)
        except NotFound:
            return None

    def _effect(self, step: PerformedStep, order: Order | None, calling_ae: str) -> StepOutcome:
        """Move the linked order to the status the step's status calls for, one workflow step at a time."""
        if order is None:
            return StepOutcome(step, None)
        moves = []
        for target in _path(OrderStatus(order.status), _ORDER_TARGET[step.status]):
            try:
                order = self.orders.change_status(
                    order.pk, target, changed_by=f"AE:{calling_ae}",
                    reason=f"MPPS {step.sop_instance_uid} {step.status}",
                )
            except Conflict as exc:  # moved by someone else meanwhile: theirs stands
                log.warning("order %s not moved to %s by MPPS: %s", order.order_number, target, exc)
                break
            moves.append(target.value)
        if not moves and order.status != _ORDER_TARGET[step.status]:
            log.info("MPPS %s %s: order %s stays %s", step.sop_instance_uid, step.status, order.order_number,
                     order.status)
        return StepOutcome(step, order, tuple(moves))

    def _instant(self, ds: Dataset, date_keyword: str, time_keyword: str) -> datetime | None:
        return parse_dicom_datetime(str(ds.get(date_keyword, "") or ""), str(ds.get(time_keyword, "") or ""), self.zone)


def _path(current: OrderStatus, target: OrderStatus) -> list[OrderStatus]:
    """The statuses an order passes through from `current` to `target` (empty: none, or it cannot)."""
    if target == OrderStatus.DISCONTINUED:
        return [target] if current in (OrderStatus.ORDERED, OrderStatus.SCHEDULED, OrderStatus.IN_PROGRESS) else []
    if current not in _FORWARD or _FORWARD.index(current) >= _FORWARD.index(target):
        return []
    return list(_FORWARD[_FORWARD.index(current) + 1 : _FORWARD.index(target) + 1])


def _require(ds: Dataset, keywords: tuple[str, ...], within: str = "") -> None:
    for keyword in keywords:
        if keyword not in ds:
            raise MissingAttribute(f"{within}{keyword} is required (Type 1, PS3.4 Table F.7.2-1)")
        value = ds[keyword].value
        if value is None or value == "" or (ds[keyword].VR == "SQ" and len(value) == 0):
            raise MissingAttributeValue(f"{within}{keyword} needs a value (Type 1, PS3.4 Table F.7.2-1)")


def _status(ds: Dataset) -> str:
    status = str(ds.get("PerformedProcedureStepStatus", "") or "").strip().upper()
    if status not in STATUSES:
        raise InvalidAttributeValue(f"PerformedProcedureStepStatus {status!r} is not one of {', '.join(STATUSES)}")
    return status


def _text(ds: Dataset, keyword: str, length: int) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value[:length] or None


def _json(ds: Dataset) -> str:
    return json.dumps(ds.to_json_dict(), separators=(",", ":"))


def performed_series(ds: Dataset) -> list[dict[str, Any]]:
    """The Performed Series Sequence (PS3.3 C.4.17) as plain values: the series and its instances."""
    found = []
    for item in ds.get("PerformedSeriesSequence") or []:
        references = [*(item.get("ReferencedImageSequence") or []),
                      *(item.get("ReferencedNonImageCompositeSOPInstanceSequence") or [])]
        found.append({
            "series_instance_uid": str(item.get("SeriesInstanceUID", "") or ""),
            "series_description": str(item.get("SeriesDescription", "") or ""),
            "protocol_name": str(item.get("ProtocolName", "") or ""),
            "performing_physician_name": str(item.get("PerformingPhysicianName", "") or ""),
            "operators_name": str(item.get("OperatorsName", "") or ""),
            "retrieve_ae_title": str(item.get("RetrieveAETitle", "") or ""),
            "instances": [str(r.get("ReferencedSOPInstanceUID", "")) for r in references],
        })
    return found
