"""Roles and permissions: the one table of who may do what.

A user has one role. An API token may narrow its user's permissions to the scopes it names;
integration accounts get nothing but what their token names. A remote AE has a role too,
narrowed by its access (store-only, query-only).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pacs.errors import InvalidInput


class Role(StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    PROVIDER = "provider"  # referring physician: only the studies referred by them
    INTEGRATION = "integration"  # machine clients: only the scopes their token names


class Permission(StrEnum):
    """What a role grants and an API token's scopes name: the same words, shown in 403 answers."""

    READ = "read"  # search, retrieve and export images and metadata
    STORE = "store"
    DELETE = "delete"
    MANAGE_USERS = "manage-users"
    MANAGE_AES = "manage-aes"
    MANAGE_REFERENCE = "manage-reference"  # the modalities and body parts orders may name
    READ_AUDIT = "read-audit"
    READ_ORDERS = "read-orders"  # providers: only the orders they placed
    WRITE_ORDERS = "write-orders"
    PERFORM_WORKITEMS = "perform-workitems"  # claim, complete or cancel a worklist step (UPS-RS)


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.RADIOLOGIST: frozenset({Permission.READ, Permission.READ_ORDERS, Permission.PERFORM_WORKITEMS}),
    Role.TECHNOLOGIST: frozenset(
        {Permission.READ, Permission.STORE, Permission.DELETE, Permission.READ_ORDERS, Permission.WRITE_ORDERS,
         Permission.PERFORM_WORKITEMS}
    ),
    Role.PROVIDER: frozenset({Permission.READ, Permission.READ_ORDERS}),
    Role.INTEGRATION: frozenset(
        {Permission.READ, Permission.STORE, Permission.DELETE, Permission.READ_ORDERS, Permission.WRITE_ORDERS,
         Permission.PERFORM_WORKITEMS}
    ),
}

# What a calling AE may do over DIMSE, by its access setting.
AE_ACCESS: dict[str, frozenset[Permission]] = {
    "all": frozenset({Permission.READ, Permission.STORE}),
    "store": frozenset({Permission.STORE}),
    "query": frozenset({Permission.READ}),
}


def parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise InvalidInput(f"unknown role {text!r}; one of {', '.join(r.value for r in Role)}") from None


def parse_scopes(text: str | Iterable[str]) -> frozenset[Permission]:
    parts = text.split(",") if isinstance(text, str) else list(text)
    scopes = set()
    for part in (p.strip().lower() for p in parts):
        if not part:
            continue
        try:
            scopes.add(Permission(part))
        except ValueError:
            raise InvalidInput(f"unknown scope {part!r}; one of {', '.join(p.value for p in Permission)}") from None
    return frozenset(scopes)


def user_permissions(role: Role, scopes: frozenset[Permission] = frozenset()) -> frozenset[Permission]:
    granted = ROLE_PERMISSIONS[role]
    if scopes:
        return granted & scopes
    return frozenset() if role == Role.INTEGRATION else granted


def ae_permissions(role: str, access: str) -> frozenset[Permission]:
    return ROLE_PERMISSIONS.get(Role(role), frozenset()) & AE_ACCESS.get(access, frozenset())
