"""Imaging orders in the index: rows, status history, and the yearly number counters.
The workflow rules live in worklist.orders; this module only reads and writes."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from pacs.errors import Conflict, NotFound
from pacs.index.accounts import as_utc, provider_account
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import order_status_history, orders


@dataclass(frozen=True)
class Order:
    pk: int
    order_number: str
    accession_number: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str | None
    patient_sex: str | None
    ordering_provider: str | None
    modality: str
    body_part: str | None
    laterality: str | None
    procedure_code: str | None
    procedure_description: str | None
    priority: str
    clinical_indication: str | None
    scheduled_at: datetime | None
    station_ae_title: str | None
    study_instance_uid: str
    status: str
    created_at: datetime
    updated_at: datetime
    created_by: str
    clinical_history: str | None = None
    contrast_required: bool = False
    contrast_agent: str | None = None
    contrast_allergy_checked: bool = False
    contrast_renal_checked: bool = False
    special_instructions: str | None = None
    duration_minutes: int | None = None
    location: str | None = None
    performing_physician: str | None = None
    ordering_provider_user: str | None = None
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    workitem_uid: str | None = None
    ups_transaction_uid: str | None = None
    exported_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.status in ("ORDERED", "SCHEDULED", "IN_PROGRESS")


@dataclass(frozen=True)
class StatusChange:
    from_status: str | None
    to_status: str
    changed_by: str
    changed_at: datetime
    reason: str


@dataclass(frozen=True)
class OrderFilter:
    status: str | None = None
    modality: str | None = None
    priority: str | None = None
    patient_id: str | None = None
    ordering_provider: str | None = None  # normalised person name
    scheduled_from: datetime | None = None
    scheduled_to: datetime | None = None
    referred_by: str | None = None  # providers: only their own orders (normalised name)
    statuses: tuple[str, ...] | None = None  # any of these
    accession_number: str | None = None
    study_instance_uid: str | None = None
    placer_order_number: str | None = None
    not_exported: bool = False
    exported: bool = False  # only orders exported at least once
    limit: int = 100
    offset: int = 0


_ORDER_FIELDS = [f.name for f in fields(Order)]


class OrderRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, values: dict[str, Any], *, year: int, generate_accession: bool, now: datetime) -> Order:
        """Insert an order with the next numbers of `year`, in one transaction with the counters.
        An accession number already used (given by the caller: Conflict; generated: an external
        number shaped like ours, skipped) is found by the insert itself, not by a query first."""
        try:
            return self._insert(values, year=year, generate_accession=generate_accession, now=now)
        except IntegrityError:  # another unique value (a workitem UID) taken meanwhile
            raise Conflict("the order carries a number or UID another order took meanwhile; try again") from None

    def _insert(self, values: dict[str, Any], *, year: int, generate_accession: bool, now: datetime) -> Order:
        with write_transaction(self.engine) as conn:
            kinds = ("ORD", "ACC") if generate_accession else ("ORD",)
            numbers = _next_numbers(conn, kinds, year)  # both in one statement: a round trip less
            row = dict(with_name_norms(values), order_number=f"ORD-{year}-{numbers['ORD']:05d}",
                       created_at=now, updated_at=now, link_provider=values.get("ordering_provider_norm"))
            accession = numbers.get("ACC")
            while True:
                if accession is not None:
                    row["accession_number"] = f"ACC-{year}-{accession:05d}"
                created = conn.execute(_INSERT_ORDER[conn.dialect.name == "postgresql"], row).first()
                if created is not None:
                    break
                if accession is None:
                    raise Conflict(f"accession number {row['accession_number']} is already used by another order")
                accession = _next_numbers(conn, ("ACC",), year)["ACC"]
            _record_change(conn, created.pk, None, row["status"], row["created_by"], now, "")
            return _order(created)

    def by_workitem(self, workitem_uid: str) -> Order:
        return self._one(orders.c.workitem_uid == workitem_uid, f"no workitem {workitem_uid}")

    def get(self, pk: int) -> Order:
        return self._one(orders.c.pk == pk, f"no order {pk}")

    def by_number(self, order_number: str) -> Order:
        return self._one(orders.c.order_number == order_number, f"no order {order_number}")

    def by_accession(self, accession_number: str) -> Order:
        return self._one(orders.c.accession_number == accession_number, f"no order with accession {accession_number}")

    def _one(self, where: Any, missing: str) -> Order:
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(orders).where(where)).first()
        if row is None:
            raise NotFound(missing)
        return _order(row)

    def search(self, where: OrderFilter) -> list[Order]:
        stmt = _filtered(select(orders), where)
        stmt = stmt.order_by(orders.c.created_at.desc(), orders.c.pk.desc()).limit(where.limit).offset(where.offset)
        with read_transaction(self.engine) as conn:
            return [_order(row) for row in conn.execute(stmt)]

    def update(self, pk: int, values: dict[str, Any], *, expected_status: str, now: datetime) -> Order:
        """Change fields, unless the order left `expected_status` meanwhile."""
        with write_transaction(self.engine) as conn:
            params = {**with_name_norms(values), "updated_at": now, "where_pk": pk, "where_status": expected_status}
            changed = conn.execute(*_update(params)).first()
            if changed is None:
                raise Conflict(f"order {pk} changed meanwhile; reload it and try again")
            return _order(changed)

    def change_status(
        self, pk: int, from_status: str, to_status: str, *, changed_by: str, reason: str, now: datetime,
        values: dict[str, Any] | None = None,
    ) -> Order:
        """Move the order from `from_status` to `to_status` and record it; a concurrent change wins."""
        with write_transaction(self.engine) as conn:
            params = {**with_name_norms(values or {}), "status": to_status, "updated_at": now, "where_pk": pk,
                      "where_status": from_status}
            changed = conn.execute(*_update(params)).first()
            if changed is None:
                raise Conflict(f"order {pk} is no longer {from_status}; reload it and try again")
            _record_change(conn, pk, from_status, to_status, changed_by, now, reason)
            return _order(changed)

    def history(self, pk: int) -> list[StatusChange]:
        stmt = (
            select(order_status_history)
            .where(order_status_history.c.order_pk == pk)
            .order_by(order_status_history.c.pk)
        )
        with read_transaction(self.engine) as conn:
            return [
                StatusChange(r.from_status, r.to_status, r.changed_by, as_utc(r.changed_at), r.reason)
                for r in conn.execute(stmt)
            ]


_NORMED = ("patient_name", "performing_physician")


def with_name_norms(values: dict[str, Any]) -> dict[str, Any]:
    """The values plus upper-cased copies of the person names the worklist matches on
    (case-insensitively, PS3.4 C.2.2.2.1), computed here as ingest does for studies."""
    extra = {f"{name}_norm": (values[name] or "").upper() or None for name in _NORMED if name in values}
    return {**values, **extra}


def _next_numbers(conn: Connection, kinds: tuple[str, ...], year: int) -> dict[str, int]:
    """The next number of each kind in `year`. The upsert takes the counter rows' locks until
    commit on PostgreSQL, always in the order of `kinds` (SQLite's write transactions are
    serialised anyway), so no two orders share a number and none wait on each other in a cycle."""
    return {kind: int(last) for kind, last in conn.execute(_counter_upsert(kinds), {"year": year})}


@functools.cache
def _counter_upsert(kinds: tuple[str, ...]) -> Any:
    # The same text on SQLite and PostgreSQL; the kinds are our own constants.
    rows = ", ".join(f"('{kind}', :year, 1)" for kind in kinds)
    return text(
        f"INSERT INTO order_counters (kind, year, last) VALUES {rows} "
        "ON CONFLICT (kind, year) DO UPDATE SET last = order_counters.last + 1 RETURNING kind, last"
    )


# Statements built once: SQLAlchemy then reuses their compiled form (building one per call, with
# the order's forty values inlined, cost more than the database work of an order).
# An accession number already used inserts nothing (and returns no row) instead of failing the
# transaction, which PostgreSQL could then only continue from a savepoint. The ordering
# provider's account, if one is linked to that name, is looked up by the insert itself.
_INSERT_ORDER = {
    postgres: dialect.insert(orders)
    .values(ordering_provider_user=provider_account(bindparam("link_provider")).scalar_subquery())
    .on_conflict_do_nothing(index_elements=[orders.c.accession_number])
    .returning(*orders.c)
    for postgres, dialect in ((True, postgresql), (False, sqlite))
}
_UPDATE_ORDER = (
    update(orders)
    .where(orders.c.pk == bindparam("where_pk"), orders.c.status == bindparam("where_status"))
    .returning(*orders.c)
)
# The same, when the ordering provider changes: its account link is looked up again.
_UPDATE_ORDER_RELINKING = _UPDATE_ORDER.values(
    ordering_provider_user=provider_account(bindparam("link_provider")).scalar_subquery()
)
_RECORD_CHANGE = order_status_history.insert()


def _update(params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The update statement for these values, and its parameters."""
    if "ordering_provider_norm" not in params:
        return _UPDATE_ORDER, params
    return _UPDATE_ORDER_RELINKING, {**params, "link_provider": params["ordering_provider_norm"]}


