"""Order reads and writes that only HL7 intake needs: whether a placer order number is taken
(asked for every new order, so one lean query), and moving a patient's orders to another patient
ID when two patient records are merged (ADT^A40). The rules live in worklist.hl7.intake."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, or_, select, update

from pacs.index.database import read_transaction, write_transaction
from pacs.index.orders import with_name_norms
from pacs.index.schema import orders

_BY_PLACER = select(orders.c.order_number).where(orders.c.placer_order_number == bindparam("placer")).limit(1)


class Hl7OrderRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def order_with_placer_number(self, placer: str) -> str | None:
        """The order number of an order with this placer order number, if there is one."""
        with read_transaction(self.engine) as conn:
            return conn.execute(_BY_PLACER, {"placer": placer}).scalar()

    def reassign_patient(self, prior: tuple[str, str], values: dict[str, Any], *, now: datetime) -> list[str]:
        """Give every order of the prior patient (ID, issuer) the new patient's `values`
        (patient_id, issuer_of_patient_id and demographics), open and closed alike: the prior
        ID no longer names anyone. An empty issuer on either side matches any. The order
        numbers moved, in one transaction."""
        prior_id, prior_issuer = prior
        where = [orders.c.patient_id == prior_id]
        if prior_issuer:
            where.append(or_(orders.c.issuer_of_patient_id == prior_issuer, orders.c.issuer_of_patient_id == ""))
        with write_transaction(self.engine) as conn:
            found = conn.execute(select(orders.c.pk, orders.c.order_number).where(*where).order_by(orders.c.pk)).all()
            if found:
                pks = [row.pk for row in found]
                # with_name_norms: the worklist matches names on their upper-cased copies.
                conn.execute(update(orders).where(orders.c.pk.in_(pks)).values(**with_name_norms(values), updated_at=now))
            return [row.order_number for row in found]
