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
    # Migration 0011's trigram indexes (PostgreSQL, when pg_trgm may be created)
    # are not in the models: expression indexes of one database only.
    differences = [d for d in differences if not (d[0] == "remove_index" and d[1].name.endswith("_trgm"))]
    assert differences == []


def test_the_test_database_is_at_the_latest_migration(engine):
    url = engine.db.url.render_as_string(hide_password=False)
    assert current_revision(engine.db) == head_revision(url)


def test_on_postgresql_the_customer_search_uses_the_trigram_indexes(postgres_url):
    """Migration 0011's trigram indexes match the search's expressions as
    ``Admin._search`` writes them: with sequential and plain index scans
    off, PostgreSQL can only answer from bitmaps of the four indexes; and no
    parameter but the pattern is sent (a parameter inside an indexed
    expression keeps a generic plan from using its index)."""
    from sqlalchemy import select, text
    from sqlalchemy.dialects import postgresql

    from engine.db import make_engine
    from engine.db.models import customers
    from engine.web.pages.admin import search_condition

    condition = search_condition("%jana%")
    params = condition.compile(dialect=postgresql.dialect()).params
    assert set(params.values()) == {"%jana%"}, params
    query = select(customers.c.id).where(condition).order_by(customers.c.id.desc()).limit(50)
    db = make_engine(postgres_url)
    try:
        with db.begin() as conn:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            conn.execute(text("SET LOCAL enable_indexscan = off"))
            sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(row[0] for row in conn.execute(text("EXPLAIN " + sql)))
    finally:
        db.dispose()
    for index in ("ix_customers_email_trgm", "ix_customers_phone_trgm", "ix_customers_card_code_trgm",
                  "ix_customers_name_trgm"):
        assert index in plan, plan
