"""The audit trail: every access to PHI becomes an AuditEvent, written in batches by one
background thread (identical accesses within a batch fold into one row with a count), echoed
as a PHI-free JSON log line on the `minipacs.audit` logger and, when configured, sent to a
syslog collector (RFC 5424)."""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pacs.audit.syslog import SyslogSender
from pacs.index.accounts import utcnow
from pacs.index.audit import AuditFilter, AuditRepository
from pacs.security.principal import Principal

log = logging.getLogger("minipacs.audit")
_BATCH_SECONDS = 0.25
_MAX_PENDING = 100_000
_WRITE_NOW = "write now"  # queued by flush(): end the batch window at once
# Query parameters whose values may be written to plain logs; others are logged by name only.
_LOGGABLE_PARAMETERS = {
    "limit", "offset", "includefield", "fuzzymatching", "orderby", "modality", "modalitiesinstudy",
    "queryretrievelevel", "studyinstanceuid", "seriesinstanceuid", "sopinstanceuid", "sopclassuid",
}


class Action(StrEnum):
    SEARCH = "search"
    READ = "read"
    STORE = "store"
    DELETE = "delete"
    EXPORT = "export"  # sent to another system (C-MOVE)
    LOGIN = "login"
    LOGOUT = "logout"
    ADMIN = "admin"  # accounts, tokens, AEs
    AUDIT = "audit"  # the audit trail itself was read
    ORDER = "order"  # an imaging order was created or changed


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"  # the caller was allowed but the operation failed
    DENIED = "denied"  # known caller without the permission
    UNAUTHENTICATED = "unauthenticated"  # no valid credential


@dataclass
class AuditEvent:
    channel: str  # http, dimse, cli
    actor: str
    actor_role: str
    source: str
    action: str
    outcome: str
    status: int | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=utcnow)
    count: int = 1

    @classmethod
    def of(cls, principal: Principal | None, channel: str, action: str, outcome: str, **values: Any) -> AuditEvent:
        actor = principal.name if principal is not None else values.pop("actor", "anonymous")
        role = principal.role if principal is not None and principal.kind != "open" else ""
        source = principal.address if principal is not None else values.pop("source", "")
        return cls(channel, actor[:128], role, source[:64], action, outcome, **values)

    def fold_key(self) -> tuple[Any, ...]:
        return (
            self.channel, self.actor, self.actor_role, self.source, self.action, self.outcome, self.status,
            self.patient_id, self.study_uid, self.series_uid, self.sop_uid,
            json.dumps(self.detail, sort_keys=True, default=str),
        )


