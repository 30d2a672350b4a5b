"""UPS-RS Search parameters (PS3.18 11.9.1, matching as QIDO-RS 8.3.4) -> WorkitemQuery.

Attributes are named by keyword or tag, items of a sequence as `Sequence.Attribute`
(`ReferencedRequestSequence.AccessionNumber`, `00404025.00080100`). Matching follows PS3.4
C.2.2.2: single values, lists, `*`/`?` wildcards, date and date-time ranges; person names are
matched case-insensitively. Attributes of the UPS we cannot match on are ignored and named in
a Warning (as QIDO-RS does); names that are no DICOM attribute at all are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pacs.dicom.attributes import Attribute, Level, resolve_attribute_name
from pacs.dicom.query import Condition, MatchKind, parse_condition
from pacs.errors import InvalidQuery
from pacs.index.workitems import WorkitemQuery
from worklist.ups import ORDER_STATUSES_OF, UPS_PRIORITY_OF, UPS_STATES, parse_dicom_datetime

_CONTROL = frozenset({"limit", "offset", "fuzzymatching", "includefield", "orderby"})
_MAX_LIMIT = 1000
_DEFAULT_LIMIT = 100

# Matching keys (PS3.4 Table CC.2.5-3) -> (orders column, VR).
_MATCHABLE: dict[str, tuple[str, str]] = {
    "SOPInstanceUID": ("workitem_uid", "UI"),
    "PatientID": ("patient_id", "LO"),
    "IssuerOfPatientID": ("issuer_of_patient_id", "LO"),
    "PatientName": ("patient_name", "PN"),
    "PatientBirthDate": ("patient_birth_date", "DA"),
    "PatientSex": ("patient_sex", "CS"),
    "ProcedureStepLabel": ("procedure_description", "LO"),
    "AccessionNumber": ("accession_number", "SH"),  # also accepted outside the sequence
    "ReferencedRequestSequence.AccessionNumber": ("accession_number", "SH"),
    "ReferencedRequestSequence.StudyInstanceUID": ("study_instance_uid", "UI"),
    "ReferencedRequestSequence.RequestedProcedureID": ("order_number", "SH"),
    "ReferencedRequestSequence.RequestingPhysician": ("ordering_provider", "PN"),
    "ReferencedRequestSequence.PlacerOrderNumberImagingServiceRequest": ("placer_order_number", "LO"),
    "ScheduledStationNameCodeSequence.CodeValue": ("station_ae_title", "SH"),
    "ScheduledStationClassCodeSequence.CodeValue": ("modality", "SH"),
    "ScheduledStationGeographicLocationCodeSequence.CodeValue": ("location", "SH"),
    "ScheduledWorkitemCodeSequence.CodeValue": ("procedure_code", "SH"),
    "ScheduledHumanPerformersSequence.HumanPerformerName": ("performing_physician", "PN"),
}
_STATE = "ProcedureStepState"
_PRIORITY = "ScheduledProcedureStepPriority"
_START = "ScheduledProcedureStepStartDateTime"


@dataclass
class ParsedSearch:
    query: WorkitemQuery
    warnings: list[str] = field(default_factory=list)


def parse_search(items: Sequence[tuple[str, str]], referred_by: str | None) -> ParsedSearch:
    conditions: list[Condition] = []
    statuses = priorities = None
    start: tuple[datetime | None, datetime | None] = (None, None)
    ignored: list[str] = []
    for name, value in items:
        if name.lower() in _CONTROL:
            _check_control(name.lower(), value)
            continue
        path = attribute_path(name)
        if path == _STATE:
            statuses = _statuses(value)
        elif path == _PRIORITY:
            priorities = _priorities(value)
        elif path == _START:
            start = _start_range(value)
        elif path in _MATCHABLE:
            column, vr = _MATCHABLE[path]
            condition = parse_condition(Attribute(path, Level.STUDY, vr, column), value)
            if condition is not None:
                conditions.append(condition)
        else:
            ignored.append(name)
    query = WorkitemQuery(
        conditions=tuple(conditions), statuses=statuses, priorities=priorities, scheduled_from=start[0],
        scheduled_to=start[1], referred_by=referred_by, limit=_paging(items, "limit", _DEFAULT_LIMIT),
        offset=_paging(items, "offset", 0),
    )
    warnings = [f"The following attributes are not supported for matching: {', '.join(ignored)}"] if ignored else []
    return ParsedSearch(query, warnings)


def attribute_path(name: str) -> str:
    """`Keyword` or `Sequence.Keyword`, from keywords or tags; InvalidQuery if not DICOM."""
    keywords = []
    for part in name.split("."):
        try:
            tag, keyword = resolve_attribute_name(part)
        except KeyError:
            raise InvalidQuery(f"unknown attribute {name!r}") from None
        keywords.append(keyword or f"{tag:08X}")
    return ".".join(keywords)


def _values(value: str) -> list[str]:
    return [v.strip().upper() for v in value.replace("\\", ",").split(",") if v.strip()]


def _statuses(value: str) -> tuple[str, ...] | None:
    states = _values(value)
    if not states:
        return None
    unknown = [s for s in states if s not in UPS_STATES]
    if unknown:
        raise InvalidQuery(f"{_STATE}: {', '.join(unknown)} is not one of {', '.join(UPS_STATES)}")
    return tuple(status for state in states for status in ORDER_STATUSES_OF[state])


def _priorities(value: str) -> tuple[str, ...] | None:
    wanted = _values(value)
    if not wanted:
        return None
    if any(p not in ("HIGH", "MEDIUM", "LOW") for p in wanted):
        raise InvalidQuery(f"{_PRIORITY}: {value!r} is not HIGH, MEDIUM or LOW")
    return tuple(order for order, ups in UPS_PRIORITY_OF.items() if ups in wanted)


def _start_range(value: str) -> tuple[datetime | None, datetime | None]:
    """A DT value or range; each end covers its whole precision (20300101 is that whole day)."""
    condition = parse_condition(Attribute(_START, Level.STUDY, "DT", "scheduled_at"), value)
    if condition is None:
        return None, None
    if condition.kind == MatchKind.SINGLE:
        low = high = condition.values[0]
    else:
        low, high = condition.values
    return (_moment(low) if low else None), (_end_of(high) if high else None)


def _moment(text: str) -> datetime:
    return parse_dicom_datetime(text, _START)


def _end_of(text: str) -> datetime:
    """The first instant after the period `text` names (a year, a day, a minute, ...)."""
    digits = len(text.split("+")[0].split("-")[0].split(".")[0])
    start = _moment(text)
    if digits == 4:
        return start.replace(year=start.year + 1)
    if digits == 6:
        return (start.replace(day=28) + timedelta(days=4)).replace(day=start.day)
    step = {8: timedelta(days=1), 10: timedelta(hours=1), 12: timedelta(minutes=1)}.get(digits, timedelta(seconds=1))
    return start + step


def _check_control(name: str, value: str) -> None:
    if name == "includefield":  # every workitem is returned whole; the names must still be DICOM
        for part in filter(None, (p.strip() for p in value.split(","))):
            if part.lower() != "all":
                attribute_path(part)
    elif name == "fuzzymatching" and value.strip().lower() not in ("", "true", "false"):
        raise InvalidQuery(f"fuzzymatching must be true or false, not {value!r}")


def _paging(items: Sequence[tuple[str, str]], name: str, default: int) -> int:
    raw = next((v for k, v in items if k.lower() == name), "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise InvalidQuery(f"{name} must be a non-negative integer, not {raw!r}")
    value = int(raw)
    return min(value or default, _MAX_LIMIT) if name == "limit" else value
