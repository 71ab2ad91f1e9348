"""subscriptions.history: every event of a membership, so that whether it was
active at any moment is decided from its events (engine.subscriptions)

A membership stored before has the history its row still tells: a start at
``started_at``, and the newest event (``status_stamp``) with the latest
``period_end``.

Revision ID: 0013
Revises: 0012
"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _moment(value) -> str | None:
    """A stored time as a history entry writes it (UTC, ``%Y-%m-%dT%H:%M:%S.%f``)."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite's driver hands back the stored text
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return f"{value.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}"


def upgrade() -> None:
    op.add_column("subscriptions", sa.Column("history", sa.JSON(), nullable=True))
    conn = op.get_bind()
    write = sa.text("UPDATE subscriptions SET history = :history WHERE id = :id").bindparams(
        sa.bindparam("history", type_=sa.JSON()))
    rows = conn.execute(sa.text(
        "SELECT id, plan, status_stamp, started_at, current_period_end FROM subscriptions")).all()
    for row in rows:
        start = _moment(row.started_at)
        newest = [row.status_stamp, row.plan, _moment(row.current_period_end)]
        history = [newest] if row.status_stamp.startswith(f"{start}|0|") else [[f"{start}|0|0013", row.plan, None],
                                                                                newest]
        conn.execute(write, {"history": history, "id": row.id})


def downgrade() -> None:
    op.drop_column("subscriptions", "history")
