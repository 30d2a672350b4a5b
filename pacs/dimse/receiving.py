"""Receiving P-DATA-TF PDUs and assembling DIMSE messages from them with fewer copies.

pynetdicom copies each received PDU four times before its fragment reaches the C-STORE temp
file (appended to the header, made bytes, sliced per PDV item, sliced again past the message
control header), builds PDU and item objects for it, and has pydicom convert four command set
elements of each message. Here a P-DATA-TF PDU is read into one buffer and its PDV values are
memoryviews of it, written to the temp file as they are; the command set values the assembly
needs are read from their raw bytes. Every other PDU, and a P-DATA-TF PDU while an
association has handlers bound to the raw data or PDU events, goes pynetdicom's own way.

Installed by pacs.dimse.tuning.apply() with the other replacements, for the same pynetdicom
versions; tests/unit/test_dimse_receiving.py compares the results with pynetdicom's.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from pacs.dimse import command_set
from pacs.ingest import Arrival, ArrivalNotes

LOGGER = logging.getLogger("pynetdicom.dul")  # where pynetdicom logs the same failures
_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
_ITEM_LENGTH = struct.Struct(">L")

# pynetdicom's own, kept before install() replaces them: the way taken when this one does not apply.
PYNETDICOM_READ_PDU_DATA = DULServiceProvider._read_pdu_data
PYNETDICOM_DECODE_MSG = DIMSEMessage.decode_msg

_COMMAND_FIELD = 0x00000100
_DATA_SET_TYPE = 0x00000800
_SOP_CLASS = 0x00000002
_SOP_INSTANCE = 0x00001000


class ReceivedPData(P_DATA_TF):
    """A received P-DATA-TF PDU whose PDVs stay (context ID, memoryview) pairs of its buffer."""

    def __init__(self, values: list[tuple[int, memoryview]]) -> None:
        super().__init__()
        self.values = values

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # pynetdicom's own to_primitive fills the list past the setter's check for bytes, too.
        primitive._presentation_data_value_list = self.values  # type: ignore[assignment]
        return primitive


class MalformedPData(ValueError):
    pass


def pdv_values(body: bytearray) -> list[tuple[int, memoryview]]:
    """The PDV items of a P-DATA-TF PDU's variable field (PS3.8 9.3.5.1); MalformedPData where
    pynetdicom's decoding fails (a truncated item, an item of length 0)."""
    values = []
    view = memoryview(body)
    end = len(body)
    offset = 0
    while offset < end:
        if end - offset < 4:
            raise MalformedPData("a PDV item header runs past the PDU")
        length = _ITEM_LENGTH.unpack_from(body, offset)[0]
        if length < 1 or offset + 4 + length > end:
            raise MalformedPData(f"a PDV item of length {length} does not fit the PDU")
        values.append((body[offset + 4], view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return values


def read_pdu_data(self: Any) -> None:
    """pynetdicom's DULServiceProvider._read_pdu_data, with the same events for every outcome;
    a P-DATA-TF PDU becomes a ReceivedPData without copies of its values."""
    assoc = self.assoc
    if assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV):
        return PYNETDICOM_READ_PDU_DATA(self)
    try:
        header = self.socket.recv(6)
    except (OSError, TimeoutError):
        LOGGER.exception("Connection closed before the entire PDU was received")
        self.event_queue.put("Evt17")
        return None
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in _PDU_TYPES:
        LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return None
    try:
        body = self.socket.recv(length)
    except (OSError, TimeoutError):
        LOGGER.exception("Connection closed before the entire PDU was received")
        self.event_queue.put("Evt17")
        return None
    if len(body) != length:
        LOGGER.error(f"The received PDU is shorter than expected ({6 + len(body)} of {6 + length} bytes received)")
        self.event_queue.put("Evt17")
        return None
    try:
        if pdu_type == _P_DATA_TF:
            pdu: Any = ReceivedPData(pdv_values(body))
            event = "Evt10"
        else:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        self.event_queue.put(event)
    except Exception:  # pynetdicom aborts on whatever its decoding raises
        LOGGER.exception("Unable to decode the received PDU data")
        self.event_queue.put("Evt19")
        return None
    self._recv_pdu.put(pdu)
    return None


class ReceivedFile:
    """The temp file a chunked C-STORE data set is written to: what pynetdicom uses of its
    NamedTemporaryFile (``write``, ``close``, ``name``), without its wrapper, written straight
    to the descriptor (nearly every write is a whole PDV, larger than any useful buffer).

    It keeps the file's first HEAD_BYTES in memory and counts its size: the handler hands both
    to the ingest with the file (``arrival``), which reads the header from them rather than
    from the file. Once the ingest has consumed the file (``release``), it is false, so that
    pynetdicom neither closes nor deletes it again."""

    __slots__ = ("_fd", "name", "notes", "released")

    def __init__(self) -> None:
        self._fd = -1  # what __del__ finds should mkstemp fail
        self._fd, self.name = tempfile.mkstemp(suffix=".dcm")  # in tempfile.tempdir: the data volume
        self.notes = ArrivalNotes()
        self.released = False

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(self._fd, view[written:])
        self.notes.wrote(view)
        return written

    def arrival(self) -> Arrival:
        """The file as the ingest takes it: its content synced to disk, its head and size."""
        os.fsync(self._fd)
        return self.notes.arrival(synced=True)

    def release(self) -> None:
        """The ingest has moved or deleted the file: close it, and leave it alone from now on."""
        self.close()
        self.released = True

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __bool__(self) -> bool:
        return not self.released

    def __del__(self) -> None:
        # pynetdicom leaves some of these files open (a C-GET's C-STORE sub-operations); its
        # NamedTemporaryFile closed itself when collected, so this one does too.
        self.close()


def decode_msg(self: DIMSEMessage, primitive: P_DATA, assoc: Any = None) -> bool:
    """pynetdicom's DIMSEMessage.decode_msg: the same message from the same fragments, with
    values read from the command set's raw elements and fragments written as they came."""
    if primitive.__class__ != P_DATA or primitive is None:
        return False
    for context_id, data in primitive.presentation_data_value_list:
        control = data[0]
        if control & 1:
            self.encoded_command_set.write(data[1:])
            if control & 2:
                self.context_id = context_id
                self.command_set = decode(self.encoded_command_set, True, True)
                field = _number(self.command_set, _COMMAND_FIELD, "CommandField")
                self.__class__ = _MESSAGE_TYPES[field][1]
                if _number(self.command_set, _DATA_SET_TYPE, "CommandDataSetType") == 0x0101:
                    return True
                if _config.STORE_RECV_CHUNKED_DATASET and isinstance(self, C_STORE_RQ):
                    _open_data_set_file(self, context_id, assoc)
        else:
            if self._data_set_file:
                self._data_set_file.write(data[1:])
            else:
                self.data_set.write(data[1:])  # type: ignore[union-attr]
            if control & 2:
                return True  # (written unbuffered: the handler can read the file by its path now)
    return False


def _open_data_set_file(message: Any, context_id: int, assoc: Any) -> None:
    from pacs.dimse.tuning import meta_bytes  # tuning imports this module

    received = ReceivedFile()
    message._data_set_file = received
    message._data_set_path = Path(received.name)
    cs = message.command_set
    syntax = assoc._accepted_cx[context_id].transfer_syntax[0]
    received.write(b"\x00" * 128 + b"DICM" + meta_bytes(_uid(cs, _SOP_CLASS, "AffectedSOPClassUID"),
                                                       _uid(cs, _SOP_INSTANCE, "AffectedSOPInstanceUID"),
                                                       str(syntax)))


def _number(cs: Any, tag: int, keyword: str) -> Any:
    """A US element's value from its raw bytes; pydicom reads any other form (or its absence)."""
    element = cs._dict.get(tag)
    raw = getattr(element, "value", None)
    if type(raw) is bytes and len(raw) == 2:
        return raw[0] | raw[1] << 8
    return getattr(cs, keyword)


def _uid(cs: Any, tag: int, keyword: str) -> str:
    element = cs._dict.get(tag)
    raw = getattr(element, "value", None)
    if type(raw) is bytes and command_set.plain_uid(raw):
        return raw.rstrip(b"\x00 ").decode("ascii")
    return str(getattr(cs, keyword))


def install() -> None:
    DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign]
    DIMSEMessage.decode_msg = decode_msg  # type: ignore[method-assign]
