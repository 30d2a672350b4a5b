"""Speed-ups of pynetdicom's receive path, applied once per serving process.

A C-STORE of a 512x512 CT spends more time in pynetdicom than in our own ingest. Two pieces
are replaced by equivalents that give the same results with less work:

- ``AssociationSocket.recv`` reads a PDU 4 KiB at a time, growing a bytearray per read (130
  reads for one 526 KB instance); ``recv_into`` one preallocated buffer does it in a few.
- The File Meta Information of each chunked C-STORE data set is built as a pydicom Dataset and
  encoded by pydicom, element by element, with value validation; the same bytes are written
  here directly (PS3.10 7.1).

The replaced functions were read in the pynetdicom versions listed in SUPPORTED; with any other
version nothing is changed (stock pynetdicom works, only slower). tests/unit/test_dimse_tuning.py
checks the results against pynetdicom's own.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, BinaryIO

import pynetdicom
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dimse_messages
from pynetdicom.transport import AssociationSocket

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
    _applied = True
    return True


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
