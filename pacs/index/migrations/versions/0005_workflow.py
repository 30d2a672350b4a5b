"""order details, reference data, reconciliation, MPPS, HL7 messages, exports

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "body_parts",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_body_parts")),
    )
    op.create_table(
        "export_batches",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("destination", sa.String(length=512), server_default="", nullable=False),
        sa.Column("order_count", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_export_batches")),
    )
    op.create_table(
        "hl7_applied",
        sa.Column("sending_application", sa.String(length=227), nullable=False),
        sa.Column("sending_facility", sa.String(length=227), nullable=False),
        sa.Column("control_id", sa.String(length=64), nullable=False),
        sa.Column("message_pk", sa.Integer(), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sending_application", "sending_facility", "control_id", name=op.f("pk_hl7_applied")),
    )
    op.create_table(
        "modalities",
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_modalities")),
    )
    op.create_table(
        "body_part_modalities",
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["body_part"],
            ["body_parts.code"],
            name=op.f("fk_body_part_modalities_body_part_body_parts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["modality"],
            ["modalities.code"],
            name=op.f("fk_body_part_modalities_modality_modalities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("body_part", "modality", name=op.f("pk_body_part_modalities")),
    )
    op.create_table(
        "hl7_messages",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("peer", sa.String(length=64), server_default="", nullable=False),
        sa.Column("control_id", sa.String(length=64), nullable=True),
        sa.Column("sending_application", sa.String(length=227), nullable=True),
        sa.Column("sending_facility", sa.String(length=227), nullable=True),
        sa.Column("message_type", sa.String(length=16), nullable=True),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("outcome", sa.Text(), server_default="", nullable=False),
        sa.Column("duplicate", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("order_pk", sa.Integer(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_pk"], ["orders.pk"], name=op.f("fk_hl7_messages_order_pk_orders"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_hl7_messages")),
    )
    with op.batch_alter_table("hl7_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hl7_messages_received_at"), ["received_at"], unique=False)

    op.create_table(
        "order_exports",
        sa.Column("batch_pk", sa.Integer(), nullable=False),
        sa.Column("order_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_pk"],
            ["export_batches.pk"],
            name=op.f("fk_order_exports_batch_pk_export_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["order_pk"], ["orders.pk"], name=op.f("fk_order_exports_order_pk_orders"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("batch_pk", "order_pk", name=op.f("pk_order_exports")),
    )
    with op.batch_alter_table("order_exports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_exports_order_pk"), ["order_pk"], unique=False)

    op.create_table(
        "performed_procedure_steps",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("order_pk", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("performed_station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("performed_series", sa.Text(), server_default="[]", nullable=False),
        sa.Column("attributes_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_pk"], ["orders.pk"], name=op.f("fk_performed_procedure_steps_order_pk_orders"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("sop_instance_uid", name=op.f("pk_performed_procedure_steps")),
    )
    with op.batch_alter_table("performed_procedure_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_performed_procedure_steps_order_pk"), ["order_pk"], unique=False)

    op.create_table(
        "study_order_links",
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("order_pk", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("linked_by", sa.String(length=128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_pk"], ["orders.pk"], name=op.f("fk_study_order_links_order_pk_orders"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("study_instance_uid", name=op.f("pk_study_order_links")),
    )
    with op.batch_alter_table("study_order_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_order_links_order_pk"), ["order_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_study_order_links_state"), ["state"], unique=False)

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clinical_history", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("contrast_required", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("contrast_agent", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("contrast_allergy_checked", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("contrast_renal_checked", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("special_instructions", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("duration_minutes", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("location", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("performing_physician", sa.String(length=324), nullable=True))
        batch_op.add_column(sa.Column("ordering_provider_user", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("placer_order_number", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("filler_order_number", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("workitem_uid", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ups_transaction_uid", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("exported_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_orders_exported_at"), ["exported_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_placer_order_number"), ["placer_order_number"], unique=False)
        batch_op.create_unique_constraint(batch_op.f("uq_orders_workitem_uid"), ["workitem_uid"])

    _give_orders_workitem_uids()
    _seed_reference_data()


MODALITIES = {
    "CR": "Computed Radiography",
    "DX": "Digital Radiography",
    "CT": "Computed Tomography",
    "MR": "Magnetic Resonance",
    "US": "Ultrasound",
    "MG": "Mammography",
    "NM": "Nuclear Medicine",
    "PT": "Positron Emission Tomography",
    "XA": "X-Ray Angiography",
    "RF": "Radio Fluoroscopy",
}

# Body Part Examined defined terms (PS3.16 Annex L) with the modalities usually ordered for them.
_PROJECTION = ("CR", "DX")
BODY_PARTS = {
    "HEAD": ("Head", ("CT", "MR", *_PROJECTION)),
    "BRAIN": ("Brain", ("CT", "MR", "NM", "PT")),
    "NECK": ("Neck", ("CT", "MR", "US", *_PROJECTION)),
    "CSPINE": ("Cervical spine", ("CT", "MR", *_PROJECTION)),
    "TSPINE": ("Thoracic spine", ("CT", "MR", *_PROJECTION)),
    "LSPINE": ("Lumbar spine", ("CT", "MR", *_PROJECTION)),
    "CHEST": ("Chest", ("CT", "MR", "NM", "PT", *_PROJECTION)),
    "BREAST": ("Breast", ("MG", "MR", "US")),
    "HEART": ("Heart", ("CT", "MR", "NM", "US", "XA")),
    "ABDOMEN": ("Abdomen", ("CT", "MR", "US", "RF", *_PROJECTION)),
    "PELVIS": ("Pelvis", ("CT", "MR", "US", *_PROJECTION)),
    "KIDNEY": ("Kidney", ("CT", "MR", "NM", "US")),
    "LIVER": ("Liver", ("CT", "MR", "US")),
    "SHOULDER": ("Shoulder", ("CT", "MR", "US", *_PROJECTION)),
    "ELBOW": ("Elbow", ("CT", "MR", *_PROJECTION)),
    "HAND": ("Hand", ("CT", "MR", *_PROJECTION)),
    "HIP": ("Hip", ("CT", "MR", *_PROJECTION)),
    "KNEE": ("Knee", ("CT", "MR", *_PROJECTION)),
    "ANKLE": ("Ankle", ("CT", "MR", *_PROJECTION)),
    "FOOT": ("Foot", ("CT", "MR", *_PROJECTION)),
    "EXTREMITY": ("Extremity", ("CT", "MR", "US", "XA", *_PROJECTION)),
    "WHOLEBODY": ("Whole body", ("CT", "MR", "NM", "PT")),
    "ESOPHAGUS": ("Esophagus", ("RF",)),
    "COLON": ("Colon", ("CT", "RF")),
    "THYROID": ("Thyroid", ("NM", "US")),
    "CAROTID": ("Carotid artery", ("CT", "MR", "US", "XA")),
}


def _give_orders_workitem_uids() -> None:
    from pydicom.uid import generate_uid

    conn = op.get_bind()
    orders = sa.table("orders", sa.column("pk", sa.Integer), sa.column("workitem_uid", sa.String))
    for (pk,) in conn.execute(sa.select(orders.c.pk).where(orders.c.workitem_uid.is_(None))).all():
        conn.execute(orders.update().where(orders.c.pk == pk).values(workitem_uid=generate_uid()))


def _seed_reference_data() -> None:
    modalities = sa.table("modalities", sa.column("code", sa.String), sa.column("display_name", sa.String))
    body_parts = sa.table("body_parts", sa.column("code", sa.String), sa.column("display_name", sa.String))
    links = sa.table("body_part_modalities", sa.column("body_part", sa.String), sa.column("modality", sa.String))
    op.bulk_insert(modalities, [{"code": c, "display_name": n} for c, n in MODALITIES.items()])
    op.bulk_insert(body_parts, [{"code": c, "display_name": n} for c, (n, _) in BODY_PARTS.items()])
    op.bulk_insert(links, [{"body_part": c, "modality": m} for c, (_, applies) in BODY_PARTS.items() for m in applies])


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_orders_workitem_uid"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_orders_placer_order_number"))
        batch_op.drop_index(batch_op.f("ix_orders_exported_at"))
        batch_op.drop_column("exported_at")
        batch_op.drop_column("ups_transaction_uid")
        batch_op.drop_column("workitem_uid")
        batch_op.drop_column("filler_order_number")
        batch_op.drop_column("placer_order_number")
        batch_op.drop_column("ordering_provider_user")
        batch_op.drop_column("performing_physician")
        batch_op.drop_column("location")
        batch_op.drop_column("duration_minutes")
        batch_op.drop_column("special_instructions")
        batch_op.drop_column("contrast_renal_checked")
        batch_op.drop_column("contrast_allergy_checked")
        batch_op.drop_column("contrast_agent")
        batch_op.drop_column("contrast_required")
        batch_op.drop_column("clinical_history")

    with op.batch_alter_table("study_order_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_order_links_state"))
        batch_op.drop_index(batch_op.f("ix_study_order_links_order_pk"))

    op.drop_table("study_order_links")
    with op.batch_alter_table("performed_procedure_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_performed_procedure_steps_order_pk"))

    op.drop_table("performed_procedure_steps")
    with op.batch_alter_table("order_exports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_exports_order_pk"))

    op.drop_table("order_exports")
    with op.batch_alter_table("hl7_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hl7_messages_received_at"))

    op.drop_table("hl7_messages")
    op.drop_table("body_part_modalities")
    op.drop_table("modalities")
    op.drop_table("hl7_applied")
    op.drop_table("export_batches")
    op.drop_table("body_parts")
