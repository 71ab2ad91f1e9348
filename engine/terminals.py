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
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from engine.db import utcnow
from engine.db.models import api_requests, terminals
from engine.jsonio import UNSTORABLE_REFUSAL, holds_unstorable
from engine.ledger import insert_ignore

KEY_PREFIX = "rt_"
BATCH_TOPICS = ("sale", "void", "visit", "membership")


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


# -- what the till sends, live or in a batch ------------------------------------------
#
# The live endpoints (engine.web.api_till) and an offline batch build a delivery's
# body with the same functions, so a live request whose answer was lost and is
# sent again in a batch is the same delivery: a duplicate, not a conflict.


def find_customer(engine, hints: dict) -> dict | None:
    """The customer a till's hints name (card code, then email, then phone):
    their summary, or None. A till never creates a customer by a sale."""
    from engine.customers import customer_summary

    for field in ("card_code", "email", "phone"):
        if hints.get(field):
            found = customer_summary(engine, hints[field])
            if found is not None:
                return found
    return None


def _when(value: datetime | None) -> str:
    return (value or datetime.now(UTC)).isoformat()


def sale_payload(terminal: Terminal, data: dict, card_code: str) -> dict:
    """A ``sale`` delivery from a validated sale (the API's SaleSchema)."""
    return {
        "id": data["id"], "terminal": str(terminal.id), "location": terminal.location,
        "occurred_at": _when(data.get("occurred_at")),
        "customer": {"card_code": card_code},
        "lines": [{**line, "unit_price": str(line["unit_price"]), "discount": str(line["discount"])}
                  for line in data["lines"]],
        "reward_codes": data.get("reward_codes") or [],
    }


def visit_payload(terminal: Terminal, data: dict, card_code: str) -> dict:
    return {"id": data["id"], "terminal": str(terminal.id), "location": terminal.location,
            "occurred_at": _when(data.get("occurred_at")), "customer": {"card_code": card_code}}


def unknown_plan(engine, plan: str) -> str | None:
    """Why a till can't sell a membership of ``plan`` (not in plugins.toml), or None."""
    plans = engine.subscriptions.plans if engine.subscriptions is not None else {}
    if plan in plans:
        return None
    known = ", ".join(sorted(plans)) or "none (add a [rules.subscriptions.<plan>] table)"
    return f"no membership plan {plan!r}; plans: {known}"


def membership_payload(terminal: Terminal, data: dict, customer: dict) -> dict:
    """A ``membership`` delivery from a validated change (the API's
    MembershipSchema); without a ``subscription_id``, the customer's one
    membership of that plan at the counter."""
    end = data.get("period_end")
    return {"id": data["id"], "terminal": str(terminal.id), "occurred_at": _when(data.get("occurred_at")),
            "customer": {"card_code": customer["card_code"]}, "action": data["action"], "plan": data["plan"],
            "subscription_id": data.get("subscription_id") or f"{customer['id']}:{data['plan']}",
            "period_end": end.isoformat() if end else None}


def void_payload(terminal: Terminal, sale_id: str, data: dict) -> dict:
    return {"sale_id": sale_id, "terminal": str(terminal.id), "occurred_at": _when(data.get("occurred_at")),
            "reason": data.get("reason")}


def send(engine, topic: str, payload: dict):
    """Ingest a till's delivery (its ``Outcome``)."""
    return engine.ingest("pos", topic, json.dumps(payload, default=str).encode())


def first_time(engine, topic: str, payload: dict) -> dict:
    """A delivery whose till gave no time, with the time it was first sent
    with when it was sent before (its key stored), else as it is."""
    from engine.db.models import inbox as inbox_table

    key = engine.connector("pos").delivery_key(topic, payload, {}, b"")
    with engine.db.connect() as conn:
        body = conn.execute(select(inbox_table.c.body).where(
            inbox_table.c.channel == "pos", inbox_table.c.key == key)).scalar_one_or_none() if key else None
    try:
        first = json.loads(body).get("occurred_at") if body is not None else None
    except ValueError:
        first = None
    return {**payload, "occurred_at": first} if isinstance(first, str) else payload


def as_stored(engine, outcome):
    """A ``duplicate`` outcome as the delivery it repeats stands: ``failed``
    (its error and plugin) when that one was kept but not applied."""
    from dataclasses import replace

    from engine import inbox

    with engine.db.connect() as conn:
        row = inbox.get(conn, outcome.inbox_id)
    if row is None or row.status != inbox.FAILED:
        return outcome
    return replace(outcome, status="failed", error=row.error, plugin=row.plugin)


def sale_order_id(terminal: Terminal, sale_id) -> str:
    """The id of the order ``connectors.pos`` makes of this terminal's sale."""
    return f"{terminal.id}:{str(sale_id).strip()}"


def sale_codes(engine, terminal: Terminal, payload: dict) -> list[dict]:
    """Each reward code a sale carried, once: ``{"code", "used", "reason"}``,
    whether this sale used it and if not why (``Rewards.used_by``); the same
    for the sale resent."""
    from engine.db.models import orders

    if not payload.get("reward_codes"):
        return []
    external_id = sale_order_id(terminal, payload["id"])
    with engine.db.connect() as conn:
        customer_id = conn.execute(select(orders.c.customer_id).where(
            orders.c.channel == "pos", orders.c.external_id == external_id)).scalar_one_or_none()
        return engine.rewards.used_by(conn, customer_id, payload["reward_codes"], f"order:pos:{external_id}")


