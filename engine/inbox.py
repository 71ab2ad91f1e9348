"""The inbox: every delivery is stored, raw, before anything else happens to it.

A delivery is never lost: it is ``received`` when stored, then ``applied``,
``ignored`` (nothing in it for loyalty: an unknown topic, a test ping) or
``failed`` with the reason (and the plugin, when a plugin raised). Any of them
can be replayed from the stored body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from engine.db import utcnow
from engine.db.models import inbox
from engine.ledger import insert_ignore

RECEIVED, APPLIED, IGNORED, FAILED = "received", "applied", "ignored", "failed"


@dataclass(frozen=True)
class Receipt:
    inbox_id: int
    #: "new", "duplicate" (same key, same body) or "conflict" (same key, other body)
    status: str
    error: str | None = None


def receive(
    conn: Connection, channel: str, topic: str, key: str, body: bytes, headers: dict[str, Any] | None
) -> Receipt:
    """Store a delivery unless its key was seen. The same key with a different
    body is kept too, under a derived key, and reported as a conflict."""
    digest = hashlib.sha256(body).hexdigest()
    values = {
        "channel": channel,
        "topic": topic,
        "key": key,
        "body": body,
        "body_sha256": digest,
        "headers": headers or None,
        "status": RECEIVED,
        "attempts": 0,
        "received_at": utcnow(),
    }
    inserted = insert_ignore(conn, inbox, values, ["channel", "key"])
    if inserted is not None:
        return Receipt(inserted, "new")
    existing = conn.execute(
        select(inbox.c.id, inbox.c.body_sha256).where(inbox.c.channel == channel, inbox.c.key == key)
    ).one()
    if existing.body_sha256 == digest:
        return Receipt(existing.id, "duplicate")
    conflict_key = f"{key[:180]}#conflict:{digest}"
    inserted = insert_ignore(conn, inbox, {**values, "key": conflict_key}, ["channel", "key"])
    inbox_id = inserted if inserted is not None else _id(conn, channel, conflict_key)
    if inserted is not None:
        error = (
            f"idempotency key {key!r} was already used by delivery {existing.id} with a different "
            "body; compare the two and replay this one if it is a genuine change"
        )
        mark(conn, inbox_id, FAILED, error)
        return Receipt(inbox_id, "conflict", error)
    return Receipt(inbox_id, "duplicate")


def _id(conn: Connection, channel: str, key: str) -> int:
    return conn.execute(select(inbox.c.id).where(inbox.c.channel == channel, inbox.c.key == key)).scalar_one()


_MARK = update(inbox).where(inbox.c.id == bindparam("b_id")).values(attempts=inbox.c.attempts + 1)


def mark(conn: Connection, inbox_id: int, status: str, error: str | None = None, plugin: str | None = None) -> None:
    conn.execute(
        _MARK, {"b_id": inbox_id, "status": status, "error": error, "plugin": plugin, "processed_at": utcnow()}
    )


def get(conn: Connection, inbox_id: int):
    return conn.execute(select(inbox).where(inbox.c.id == inbox_id)).one_or_none()


def pending(conn: Connection, limit: int = 200):
    """Deliveries stored but not applied yet, oldest first."""
    return conn.execute(
        select(inbox.c.id).where(inbox.c.status == RECEIVED).order_by(inbox.c.id).limit(limit)
    ).all()


def listing(conn: Connection, status: str | None = None, limit: int = 50, channel: str | None = None):
    query = select(
        inbox.c.id, inbox.c.channel, inbox.c.topic, inbox.c.key, inbox.c.status, inbox.c.error,
        inbox.c.plugin, inbox.c.attempts, inbox.c.received_at, inbox.c.processed_at,
    ).order_by(inbox.c.id.desc()).limit(limit)
    if status:
        query = query.where(inbox.c.status == status)
    if channel:
        query = query.where(inbox.c.channel == channel)
    return conn.execute(query).all()
