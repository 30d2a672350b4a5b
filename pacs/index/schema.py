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

Index("ix_patients_patient_name_norm", patients.c.patient_name_norm)
Index("ix_patients_patient_birth_date", patients.c.patient_birth_date)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_accession_number", studies.c.accession_number)
Index("ix_studies_referring_physician_name_norm", studies.c.referring_physician_name_norm)
Index("ix_studies_study_id", studies.c.study_id)
Index("ix_series_modality_study_pk", series.c.modality, series.c.study_pk)
Index("ix_instances_sop_class_uid", instances.c.sop_class_uid)

TABLES = {Level.PATIENT: patients, Level.STUDY: studies, Level.SERIES: series, Level.INSTANCE: instances}
