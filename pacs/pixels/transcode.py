"""Convert stored instances and single frames to another transfer syntax, on request.

Decoding and encoding are pydicom's (with the pylibjpeg and pyjpegls plugins); this module only
decides what to call, keeps the data set consistent around it, and turns every failure into
:class:`NotAcceptable` with a message naming the instance, the syntaxes and the reason.

* Whole instances (WADO-RS, C-GET/C-MOVE): :func:`transcode_dataset` converts a data set in place,
  :func:`transcode_file` reads a stored Part 10 file and writes the converted one.
* Frames (WADO-RS ``/frames``): :func:`frame_in_syntax` decodes one stored frame and, for a
  compressed target, encodes it again; nothing else of the instance is needed besides its Image
  Pixel module.
* Archived instances (WADO-RS, WADO-URI): :func:`open_transcoded` / :func:`transcoded_stream`
  convert one into a temp file of the data folder and stream it from there.

The SOP Instance UID is kept, also for lossy targets: the result is the stored instance in the
representation a client asked for by its UID (PS3.18 8.7.3, PS3.4 C.4.2/C.4.3 transfer syntax
negotiation), and Lossy Image Compression tells the receiver what happened (PS3.3 C.7.6.1.1.5).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels import as_pixel_options, get_decoder, get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pacs.errors import NotAcceptable, StorageUnavailable
from pacs.index.repository import StoredInstance
from storage.base import DEFAULT_CHUNK_SIZE, RangeChunks

if TYPE_CHECKING:
    from pacs.services import Services

__all__ = [
    "decodable",
    "describe",
    "frame_in_syntax",
    "open_transcoded",
    "producible_from",
    "producible_syntaxes",
    "read_pixel_header",
    "transcode_dataset",
    "transcode_file",
    "transcoded_stream",
]

UNCOMPRESSED_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Every compressed syntax pydicom 3 has an encoder for; whether its plugin is installed is
# checked at run time. (pydicom 3.0 has no JPEG baseline/lossless, HTJ2K or JPEG XL encoder.)
COMPRESSED_TARGETS = (
    RLELossless,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
)
# Lossy targets: (encoder options, LossyImageCompressionMethod of PS3.3 C.7.6.1.1.5.1). A client
# asking for one wants smaller transfers; JPEG 2000 at 10:1 and JPEG-LS with NEAR=2 are moderate.
LOSSY_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    JPEG2000: ({"j2k_cr": [10]}, "ISO_15444_1"),
    JPEGLSNearLossless: ({"jls_error": 2}, "ISO_14495_1"),
    JPEGBaseline8Bit: ({}, "ISO_10918_1"),
    JPEGExtended12Bit: ({}, "ISO_10918_1"),
}
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")


@cache
def producible_syntaxes() -> frozenset[str]:
    """Transfer syntaxes this installation can write: Explicit and Implicit VR Little Endian
    always, and each compressed syntax whose pydicom encoder has a working plugin here."""
    found = set(UNCOMPRESSED_TARGETS)
    for uid in COMPRESSED_TARGETS:
        try:
            if get_encoder(uid).is_available:
                found.add(uid)
        except NotImplementedError:  # no encoder exists for it in this pydicom
            continue
    return frozenset(str(uid) for uid in found)


@cache
def decodable(syntax: str) -> bool:
    """Whether pixel data stored in ``syntax`` can be read here (native ones always can)."""
    uid = UID(syntax)
    try:
        if not uid.is_transfer_syntax:
            return False
        if not uid.is_compressed:
            return True
        return get_decoder(uid).is_available
    except (NotImplementedError, ValueError):  # an unknown UID, or no decoder in this pydicom
        return False


def producible_from(syntax: str) -> frozenset[str]:
    """The syntaxes an instance (or frame) stored in ``syntax`` can be served in by transcoding."""
    return producible_syntaxes() if decodable(syntax) else frozenset()


# --------------------------------------------------------------------------
# Whole instances
# --------------------------------------------------------------------------


def transcode_file(source: BinaryIO | Path, target_syntax: str, destination: Path | BinaryIO) -> None:
    """Read the Part 10 file ``source`` and write it to ``destination`` (a Part 10 file with the
    new Transfer Syntax UID) in ``target_syntax``. The whole instance is held in memory while
    it is converted: callers do one instance at a time. Reading the result back gives a data
    set whose own encoding matches its Transfer Syntax UID, which :func:`transcode_dataset`
    alone does not promise (pydicom keeps raw elements in their original encoding)."""
    try:
        ds = pydicom.dcmread(source)
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise NotAcceptable(f"cannot read the stored object to convert it: {exc}") from exc
    transcode_dataset(ds, target_syntax)
    try:
        # dcmwrite, not save_as: save_as refuses a big endian original even once converted.
        dcmwrite(destination, ds, enforce_file_format=True)
    except OSError as exc:
        raise StorageUnavailable(f"cannot write the converted instance: {exc.strerror or exc}") from exc
    except Exception as exc:  # a value pydicom cannot encode in the new syntax
        raise NotAcceptable(f"cannot write {_name(ds)} in {UID(target_syntax).name}: {exc}") from exc


def open_transcoded(services: Services, stored: StoredInstance, target_syntax: str) -> tuple[BinaryIO, int]:
    """The archived instance ``stored`` converted to ``target_syntax``: an open handle on the
    result (a temp file in the data folder) and its size. The file is unlinked as soon as it is
    open, so nothing is left behind however the reader ends; the caller closes the handle."""
    fd, path = services.ingest.temp_file()
    os.close(fd)
    try:
        with services.blobs.open(stored.blob_key) as source:
            transcode_file(source, target_syntax, path)
        handle = path.open("rb")
    finally:
        path.unlink(missing_ok=True)
    return handle, os.fstat(handle.fileno()).st_size


def transcoded_stream(services: Services, stored: StoredInstance, target_syntax: str) -> Iterator[bytes]:
    """The archived instance in ``target_syntax`` as a Part 10 byte stream. The conversion runs
    now (a failure raises here, before any byte is sent); the bytes are read as they are pulled."""
    handle, _ = open_transcoded(services, stored, target_syntax)
    return RangeChunks(handle, None, DEFAULT_CHUNK_SIZE, nullcontext)


def transcode_dataset(ds: Dataset, target_syntax: str) -> Dataset:
    """Convert ``ds`` (read from a Part 10 file) to ``target_syntax`` in place and return it:
    compressed pixel data is decoded first, then encoded again for a compressed target."""
    target = UID(target_syntax)
    source = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if target == source:
        return ds
    if str(target) not in producible_syntaxes():
        raise NotAcceptable(
            f"cannot produce {_syntax_name(target)}; this server can produce: {describe(producible_syntaxes())}"
        )
    if not decodable(source):
        raise NotAcceptable(f"{_name(ds)} is stored in {_syntax_name(source)}, which cannot be decoded here")
    try:
        _to_native_little_endian(ds, source)
        if target.is_compressed:
            _compress(ds, target)
        else:
            ds.file_meta.TransferSyntaxUID = target
    except NotAcceptable:
        raise
    except Exception as exc:  # decoders and encoders raise anything from ValueError to RuntimeError
        raise NotAcceptable(
            f"cannot convert {_name(ds)} from {source.name} to {target.name}: {exc or type(exc).__name__}"
        ) from exc
    return ds


def _to_native_little_endian(ds: Dataset, source: UID) -> None:
    if source.is_compressed and "PixelData" in ds:
        # Decoded YCbCr comes out as RGB, and pydicom updates Photometric Interpretation to match.
        ds.decompress(generate_instance_uid=False)
        for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            if keyword in ds:
                delattr(ds, keyword)
        _drop_icon(ds)
    elif not source.is_little_endian:
        _swap_words(ds)  # pydicom leaves OW/OF/OD/OL/OV values for the caller to swap
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _compress(ds: Dataset, target: UID) -> None:
    if any(keyword in ds for keyword in _FLOAT_PIXELS):
        raise NotAcceptable(f"{_name(ds)} has floating point pixel data, which {target.name} cannot hold")
    if "PixelData" not in ds:
        # Without pixel data the data set is encoded exactly as in Explicit VR Little Endian.
        ds.file_meta.TransferSyntaxUID = target
        return
    options, method = LOSSY_OPTIONS.get(target, ({}, ""))
    if method and ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        raise NotAcceptable(f"{_name(ds)} holds palette indices, which lossy {target.name} would corrupt")
    native_size = len(ds.PixelData)
    _drop_icon(ds)
    ds.compress(target, generate_instance_uid=False, **options)
    if method:
        _mark_lossy(ds, method, native_size / max(1, len(ds.PixelData)))


def _mark_lossy(ds: Dataset, method: str, ratio: float) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy, always lossy; each lossy step adds a ratio and a method."""
    earlier = ds.get("LossyImageCompression") == "01"
    ratios = _values(ds.get("LossyImageCompressionRatio")) if earlier else []
    methods = _values(ds.get("LossyImageCompressionMethod")) if earlier else []
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*methods, method]


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, Iterable) and not isinstance(value, str):
        return list(value)
    return [value]


