"""The replacements of pacs.dimse.tuning give what pynetdicom's own code gives."""

from __future__ import annotations

import io
import socket
import threading

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom.dsutils import create_file_meta

from pacs.dimse import command_set, tuning


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


def _primitives() -> list[object]:
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE, N_CREATE, N_SET

    store_rq = C_STORE()
    store_rq.MessageID, store_rq.AffectedSOPClassUID, store_rq.AffectedSOPInstanceUID = 7, CTImageStorage, "1.2.3"
    store_rq.Priority, store_rq.DataSet = 2, BytesIO(b"\x08\x00\x16\x00" * 10)
    store_rq.MoveOriginatorApplicationEntityTitle, store_rq.MoveOriginatorMessageID = "MOVESCU", 3
    store_rsp = C_STORE()
    store_rsp.MessageIDBeingRespondedTo, store_rsp.AffectedSOPClassUID = 7, CTImageStorage
    store_rsp.AffectedSOPInstanceUID, store_rsp.Status = "1.2.34", 0
    failed = C_STORE()
    failed.MessageIDBeingRespondedTo, failed.Status, failed.ErrorComment = 9, 0xC000, "cannot read it"
    failed.OffendingElement = [0x00080018, 0x0020000D]
    find_rsp = C_FIND()
    find_rsp.MessageIDBeingRespondedTo, find_rsp.Status, find_rsp.AffectedSOPClassUID = 1, 0xFF00, "1.2.840.10008.5.1.4.1.2.2.1"
    find_rsp.Identifier = BytesIO(b"\x10\x00\x10\x00\x04\x00\x00\x00DOE^")
    move_rsp = C_MOVE()
    move_rsp.MessageIDBeingRespondedTo, move_rsp.Status = 5, 0xFF00
    move_rsp.NumberOfRemainingSuboperations, move_rsp.NumberOfCompletedSuboperations = 299, 1
    move_rsp.NumberOfFailedSuboperations, move_rsp.NumberOfWarningSuboperations = 0, 0
    get_rsp = C_GET()
    get_rsp.MessageIDBeingRespondedTo, get_rsp.Status = 5, 0xB000
    get_rsp.NumberOfRemainingSuboperations, get_rsp.NumberOfCompletedSuboperations = 0, 299
    get_rsp.NumberOfFailedSuboperations, get_rsp.NumberOfWarningSuboperations = 1, 0
    get_rsp.Identifier = BytesIO(b"\x08\x00\x58\x11\x00\x00\x00\x00")
    echo_rsp = C_ECHO()
    echo_rsp.MessageIDBeingRespondedTo, echo_rsp.Status, echo_rsp.AffectedSOPClassUID = 1, 0, "1.2.840.10008.1.1"
    create_rsp = N_CREATE()
    create_rsp.MessageIDBeingRespondedTo, create_rsp.Status = 2, 0
    create_rsp.AffectedSOPClassUID, create_rsp.AffectedSOPInstanceUID = "1.2.840.10008.3.1.2.3.3", "1.2.3.4"
    set_rsp = N_SET()
    set_rsp.MessageIDBeingRespondedTo, set_rsp.Status = 3, 0x0110
    set_rsp.RequestedSOPClassUID, set_rsp.RequestedSOPInstanceUID = "1.2.840.10008.3.1.2.3.3", "1.2.3.4"
    find_rq = C_FIND()
    find_rq.MessageID, find_rq.AffectedSOPClassUID, find_rq.Priority = 4, "1.2.840.10008.5.1.4.1.2.2.1", 0
    find_rq.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    move_rq = C_MOVE()
    move_rq.MessageID, move_rq.AffectedSOPClassUID, move_rq.Priority = 5, "1.2.840.10008.5.1.4.1.2.2.2", 1
    move_rq.MoveDestination, move_rq.Identifier = "STORESCP", BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00SERIES")
    return [store_rq, store_rsp, failed, find_rsp, move_rsp, get_rsp, echo_rsp, create_rsp, set_rsp, find_rq, move_rq]


@pytest.mark.parametrize("primitive", _primitives(), ids=lambda p: type(p).__name__)
def test_command_sets_are_what_pynetdicom_encodes(primitive: object) -> None:
    from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
    from pynetdicom.dsutils import encode

    from pacs.dimse import command_set

    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE  # type: ignore[attr-defined]
    message = table[type(primitive)]()
    message.primitive_to_message(primitive)
    assert command_set.encode(type(message).__name__, primitive) == encode(message.command_set, True, True)