def _record_change(
    conn: Connection, pk: int, from_status: str | None, to_status: str, changed_by: str, now: datetime, reason: str
) -> None:
    conn.execute(_RECORD_CHANGE, {"order_pk": pk, "from_status": from_status, "to_status": to_status,
                                  "changed_by": changed_by, "changed_at": now, "reason": reason})


def _filtered(stmt: Select[Any], where: OrderFilter) -> Select[Any]:
    exact = {
        orders.c.status: where.status,
        orders.c.modality: where.modality,
        orders.c.priority: where.priority,
        orders.c.patient_id: where.patient_id,
        orders.c.ordering_provider_norm: where.ordering_provider,
        orders.c.accession_number: where.accession_number,
        orders.c.study_instance_uid: where.study_instance_uid,
        orders.c.placer_order_number: where.placer_order_number,
    }
    for column, value in exact.items():
        if value is not None:
            stmt = stmt.where(column == value)
    if where.referred_by is not None:
        stmt = stmt.where(func.rtrim(orders.c.ordering_provider_norm, "^") == where.referred_by)
    if where.statuses is not None:
        stmt = stmt.where(orders.c.status.in_(where.statuses))
    if where.not_exported:
        stmt = stmt.where(orders.c.exported_at.is_(None))
    if where.exported:
        stmt = stmt.where(orders.c.exported_at.isnot(None))
    if where.scheduled_from is not None:
        stmt = stmt.where(orders.c.scheduled_at >= where.scheduled_from)
    if where.scheduled_to is not None:
        stmt = stmt.where(orders.c.scheduled_at < where.scheduled_to)
    return stmt


def _order(row: Any) -> Order:
    values = {name: getattr(row, name) for name in _ORDER_FIELDS}
    for name in ("contrast_required", "contrast_allergy_checked", "contrast_renal_checked"):
        values[name] = bool(values[name])
    for name in ("created_at", "updated_at", "scheduled_at", "exported_at"):
        if values[name] is not None:
            values[name] = as_utc(values[name])
    return Order(**values)
