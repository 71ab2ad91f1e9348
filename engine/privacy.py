"""A customer's data, exported or erased (GDPR requests; Shopify's mandatory
privacy webhooks will call the same two functions).

Erasing removes what identifies the person (email, phone, names, address,
birthday, marketing consent, order notes, and the raw deliveries that carry any
of them) and keeps everything the ledger's sums need: the customer row under its
id, its accounts and entries, its orders' amounts. The audit stays clean and
every balance stays exact.

Of each email and phone erased, a SHA-256 digest is kept with the customer
and the time (``erasures``): a snapshot taken before the erasure that arrives
later (a webhook retried, an order re-read by a reconcile run) then finds the
erased customer, changes none of their erased data, and its raw body is
erased once applied; it does not make the person anew from the email, nor
move their orders away. A snapshot taken after the erasure is the person back:
it makes or fills a customer as any snapshot does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from engine.adjustments import REASON as ADJUSTED
from engine.db.models import (
    accounts,
    card_links,
    customer_links,
    customers,
    erasures,
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
from engine.identity import erased_digest, normalize_email
from engine.inbox import ERASED_BODY

PERSONAL = ("email", "phone", "first_name", "last_name", "address", "birthday", "accepts_marketing")
#: what an adjustment's note becomes
ERASED_NOTE = "(erased on request)"


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


@dataclass(frozen=True)
class Marks:
    """What names people in raw deliveries: normalized emails, phones (their
    last nine digits: ``_phone_key``) and ``(channel, id)`` pairs."""

    emails: frozenset[str] = frozenset()
    phones: frozenset[str] = frozenset()
    ids: frozenset[tuple[str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.emails or self.phones or self.ids)

    def meets(self, other: Marks) -> bool:
        return not (self.emails.isdisjoint(other.emails) and self.phones.isdisjoint(other.phones)
                    and self.ids.isdisjoint(other.ids))

    def each(self):
        yield from (("email", e) for e in self.emails)
        yield from (("phone", p) for p in self.phones)
        yield from (("id", i) for i in self.ids)


def _phone_key(raw: str) -> str | None:
    """A phone number's last nine digits, however it is written (``+420 601
    123 456``, ``601-123-456``, ``00420601123456``), or None below seven."""
    digits = "".join(c for c in raw if c in "0123456789")
    return digits[-9:] if len(digits) >= 7 else None


def marks_of(conn: Connection, ids: list[int]) -> Marks:
    """The marks of these customers: their emails, phones, and the ids the
    channels gave them (the shops' ids are numbers; a card code is not in a body)."""
    emails, phones = set(), set()
    for row in conn.execute(select(customers.c.email, customers.c.phone).where(customers.c.id.in_(ids))):
        if row.email:
            emails.add(row.email)
        if row.phone and (key := _phone_key(row.phone)):
            phones.add(key)
    links = conn.execute(select(customer_links.c.channel, customer_links.c.external_id)
                         .where(customer_links.c.customer_id.in_(ids)))
    return Marks(frozenset(emails), frozenset(phones),
                 frozenset((r.channel, r.external_id) for r in links if r.external_id.isdigit()))


# An address inside any text (a note, a name field), before it is normalized.
_EMAIL = re.compile(r"[^\s@<>\"',;:()\[\]{}]+@[^\s@<>\"',;:()\[\]{}]+")
# In a body that does not parse (kept raw because it failed): phones and ids as written.
_RAW_PHONE = re.compile(r'"[^"]*phone[^"]*"\s*:\s*"([^"]*)"', re.IGNORECASE)
_RAW_ID = re.compile(r'"(?:customer_)?id"\s*:\s*"?(\d+)')
_E164 = re.compile(r"\+\d{7,15}")


def _as_id(value) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else None


def marks_in(body: bytes, channel: str, topic: str) -> Marks:
    """The marks a raw delivery holds: every email address in any of its
    texts; every phone under a key that says phone; the channel's customer
    ids where they name a customer (a ``customer_id``, a ``customer``
    object's ``id``, a customer body's own ``id``), not a line item's or a
    tax line's id, nor the first digits of a longer number."""
    emails, phones, ids = set(), set(), set()

    def text(value: str) -> None:
        if "@" in value:
            for found in _EMAIL.findall(value):
                if email := normalize_email(found.strip(".")):
                    emails.add(email)
        if "+" in value:  # a phone in its international form, in a note say
            phones.update(key for found in _E164.findall(value) if (key := _phone_key(found)))

    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # as written
        raw = body.decode("utf-8", "replace")
        text(raw)
        phones.update(key for found in _RAW_PHONE.findall(raw) if (key := _phone_key(found)))
        ids.update((channel, found) for found in _RAW_ID.findall(raw))
        return Marks(frozenset(emails), frozenset(phones), frozenset(ids))
    if "customer" in topic and isinstance(document, dict) and (own := _as_id(document.get("id"))):
        ids.add((channel, own))
    stack: list = [(None, document)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, str):
            text(item)
            if key is not None and "phone" in key.lower() and (phone := _phone_key(item)):
                phones.add(phone)
        elif isinstance(item, list):
            stack.extend((key, v) for v in item)
        elif isinstance(item, dict):
            if (named := _as_id(item.get("customer_id"))) is not None:
                ids.add((channel, named))
            customer = item.get("customer")
            if isinstance(customer, dict) and (named := _as_id(customer.get("id"))) is not None:
                ids.add((channel, named))
            stack.extend((k, v) for k, v in item.items() if isinstance(v, str | list | dict))
    return Marks(frozenset(emails), frozenset(phones), frozenset(ids))


def _stored_bodies(conn: Connection, *where):
    """``(id, channel, topic, body)`` of the inbox's rows not yet erased, a
    few hundred bodies in memory at a time."""
    query = (select(inbox.c.id, inbox.c.channel, inbox.c.topic, inbox.c.body)
             .where(inbox.c.body != ERASED_BODY, *where).order_by(inbox.c.id).execution_options(yield_per=500))
    for row in conn.execute(query):
        yield row.id, row.channel, row.topic, bytes(row.body)


def _delivery_ids(conn: Connection, ids: list[int]) -> list[int]:
    """The inbox rows whose raw body names the person (``marks_in``). Every
    stored body is read; one that holds none of their emails (in any case),
    phones' last digits or ids is passed over without parsing it."""
    theirs = marks_of(conn, ids)
    if not theirs:
        return []
    emails = [e.encode() for e in theirs.emails]
    tails = [p[-2:].encode() for p in theirs.phones]  # a phone's last two digits are written together
    numbers = {(channel, number.encode()) for channel, number in theirs.ids}
    found = []
    for inbox_id, channel, topic, body in _stored_bodies(conn):
        lower = body.lower()
        if (any(e in lower for e in emails) or any(t in body for t in tails)
                or any(c == channel and n in body for c, n in numbers)):
            if marks_in(body, channel, topic).meets(theirs):
                found.append(inbox_id)
    return found


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
    return _erase_people(conn, ids, at, _delivery_ids(conn, ids))


def _erase_people(conn: Connection, ids: list[int], at: datetime, deliveries: list[int]) -> dict:
    """Erase the personal data of one person (``ids``: the customer and those
    merged into them) and blank their raw ``deliveries``."""
    for start in range(0, len(deliveries), _IDS_PER_STATEMENT):  # (a driver takes 65,535 parameters at most)
        conn.execute(update(inbox).where(inbox.c.id.in_(deliveries[start:start + _IDS_PER_STATEMENT]))
                     .values(body=ERASED_BODY, headers=None))
    # What is left of their emails and phones: a digest, so that a snapshot
    # taken before the erasure (a late webhook, a reconcile run's re-read)
    # finds this customer by it instead of making them anew (engine.identity).
    keys = conn.execute(select(customers.c.id, customers.c.email, customers.c.phone)
                        .where(customers.c.id.in_(ids))).all()
    digests = [{"customer_id": row.id, "digest": erased_digest(kind, value), "erased_at": at.astimezone(UTC)}
               for row in keys for kind, value in (("email", row.email), ("phone", row.phone)) if value]
    if digests:
        conn.execute(erasures.insert(), digests)
    # Stamped as of the erasure: a snapshot taken before it brings none of
    # what they had back to the customer it finds (engine.identity).
    conn.execute(update(customers).where(customers.c.id.in_(ids))
                 .values(**dict.fromkeys(PERSONAL), fields_at=dict.fromkeys(PERSONAL, at.isoformat()), updated_at=at))
    notes = 0
    for row in conn.execute(select(orders.c.id, orders.c.state).where(orders.c.customer_id.in_(ids))).all():
        state = dict(row.state or {})
        snapshot = dict(state.get("snapshot") or {})
        notes += bool(snapshot.get("attributes"))
        if snapshot.get("attributes") or snapshot.get("address"):
            snapshot["attributes"] = {}
            snapshot.pop("address", None)  # (the shipping address, which the referral guard reads)
            state["snapshot"] = snapshot
            conn.execute(update(orders).where(orders.c.id == row.id).values(state=state))
    # A note written by hand about the customer (an adjustment's) may name them.
    adjusted = conn.execute(
        select(ledger_entries.c.id, ledger_entries.c.detail).join(accounts, accounts.c.id == ledger_entries.c.account_id)
        .where(accounts.c.customer_id.in_(ids), ledger_entries.c.reason == ADJUSTED)).all()
    erased = [row for row in adjusted if (row.detail or {}).get("note") != ERASED_NOTE]
    for row in erased:
        conn.execute(update(ledger_entries).where(ledger_entries.c.id == row.id)
                     .values(detail={**(row.detail or {}), "note": ERASED_NOTE}))
    return {"customers": len(ids), "deliveries": len(deliveries), "orders_with_notes": notes,
            "adjustment_notes": len(erased)}


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
    # The channel's own bodies first, all of them.
    bodies = conn.execute(update(inbox).where(inbox.c.channel == channel, inbox.c.body != ERASED_BODY)
                          .values(body=ERASED_BODY, headers=None)).rowcount
    # Then one reading of what the other channels sent, for all of them at once.
    people = {customer_id: _people(conn, customer_id) for customer_id in only_here}
    owners: dict[tuple, list[int]] = {}
    for customer_id, ids in people.items():
        for mark in marks_of(conn, ids).each():
            owners.setdefault(mark, []).append(customer_id)
    theirs: dict[int, list[int]] = {customer_id: [] for customer_id in only_here}
    if owners:
        for inbox_id, other, topic, body in _stored_bodies(conn, inbox.c.channel != channel):
            named = {owner for mark in marks_in(body, other, topic).each() for owner in owners.get(mark, ())}
            for owner in named:
                theirs[owner].append(inbox_id)
    for customer_id, ids in people.items():
        _erase_people(conn, ids, at, theirs[customer_id])
    conn.execute(delete(shop_credentials).where(shop_credentials.c.channel == channel))
    return {"customers_erased": len(only_here), "customers_kept_for_other_channels": len(linked & elsewhere),
            "deliveries_erased": bodies}


def requests(conn: Connection, limit: int = 100) -> list:
    return conn.execute(select(privacy_requests).order_by(privacy_requests.c.id.desc()).limit(limit)).all()
