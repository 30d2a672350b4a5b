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
- Each P-DATA-TF PDU of an outgoing message travels alone through pynetdicom's queues and state
  machine and is encoded as objects (33 times for a 526 KB instance to a peer taking 16 KB
  PDUs). Here a message's PDUs are encoded together, byte for byte as pynetdicom encodes them,
  and sent in batches, by the sending thread itself when the association is established and
  nothing is queued before them (handing each message to the upper layer's thread cost a thread
  switch each way: C-MOVE 485 to 527 instances/s), else by the upper layer's thread.
- The association and upper-layer reactor threads polled, sleeping 1 ms whenever there was
  nothing to do: every request waited up to a millisecond to be read and another to be handed
  on, and an open association woke its threads 2,000 times a second. They now wait for their
  work itself (pacs.dimse.reactor).
- A requestor whose peer answered (rejected) before it looked at the connection reported a
  connection that failed (pacs.dimse.requesting).
- Each received P-DATA-TF PDU was copied four times and decoded into objects before its data
  reached the C-STORE temp file (pacs.dimse.receiving).
- A received command set became a primitive through pydicom's conversion of each element; the
  values are read from the raw elements here (pacs.dimse.command_set.received_values).
- Every accepted association deep-copied the listener's 193 supported presentation contexts
  (50 ms); it now gets a list of the same ones, which negotiation only reads.
- A C-STORE request went from the upper layer's thread to the reactor's to be served; the
  upper layer serves it itself when nothing can overtake it (pacs.dimse.direct_store).
- A socket whose shutdown failed (a connection the peer had reset) was not closed.

The replaced functions were read in the pynetdicom versions listed in SUPPORTED; with any other
version nothing is changed (stock pynetdicom works, only slower). tests/unit/test_dimse_tuning.py
checks the results against pynetdicom's own.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import pydicom
import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    association,
    dimse,
    dimse_messages,
    evt,
    fsm,
    transport,
)
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from pacs.dicom.fastheader import read_meta
from pacs.dimse import command_set, direct_store, reactor, receiving, requesting

log = logging.getLogger(__name__)

SUPPORTED = ("3.0.",)
_READ_AT_MOST = 1 << 20  # bytes per recv_into call

_applied = False
_ORIGINAL_SEND_MSG: Callable[..., None] = DIMSEServiceProvider.send_msg  # before apply() replaces it
_ORIGINAL_TO_PRIMITIVE: Callable[..., Any] = dimse_messages.DIMSEMessage.message_to_primitive


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
    global _ORIGINAL_SEND_MSG
    _ORIGINAL_SEND_MSG = DIMSEServiceProvider.send_msg
    DIMSEServiceProvider.send_msg = send_msg_batched  # type: ignore[method-assign]
    fsm.ACTIONS["DT-1"] = (fsm.ACTIONS["DT-1"][0], _send_p_data, "Sta6")
    AssociationSocket.send = send_all  # type: ignore[method-assign]
    AssociationSocket._shutdown_socket = shutdown_and_close  # type: ignore[method-assign]
    reactor.install()
    requesting.install()
    transport.deepcopy = _share_contexts  # type: ignore[assignment]
    global _ORIGINAL_TO_PRIMITIVE
    _ORIGINAL_TO_PRIMITIVE = dimse_messages.DIMSEMessage.message_to_primitive
    dimse_messages.DIMSEMessage.message_to_primitive = message_to_primitive  # type: ignore[method-assign]
    receiving.install()
    direct_store.install()
    _applied = True
    return True


