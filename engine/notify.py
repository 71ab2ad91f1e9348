"""Notifications: the engine tells a URL of yours what happened to a
customer, so that your mailer, SMS gateway or automation tool (Klaviyo,
Mailchimp, Zapier, n8n, your own code) can tell the customer.

```toml
[notify]
url = "https://hooks.example.com/regulars"
events = ["points.changed", "stamps.changed", "reward.issued", "points.expiring", "tier.changed"]   # the default: all
```

with ``REGULARS_NOTIFY_SECRET`` in the environment (the key of the
signature).

Each notification is an outbox row (``engine.outbox``, kind ``notify``)
written in the transaction that posted the points or issued the reward, so
none is lost and none is sent for work rolled back; the deliverer POSTs it
with retries (429, 5xx and unreachable: backoff up to about a day; another
4xx or a redirect: kept as failed, for ``regulars outbox retry``). A
notification may arrive twice (a lost answer is retried) and out of order:
``id`` is the same each time, to drop the second.

The request: ``POST`` of a JSON body, with ``Content-Type:
application/json``, ``X-Regulars-Event`` (the type), ``X-Regulars-Id`` and
``X-Regulars-Hmac-Sha256``: the base64 HMAC-SHA256 of the raw body with the
secret, as Shopify signs its webhooks. Any 2xx answer is success.

The bodies (``customer``: ``id``, ``email``, ``phone``, ``first_name``,
``last_name``, ``card_code``, ``accepts_marketing``, as they are when sent):

- ``points.changed``: ``{"id", "type", "occurred_at", "customer",
  "change": {"amount", "reason", "source"}, "balance"}``, one per ledger
  entry of points (an order's, a refund's, a redemption's, an expiry's, a
  birthday gift's, an adjustment's, ...; not the pair a merge of two records
  of one person writes). ``balance`` is the customer's balance when sent.
- ``stamps.changed``: ``{"id", "type", "occurred_at", "customer", "card":
  {"name", "required", "reward", "stamps"}, "change": {"amount", "reason",
  "source"}, "balance"}``, one per ledger entry of a stamp card's stamps (an
  order's, a visit's, a refund's taking them back, an adjustment's, a
  birthday gift's; not the entries that empty a full card or reopen it: the
  full card is its ``reward.issued``). ``stamps`` is the open card's count
  when sent (``required`` fill it), ``balance`` the points.
- ``reward.issued``: ``{"id", "type", "occurred_at", "customer", "reward":
  {"code", "reward", "kind", "value", "sku", "cost", "channel",
  "expires_at", "spendable_in"}, "balance"}``.
- ``tier.changed``: ``{"id", "type", "occurred_at", "customer", "tier":
  {"from", "to"}, "balance"}``: an upgrade (at once) or a downgrade (at the
  review); ``None`` is no tier. Orders arriving out of order may move an
  upgrade: each tier the customer held is told of once per time it began.
- ``points.expiring``: ``{"id", "type", "occurred_at", "customer",
  "expiring": {"points", "expires_at"}, "balance"}``: the ``expiry-reminders``
  job found ``points`` that expire from ``expires_at`` on (within
  ``[rules.expiry] remind_days``); each lot is told of once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from marshmallow import ValidationError, fields, validate, validates
from sqlalchemy import select

from engine.config import StrictSchema
from engine.db import as_utc
from engine.db.models import accounts, customers, ledger_entries, rewards
from engine.rules_api import UNIT_POINTS

POINTS, REWARD, EXPIRING, TIER = "points.changed", "reward.issued", "points.expiring", "tier.changed"
STAMPS = "stamps.changed"
EVENTS = (POINTS, STAMPS, REWARD, EXPIRING, TIER)
#: the outbox's channel for notifications (its rows' ``channel``)
CHANNEL = "notify"
SECRET_ENV = "REGULARS_NOTIFY_SECRET"
#: seconds to wait for the receiver
TIMEOUT = 10


class NotifySchema(StrictSchema):
    """``[notify]``: where notifications go, and which."""

    url = fields.String(required=True, validate=validate.Length(max=2000))
    events = fields.List(fields.String(validate=validate.OneOf(EVENTS)), load_default=lambda: list(EVENTS),
                         validate=validate.Length(min=1))

    @validates("url")
    def _url(self, value: str, **kwargs) -> None:
        if not value.startswith(("https://", "http://")) or len(value.split("://", 1)[1]) < 1:
            raise ValidationError("an http:// or https:// URL")


def entry_subject(key: str) -> str:
    """The outbox row's subject for the ledger entry ``key``: ``entry:KEY``, or
    its SHA-256 when that is longer than the column."""
    subject = f"entry:{key}"
    return subject if len(subject) <= 240 else f"entry-sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def expiring_subject(customer_id: int, points: int, expires_at: datetime, now: datetime) -> str:
    """The outbox row's subject for an expiry reminder: what it says, and
    when the job found it (a second reminder of other lots is another row)."""
    return f"expiring:{customer_id}|{points}|{as_utc(expires_at).isoformat()}|{as_utc(now).isoformat()}"


def tier_subject(customer_id: int, old: str | None, new: str | None, since: datetime | None) -> str:
    """The outbox row's subject for a tier change: the tiers (names, any
    characters: JSON) and since when."""
    return "tier:" + json.dumps([customer_id, old, new, as_utc(since).isoformat() if since else None],
                                ensure_ascii=False, separators=(",", ":"))


def _entry(conn, row):
    columns = (ledger_entries.c.amount, ledger_entries.c.reason, ledger_entries.c.source, ledger_entries.c.occurred_at,
               accounts.c.unit)
    if row.subject.startswith("entry:"):
        return conn.execute(select(*columns).join(accounts)
                            .where(ledger_entries.c.key == row.subject[len("entry:"):])).one_or_none()
    digest = row.subject.split(":", 1)[1]  # (a long key: among the customer's entries)
    for entry in conn.execute(select(ledger_entries.c.key, *columns).join(accounts)
                              .where(accounts.c.customer_id == row.customer_id)):
        if hashlib.sha256(entry.key.encode()).hexdigest() == digest:
            return entry
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer to fix in [notify] url, not to follow with a body


_OPENER = urllib.request.build_opener(_NoRedirect)


class Notifier:
    """Sends one notification to ``[notify] url``, signed with the secret."""

    def __init__(self, url: str, secret: str):
        self.url = url
        self.secret = secret.encode()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(hmac.new(self.secret, body, hashlib.sha256).digest()).decode()

    def send(self, payload: dict[str, Any]) -> str:
        """POST ``payload``; what the receiver answered, or ``Unreachable``."""
        from engine.outbox import Unreachable

        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "regulars", "X-Regulars-Event": payload["type"],
            "X-Regulars-Id": payload["id"], "X-Regulars-Hmac-Sha256": self.sign(body)})
        try:
            with _OPENER.open(request, timeout=TIMEOUT) as answer:
                return f"{answer.status} from the receiver"
        except urllib.error.HTTPError as exc:
            said = exc.read(300).decode("utf-8", "replace").strip()
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            where = f" to {exc.headers.get('Location')}" if 300 <= exc.code < 400 and exc.headers else ""
            raise Unreachable(f"the receiver answered {exc.code}{where}" + (f": {said}" if said else ""),
                              retryable=exc.code in (408, 425, 429) or exc.code >= 500,
                              retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"the receiver can't be reached: {reason}", retryable=True) from None


def sample(event: str, now: datetime) -> dict[str, Any]:
    """A notification of ``event`` about a made-up customer, as the real
    ones are shaped, with ``"test": true`` (``regulars notify test``): for
    the receiver to check the signature, and for a tool such as Zapier to
    learn the fields."""
    at = as_utc(now).isoformat()
    body: dict[str, Any] = {
        "id": f"notify:test:{event}:{at}", "type": event, "occurred_at": at, "test": True,
        "customer": {"id": 0, "email": "jana.novakova@example.com", "phone": "+420601123456", "first_name": "Jana",
                     "last_name": "Nováková", "card_code": "TESTCARD2345", "accepts_marketing": True},
        "balance": 140,
    }
    if event == POINTS:
        body["change"] = {"amount": 40, "reason": "order", "source": "order:shopify:1001"}
    elif event == STAMPS:
        body["card"] = {"name": "coffee", "required": 10, "reward": "free-coffee", "stamps": 7}
        body["change"] = {"amount": 1, "reason": "order", "source": "order:pos:till-1:1001"}
    elif event == REWARD:
        body["reward"] = {"code": "TEST-5OFF-CODE", "reward": "five-off", "kind": "fixed_amount", "value": "5",
                          "sku": None, "cost": 500, "channel": None, "expires_at": None, "spendable_in": ["shopify"]}
    elif event == EXPIRING:
        body["expiring"] = {"points": 60, "expires_at": at}
    else:
        body["tier"] = {"from": "silver", "to": "gold"}
    return body


def _customer(conn, customer_id: int) -> dict | None:
    row = conn.execute(select(customers.c.id, customers.c.email, customers.c.phone, customers.c.first_name,
                              customers.c.last_name, customers.c.card_code, customers.c.accepts_marketing)
                       .where(customers.c.id == customer_id)).one_or_none()
    return dict(row._mapping) if row is not None else None


def payload(engine, row) -> dict[str, Any] | None:
    """The body of the outbox row ``row``'s notification, read now (None:
    what it was about is gone)."""
    with engine.db.connect() as conn:
        customer_id = engine.identity.follow(conn, row.customer_id)
        balances = engine.ledger.balances(conn, customer_id)
        if row.subject.startswith("tier:"):
            _, old, new, since = json.loads(row.subject[len("tier:"):])
            found = {"type": TIER, "occurred_at": since, "tier": {"from": old, "to": new}}
        elif row.subject.startswith("expiring:"):
            _, points, expires_at, found_at = row.subject.split("|")
            found = {"type": EXPIRING, "occurred_at": found_at,
                     "expiring": {"points": int(points), "expires_at": expires_at}}
        elif row.subject.startswith("entry"):
            entry = _entry(conn, row)
            if entry is None:
                return None
            found = {"type": POINTS, "occurred_at": _iso(entry.occurred_at),
                     "change": {"amount": entry.amount, "reason": entry.reason, "source": entry.source}}
            if entry.unit != UNIT_POINTS:  # a stamp card's
                found["type"] = STAMPS
                found["card"] = _card(engine, entry.unit, balances)
        else:
            issued = conn.execute(select(rewards).where(rewards.c.code == row.subject[len("reward:"):])).one_or_none()
            if issued is None:
                return None
            from engine.rewards import _issued

            reward = engine.rewards.as_json(_issued(issued))
            found = {"type": REWARD, "occurred_at": reward["issued_at"],
                     "reward": {k: reward.get(k) for k in ("code", "reward", "kind", "value", "sku", "cost", "channel",
                                                           "expires_at", "spendable_in")}}
        person = _customer(conn, customer_id)
        balance = balances.get(UNIT_POINTS, 0) if person is not None else None
    return {"id": row.key, **found, "customer": person, "balance": balance}


def _card(engine, unit: str, balances: dict[str, int]) -> dict:
    """A stamps notification's card: its name, how many stamps fill it, its
    reward, and the open card's stamps now (``balances``: the customer's)."""
    from engine.cards import PREFIX

    name = unit[len(PREFIX):]
    card = engine.cards.cards.get(name)
    return {"name": name, "required": card.required if card else None, "reward": card.reward if card else None,
            "stamps": balances.get(unit, 0)}


def _iso(moment) -> str:
    return as_utc(moment).isoformat()
