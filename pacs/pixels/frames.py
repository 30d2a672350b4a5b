"""One frame's pixels as a numpy array.

Native frames are built straight from their bytes (one ranged read, placed by the frame layout
recorded at ingest); compressed frames and files without a usable layout go through pydicom's
decoders. pydicom hands back YBR_FULL, YBR_FULL_422, YBR_ICT and YBR_RCT color as RGB:
``decoded_attributes`` says so, so that the renderer does not convert a second time.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from os import PathLike
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from pacs.errors import InvalidInput, NotAcceptable, PacsError
from pacs.pixels.render import RenderAttributes

Source = str | PathLike[str] | BinaryIO
NATIVE_BITS = (1, 8, 16, 32, 64)


def decode_frame(source: Source, index: int, *, transfer_syntax: str | None = None) -> np.ndarray:
    """Frame ``index`` (0-based) of a Part 10 file (a path or a seekable binary file), decoded by
    pydicom, which reads only what it needs of the file. Raises NotAcceptable when it cannot."""
    if index < 0:
        raise InvalidInput(f"frame index must be >= 0, got {index}")
    try:
        if (transfer_syntax or _transfer_syntax(source)) == DeflatedExplicitVRLittleEndian:
            # pydicom's frame reader cannot inflate: the whole data set is read instead.
            if not isinstance(source, (str, PathLike)):
                source.seek(0)
            return pixel_array(pydicom.dcmread(source), index=index)
        return pixel_array(source, index=index)
    except PacsError:
        raise
    except Exception as exc:  # decoders raise many kinds on damaged data
        raise NotAcceptable(f"pixel data cannot be decoded: {_reason(exc)}") from exc


def decode_compressed(data: bytes, transfer_syntax: str, attributes: RenderAttributes) -> np.ndarray:
    """One compressed frame (its fragments joined) decoded by pydicom, described by the
    attributes alone: nothing else of the stored object is read."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.Rows, ds.Columns = attributes.rows, attributes.columns
    ds.SamplesPerPixel = attributes.samples_per_pixel
    ds.PhotometricInterpretation = attributes.photometric_interpretation
    ds.BitsAllocated, ds.BitsStored = attributes.bits_allocated, attributes.bits_stored
    ds.HighBit = attributes.bits_stored - 1
    ds.PixelRepresentation = attributes.pixel_representation
    if attributes.samples_per_pixel > 1:
        ds.PlanarConfiguration = attributes.planar_configuration
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    try:
        return pixel_array(ds, index=0, decoding_plugin=preferred_plugin(transfer_syntax))
    except PacsError:
        raise
    except Exception as exc:  # decoders raise many kinds on damaged data
        raise NotAcceptable(f"pixel data cannot be decoded: {_reason(exc)}") from exc


# pydicom tries pylibjpeg-libjpeg first for JPEG-LS; CharLS (pyjpegls) decodes a CT frame ~4x faster.
_FASTEST_PLUGIN = {"1.2.840.10008.1.2.4.80": "pyjpegls", "1.2.840.10008.1.2.4.81": "pyjpegls"}


@functools.cache
def preferred_plugin(transfer_syntax: str) -> str:
    """The decoder plugin to ask for ("" lets pydicom choose)."""
    plugin = _FASTEST_PLUGIN.get(transfer_syntax, "")
    try:
        return plugin if plugin and plugin in get_decoder(UID(transfer_syntax)).available_plugins else ""
    except (NotImplementedError, ValueError):
        return ""


def can_read_natively(attributes: RenderAttributes) -> bool:
    """Whether ``native_frame`` can take this instance's frames as stored. YBR_FULL_422 frames
    are subsampled (two thirds of the size the layout assumes): pydicom expands them."""
    return (
        attributes.bits_allocated in NATIVE_BITS
        and attributes.samples_per_pixel in (1, 3)
        and attributes.photometric_interpretation != "YBR_FULL_422"
        and attributes.rows > 0
        and attributes.columns > 0
    )


def native_frame(data: bytes, attributes: RenderAttributes) -> np.ndarray:
    """An uncompressed little-endian frame as (rows, columns) or (rows, columns, samples)."""
    rows, columns, samples = attributes.rows, attributes.columns, attributes.samples_per_pixel
    count = rows * columns * samples
    if attributes.bits_allocated == 1:
        flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")  # PS3.5 8.1.1
    else:
        itemsize = attributes.bits_allocated // 8
        flat = np.frombuffer(data[: len(data) // itemsize * itemsize], dtype=_native_dtype(attributes))
    if flat.size < count:
        raise NotAcceptable(f"the frame holds {flat.size} samples, {count} expected: the pixel data is truncated")
    flat = flat[:count]
    if samples == 1:
        return flat.reshape(rows, columns)
    if attributes.planar_configuration == 1:  # color-by-plane (PS3.3 C.7.6.3.1.3)
        return flat.reshape(samples, rows, columns).transpose(1, 2, 0)
    return flat.reshape(rows, columns, samples)


def decoded_attributes(attributes: RenderAttributes) -> RenderAttributes:
    """The attributes of what pydicom returns: its decoders deliver YBR color as RGB."""
    if attributes.samples_per_pixel == 3 and attributes.photometric_interpretation.startswith("YBR"):
        return replace(attributes, photometric_interpretation="RGB")
    return attributes


def _native_dtype(attributes: RenderAttributes) -> np.dtype:
    bits = attributes.bits_allocated
    if attributes.float_pixels:
        if bits not in (32, 64):
            raise NotAcceptable(f"float pixel data with {bits} bits allocated")
        return np.dtype(f"<f{bits // 8}")
    if bits not in NATIVE_BITS:
        raise NotAcceptable(f"cannot read native pixel data with {bits} bits allocated")
    return np.dtype(f"<{'i' if attributes.pixel_representation == 1 else 'u'}{bits // 8}")


def _transfer_syntax(source: Source) -> str:
    if isinstance(source, (str, PathLike)):
        return str(read_file_meta_info(source).get("TransferSyntaxUID", ""))
    position = source.tell()
    try:
        source.seek(0)
        return str(pydicom.dcmread(source, stop_before_pixels=True).file_meta.get("TransferSyntaxUID", ""))
    finally:
        source.seek(position)


def _reason(exc: Exception) -> str:
    """pydicom's message on one line (it lists each plugin's failure on a line of its own)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
