"""Frame layout of native and encapsulated pixel data (PS3.5 8.2, A.4), on synthetic bytes."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.encaps import encapsulate, encapsulate_extended

from pacs.dicom.frames import (
    LayoutError,
    encapsulated_layout,
    frame_count,
    frame_ranges,
    native_layout,
    read_element_header,
)


def cut(data: bytes, layout: dict, index: int) -> bytes:
    return b"".join(data[o : o + n] for o, n in frame_ranges(layout, index))


# ---- element headers ----------------------------------------------------------------------------


def test_explicit_short_and_long_headers() -> None:
    short = struct.pack("<HH2sH", 0x0028, 0x0010, b"US", 2)
    assert read_element_header(io.BytesIO(short), implicit=False, little=True) == (0x00280010, "US", 2)
    long = struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW", 1 << 20)
    fh = io.BytesIO(long)
    assert read_element_header(fh, implicit=False, little=True) == (0x7FE00010, "OW", 1 << 20)
    assert fh.tell() == 12


def test_implicit_and_big_endian_headers() -> None:
    implicit = struct.pack("<HHL", 0x7FE0, 0x0010, 0xFFFFFFFF)
    assert read_element_header(io.BytesIO(implicit), implicit=True, little=True) == (0x7FE00010, None, 0xFFFFFFFF)
    big = struct.pack(">HH2s2xL", 0x7FE0, 0x0010, b"OW", 512)
    assert read_element_header(io.BytesIO(big), implicit=False, little=False) == (0x7FE00010, "OW", 512)


def test_implicit_element_inside_an_explicit_file_is_read() -> None:
    # Some writers switch to implicit VR: the bytes where the VR should be are not letters.
    odd = struct.pack("<HHL", 0x7FE0, 0x0010, 4096)
    assert read_element_header(io.BytesIO(odd), implicit=False, little=True) == (0x7FE00010, None, 4096)


@pytest.mark.parametrize("data", [b"", b"\xe0\x7f\x10\x00OW", struct.pack("<HH2s2x", 0x7FE0, 0x0010, b"OB")])
def test_truncated_header(data: bytes) -> None:
    with pytest.raises(LayoutError):
        read_element_header(io.BytesIO(data), implicit=False, little=True)


# ---- native ---------------------------------------------------------------------------------------


def test_native_frames() -> None:
    layout = native_layout(1000, 3 * 16 * 16 * 2, rows=16, columns=16, samples=1, bits_allocated=16, frames=3, little=True)
    assert layout == {"kind": "native", "offset": 1000, "frame_length": 512, "count": 3, "byteswap": 0}
    assert frame_count(layout) == 3
    assert frame_ranges(layout, 2) == [(2024, 512)]


def test_native_rgb_and_big_endian() -> None:
    rgb = native_layout(0, 4 * 4 * 3, rows=4, columns=4, samples=3, bits_allocated=8, frames=1, little=False)
    assert rgb is not None and rgb["frame_length"] == 48 and rgb["byteswap"] == 0  # bytes need no swap
    words = native_layout(0, 4 * 4 * 2, rows=4, columns=4, samples=1, bits_allocated=16, frames=1, little=False)
    assert words is not None and words["byteswap"] == 2
    floats = native_layout(0, 4 * 4 * 4, rows=4, columns=4, samples=1, bits_allocated=32, frames=1, little=False)
    assert floats is not None and floats["byteswap"] == 4


def test_native_count_is_capped_by_the_data_present() -> None:
    # NumberOfFrames says 10, the value holds 4 whole frames (and a bit).
    layout = native_layout(0, 4 * 100 + 7, rows=10, columns=10, samples=1, bits_allocated=8, frames=10, little=True)
    assert layout is not None and layout["count"] == 4


def test_native_missing_frame_count_means_one() -> None:
    layout = native_layout(0, 64, rows=8, columns=8, samples=1, bits_allocated=8, frames=0, little=True)
    assert layout is not None and layout["count"] == 1


@pytest.mark.parametrize(("rows", "columns", "bits"), [(3, 3, 1), (0, 16, 16), (16, 16, 0)])
def test_native_unaligned_or_empty_has_no_layout(rows: int, columns: int, bits: int) -> None:
    assert native_layout(0, 100, rows=rows, columns=columns, samples=1, bits_allocated=bits, frames=2, little=True) is None


def test_one_bit_frames_of_whole_bytes_have_a_layout() -> None:
    layout = native_layout(0, 2 * 8, rows=8, columns=8, samples=1, bits_allocated=1, frames=2, little=True)
    assert layout is not None and layout["frame_length"] == 8 and layout["count"] == 2


# ---- encapsulated --------------------------------------------------------------------------------


JPEG_FRAMES = [b"\xff\xd8" + bytes([i]) * (10 + 2 * i) + b"\xff\xd9" for i in range(3)]  # even lengths: no padding


def encapsulated(frames: list[bytes], **options: object) -> bytes:
    """The value of encapsulated Pixel Data: pydicom's items plus the sequence delimiter."""
    return encapsulate(frames, **options) + _sequence_end()  # type: ignore[arg-type]


