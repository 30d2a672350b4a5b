"""Read one received object once: validate it, extract index attributes, DICOM JSON and frame layout.

Pixel data is never read here: the header is parsed with ``stop_before_pixels`` and only the
item headers of encapsulated pixel data are walked.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs.dicom.attributes import CATALOGUE, INTEGER_VRS, Level, normalize_time
from pacs.dicom.fastheader import FastHeader, Unsupported, person_name_text, read_fast_header
from pacs.dicom.frames import (
    PIXEL_TAGS,
    Layout,
    LayoutError,
    encapsulated_layout,
    native_layout,
    read_element_header,
)
from pacs.errors import InvalidDicom

log = logging.getLogger(__name__)

BASE_URL_TOKEN = "@@BASE@@"  # replaced by the request's DICOMweb root when metadata is served
HEAD_BYTES = 16384  # read before the rest of a file is mapped: headers are rarely longer
BULK_INLINE_LIMIT = 1400  # base64 characters (~1 KiB): larger top-level binary values become BulkDataURIs
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD"}


@dataclass
class ParsedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    attributes: dict[Level, dict[str, Any]]
    metadata: dict[str, Any]
    layout: Layout | None
    pixel_offset: int | None = None  # value offset of native pixel data (for bulk/7FE00010)
    pixel_length: int | None = None
    pixel_tag: int | None = None
    has_part10_header: bool = True
    header_bytes: int = 0  # bytes ingest prepends when the file lacks a Part 10 header
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata_json(self) -> str:
        try:
            # Several times faster than json for the few kilobytes of every stored instance.
            return orjson.dumps(self.metadata).decode("utf-8")
        except (orjson.JSONEncodeError, TypeError):  # e.g. an IS value beyond 64 bits
            return json.dumps(self.metadata, separators=(",", ":"), ensure_ascii=False)


def inspect_instance(path: Path, head: bytes | None = None, size: int | None = None) -> ParsedInstance:
    """``head`` and ``size``: the file's first HEAD_BYTES (or all of it, when shorter) and its
    size, held by a caller that has just written it. The header is then read from ``head``, and
    the file opened only if more of it is needed (or for pydicom's general reading)."""
    if head is not None and size is not None and size >= 132:
        with _HeadFirst(path, head, size) as known:
            try:
                return _inspect_fast(cast(BinaryIO, known), size)
            except Unsupported:
                pass
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size >= 132:
            try:
                return _inspect_fast(fh, size)
            except Unsupported:
                fh.seek(0)
        return _inspect_general(fh, size)


class _HeadFirst:
    """A file to read whose first bytes are in memory already: reads within them are served
    from there, and the file is opened at the first read (or ``fileno``) that needs more."""

    def __init__(self, path: Path, head: bytes, size: int) -> None:
        self._path = path
        self._head = head
        self._size = size
        self._pos = 0
        self._file: BinaryIO | None = None

    def read(self, count: int = -1) -> bytes:
        if self._file is None:
            end = self._size if count is None or count < 0 else min(self._pos + count, self._size)
            if end <= len(self._head):
                data = self._head[self._pos : end]
                self._pos = max(self._pos, end)
                return data
        return self._opened().read(count)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._file is not None:
            return self._file.seek(offset, whence)
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._file.tell() if self._file is not None else self._pos

    def fileno(self) -> int:
        return self._opened().fileno()

    def _opened(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self._path, "rb")  # noqa: SIM115 - closed by __exit__
            self._file.seek(self._pos)
        return self._file

    def __enter__(self) -> _HeadFirst:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def _inspect_fast(fh: BinaryIO, size: int) -> ParsedInstance:
    """The common case, read straight from the bytes (pacs.dicom.fastheader); Unsupported
    sends the object to the general reader, which also words every refusal."""
    header = _read_fast(fh, size)
    values = header.values
    uids = [_fast_uid(values.get(tag)) for tag in _UID_TAGS]
    parsed = ParsedInstance(
        sop_class_uid=uids[0],
        sop_instance_uid=uids[1],
        study_instance_uid=uids[2],
        series_instance_uid=uids[3],
        transfer_syntax_uid=header.transfer_syntax_uid,
        attributes=_fast_attributes(header),
        metadata={},
        layout=None,
    )
    pixels = _PixelParams.of(lambda tag: values.get(tag))
    if header.pixel_element_at is not None:
        if "7FE00001" in header.bulk:
            raise Unsupported("an extended offset table too large to keep inline")
        fh.seek(header.pixel_element_at)
        _locate_pixels(fh, pixels, header.transfer_syntax_uid, size, parsed, None)
    metadata = header.json
    base = instance_url(parsed)
    for tag_hex, length in header.bulk.items():
        metadata[tag_hex] = {"vr": header.vrs[int(tag_hex, 16)], "BulkDataURI": f"{base}/bulk/{tag_hex}"}
    parsed.metadata = _finish_metadata(metadata, parsed, _int(values.get(0x00280100), 16))
    return parsed


def _read_fast(fh: BinaryIO, size: int) -> FastHeader:
    """The header from the file's first HEAD_BYTES when it ends there (nearly always: the pixel
    data follows it), else from a map of the whole file. Reading the head costs less than
    mapping: unmapping in a process with many threads interrupts the other cores."""
    if size > HEAD_BYTES:
        head = fh.read(HEAD_BYTES)
        try:
            header = read_fast_header(head, len(head), inline_limit=BULK_INLINE_LIMIT)
        except Unsupported:
            header = None  # perhaps only cut short by the head's end: the whole file decides
        if header is not None and header.pixel_element_at is not None:
            return header
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return read_fast_header(buf, size, inline_limit=BULK_INLINE_LIMIT)


_UID_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)  # SOP Class, SOP Instance, Study, Series


