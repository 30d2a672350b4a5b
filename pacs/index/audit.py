"""SQL for the audit trail: append events, search them, purge those past retention."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update

from pacs.index.accounts import utcnow
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import audit_events, audit_policy, patients, studies


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0


class AuditRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            with write_transaction(self.engine) as conn:
                conn.execute(audit_events.insert(), list(rows))

    def patients_of(self, study_uids: Iterable[str]) -> dict[str, str]:
        """StudyInstanceUID -> PatientID for the studies still in the index."""
        wanted = sorted(set(study_uids))
        if not wanted:
            return {}
        stmt = (
            select(studies.c.study_instance_uid, patients.c.patient_id)
            .join(patients, patients.c.pk == studies.c.patient_pk)
            .where(studies.c.study_instance_uid.in_(wanted))
        )
        with read_transaction(self.engine) as conn:
            return {row.study_instance_uid: row.patient_id for row in conn.execute(stmt)}

    def search(self, where: AuditFilter) -> list[dict[str, Any]]:
        stmt = select(audit_events).order_by(audit_events.c.occurred_at.desc(), audit_events.c.pk.desc())
        if where.actor:
            stmt = stmt.where(audit_events.c.actor == where.actor)
        if where.patient_id:
            stmt = stmt.where(audit_events.c.patient_id == where.patient_id)
        if where.study_uid:
            stmt = stmt.where(audit_events.c.study_uid == where.study_uid)
        if where.action:
            stmt = stmt.where(audit_events.c.action == where.action)
        if where.outcome:
            stmt = stmt.where(audit_events.c.outcome == where.outcome)
        if where.since:
            stmt = stmt.where(audit_events.c.occurred_at >= where.since)
        if where.until:
            stmt = stmt.where(audit_events.c.occurred_at < where.until)
        stmt = stmt.limit(where.limit).offset(where.offset)
        with read_transaction(self.engine) as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    def set_retention(self, days: int) -> None:
        with write_transaction(self.engine) as conn:
            current = conn.execute(select(audit_policy.c.retention_days).where(audit_policy.c.pk == 1)).scalar()
            if current is None:
                conn.execute(audit_policy.insert().values(pk=1, retention_days=days))
            elif current != days:
                conn.execute(update(audit_policy).where(audit_policy.c.pk == 1).values(retention_days=days))

    def purge(self, retention_days: int) -> int:
        """Delete events older than the retention period; the database refuses younger ones."""
        cutoff = utcnow() - timedelta(days=retention_days)
        with write_transaction(self.engine) as conn:
            return int(conn.execute(delete(audit_events).where(audit_events.c.occurred_at < cutoff)).rowcount)

