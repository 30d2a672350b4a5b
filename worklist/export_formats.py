"""Export files for sites that re-key orders into another RIS: CSV and HL7 v2 ORM^O01.

CSV (RFC 4180): UTF-8, a header row of CSV_COLUMNS, one row per order, CRLF line ends, fields
quoted when they hold a comma, quote or line break. Values are written as stored (no spreadsheet
formula guarding: the file is for machine import).

HL7 (v2.3.1, the version of IHE Radiology's Placer Order Management, RAD-2): one batch file
(FHS/BHS ... BTS/FTS, HL7 v2 2.10.3) holding one ORM^O01 message per order: MSH, PID, PV1,
ORC, OBR, NTE (instructions, contrast) and ZDS (StudyInstanceUID, as IHE RAD-4). Segments end
with a carriage return; text is escaped per HL7 v2 2.7 and sent as UTF-8 (MSH-18).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pacs.index.orders import Order

CSV_COLUMNS = (
    "order_number", "accession_number", "status", "priority", "patient_id", "issuer_of_patient_id",
    "patient_name", "patient_birth_date", "patient_sex", "modality", "body_part", "laterality",
    "procedure_code", "procedure_description", "scheduled_at", "duration_minutes", "station_ae_title", "location",
    "ordering_provider", "performing_physician", "clinical_indication", "clinical_history", "contrast_required",
    "contrast_agent", "special_instructions", "placer_order_number", "filler_order_number", "study_instance_uid",
    "created_at",
)


@dataclass(frozen=True)
class BatchHeader:
    reference: str  # unique per batch: file name stem and message control ID prefix
    created_at: datetime
    destination: str


def to_csv(orders: Sequence[Order]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180 2.1: CRLF
    writer.writerow(CSV_COLUMNS)
    for order in orders:
        writer.writerow([_csv_value(getattr(order, column)) for column in CSV_COLUMNS])
    return out.getvalue().encode("utf-8")


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


# HL7 v2 2.7: the delimiters as they are escaped inside a field (\E\ first, so it is not doubled).
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))
_ORDER_CONTROL = {"CANCELLED": "CA", "DISCONTINUED": "DC"}  # HL7 table 0119; others: NW (new order)
_ORDER_STATUS = {  # HL7 table 0038
    "ORDERED": "SC", "SCHEDULED": "SC", "IN_PROGRESS": "IP", "COMPLETED": "CM", "REPORTED": "CM",
    "CANCELLED": "CA", "DISCONTINUED": "DC",
}
_PRIORITY = {"STAT": "S", "URGENT": "A", "ROUTINE": "R"}  # TQ component 6: stat, ASAP, routine


def escape(text: str | None) -> str:
    """A value made safe for one HL7 field component (HL7 v2 2.7). Line breaks and other control
    characters become hexadecimal escapes; other characters stay as they are (UTF-8)."""
    if not text:
        return ""
    for char, sequence in _ESCAPES:
        text = text.replace(char, sequence)
    return "".join(f"\\X{ord(c):02X}\\" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def _ts(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000") if moment else ""


def _person(name: str | None) -> str:
    """A DICOM person name (Family^Given^Middle^Prefix^Suffix) as HL7 XPN/XCN components."""
    return "^".join(escape(part) for part in (name or "").split("=")[0].split("^")[:5])


def _segment(*fields: str) -> str:
    return "|".join(fields).rstrip("|")


def to_hl7(orders: Sequence[Order], header: BatchHeader) -> bytes:
    now = _ts(header.created_at)
    receiver = escape(header.destination[:180])
    lines = [
        _segment("FHS", "^~\\&", "MINIPACS", "", receiver, "", now, "", f"{header.reference}.hl7", "", header.reference),
        _segment("BHS", "^~\\&", "MINIPACS", "", receiver, "", now, "", "", "", header.reference),
    ]
    for number, order in enumerate(orders, start=1):
        lines.extend(_message(order, f"{header.reference}{number:05d}", now, receiver))
    lines += [_segment("BTS", str(len(orders))), _segment("FTS", "1")]
    return ("\r".join(lines) + "\r").encode("utf-8")


def _message(order: Order, control_id: str, now: str, receiver: str) -> list[str]:
    placer = escape(order.placer_order_number or order.order_number)
    filler = escape(order.filler_order_number)
    timing = f"^^^{_ts(order.scheduled_at)}^^{_PRIORITY.get(order.priority, 'R')}"
    procedure = f"{escape(order.procedure_code or order.modality)}^{escape(order.procedure_description)}^99MINIPACS"
    patient = f"{escape(order.patient_id)}^^^{escape(order.issuer_of_patient_id)}".rstrip("^")  # CX: ID^^^authority
    segments = [
        # MSH-9 ORM^O01, MSH-11 P (production), MSH-12 2.3.1, MSH-18 the character set.
        _segment("MSH", "^~\\&", "MINIPACS", "", receiver, "", now, "", "ORM^O01", control_id, "P", "2.3.1",
                 "", "", "", "", "", "UNICODE UTF-8"),
        _segment("PID", "1", "", patient, "", _person(order.patient_name), "", order.patient_birth_date or "",
                 escape(order.patient_sex)),
        _segment("PV1", "1", "U", escape(order.location)),  # patient class unknown here (table 0004)
        _segment("ORC", _ORDER_CONTROL.get(order.status, "NW"), placer, filler, "", _ORDER_STATUS[order.status], "",
                 timing, "", _ts(order.created_at), escape(order.created_by), "", _person(order.ordering_provider)),
        _obr(order, placer, filler, timing, procedure),
    ]
    notes = [order.special_instructions, f"Contrast: {order.contrast_agent or 'required'}" if order.contrast_required else None]
    for number, note in enumerate(filter(None, notes), start=1):
        segments.append(_segment("NTE", str(number), "", escape(note)))
    segments.append(_segment("ZDS", f"{order.study_instance_uid}^100^Application^DICOM"))
    return segments


def _obr(order: Order, placer: str, filler: str, timing: str, procedure: str) -> str:
    fields = [""] * 32
    fields[0:4] = ["1", placer, filler, procedure]
    fields[12] = escape(order.clinical_history)  # OBR-13 relevant clinical information
    fields[14] = f"^^^{escape(order.body_part)}^{escape(order.laterality)}" if order.body_part else ""  # OBR-15
    fields[15] = _person(order.ordering_provider)  # OBR-16 ordering provider
    fields[17] = escape(order.accession_number)  # OBR-18 placer field 1: accession number (IHE)
    fields[18] = escape(order.order_number)  # OBR-19 placer field 2: requested procedure ID (IHE)
    fields[23] = escape(order.modality)  # OBR-24 diagnostic service section ID
    fields[26] = timing  # OBR-27 quantity/timing
    fields[30] = f"^{escape(order.clinical_indication)}" if order.clinical_indication else ""  # OBR-31 reason
    return _segment("OBR", *fields)
