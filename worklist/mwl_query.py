"""Modality Worklist C-FIND identifiers as queries over orders (PS3.4 K.6, matching per C.2.2.2).

Matching keys come from the top level of the identifier and from the single item of the
Scheduled Procedure Step Sequence (PS3.4 C.2.2.2.6: sequence matching). Each value is parsed by
the shared query model (pacs.dicom.query), so single values, UID lists, wildcards, ranges and
universal matching mean what they mean for C-FIND and QIDO-RS. Keys over indexed order columns
become SQL (pacs.index.worklist); the others are checked on the answer's own values, so what is
matched is exactly what is returned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacs.dicom.attributes import Attribute, Level, normalize_time
from pacs.dicom.query import Condition, MatchKind, parse_condition
from pacs.errors import InvalidQuery

SPS = "ScheduledProcedureStepSequence"
START_DATE = "ScheduledProcedureStepStartDate"

# Matching keys over order columns (the SQL side). Person names use the upper-cased copies.
INDEXED_TOP: dict[str, str] = {
    "PatientName": "patient_name_norm",
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "AccessionNumber": "accession_number",
    "StudyInstanceUID": "study_instance_uid",
    "RequestedProcedureID": "order_number",
    "ReferringPhysicianName": "ordering_provider_norm",
    "RequestingPhysician": "ordering_provider_norm",
    "PlacerOrderNumberImagingServiceRequest": "placer_order_number",
}
INDEXED_STEP: dict[str, str] = {
    "ScheduledStationAETitle": "station_ae_title",
    "Modality": "modality",
    "ScheduledPerformingPhysicianName": "performing_physician_norm",
    "ScheduledProcedureStepID": "order_number",
}


@dataclass(frozen=True)
class WorklistQuery:
    indexed: tuple[Condition, ...] = ()  # attribute.column names the orders column
    start_date: Condition | None = None  # ScheduledProcedureStepStartDate: an instant range in SQL
    checked: tuple[Condition, ...] = ()  # matched on the answer values (attribute.parent: in the SPS item)


def parse_identifier(identifier: Dataset) -> WorklistQuery:
    """The matching keys of an MWL identifier; InvalidQuery names a malformed one."""
    indexed: list[Condition] = []
    checked: list[Condition] = []
    start_date: Condition | None = None
    for element, parent in _matching_elements(identifier):
        keyword = element.keyword
        columns = INDEXED_STEP if parent else INDEXED_TOP
        attribute = Attribute(keyword, Level.STUDY, _vr(element), columns.get(keyword, ""), parent=parent)
        condition = parse_condition(attribute, _as_text(element))
        if condition is None:
            continue  # universal matching
        if parent and keyword == START_DATE:
            start_date = condition
        elif attribute.column:
            indexed.append(condition)
        else:
            checked.append(condition)
    return WorklistQuery(tuple(indexed), start_date, tuple(checked))


def _matching_elements(identifier: Dataset) -> list[tuple[DataElement, str | None]]:
    """(element, enclosing sequence keyword) of every value that may be a matching key."""
    found: list[tuple[DataElement, str | None]] = []
    for element in identifier:
        if element.tag.group == 0x0002 or element.tag.is_private or element.keyword in ("", "SpecificCharacterSet"):
            continue
        if element.VR != "SQ":
            found.append((element, None))
        elif element.keyword == SPS:
            items = element.value or []
            if len(items) > 1:
                raise InvalidQuery(f"{SPS}: a matching sequence holds one item (PS3.4 C.2.2.2.6), not {len(items)}")
            for sub in items[0] if items else ():
                if sub.VR != "SQ" and sub.keyword and not sub.tag.is_private:
                    found.append((sub, SPS))
    return found


def _vr(element: DataElement) -> str:
    try:
        return dictionary_VR(element.tag)
    except KeyError:
        return element.VR


def _as_text(element: DataElement) -> str:
    value = element.value
    if value is None:
        return ""
    if element.VM > 1:
        return "\\".join(str(v) for v in value)
    return str(value)


def matches(values: Mapping[str, Any], condition: Condition) -> bool:
    """PS3.4 C.2.2.2 on one answer value (a DICOM string; person names compared upper case)."""
    scope = values
    if condition.attribute.parent:
        items = values.get(condition.attribute.parent) or [{}]
        scope = items[0]
    raw = scope.get(condition.attribute.keyword)
    if raw in (None, ""):
        return False  # no value matches no non-universal key (C.2.2.2.4 is only for universal)
    value, wanted = _comparable(str(raw), condition)
    if condition.kind == MatchKind.RANGE:
        low, high = wanted
        return (not low or value >= low) and (not high or value <= high)
    if condition.kind == MatchKind.LIST:
        return value in wanted
    if condition.kind == MatchKind.WILDCARD:
        return _wildcard(wanted[0]).fullmatch(value) is not None
    return value == wanted[0]


def _comparable(value: str, condition: Condition) -> tuple[str, tuple[str, ...]]:
    vr = condition.attribute.vr
    if vr == "PN":
        return value.upper(), tuple(v.upper() for v in condition.values)
    if vr == "TM":
        return normalize_time(value) or "", condition.values
    return value, condition.values


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)
