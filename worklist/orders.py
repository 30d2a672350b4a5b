"""Imaging orders: what may be ordered, the status workflow, and the service the API calls.

    ORDERED -> SCHEDULED -> IN_PROGRESS -> COMPLETED -> REPORTED
    ORDERED | SCHEDULED | IN_PROGRESS -> CANCELLED | DISCONTINUED

Order numbers are ORD-YYYY-NNNNN and accession numbers ACC-YYYY-NNNNN, counted per calendar
year (UTC); an accession number assigned by another system (an HIS/RIS) is kept as given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydicom.uid import generate_uid

from pacs.errors import Conflict, InvalidInput, NotFound
from pacs.index.orders import Order, OrderFilter, OrderRepository, StatusChange
from pacs.security.principal import normalized_person_name
from worklist.reference import ReferenceData


class OrderStatus(StrEnum):
    ORDERED = "ORDERED"
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    REPORTED = "REPORTED"
    CANCELLED = "CANCELLED"
    DISCONTINUED = "DISCONTINUED"


OPEN_STATUSES = frozenset({OrderStatus.ORDERED, OrderStatus.SCHEDULED, OrderStatus.IN_PROGRESS})

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.ORDERED: frozenset({OrderStatus.SCHEDULED, OrderStatus.CANCELLED, OrderStatus.DISCONTINUED}),
    OrderStatus.SCHEDULED: frozenset({OrderStatus.IN_PROGRESS, OrderStatus.CANCELLED, OrderStatus.DISCONTINUED}),
    OrderStatus.IN_PROGRESS: frozenset({OrderStatus.COMPLETED, OrderStatus.CANCELLED, OrderStatus.DISCONTINUED}),
    OrderStatus.COMPLETED: frozenset({OrderStatus.REPORTED}),
    OrderStatus.REPORTED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.DISCONTINUED: frozenset(),
}

PRIORITIES = ("STAT", "URGENT", "ROUTINE")
SEXES = ("M", "F", "O")
LATERALITIES = ("R", "L", "B", "U")  # PS3.3 C.7.3.1: right, left, both (bilateral), unpaired

# Fields a caller may set, with their longest length (the DICOM VR's where one applies).
_TEXT_LIMITS = {
    "patient_id": 64, "issuer_of_patient_id": 64, "patient_name": 324, "ordering_provider": 324,
    "body_part": 64, "procedure_code": 64, "procedure_description": 64, "clinical_indication": 10240,
    "station_ae_title": 16, "accession_number": 16, "clinical_history": 10240, "contrast_agent": 64,
    "special_instructions": 10240, "location": 64, "performing_physician": 324, "placer_order_number": 64,
    "filler_order_number": 64,
}
_FLAGS = frozenset({"contrast_required", "contrast_allergy_checked", "contrast_renal_checked"})
_MAX_DURATION_MINUTES = 24 * 60
_UPPER = frozenset({"modality", "body_part"})  # codes; checked against the reference data
_CHOICES = {"priority": PRIORITIES, "patient_sex": SEXES, "laterality": LATERALITIES}
EDITABLE = frozenset(
    {"patient_name", "patient_birth_date", "patient_sex", "ordering_provider", "modality", "body_part", "laterality",
     "procedure_code", "procedure_description", "priority", "clinical_indication", "scheduled_at",
     "station_ae_title", "clinical_history", "contrast_required", "contrast_agent", "contrast_allergy_checked",
     "contrast_renal_checked", "special_instructions", "duration_minutes", "location", "performing_physician",
     "filler_order_number"}
)
CREATABLE = EDITABLE | {"patient_id", "issuer_of_patient_id", "accession_number", "placer_order_number"}
_ACCESSION = re.compile(r"[\x20-\x7e]+")  # SH: default repertoire, no backslash (checked below)


def check_transition(current: str, target: str) -> OrderStatus:
    """The target status, if an order in `current` may move there; Conflict otherwise."""
    wanted = parse_status(target)
    if wanted not in TRANSITIONS[OrderStatus(current)]:
        allowed = ", ".join(sorted(TRANSITIONS[OrderStatus(current)])) or "none (it is closed)"
        raise Conflict(f"an order cannot go from {current} to {wanted}; allowed from {current}: {allowed}")
    return wanted


def parse_status(text: str) -> OrderStatus:
    try:
        return OrderStatus(text.strip().upper())
    except (ValueError, AttributeError):
        raise InvalidInput(f"unknown order status {text!r}; one of {', '.join(OrderStatus)}") from None


def validated_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """Column values from a caller's fields: known names only, checked and normalised."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown or read-only order fields: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, raw in body.items():
        if name in _FLAGS:
            values[name] = _flag(name, raw)
        elif raw is None or raw == "":
            values[name] = None
        elif name == "duration_minutes":
            values[name] = _duration(raw)
        elif name == "scheduled_at":
            values[name] = parse_datetime(raw, name)
        elif name == "patient_birth_date":
            values[name] = parse_dicom_date(raw, name)
        else:
            values[name] = _text(name, raw)
    if "ordering_provider" in values:
        provider = values["ordering_provider"]
        values["ordering_provider_norm"] = normalized_person_name(provider) if provider else None
    return values


