"""Speed-ups of pynetdicom's receive path, applied once per serving process.

A C-STORE of a 512x512 CT spends more time in pynetdicom than in our own ingest. Two pieces
are replaced by equivalents that give the same results with less work:

- ``AssociationSocket.recv`` reads a PDU 4 KiB at a time, growing a bytearray per read (130
  reads for one 526 KB instance); ``recv_into`` one preallocated buffer does it in a few.
- The File Meta Information of each chunked C-STORE data set is built as a pydicom Dataset and
  encoded by pydicom, element by element, with value validation; the same bytes are written
  here directly (PS3.10 7.1).
- C-GET and C-MOVE sub-operations must hand pynetdicom a Dataset, which it encodes again
  element by element. An instance sent in its stored syntax is a StoredBytes data set instead:
  it carries the stored bytes, and pynetdicom's encode returns them as they are.

The replaced functions were read in the pynetdicom versions listed in SUPPORTED; with any other
version nothing is changed (stock pynetdicom works, only slower). tests/unit/test_dimse_tuning.py
checks the results against pynetdicom's own.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

import pydicom
import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, association, dimse_messages
from pynetdicom.transport import AssociationSocket

from pacs.dicom.fastheader import read_meta

log = logging.getLogger(__name__)

SUPPORTED = ("3.0.",)
_READ_AT_MOST = 1 << 20  # bytes per recv_into call

_applied = False


def apply() -> bool:
    """Install the replacements; False (and nothing changed) for an unknown pynetdicom version."""
    global _applied
    if _applied:
        return True
    if not pynetdicom.__version__.startswith(SUPPORTED):
        log.info("pynetdicom %s: receive path left as it is", pynetdicom.__version__)
        return False
    AssociationSocket.recv = recv_exactly  # type: ignore[method-assign]
    dimse_messages.create_file_meta = _MetaValues  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = write_meta  # type: ignore[assignment]
    association.encode = _encoder(association.encode)  # type: ignore[attr-defined]
    _applied = True
    return True


def sends_stored_bytes() -> bool:
    """Whether StoredBytes data sets may be handed to pynetdicom (the patches are in place)."""
    return _applied


class StoredBytes(Dataset):
    """A stored Part 10 file as pynetdicom's send_c_store sees a data set: its SOP Class and
    Instance UIDs and Transfer Syntax (all it reads from a data set), and the stored bytes,
    which the patched encode returns unchanged when asked for the stored encoding."""

    def __init__(self, data: bytes, sop_class_uid: str, sop_instance_uid: str) -> None:
        """Raises Unsupported when ``data`` does not start with File Meta Information."""
        super().__init__()
        transfer_syntax, start = read_meta(data, len(data))
        self.stored = data
        self.data_set_start = start
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        syntax = self.file_meta.TransferSyntaxUID
        self.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
        self.encoding = (syntax.is_implicit_VR, syntax.is_little_endian, syntax == DeflatedExplicitVRLittleEndian)
        self.SOPClassUID = UID(sop_class_uid)  # as indexed from this very file
        self.SOPInstanceUID = UID(sop_instance_uid)

    def full(self) -> Dataset:
        """The whole data set, decoded (for pynetdicom to encode another way)."""
        return pydicom.dcmread(io.BytesIO(self.stored))


def _encoder(original: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
        if isinstance(ds, StoredBytes):
            if (is_implicit_vr, is_little_endian, deflated) == ds.encoding:
                return ds.stored[ds.data_set_start :]
            ds = ds.full()
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    return encode


def recv_exactly(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from the socket, or fewer if the peer closed it (what pynetdicom's recv
    returns); socket errors propagate as they do there."""
    sock = self.socket
    assert sock is not None
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    read = 0
    try:
        while read < nr_bytes:
            count = sock.recv_into(view[read:], min(nr_bytes - read, _READ_AT_MOST))
            if not count:
                break
            read += count
    finally:
        view.release()
    if read < nr_bytes:
        del buffer[read:]
    return buffer


class _MetaValues:
    """What pynetdicom's create_file_meta is called with, kept for write_meta."""

    def __init__(self, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **_: Any) -> None:
        self.values = (str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def write_meta(fp: BinaryIO, meta: _MetaValues, *args: Any, **kwargs: Any) -> None:
    fp.write(meta_bytes(*meta.values))


def meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group (without preamble and prefix), Explicit VR Little Endian,
    as pydicom's write_file_meta_info writes pynetdicom's create_file_meta."""
    body = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        _short(0x0002, b"UI", _uid(sop_class_uid)),
        _short(0x0003, b"UI", _uid(sop_instance_uid)),
        _short(0x0010, b"UI", _uid(transfer_syntax)),
        _short(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
        _short(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")),
    ))
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    return _padded(value.encode("ascii"), b"\x00")


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value