def message_to_primitive(self: Any) -> Any:
    """pynetdicom's DIMSEMessage.message_to_primitive with the command set's values read straight
    from its raw elements (pacs.dimse.command_set.received_values) instead of converted one by one
    by pydicom: about 75 us less per message received (a C-STORE request or response takes half
    the time). Any command set with an element that function does not read goes the original way."""
    values = command_set.received_values(self.command_set)
    if values is None:
        return _ORIGINAL_TO_PRIMITIVE(self)
    name = type(self).__name__
    primitive: Any = dimse_messages._MSG_TO_PRIMITVE[name[: name.rfind("_R")]]()
    for keyword, value in values:
        if hasattr(primitive, keyword):
            setattr(primitive, keyword, value)
    data_set_keyword = dimse_messages._DATASET_KEYWORDS.get(name)
    if data_set_keyword is not None:
        setattr(primitive, data_set_keyword, self.data_set)
    primitive._context_id = self.context_id
    primitive._dataset_path = self._data_set_path
    primitive._dataset_file = self._data_set_file
    return primitive


def _share_contexts(contexts: list[Any]) -> list[Any]:
    """Each accepted association gets ``deepcopy(server.contexts)`` (pynetdicom's only deepcopy in
    its transport module): with every storage class in two roles and all their transfer
    syntaxes that is 8,000 objects, 50 ms of CPU before a peer's first request is read. Negotiation
    only reads the supported contexts (the accepted ones are new objects), so the association
    gets its own list of the same contexts."""
    return list(contexts)



_BATCH_BYTES = 1 << 20  # encoded PDUs handed to the upper layer at a time
# A P-DATA-TF PDU with one PDV, up to the PDV's value (PS3.8 9.3.5): PDU type, reserved, PDU
# length, item length, presentation context ID. The value (message control header, fragment) follows.
_PDU_HEADER = struct.Struct(">BBLLB")


class PreEncodedPData(P_DATA):
    """Whole P-DATA-TF PDUs, already encoded (see send_msg_batched)."""

    def __init__(self, encoded: bytes | bytearray) -> None:
        super().__init__()
        self.encoded = encoded


