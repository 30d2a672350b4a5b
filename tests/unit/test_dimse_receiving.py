"""pacs.dimse.receiving against pynetdicom's own receive path: the same events, PDUs and
assembled messages from the same bytes."""

from __future__ import annotations

import io
import os
import queue
import socket
import struct
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from pacs.dimse import receiving, tuning

CONTEXT = 3


def _p_data_tf(*values: tuple[int, bytes]) -> bytes:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[cid, data] for cid, data in values]
    return P_DATA_TF(primitive).encode()


def _as_bytes(values: list[tuple[int, Any]]) -> list[tuple[int, bytes]]:
    return [(cid, bytes(data)) for cid, data in values]


def test_pdv_values_are_pynetdicom_s_items() -> None:
    pdu = _p_data_tf((1, b"\x03" + b"c" * 40), (3, b"\x00"), (5, b"\x02" + bytes(range(256)) * 300))
    theirs = P_DATA_TF()
    theirs.decode(pdu)
    ours = receiving.pdv_values(bytearray(pdu[6:]))
    assert _as_bytes(ours) == _as_bytes(theirs.to_primitive().presentation_data_value_list)
    assert all(isinstance(data, memoryview) for _, data in ours)  # views of the buffer, not copies


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00",  # an item header cut short
        b"\x00\x00\x00\x00\x01",  # an item of length 0: no context ID
        b"\x00\x00\x00\x09\x01\x03abc",  # an item longer than what follows
        b"\x00\x00\x00\x02\x01\x03\x00\x00",  # a good item, then a cut one
    ],
)
def test_malformed_items_are_refused_where_pynetdicom_refuses_them(body: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 - pynetdicom fails with whatever its decoding raises
        P_DATA_TF().decode(struct.pack(">BBL", 4, 0, len(body)) + body)
    with pytest.raises(receiving.MalformedPData):
        receiving.pdv_values(bytearray(body))


class _Transport:
    """A socket read the way pynetdicom's AssociationSocket is read once tuned."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    recv = tuning.recv_exactly


class _Provider:
    """The parts of a DULServiceProvider that reading a PDU uses."""

    _decode_pdu = DULServiceProvider._decode_pdu

    def __init__(self, sock: socket.socket, handlers: list[Any] | None = None) -> None:
        self.socket = _Transport(sock)
        self.event_queue: queue.Queue[str] = queue.Queue()
        self._recv_pdu: queue.Queue[Any] = queue.Queue()
        bound = [(handlers.append, None)] if handlers is not None else []
        self.assoc = SimpleNamespace(get_handlers=lambda event: bound, abort=None, _abort_nonblocking=None,
                                     _abort_blocking=None)


def _read(read: Any, stream: bytes, handlers: list[Any] | None = None) -> tuple[list[str], list[Any]]:
    """Feed ``stream`` (then end of file) to ``read`` until nothing is left to read."""
    ours, peer = socket.socketpair()
    try:
        peer.sendall(stream)
        peer.shutdown(socket.SHUT_WR)
        provider = _Provider(ours, handlers)
        events: list[str] = []
        while not events or events[-1] not in ("Evt17", "Evt19"):
            read(provider)
            events.append(provider.event_queue.get_nowait())
        pdus = []
        while not provider._recv_pdu.empty():
            pdus.append(provider._recv_pdu.get_nowait())
        return events, pdus
    finally:
        ours.close()
        peer.close()


def _described(pdu: Any) -> object:
    if isinstance(pdu, P_DATA_TF):
        return "P-DATA", _as_bytes(pdu.to_primitive().presentation_data_value_list)
    return type(pdu).__name__, pdu.encode()


RELEASE = A_RELEASE_RQ().encode()
DATA = _p_data_tf((1, b"\x02" + b"x" * 70_000), (1, b"\x03" + b"y" * 9))


@pytest.mark.parametrize(
    "stream",
    [
        DATA + RELEASE,  # two PDUs, then the peer closes: Evt10, Evt12, Evt17
        DATA[:20],  # the peer closes inside a PDU
        DATA[:4],  # ... inside a PDU header
        b"\x09\x00\x00\x00\x00\x00",  # an unknown PDU type
        _p_data_tf((1, b"\x02ab"))[:-3] + b"\xff\xff\xff",  # a PDV item length that does not fit
        struct.pack(">BBL", 4, 0, 0),  # a P-DATA-TF without items
    ],
    ids=["two-pdus", "cut-pdu", "cut-header", "unknown-type", "bad-item", "no-items"],
)
def test_pdus_read_give_pynetdicom_s_events_and_pdus(stream: bytes) -> None:
    theirs = _read(receiving.PYNETDICOM_READ_PDU_DATA, stream)
    ours = _read(receiving.read_pdu_data, stream)
    assert ours[0] == theirs[0]
    assert [_described(p) for p in ours[1]] == [_described(p) for p in theirs[1]]


def test_bound_pdu_handlers_get_pynetdicom_s_own_pdus() -> None:
    seen: list[Any] = []
    events, pdus = _read(receiving.read_pdu_data, DATA, handlers=seen)
    assert events == ["Evt10", "Evt17"]
    assert type(pdus[0]) is P_DATA_TF  # pynetdicom's path: the handlers see its objects
    assert [e.data for e in seen if hasattr(e, "data")] == [DATA]
    assert [e.pdu for e in seen if hasattr(e, "pdu")] == pdus


def _messages() -> list[Any]:
    store = C_STORE()
    store.MessageID, store.AffectedSOPClassUID, store.Priority = 7, CTImageStorage, 0
    store.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1234567890123456789"
    store.DataSet = io.BytesIO(b"\x08\x00\x16\x00\x1a\x00\x00\x00" + CTImageStorage.encode() + b"\x00" + bytes(range(256)) * 500)
    find = C_FIND()
    find.MessageID, find.AffectedSOPClassUID, find.Priority = 4, "1.2.840.10008.5.1.4.1.2.2.1", 0
    find.Identifier = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, "1.2.840.10008.1.1"
    return [store, find, echo]


def _assembled(decode_msg: Any, primitive: Any, max_pdu: int, temp: Path) -> tuple[object, ...]:
    """``primitive`` sent as pynetdicom sends it, received through ``decode_msg`` as the
    reading function hands it on."""
    from pynetdicom.dimse import _RQ_TO_MESSAGE

    for keyword in ("DataSet", "Identifier"):
        if getattr(primitive, keyword, None) is not None:
            getattr(primitive, keyword).seek(0)
    sent = _RQ_TO_MESSAGE[type(primitive)]()
    sent.primitive_to_message(primitive)
    assoc = SimpleNamespace(_accepted_cx={CONTEXT: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])})
    message = DIMSEMessage()
    complete = False
    for p_data in sent.encode_msg(CONTEXT, max_pdu):
        values = receiving.pdv_values(bytearray(P_DATA_TF(p_data).encode()[6:]))
        assert not complete
        complete = decode_msg(message, receiving.ReceivedPData(values).to_primitive(), assoc)
    assert complete
    stored = None
    if message._data_set_file is not None:
        message._data_set_file.close()
        stored = message._data_set_path.read_bytes()
        assert message._data_set_path.parent == temp
    else:
        stored = message.data_set.getvalue()
    return type(message).__name__, message.context_id, message.encoded_command_set.getvalue(), stored


@pytest.mark.parametrize("max_pdu", [16_384, 262_144, 0])
@pytest.mark.parametrize("primitive", _messages(), ids=lambda p: type(p).__name__)
def test_messages_assemble_as_pynetdicom_assembles_them(primitive: Any, max_pdu: int, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert tuning.apply()
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    theirs = _assembled(receiving.PYNETDICOM_DECODE_MSG, primitive, max_pdu, tmp_path)
    ours = _assembled(receiving.decode_msg, primitive, max_pdu, tmp_path)
    assert ours == theirs
    if isinstance(primitive, C_STORE):  # the file holds preamble, File Meta Information and the data set
        assert ours[3][128:132] == b"DICM" and ours[3].endswith(primitive.DataSet.getvalue())


def test_received_files_close_themselves_when_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    received = receiving.ReceivedFile()
    received.write(b"abc")
    descriptor = received._fd
    del received
    with pytest.raises(OSError):
        os.fstat(descriptor)
    [written] = tmp_path.iterdir()
    assert written.read_bytes() == b"abc"


def test_a_received_file_keeps_its_head_and_size_for_the_ingest(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs.dicom.instance import HEAD_BYTES

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    synced: list[int] = []
    monkeypatch.setattr(receiving.os, "fsync", lambda fd: synced.append(fd))
    received = receiving.ReceivedFile()
    chunks = [b"a" * 100, bytes(range(256)) * 100, b"z" * 50_000]
    for chunk in chunks:
        received.write(memoryview(chunk))
    arrival = received.arrival()
    whole = b"".join(chunks)
    assert synced == [received._fd]
    assert arrival.synced and arrival.size == len(whole) and arrival.head == whole[:HEAD_BYTES]
    assert Path(received.name).read_bytes() == whole
    assert received  # pynetdicom still removes it, unless the ingest has taken it
    received.release()
    assert not received and received._fd == -1