class AuditTrail:
    def __init__(self, repository: AuditRepository, *, retention_days: int, syslog_url: str = "") -> None:
        self.repository = repository
        self.retention_days = retention_days
        self.syslog = SyslogSender(syslog_url) if syslog_url else None
        self._queue: queue.Queue[AuditEvent | str | None] = queue.Queue()
        self._submitted = 0
        self._written = 0
        self._progress = threading.Condition()
        self._hurry = threading.Event()  # set by flush(): end the batch window now
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, event: AuditEvent) -> None:
        with self._progress:
            self._submitted += 1
        self._queue.put(event)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event recorded so far is written; False on timeout."""
        with self._progress:
            target = self._submitted
            if self._written >= target:
                return True
        self._queue.put(_WRITE_NOW)  # no need to wait out the batch window
        self._hurry.set()
        with self._progress:
            return self._progress.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        self.flush(timeout=5.0)
        self._queue.put(None)
        self._thread.join(timeout=5.0)
        if self.syslog is not None:
            self.syslog.close()

    def search(self, where: AuditFilter) -> list[dict[str, Any]]:
        self.flush(timeout=2.0)
        return self.repository.search(where)

    def apply_retention(self) -> int:
        """Record the retention period (the database enforces it) and purge older events."""
        self.repository.set_retention(self.retention_days)
        return self.repository.purge(self.retention_days)

    # ---- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[AuditEvent] = []
        stopping = False
        while not stopping or pending:
            stopping = self._collect(pending, stopping)
            if not pending:
                continue
            try:
                self._write(pending)
            except Exception:  # a database outage must not lose the events or kill the thread
                log.exception("cannot write %d audit event(s); will retry", len(pending))
                if len(pending) > _MAX_PENDING:
                    del pending[: len(pending) - _MAX_PENDING]
                if stopping:
                    return
                time.sleep(1.0)
                continue
            with self._progress:
                self._written += sum(event.count for event in pending)
                self._progress.notify_all()
            pending.clear()

    def _collect(self, pending: list[AuditEvent], stopping: bool) -> bool:
        """Block for the first event, let the batch window pass, then take what came meanwhile.
        Waiting on the queue through the window would wake this thread once per event (a
        cross-core wake-up for each stored instance); recording now only wakes it for the first."""
        if stopping:
            return True
        try:
            first = self._queue.get(timeout=None if not pending else _BATCH_SECONDS)
        except queue.Empty:
            return False
        if first is None:
            return True
        if first == _WRITE_NOW:
            return False
        assert isinstance(first, AuditEvent)
        pending.append(first)
        self._hurry.wait(_BATCH_SECONDS)
        self._hurry.clear()
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return False
            if event is None:
                return True
            if event != _WRITE_NOW:
                assert isinstance(event, AuditEvent)
                pending.append(event)

    def _write(self, pending: list[AuditEvent]) -> None:
        folded: dict[tuple[Any, ...], AuditEvent] = {}
        for event in pending:
            key = event.fold_key()
            if key in folded:
                folded[key].count += event.count
            else:
                folded[key] = dataclasses.replace(event, detail=dict(event.detail))
        events = list(folded.values())
        unknown = [e.study_uid for e in events if e.study_uid and not e.patient_id]
        patients = self.repository.patients_of(uid for uid in unknown if uid)
        for event in events:
            if event.study_uid and not event.patient_id:
                event.patient_id = patients.get(event.study_uid)
        self.repository.append([_row(event) for event in events])
        for event in events:
            self._emit(event)

    def _emit(self, event: AuditEvent) -> None:
        line = json.dumps(log_fields(event), default=str, separators=(",", ":"))
        log.info("%s", line)
        if self.syslog is not None:
            structured = {k: str(v) for k, v in log_fields(event).items() if v not in (None, "") and k != "detail"}
            if event.patient_id:
                structured["patient_id"] = event.patient_id  # the collector is part of the audit trail
            severity = 5 if event.outcome in (Outcome.SUCCESS, Outcome.FAILURE) else 4
            self.syslog.send(event.action.upper(), line, structured, severity=severity)


_COLUMNS = tuple(f.name for f in dataclasses.fields(AuditEvent))


def _row(event: AuditEvent) -> dict[str, Any]:
    # Field by field: dataclasses.asdict deep-copies every value, which the row does not need.
    row = {name: getattr(event, name) for name in _COLUMNS}
    row["detail"] = json.dumps(event.detail, default=str, separators=(",", ":"))
    for name in ("patient_id", "study_uid", "series_uid", "sop_uid"):
        if row[name] is not None:
            row[name] = str(row[name])[:64]
    return row


def log_fields(event: AuditEvent) -> dict[str, Any]:
    """The event without PHI: no patient ID, query values only for non-identifying parameters."""
    detail = dict(event.detail)
    query = detail.pop("query", None)
    if isinstance(query, dict):
        detail["query"] = {k: (v if k.lower() in _LOGGABLE_PARAMETERS else "***") for k, v in query.items()}
    if "reason" in detail:  # error messages may quote a value the caller sent (a birth date, a name)
        detail["reason"] = "***"
    return {
        "at": event.occurred_at.isoformat(),
        "channel": event.channel,
        "actor": event.actor,
        "role": event.actor_role,
        "source": event.source,
        "action": event.action,
        "outcome": event.outcome,
        "status": event.status,
        "study": event.study_uid,
        "series": event.series_uid,
        "instance": event.sop_uid,
        "count": event.count,
        "detail": detail,
    }


def store_events(principal: Principal | None, channel: str, reports: list[Any], status: int | None) -> list[AuditEvent]:
    """One event per study touched by a store request (C-STORE, STOW-RS, import), with counts;
    per-instance C-STOREs of one study fold into one row in the writer."""
    by_study: dict[str | None, list[Any]] = {}
    for report in reports:
        by_study.setdefault(report.study_instance_uid, []).append(report)
    events = []
    for study_uid, items in by_study.items():
        failed = [r for r in items if r.error is not None]
        detail: dict[str, Any] = {"instances": len(items) - len(failed)}
        if failed:
            detail["failed"] = len(failed)
            detail["reason"] = str(failed[0].error)[:200]
        series = {r.series_instance_uid for r in items}
        events.append(
            AuditEvent.of(
                principal, channel, Action.STORE, Outcome.FAILURE if failed else Outcome.SUCCESS,
                status=status, study_uid=study_uid,
                series_uid=next(iter(series)) if len(series) == 1 else None,
                detail=detail,
            )
        )
    return events