def _fast_uid(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 or not _UID.fullmatch(value):
        raise Unsupported("a required UID is missing or malformed")  # the general reader words it
    return value


def _fast_attributes(header: FastHeader) -> dict[Level, dict[str, Any]]:
    values: dict[Level, dict[str, Any]] = {level: {} for level in Level}
    request = header.json.get("00400275", {}).get("Value") or [None]
    for attr in CATALOGUE:
        if attr.computed:
            continue
        if attr.parent:
            item = request[0]
            element = item.get(attr.tag_hex) if item else None
            value = element.get("Value") if element else None
        else:
            value = header.values.get(attr.tag)
            if attr.vr == "PN" and value:
                value = person_name_text(value)
        values[attr.level][attr.column] = column_value(value, attr.vr)
    return values


def _inspect_general(fh: BinaryIO, size: int) -> ParsedInstance:
    ds, has_header = _read_header(fh)
    read_to = _end_of_last_element(ds)  # before any value is converted
    ts = _transfer_syntax(ds)
    uids = _required_uids(ds)
    parsed = ParsedInstance(
        sop_class_uid=uids["sop_class_uid"],
        sop_instance_uid=uids["sop_instance_uid"],
        study_instance_uid=uids["study_instance_uid"],
        series_instance_uid=uids["series_instance_uid"],
        transfer_syntax_uid=ts,
        attributes=extract_attributes(ds),
        metadata={},
        layout=None,
        has_part10_header=has_header,
    )
    pixels = _PixelParams.of(lambda tag: _value_of(ds, tag))
    if ts != DeflatedExplicitVRLittleEndian:
        _locate_pixels(fh, pixels, ts, size, parsed, read_to)
    else:
        parsed.pixel_tag = _deflated_pixel_tag(fh)
    parsed.metadata = build_metadata(ds, parsed)
    return parsed


def _read_header(fh: BinaryIO) -> tuple[Dataset, bool]:
    try:
        try:
            ds, has_header = pydicom.dcmread(fh, stop_before_pixels=True), True
        except InvalidDicomError:
            fh.seek(0)
            # A bare dataset (no preamble/meta), as some exporters and DIMSE peers leave them.
            ds, has_header = pydicom.dcmread(fh, stop_before_pixels=True, force=True), False
            if len(ds) == 0:
                raise InvalidDicom("not a DICOM file: no data elements could be read")
            if next(iter(ds.keys())) >> 16 > 0x0008:
                # Elements come in ascending order and every SOP instance has group 0008
                # (SOP Common, PS3.3 C.12.1): anything else is some other kind of file.
                raise InvalidDicom("not a DICOM file: no DICM prefix, and it does not start like a data set")
        _check_complete(ds)
        return ds, has_header
    except InvalidDicom:
        raise
    except Exception as exc:  # pydicom raises many kinds on damaged input
        raise InvalidDicom(f"not a readable DICOM file: {exc}") from exc


def _check_complete(ds: Dataset) -> None:
    """pydicom keeps a value cut short by the end of the file as if it were whole (a UID
    "1.2.8" instead of "1.2.840..."): refuse a file whose last read value is shorter than its
    declared length. Values are inspected raw, before any conversion."""
    for tag in ds.keys():
        element = ds.get_item(tag)
        raw = getattr(element, "value", None)
        length = getattr(element, "length", 0)
        if isinstance(raw, bytes) and length != 0xFFFFFFFF and len(raw) < length:
            raise InvalidDicom(f"file is truncated inside attribute ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if isinstance(element.value, pydicom.Sequence):
            for item in element.value:
                _check_complete(item)


def _value_of(ds: Dataset, tag: int) -> Any:
    try:
        return ds[tag].value if tag in ds else None
    except Exception:
        return None  # a damaged optional attribute counts as absent


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = str(getattr(meta, "TransferSyntaxUID", "") or "").strip() if meta else ""
    if uid:
        return uid
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _required_uids(ds: Dataset) -> dict[str, str]:
    found: dict[str, str] = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        try:
            value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
        except Exception as exc:
            raise InvalidDicom(f"{keyword} cannot be read: {exc}") from exc
        if not value:
            raise InvalidDicom(f"{keyword} is missing")
        if len(value) > 64 or not _UID.fullmatch(value):
            raise InvalidDicom(f"{keyword} is not a valid UID: {value[:80]!r}")
        found[_snake_uid(keyword)] = value
    return found


def _snake_uid(keyword: str) -> str:
    return {
        "SOPClassUID": "sop_class_uid",
        "SOPInstanceUID": "sop_instance_uid",
        "StudyInstanceUID": "study_instance_uid",
        "SeriesInstanceUID": "series_instance_uid",
    }[keyword]


def extract_attributes(ds: Dataset) -> dict[Level, dict[str, Any]]:
    """Column values per level, as the index stores them (strings, ints, or None)."""
    values: dict[Level, dict[str, Any]] = {level: {} for level in Level}
    request = _first_item(ds, "RequestAttributesSequence")
    for attr in CATALOGUE:
        if attr.computed:
            continue
        source = request if attr.parent else ds
        values[attr.level][attr.column] = _column_value(source, attr.keyword, attr.vr) if source else None
    return values


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    try:
        seq = ds.get(keyword)
        return seq[0] if seq else None
    except Exception:
        return None


def _column_value(ds: Dataset, keyword: str, vr: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:
        return None  # a damaged optional attribute must not reject the whole object
    return column_value(value, vr)


def column_value(value: Any, vr: str) -> Any:
    """An attribute's value as its index column keeps it."""
    if value is None or value == "":
        return None
    if vr in INTEGER_VRS:
        try:
            return int(value if not isinstance(value, (list, tuple)) else value[0])
        except (TypeError, ValueError):
            return None
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().rstrip("\x00")
    if vr == "TM":
        return normalize_time(text)
    if vr == "DA" and len(text) == 10 and text[4] == "." and text[7] == ".":
        return text.replace(".", "")  # ACR-NEMA dotted dates still appear; index them as YYYYMMDD
    return text or None


@dataclass(frozen=True)
class _PixelParams:
    """What locating the frames needs from the header."""

    frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    extended_offsets: list[int] | None

    @classmethod
    def of(cls, get: Callable[[int], Any]) -> _PixelParams:
        return cls(
            frames=_int(get(0x00280008), 1), rows=_int(get(0x00280010), 0), columns=_int(get(0x00280011), 0),
            samples=_int(get(0x00280002), 1), bits_allocated=_int(get(0x00280100), 0),
            extended_offsets=_extended_offsets(get(0x7FE00001)),
        )


def _locate_pixels(
    fh: BinaryIO, pixels: _PixelParams, ts: str, size: int, parsed: ParsedInstance, read_to: int | None
) -> None:
    """The file is positioned just before the pixel data element, if there is one."""
    start = fh.tell()
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    if start >= size:
        _check_tail(fh, read_to, size, little=little)
        return
    try:
        tag, _vr, length = read_element_header(fh, implicit=implicit, little=little)
    except LayoutError:
        raise InvalidDicom("file is truncated inside the pixel data header") from None
    if tag not in PIXEL_TAGS:
        return
    parsed.pixel_tag = tag
    if length == 0xFFFFFFFF:
        try:
            parsed.layout = encapsulated_layout(
                fh, frames=pixels.frames, little=little, extended_offsets=pixels.extended_offsets
            )
        except LayoutError as exc:
            raise InvalidDicom(f"damaged encapsulated pixel data: {exc}") from exc
        return
    value_at = fh.tell()
    if value_at + length > size:
        raise InvalidDicom(f"file is truncated: pixel data needs {length} bytes, {size - value_at} present")
    parsed.pixel_offset, parsed.pixel_length = value_at, length
    bits = 32 if tag == 0x7FE00008 else 64 if tag == 0x7FE00009 else pixels.bits_allocated
    parsed.layout = native_layout(
        value_at, length, rows=pixels.rows, columns=pixels.columns, samples=pixels.samples,
        bits_allocated=bits, frames=pixels.frames, little=little,
    )


def _deflated_pixel_tag(fh: BinaryIO) -> int | None:
    """Which pixel data element a deflated data set has. Its bytes cannot be located in the
    compressed stream (frames are cut at request time), but the metadata must still refer to
    them. pydicom inflates the whole data set in memory to read even its header, so reading it
    once more, pixels included, costs no more than that."""
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, force=True)
        return next((tag for tag in sorted(PIXEL_TAGS) if tag in ds), None)
    except Exception as exc:
        raise InvalidDicom(f"damaged deflated data set: {exc}") from exc


def _end_of_last_element(ds: Dataset) -> int | None:
    """Where the last element read ends in the file (None when unknown: undefined length)."""
    if not ds:
        return None
    last = ds.get_item(max(ds.keys()))
    length, value_tell = getattr(last, "length", None), getattr(last, "value_tell", None)
    if length is None or value_tell is None or length == 0xFFFFFFFF:
        return None
    return int(value_tell) + int(length)


def _check_tail(fh: BinaryIO, read_to: int | None, size: int, *, little: bool) -> None:
    """pydicom stops silently at a partial element header at the end of a file: a file cut a
    few bytes into its Pixel Data element would otherwise pass for an object without pixels."""
    if read_to is None or not 0 < size - read_to < 12:
        return
    fh.seek(read_to)
    tail = fh.read(4)
    endian = "<" if little else ">"
    if any(struct.pack(endian + "HH", tag >> 16, tag & 0xFFFF).startswith(tail) for tag in PIXEL_TAGS):
        raise InvalidDicom("file is truncated inside the pixel data header")


def _extended_offsets(raw: Any) -> list[int] | None:
    if not raw:
        return None
    data = bytes(getattr(raw, "value", raw))
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data) - 7, 8)]


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def build_metadata(ds: Dataset, parsed: ParsedInstance) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) of the instance; large top-level binary values become
    BulkDataURIs under the instance's URL (``BASE_URL_TOKEN`` stands for the DICOMweb root)."""
    metadata = dataset_json(ds)
    base = instance_url(parsed)
    for tag, element in metadata.items():
        inline = element.get("InlineBinary")
        if inline and len(inline) > BULK_INLINE_LIMIT:
            del element["InlineBinary"]
            element["BulkDataURI"] = f"{base}/bulk/{tag}"
    return _finish_metadata(metadata, parsed, _int(ds.get("BitsAllocated"), 16))


