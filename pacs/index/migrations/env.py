"""Alembic environment: uses the engine handed over by pacs.index.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from pacs.index.schema import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    engine = engine_from_config(config.get_section(config.config_ini_section) or {}, prefix="sqlalchemy.", poolclass=pool.NullPool)

with engine.connect() as connection:
    connection = connection.execution_options(sqlite_write=True)
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
