"""users, tokens, login failures, the audit trail, and what each remote AE may do

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DEFAULT_RETENTION_DAYS = 2557

# The audit trail is append-only to the application: no UPDATE at all, and DELETE only of
# events older than the retention period (the purge).
_SQLITE_TRIGGERS = [
    """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
    """CREATE TRIGGER audit_events_retention BEFORE DELETE ON audit_events
       WHEN OLD.occurred_at > datetime('now', '-' || (SELECT retention_days FROM audit_policy WHERE pk = 1) || ' days')
       BEGIN SELECT RAISE(ABORT, 'audit events younger than the retention period cannot be deleted'); END""",
]
_POSTGRES_TRIGGERS = [
    """CREATE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF TG_OP = 'UPDATE' THEN
           RAISE EXCEPTION 'audit events are append-only';
         END IF;
         IF OLD.occurred_at > now() - make_interval(days => (SELECT retention_days FROM audit_policy WHERE pk = 1)) THEN
           RAISE EXCEPTION 'audit events younger than the retention period cannot be deleted';
         END IF;
         RETURN OLD;
       END $$""",
    """CREATE TRIGGER audit_events_guard BEFORE UPDATE OR DELETE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION audit_events_guard()""",
]


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("actor_role", sa.String(length=16), server_default="", nullable=False),
        sa.Column("source", sa.String(length=64), server_default="", nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_uid", sa.String(length=64), nullable=True),
        sa.Column("count", sa.Integer(), server_default="1", nullable=False),
        sa.Column("detail", sa.Text(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_actor_occurred_at", "audit_events", ["actor", "occurred_at"], unique=False)
    op.create_index(op.f("ix_audit_events_occurred_at"), "audit_events", ["occurred_at"], unique=False)
    op.create_index(op.f("ix_audit_events_patient_id"), "audit_events", ["patient_id"], unique=False)
    op.create_index(op.f("ix_audit_events_study_uid"), "audit_events", ["study_uid"], unique=False)
    policy = op.create_table(
        "audit_policy",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_audit_policy")),
    )
    op.bulk_insert(policy, [{"pk": 1, "retention_days": DEFAULT_RETENTION_DAYS}])
    op.create_table(
        "login_failures",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_login_failures")),
    )
    op.create_index("ix_login_failures_subject_failed_at", "login_failures", ["subject", "failed_at"], unique=False)
    op.create_table(
        "users",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("provider_name", sa.String(length=324), nullable=True),
        sa.Column("disabled", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "tokens",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("label", sa.String(length=128), server_default="", nullable=False),
        sa.Column("scopes", sa.String(length=512), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_pk"], ["users.pk"], name=op.f("fk_tokens_user_pk_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_tokens_token_hash")),
    )
    op.create_index(op.f("ix_tokens_user_pk"), "tokens", ["user_pk"], unique=False)
    with op.batch_alter_table("remote_aes") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), server_default="technologist", nullable=False))
        batch.add_column(sa.Column("access", sa.String(length=16), server_default="all", nullable=False))
    triggers = _POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else _SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_guard ON audit_events")
        op.execute("DROP FUNCTION audit_events_guard()")
    with op.batch_alter_table("remote_aes") as batch:
        batch.drop_column("access")
        batch.drop_column("role")
    op.drop_index(op.f("ix_tokens_user_pk"), table_name="tokens")
    op.drop_table("tokens")
    op.drop_table("users")
    op.drop_index("ix_login_failures_subject_failed_at", table_name="login_failures")
    op.drop_table("login_failures")
    op.drop_table("audit_policy")
    op.drop_index(op.f("ix_audit_events_study_uid"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_patient_id"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_occurred_at"), table_name="audit_events")
    op.drop_index("ix_audit_events_actor_occurred_at", table_name="audit_events")
    op.drop_table("audit_events")