def _finish_metadata(metadata: dict[str, Any], parsed: ParsedInstance, bits_allocated: int) -> dict[str, Any]:
    """Add the transfer syntax and the pixel data's BulkDataURI; sort by tag."""
    metadata["00083002"] = {"vr": "UI", "Value": [parsed.transfer_syntax_uid]}
    if parsed.pixel_tag is not None:
        encapsulated = parsed.layout is not None and parsed.layout["kind"] == "encapsulated"
        vr = _PIXEL_VR.get(parsed.pixel_tag) or ("OB" if encapsulated or bits_allocated <= 8 else "OW")
        tag_hex = f"{parsed.pixel_tag:08X}"
        metadata[tag_hex] = {"vr": vr, "BulkDataURI": f"{instance_url(parsed)}/bulk/{tag_hex}"}
    return dict(sorted(metadata.items()))


def dataset_json(ds: Dataset) -> dict[str, Any]:
    """pydicom's DICOM JSON, element by element: a value pydicom cannot render is left out on
    its own. (``to_json_dict(suppress_invalid_tags=True)`` is not used: it switches pydicom's
    process-wide reading mode to strict while it runs, which drops merely non-conformant values
    such as UIDs with a leading-zero component, loses a whole sequence for one bad item value,
    and changes how every other thread parses files meanwhile.)"""
    rendered: dict[str, Any] = {}
    for tag in ds.keys():
        try:
            element = ds[tag]
            if element.VR == "SQ":
                rendered[f"{tag:08X}"] = {"vr": "SQ", "Value": [dataset_json(item) for item in element.value]}
            else:
                rendered[f"{tag:08X}"] = element.to_json_dict(None, 1 << 62)
        except Exception as exc:  # damaged values are the norm in the wild
            log.info("attribute %08X left out of the metadata: %s", tag, exc)
    return rendered


def instance_url(parsed: ParsedInstance) -> str:
    return (
        f"{BASE_URL_TOKEN}/studies/{parsed.study_instance_uid}/series/{parsed.series_instance_uid}"
        f"/instances/{parsed.sop_instance_uid}"
    )
