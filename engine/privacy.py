"""A customer's data, exported or erased (GDPR requests; Shopify's mandatory
privacy webhooks will call the same two functions).

Erasing removes what identifies the person (email, phone, names, address,
birthday, marketing consent, order notes, and the raw deliveries that carry any
of them) and keeps everything the ledger's sums need: the customer row under its
id, its accounts and entries, its orders' amounts. The audit stays clean and
every balance stays exact.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import delete, select, text, update
from sqlalchemy.engine import Connection

from engine.db.models import (
    accounts,
    card_links,
    customer_links,
    customers,
    inbox,
    ledger_entries,
    metric_footprints,
    orders,
    privacy_requests,
    referrals,
    rewards,
    shop_credentials,
    subscriptions,
    tier_history,
    visit_days,
)

PERSONAL = ("email", "phone", "first_name", "last_name", "address", "birthday", "accepts_marketing")
ERASED_BODY = b'{"erased": "personal data removed on request"}'


class UnknownCustomer(LookupError):
    pass


def _people(conn: Connection, customer_id: int) -> list[int]:
    """The customer and every customer merged into them."""
    found, frontier = [customer_id], [customer_id]
    while frontier:
        rows = conn.execute(select(customers.c.id).where(customers.c.merged_into.in_(frontier))).all()
        frontier = [r.id for r in rows if r.id not in found]
        found += frontier
    return found


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str | int | float | bool | dict | list | type(None)) else str(value)


def _rows(conn: Connection, query) -> list[dict]:
    return [{k: _jsonable(v) for k, v in row._mapping.items()} for row in conn.execute(query)]


def export(engine, key: str) -> dict:
    """Everything regulars holds about the customer a key finds, as JSON-able data."""
    with engine.db.connect() as conn:
        customer_id = engine.identity.find(conn, key)
        if customer_id is None:
            raise UnknownCustomer(f"no customer matches {key!r}")
        return export_customer(conn, customer_id)


def export_customer(conn: Connection, customer_id: int) -> dict:
    """Everything held about one customer (and those merged into them)."""
    ids = _people(conn, customer_id)
    return {
        "customer": _rows(conn, select(customers).where(customers.c.id.in_(ids))),
        "channels": _rows(conn, select(customer_links).where(customer_links.c.customer_id.in_(ids))),
        "accounts": _rows(conn, select(accounts).where(accounts.c.customer_id.in_(ids))),
        "ledger": _rows(conn, select(ledger_entries).join(accounts, accounts.c.id == ledger_entries.c.account_id)
                        .where(accounts.c.customer_id.in_(ids)).order_by(ledger_entries.c.id)),
        "orders": _rows(conn, select(orders).where(orders.c.customer_id.in_(ids))),
        "rewards": _rows(conn, select(rewards).where(rewards.c.customer_id.in_(ids))),
        "referrals": _rows(conn, select(referrals).where(
            referrals.c.referee_id.in_(ids) | referrals.c.referrer_id.in_(ids))),
        "tier_history": _rows(conn, select(tier_history).where(tier_history.c.customer_id.in_(ids))),
        "subscriptions": _rows(conn, select(subscriptions).where(subscriptions.c.customer_id.in_(ids))),
        "visit_days": _rows(conn, select(visit_days).where(visit_days.c.customer_id.in_(ids))
                            .order_by(visit_days.c.day)),
        "card_links": _rows(conn, select(card_links).where(card_links.c.customer_id.in_(ids))),
        # the dashboard's summary of their purchases and visits (engine/metrics.py)
        "dashboard_footprints": _rows(conn, select(metric_footprints)
                                      .where(metric_footprints.c.customer_id.in_(ids))),
        "deliveries": [{"id": r["id"], "channel": r["channel"], "topic": r["topic"], "received_at": r["received_at"],
                        "body": r["body"]} for r in _rows(conn, _deliveries_of(conn, ids))],
    }


#: ids in one ``IN (...)`` (PostgreSQL's driver takes 65,535 parameters, old SQLite builds 32,766)
_IDS_PER_STATEMENT = 10_000


def _needles(conn: Connection, ids: list[int]) -> list[bytes]:
    """What marks a raw delivery as this person's: their email, phone and the
    channels' ids for them, as they appear in a JSON body."""
    needles = set()
    for row in conn.execute(select(customers.c.email, customers.c.phone).where(customers.c.id.in_(ids))):
        needles.update(v for v in (row.email, row.phone) if v)
    for row in conn.execute(select(customer_links.c.external_id).where(customer_links.c.customer_id.in_(ids))):
        needles.update({f'"id": {row.external_id}', f'"customer_id": {row.external_id}', f'"id":{row.external_id}'})
    return [n.encode() for n in needles]


def _deliveries_of(conn: Connection, ids: list[int]):
    """Inbox rows whose raw body mentions the person (by email, phone or a
    channel's customer id)."""
    needles = _needles(conn, ids)
    if not needles:
        return select(inbox).where(inbox.c.id < 0)
    # A byte search inside the stored body, in each database's own words.
    find = "position(:n{i} in body) > 0" if conn.dialect.name == "postgresql" else "instr(body, :n{i}) > 0"
    condition = " OR ".join(find.format(i=i) for i in range(len(needles)))
    return select(inbox).where(text(f"({condition})").bindparams(**{f"n{i}": n for i, n in enumerate(needles)}))