class _Sink:
    """Stands in for the upper layer: what would be sent, in order."""

    socket = None  # no transport: every message goes through the upper layer

    def __init__(self) -> None:
        self.sent = bytearray()

    def send_pdu(self, primitive: object) -> None:
        from pynetdicom.pdu import P_DATA_TF

        self.sent += getattr(primitive, "encoded", None) or P_DATA_TF(primitive).encode()


@pytest.mark.parametrize("max_pdu", [0, 16384, 100])
@pytest.mark.parametrize("primitive", _primitives(), ids=lambda p: type(p).__name__)
def test_batched_messages_are_byte_for_byte_pynetdicom_s(primitive: object, max_pdu: int) -> None:
    from pynetdicom.dimse import DIMSEServiceProvider

    assert tuning.apply()

    from types import SimpleNamespace

    class _Assoc:
        is_requestor = True

        def __init__(self) -> None:
            self.dul = _Sink()
            self.acceptor = SimpleNamespace(maximum_length=max_pdu)

        def get_handlers(self, event: object) -> list[object]:
            return []

    def sent_by(send_msg: object) -> bytes:
        provider = DIMSEServiceProvider.__new__(DIMSEServiceProvider)
        provider._assoc = _Assoc()  # type: ignore[assignment]
        sink = provider._assoc.dul
        for keyword in ("DataSet", "Identifier"):
            if getattr(primitive, keyword, None) is not None:
                getattr(primitive, keyword).seek(0)
        send_msg(provider, primitive, 3)  # type: ignore[operator]
        return bytes(sink.sent)

    assert sent_by(tuning.send_msg_batched) == sent_by(tuning._ORIGINAL_SEND_MSG)


def test_accepted_associations_share_the_supported_contexts_without_copying_them() -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    assert tuning.apply()
    scp = AE()
    scp.add_supported_context(Verification)
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    seen: list[list[object]] = []
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_ACCEPTED, lambda event: seen.append(event.assoc.acceptor.supported_contexts))])
    try:
        scu = AE()
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1])
        assert assoc.is_established
        assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in assoc.accepted_contexts] == [
            (CTImageStorage, [ExplicitVRLittleEndian])
        ]
        assoc.release()
    finally:
        server.shutdown()
    [contexts] = seen
    assert contexts is not server.contexts  # the association's own list...
    assert len(contexts) == 2 and all(a is b for a, b in zip(contexts, server.contexts, strict=True))  # ...of the same contexts


def _received(primitive: object, *, change: tuple[bytes, bytes] | None = None,
              read_first: bool = False) -> tuple[object, object]:
    """``primitive`` sent and received: what pynetdicom's own conversion and ours make of it;
    ``change`` replaces bytes of the encoded command set by as many others; ``read_first``
    converts every element beforehand, as pynetdicom's decode_msg does for a C-STORE request
    (it reads the UIDs to write the data set to a file)."""
    import io

    from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dsutils import decode, encode

    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE  # type: ignore[attr-defined]
    sent = table[type(primitive)]()
    sent.primitive_to_message(primitive)
    raw = encode(sent.command_set, True, True)
    if change is not None:
        assert change[0] in raw and len(change[0]) == len(change[1])
        raw = raw.replace(*change)

    def received(convert: object) -> object:
        message = DIMSEMessage()
        message.command_set = decode(io.BytesIO(raw), True, True)
        message.__class__ = type(sent)
        assert message.command_set.CommandField == sent.command_set.CommandField  # read as decode_msg does
        if read_first:
            for element in message.command_set:
                assert element.value is not None or element.VR
        message.data_set = getattr(primitive, "DataSet", None) or getattr(primitive, "Identifier", None)
        message.context_id = 3
        return convert(message)  # type: ignore[operator]

    return received(tuning._ORIGINAL_TO_PRIMITIVE), received(tuning.message_to_primitive)


def _parameters(primitive: object) -> dict[str, object]:
    from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS

    keywords = {k for names in _COMMAND_SET_KEYWORDS.values() for k in names}
    found = {k: getattr(primitive, k) for k in sorted(keywords) if hasattr(primitive, k)}
    found["context"] = primitive._context_id  # type: ignore[attr-defined]
    for keyword in ("DataSet", "Identifier", "AttributeList"):
        if hasattr(primitive, keyword):
            found[keyword] = getattr(primitive, keyword)
    return found


@pytest.mark.parametrize("primitive", _primitives(), ids=lambda p: type(p).__name__)
def test_received_command_sets_become_the_primitives_pynetdicom_makes(primitive: object) -> None:
    assert tuning.apply()
    theirs, ours = _received(primitive)
    assert type(ours) is type(theirs)
    assert _parameters(ours) == _parameters(theirs)


