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
import re
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
                        "body": r["body"]} for r in _inbox_rows(conn, _delivery_ids(conn, ids))],
    }


#: ids in one ``IN (...)`` (PostgreSQL's driver takes 65,535 parameters, old SQLite builds 32,766)
_IDS_PER_STATEMENT = 10_000


def _inbox_rows(conn: Connection, ids: list[int]) -> list[dict]:
    return [row for start in range(0, len(ids), _IDS_PER_STATEMENT)
            for row in _rows(conn, select(inbox).where(inbox.c.id.in_(ids[start:start + _IDS_PER_STATEMENT]))
                             .order_by(inbox.c.id))]


def _marks(conn: Connection, ids: list[int]) -> tuple[list[bytes], dict[str, set[str]]]:
    """What marks a raw delivery as this person's: their emails and phones
    (anywhere in a body), and per channel the ids it gave them."""
    texts = set()
    for row in conn.execute(select(customers.c.email, customers.c.phone).where(customers.c.id.in_(ids))):
        texts.update(v for v in (row.email, row.phone) if v)
    channel_ids: dict[str, set[str]] = {}
    for row in conn.execute(select(customer_links.c.channel, customer_links.c.external_id)
                            .where(customer_links.c.customer_id.in_(ids))):
        if row.external_id.isdigit():  # the shops' ids are numbers; a card code is not in a body
            channel_ids.setdefault(row.channel, set()).add(row.external_id)
    return [t.encode() for t in texts], channel_ids


# In a body that does not parse (kept raw because it failed): any "id" or
# "customer_id" whose whole number is theirs.
_ANY_ID = re.compile(rb'"(?:customer_)?id"\s*:\s*"?(\d+)')


def _as_id(value) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else None


def _names(body: bytes, topic: str, texts: list[bytes], ids: set[str]) -> bool:
    """Whether a raw delivery is the person's: it holds their email or phone,
    or the channel's id for them where that id names a customer (a
    ``customer_id``, a ``customer`` object's ``id``, a customer body's own
    ``id``), not wherever the same digits begin a longer number or are a line
    item's or a tax line's id."""
    if any(text in body for text in texts):
        return True
    if not ids:
        return False
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return any(found.decode() in ids for found in _ANY_ID.findall(body))
    if "customer" in topic and isinstance(document, dict) and _as_id(document.get("id")) in ids:
        return True
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if _as_id(item.get("customer_id")) in ids:
                return True
            customer = item.get("customer")
            if isinstance(customer, dict) and _as_id(customer.get("id")) in ids:
                return True
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
    return False


def _delivery_ids(conn: Connection, ids: list[int]) -> list[int]:
    """Inbox rows whose raw body is the person's (``_names``). The database
    finds the candidates by a byte search, in its own words; each is then
    read and decided here."""
    texts, channel_ids = _marks(conn, ids)
    find = "position(:{name} in body) > 0" if conn.dialect.name == "postgresql" else "instr(body, :{name}) > 0"
    terms, params = [], {}
    for text_ in texts:
        params[f"n{len(params)}"] = text_
        terms.append(find.format(name=f"n{len(params) - 1}"))
    for channel, numbers in sorted(channel_ids.items()):
        spellings = []
        for number in sorted(numbers):
            for spelling in (f'"customer_id": {number}', f'"customer_id":{number}', f'"id": {number}',
                             f'"id":{number}', f'"customer_id": "{number}', f'"customer_id":"{number}'):
                params[f"n{len(params)}"] = spelling.encode()
                spellings.append(find.format(name=f"n{len(params) - 1}"))
        params[f"c{len(params)}"] = channel
        terms.append(f"(channel = :c{len(params) - 1} AND ({' OR '.join(spellings)}))")
    if not terms:
        return []
    candidates = conn.execute(select(inbox.c.id, inbox.c.channel, inbox.c.topic, inbox.c.body)
                              .where(text(f"({' OR '.join(terms)})").bindparams(**params))
                              .order_by(inbox.c.id).execution_options(yield_per=500))  # bodies, a few at a time
    return [row.id for row in candidates
            if _names(bytes(row.body), row.topic, texts, channel_ids.get(row.channel, set()))]


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
    deliveries = _delivery_ids(conn, ids)
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
