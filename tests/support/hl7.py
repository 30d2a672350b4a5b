"""HL7 v2 over MLLP for tests: the archive's listener on a free port, a plain-socket client
that frames messages and reads acknowledgements, and builders for the messages we send."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import hl7

from pacs.services import Services
from worklist.hl7.listener import Hl7Listener

SOCKET_TIMEOUT = 30.0
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


@contextmanager
def running_hl7_listener(services: Services, block_timeout: float = 60.0, **changes: Any) -> Iterator[Hl7Listener]:
    settings = services.settings.replace(hl7_port=0, hl7_host="127.0.0.1", **changes)
    listener = Hl7Listener(settings, services, block_timeout=block_timeout)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


@dataclass
class Ack:
    raw: bytes
    message: hl7.Message

    @property
    def code(self) -> str:
        return str(self.message.extract_field("MSA", 1, 1))

    @property
    def control_id(self) -> str:
        return str(self.message.extract_field("MSA", 1, 2))

    @property
    def text(self) -> str:
        return str(self.message.extract_field("MSA", 1, 3))

    def field(self, segment: str, number: int, component: int = 1) -> str:
        try:
            return str(self.message.extract_field(segment, 1, number, 1, component))
        except (KeyError, IndexError):
            return ""

    @property
    def error_code(self) -> str:
        return self.field("ERR", 3)

    @property
    def error_text(self) -> str:
        return self.field("ERR", 8)


class MllpClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, payload: bytes | str) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.sock.sendall(VT + data + FS + CR)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ack(self) -> Ack:
        while FS + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; received {self.buffer!r}")
            self.buffer += chunk
        block, _, self.buffer = self.buffer.partition(FS + CR)
        assert block.startswith(VT), block[:50]
        raw = block[1:]
        return Ack(raw, hl7.parse(raw.decode("latin-1")))

    def exchange(self, payload: bytes | str) -> Ack:
        self.send(payload)
        return self.ack()

    def closed_by_server(self) -> bool:
        """True once the server has closed the connection (after anything it still sent)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value}; absent fields are empty."""
    last = max(fields) if fields else 0
    return "|".join([name, *(fields.get(n, "") for n in range(1, last + 1))])


def message(kind: str, control_id: str, *segments: str, version: str = "2.5.1", charset: str = "",
            sender: str = "RIS", facility: str = "HOSP") -> str:
    msh = f"MSH|^~\\&|{sender}|{facility}|MINIPACS|RADIOLOGY|20260102030405||{kind}|{control_id}|P|{version}"
    if charset:
        msh += "||||||" + charset
    return "\r".join([msh, *segments]) + "\r"


def pid(patient_id: str = "PAT-1", name: str = "Doe^Jane^Q", birth: str = "19700203", sex: str = "F",
        issuer: str = "HOSP") -> str:
    identifier = f"{patient_id}^^^{issuer}^MR" if patient_id else ""
    return seg("PID", {1: "1", 3: identifier, 5: name, 7: birth, 8: sex})


def orc(control: str, placer: str = "", filler: str = "", **fields: str) -> str:
    values = {1: control, 2: placer, 3: filler}
    values.update({int(k[1:]): v for k, v in fields.items()})
    return seg("ORC", values)


def obr(placer: str = "", procedure: str = "CTCHEST^CT chest^L", modality: str = "CT", accession: str = "",
        **fields: str) -> str:
    values = {1: "1", 2: placer, 4: procedure, 18: accession, 24: modality}
    values.update({int(k[1:]): v for k, v in fields.items()})
    return seg("OBR", values)


def new_order(control_id: str, placer: str, *, patient_id: str = "PAT-1", accession: str = "", modality: str = "CT",
              extra: tuple[str, ...] = (), **obr_fields: str) -> str:
    """ORM^O01 NW: one order."""
    return message(
        "ORM^O01^ORM_O01", control_id, pid(patient_id), seg("PV1", {1: "1", 2: "O", 3: "RAD^CT1"}),
        orc("NW", placer), obr(placer, modality=modality, accession=accession, **obr_fields), *extra,
    )


def order_control(control: str, control_id: str, placer: str, **orc_fields: str) -> str:
    """ORM^O01 with one ORC (CA, DC, XO ...) naming the order by its placer number."""
    return message("ORM^O01", control_id, pid(), orc(control, placer, **orc_fields), obr(placer))


def appointment(event: str, control_id: str, placer: str, *, start: str = "", minutes: str = "",
                room: str = "") -> str:
    """SIU^S12..S15 for the order with this placer number."""
    return message(
        f"SIU^{event}^SIU_S12", control_id, seg("SCH", {1: f"APT-{placer}", 26: placer}), pid(),
        seg("RGS", {1: "1"}), seg("AIS", {1: "1", 3: "CTCHEST^CT chest", 4: start, 7: minutes, 8: "min" if minutes else ""}),
        seg("AIL", {1: "1", 3: room}),
    )
