"""Where order fields are in HL7 v2 order, scheduling and patient messages (HL7 v2.5 chapters
3, 4, 10 and the IHE Radiology OMI profile), turned into the field names of worklist.orders.

An empty field means "not sent" (nothing changes); the HL7 null `""` means "clear the value"
(HL7 v2.5 2.5.3), so it maps to None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hl7

from pacs.errors import InvalidMessage, MissingField
from worklist.hl7.messages import Hl7Message, repetitions, value

HL7_NULL = '""'
ORDER_SEGMENTS = frozenset({"OBR", "TQ1", "IPC", "NTE", "ORC"})

# HL7 table 0074 (diagnostic service section) codes that name a DICOM modality another way.
SERVICE_SECTIONS = {"NMR": "MR", "NMS": "NM", "VUS": "US", "CUS": "US", "XRC": "RF"}
# TQ1-9 / TQ priority (HL7 table 0485) -> order priority.
PRIORITIES = {"S": "STAT", "STAT": "STAT", "A": "URGENT", "ASAP": "URGENT", "T": "URGENT", "URGENT": "URGENT",
              "R": "ROUTINE", "ROUTINE": "ROUTINE", "P": "ROUTINE", "C": "ROUTINE", "PRN": "ROUTINE"}
SEXES = {"M": "M", "F": "F", "O": "O", "A": "O", "U": None, "N": None}  # HL7 table 0001 -> DICOM
_UNITS = {"S": 1 / 60, "SEC": 1 / 60, "M": 1, "MIN": 1, "H": 60, "HR": 60, "HOUR": 60, "D": 1440, "DAY": 1440}
# Where each order field comes from, to name it in an answer's reason.
SOURCES = {
    "patient_id": "PID-3", "issuer_of_patient_id": "PID-3.4", "patient_name": "PID-5", "patient_birth_date": "PID-7",
    "patient_sex": "PID-8", "location": "PV1-3 / AIL-3", "placer_order_number": "ORC-2",
    "filler_order_number": "ORC-3", "ordering_provider": "ORC-12 / OBR-16", "procedure_code": "OBR-4.1",
    "procedure_description": "OBR-4.2", "clinical_history": "OBR-13", "accession_number": "OBR-18 / IPC-1",
    "modality": "OBR-24 / IPC-5", "clinical_indication": "OBR-31", "scheduled_at": "TQ1-7 / ORC-7 / OBR-36 / AIS-4",
    "priority": "TQ1-9 / ORC-7.6", "station_ae_title": "IPC-9", "special_instructions": "NTE-3",
    "duration_minutes": "AIS-7 / SCH-9",
}
_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?")


@dataclass
class OrderGroup:
    """One ORC with the segments that follow it (OBR, TQ1, IPC, NTE)."""

    orc: hl7.Segment
    segments: dict[str, list[hl7.Segment]] = field(default_factory=dict)

    def first(self, segment_id: str) -> hl7.Segment | None:
        found = self.segments.get(segment_id)
        return found[0] if found else None

    @property
    def control(self) -> str:
        return value(self.orc, 1).upper()


def order_groups(message: Hl7Message) -> list[OrderGroup]:
    groups: list[OrderGroup] = []
    for segment in message.parsed:
        name = str(segment[0])
        if name == "ORC":
            groups.append(OrderGroup(segment))
        elif groups and name in ORDER_SEGMENTS:
            groups[-1].segments.setdefault(name, []).append(segment)
    if not groups:
        raise MissingField("the message has no ORC segment (common order)", "ORC")
    return groups


def present(text: str) -> str | None:
    return None if text == HL7_NULL else text


def _put(values: dict[str, Any], name: str, text: str) -> None:
    if text:
        values[name] = present(text)


# ---- patients ---------------------------------------------------------------------------------


def patient_identifier(segment: hl7.Segment | None, field_number: int, name: str) -> tuple[str, str]:
    """(ID, issuer) from a CX list (PID-3, MRG-1): the medical record number if one is marked
    MR (CX.5), else the first identifier sent."""
    found: list[tuple[str, str, str]] = []
    for repetition in range(1, repetitions(segment, field_number) + 1):
        identifier = value(segment, field_number, 1, repetition)
        if identifier and identifier != HL7_NULL:
            issuer = value(segment, field_number, 4, repetition)
            found.append((identifier, issuer, value(segment, field_number, 5, repetition).upper()))
    if not found:
        raise MissingField(f"{name} (patient identifier) is empty", name)
    identifier, issuer, _ = next((f for f in found if f[2] == "MR"), found[0])
    return identifier, issuer


def patient_fields(message: Hl7Message, *, identifier: bool = True) -> dict[str, Any]:
    """PID: demographics, and with `identifier` the patient ID and issuer (PID-3)."""
    pid = message.first("PID")
    if pid is None:
        raise MissingField("the message has no PID segment", "PID")
    values: dict[str, Any] = {}
    if identifier:
        values["patient_id"], issuer = patient_identifier(pid, 3, "PID-3")
        _put(values, "issuer_of_patient_id", issuer)
    _put(values, "patient_name", person_name(pid, 5, family=1, given=2, middle=3, suffix=4, prefix=5))
    birth = value(pid, 7)
    _put(values, "patient_birth_date", birth[:8] if birth != HL7_NULL else birth)
    sex = value(pid, 8).upper()
    if sex:
        if sex != HL7_NULL and sex not in SEXES:
            raise InvalidMessage(f"PID-8 administrative sex {sex!r} is not one of {', '.join(SEXES)}", "PID-8")
        values["patient_sex"] = SEXES.get(sex)
    return values


def person_name(segment: hl7.Segment | None, field_number: int, *, family: int, given: int, middle: int,
                suffix: int, prefix: int) -> str:
    """An XPN/XCN as a DICOM person name: family^given^middle^prefix^suffix (PS3.5 6.2)."""
    first = value(segment, field_number, family)
    if first == HL7_NULL:
        return HL7_NULL
    parts = [first, *(value(segment, field_number, c) for c in (given, middle, prefix, suffix))]
    return "^".join(parts).rstrip("^")


# ---- orders -----------------------------------------------------------------------------------


def order_keys(group: OrderGroup, message: Hl7Message) -> tuple[str, str, str]:
    """(placer order number, filler order number, accession number), each possibly empty."""
    obr = group.first("OBR")
    placer = value(group.orc, 2) or value(obr, 2)
    filler = value(group.orc, 3) or value(obr, 3)
    accession = value(group.first("IPC"), 1) or value(obr, 18)
    return placer, filler, accession


def order_fields(group: OrderGroup, message: Hl7Message) -> dict[str, Any]:
    """The order's own fields as sent (not the patient's)."""
    obr, tq1, ipc = group.first("OBR"), group.first("TQ1"), group.first("IPC")
    values: dict[str, Any] = {}
    placer, filler, accession = order_keys(group, message)
    _put(values, "placer_order_number", placer)
    _put(values, "filler_order_number", filler)
    _put(values, "accession_number", accession)
    _put(values, "location", place(message.first("PV1"), 3))
    _put(values, "ordering_provider", person_name(group.orc, 12, family=2, given=3, middle=4, suffix=5, prefix=6)
         or person_name(obr, 16, family=2, given=3, middle=4, suffix=5, prefix=6))
    _put(values, "procedure_code", value(obr, 4, 1))
    _put(values, "procedure_description", value(obr, 4, 2))
    _put(values, "clinical_history", value(obr, 13))
    _put(values, "clinical_indication", coded_texts(obr, 31))
    _put(values, "modality", modality(value(ipc, 5) or value(obr, 24)))
    _put(values, "station_ae_title", value(ipc, 9))
    notes = [value(nte, 3) for nte in group.segments.get("NTE", [])]
    _put(values, "special_instructions", "\n".join(n for n in notes if n))
    when = value(tq1, 7) or value(group.orc, 7, 4) or value(obr, 36) or value(obr, 27, 4)
    if when:
        values["scheduled_at"] = hl7_datetime(when, "TQ1-7 / ORC-7.4 / OBR-36")
    urgency = value(tq1, 9) or value(group.orc, 7, 6) or value(obr, 27, 6) or value(obr, 5)
    if urgency:
        values["priority"] = priority(urgency)
    return values


def modality(text: str) -> str:
    code = text.strip().upper()
    return SERVICE_SECTIONS.get(code, code)


def priority(text: str) -> str | None:
    if text == HL7_NULL:
        return None
    found = PRIORITIES.get(text.strip().upper())
    if found is None:
        raise InvalidMessage(f"priority {text!r} (TQ1-9 / ORC-7.6) is not one of {', '.join(PRIORITIES)}", "TQ1-9")
    return found


def coded_texts(segment: hl7.Segment | None, field_number: int) -> str:
    """A repeating coded field (CE/CWE) as text: each repetition's text, or its code."""
    texts = []
    for repetition in range(1, repetitions(segment, field_number) + 1):
        text = value(segment, field_number, 2, repetition) or value(segment, field_number, 1, repetition)
        if text:
            texts.append(text)
    return "; ".join(texts)


