"""UPS-RS Search (PS3.18 11.9) over the orders table: matching conditions on order columns,
compiled with the same matching rules as QIDO-RS (PS3.4 C.2.2.2)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, func, select

from pacs.dicom.query import Condition, MatchKind
from pacs.index.database import read_transaction
from pacs.index.orders import Order
from pacs.index.orders import _order as order_from_row
from pacs.index.schema import orders
from pacs.index.search import wildcard_to_like

# Person names match case-insensitively on their upper-cased copies.
_NORMALISED = {"patient_name": "patient_name_norm", "performing_physician": "performing_physician_norm",
               "ordering_provider": "ordering_provider_norm"}


@dataclass(frozen=True)
class WorkitemQuery:
    conditions: tuple[Condition, ...] = ()  # attribute.column names an orders column
    statuses: tuple[str, ...] | None = None  # order statuses (from ProcedureStepState)
    priorities: tuple[str, ...] | None = None
    scheduled_from: datetime | None = None  # inclusive
    scheduled_to: datetime | None = None  # exclusive
    referred_by: str | None = None  # providers: only their orders
    limit: int = 100
    offset: int = 0


class WorkitemIndex:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def search(self, query: WorkitemQuery) -> list[Order]:
        """Matching orders, soonest scheduled first (unscheduled ones by when they were placed)."""
        stmt = select(orders).where(*_clauses(query))
        when = func.coalesce(orders.c.scheduled_at, orders.c.created_at)
        stmt = stmt.order_by(when, orders.c.pk).limit(query.limit).offset(query.offset)
        with read_transaction(self.engine) as conn:
            return [order_from_row(row) for row in conn.execute(stmt)]


def _clauses(query: WorkitemQuery) -> list[ColumnElement[bool]]:
    clauses = [_match(condition) for condition in query.conditions]
    if query.statuses is not None:
        clauses.append(orders.c.status.in_(query.statuses))
    if query.priorities is not None:
        clauses.append(orders.c.priority.in_(query.priorities))
    # An order with no time yet shows its creation time as its start (see worklist.ups).
    when = func.coalesce(orders.c.scheduled_at, orders.c.created_at)
    if query.scheduled_from is not None:
        clauses.append(when >= query.scheduled_from)
    if query.scheduled_to is not None:
        clauses.append(when < query.scheduled_to)
    if query.referred_by is not None:
        clauses.append(func.rtrim(orders.c.ordering_provider_norm, "^") == query.referred_by)
    return clauses


def _match(condition: Condition) -> ColumnElement[bool]:
    name = condition.attribute.column
    values: tuple[Any, ...] = condition.values
    column: Any = orders.c[name]
    if condition.attribute.vr == "PN":
        column, values = orders.c[_NORMALISED[name]], tuple(v.upper() for v in values)
    if condition.kind == MatchKind.LIST:
        return column.in_(values)
    if condition.kind == MatchKind.RANGE:  # dates (DA), compared as YYYYMMDD text
        low, high = values
        parts = [column.isnot(None)]
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    if condition.kind == MatchKind.WILDCARD:
        return column.like(wildcard_to_like(values[0]), escape="\\")
    return column == values[0]

