"""A data set that carries its own encoding, for answers built straight as bytes.

Its elements are raw (pydicom writes them as they are, Dataset.set_original_encoding), and
`encoded` holds the whole data set so encoded, which pacs.dimse.preencoded lets pynetdicom send
without walking the elements again. Either way the bytes on the wire are the same."""

from __future__ import annotations

import struct

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

# PS3.5 Table 7.1-1: explicit VRs with a reserved field and a 32-bit length.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


class EncodedDataset(Dataset):
    def __init__(self, elements: list[tuple[int, str, bytes]], *, implicit: bool, character_set: list[str]) -> None:
        """`elements`: (tag, VR, encoded value) of each top-level element, Little Endian."""
        raw: dict[BaseTag, DataElement | RawDataElement] = {}
        parts = []
        for tag, vr, value in sorted(elements):
            key = Tag(tag)
            raw[key] = RawDataElement(key, vr, len(value), value, 0, implicit, True)
            parts.append(element_header(tag, vr, len(value), implicit) + value)
        super().__init__(raw)  # the elements as they are: no per-element checks on the way in
        self.set_original_encoding(implicit, True, character_set)
        self.encoded = b"".join(parts)
        self.encoding = (implicit, True, False)  # (implicit VR, little endian, deflated)


def element_header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    """Tag, VR (explicit only) and value length of a Little Endian element (PS3.5 7.1.2, 7.1.3)."""
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, length)
    if vr in LONG_VRS:
        return struct.pack("<HH2sxxI", group, element, vr.encode(), length)
    return struct.pack("<HH2sH", group, element, vr.encode(), length)


def padded_text(vr: str, text: str) -> bytes:
    """UTF-8 (ISO_IR 192), padded to an even length: UIDs with NUL, text with a space (PS3.5 6.2)."""
    data = text.encode("utf-8")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data