def layout_of(value: bytes, frames: int, little: bool = True, extended: list[int] | None = None) -> dict:
    """Layout of an encapsulated value placed after 100 bytes of something else."""
    data = b"\x00" * 100 + value
    fh = io.BytesIO(data)
    fh.seek(100)
    layout = encapsulated_layout(fh, frames=frames, little=little, extended_offsets=extended)
    layout["_data"] = data
    return layout


def frames_of(layout: dict) -> list[bytes]:
    return [cut(layout["_data"], layout, i) for i in range(frame_count(layout))]


def _sequence_end() -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def test_one_fragment_per_frame_with_offset_table() -> None:
    layout = layout_of(encapsulated(JPEG_FRAMES, has_bot=True), frames=3)
    assert frames_of(layout) == JPEG_FRAMES


def test_one_fragment_per_frame_without_offset_table() -> None:
    layout = layout_of(encapsulated(JPEG_FRAMES, has_bot=False), frames=3)
    assert frames_of(layout) == JPEG_FRAMES


def test_several_fragments_per_frame_with_offset_table() -> None:
    frames = [b"\xff\xd8" + bytes([i]) * 40 + b"\xff\xd9" for i in range(2)]
    layout = layout_of(encapsulated(frames, fragments_per_frame=3, has_bot=True), frames=2)
    assert frames_of(layout) == frames
    assert all(len(group) == 3 for group in layout["frames"])


def test_several_fragments_per_frame_found_by_start_markers() -> None:
    frames = [b"\xff\xd8" + bytes([i]) * 40 + b"\xff\xd9" for i in range(2)]
    layout = layout_of(encapsulated(frames, fragments_per_frame=3, has_bot=False), frames=2)
    assert frames_of(layout) == frames


def test_single_frame_in_several_fragments() -> None:
    frame = b"\xff\xd8" + b"\x01" * 100 + b"\xff\xd9"
    layout = layout_of(encapsulated([frame], fragments_per_frame=4, has_bot=False), frames=1)
    assert frames_of(layout) == [frame]


def test_extended_offset_table() -> None:
    items, offsets, _lengths = encapsulate_extended(JPEG_FRAMES)
    value = items + _sequence_end()
    extended = list(struct.unpack(f"<{len(JPEG_FRAMES)}Q", offsets))
    layout = layout_of(value, frames=3, extended=extended)
    assert frames_of(layout) == JPEG_FRAMES


def test_big_endian_items() -> None:
    body = b"".join(struct.pack(">HHL", 0xFFFE, 0xE000, len(f)) + f for f in JPEG_FRAMES)
    value = struct.pack(">HHL", 0xFFFE, 0xE000, 0) + body + struct.pack(">HHL", 0xFFFE, 0xE0DD, 0)
    assert frames_of(layout_of(value, frames=3, little=False)) == JPEG_FRAMES


def test_item_offsets_exclude_item_headers() -> None:
    layout = layout_of(encapsulated(JPEG_FRAMES[:1], has_bot=False), frames=1)
    [[(offset, length)]] = layout["frames"]
    # 100 bytes before, 8 for the empty offset table item, 8 for the fragment's item header.
    assert (offset, length) == (116, len(JPEG_FRAMES[0]))


def test_no_fragments_means_no_frames() -> None:
    value = struct.pack("<HHL", 0xFFFE, 0xE000, 0) + _sequence_end()
    assert frame_count(layout_of(value, frames=1)) == 0


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(encapsulate(JPEG_FRAMES), id="no sequence delimiter"),
        pytest.param(encapsulate(JPEG_FRAMES)[:-6], id="cut inside a fragment"),
        pytest.param(b"\xfe\xff\x00\xe0\x10\x00\x00\x00\x00\x00", id="cut inside the offset table"),
        pytest.param(b"\xfe\xff", id="cut inside the first item header"),
        pytest.param(struct.pack("<HHL", 0x0008, 0x0018, 0), id="not an item"),
        pytest.param(
            struct.pack("<HHL", 0xFFFE, 0xE000, 0) + struct.pack("<HHL", 0x0010, 0x0010, 4) + b"abcd",
            id="unexpected tag among the fragments",
        ),
    ],
)
def test_damaged_encapsulated_data(value: bytes) -> None:
    with pytest.raises(LayoutError):
        layout_of(value, frames=3)


def test_fragment_running_past_the_end_is_damage() -> None:
    # An item claims more bytes than the file has: seeking past the end must not pass silently.
    value = struct.pack("<HHL", 0xFFFE, 0xE000, 0) + struct.pack("<HHL", 0xFFFE, 0xE000, 5000) + b"\xff\xd8abc"
    with pytest.raises(LayoutError):
        layout_of(value, frames=1)


def test_frame_count_of_nothing() -> None:
    assert frame_count(None) == 0
    assert frame_count({}) == 0
