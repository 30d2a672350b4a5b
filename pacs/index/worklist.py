"""The Modality Worklist's SQL: open orders matching the indexed keys of a worklist query.
The keys are parsed (and the rest matched) in worklist.mwl_query; this module only reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, select

from pacs.dicom.query import Condition
from pacs.index.database import read_transaction
from pacs.index.orders import Order, _order
from pacs.index.schema import orders
from pacs.index.search import column_matches

# Orders a modality may still perform: ordered (not yet given a slot), scheduled, or started.
WORKLIST_STATUSES = ("ORDERED", "SCHEDULED", "IN_PROGRESS")


class WorklistRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open_orders(
        self, conditions: Sequence[Condition], *, scheduled_from: datetime | None = None,
        scheduled_before: datetime | None = None, require_schedule: bool = False,
    ) -> list[Order]:
        """Open orders meeting every condition (each names its orders column), scheduled in
        [scheduled_from, scheduled_before) when given, earliest first (unscheduled last)."""
        stmt = select(orders).where(orders.c.status.in_(WORKLIST_STATUSES))
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
