"""Known remote DICOM application entities: C-MOVE destinations, the calling-AE allowlist, and
what each may do when it calls (a role narrowed by an access: all, store, query)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError

from pacs.errors import Conflict, InvalidInput, NotFound
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import remote_aes

AE_ACCESS_LEVELS = ("all", "store", "query")
AE_ROLES = ("technologist", "radiologist", "integration", "admin")


@dataclass(frozen=True)
class RemoteAE:
    ae_title: str
    host: str
    port: int
    role: str = "technologist"
    access: str = "all"


def parse_remote_aes(text: str) -> list[RemoteAE]:
    """`NAME@HOST:PORT` entries separated by commas (the MINIPACS_REMOTE_AES setting)."""
    found = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, at, address = entry.partition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon or not port.isdigit():
            raise InvalidInput(f"remote AE {entry!r} is not NAME@HOST:PORT")
        found.append(validated(name, host, int(port)))
    return found


def validated(ae_title: str, host: str, port: int, role: str = "technologist", access: str = "all") -> RemoteAE:
    title = ae_title.strip()
    # PS3.5 Table 6.2-1: AE is the default (ASCII) repertoire without backslash or control
    # characters; pynetdicom refuses any other title when associating or checking callers.
    if not 1 <= len(title) <= 16 or "\\" in title or not (title.isascii() and title.isprintable()):
        raise InvalidInput(f"AE title {ae_title!r} must be 1 to 16 printable ASCII characters, without backslash")
    if not host.strip():
        raise InvalidInput("host is empty")
    if not 1 <= port <= 65535:
        raise InvalidInput(f"port {port} is not a TCP port")
    if role not in AE_ROLES:
        raise InvalidInput(f"AE role {role!r} is not one of {', '.join(AE_ROLES)}")
    if access not in AE_ACCESS_LEVELS:
        raise InvalidInput(f"AE access {access!r} is not one of {', '.join(AE_ACCESS_LEVELS)}")
    return RemoteAE(title, host.strip(), port, role, access)


class RemoteAERepository:
    def __init__(self, engine: Engine, configured: list[RemoteAE] | None = None) -> None:
        self.engine = engine
        self.configured = {ae.ae_title: ae for ae in configured or []}

    def add(self, ae: RemoteAE) -> None:
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(
                    remote_aes.insert().values(
                        ae_title=ae.ae_title, host=ae.host, port=ae.port, role=ae.role, access=ae.access
                    )
                )
        except IntegrityError:
            raise Conflict(f"remote AE {ae.ae_title} already exists; remove it first") from None

    def remove(self, ae_title: str) -> None:
        with write_transaction(self.engine) as conn:
            if conn.execute(delete(remote_aes).where(remote_aes.c.ae_title == ae_title)).rowcount == 0:
                raise NotFound(f"no remote AE {ae_title}")

    def all(self) -> list[RemoteAE]:
        """Configured entries and stored ones; a stored entry wins over a configured one."""
        with read_transaction(self.engine) as conn:
            stored = {r.ae_title: _remote_ae(r) for r in conn.execute(select(remote_aes))}
        return sorted({**self.configured, **stored}.values(), key=lambda ae: ae.ae_title)

    def find(self, ae_title: str) -> RemoteAE | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(remote_aes).where(remote_aes.c.ae_title == ae_title)).first()
        if row is not None:
            return _remote_ae(row)
        return self.configured.get(ae_title)


def _remote_ae(row: Any) -> RemoteAE:
    return RemoteAE(row.ae_title, row.host, row.port, row.role, row.access)
