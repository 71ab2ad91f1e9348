"""customers.fields_at: when the snapshot that set each descriptive field
(names, marketing consent, address) was taken, so that an older snapshot
delivered late does not overwrite a newer one (engine.identity)

A customer stored before has none: their fields count as of ``created_at``
until a snapshot sets them again.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("fields_at", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("customers", "fields_at")
