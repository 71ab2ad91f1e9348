"""Tills: their API keys, the first answer to each idempotent write, and the
offline batches a till uploads when its connection is back.

A terminal's key (``rt_`` + 43 random characters, 256 bits) is shown once and
stored as its SHA-256: a key that random can't be guessed from its hash, so a
slow password hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from engine.db import utcnow
from engine.db.models import api_requests, terminals
from engine.ledger import insert_ignore

KEY_PREFIX = "rt_"
BATCH_TOPICS = ("sale", "void", "visit")


@dataclass(frozen=True)
class Terminal:
    id: int
    location: str
    name: str | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_terminal(db, location: str, name: str | None = None) -> tuple[int, str]:
    """Register a till at ``location``; returns its id and its key (shown once)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with db.begin() as conn:
        terminal_id = conn.execute(terminals.insert().returning(terminals.c.id).values(
            location=location, name=name, key_prefix=key[:10], key_hash=_hash(key), created_at=utcnow(),
        )).scalar_one()
    return terminal_id, key


def authenticate(db, key: str) -> Terminal | None:
    """The live terminal whose key this is; None for an unknown or revoked key."""
    digest = _hash(key)
    with db.connect() as conn:
        row = conn.execute(select(terminals).where(terminals.c.key_hash == digest)).one_or_none()
    # The look-up is by hash; compare again in constant time all the same.
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        return None
    return Terminal(row.id, row.location, row.name)


def revoke(db, terminal_id: int) -> bool:
    with db.begin() as conn:
        return bool(conn.execute(update(terminals).where(terminals.c.id == terminal_id,
                                                         terminals.c.revoked_at.is_(None))
                                 .values(revoked_at=utcnow())).rowcount)


def listing(db) -> list:
    with db.connect() as conn:
        return conn.execute(select(terminals).order_by(terminals.c.id)).all()


def remembered(conn: Connection, terminal_id: int, key: str):
    """The first answer to this terminal's request with this Idempotency-Key."""
    return conn.execute(select(api_requests).where(api_requests.c.terminal_id == terminal_id,
                                                   api_requests.c.key == key)).one_or_none()


def remember(conn: Connection, terminal_id: int, key: str, request_hash: str, status: int, response: dict) -> None:
    """Keep an answer; a concurrent twin that got there first keeps its own."""
    insert_ignore(conn, api_requests, {"terminal_id": terminal_id, "key": key, "request_hash": request_hash,
                                       "status_code": status, "response": response, "created_at": utcnow()},
                  ["terminal_id", "key"])


def apply_batch(engine, terminal: Terminal, body: bytes) -> list[dict]:
    """An offline batch: JSON Lines, each ``{"topic": "sale" | "void" | "visit",
    "key": the till's key for it, ...the payload}``. Every line is read first;
    the good ones are applied in ``occurred_at`` order (the order things
    happened, not the order they were written), each through the same path as
    a live request. A resent batch is all ``duplicate``; a batch cut off and
    sent again whole applies only what is missing. Results are per line, in
    the lines' order: applied, duplicate or refused with the reason."""
    results: list[dict] = []
    good = []
    for number, raw in enumerate(body.splitlines(), start=1):
        if not raw.strip():
            continue
        result = {"line": number, "key": None, "status": "refused", "reason": None}
        results.append(result)
        try:
            item = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            result["reason"] = "not a JSON object (truncated?)"
            continue
        if not isinstance(item, dict):
            result["reason"] = "not a JSON object"
            continue
        result["key"] = str(item.get("key") or item.get("id") or item.get("sale_id") or "") or None
        topic = item.pop("topic", None)
        if topic not in BATCH_TOPICS:
            result["reason"] = f"topic must be one of {', '.join(BATCH_TOPICS)}, got {topic!r}"
            continue
        try:
            moment = datetime.fromisoformat(item.get("occurred_at"))
        except (TypeError, ValueError):
            result["reason"] = "occurred_at is missing or not ISO 8601: an offline line keeps its original time"
            continue
        if moment.tzinfo is None:
            result["reason"] = "occurred_at has no UTC offset"
            continue
        item.pop("key", None)
        payload = {**item, "terminal": str(terminal.id)}
        if topic != "void":
            payload.setdefault("location", terminal.location)
        good.append((moment, number, topic, payload, result))
    for _, _, topic, payload, result in sorted(good, key=lambda g: (g[0], g[1])):
        if topic in ("sale", "visit") and not payload.get("id") and result["key"]:
            payload["id"] = result["key"]
        outcome = engine.ingest("pos", topic, json.dumps(payload).encode())
        if outcome.status in ("applied", "duplicate"):
            result["status"] = outcome.status
        else:
            result["reason"] = outcome.error or outcome.status
    return results
