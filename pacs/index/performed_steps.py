"""Modality Performed Procedure Steps in the index (rows of performed_procedure_steps).
The MPPS rules live in worklist.mpps; this module only reads and writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacs.errors import Conflict, DuplicateInstance, NotFound
from pacs.index.accounts import as_utc
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import orders, performed_procedure_steps

steps = performed_procedure_steps


@dataclass(frozen=True)
class PerformedStep:
    sop_instance_uid: str
    status: str  # IN PROGRESS, COMPLETED, DISCONTINUED (PS3.3 C.4.14)
    calling_ae_title: str
    attributes_json: str  # DICOM JSON of the whole step as last set
    created_at: datetime
    updated_at: datetime
    order_pk: int | None = None
    performed_station_ae_title: str | None = None
    modality: str | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    performed_series: list[dict[str, Any]] = field(default_factory=list)
    order_number: str | None = None  # of the linked order (read only)


_COLUMNS = [f.name for f in fields(PerformedStep) if f.name != "order_number"]


class PerformedStepRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, step: PerformedStep) -> None:
        """Insert; DuplicateInstance when a step with that SOP Instance UID exists (PS3.4 F.7.2.1)."""
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(insert(steps).values(**_row(step)))
        except IntegrityError:
            raise DuplicateInstance("a performed procedure step with this SOP Instance UID exists") from None

    def get(self, sop_instance_uid: str) -> PerformedStep:
        with read_transaction(self.engine) as conn:
            row = conn.execute(_select().where(steps.c.sop_instance_uid == sop_instance_uid)).first()
        if row is None:
            raise NotFound("no performed procedure step with this SOP Instance UID")
        return _step(row)

    def update(self, sop_instance_uid: str, expected_status: str, values: dict[str, Any]) -> None:
        """Change the step unless another N-SET changed its status meanwhile (Conflict)."""
        changes = dict(values)
        if "performed_series" in changes:
            changes["performed_series"] = json.dumps(changes["performed_series"])
        with write_transaction(self.engine) as conn:
            stmt = update(steps).where(steps.c.sop_instance_uid == sop_instance_uid, steps.c.status == expected_status)
            if conn.execute(stmt.values(**changes)).rowcount == 0:
                raise Conflict("the step was changed meanwhile; send the N-SET again")

    def search(
        self, *, order_pk: int | None = None, unlinked: bool = False, limit: int = 100, offset: int = 0
    ) -> list[PerformedStep]:
        stmt = _select()
        if order_pk is not None:
            stmt = stmt.where(steps.c.order_pk == order_pk)
        if unlinked:
            stmt = stmt.where(steps.c.order_pk.is_(None))
        stmt = stmt.order_by(steps.c.created_at.desc(), steps.c.sop_instance_uid).limit(limit).offset(offset)
        with read_transaction(self.engine) as conn:
            return [_step(row) for row in conn.execute(stmt)]


def _select() -> Any:
    return select(steps, orders.c.order_number).select_from(steps.outerjoin(orders, orders.c.pk == steps.c.order_pk))


def _row(step: PerformedStep) -> dict[str, Any]:
    row = {name: getattr(step, name) for name in _COLUMNS}
    row["performed_series"] = json.dumps(step.performed_series)
    return row


def _step(row: Any) -> PerformedStep:
    values = {name: getattr(row, name) for name in _COLUMNS}
    values["performed_series"] = json.loads(values["performed_series"] or "[]")
    for name in ("created_at", "updated_at", "started_at", "ended_at"):
        if values[name] is not None:
            values[name] = as_utc(values[name])
    return PerformedStep(**values, order_number=row.order_number)
