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

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.engine import Connection

from engine.db import utcnow
from engine.db.models import inbox
from engine.fastsql import Ahead, Fast
from engine.jsonio import holds_unstorable, storable
from engine.ledger import insert_ignore, insert_ignore_statement

RECEIVED, APPLIED, IGNORED, FAILED = "received", "applied", "ignored", "failed"
#: what an erased delivery's body becomes (engine.privacy); its key and its
#: body's SHA-256 are kept, so that the same delivery again is still a duplicate
ERASED_BODY = b'{"erased": "personal data removed on request"}'


@dataclass(frozen=True)
class Receipt:
    inbox_id: int
    #: "new", "duplicate" (same key, same body) or "conflict" (same key, other body)
    status: str
    error: str | None = None


def storable_delivery(topic: str, key: str, headers: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A delivery's topic, key and headers as they can be stored on any
    database: text no database holds mended (``jsonio.storable``), a topic
    cut to its column (128), and a key longer than its column (255) made its
    head and its SHA-256, so that the same long key still finds its
    duplicate. (A webhook's headers can't hold such text; a recorded
    delivery given to ``regulars ingest``, or a caller of the library, can.)"""
    topic, key = storable(topic)[:128], storable(key)
    if len(key) > 255:
        key = f"{key[:180]}…sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return topic, key, storable(headers) if holds_unstorable(headers) else headers


def _values(channel, topic, key, body, headers, status, error, plugin) -> dict[str, Any]:
    now = utcnow()
    return {
        "channel": channel,
        "topic": topic,
        "key": key,
        "body": body,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "headers": headers or None,
        **_decided(status, error, plugin, now),
        "received_at": now,
    }


def store_ahead(
    conn: Connection, channel: str, topic: str, key: str, body: bytes, headers: dict[str, Any] | None,
    status: str = RECEIVED, error: str | None = None, plugin: str | None = None,
) -> Ahead:
    """``receive``'s INSERT alone, run ahead (``Fast.ahead``): on PostgreSQL
    inside ``fastsql.deferring`` it goes to the server with the next
    statement. Its rows: the new delivery's id, or none when the key was
    seen (then ask ``receive`` what it is, in a transaction of its own)."""
    values = _values(channel, topic, key, body, headers, status, error, plugin)
    return insert_ignore_statement(inbox, tuple(values), ["channel", "key"]).ahead(conn, values)


def receive(
    conn: Connection, channel: str, topic: str, key: str, body: bytes, headers: dict[str, Any] | None,
    status: str = RECEIVED, error: str | None = None, plugin: str | None = None,
) -> Receipt:
    """Store a delivery unless its key was seen. The same key with a different
    body is kept too, under a derived key, and reported as a conflict.

    ``status`` other than ``received`` stores the delivery already decided (one
    attempt, processed now): ``Engine.ingest`` stores it ``applied`` in the
    transaction that applies it, and sets it ``failed`` (``verdict``) should
    applying fail, so the row is written once."""
    values = _values(channel, topic, key, body, headers, status, error, plugin)
    digest, now = values["body_sha256"], values["received_at"]
    inserted = insert_ignore(conn, inbox, values, ["channel", "key"])
    if inserted is not None:
        return Receipt(inserted, "new")
    existing = conn.execute(
        select(inbox.c.id, inbox.c.body_sha256).where(inbox.c.channel == channel, inbox.c.key == key)
    ).one()
    if existing.body_sha256 == digest:
        return Receipt(existing.id, "duplicate")
    conflict_key = f"{key[:180]}#conflict:{digest}"
    error = (
        f"idempotency key {key!r} was already used by delivery {existing.id} with a different "
        "body; compare the two and replay this one if it is a genuine change"
    )
    conflicting = {**values, "key": conflict_key, **_decided(FAILED, error, None, now)}
    inserted = insert_ignore(conn, inbox, conflicting, ["channel", "key"])
    if inserted is not None:
        return Receipt(inserted, "conflict", error)
    return Receipt(_id(conn, channel, conflict_key), "duplicate")


def _decided(status: str, error: str | None, plugin: str | None, now) -> dict[str, Any]:
    """The columns that say where a delivery stands when it is stored."""
    if status == RECEIVED:
        return {"status": RECEIVED, "attempts": 0, "error": None, "plugin": None, "processed_at": None}
    return {"status": status, "attempts": 1, "error": error, "plugin": plugin, "processed_at": now}


#: rows per multi-row INSERT of ``receive_many``: 960 parameters, under the
#: 999 of the oldest SQLite builds
_CHUNK = 80
_COLUMNS = ("channel", "topic", "key", "body", "body_sha256", "headers", "status", "attempts", "error", "plugin",
            "processed_at", "received_at")
_INSERT_MANY: dict[int, Any] = {}


def _insert_many(rows: int):
    """INSERT of ``rows`` rows, ON CONFLICT DO NOTHING RETURNING id, channel,
    key (the rows inserted, in any order), built once per row count."""
    statement = _INSERT_MANY.get(rows)
    if statement is None:
        values = ", ".join("(" + ", ".join(f":{c}_{n}" for c in _COLUMNS) + ")" for n in range(rows))
        statement = text(
            f"INSERT INTO {inbox.name} ({', '.join(_COLUMNS)}) VALUES {values} "
            "ON CONFLICT (channel, key) DO NOTHING RETURNING id, channel, key"
        ).bindparams(*(bindparam(f"{c}_{n}", type_=inbox.c[c].type) for n in range(rows) for c in _COLUMNS))
        statement = _INSERT_MANY[rows] = Fast(statement.columns(inbox.c.id, inbox.c.channel, inbox.c.key))
    return statement


def receive_many(
    conn: Connection, deliveries: list[tuple[str, str, str, bytes, dict[str, Any] | None]],
    verdicts: list[tuple[str, str | None, str | None]] | None = None,
) -> list[Receipt]:
    """``receive`` for many ``(channel, topic, key, body, headers)``, in the
    caller's transaction: the receipts that calling ``receive`` for each in
    turn gives, from one multi-row INSERT per 80 deliveries. A key seen
    before the batch, or twice in it, goes through ``receive`` (duplicate or
    conflict) after the first of its batch is stored. ``verdicts``: each
    delivery's ``(status, error, plugin)`` as ``receive`` takes them."""
    if verdicts is None:
        verdicts = [(RECEIVED, None, None)] * len(deliveries)
    now = utcnow()
    first: dict[tuple[str, str], int] = {}
    for number, (channel, _, key, _, _) in enumerate(deliveries):
        first.setdefault((channel, key), number)
    fresh = sorted(first.values())
    stored: dict[tuple[str, str], int] = {}
    for start in range(0, len(fresh), _CHUNK):
        chunk = fresh[start:start + _CHUNK]
        params: dict[str, Any] = {}
        for n, number in enumerate(chunk):
            channel, topic, key, body, headers = deliveries[number]
            params.update({
                f"channel_{n}": channel, f"topic_{n}": topic, f"key_{n}": key, f"body_{n}": body,
                f"body_sha256_{n}": hashlib.sha256(body).hexdigest(), f"headers_{n}": headers or None,
                f"received_at_{n}": now,
            })
            params.update({f"{name}_{n}": value for name, value in _decided(*verdicts[number], now).items()})
        for inbox_id, channel, key in _insert_many(len(chunk)).rows(conn, params):
            stored[(channel, key)] = inbox_id
    receipts = []
    for number, (channel, topic, key, body, headers) in enumerate(deliveries):
        inbox_id = stored.get((channel, key)) if first[(channel, key)] == number else None
        if inbox_id is not None:
            receipts.append(Receipt(inbox_id, "new"))
        else:
            receipts.append(receive(conn, channel, topic, key, body, headers, *verdicts[number]))
    return receipts


def _id(conn: Connection, channel: str, key: str) -> int:
    return conn.execute(select(inbox.c.id).where(inbox.c.channel == channel, inbox.c.key == key)).scalar_one()


def _outcome_statement(counted: bool) -> Fast:
    """UPDATE of a delivery's outcome (status, error, plugin, processed_at),
    counting one more attempt or not."""
    values = {name: bindparam(name, type_=inbox.c[name].type) for name in ("status", "error", "plugin", "processed_at")}
    if counted:
        values["attempts"] = inbox.c.attempts + 1
    return Fast(update(inbox).where(inbox.c.id == bindparam("b_id", type_=inbox.c.id.type)).values(**values))


_MARK = _outcome_statement(counted=True)
_VERDICT = _outcome_statement(counted=False)


def mark(conn: Connection, inbox_id: int, status: str, error: str | None = None, plugin: str | None = None) -> None:
    """Record a delivery's outcome, one more attempt. (Inside fastsql.deferring,
    on PostgreSQL, it goes with the transaction's last writes.)"""
    _MARK.later(
        conn, {"b_id": inbox_id, "status": status, "error": error, "plugin": plugin, "processed_at": utcnow()}
    )


def verdict(conn: Connection, inbox_id: int, status: str, error: str | None = None, plugin: str | None = None) -> None:
    """Set a stored delivery's status without counting another attempt: a
    delivery stored ``applied`` whose applying failed in that transaction."""
    _VERDICT.later(
        conn, {"b_id": inbox_id, "status": status, "error": error, "plugin": plugin, "processed_at": utcnow()}
    )


_START = Fast(
    update(inbox)
    .where(inbox.c.id == bindparam("b_id", type_=inbox.c.id.type), inbox.c.status == RECEIVED)
    .values(tries=inbox.c.tries + 1)
    .returning(inbox.c.id, inbox.c.channel, inbox.c.topic, inbox.c.body, inbox.c.headers, inbox.c.tries)
)


def start(conn: Connection, inbox_id: int) -> Ahead:
    """Count a try at applying a ``received`` delivery in the background, in
    a transaction of its own that commits before the try begins (so a try
    that kills its process still counts). Run ahead: inside
    ``fastsql.deferring`` on PostgreSQL it goes with the COMMIT. Its rows:
    the delivery (id, channel, topic, body, headers and the tries now), or
    none when there is no such delivery or it is not ``received`` any more."""
    return _START.ahead(conn, {"b_id": inbox_id})


def failed_count(conn: Connection) -> int:
    """How many deliveries are ``failed``."""
    return conn.execute(select(func.count()).select_from(inbox).where(inbox.c.status == FAILED)).scalar_one()


def erase_body(conn: Connection, inbox_id: int) -> None:
    """Erase a stored delivery's body and headers (it named an erased person)."""
    conn.execute(update(inbox).where(inbox.c.id == inbox_id).values(body=ERASED_BODY, headers=None))


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


def claim(conn: Connection, inbox_id: int) -> bool:
    """In the caller's (write) transaction: whether the delivery is still
    ``received``, locking its row on PostgreSQL until the transaction ends. Two
    workers handed the same delivery (a redelivered task, a sweep) apply it
    once: the second waits for the first's commit, then finds it applied. On
    SQLite the transaction's write lock (``BEGIN IMMEDIATE``) does the same."""
    query = select(inbox.c.status).where(inbox.c.id == inbox_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).scalar_one_or_none() == RECEIVED


def left_behind(conn: Connection, before, limit: int = 1000) -> list[int]:
    """Deliveries still ``received`` that were stored before ``before``,
    oldest first: what a sweep hands to the workers again."""
    return list(conn.execute(
        select(inbox.c.id).where(inbox.c.status == RECEIVED, inbox.c.received_at < before)
        .order_by(inbox.c.id).limit(limit)
    ).scalars())


def counts(conn: Connection) -> dict[str, int]:
    """Deliveries per status."""
    return dict(conn.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status)).all())
