"""Tables of the index. Columns are named after DICOM keywords in snake case.

Study and series counters and ModalitiesInStudy are computed when a result page is rendered,
not stored: concurrent ingest can then never leave them wrong.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
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
