"""worklist matching: upper-cased person names of orders, station and schedule index

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_name_norm", sa.String(length=324), nullable=True))
        batch_op.add_column(sa.Column("performing_physician_norm", sa.String(length=324), nullable=True))
        batch_op.create_index(batch_op.f("ix_orders_patient_name_norm"), ["patient_name_norm"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_orders_station_ae_title_scheduled_at"), ["station_ae_title", "scheduled_at"], unique=False
        )
    _fill_norms()


def _fill_norms() -> None:
    # Upper-cased in Python, as ingest does for studies: SQLite's upper() knows only ASCII.
    conn = op.get_bind()
    orders = sa.table(
        "orders", sa.column("pk", sa.Integer), sa.column("patient_name", sa.String),
        sa.column("patient_name_norm", sa.String), sa.column("performing_physician", sa.String),
        sa.column("performing_physician_norm", sa.String),
    )
    rows = conn.execute(sa.select(orders.c.pk, orders.c.patient_name, orders.c.performing_physician)).all()
    for pk, name, performer in rows:
        conn.execute(
            orders.update().where(orders.c.pk == pk).values(
                patient_name_norm=name.upper() if name else None,
                performing_physician_norm=performer.upper() if performer else None,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_station_ae_title_scheduled_at"))
        batch_op.drop_index(batch_op.f("ix_orders_patient_name_norm"))
        batch_op.drop_column("performing_physician_norm")
        batch_op.drop_column("patient_name_norm")
