"""The Principal: who a request or an association acts for, and what it may see."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pacs.security.roles import Permission


@dataclass(frozen=True)
class Principal:
    name: str  # user name, or "AE:TITLE" for a DICOM peer
    kind: str  # "user", "ae", or "open" when authentication is switched off
    role: str
    permissions: frozenset[Permission]
    # Providers see only studies whose ReferringPhysicianName is this (upper case); None: all.
    referred_by: str | None = None
    address: str = ""
    via: str = ""  # bearer, basic, session, ae, open

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    def at(self, address: str) -> Principal:
        return replace(self, address=address)


def open_principal(address: str = "") -> Principal:
    """The caller when the operator switched authentication off: may do anything."""
    return Principal("anonymous", "open", "admin", frozenset(Permission), address=address, via="open")


def normalized_person_name(name: str) -> str:
    """Person names link providers to studies: compared upper case, without trailing empty components."""
    return name.strip().upper().rstrip("^").strip()