def place(segment: hl7.Segment | None, field_number: int) -> str:
    """A PL (point of care^room^bed) as one text."""
    first = value(segment, field_number, 1)
    if first == HL7_NULL:
        return first
    return " ".join(p for p in (first, value(segment, field_number, 2), value(segment, field_number, 3)) if p)


def hl7_datetime(text: str, name: str) -> str | None:
    """An HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ], 2.A.22) as ISO 8601. Without an
    offset the time is taken as UTC, as for ISO times sent to the HTTP API."""
    if text == HL7_NULL:
        return None
    match = _DTM.fullmatch(text.strip())
    if match is None or match.group(3) is None:
        raise InvalidMessage(f"{name} {text!r} is not an HL7 date and time (YYYYMMDD[HHMM[SS]][+ZZZZ])", name.split()[0])
    year, month, day, hour, minute, second, offset = match.groups()
    zone = UTC
    if offset:
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        zone = timezone(timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                          tzinfo=zone)
    except ValueError:
        raise InvalidMessage(f"{name} {text!r} is not a valid date and time", name.split()[0]) from None
    return moment.isoformat()


# ---- scheduling (SIU) -------------------------------------------------------------------------


def schedule_keys(message: Hl7Message) -> tuple[str, str]:
    """(placer order number SCH-26, filler order number SCH-27) of the order an appointment is for."""
    sch = message.first("SCH")
    if sch is None:
        raise MissingField("the message has no SCH segment", "SCH")
    placer, filler = value(sch, 26), value(sch, 27)
    if not placer and not filler:
        raise MissingField("SCH-26 (placer order number) or SCH-27 (filler order number) must name the order",
                           "SCH-26")
    return placer, filler


