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


def test_migration_0013_gives_a_stored_membership_the_history_its_row_tells(database_url):
    """A membership stored before 0013 keeps being active when its events say
    so: a start at ``started_at`` and its newest event, with its period."""
    from datetime import UTC, datetime

    from alembic import command
    from sqlalchemy import insert, select, text

    from engine.db import alembic_config, make_engine, upgrade
    from engine.db.models import customers, subscriptions
    from engine.subscriptions import Subscriptions

    db = make_engine(database_url)
    try:
        config = alembic_config(database_url)
        with db.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0012")
        start, pause = datetime(2026, 1, 10, 9, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
        with db.begin() as conn:
            who = conn.execute(insert(customers).values(email="jana@example.com", referral_code="JANA1", card_code="CARD1",
                                                        created_at=start, updated_at=start)
                               .returning(customers.c.id)).scalar_one()
            for external_id, stamp, ends in (("S1", f"{pause:%Y-%m-%dT%H:%M:%S.%f}|3|k2", start.replace(month=3)),
                                             ("S2", f"{start:%Y-%m-%dT%H:%M:%S.%f}|0|k1", None)):
                conn.execute(text(
                    "INSERT INTO subscriptions (customer_id, channel, external_id, plan, status, status_at, "
                    "status_stamp, started_at, current_period_end, created_at, updated_at) VALUES (:who, 'pos', "
                    ":id, 'vip', 'x', :at, :stamp, :start, :ends, :start, :start)"),
                    {"who": who, "id": external_id, "at": pause, "stamp": stamp, "start": start, "ends": ends})
        upgrade(db)
        with db.connect() as conn:
            histories = dict(conn.execute(select(subscriptions.c.external_id, subscriptions.c.history)).all())
            assert histories == {
                "S1": [["2026-01-10T09:00:00.000000|0|0013", "vip", None],
                       ["2026-02-01T00:00:00.000000|3|k2", "vip", "2026-03-10T09:00:00.000000"]],
                "S2": [["2026-01-10T09:00:00.000000|0|k1", "vip", None]],
            }

            class Plans(Subscriptions):
                def __init__(self):
                    self.plans = {}

            plans = Plans()
            assert [plans.active_plan(histories["S1"], at) for at in (start, pause)] == ["vip", None]
    finally:
        db.dispose()
