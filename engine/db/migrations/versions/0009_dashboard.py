"""the dashboard: admin users, visit days, the metrics' counters

Revision ID: 0009
Revises: 0008

On a database that already holds orders or ledger entries the counters start
empty and unbuilt: the dashboard (or ``regulars metrics rebuild``) builds them
from the ledger and the orders once. An empty database is marked built: the
pipeline keeps the counters exact from its first event.
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "admin_users",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=150), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "visit_days",
        sa.Column("customer_id", Id, autoincrement=False, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("customer_id", "channel", "day"),
    )
    op.create_table(
        "metric_footprints",
        sa.Column("customer_id", Id, autoincrement=False, nullable=False),
        sa.Column("footprint", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "metric_counts",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("measure", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=1), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("measure", "channel", "kind", "period"),
    )
    op.create_table(
        "metric_deltas",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("measure", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=1), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "metric_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    conn = op.get_bind()
    has_data = conn.execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM orders) OR EXISTS (SELECT 1 FROM ledger_entries)")).scalar()
    if not has_data:
        # "*": built since the database was empty, in whatever zone is configured
        conn.execute(sa.text("INSERT INTO metric_state (name, value) VALUES ('built', '*')"))


def downgrade() -> None:
    op.drop_table("metric_state")
    op.drop_table("metric_deltas")
    op.drop_table("metric_counts")
    op.drop_table("metric_footprints")
    op.drop_table("visit_days")
    op.drop_table("admin_users")
