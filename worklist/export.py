"""Order export: chosen orders, or all not yet exported, written as one file (CSV, HL7 ORM
batch, or PDF summary) kept in the blob store under exports/, and recorded as a batch with who,
when, format, destination and the orders in it.

An order already exported is left out unless the caller asks for it again (`force`). The file is
stored before the batch is recorded, as ingest does (durable before success); a batch that cannot
be recorded takes its file away again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pacs.audit.trail import Action, AuditEvent, Outcome
from pacs.errors import Conflict, InvalidInput, NotFound, PacsError
from pacs.index.exports import ExportBatch, ExportRepository
from pacs.index.orders import Order
from pacs.security.principal import Principal
from storage.base import BlobStore
from worklist.export_formats import BatchHeader, to_csv, to_hl7
from worklist.orders import utcnow

log = logging.getLogger(__name__)
MAX_ORDERS = 5000  # per batch; "all not yet exported" takes the oldest this many, run again for the rest


class ExportFormat(StrEnum):
    CSV = "csv"
    HL7 = "hl7"
    PDF = "pdf"


MEDIA_TYPES = {
    ExportFormat.CSV: "text/csv; charset=utf-8; header=present",  # RFC 4180, RFC 7111
    ExportFormat.HL7: "application/hl7-v2; charset=utf-8",
    ExportFormat.PDF: "application/pdf",
}


def parse_format(text: Any) -> ExportFormat:
    try:
        return ExportFormat(str(text).strip().lower())
    except ValueError:
        raise InvalidInput(f"unknown export format {text!r}; one of {', '.join(ExportFormat)}") from None


@dataclass
class ExportRequest:
    format: ExportFormat
    order_ids: list[int] | None  # None: all not yet exported
    force: bool = False  # export again orders already exported
    destination: str = ""


@dataclass
class ExportResult:
    batch: ExportBatch
    orders: list[Order]
    skipped: list[Order] = field(default_factory=list)  # already exported, left out
    remaining: bool = False  # more not-yet-exported orders than one batch holds


class ExportService:
    def __init__(self, repository: ExportRepository, blobs: BlobStore, clock: Callable[[], datetime] = utcnow) -> None:
        self.repository = repository
        self.blobs = blobs
        self.clock = clock

    def export(self, wanted: ExportRequest, *, created_by: str) -> ExportResult:
        chosen, skipped, remaining = self._choose(wanted)
        now = self.clock()
        header = BatchHeader(f"X{now:%Y%m%d%H%M%S}{uuid.uuid4().hex[:6].upper()}", now, wanted.destination)
        data = render(wanted.format, chosen, header, created_by)
        key = f"exports/{now:%Y/%m}/{header.reference}.{wanted.format.value}"
        self.blobs.put_bytes(key, data)
        try:
            batch = self.repository.record(
                created_by=created_by, format=wanted.format.value, destination=wanted.destination, blob_key=key,
                exported=chosen, again=wanted.force, now=now,
            )
        except PacsError:
            self._forget(key)
            raise
        return ExportResult(batch, chosen, skipped, remaining)

    def _choose(self, wanted: ExportRequest) -> tuple[list[Order], list[Order], bool]:
        if wanted.order_ids is None:
            found = self.repository.not_exported(MAX_ORDERS + 1)
            if not found:
                raise Conflict("nothing to export: every order has been exported already")
            return found[:MAX_ORDERS], [], len(found) > MAX_ORDERS
        found = self.repository.orders(wanted.order_ids)
        missing = sorted(set(wanted.order_ids) - {order.pk for order in found})
        if missing:
            raise NotFound(f"no orders {', '.join(map(str, missing))}; nothing was exported")
        skipped = [] if wanted.force else [order for order in found if order.exported_at is not None]
        chosen = [order for order in found if order not in skipped]
        if not chosen:
            numbers = ", ".join(order.order_number for order in skipped)
            raise Conflict(f"nothing to export: {numbers} were exported already (set force to export them again)")
        return chosen, skipped, False

    def _forget(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except PacsError:
            log.warning("could not remove the unrecorded export file %s", key)

    def file(self, batch: ExportBatch) -> Any:
        if not batch.blob_key:
            raise NotFound(f"export batch {batch.pk} has no file")
        return self.blobs.iter_range(batch.blob_key)


def render(format: ExportFormat, orders: Sequence[Order], header: BatchHeader, created_by: str) -> bytes:
    if format is ExportFormat.CSV:
        return to_csv(orders)
    if format is ExportFormat.HL7:
        return to_hl7(orders, header)
    from worklist.export_pdf import to_pdf  # fpdf takes ~25 MB: loaded by the first PDF export, not by every worker

    return to_pdf(orders, header, created_by)


def file_name(batch: ExportBatch) -> str:
    return f"orders-export-{batch.pk}.{batch.format}"


def parse_ids(raw: Any) -> list[int]:
    """Order ids from a JSON list (or CLI arguments): whole numbers, at most MAX_ORDERS, no repeats."""
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("order_ids must be a non-empty list of order ids")
    if any(isinstance(i, bool) or not isinstance(i, int) or i <= 0 for i in raw):
        raise InvalidInput("order ids are positive whole numbers")
    if len(raw) > MAX_ORDERS:
        raise InvalidInput(f"at most {MAX_ORDERS} orders per export")
    return sorted(set(raw))


def export_events(
    result: ExportResult, principal: Principal | None, channel: str, actor: str = "", status: int | None = None
) -> list[AuditEvent]:
    """One audit event per patient whose orders left the system (PHI leaving: action export)."""
    batch = result.batch
    by_patient: dict[str, list[str]] = {}
    for order in result.orders:
        by_patient.setdefault(order.patient_id, []).append(order.order_number)
    values: dict[str, Any] = {} if principal is not None else {"actor": actor}
    return [
        AuditEvent.of(
            principal, channel, Action.EXPORT, Outcome.SUCCESS, status=status, patient_id=patient_id, **values,
            detail={"export_batch": batch.pk, "format": batch.format, "destination": batch.destination,
                    "orders": numbers},
        )
        for patient_id, numbers in by_patient.items()
    ]
