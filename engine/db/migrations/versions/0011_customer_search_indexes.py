"""customer search and merges: a partial index on customers.merged_into, and on
PostgreSQL trigram indexes for the dashboard's customer search

Revision ID: 0011
Revises: 0010

The dashboard's search (``engine/web/pages/admin.py``, ``Admin._search``)
filters with ``LIKE '%...%'`` on four expressions; without an index that is a
scan of every customer (620 to 950 ms at a million). With pg_trgm's GIN
indexes on exactly those expressions it is a bitmap scan of the four (4 to
12 ms; bench/README.md). The extension is created if the database user may;
if not, the search keeps working, scanning, and a warning says so.
"""
import logging

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

#: (index name, expression) exactly as Admin._search writes them
TRIGRAM = (
    ("ix_customers_email_trgm", "lower(email)"),
    ("ix_customers_phone_trgm", "phone"),
    ("ix_customers_card_code_trgm", "lower(card_code)"),
    ("ix_customers_name_trgm", "lower(coalesce(first_name, '') || ' ' || coalesce(last_name, ''))"),
)


def upgrade() -> None:
    op.create_index("ix_customers_merged_into", "customers", ["merged_into"],
                    postgresql_where=sa.text("merged_into IS NOT NULL"),
                    sqlite_where=sa.text("merged_into IS NOT NULL"))
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        log.warning("pg_trgm is not available (%s): the dashboard's customer search will scan the customers; "
                    "a superuser can run CREATE EXTENSION pg_trgm and then `regulars db upgrade` again "
                    "after `alembic downgrade 0010`", str(exc.orig).strip().splitlines()[0])
        return
    savepoint.commit()
    for name, expression in TRIGRAM:
        op.execute(f"CREATE INDEX {name} ON customers USING gin (({expression}) gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, _ in TRIGRAM:
            op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_index("ix_customers_merged_into", table_name="customers")