def _drop_icon(ds: Dataset) -> None:
    """An icon's pixel data must be encoded like the main image's (PS3.5 A.4); the icon is
    optional (Type 3), so it is left out rather than converted too."""
    if "IconImageSequence" in ds:
        del ds.IconImageSequence


def _swap_words(ds: Dataset) -> None:
    for element in ds:  # iterating converts raw (undecoded) elements first
        if element.VR == "SQ":
            for item in element.value:
                _swap_words(item)
        elif element.VR in _WORD_SIZES and element.value:
            word = _WORD_SIZES[element.VR]
            raw = bytes(element.value)
            if len(raw) % word == 0:
                element.value = np.frombuffer(raw, f">u{word}").astype(f"<u{word}").tobytes()


# --------------------------------------------------------------------------
# Single frames
# --------------------------------------------------------------------------


def read_pixel_header(source: BinaryIO) -> Dataset:
    """The data set of a Part 10 file up to its pixel data: enough for :func:`frame_in_syntax`.
    ``source`` may end right after the pixel data element's header (a ranged read)."""
    return pydicom.dcmread(source, stop_before_pixels=True)


def frame_in_syntax(header: Dataset, frame: bytes, source_syntax: str, target_syntax: str) -> bytes:
    """One frame in ``target_syntax``: little-endian octets for an uncompressed target, else the
    frame's codestream (no encapsulation items).

    ``header`` holds the instance's Image Pixel module (e.g. the file read up to its pixel
    data); ``frame`` is the frame as WADO-RS serves it stored: the codestream when
    ``source_syntax`` is encapsulated, little-endian octets otherwise (big endian frames
    already swapped). Decoded YCbCr frames come out as RGB, as pydicom's ``pixel_array`` gives them.
    """
    source, target = UID(source_syntax), UID(target_syntax)
    if target == source:
        return frame
    if str(target) not in producible_from(source):
        raise NotAcceptable(f"cannot convert frames from {_syntax_name(source)} to {_syntax_name(target)}")
    try:
        pixels, photometric = _decode_frame(header, frame, source)
        if not target.is_compressed:
            return _native_octets(pixels, int(header.BitsAllocated))
        options = as_pixel_options(
            header, number_of_frames=1, photometric_interpretation=photometric, planar_configuration=0
        )
        options.update(LOSSY_OPTIONS.get(target, ({}, ""))[0])
        return bytes(get_encoder(target).encode(pixels, **options))
    except NotAcceptable:
        raise
    except Exception as exc:  # decoders and encoders raise anything from ValueError to RuntimeError
        raise NotAcceptable(
            f"cannot convert a frame of {_name(header)} from {source.name} to {target.name}: "
            f"{exc or type(exc).__name__}"
        ) from exc


