"""Order export batches in the index: who exported which orders, when, in what format, to where,
and the file kept in the blob store. The rules (what is exported again) live in worklist.export."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from pacs.errors import Conflict, NotFound
from pacs.index.accounts import as_utc
from pacs.index.database import read_transaction, write_transaction
from pacs.index.orders import Order
from pacs.index.orders import _order as order_from_row
from pacs.index.schema import export_batches, order_exports, orders


@dataclass(frozen=True)
class ExportedOrder:
    pk: int
    order_number: str
    patient_id: str


@dataclass(frozen=True)
class ExportBatch:
    pk: int
    created_at: datetime
    created_by: str
    format: str
    destination: str
    order_count: int
    blob_key: str | None
    orders: tuple[ExportedOrder, ...] = ()


class ExportRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def orders(self, pks: Sequence[int]) -> list[Order]:
        """The orders with these keys (those that exist), oldest first."""
        stmt = select(orders).where(orders.c.pk.in_(list(pks))).order_by(orders.c.pk)
        with read_transaction(self.engine) as conn:
            return [order_from_row(row) for row in conn.execute(stmt)]

    def not_exported(self, limit: int) -> list[Order]:
        stmt = select(orders).where(orders.c.exported_at.is_(None)).order_by(orders.c.pk).limit(limit)
        with read_transaction(self.engine) as conn:
            return [order_from_row(row) for row in conn.execute(stmt)]

    def record(
        self, *, created_by: str, format: str, destination: str, blob_key: str, exported: Sequence[Order],
        again: bool, now: datetime,
    ) -> ExportBatch:
        """The batch, its orders, and their exported_at, in one transaction. Unless `again`, an
        order exported meanwhile by someone else makes the whole batch a Conflict."""
        pks = [order.pk for order in exported]
        with write_transaction(self.engine) as conn:
            stmt = update(orders).where(orders.c.pk.in_(pks))
            if not again:
                stmt = stmt.where(orders.c.exported_at.is_(None))
            if conn.execute(stmt.values(exported_at=now)).rowcount != len(pks):
                raise Conflict("some of these orders were exported meanwhile; ask again")
            values = {"created_at": now, "created_by": created_by, "format": format, "destination": destination,
                          "order_count": len(pks), "blob_key": blob_key}
            pk = conn.execute(export_batches.insert().values(**values).returning(export_batches.c.pk)).scalar_one()
            conn.execute(order_exports.insert(), [{"batch_pk": pk, "order_pk": order_pk} for order_pk in pks])
            return _batch_with_orders(conn, pk)

    def batch(self, pk: int) -> ExportBatch:
        with read_transaction(self.engine) as conn:
            return _batch_with_orders(conn, pk)

    def batches(self, *, order_pk: int | None = None, limit: int = 100, offset: int = 0) -> list[ExportBatch]:
        """Newest first; with `order_pk`, only the batches that exported that order."""
        stmt = select(export_batches)
        if order_pk is not None:
            stmt = stmt.join(order_exports, order_exports.c.batch_pk == export_batches.c.pk).where(
                order_exports.c.order_pk == order_pk
            )
        stmt = stmt.order_by(export_batches.c.pk.desc()).limit(limit).offset(offset)
        with read_transaction(self.engine) as conn:
            return [_batch(row) for row in conn.execute(stmt)]


def _batch_with_orders(conn: Connection, pk: int) -> ExportBatch:
    row = conn.execute(select(export_batches).where(export_batches.c.pk == pk)).first()
    if row is None:
        raise NotFound(f"no export batch {pk}")
    stmt = (
        select(orders.c.pk, orders.c.order_number, orders.c.patient_id)
        .join(order_exports, order_exports.c.order_pk == orders.c.pk)
        .where(order_exports.c.batch_pk == pk)
        .order_by(orders.c.pk)
    )
    exported = tuple(ExportedOrder(r.pk, r.order_number, r.patient_id) for r in conn.execute(stmt))
    batch = _batch(row)
    return ExportBatch(**{**batch.__dict__, "orders": exported})


def _batch(row: Any) -> ExportBatch:
    return ExportBatch(
        pk=row.pk, created_at=as_utc(row.created_at), created_by=row.created_by, format=row.format,
        destination=row.destination, order_count=row.order_count, blob_key=row.blob_key,
    )
