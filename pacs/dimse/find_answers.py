"""C-FIND answers encoded straight from index rows (PS3.5 7.1, Little Endian).

identifiers.identifier_from_row builds each answer as pydicom elements, which pynetdicom then
has pydicom encode, element by element: for a handful of matches that is most of a query's
time. The common answer - catalogue attributes and the keys the archive fills itself - is
encoded here directly, into an EncodedDataset that pacs.dimse.preencoded sends as it is. The
bytes are those pydicom writes for identifier_from_row's answer (tests/unit/test_find_answers.py);
any other requested key (a sequence, a value from stored metadata) leaves the answer to that
function.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset

from pacs.dicom.attributes import BY_TAG, Level
from pacs.dicom.encoded import EncodedDataset, padded_text
from pacs.dimse.identifiers import (
    INSTANCE_AVAILABILITY,
    LEVEL_NAMES,
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SPECIFIC_CHARACTER_SET,
)

CHARACTER_SET = "ISO_IR 192"
_ENCODINGS = convert_encodings(CHARACTER_SET)
_BINARY = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l"}
_NUMBER_STRINGS = frozenset({"IS", "DS"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT", "UR"})
_CHARACTER_SET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})  # encoded in UTF-8; the rest ASCII


def plan_of(requested: Dataset) -> list[tuple[int, str]] | None:
    """(tag, VR) of each requested key, or None when a key needs identifier_from_row."""
    plan = []
    for element in requested:
        tag = int(element.tag)
        if tag == SPECIFIC_CHARACTER_SET or tag >> 16 == 0x0002:
            continue
        if tag in (QUERY_RETRIEVE_LEVEL, INSTANCE_AVAILABILITY):
            plan.append((tag, "CS"))
        elif tag == RETRIEVE_AE_TITLE:
            plan.append((tag, "AE"))
        elif tag in BY_TAG and not BY_TAG[tag].parent:
            attribute = BY_TAG[tag]
            vr = attribute.vr if attribute.vr != "UN" else element.VR
            if vr not in _BINARY and vr not in _NUMBER_STRINGS and vr not in _TEXT_VRS and vr != "UI":
                return None
            plan.append((tag, vr))
        else:
            return None
    return plan


def encoded_answer(
    plan: list[tuple[int, str]], row: dict[str, Any], level: Level, ae_title: str, *, implicit: bool
) -> EncodedDataset | None:
    """The answer for ``row``, or None for a value this does not encode."""
    elements = [(SPECIFIC_CHARACTER_SET, "CS", padded_text("CS", CHARACTER_SET))]
    for tag, vr in plan:
        if tag == QUERY_RETRIEVE_LEVEL:
            value: Any = LEVEL_NAMES[level]
        elif tag == RETRIEVE_AE_TITLE:
            value = ae_title
        elif tag == INSTANCE_AVAILABILITY:
            value = "ONLINE"
        else:
            value = row.get(BY_TAG[tag].column)
        encoded = _value(vr, value)
        if encoded is None:
            return None
        elements.append((tag, vr, encoded))
    return EncodedDataset(elements, implicit=implicit, character_set=_ENCODINGS)


def _value(vr: str, value: Any) -> bytes | None:
    if value is None or value == "" or value == []:
        return b""
    if isinstance(value, list):  # a multi-valued column (ModalitiesInStudy): values joined by "\\"
        if vr in _BINARY or not all(isinstance(v, str) and v and "\\" not in v for v in value):
            return None
        value = "\\".join(value)
    if vr in _BINARY:
        try:
            return struct.pack(_BINARY[vr], int(value))
        except (ValueError, TypeError, struct.error):
            return None
    if vr in _NUMBER_STRINGS:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        return padded_text(vr, str(value))
    if not isinstance(value, str) or (vr not in _CHARACTER_SET_VRS and not value.isascii()):
        return None
    return padded_text(vr, value)