@pytest.mark.parametrize("primitive", _primitives(), ids=lambda p: type(p).__name__)
def test_command_sets_read_before_conversion_take_the_same_path(primitive: object) -> None:
    from pynetdicom.dimse_messages import DIMSEMessage

    assert tuning.apply()
    fast_path_used = []
    original = command_set.received_values

    def watched(values: object) -> object:
        found = original(values)
        fast_path_used.append(found is not None)
        return found

    command_set.received_values = watched  # type: ignore[assignment]
    try:
        _received(primitive)
        theirs, ours = _received(primitive, read_first=True)
    finally:
        command_set.received_values = original  # type: ignore[assignment]
    unread, read = fast_path_used
    assert read == unread  # several values (an Offending Element list) go pydicom's way either way
    assert _parameters(ours) == _parameters(theirs)
    assert isinstance(ours, type(theirs)) and not isinstance(ours, DIMSEMessage)


@pytest.mark.parametrize(
    ("stored", "read"),
    [
        (b" MOVESCU", "MOVESCU"),  # a leading space: pydicom strips it from an AE title
        (b"MOVE\x00SC ", None),  # a NUL inside: left to pydicom
        (b"M\xc3\x9cVESC ", None),  # not ASCII: left to pydicom
    ],
)
def test_unusual_values_are_read_as_pydicom_reads_them(stored: bytes, read: str | None) -> None:
    """pydicom's own reading of values the fast path does not read (it then hands them on)."""
    import warnings

    assert tuning.apply()
    store_rq = _primitives()[0]  # MoveOriginatorApplicationEntityTitle "MOVESCU"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid AE titles
        theirs, ours = _received(store_rq, change=(b"MOVESCU ", stored))
        assert _parameters(ours) == _parameters(theirs)
    if read is not None:
        assert ours.MoveOriginatorApplicationEntityTitle == read  # type: ignore[attr-defined]


class _DirectSink(_Sink):
    """An established association's upper layer, with a transport the sending thread may write
    to itself: what goes out directly and what is queued, in order."""

    def __init__(self, queued: int = 0) -> None:
        import queue
        from types import SimpleNamespace

        super().__init__()
        self.to_provider_queue: queue.Queue[object] = queue.Queue()
        for _ in range(queued):
            self.to_provider_queue.put(object())
        self.state_machine = SimpleNamespace(current_state="Sta6")
        self.plain = socket.socket()
        self.socket = SimpleNamespace(socket=self.plain, send=self.direct)  # type: ignore[assignment]
        self.ways: list[str] = []

    def direct(self, data: bytes) -> None:
        self.sent += data
        self.ways.append("direct")

    def send_pdu(self, primitive: object) -> None:
        super().send_pdu(primitive)
        self.ways.append("queued")


@pytest.mark.parametrize(("queued", "way"), [(0, "direct"), (1, "queued")])
def test_messages_go_out_directly_only_with_nothing_queued_before_them(queued: int, way: str) -> None:
    from pynetdicom.dimse import DIMSEServiceProvider

    assert tuning.apply()
    primitive = _primitives()[0]  # a C-STORE request with its data set

    def sent_by(send_msg: object, sink: _Sink) -> bytes:
        from types import SimpleNamespace

        provider = DIMSEServiceProvider.__new__(DIMSEServiceProvider)
        provider._assoc = SimpleNamespace(  # type: ignore[assignment]
            is_requestor=True, dul=sink, acceptor=SimpleNamespace(maximum_length=16384), get_handlers=lambda event: []
        )
        primitive.DataSet.seek(0)  # type: ignore[attr-defined]
        send_msg(provider, primitive, 3)  # type: ignore[operator]
        return bytes(sink.sent)

    sink = _DirectSink(queued)
    try:
        assert sent_by(tuning.send_msg_batched, sink) == sent_by(tuning._ORIGINAL_SEND_MSG, _Sink())
        assert sink.ways == [way]
    finally:
        sink.plain.close()


def test_a_connection_the_peer_reset_is_closed_all_the_same() -> None:
    """pynetdicom skips the close when shutdown fails, as it does on a reset connection."""
    import struct
    from types import SimpleNamespace

    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # a reset, not an orderly close
    with pytest.raises(OSError):
        accepted.recv(1)
    tuning.shutdown_and_close(SimpleNamespace(socket=accepted))  # type: ignore[arg-type]
    assert accepted.fileno() == -1
