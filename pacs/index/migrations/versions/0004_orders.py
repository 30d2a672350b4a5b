"""imaging orders, their status history, and the yearly number counters

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_counters",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "year", name=op.f("pk_order_counters")),
    )
    op.create_table(
        "orders",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_number", sa.String(length=16), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=False),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("ordering_provider", sa.String(length=324), nullable=True),
        sa.Column("ordering_provider_norm", sa.String(length=324), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("laterality", sa.String(length=16), nullable=True),
        sa.Column("procedure_code", sa.String(length=64), nullable=True),
        sa.Column("procedure_description", sa.String(length=64), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("clinical_indication", sa.Text(), nullable=True),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_orders")),
        sa.UniqueConstraint("accession_number", name=op.f("uq_orders_accession_number")),
        sa.UniqueConstraint("order_number", name=op.f("uq_orders_order_number")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_orders_study_instance_uid")),
    )
    op.create_index(op.f("ix_orders_ordering_provider_norm"), "orders", ["ordering_provider_norm"], unique=False)
    op.create_index(op.f("ix_orders_patient_id"), "orders", ["patient_id"], unique=False)
    op.create_index(op.f("ix_orders_scheduled_at"), "orders", ["scheduled_at"], unique=False)
    op.create_index(op.f("ix_orders_status"), "orders", ["status"], unique=False)
    op.create_table(
        "order_status_history",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_pk", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("changed_by", sa.String(length=128), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(
            ["order_pk"], ["orders.pk"], name=op.f("fk_order_status_history_order_pk_orders"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_order_status_history")),
    )
    op.create_index(
        op.f("ix_order_status_history_order_pk"), "order_status_history", ["order_pk"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_order_status_history_order_pk"), table_name="order_status_history")
    op.drop_table("order_status_history")
    op.drop_index(op.f("ix_orders_status"), table_name="orders")
    op.drop_index(op.f("ix_orders_scheduled_at"), table_name="orders")
    op.drop_index(op.f("ix_orders_patient_id"), table_name="orders")
    op.drop_index(op.f("ix_orders_ordering_provider_norm"), table_name="orders")
    op.drop_table("orders")
    op.drop_table("order_counters")