def schedule_fields(message: Hl7Message) -> dict[str, Any]:
    """The appointment's start (AIS-4, TQ1-7, SCH-11.4), duration (AIS-7/8, SCH-9/10) and
    location (AIL-3)."""
    sch, ais, tq1 = message.first("SCH"), message.first("AIS"), message.first("TQ1")
    values: dict[str, Any] = {}
    when = value(ais, 4) or value(tq1, 7) or value(sch, 11, 4)
    if when:
        values["scheduled_at"] = hl7_datetime(when, "AIS-4 / TQ1-7 / SCH-11.4")
    length, units = (value(ais, 7), value(ais, 8)) if value(ais, 7) else (value(sch, 9), value(sch, 10))
    if length:
        values["duration_minutes"] = minutes(length, units)
    _put(values, "location", place(message.first("AIL"), 3))
    return values


def minutes(length: str, units: str) -> int | None:
    if length == HL7_NULL:
        return None
    factor = _UNITS.get((units.split("^")[0] or "MIN").strip().upper())
    try:
        amount = float(length)
    except ValueError:
        amount = -1.0
    if factor is None or amount <= 0:
        raise InvalidMessage(f"duration {length!r} {units!r} (AIS-7/8, SCH-9/10) is not a length of time", "AIS-7")
    return max(1, round(amount * factor))


def prior_patient(message: Hl7Message) -> tuple[str, str]:
    """MRG-1: the patient ID merged into PID-3 (ADT^A40)."""
    mrg = message.first("MRG")
    if mrg is None:
        raise MissingField("the message has no MRG segment", "MRG")
    return patient_identifier(mrg, 1, "MRG-1")
