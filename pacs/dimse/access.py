"""Who a DICOM peer is and what it may do: the calling AE title mapped to a Principal (a known
AE's role and access, or the rights of unknown peers when the allowlist is off), the policy
check, and the audit records of DIMSE operations."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from pacs import errors
from pacs.audit.trail import AuditEvent, Outcome
from pacs.index.repository import StoredInstance
from pacs.security.policy import Operation, authorize
from pacs.security.principal import Principal
from pacs.security.roles import AE_ACCESS, ae_permissions
from pacs.services import Services

log = logging.getLogger("pacs.dimse")
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: Refused: Not Authorized
_PRINCIPAL = "_minipacs_principal"
UNKNOWN_AE_ROLE = "unknown-ae"


def calling_principal(event: Event, services: Services) -> Principal:
    """Resolved once per association (the AE table is not read for every C-STORE)."""
    assoc = event.assoc
    principal: Principal | None = getattr(assoc, _PRINCIPAL, None)
    if principal is None:
        title = str(assoc.requestor.ae_title).strip()
        known = services.remote_aes.find(title)
        if known is not None:
            role, permissions = known.role, ae_permissions(known.role, known.access)
        elif services.settings.auth == "off" or not services.settings.dicom_allowlist:
            role, permissions = UNKNOWN_AE_ROLE, AE_ACCESS["all"]
        else:  # the allowlist refuses such associations; should one slip through, it gets nothing
            role, permissions = UNKNOWN_AE_ROLE, frozenset()
        principal = Principal(f"AE:{title}", "ae", role, permissions, address=str(assoc.requestor.address), via="ae")
        setattr(assoc, _PRINCIPAL, principal)
    return principal


def permitted(event: Event, services: Services, operation: Operation, action: str) -> Principal | None:
    """The calling principal if it may do `operation`; None (denial logged and audited) if not."""
    principal = calling_principal(event, services)
    try:
        authorize(principal, operation)
    except errors.Forbidden as exc:
        log.warning("%s refused: %s", operation.value, exc)
        record(services, principal, action, Outcome.DENIED, NOT_AUTHORIZED)
        return None
    return principal


def record(services: Services, principal: Principal, action: str, outcome: str, status: int | None, **values: Any) -> None:
    services.audit.record(AuditEvent.of(principal, "dimse", action, outcome, status=status, **values))


def record_per_study(
    services: Services, principal: Principal, action: str, stored: Iterable[StoredInstance], **detail: Any
) -> None:
    counts: dict[str, int] = {}
    for item in stored:
        counts[item.study_instance_uid] = counts.get(item.study_instance_uid, 0) + 1
    for study_uid, count in counts.items():
        record(services, principal, action, Outcome.SUCCESS, 0, study_uid=study_uid,
               detail={"instances": count, **detail})


def identifier_summary(identifier: Dataset) -> dict[str, str]:
    """The non-empty keys of a query identifier, by keyword (the audit trail's copy of the query)."""
    summary: dict[str, str] = {}
    for element in identifier:
        if element.VR == "SQ" or element.value in (None, "", b""):
            continue
        summary[element.keyword or f"{int(element.tag):08X}"] = str(element.value)[:200]
    return summary
