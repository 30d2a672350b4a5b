"""The Modality Worklist's SQL: open orders matching the indexed keys of a worklist query.
The keys are parsed (and the rest matched) in worklist.mwl_query; this module only reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from pacs.dicom.query import Condition
from pacs.index.accounts import as_utc
from pacs.index.database import read_transaction
from pacs.index.orders import Order
from pacs.index.schema import orders
from pacs.index.search import column_matches

# Orders a modality may still perform: ordered (not yet given a slot), scheduled, or started.
WORKLIST_STATUSES = ("ORDERED", "SCHEDULED", "IN_PROGRESS")
# The Order fields in order, selected as columns: rows become Orders positionally, which costs a
# tenth of reading them by name (a worklist answer is dozens of orders, each query).
_FIELDS = [f.name for f in fields(Order)]
_COLUMNS = [orders.c[name] for name in _FIELDS]
_FLAGS = [i for i, name in enumerate(_FIELDS) if name.startswith("contrast_") and name != "contrast_agent"]
_TIMES = [i for i, name in enumerate(_FIELDS) if name in ("created_at", "updated_at", "scheduled_at", "exported_at")]


class WorklistRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open_orders(
        self, conditions: Sequence[Condition], *, scheduled_from: datetime | None = None,
        scheduled_before: datetime | None = None, require_schedule: bool = False,
    ) -> list[Order]:
        """Open orders meeting every condition (each names its orders column), scheduled in
        [scheduled_from, scheduled_before) when given, earliest first (unscheduled last)."""
        stmt = select(*_COLUMNS).where(orders.c.status.in_(WORKLIST_STATUSES))
        for condition in conditions:
            stmt = stmt.where(column_matches(orders.c[condition.attribute.column], condition))
        if require_schedule:
            stmt = stmt.where(orders.c.scheduled_at.is_not(None))
        if scheduled_from is not None:
            stmt = stmt.where(orders.c.scheduled_at >= scheduled_from)
        if scheduled_before is not None:
            stmt = stmt.where(orders.c.scheduled_at < scheduled_before)
        stmt = stmt.order_by(orders.c.scheduled_at.is_(None), orders.c.scheduled_at, orders.c.pk)
        with read_transaction(self.engine) as conn:
            return [_order(row) for row in conn.execute(stmt)]


def _order(row: Any) -> Order:
    """As pacs.index.orders reads an order: flags as booleans, times in UTC."""
    values = list(row)
    for i in _FLAGS:
        values[i] = bool(values[i])
    for i in _TIMES:
        if values[i] is not None:
            values[i] = as_utc(values[i])
    return Order(*values)