def _decode_frame(header: Dataset, frame: bytes, source: UID) -> tuple[np.ndarray, str]:
    syntax = source if source.is_encapsulated else ExplicitVRLittleEndian
    data = encapsulate([frame]) if source.is_encapsulated else frame
    options = as_pixel_options(header, number_of_frames=1, transfer_syntax_uid=syntax, pixel_keyword="PixelData")
    pixels, image_pixel = get_decoder(syntax).as_array(data, index=0, **options)
    photometric = str(image_pixel.get("photometric_interpretation", header.get("PhotometricInterpretation", "")))
    return pixels, photometric


def _native_octets(pixels: np.ndarray, bits_allocated: int) -> bytes:
    if bits_allocated == 1:  # PS3.5 8.1.1: bit-packed, first pixel in the lowest bit
        return np.packbits(pixels.astype(np.uint8).ravel(), bitorder="little").tobytes()
    return pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


def describe(syntaxes: frozenset[str] | set[str]) -> str:
    """``name (UID)`` for each syntax, sorted by UID: what a refusal tells a client it can have."""
    return ", ".join(_syntax_name(UID(uid)) for uid in sorted(syntaxes)) or "none"


def _syntax_name(uid: UID) -> str:
    return f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)


def _name(ds: Dataset) -> str:
    uid = ds.get("SOPInstanceUID")
    return f"instance {uid}" if uid else "the instance"
