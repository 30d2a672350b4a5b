"""C-FIND/C-MOVE/C-GET identifiers <-> the shared Query model and index rows (PS3.4 C.4, C.6)."""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacs.dicom.attributes import BY_KEYWORD, BY_TAG, INTEGER_VRS, Attribute, Level
from pacs.dicom.query import Condition, Query, parse_condition
from pacs.errors import InvalidQuery

LEVELS = {"PATIENT": Level.PATIENT, "STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE}
LEVEL_NAMES = {level: name for name, level in LEVELS.items()}
PATIENT_ROOT = "patient"
STUDY_ROOT = "study"

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
# Keys the index answers itself; they are never matched nor looked up in stored metadata.
_ANSWERED_KEYS = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY}


def query_level(identifier: Dataset, model: str) -> Level:
    name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if name not in LEVELS:
        raise InvalidQuery(f"QueryRetrieveLevel {name!r} is not PATIENT, STUDY, SERIES or IMAGE")
    level = LEVELS[name]
    if model == STUDY_ROOT and level == Level.PATIENT:
        raise InvalidQuery("the Study Root information model has no PATIENT level")
    return level


def query_from_identifier(identifier: Dataset, model: str) -> Query:
    """Matching keys become conditions; every key present is a return key."""
    level = query_level(identifier, model)
    conditions: list[Condition] = []
    extra_tags: set[int] = set()
    for element in identifier:
        tag = int(element.tag)
        if tag in _ANSWERED_KEYS or element.tag.group == 0x0002:
            continue
        if tag == REQUEST_ATTRIBUTES_SEQUENCE:
            conditions += _sequence_conditions(element, level)
            continue
        attribute = BY_TAG.get(tag)
        if attribute is None or attribute.parent:
            if element.tag.is_private is False:
                extra_tags.add(tag)
            continue
        if attribute.level > level:
            continue  # a lower-level key at a higher level: ignored (no relational queries)
        condition = parse_condition(attribute, _as_text(element))
        if condition is not None:
            conditions.append(condition)
    return Query(level=level, conditions=tuple(conditions), include_tags=frozenset(extra_tags), limit=None)


def _sequence_conditions(element: DataElement, level: Level) -> list[Condition]:
    if level < Level.SERIES or not element.value:
        return []
    found = []
    for sub in element.value[0]:
        attribute = BY_TAG.get(int(sub.tag))
        if attribute is not None and attribute.parent:
            condition = parse_condition(attribute, _as_text(sub))
            if condition is not None:
                found.append(condition)
    return found


def _as_text(element: DataElement) -> str:
    value = element.value
    if value is None:
        return ""
    if element.VM > 1:
        return "\\".join(str(v) for v in value)
    return str(value)


def identifier_from_row(row: dict[str, Any], requested: Dataset, level: Level, ae_title: str) -> Dataset:
    """A response identifier holding exactly the requested keys (PS3.4 C.4.1.1.3.2)."""
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 192"  # index values are Unicode; UTF-8 carries them all
    extras = row.get("_metadata") or {}
    for element in requested:
        tag = int(element.tag)
        if tag in (SPECIFIC_CHARACTER_SET,) or element.tag.group == 0x0002:
            continue
        if tag == QUERY_RETRIEVE_LEVEL:
            answer.QueryRetrieveLevel = LEVEL_NAMES[level]
        elif tag == RETRIEVE_AE_TITLE:
            answer.RetrieveAETitle = ae_title
        elif tag == INSTANCE_AVAILABILITY:
            answer.InstanceAvailability = "ONLINE"
        elif tag == REQUEST_ATTRIBUTES_SEQUENCE:
            answer.add(_request_attributes(row, element))
        elif tag in BY_TAG and not BY_TAG[tag].parent:
            answer.add(_element(BY_TAG[tag], row.get(BY_TAG[tag].column), element.VR))
        else:
            answer.add(_from_metadata(element, extras))
    return answer


def _element(attribute: Attribute, value: Any, requested_vr: str) -> DataElement:
    vr = attribute.vr if attribute.vr != "UN" else requested_vr
    if value is None or value == "" or value == []:
        return DataElement(attribute.tag, vr, None)
    if isinstance(value, list):
        return DataElement(attribute.tag, vr, [str(v) for v in value])
    if vr in INTEGER_VRS:
        return DataElement(attribute.tag, vr, int(value))
    text = str(value)
    return DataElement(attribute.tag, vr, text.split("\\") if "\\" in text and vr not in ("PN",) else text)


def _request_attributes(row: dict[str, Any], requested: DataElement) -> DataElement:
    item = Dataset()
    for sub in (requested.value[0] if requested.value else []):
        attribute = BY_TAG.get(int(sub.tag))
        if attribute is not None and attribute.parent:
            item.add(_element(attribute, row.get(attribute.column), sub.VR))
    return DataElement(REQUEST_ATTRIBUTES_SEQUENCE, "SQ", [item] if len(item) else [])


def _from_metadata(requested: DataElement, metadata: dict[str, Any]) -> DataElement:
    key = f"{int(requested.tag):08X}"
    if key in metadata and "BulkDataURI" not in metadata[key]:
        try:
            return Dataset.from_json({key: metadata[key]})[requested.tag]
        except (ValueError, TypeError, KeyError):
            pass
    return DataElement(requested.tag, requested.VR, None)


def retrieve_query(identifier: Dataset, model: str) -> Query:
    """C-MOVE/C-GET select instances by the unique keys of the level asked (PS3.4 C.4.2.2.1)."""
    level = query_level(identifier, model)
    uid_keys = {
        Level.PATIENT: ("PatientID",),
        Level.STUDY: ("PatientID", "StudyInstanceUID"),
        Level.SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
        Level.INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
    }[level]
    conditions: list[Condition] = []
    for keyword in uid_keys:
        if keyword not in identifier:
            continue
        element = identifier[keyword]
        attribute = BY_KEYWORD[keyword]
        # A list of UIDs arrives as a pydicom MultiValue, which is not a list (PS3.4 C.4.2.2.1).
        condition = parse_condition(attribute, _as_text(element))
        if condition is not None:
            conditions.append(condition)
    unique = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID",
              Level.INSTANCE: "SOPInstanceUID"}[level]
    if not any(c.attribute.keyword == unique for c in conditions):
        raise InvalidQuery(f"a {LEVEL_NAMES[level]}-level retrieve needs {unique}")
    return Query(level=Level.INSTANCE, conditions=tuple(conditions), limit=None)