def sale_customer(engine, terminal: Terminal, sale_id: str) -> str | None:
    """The card code of the customer of a sale this terminal recorded."""
    from engine.db.models import customers, orders

    with engine.db.connect() as conn:
        row = conn.execute(select(customers.c.card_code).join(orders, orders.c.customer_id == customers.c.id)
                           .where(orders.c.channel == "pos", orders.c.external_id == sale_order_id(terminal, sale_id))).first()
    return row.card_code if row else None


def apply_batch(engine, terminal: Terminal, body: bytes) -> list[dict]:
    """An offline batch: JSON Lines, each ``{"topic": "sale" | "void" | "visit" | "membership",
    "key": the till's key for it, ...the payload}``, the payload as the live
    endpoint takes it (``occurred_at`` required: a line keeps its original
    time). Every line is read first; the good ones are applied in
    ``occurred_at`` order (the order things happened, not the order they were
    written), the voids last, each through the same path as a live request: a sale or visit
    for a customer nobody knows is refused, as live. A resent batch is all
    ``duplicate``; a batch cut off and sent again whole applies only what is
    missing; a line refused before is refused again with its reason. Results
    are per line, in the lines' order: applied, duplicate or refused with the
    reason; a sale's, applied or duplicate, says what became of its reward
    codes (``codes``, as live)."""
    from marshmallow import ValidationError

    from engine.web.api_schemas import (
        MembershipSchema,
        SaleSchema,
        VisitSchema,
        VoidSchema,
        _messages,
    )

    schemas = {"sale": SaleSchema, "visit": VisitSchema, "void": VoidSchema, "membership": MembershipSchema}
    results: list[dict] = []
    good = []
    for number, raw in enumerate(body.splitlines(), start=1):
        if not raw.strip():
            continue
        result = {"line": number, "key": None, "status": "refused", "reason": None}
        results.append(result)
        try:
            item = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # (RecursionError: nested too deeply)
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
        if not item.get("occurred_at"):
            result["reason"] = "occurred_at is missing: an offline line keeps its original time"
            continue
        item.pop("key", None)
        sale_id = item.pop("sale_id", None) if topic == "void" else None
        if topic == "void" and not sale_id:
            result["reason"] = "sale_id is missing: which sale to void"
            continue
        if topic != "void" and not item.get("id") and result["key"]:
            item["id"] = result["key"]
        if holds_unstorable(item):
            result["reason"] = UNSTORABLE_REFUSAL
            continue
        try:
            data = schemas[topic]().load(item)
        except ValidationError as exc:
            result["reason"] = _messages(exc.messages)
            continue
        good.append((data["occurred_at"], number, topic, data, str(sale_id) if sale_id else None, result))
    # In time order; the voids after everything else, so that one names a sale
    # among the lines whatever its time (as it does a sale of an earlier batch).
    for _, _, topic, data, sale_id, result in sorted(good, key=lambda g: (g[2] == "void", g[0], g[1])):
        if topic == "void":
            if sale_customer(engine, terminal, sale_id) is None:
                result["reason"] = f"this terminal recorded no sale {sale_id!r}"
                continue
            payload = void_payload(terminal, sale_id, data)
        else:
            customer = find_customer(engine, data["customer"])
            if customer is None:
                result["reason"] = "no customer matches that card code, phone or email"
                continue
            if topic == "membership":
                result["reason"] = unknown_plan(engine, data["plan"])
                if result["reason"]:
                    continue
                payload = membership_payload(terminal, data, customer)
            else:
                build = sale_payload if topic == "sale" else visit_payload
                payload = build(terminal, data, customer["card_code"])
        outcome = send(engine, topic, payload)
        result["status"], result["reason"] = _batch_status(engine, topic, payload, outcome)
        if topic == "sale" and result["status"] != "refused":
            result["codes"] = sale_codes(engine, terminal, payload)
    return results


def _batch_status(engine, topic: str, payload: dict, outcome) -> tuple[str, str | None]:
    """A line's result from its delivery's outcome. ``duplicate`` only when
    what came before under the same key was applied: one refused before is
    refused again, with its reason; one sent before under the same key with
    another body (a live request in another form) counts as the duplicate it
    is when that one was applied."""
    from engine import inbox
    from engine.db.models import inbox as inbox_table

    if outcome.status == "applied":
        return "applied", None
    with engine.db.connect() as conn:
        if outcome.status == "duplicate":
            row = inbox.get(conn, outcome.inbox_id)
            if row is not None and row.status == inbox.FAILED:
                return "refused", row.error or "refused before"
            return "duplicate", None
        key = engine.connector("pos").delivery_key(topic, payload, {}, b"")
        first = conn.execute(select(inbox_table.c.status).where(
            inbox_table.c.channel == "pos", inbox_table.c.key == key)).scalar_one_or_none() if key else None
    if outcome.status == "failed" and first == inbox.APPLIED:
        return "duplicate", None
    return "refused", outcome.error or outcome.status
