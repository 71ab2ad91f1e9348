"""erasures: the digests of erased emails and phones, with the customer and
the time, so that a snapshot from before an erasure finds the erased customer
instead of recreating the person (engine.identity, engine.privacy)

Customers erased before this migration have none: a late snapshot of theirs
is treated as before (a new customer).

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("customer_id", Id, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_erasures_digest", "erasures", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_erasures_digest", table_name="erasures")
    op.drop_table("erasures")
