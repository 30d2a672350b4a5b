"""Render index rows as DICOM JSON (PS3.18 Annex F) for QIDO-RS results."""

from __future__ import annotations

from typing import Any

from pacs.dicom.attributes import CATALOGUE, INTEGER_VRS, Attribute, Level
from pacs.dicom.query import Query

RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"
_PARENT_UIDS = {
    Level.SERIES: ("StudyInstanceUID",),
    Level.INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID"),
}


def element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON element; an empty value has no "Value" member (PS3.18 F.2.5)."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if isinstance(value, (list, tuple)):
        values = list(value)
    elif isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT"):
        values = value.split("\\")
    else:
        values = [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(str(v)) for v in values]}
    if vr in INTEGER_VRS:
        return {"vr": vr, "Value": [int(v) for v in values]}
    return {"vr": vr, "Value": values}


def _person_name(text: str) -> dict[str, str]:
    groups = text.split("=")
    names = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups))
    return {k: v for k, v in names.items() if v} or {"Alphabetic": ""}


def returned_attributes(query: Query) -> list[Attribute]:
    """Catalogue attributes returned for a query: everything of the target level, the parents'
    when asked (unscoped searches), the parents' UIDs always, and any includefield extras."""
    chosen: list[Attribute] = []
    for attr in CATALOGUE:
        if attr.level == query.level:
            chosen.append(attr)
        elif attr.level < query.level and (query.include_parents or query.include_all):
            chosen.append(attr)
        elif attr.level < query.level and attr.keyword in _PARENT_UIDS.get(query.level, ()):
            chosen.append(attr)
        elif attr.level <= query.level and attr.tag in query.include_tags:
            chosen.append(attr)
    return chosen


def render_row(row: dict[str, Any], query: Query, attributes: list[Attribute], base_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    request_item: dict[str, Any] = {}
    for attr in attributes:
        value = row.get(attr.column)
        if attr.parent:
            if value:
                request_item[attr.tag_hex] = element(attr.vr, value)
            continue
        out[attr.tag_hex] = element(attr.vr, value)
    if any(a.parent for a in attributes):
        out["00400275"] = {"vr": "SQ", "Value": [request_item]} if request_item else {"vr": "SQ"}
    extras = row.get("_metadata") or {}
    for tag in query.include_tags:
        key = f"{tag:08X}"
        # Anything asked for that the index does not return at this level (SliceThickness, or
        # a series attribute such as BodyPartExamined on a study search) comes from the file.
        if key not in out and key in extras:
            out[key] = extras[key]
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(row, query.level, base_url)]}
    out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    return dict(sorted(out.items()))


def _retrieve_url(row: dict[str, Any], level: Level, base_url: str) -> str:
    if level <= Level.STUDY and "study_instance_uid" not in row:
        return base_url
    url = f"{base_url}/studies/{row['study_instance_uid']}"
    if level >= Level.SERIES:
        url += f"/series/{row['series_instance_uid']}"
    if level >= Level.INSTANCE:
        url += f"/instances/{row['sop_instance_uid']}"
    return url
