"""The replacements of pacs.dimse.tuning give what pynetdicom's own code gives."""

from __future__ import annotations

import io
import socket
import threading

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom.dsutils import create_file_meta

from pacs.dimse import tuning


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless, "1.2.840.10008.1.2"])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34", generate_uid()])
def test_meta_bytes_are_what_pydicom_writes(syntax: str, instance: str) -> None:
    expected = io.BytesIO()
    write_file_meta_info(
        expected, create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=instance, transfer_syntax=syntax)
    )
    assert tuning.meta_bytes(CTImageStorage, instance, syntax) == expected.getvalue()


class _Holder:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


@pytest.mark.parametrize("size", [6, 4096, 70_000, 3_000_001])
def test_recv_exactly_reads_the_whole_amount(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    left, right = socket.socketpair()
    sender = threading.Thread(target=lambda: (right.sendall(data[:size] + b"next"), right.close()))
    sender.start()
    try:
        holder = _Holder(left)
        assert tuning.recv_exactly(holder, size) == data[:size]  # type: ignore[arg-type]
        assert tuning.recv_exactly(holder, 4) == b"next"  # type: ignore[arg-type]
        assert tuning.recv_exactly(holder, 10) == b""  # type: ignore[arg-type]  # peer closed
    finally:
        sender.join()
        left.close()


def test_recv_exactly_returns_what_came_before_the_peer_closed() -> None:
    left, right = socket.socketpair()
    right.sendall(b"partial")
    right.close()
    try:
        assert tuning.recv_exactly(_Holder(left), 100) == b"partial"  # type: ignore[arg-type]
    finally:
        left.close()


def test_stored_bytes_go_out_unchanged_in_their_own_encoding() -> None:
    from pynetdicom import association
    from pynetdicom.dsutils import encode

    from tests.support.factories import make_ct, to_bytes

    assert tuning.apply()
    ds = make_ct(16)
    stored = to_bytes(ds)
    sending = tuning.StoredBytes(stored, ds.SOPClassUID, ds.SOPInstanceUID)
    _, start = tuning.read_meta(stored, len(stored))
    assert association.encode(sending, False, True) == stored[start:]  # explicit VR LE, as stored
    # Another encoding: decoded and encoded by pydicom, as pynetdicom would have done.
    assert association.encode(sending, True, True) == encode(ds, True, True)
    assert sending.SOPInstanceUID == ds.SOPInstanceUID
    assert sending.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
