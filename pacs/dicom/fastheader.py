"""A fast reader for the data set headers nearly every object arrives with.

Ingest reads each instance's header once, for the index columns and its DICOM JSON. pydicom's
reader builds a DataElement (and, for JSON, a converted value) per attribute, which costs more
than everything else ingest does for a typical image. This reader walks the raw bytes of the
common encodings (Explicit and Implicit VR Little Endian, the encapsulated syntaxes) in one pass
and produces the same values pydicom would, element for element: the values given to the index
and the DICOM JSON (PS3.18 F.2) must be exactly what the general path makes of the same bytes.

Anything outside that common case raises ``Unsupported`` and the caller reads the file with
pydicom instead: no preamble, Big Endian or deflated data sets, character sets other than the
default repertoire, Latin-1 and UTF-8, ambiguous VRs it cannot settle, an unknown VR, values it
cannot convert exactly as pydicom would, truncated data. Correctness never depends on this path;
only speed does.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from pacs.dicom.frames import PIXEL_TAGS

__all__ = ["FastHeader", "Unsupported", "read_fast_header", "read_meta"]


class Unsupported(Exception):
    """The object needs the general reader; the message says why (for tests and debugging)."""


# Transfer syntaxes whose data set is Explicit VR Little Endian (PS3.5 A.4: the encapsulated
# syntaxes too). Anything not listed goes to the general reader.
_EXPLICIT_LE = frozenset(
    {
        "1.2.840.10008.1.2.1",
        RLELossless,
        *JPEGTransferSyntaxes,
        *JPEGLSTransferSyntaxes,
        *JPEG2000TransferSyntaxes,
        "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",  # MPEG-2, MPEG-4
        "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",  # HEVC
        "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
) - {ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_NUMBER_SIZES = {vr: struct.calcsize("<" + code) for vr, code in _NUMBER_FORMATS.items()}
_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})  # split after stripping the whole value
_TEXT_VRS = frozenset({"SH", "LO", "UC"})  # decoded with the character set, split, each part stripped
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT"})  # decoded with the character set, never split
_KNOWN_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
     "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)
# 'US or SS' attributes settled by Pixel Representation (pydicom's filewriter rules).
_US_SS_BY_PIXEL_REPRESENTATION = frozenset(
    {0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00280110, 0x00280111,
     0x00280120, 0x00280121}
)
_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_IS = re.compile(r"[ ]*[+-]?[0-9]+[ ]*")
_DS = re.compile(r"[ ]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ ]*")
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_TAG = struct.Struct("<HH")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_UINT32 = struct.Struct("<L")
_IMPLICIT = struct.Struct("<HHL")
_VR_OF = {vr.encode("ascii"): vr for vr in _KNOWN_VRS}  # explicit VR bytes -> VR

# Converted values by (tag, VR, raw bytes, character set), shared by every reader of the process.
# Callers must not change what a FastHeader holds: its lists and JSON elements may be shared.
_CONVERTED: dict[tuple[int, str, bytes, str], tuple[Any, dict[str, Any]]] = {}
_REMEMBERED_VALUES = 8192  # entries; the memory is forgotten at once when full
_REMEMBERED_VALUE_BYTES = 256  # longer values (LUTs, long text) are converted each time


@dataclass
class FastHeader:
    transfer_syntax_uid: str
    values: dict[int, Any]  # top-level values, as pydicom's Dataset would give them
    vrs: dict[int, str]  # top-level VRs
    json: dict[str, Any]  # DICOM JSON of the data set (file meta excluded)
    pixel_element_at: int | None  # file offset of the top-level pixel data element, if any
    end: int  # where reading stopped (pixel data element or end of data)
    bulk: dict[str, int] = field(default_factory=dict)  # top-level binary values too large to inline: tag -> length


def read_fast_header(buf: bytes | memoryview | Any, size: int, *, inline_limit: int) -> FastHeader:
    """Read a Part 10 object's header from ``buf`` (bytes or an mmap of the whole file).
    Top-level binary values whose base64 form would exceed ``inline_limit`` characters are
    not encoded: they are listed in ``bulk`` and left out of ``json``."""
    if size < 132 or buf[128:132] != b"DICM":
        raise Unsupported("no Part 10 preamble")
    ts, pos = read_meta(buf, size)
    if ts == ImplicitVRLittleEndian:
        implicit = True
    elif ts in _EXPLICIT_LE:
        implicit = False
    else:
        raise Unsupported(f"transfer syntax {ts}")
    reader = _Reader(buf, size, implicit, inline_limit)
    values, vrs, json, end, pixel_at = reader.top_level(pos)
    return FastHeader(ts, values, vrs, json, pixel_at, end, reader.bulk)


def read_meta(buf: Any, size: int) -> tuple[str, int]:
    """The transfer syntax of a Part 10 object and where its data set starts (after the File
    Meta Information, PS3.10 7.1, always Explicit VR Little Endian)."""
    pos, ts = 132, None
    while pos + 8 <= size:
        group, element, vr_bytes, short = _EXPLICIT_SHORT.unpack_from(buf, pos)
        if group != 0x0002:
            break
        vr = vr_bytes.decode("latin_1")
        if vr in _LONG_VRS:
            if pos + 12 > size:
                raise Unsupported("truncated meta")
            length, pos = _UINT32.unpack_from(buf, pos + 8)[0], pos + 12
        elif vr in _KNOWN_VRS:
            length, pos = short, pos + 8
        else:
            raise Unsupported("meta element without a known VR")
        if length == _UNDEFINED or pos + length > size:
            raise Unsupported("meta element of undefined or impossible length")
        if element == 0x0010:
            ts = bytes(buf[pos : pos + length]).decode("latin_1").rstrip("\x00 ")
        pos += length
    if not ts:
        raise Unsupported("no transfer syntax in the meta information")
    return ts, pos


class _Reader:
    def __init__(self, buf: Any, size: int, implicit: bool, inline_limit: int) -> None:
        self.buf, self.size, self.implicit = buf, size, implicit
        self.inline_limit = inline_limit
        self.encoding = "latin_1"
        self.pixel_representation: int | None = None
        self.bulk: dict[str, int] = {}

    def top_level(self, pos: int) -> tuple[dict[int, Any], dict[int, str], dict[str, Any], int, int | None]:
        values: dict[int, Any] = {}
        vrs: dict[int, str] = {}
        json: dict[str, Any] = {}
        creators: dict[int, str] = {}
        size = self.size
        while pos < size:
            if size - pos < 8:
                raise Unsupported("a partial element header ends the data")
            group, element = _TAG.unpack_from(self.buf, pos)
            if group << 16 | element in PIXEL_TAGS:
                return values, vrs, json, pos, pos
            if group == 0x0002 or group == 0xFFFE:
                raise Unsupported("meta or delimiter element inside the data set")
            tag, vr, length, pos = self._element_header(pos, creators)
            if length == _UNDEFINED:
                if vr != "SQ":
                    raise Unsupported("undefined length outside a sequence")
                items, pos = self._sequence(pos, None)
                json[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
                vrs[tag] = "SQ"
                continue
            end = pos + length
            if end > size:
                raise Unsupported("a value runs past the end of the data")
            if vr == "SQ":
                items, _ = self._sequence(pos, end)
                json[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
                vrs[tag] = "SQ"
                pos = end
                continue
            key = f"{tag:08X}"
            if vr in _BINARY_VRS and length and (length + 2) // 3 * 4 > self.inline_limit:
                self.bulk[key] = length
                vrs[tag] = vr
                pos = end
                continue
            value, json[key] = self._converted(tag, vr, bytes(self.buf[pos:end]))
            pos = end
            self._note(tag, value, creators)
            values[tag], vrs[tag] = value, vr
        return values, vrs, json, pos, None

    def _converted(self, tag: int, vr: str, raw: bytes) -> tuple[Any, dict[str, Any]]:
        """The value of ``raw`` and its DICOM JSON, remembered: the instances of a series repeat
        nearly every value, so most are converted once per series rather than once per instance."""
        key = (tag, vr, raw, self.encoding)
        known = _CONVERTED.get(key)
        if known is not None:
            return known
        value = self._value(tag, vr, raw)
        known = (value, _json_element(vr, value))
        if len(raw) <= _REMEMBERED_VALUE_BYTES:
            if len(_CONVERTED) >= _REMEMBERED_VALUES:
                _CONVERTED.clear()
            _CONVERTED[key] = known
        return known

    def _note(self, tag: int, value: Any, creators: dict[int, str]) -> None:
        if tag == 0x00080005:
            self._set_charset(value)
        elif tag == 0x00280103:
            self.pixel_representation = value if isinstance(value, int) else None
        elif tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
            creators[tag] = value if isinstance(value, str) else ""

    def _set_charset(self, value: Any) -> None:
        if isinstance(value, list):
            raise Unsupported("several character sets")
        encoding = _CHARSETS.get(value or "")
        if encoding is None:
            raise Unsupported(f"character set {value!r}")
        self.encoding = encoding

    def _peek_tag(self, pos: int) -> int:
        group, element = _TAG.unpack_from(self.buf, pos)
        return group << 16 | element

    def _element_header(self, pos: int, creators: dict[int, str]) -> tuple[int, str, int, int]:
        if self.implicit:
            group, element, length = _IMPLICIT.unpack_from(self.buf, pos)
            tag = group << 16 | element
            return tag, self._implicit_vr(tag, creators), length, pos + 8
        group, element, vr_bytes, short = _EXPLICIT_SHORT.unpack_from(self.buf, pos)
        tag = group << 16 | element
        vr = _VR_OF.get(vr_bytes)
        if vr is None:
            raise Unsupported(f"unknown VR {vr_bytes.decode('latin_1')!r}")
        if vr in _LONG_VRS:
            if pos + 12 > self.size:
                raise Unsupported("a partial element header ends the data")
            length, pos = _UINT32.unpack_from(self.buf, pos + 8)[0], pos + 12
        else:
            length, pos = short, pos + 8
        if vr == "UN":
            vr = self._explicit_un(tag, length, creators)
        return tag, vr, length, pos

    def _implicit_vr(self, tag: int, creators: dict[int, str]) -> str:
        if tag >> 16 & 1:
            vr = _private_vr(tag, creators)
        elif tag & 0xFFFF == 0:
            vr = "UL"  # group length (pydicom's rule for tags outside the dictionary)
        else:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                raise Unsupported("implicit VR attribute outside the dictionary") from None
        return self._settled(tag, vr)

    def _explicit_un(self, tag: int, length: int, creators: dict[int, str]) -> str:
        """pydicom replaces an explicit UN by the known VR (config.replace_un_with_known_vr)."""
        if length == _UNDEFINED:
            raise Unsupported("UN of undefined length")
        if tag >> 16 & 1:
            vr = _private_vr(tag, creators)
        elif length < 0xFFFF:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                return "UN"
        else:
            return "UN"
        if vr != "UN":
            raise Unsupported("explicit UN of a known attribute")  # rare; pydicom re-reads it
        return vr

    def _settled(self, tag: int, vr: str) -> str:
        if " or " not in vr:
            return vr
        if tag in _US_SS_BY_PIXEL_REPRESENTATION and self.pixel_representation is not None and vr == "US or SS":
            return "US" if self.pixel_representation == 0 else "SS"
        raise Unsupported(f"ambiguous VR {vr}")

    def _sequence(self, pos: int, end: int | None) -> tuple[list[dict[str, Any]], int]:
        items: list[dict[str, Any]] = []
        limit = self.size if end is None else end
        while pos < limit:
            if limit - pos < 8:
                raise Unsupported("a partial item header")
            tag = self._peek_tag(pos)
            length = _UINT32.unpack_from(self.buf, pos + 4)[0]
            pos += 8
            if tag == _SEQUENCE_END:
                return items, pos
            if tag != _ITEM:
                raise Unsupported("something other than an item inside a sequence")
            if length == _UNDEFINED:
                item, pos = self._item(pos, None)
            else:
                if pos + length > limit:
                    raise Unsupported("an item runs past its sequence")
                item, _ = self._item(pos, pos + length)
                pos += length
            items.append(item)
        if end is None:
            raise Unsupported("a sequence of undefined length never ends")
        return items, pos

    def _item(self, pos: int, end: int | None) -> tuple[dict[str, Any], int]:
        json: dict[str, Any] = {}
        creators: dict[int, str] = {}
        limit = self.size if end is None else end
        while pos < limit:
            if limit - pos < 8:
                raise Unsupported("a partial element header inside an item")
            tag = self._peek_tag(pos)
            if tag == _ITEM_END:
                return json, pos + 8
            if tag >> 16 == 0xFFFE:
                raise Unsupported("an unexpected delimiter inside an item")
            tag, vr, length, pos = self._element_header(pos, creators)
            if tag == 0x00080005:
                raise Unsupported("a character set inside a sequence item")
            if length == _UNDEFINED:
                if vr != "SQ":
                    raise Unsupported("undefined length outside a sequence")
                items, pos = self._sequence(pos, None)
                json[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
                continue
            value_end = pos + length
            if value_end > limit:
                raise Unsupported("a value runs past its item")
            if vr == "SQ":
                items, _ = self._sequence(pos, value_end)
                json[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
            else:
                if vr in ("US", "SS") and tag in _US_SS_BY_PIXEL_REPRESENTATION and self.implicit:
                    raise Unsupported("ambiguous VR inside an item")
                value, json[f"{tag:08X}"] = self._converted(tag, vr, bytes(self.buf[pos:value_end]))
                if tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
                    creators[tag] = value if isinstance(value, str) else ""
            pos = value_end
        if end is None:
            raise Unsupported("an item of undefined length never ends")
        return json, pos

    def _value(self, tag: int, vr: str, raw: bytes) -> Any:
        """The value pydicom's converters make of ``raw`` (pydicom/values.py)."""
        convert = _CONVERTERS.get(vr)
        if convert is None:
            raise Unsupported(f"VR {vr}")
        try:
            return convert(raw, self.encoding if tag != 0x00080005 else "latin_1")
        except UnicodeDecodeError:
            raise Unsupported("a value that does not decode in its character set") from None


