"""Tables of the index. Columns are named after DICOM keywords in snake case.

Study and series counters and ModalitiesInStudy are computed when a result page is rendered,
not stored: concurrent ingest can then never leave them wrong.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

from pacs.dicom.attributes import INTEGER_VRS, Level, level_attributes

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_LENGTHS = {"UI": 64, "DA": 8, "TM": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 324}


def _columns(level: Level) -> list[Column]:
    columns: list[Column] = []
    for attr in level_attributes(level):
        if attr.computed or attr.column in _KEY_COLUMNS:
            continue
        if attr.vr in INTEGER_VRS:
            columns.append(Column(attr.column, Integer))
        else:
            columns.append(Column(attr.column, String(_LENGTHS.get(attr.vr, 64))))
        if attr.vr == "PN":  # upper-cased copy: person names match case-insensitively
            columns.append(Column(f"{attr.column}_norm", String(324)))
    return columns


_KEY_COLUMNS = {"patient_id", "issuer_of_patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid"}

patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer_of_patient_id", String(64), nullable=False),
    *_columns(Level.PATIENT),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("patient_id", "issuer_of_patient_id"),
)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("patient_pk", Integer, ForeignKey("patients.pk"), nullable=False, index=True),
    *_columns(Level.STUDY),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False, index=True),
    *_columns(Level.SERIES),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False, index=True),
    *_columns(Level.INSTANCE),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", String(512), nullable=False),
    Column("blob_size", BigInteger, nullable=False),
    Column("metadata_json", Text, nullable=False),  # DICOM JSON, bulk data as BulkDataURIs
    Column("frame_layout", Text),  # JSON, see pacs.dicom.frames
    Column("pixel_offset", BigInteger),
    Column("pixel_length", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

remote_aes = Table(
    "remote_aes",
    metadata,
    Column("ae_title", String(16), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # What the AE may do when it calls us (see pacs.security.roles): a role, narrowed by access.
    Column("role", String(16), nullable=False, server_default="technologist"),
    Column("access", String(16), nullable=False, server_default="all"),
)

users = Table(
    "users",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(255)),  # argon2id; NULL: token-only account
    Column("provider_name", String(324)),  # providers: the ReferringPhysicianName (upper case) of their studies
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# API tokens and browser sessions: only a SHA-256 of the secret is kept.
tokens = Table(
    "tokens",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user_pk", Integer, ForeignKey("users.pk", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(8), nullable=False),  # "api" or "session"
    Column("label", String(128), nullable=False, server_default=""),
    Column("scopes", String(512), nullable=False, server_default=""),  # comma-separated; empty: the role's
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("subject", String(128), nullable=False),  # "user:NAME" or "address:IP"
    Column("failed_at", DateTime(timezone=True), nullable=False),
    Index("ix_login_failures_subject_failed_at", "subject", "failed_at"),
)

# Append-only: the database refuses UPDATE, and DELETE of events younger than the retention
# period recorded in audit_policy (triggers created by migration 0003).
audit_events = Table(
    "audit_events",
    metadata,
    Column("pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False, index=True),
    Column("channel", String(8), nullable=False),  # http, dimse, cli
    Column("actor", String(128), nullable=False),  # user name, "AE:TITLE", or "anonymous"
    Column("actor_role", String(16), nullable=False, server_default=""),
    Column("source", String(64), nullable=False, server_default=""),  # client address
    Column("action", String(16), nullable=False),  # search, read, store, delete, export, login, admin
    Column("outcome", String(16), nullable=False),  # success, failure, denied, unauthenticated
    Column("status", Integer),  # HTTP or DIMSE status
    Column("patient_id", String(64), index=True),
    Column("study_uid", String(64), index=True),
    Column("series_uid", String(64)),
    Column("sop_uid", String(64)),
    Column("count", Integer, nullable=False, server_default="1"),  # identical accesses folded into one row
    Column("detail", Text, nullable=False, server_default="{}"),  # JSON: query, target, counts
    Index("ix_audit_events_actor_occurred_at", "actor", "occurred_at"),
)

audit_policy = Table(
    "audit_policy",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("retention_days", Integer, nullable=False),
)

# Imaging orders (see worklist.orders for their workflow). Numbers come from order_counters.
orders = Table(
    "orders",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("order_number", String(16), nullable=False, unique=True),  # ORD-YYYY-NNNNN
    Column("accession_number", String(16), nullable=False, unique=True),  # ACC-YYYY-NNNNN or external (SH)
    Column("patient_id", String(64), nullable=False, index=True),
    Column("issuer_of_patient_id", String(64), nullable=False, server_default=""),
    Column("patient_name", String(324), nullable=False),
    Column("patient_name_norm", String(324), index=True),  # upper case: worklist names match case-insensitively
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("ordering_provider", String(324)),
    Column("ordering_provider_norm", String(324), index=True),  # links providers to their orders
    Column("modality", String(16), nullable=False),
    Column("body_part", String(64)),
    Column("laterality", String(16)),
    Column("procedure_code", String(64)),
    Column("procedure_description", String(64)),
    Column("priority", String(16), nullable=False),
    Column("clinical_indication", Text),
    Column("scheduled_at", DateTime(timezone=True), index=True),
    Column("station_ae_title", String(16)),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("clinical_history", Text),
    Column("contrast_required", Boolean, nullable=False, server_default="0"),
    Column("contrast_agent", String(64)),
    Column("contrast_allergy_checked", Boolean, nullable=False, server_default="0"),
    Column("contrast_renal_checked", Boolean, nullable=False, server_default="0"),
    Column("special_instructions", Text),
    Column("duration_minutes", Integer),
    Column("location", String(64)),
    Column("performing_physician", String(324)),
    Column("performing_physician_norm", String(324)),  # upper case, as patient_name_norm
    Column("ordering_provider_user", String(128)),  # the provider account, when one has that name
    Column("placer_order_number", String(64), index=True),  # ORC-2 / OBR-2 of an HL7 order
    Column("filler_order_number", String(64)),
    Column("workitem_uid", String(64), unique=True),  # UPS-RS workitem and MWL SPS, one per order
    Column("ups_transaction_uid", String(64)),  # the performer's lock while IN PROGRESS (PS3.4 CC.1.1)
    Column("exported_at", DateTime(timezone=True), index=True),  # last export; NULL: not yet exported
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", String(128), nullable=False),
)

order_status_history = Table(
    "order_status_history",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("order_pk", Integer, ForeignKey("orders.pk", ondelete="CASCADE"), nullable=False, index=True),
    Column("from_status", String(16)),  # NULL: the order was created
    Column("to_status", String(16), nullable=False),
    Column("changed_by", String(128), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
)

# The last number handed out per kind ("ORD", "ACC") and year; bumped with an upsert in the
# transaction that inserts the order, so concurrent writers never share a number.
order_counters = Table(
    "order_counters",
    metadata,
    Column("kind", String(8), nullable=False),
    Column("year", Integer, nullable=False),
    Column("last", Integer, nullable=False),
    PrimaryKeyConstraint("kind", "year"),
)

# Modalities and body parts that may be ordered; seeded by migration 0005, editable by admins.
modalities = Table(
    "modalities",
    metadata,
    Column("code", String(16), primary_key=True),  # DICOM Modality (0008,0060)
    Column("display_name", String(64), nullable=False),
    Column("active", Boolean, nullable=False, server_default="1"),
)

body_parts = Table(
    "body_parts",
    metadata,
    Column("code", String(64), primary_key=True),  # Body Part Examined (0018,0015), PS3.16 Annex L
    Column("display_name", String(64), nullable=False),
    Column("active", Boolean, nullable=False, server_default="1"),
)

body_part_modalities = Table(
    "body_part_modalities",
    metadata,
    Column("body_part", String(64), ForeignKey("body_parts.code", ondelete="CASCADE"), nullable=False),
    Column("modality", String(16), ForeignKey("modalities.code", ondelete="CASCADE"), nullable=False),
    PrimaryKeyConstraint("body_part", "modality"),
)

# Which order a stored study belongs to. One row per study seen by ingest: LINKED (order_pk
# set), UNMATCHED (no order found; staff may link it) or DISMISSED (staff chose to leave it).
study_order_links = Table(
    "study_order_links",
    metadata,
    Column("study_instance_uid", String(64), primary_key=True),
    Column("order_pk", Integer, ForeignKey("orders.pk", ondelete="SET NULL"), index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("accession_number", String(16)),  # as received in the images
    Column("linked_by", String(128)),  # "auto" when matched at ingest
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Modality Performed Procedure Steps received by N-CREATE / N-SET (PS3.4 F).
performed_procedure_steps = Table(
    "performed_procedure_steps",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("order_pk", Integer, ForeignKey("orders.pk", ondelete="SET NULL"), index=True),
    Column("status", String(16), nullable=False),  # IN PROGRESS, COMPLETED, DISCONTINUED
    Column("calling_ae_title", String(16), nullable=False),
    Column("performed_station_ae_title", String(16)),
    Column("modality", String(16)),
    Column("study_instance_uid", String(64)),
    Column("accession_number", String(16)),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("performed_series", Text, nullable=False, server_default="[]"),  # JSON list of series
    Column("attributes_json", Text, nullable=False),  # DICOM JSON of the whole step as last set
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Every HL7 v2 message received, kept raw with its outcome for troubleshooting.
hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("peer", String(64), nullable=False, server_default=""),
    Column("control_id", String(64)),  # MSH-10
    Column("sending_application", String(227)),  # MSH-3
    Column("sending_facility", String(227)),  # MSH-4
    Column("message_type", String(16)),  # e.g. ORM^O01
    Column("ack_code", String(2), nullable=False),  # AA, AE, AR
    Column("outcome", Text, nullable=False, server_default=""),  # what was done, or why not
    Column("duplicate", Boolean, nullable=False, server_default="0"),
    Column("order_pk", Integer, ForeignKey("orders.pk", ondelete="SET NULL")),
    Column("raw", Text, nullable=False),
)

# One row per message control ID applied, so a re-sent message is applied once (and answered
# with the first answer). Written in the transaction that applies the message.
hl7_applied = Table(
    "hl7_applied",
    metadata,
    Column("sending_application", String(227), nullable=False),
    Column("sending_facility", String(227), nullable=False),
    Column("control_id", String(64), nullable=False),
    Column("message_pk", Integer, nullable=False),
    Column("ack_code", String(2), nullable=False),
    Column("outcome", Text, nullable=False),
    PrimaryKeyConstraint("sending_application", "sending_facility", "control_id"),
)

# Order exports for sites that re-key orders into another RIS: who, when, format, destination.
export_batches = Table(
    "export_batches",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("format", String(8), nullable=False),  # csv, hl7, pdf
    Column("destination", String(512), nullable=False, server_default=""),
    Column("order_count", Integer, nullable=False),
    Column("blob_key", String(512)),  # the exported file, kept in the blob store
)

order_exports = Table(
    "order_exports",
    metadata,
    Column("batch_pk", Integer, ForeignKey("export_batches.pk", ondelete="CASCADE"), nullable=False),
    Column("order_pk", Integer, ForeignKey("orders.pk", ondelete="CASCADE"), nullable=False, index=True),
    PrimaryKeyConstraint("batch_pk", "order_pk"),
)

Index("ix_patients_patient_name_norm", patients.c.patient_name_norm)
Index("ix_patients_patient_birth_date", patients.c.patient_birth_date)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_accession_number", studies.c.accession_number)
Index("ix_studies_referring_physician_name_norm", studies.c.referring_physician_name_norm)
Index("ix_studies_study_id", studies.c.study_id)
Index("ix_series_modality_study_pk", series.c.modality, series.c.study_pk)
Index("ix_instances_sop_class_uid", instances.c.sop_class_uid)
Index("ix_orders_station_ae_title_scheduled_at", orders.c.station_ae_title, orders.c.scheduled_at)  # MWL by station and day

TABLES = {Level.PATIENT: patients, Level.STUDY: studies, Level.SERIES: series, Level.INSTANCE: instances}
