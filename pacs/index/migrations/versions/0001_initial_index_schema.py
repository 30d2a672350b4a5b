"""initial index schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 00:27:42.792857
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patients',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=True),
    sa.Column('patient_name_norm', sa.String(length=324), nullable=True),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=True),
    sa.Column('patient_sex', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_patients')),
    sa.UniqueConstraint('patient_id', 'issuer_of_patient_id', name=op.f('uq_patients_patient_id_issuer_of_patient_id'))
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index('ix_patients_patient_birth_date', ['patient_birth_date'], unique=False)
        batch_op.create_index('ix_patients_patient_name_norm', ['patient_name_norm'], unique=False)

    op.create_table('studies',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('study_id', sa.String(length=16), nullable=True),
    sa.Column('study_description', sa.String(length=64), nullable=True),
    sa.Column('referring_physician_name', sa.String(length=324), nullable=True),
    sa.Column('referring_physician_name_norm', sa.String(length=324), nullable=True),
    sa.Column('timezone_offset_from_utc', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.pk'], name=op.f('fk_studies_patient_pk_patients')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_studies_study_instance_uid'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index('ix_studies_accession_number', ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_pk'), ['patient_pk'], unique=False)
        batch_op.create_index('ix_studies_referring_physician_name_norm', ['referring_physician_name_norm'], unique=False)
        batch_op.create_index('ix_studies_study_date', ['study_date'], unique=False)
        batch_op.create_index('ix_studies_study_id', ['study_id'], unique=False)

    op.create_table('series',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=True),
    sa.Column('series_date', sa.String(length=8), nullable=True),
    sa.Column('series_time', sa.String(length=16), nullable=True),
    sa.Column('performed_procedure_step_start_date', sa.String(length=8), nullable=True),
    sa.Column('performed_procedure_step_start_time', sa.String(length=16), nullable=True),
    sa.Column('body_part_examined', sa.String(length=16), nullable=True),
    sa.Column('scheduled_procedure_step_id', sa.String(length=16), nullable=True),
    sa.Column('requested_procedure_id', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.pk'], name=op.f('fk_series_study_pk_studies')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index('ix_series_modality_study_pk', ['modality', 'study_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_pk'), ['study_pk'], unique=False)

    op.create_table('instances',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=True),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('bits_allocated', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('blob_key', sa.String(length=512), nullable=False),
    sa.Column('blob_size', sa.BigInteger(), nullable=False),
    sa.Column('metadata_json', sa.Text(), nullable=False),
    sa.Column('frame_layout', sa.Text(), nullable=True),
    sa.Column('pixel_offset', sa.BigInteger(), nullable=True),
    sa.Column('pixel_length', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['series_pk'], ['series.pk'], name=op.f('fk_instances_series_pk_series')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instances_sop_instance_uid'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_series_pk'), ['series_pk'], unique=False)
        batch_op.create_index('ix_instances_sop_class_uid', ['sop_class_uid'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_sop_class_uid')
        batch_op.drop_index(batch_op.f('ix_instances_series_pk'))

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk'))
        batch_op.drop_index('ix_series_modality_study_pk')

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index('ix_studies_study_id')
        batch_op.drop_index('ix_studies_study_date')
        batch_op.drop_index('ix_studies_referring_physician_name_norm')
        batch_op.drop_index(batch_op.f('ix_studies_patient_pk'))
        batch_op.drop_index('ix_studies_accession_number')

    op.drop_table('studies')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index('ix_patients_patient_name_norm')
        batch_op.drop_index('ix_patients_patient_birth_date')

    op.drop_table('patients')