def p_data_tf(context_id: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU with one presentation data value (PS3.8 9.3.5), as pynetdicom encodes
    it; ``data`` starts with the message control header."""
    return _pdu_header(context_id, len(data)) + data


def _pdu_header(context_id: int, value_length: int) -> bytes:
    return _PDU_HEADER.pack(0x04, 0x00, value_length + 5, value_length + 1, context_id)


def send_msg_batched(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """pynetdicom's DIMSEServiceProvider.send_msg: the command set encoded straight from the
    primitive (pacs.dimse.command_set) unless someone listens for EVT_DIMSE_SENT, and the PDUs
    encoded into batches."""
    if primitive.MessageIDBeingRespondedTo is None:
        message_class = dimse._RQ_TO_MESSAGE[primitive.__class__]
    else:
        message_class = dimse._RSP_TO_MESSAGE[primitive.__class__]
    encoded = None if self.assoc.get_handlers(evt.EVT_DIMSE_SENT) else command_set.encode(
        message_class.__name__, primitive
    )
    batches = _Batches(self, context_id)
    if encoded is None:
        message = message_class()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": message})
        for pdata in message.encode_msg(context_id, self.maximum_pdu_size):
            for pdv_context, data in pdata.presentation_data_value_list:
                batches.add(p_data_tf(pdv_context, data))
    else:
        batches.fragments(encoded, command=True)
        _send_data_set(batches, message_class.__name__, primitive)
    batches.flush()


class _Batches:
    """P-DATA-TF PDUs for one message, handed to the upper layer about a megabyte at a time."""

    def __init__(self, provider: DIMSEServiceProvider, context_id: int) -> None:
        self.provider = provider
        self.context_id = context_id
        # pynetdicom's fragment size: the peer's maximum PDU length less the PDV item header.
        self.fragment = provider.maximum_pdu_size - 6 if provider.maximum_pdu_size else 0
        self.pending = bytearray()

    def add(self, pdu: bytes) -> None:
        self.pending += pdu
        if len(self.pending) >= _BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # The batch itself goes out (the socket takes a bytearray); the next one starts anew.
        batch, self.pending = self.pending, bytearray()
        dul = self.provider.dul
        with _sending(dul):
            sock = dul.socket
            if (
                sock is not None
                and dul.to_provider_queue.empty()
                and dul.state_machine.current_state == "Sta6"
                and not isinstance(sock.socket, ssl.SSLSocket)
            ):
                # Established, nothing queued before it: what the upper layer's thread would do
                # for it (DT-1), done by this thread instead of waking that one. (A TLS socket
                # is left to the upper layer's thread, the one reading it.)
                sock.send(batch)  # type: ignore[arg-type]  # send_all takes any buffer
                return
            dul.send_pdu(PreEncodedPData(batch))

    def fragments(self, data: bytes | memoryview, *, command: bool, last: bool = True) -> None:
        """``data`` as PDVs (PS3.8 E.2 message control header: bit 0 command, bit 1 last), each
        PDU written into the batch as its header and a slice of ``data``: one copy per byte."""
        view = memoryview(data)
        total = len(view)
        size = self.fragment or max(total, 1)
        kind = 0x01 if command else 0x00
        start = 0
        while True:
            end = min(start + size, total)
            final = last and end == total
            length = end - start
            self.pending += _pdu_header(self.context_id, length + 1)
            self.pending.append(kind | (0x02 if final else 0))  # the message control header
            self.pending += view[start:end]
            if len(self.pending) >= _BATCH_BYTES:
                self.flush()
            start = end
            if start >= total:
                return


def _send_data_set(batches: _Batches, message_class: str, primitive: Any) -> None:
    """The data set, fragmented as pynetdicom's encode_msg does it (an empty one is not sent)."""
    keyword = dimse_messages._DATASET_KEYWORDS.get(message_class)
    data_set = getattr(primitive, keyword, None) if keyword else None
    if data_set is not None:
        with data_set.getbuffer() as encoded:  # the BytesIO's own buffer, not a copy of it
            if len(encoded):
                batches.fragments(encoded, command=False)
        return
    path = getattr(primitive, "_dataset_path", None)
    if path:
        file_path, offset = path
        with open(file_path, "rb") as fh:
            fh.seek(offset)
            chunk = max(batches.fragment, 1) * 64 if batches.fragment else -1
            pending = fh.read(chunk)
            if not pending:
                batches.fragments(b"", command=False)
            while pending:
                following = fh.read(chunk) if chunk > 0 else b""
                batches.fragments(memoryview(pending), command=False, last=not following)
                pending = following


def _send_p_data(dul: Any) -> str:
    """State machine action DT-1 (PS3.8 9.2, Sta6 + Evt9): send a P-DATA-TF; pre-encoded PDUs
    go out as they are."""
    with _sending(dul):
        primitive = dul.to_provider_queue.get(False)
        if isinstance(primitive, PreEncodedPData):
            if dul.socket is not None:
                dul.socket.send(primitive.encoded)
            else:
                log.warning("Attempted to send data over closed connection")
        else:
            dul._send(P_DATA_TF(primitive))
    return "Sta6"


def _sending(dul: Any) -> threading.Lock:
    """Held while P-DATA of one association is queued or sent: a message sent directly by
    _Batches.flush never overtakes one queued before it."""
    return _lock_of(dul, "_sending_lock")


def _lock_of(owner: Any, name: str) -> threading.Lock:
    lock = owner.__dict__.get(name)
    if lock is None:
        lock = owner.__dict__.setdefault(name, threading.Lock())  # one lock wins a race to make it
    return lock


def send_all(self: AssociationSocket, bytestream: bytes) -> None:
    """pynetdicom's AssociationSocket.send without a copy of the rest after each partial send."""
    sock = self.socket
    assert sock is not None
    try:
        with _lock_of(self, "_write_lock"):  # PDUs go out whole: the upper layer and a sender thread share it
            sock.sendall(bytestream)
        evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})
    except Exception:  # noqa: BLE001 - as pynetdicom's send: any failure means the connection is gone
        self.event_queue.put("Evt17")  # transport connection closed


def shutdown_and_close(self: AssociationSocket) -> None:
    """pynetdicom's _shutdown_socket closes the socket only when its shutdown succeeds: a
    connection the peer had reset (shutdown fails with ENOTCONN) kept its descriptor until the
    socket object was collected, if ever."""
    sock = self.socket
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


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
