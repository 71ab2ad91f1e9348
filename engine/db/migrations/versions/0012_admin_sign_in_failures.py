"""admin_sign_in_failures: refused dashboard sign-ins, for the throttle

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "admin_sign_in_failures",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=150), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_admin_sign_in_failures_address_at", "admin_sign_in_failures", ["address", "at"])


def downgrade() -> None:
    op.drop_index("ix_admin_sign_in_failures_address_at", table_name="admin_sign_in_failures")
    op.drop_table("admin_sign_in_failures")