def _private_vr(tag: int, creators: dict[int, str]) -> str:
    """pydicom's rule (hooks._private_vr_for_tag): creators are LO, known private attributes
    take their dictionary VR, the rest are UN."""
    element = tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        return "LO"
    if element & 0xFF00:
        creator = creators.get((tag & 0xFFFF0000) | element >> 8)
        if creator:
            try:
                return private_dictionary_VR(tag, creator)
            except KeyError:
                pass
    return "UN"


def _one_or_many(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _numbers(vr: str, raw: bytes, encoding: str = "") -> Any:
    size = _NUMBER_SIZES[vr]
    if len(raw) % size:
        raise Unsupported("a binary number value of the wrong length")
    count = len(raw) // size
    if count == 0:
        return ""
    values = list(struct.unpack(f"<{count}{_NUMBER_FORMATS[vr]}", raw))
    return values[0] if count == 1 else values


def _tags(raw: bytes) -> Any:
    if len(raw) % 4:
        raise Unsupported("an AT value of the wrong length")
    tags = [g << 16 | e for g, e in struct.iter_unpack("<HH", raw)]
    return "" if not tags else tags[0] if len(tags) == 1 else tags


def _person_names(text: str) -> Any:
    """PN values as pydicom's PersonName components: groups split at '=', trailing empty groups
    dropped. A value with no group at all is something pydicom cannot render in JSON."""
    if not text:
        return ""
    names = []
    for value in text.split("\\"):
        groups = value.split("=")
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            raise Unsupported("an empty name among several")
        names.append(tuple(groups))
    return names[0] if len(names) == 1 else names


def _integer_strings(text: str) -> Any:
    if not text.strip(" \x00"):
        return ""
    parts = text.rstrip(" \x00").split("\\")
    if not all(_IS.fullmatch(p) for p in parts):
        raise Unsupported("an IS value pydicom would convert differently")
    numbers = [int(p) for p in parts]
    return _one_or_many(numbers)


def _decimal_strings(text: str) -> Any:
    stripped = text.strip()
    if not stripped.rstrip("\x00 "):
        return ""
    parts = stripped.rstrip(" \x00").split("\\")
    if not all(_DS.fullmatch(p) for p in parts):
        raise Unsupported("a DS value pydicom would convert differently")
    return _one_or_many([float(p) for p in parts])


# VR -> (raw value, character set encoding) -> the value pydicom makes of it. Text of the
# character-set-free VRs is Latin-1 decoded, which cannot fail.
_CONVERTERS: dict[str, Callable[[bytes, str], Any]] = {
    **{vr: lambda raw, encoding: raw for vr in _BINARY_VRS},
    **{vr: partial(_numbers, vr) for vr in _NUMBER_FORMATS},
    "AT": lambda raw, encoding: _tags(raw),
    **{vr: lambda raw, encoding: _one_or_many([v.rstrip("\x00 ") for v in raw.decode(encoding).split("\\")])
       for vr in _TEXT_VRS},
    **{vr: lambda raw, encoding: raw.decode(encoding).rstrip("\x00 ") for vr in _SINGLE_TEXT_VRS},
    "PN": lambda raw, encoding: _person_names(raw.rstrip(b"\x00 ").decode(encoding)),
    **{vr: lambda raw, encoding: _one_or_many(raw.decode("latin_1").rstrip(" \x00").split("\\"))
       for vr in (*_STRING_VRS, "UI")},
    "AE": lambda raw, encoding: _one_or_many([v.strip() for v in raw.decode("latin_1").split("\\")]),
    "UR": lambda raw, encoding: raw.decode("latin_1").rstrip(),
    "IS": lambda raw, encoding: _integer_strings(raw.decode("latin_1")),
    "DS": lambda raw, encoding: _decimal_strings(raw.decode("latin_1")),
}


def _json_element(vr: str, value: Any) -> dict[str, Any]:
    """pydicom's DataElement.to_json_dict for a converted value (PS3.18 F.2.2)."""
    if value == "" or value == b"" or value is None:
        return {"vr": vr}
    if vr in _BINARY_VRS:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr == "PN":
        names = value if isinstance(value, list) else [value]
        return {"vr": vr, "Value": [_pn_json(groups) for groups in names]}
    if vr == "AT":
        tags = value if isinstance(value, list) else [value]
        return {"vr": vr, "Value": [f"{t:08X}" for t in tags]}
    return {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def _pn_json(groups: tuple[str, ...]) -> dict[str, str]:
    found = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        found["Ideographic"] = groups[1]
    if len(groups) > 2:
        found["Phonetic"] = groups[2]
    return found


def person_name_text(value: Any) -> str:
    """A PN value as str(PersonName) gives it ('=' between groups, '\\' between names)."""
    names = value if isinstance(value, list) else [value]
    return "\\".join("=".join(groups) for groups in names)
