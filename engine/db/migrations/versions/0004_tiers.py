"""tiers: the current tier on the customer, and the tier history

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tier", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("tier_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("tier_below_since", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "tier_history",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("customer_id", Id, nullable=False),
        sa.Column("from_tier", sa.String(length=64), nullable=True),
        sa.Column("to_tier", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("metric", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tier_history_customer_id", "tier_history", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_tier_history_customer_id", table_name="tier_history")
    op.drop_table("tier_history")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("tier_below_since")
        batch_op.drop_column("tier_since")
        batch_op.drop_column("tier")
