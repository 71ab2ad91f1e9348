"""The Alembic migrations build exactly the schema the models describe, on
SQLite and on PostgreSQL, and `regulars db upgrade` on a fresh database is
the latest head."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from engine.db import current_revision, head_revision
from engine.db.models import Base


def test_the_migrated_schema_is_the_models_schema(engine):
    with engine.db.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []


def test_the_test_database_is_at_the_latest_migration(engine):
    url = engine.db.url.render_as_string(hide_password=False)
    assert current_revision(engine.db) == head_revision(url)