def _flag(name: str, raw: Any) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise InvalidInput(f"{name} must be true or false")
    return raw


def _duration(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= _MAX_DURATION_MINUTES:
        raise InvalidInput(f"duration_minutes must be a whole number of minutes from 1 to {_MAX_DURATION_MINUTES}")
    return raw


def _text(name: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise InvalidInput(f"{name} must be a string")
    value = raw.strip()
    if name in _UPPER:
        value = value.upper()
    if name in _CHOICES:
        value = value.upper()
        if value not in _CHOICES[name]:
            raise InvalidInput(f"{name} {raw!r} is not one of {', '.join(_CHOICES[name])}")
    if len(value) > _TEXT_LIMITS.get(name, 64):
        raise InvalidInput(f"{name} is longer than {_TEXT_LIMITS.get(name, 64)} characters")
    if name in ("accession_number", "station_ae_title") and ("\\" in value or not _ACCESSION.fullmatch(value)):
        raise InvalidInput(f"{name} {raw!r} must be printable ASCII without backslash")
    return value


def parse_datetime(raw: Any, name: str = "date and time") -> datetime:
    """ISO 8601; a time without an offset is taken as UTC."""
    if not isinstance(raw, str):
        raise InvalidInput(f"{name} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidInput(f"{name} {raw!r} is not an ISO 8601 date or time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_date(raw: str, name: str) -> date:
    """YYYY-MM-DD or the DICOM DA form YYYYMMDD."""
    text = raw.strip()
    try:
        return datetime.strptime(text, "%Y%m%d" if len(text) == 8 else "%Y-%m-%d").date()
    except ValueError:
        raise InvalidInput(f"{name} {raw!r} is not a date (YYYY-MM-DD or YYYYMMDD)") from None


def parse_dicom_date(raw: Any, name: str) -> str:
    if not isinstance(raw, str):
        raise InvalidInput(f"{name} must be a string")
    return parse_date(raw, name).strftime("%Y%m%d")


def utcnow() -> datetime:
    return datetime.now(UTC)


class OrderService:
    def __init__(
        self,
        repository: OrderRepository,
        clock: Callable[[], datetime] = utcnow,
        reference: ReferenceData | None = None,
    ) -> None:
        self.repository = repository
        self.clock = clock
        self.reference = reference

    def create(
        self, body: Mapping[str, Any], *, created_by: str, workitem_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> Order:
        """A new ORDERED order. `workitem_uid` and `study_instance_uid` are kept when another system
        chose them (a UPS-RS client); otherwise they are generated."""
        values = validated_fields(body, CREATABLE)
        for required in ("patient_id", "patient_name", "modality"):
            if not values.get(required):
                raise InvalidInput(f"{required} is required")
        self._check_reference(values)
        values["priority"] = values.get("priority") or "ROUTINE"
        values["issuer_of_patient_id"] = values.get("issuer_of_patient_id") or ""
        external = bool(values.get("accession_number"))  # a number already used is refused by the insert
        now = self.clock()
        values.update(
            status=OrderStatus.ORDERED.value,
            study_instance_uid=study_instance_uid or values.get("study_instance_uid") or generate_uid(),
            workitem_uid=workitem_uid or generate_uid(), created_by=created_by,
        )
        return self.repository.create(values, year=now.year, generate_accession=not external, now=now)

    def _check_reference(self, values: Mapping[str, Any]) -> None:
        if self.reference is not None:
            self.reference.check(values.get("modality"), values.get("body_part"))

    def get(self, pk: int, *, referred_by: str | None = None) -> Order:
        return _visible(self.repository.get(pk), referred_by, str(pk))

    def by_number(self, order_number: str, *, referred_by: str | None = None) -> Order:
        return _visible(self.repository.by_number(order_number), referred_by, order_number)

    def by_accession(self, accession_number: str, *, referred_by: str | None = None) -> Order:
        found = self.repository.by_accession(accession_number)
        return _visible(found, referred_by, f"with accession {accession_number}")

    def search(self, where: OrderFilter) -> list[Order]:
        return self.repository.search(where)

    def patient_orders(self, patient_id: str, *, referred_by: str | None = None, limit: int = 100,
                       offset: int = 0) -> list[Order]:
        return self.search(OrderFilter(patient_id=patient_id, referred_by=referred_by, limit=limit, offset=offset))

    def update(self, pk: int, body: Mapping[str, Any]) -> Order:
        values = validated_fields(body, EDITABLE)
        for required in ("patient_name", "modality", "priority"):
            if required in values and not values[required]:
                raise InvalidInput(f"{required} cannot be emptied")
        order = self.repository.get(pk)
        if order.status not in OPEN_STATUSES:
            raise Conflict(f"order {order.order_number} is {order.status}; closed orders cannot be changed")
        if not values:
            return order
        self._check_reference({"modality": order.modality, "body_part": order.body_part, **values})
        return self.repository.update(pk, values, expected_status=order.status, now=self.clock())

    def change_status(
        self, pk: int, status: str, *, changed_by: str, reason: str = "", expected: str | None = None,
        also: Mapping[str, Any] | None = None,
    ) -> Order:
        """Move the order through the workflow. With `expected`, only from that status (Conflict
        otherwise); `also` are columns written in the same transaction (a UPS Transaction UID)."""
        order = self.repository.get(pk)
        if expected is not None and order.status != expected:
            raise Conflict(f"order {order.order_number} is {order.status}, no longer {expected}")
        target = check_transition(order.status, status)
        return self.repository.change_status(
            pk, order.status, target.value, changed_by=changed_by, reason=reason[:1000], now=self.clock(),
            values=dict(also or {}),
        )

    def cancel(self, pk: int, *, changed_by: str, reason: str = "") -> Order:
        return self.change_status(pk, OrderStatus.CANCELLED, changed_by=changed_by, reason=reason)

    def history(self, pk: int) -> list[StatusChange]:
        return self.repository.history(pk)


def scheduled_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """[start day 00:00, day after end 00:00) in UTC, from inclusive YYYY-MM-DD dates."""
    low = datetime.combine(parse_date(start, "scheduled_from"), datetime.min.time(), UTC) if start else None
    high = None
    if end:
        high = datetime.combine(parse_date(end, "scheduled_to") + timedelta(days=1), datetime.min.time(), UTC)
    return low, high


def _visible(order: Order, referred_by: str | None, name: str) -> Order:
    # A provider is told an order of another provider does not exist, as for studies.
    if referred_by is not None and normalized_person_name(order.ordering_provider or "") != referred_by:
        raise NotFound(f"no order {name}")
    return order

