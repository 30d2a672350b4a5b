"""Where each frame's bytes sit inside a stored Part 10 file, worked out once at ingest.

WADO-RS `/frames` then answers with ranged reads from storage instead of re-parsing the
object. The layout is a small JSON-able dict kept in the index:

- ``{"kind": "native", "offset": o, "frame_length": n, "count": c, "byteswap": w}``: frame k
  (0-based) is ``[o + k*n, o + (k+1)*n)``; ``w`` is the word size to swap for big endian files.
- ``{"kind": "encapsulated", "frames": [[[offset, length], ...], ...]}``: per frame, the
  fragments (item values, headers excluded) whose concatenation is the frame (PS3.5 A.4).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

ITEM_TAG = (0xFFFE, 0xE000)
SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float and Double Float Pixel Data

# Start-of-codestream markers: a fragment that begins with one starts a new frame when the
# offset tables are empty (PS3.5 A.4 allows several fragments per frame).
_FRAME_START_MARKERS = (b"\xff\xd8", b"\xff\x4f", b"\xff\x51")

Layout = dict[str, Any]


class LayoutError(ValueError):
    """The pixel data element is damaged (truncated item, bad tag)."""


def read_element_header(fh: BinaryIO, *, implicit: bool, little: bool) -> tuple[int, str | None, int]:
    """Read a data element header at the current position: (tag, VR or None, value length)."""
    endian = "<" if little else ">"
    head = fh.read(8)
    if len(head) < 8:
        raise LayoutError("truncated element header")
    group, element = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | element
    vr = head[4:6].decode("ascii", "replace")
    if implicit or not vr.isalpha() or not vr.isupper():
        # Some writers switch to implicit VR mid-file; pydicom reads them, so do we.
        return tag, None, struct.unpack(endian + "L", head[4:])[0]
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN", "UT", "UC", "UR", "SV", "UV"):
        rest = fh.read(4)
        if len(rest) < 4:
            raise LayoutError("truncated element header")
        return tag, vr, struct.unpack(endian + "L", rest)[0]
    return tag, vr, struct.unpack(endian + "H", head[6:])[0]


def native_layout(
    offset: int, length: int, *, rows: int, columns: int, samples: int, bits_allocated: int,
    frames: int, little: bool,
) -> Layout | None:
    """Layout of uncompressed pixel data, or None when frames are not byte aligned."""
    bits = rows * columns * samples * bits_allocated
    if bits == 0 or bits % 8:
        return None  # e.g. 1-bit data with an odd pixel count: served through a full decode
    frame_length = bits // 8
    count = max(1, frames)
    if frame_length * count > length:
        count = length // frame_length
    swap = 0 if little or bits_allocated <= 8 else bits_allocated // 8
    return {"kind": "native", "offset": offset, "frame_length": frame_length, "count": count, "byteswap": swap}


def encapsulated_layout(
    fh: BinaryIO, *, frames: int, little: bool, extended_offsets: Sequence[int] | None = None
) -> Layout:
    """Walk the items of encapsulated pixel data from the current position (just after the
    element header) and group fragments into frames."""
    endian = "<" if little else ">"
    basic_offsets = _read_basic_offset_table(fh, endian)
    first_fragment_at = fh.tell()
    fragments: list[tuple[int, int, int]] = []  # (item position relative to first, value offset, length)
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise LayoutError("encapsulated pixel data ends without a sequence delimiter")
        group, element, length = struct.unpack(endian + "HHL", head)
        if (group, element) == SEQUENCE_DELIMITER:
            break
        if (group, element) != ITEM_TAG:
            raise LayoutError(f"unexpected tag ({group:04X},{element:04X}) inside pixel data")
        value_at = fh.tell()
        fragments.append((value_at - 8 - first_fragment_at, value_at, length))
        fh.seek(length, 1)
    frames = max(1, frames)
    starts = list(extended_offsets or basic_offsets)
    groups = _group_fragments(fh, fragments, frames, starts)
    return {"kind": "encapsulated", "frames": [[[off, ln] for _, off, ln in g] for g in groups]}


def _read_basic_offset_table(fh: BinaryIO, endian: str) -> list[int]:
    head = fh.read(8)
    if len(head) < 8:
        raise LayoutError("truncated basic offset table")
    group, element, length = struct.unpack(endian + "HHL", head)
    if (group, element) != ITEM_TAG:
        raise LayoutError("encapsulated pixel data does not start with an item")
    table = fh.read(length)
    if len(table) < length:
        raise LayoutError("truncated basic offset table")
    return list(struct.unpack(f"{endian}{length // 4}L", table[: length - length % 4]))


def _group_fragments(
    fh: BinaryIO, fragments: list[tuple[int, int, int]], frames: int, starts: list[int]
) -> list[list[tuple[int, int, int]]]:
    if not fragments:
        return []
    if frames == 1:
        return [fragments]
    if len(starts) == frames:
        positions = {rel: i for i, (rel, _, _) in enumerate(fragments)}
        if all(s in positions for s in starts):
            bounds = [positions[s] for s in starts] + [len(fragments)]
            return [fragments[bounds[i] : bounds[i + 1]] for i in range(frames)]
    if len(fragments) == frames:
        return [[f] for f in fragments]
    return _group_by_markers(fh, fragments)


def _group_by_markers(
    fh: BinaryIO, fragments: list[tuple[int, int, int]]
) -> list[list[tuple[int, int, int]]]:
    groups: list[list[tuple[int, int, int]]] = []
    for fragment in fragments:
        fh.seek(fragment[1])
        if not groups or fh.read(2) in _FRAME_START_MARKERS:
            groups.append([fragment])
        else:
            groups[-1].append(fragment)
    return groups


def frame_count(layout: Layout | None) -> int:
    if not layout:
        return 0
    if layout["kind"] == "native":
        return int(layout["count"])
    return len(layout["frames"])


def frame_ranges(layout: Layout, index: int) -> list[tuple[int, int]]:
    """Byte ranges (offset, length) making up frame ``index`` (0-based)."""
    if layout["kind"] == "native":
        size = layout["frame_length"]
        return [(layout["offset"] + index * size, size)]
    return [(off, ln) for off, ln in layout["frames"][index]]
