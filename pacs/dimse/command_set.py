"""DIMSE command sets (PS3.7 9.3, 10.3; Implicit VR Little Endian) encoded straight from
pynetdicom's message primitives.

pynetdicom turns every primitive into a pydicom Dataset (one attribute set at a time), encodes
it once to learn the Command Group Length and once more to send it. For a C-MOVE or C-GET that
is three command sets per instance moved, and for a C-FIND one per match: more than the
instances or identifiers themselves cost. The rules below are pynetdicom's own
(DIMSEMessage.primitive_to_message): every command attribute of the message type, its value
from the primitive's attribute of the same name (left out when that is None, sent empty when
the primitive has no such attribute), Command Field from the type, Command Data Set Type 0x0001
when the primitive carries a data set and 0x0101 when not. encode() returns None for a value it
does not know how to write, and the caller then lets pynetdicom do it.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS, _MESSAGE_TYPES

_FIELD = {name: code for code, (name, _) in _MESSAGE_TYPES.items()}  # "C-STORE-RQ" -> 0x0001


def _plan(keywords: tuple[str, ...]) -> list[tuple[int, str, str]]:
    found = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        found.append((tag, keyword, dictionary_VR(tag)))
    return sorted(found)


_PLANS = {name: _plan(keywords) for name, keywords in _COMMAND_SET_KEYWORDS.items()}


def encode(message_class: str, primitive: Any) -> bytes | None:
    """The encoded command set pynetdicom would send for ``primitive`` as a ``message_class``
    message ("C_STORE_RQ"), or None when a value is of a kind this does not write."""
    name = message_class.replace("_", "-")
    plan = _PLANS.get(name)
    if plan is None:
        return None
    elements = []
    for tag, keyword, vr in plan:
        if keyword == "CommandGroupLength":
            continue
        if keyword == "CommandField":
            value: Any = _FIELD[name]
        elif keyword == "CommandDataSetType":
            value = 0x0001 if has_data_set(message_class, primitive) else 0x0101
        elif not hasattr(primitive, keyword):
            elements.append(struct.pack("<LL", _swap(tag), 0))
            continue
        else:
            value = getattr(primitive, keyword)
            if value is None:
                continue
        encoded = _value(vr, value)
        if encoded is None:
            return None
        elements.append(struct.pack("<LL", _swap(tag), len(encoded)) + encoded)
    body = b"".join(elements)
    return struct.pack("<LLL", 0, 4, len(body)) + body  # (0000,0000) Command Group Length


def has_data_set(message_class: str, primitive: Any) -> bool:
    keyword = _DATASET_KEYWORDS.get(message_class)
    if keyword is not None and getattr(primitive, keyword, None) is not None:
        return True
    return bool(getattr(primitive, "_dataset_path", None))


def _swap(tag: int) -> int:
    """A tag as one little-endian 32-bit word: the group first, then the element."""
    return (tag & 0xFFFF) << 16 | tag >> 16


def _value(vr: str, value: Any) -> bytes | None:
    if vr == "US" and isinstance(value, int) and 0 <= value <= 0xFFFF:
        return struct.pack("<H", value)
    if vr == "UL" and isinstance(value, int) and 0 <= value <= 0xFFFFFFFF:
        return struct.pack("<L", value)
    if vr == "UI" and isinstance(value, str) and value.isascii():
        raw = value.encode("ascii")
        return raw + b"\x00" if len(raw) % 2 else raw
    if vr in ("AE", "LO") and isinstance(value, str) and value.isascii() and "\\" not in value:
        raw = value.encode("ascii")
        return raw + b" " if len(raw) % 2 else raw
    if vr == "AT" and isinstance(value, list) and all(isinstance(t, int) for t in value):
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in value)
    return None


# -- received command sets ---------------------------------------------------------------------

_ELEMENTS = {tag: (keyword, vr) for plan in _PLANS.values() for tag, keyword, vr in plan}
_TEXT_VRS = frozenset({"AE", "LO", "SH", "CS"})
# Values read here: a UID padded with one NUL or space; text of printable ASCII without a
# backslash (one value), not starting with a space, padded with spaces. pydicom strips these
# pads the same way; anything else (leading spaces, NULs in text) it treats per VR, so it reads it.
_UID = re.compile(rb"[0-9.]+[\x00 ]?")
_TEXT = re.compile(rb"[!-\[\]-~][ -\[\]-~]*")


def plain_uid(raw: bytes) -> bool:
    """Whether a raw UI value is one UID that pydicom would read as its digits and dots."""
    return _UID.fullmatch(raw) is not None


def received_values(command_set: Any) -> list[tuple[str, Any]] | None:
    """(keyword, value) of each element of a received command set, read from its raw elements
    as pydicom converts them, or None when an element is of a kind this does not read (an
    unknown tag, several values, an empty value, unusual text): pydicom reads that one then."""
    found = []
    for tag, element in sorted(command_set._dict.items()):
        known = _ELEMENTS.get(tag)
        if known is None:
            return None
        keyword, vr = known
        data = element.value
        if not isinstance(element, RawDataElement):  # converted already (pynetdicom reads some)
            # A UID comes back as pydicom's UID, a str: every element of a C-STORE request
            # but its group length is converted before this runs.
            if not isinstance(data, int | str):
                return None
            found.append((keyword, data))
            continue
        if not isinstance(data, bytes) or not data:
            return None
        if vr == "US" and len(data) == 2:
            value: Any = struct.unpack("<H", data)[0]
        elif vr == "UL" and len(data) == 4:
            value = struct.unpack("<L", data)[0]
        elif vr == "UI" and _UID.fullmatch(data):
            value = data.rstrip(b"\x00 ").decode("ascii")
        elif vr in _TEXT_VRS and _TEXT.fullmatch(data):
            value = data.rstrip(b" ").decode("ascii")
        else:
            return None
        found.append((keyword, value))
    return found