def erase(engine, key: str, at: datetime) -> dict:
    """Erase the personal data of the customer a key finds (and of customers
    merged into them); keep the ledger and the amounts. Returns what changed."""
    with engine.db.begin() as conn:
        customer_id = engine.identity.find(conn, key)
        if customer_id is None:
            raise UnknownCustomer(f"no customer matches {key!r}")
        return erase_customer(conn, customer_id, at)


def erase_customer(conn: Connection, customer_id: int, at: datetime) -> dict:
    """Erase one customer's personal data in the caller's transaction."""
    ids = _people(conn, customer_id)
    deliveries = [row.id for row in conn.execute(_deliveries_of(conn, ids).with_only_columns(inbox.c.id))]
    for start in range(0, len(deliveries), _IDS_PER_STATEMENT):  # (a driver takes 65,535 parameters at most)
        conn.execute(update(inbox).where(inbox.c.id.in_(deliveries[start:start + _IDS_PER_STATEMENT]))
                     .values(body=ERASED_BODY, headers=None))
    conn.execute(update(customers).where(customers.c.id.in_(ids))
                 .values(**dict.fromkeys(PERSONAL), updated_at=at))
    notes = 0
    for row in conn.execute(select(orders.c.id, orders.c.state).where(orders.c.customer_id.in_(ids))).all():
        state = dict(row.state or {})
        snapshot = dict(state.get("snapshot") or {})
        if snapshot.get("attributes"):
            snapshot["attributes"] = {}
            state["snapshot"] = snapshot
            conn.execute(update(orders).where(orders.c.id == row.id).values(state=state))
            notes += 1
    return {"customers": len(ids), "deliveries": len(deliveries), "orders_with_notes": notes}


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def _requester(conn: Connection, identity, event: dict) -> int | None:
    """The customer a privacy request names: the channel's id for them first,
    then their email, then their phone. Never creates one."""
    hints = event.get("customer") or {}
    keys = []
    if hints.get("external_id"):
        keys.append(f"{event['channel']}:{hints['external_id']}")
    keys += [hints[k] for k in ("email", "phone") if hints.get(k)]
    for key in keys:
        found = identity.find(conn, key)
        if found is not None:
            return found
    return None


def apply_request(conn: Connection, identity, event: dict) -> dict:
    """Act on a ``privacy.*`` event in the caller's transaction and record it
    (once per request: the same request again changes nothing).

    - ``privacy.data_request``: the customer's data is exported and kept for
      the merchant (`regulars privacy show ID`);
    - ``privacy.redact``: the customer's personal data is erased, the ledger kept;
    - ``privacy.shop_redact``: the shop is gone: personal data of customers
      known only through it is erased, and every raw delivery from it.
    """
    kind = event["type"].split(".", 1)[1]
    reference = f"{event['channel']}:{event['idempotency_key']}"[:255]
    if conn.execute(select(privacy_requests.c.id).where(privacy_requests.c.reference == reference)).first():
        return {"status": "duplicate"}
    at = event["occurred_at"]
    customer_id, data, status = None, None, "nothing-held"
    if kind == "shop_redact":
        data = erase_channel(conn, event["channel"], at)
        status = "erased"
    else:
        customer_id = _requester(conn, identity, event)
        if customer_id is not None and kind == "data_request":
            data, status = export_customer(conn, customer_id), "exported"
        elif customer_id is not None:
            data, status = erase_customer(conn, customer_id, at), "erased"
    conn.execute(privacy_requests.insert().values(
        channel=event["channel"], kind=kind, reference=reference, customer_id=customer_id, status=status,
        data=json.loads(dumps(data)) if data is not None else None, received_at=at))
    return {"status": status, "customer_id": customer_id}


def erase_channel(conn: Connection, channel: str, at: datetime) -> dict:
    """A shop's redaction: erase customers known only through ``channel``, the
    raw bodies of its deliveries, and its stored credentials."""
    of_channel = select(customer_links.c.customer_id).where(customer_links.c.channel == channel)
    linked = {r.customer_id for r in conn.execute(of_channel)}
    # Known elsewhere: linked in another channel, or buying there. (A subquery,
    # not the ids: a large shop links more customers than a statement takes parameters.)
    elsewhere = {r.customer_id for r in conn.execute(
        select(customer_links.c.customer_id).where(customer_links.c.channel != channel,
                                                   customer_links.c.customer_id.in_(of_channel))
        .union(select(orders.c.customer_id).where(orders.c.channel != channel, orders.c.customer_id.in_(of_channel))))}
    only_here = sorted(linked - elsewhere)
    # The channel's own bodies first: each customer's search below then reads
    # only what other channels sent (an erased body is a few bytes).
    bodies = conn.execute(update(inbox).where(inbox.c.channel == channel, inbox.c.body != ERASED_BODY)
                          .values(body=ERASED_BODY, headers=None)).rowcount
    for customer_id in only_here:
        erase_customer(conn, customer_id, at)
    conn.execute(delete(shop_credentials).where(shop_credentials.c.channel == channel))
    return {"customers_erased": len(only_here), "customers_kept_for_other_channels": len(linked & elsewhere),
            "deliveries_erased": bodies}


def requests(conn: Connection, limit: int = 100) -> list:
    return conn.execute(select(privacy_requests).order_by(privacy_requests.c.id.desc()).limit(limit)).all()
