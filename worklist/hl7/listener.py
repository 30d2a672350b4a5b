"""The HL7 listener of `minipacs serve`: the MLLP server over the receiver, built from Settings
and the Services of the serving process."""

from __future__ import annotations

import socket

from pacs.config import Settings
from pacs.index.hl7_log import Hl7Log
from pacs.index.hl7_orders import Hl7OrderRepository
from pacs.services import Services
from worklist.hl7.intake import Hl7Intake
from worklist.hl7.mllp import MllpServer
from worklist.hl7.receiver import Hl7Receiver


def build_receiver(services: Services, settings: Settings | None = None) -> Hl7Receiver:
    settings = settings or services.settings
    intake = Hl7Intake(services.orders, Hl7OrderRepository(services.engine))
    return Hl7Receiver(
        intake, Hl7Log(services.engine), services.audit, max_message_bytes=settings.hl7_max_message_bytes
    )


class Hl7Listener:
    """Started and stopped with the server; `port` is the one bound (useful with port 0)."""

    def __init__(
        self, settings: Settings, services: Services, *, block_timeout: float = 60.0, sock: socket.socket | None = None
    ) -> None:
        self.settings = settings
        self.services = services
        self.receiver = build_receiver(services, settings)
        self.server = MllpServer(
            self.receiver, settings.effective_hl7_host, settings.hl7_port,
            max_message_bytes=settings.hl7_max_message_bytes, block_timeout=block_timeout, sock=sock,
        )

    @property
    def host(self) -> str:
        return self.settings.effective_hl7_host

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
