"""The outbox: effects in the shops, written in the same transaction as the
change that calls for them, delivered afterwards with retries.

connector → canonical event → inbox → pipeline → rules → ledger → **outbox**.

Three kinds of rows:

- ``customer.sync``: write the customer's points, pending points, tier, stamps
  and card code into the shop (Shopify customer metafields through GraphQL
  ``metafieldsSet``; WooCommerce customer ``meta_data``). One row per customer
  and channel: the deliverer sends the state as it is when it runs, so a retry
  or a late delivery can never write an old balance. A change bumps the row's
  ``version``; a delivery that raced a newer change leaves the row pending.
- ``reward.coupon``: create an issued reward's code as a single-use coupon for
  that customer (Shopify ``discountCodeBasicCreate``; a WooCommerce coupon with
  ``usage_limit`` 1 and ``email_restrictions``), in the shops its catalogue
  entry's ``channels`` allow. Creating it twice is harmless: the clients find
  the existing code.
- ``reward.retire``: remove the coupon from the other shops once the reward is
  spent in one (or expires).

A channel takes part when its connector is configured and it has credentials
(engine.credentials). A failure that may mend (429, 5xx, a shop that is down)
is retried with exponential backoff, honouring ``Retry-After``, up to
``MAX_ATTEMPTS``; one that can't (a 4xx, ``userErrors``) is kept as ``failed``
with the shop's words, for ``regulars outbox retry``. Nothing is dropped.
"""

from __future__ import annotations

import logging
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from engine.background import BackgroundLoop
from engine.credentials import ENV_CREDENTIALS
from engine.db import as_utc, utcnow
from engine.db.models import customer_links, customers, outbox, rewards
from engine.ledger import insert_ignore, insert_ignore_statement
from engine.notify import CHANNEL as NOTIFY_CHANNEL
from engine.notify import EXPIRING as POINTS_EXPIRING
from engine.notify import POINTS as POINTS_CHANGED
from engine.notify import REWARD as REWARD_ISSUED
from engine.notify import STAMPS as STAMPS_CHANGED
from engine.notify import TIER as TIER_CHANGED
from engine.notify import Notifier, entry_subject, expiring_subject, tier_subject

log = logging.getLogger("regulars.outbox")

OUTBOUND_CHANNELS = ("shopify", "woocommerce")
CREDENTIAL_HINTS = {channel: tuple(names.values()) for channel, names in ENV_CREDENTIALS.items()}
PENDING, DONE, FAILED = "pending", "done", "failed"
SYNC, COUPON, RETIRE, NOTIFY = "customer.sync", "reward.coupon", "reward.retire", "notify"
#: tries before a retryable failure is given up as failed: about a day (30 s
#: doubling to an hour, then hourly)
MAX_ATTEMPTS = 31
#: seconds before a first retry; doubled each time up to MAX_DELAY
BASE_DELAY, MAX_DELAY = 30.0, 3600.0
#: how long a claimed row is left to its deliverer before another may take it
LEASE = timedelta(minutes=5)
#: the reward kinds a shop's coupon can express
COUPON_KINDS = ("fixed_amount", "percentage", "free_product")


def backoff(attempts: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failure: exponential with
    jitter, never sooner than the shop's ``Retry-After``."""
    delay = min(BASE_DELAY * 2 ** max(attempts - 1, 0), MAX_DELAY) * random.uniform(0.8, 1.2)
    return max(delay, retry_after or 0.0)


_SYNC_UPSERT = text(
    "INSERT INTO outbox (key, kind, channel, customer_id, subject, version, status, attempts, due_at, "
    "created_at, updated_at) "
    "SELECT 'sync:' || l.channel || ':' || l.external_id, 'customer.sync', l.channel, l.customer_id, "
    "l.external_id, 1, 'pending', 0, :now, :now, :now "
    "FROM customer_links l WHERE l.customer_id = :customer_id AND l.channel IN :channels "
    "ON CONFLICT (key) DO UPDATE SET version = outbox.version + 1, status = 'pending', attempts = 0, "
    "customer_id = excluded.customer_id, due_at = excluded.due_at, updated_at = excluded.updated_at, "
    "last_error = NULL"
).bindparams(bindparam("channels", expanding=True), bindparam("now", type_=outbox.c.due_at.type))


class Outbox:
    """Writes outbox rows inside the caller's transaction."""

    def __init__(self, credentials, channels, notify: dict | None = None):
        self.credentials = credentials
        #: the configured channels that can take effects
        self.channels = tuple(c for c in OUTBOUND_CHANNELS if c in set(channels))
        #: ``[notify]`` (engine.notify), or None: nothing is notified
        self.notify = notify

    def enabled(self, conn: Connection) -> list[str]:
        """The channels with credentials now (looked up at most every few seconds)."""
        found = []
        for channel in self.channels:
            try:
                if self.credentials.get(channel, conn) is not None:
                    found.append(channel)
            except DBAPIError:
                # The transaction's own trouble, not the credentials' (on PostgreSQL
                # this read also sends the writes deferred before it): it must fail.
                raise
            except Exception:  # unreadable credentials: the deliverer says so
                found.append(channel)
        return found

    def customer_changed(self, conn: Connection, customer_id: int) -> None:
        """The customer's balance, tier or stamps changed: sync them to every
        enabled channel that knows the customer."""
        channels = self.enabled(conn)
        if channels:
            conn.execute(_SYNC_UPSERT, {"customer_id": customer_id, "channels": channels, "now": utcnow()})

    def points_posted(self, conn: Connection, customer_id: int, key: str) -> None:
        """Points were posted (the ledger entry ``key``): notify ``[notify] url``
        when it asks for ``points.changed``."""
        if self.notify is not None and POINTS_CHANGED in self.notify["events"]:
            self._notification(conn, customer_id, entry_subject(key))

    def stamps_posted(self, conn: Connection, customer_id: int, key: str) -> None:
        """Stamps were posted on a card (the ledger entry ``key``): notify
        ``[notify] url`` when it asks for ``stamps.changed``."""
        if self.notify is not None and STAMPS_CHANGED in self.notify["events"]:
            self._notification(conn, customer_id, entry_subject(key))

    def points_expiring(self, conn: Connection, customer_id: int, points: int, expires_at: datetime,
                        now: datetime) -> None:
        """The ``expiry-reminders`` job found ``points`` of the customer's that
        expire from ``expires_at`` on (each lot is reminded once): notify
        ``[notify] url`` when it asks for ``points.expiring``."""
        if self.notify is not None and POINTS_EXPIRING in self.notify["events"]:
            self._notification(conn, customer_id, expiring_subject(customer_id, points, expires_at, now))

    def tier_changed(self, conn: Connection, customer_id: int, old: str | None, new: str | None,
                     since: datetime | None) -> None:
        """The customer's tier now is ``new`` (from ``since``), not ``old``:
        notify ``[notify] url`` when it asks for ``tier.changed``."""
        if self.notify is not None and TIER_CHANGED in self.notify["events"]:
            self._notification(conn, customer_id, tier_subject(customer_id, old, new, since))

    def _notification(self, conn: Connection, customer_id: int, subject: str) -> None:
        now = utcnow()
        values = {"key": f"notify:{subject}", "kind": NOTIFY, "channel": NOTIFY_CHANNEL, "customer_id": customer_id,
                  "subject": subject, "version": 1, "status": PENDING, "attempts": 0, "due_at": now,
                  "created_at": now, "updated_at": now}
        # (nothing reads it: on PostgreSQL it goes with the transaction's next statement)
        insert_ignore_statement(outbox, tuple(values), ["key"]).later(conn, values)

    def reward_issued(self, conn: Connection, customer_id: int, code: str, kind: str, channel: str | None,
                      spendable_in: list[str] | None = None) -> None:
        """A reward was issued: make its code a coupon in the channel it was
        issued for, or in every enabled channel that knows the customer; only
        in the channels of ``spendable_in`` (its catalogue entry's
        ``channels``) when it names any. Notify ``[notify] url`` when it asks
        for ``reward.issued``."""
        if self.notify is not None and REWARD_ISSUED in self.notify["events"]:
            self._notification(conn, customer_id, f"reward:{code}")
        if kind not in COUPON_KINDS:
            return
        enabled = [c for c in self.enabled(conn) if not spendable_in or c in spendable_in]
        if channel is not None:
            targets = [channel] if channel in enabled else []
        else:
            linked = {r.channel for r in conn.execute(
                select(customer_links.c.channel).where(customer_links.c.customer_id == customer_id))}
            targets = [c for c in enabled if c in linked]
        now = utcnow()
        for target in targets:
            insert_ignore(conn, outbox, {
                "key": f"coupon:{target}:{code}", "kind": COUPON, "channel": target, "customer_id": customer_id,
                "subject": code, "version": 1, "status": PENDING, "attempts": 0, "due_at": now,
                "created_at": now, "updated_at": now,
            }, ["key"])

    def reward_closed(self, conn: Connection, codes: list[str], spent_in: str | None = None) -> None:
        """Rewards were spent (in channel ``spent_in``) or expired: coupons not
        created yet are not created; those created elsewhere are removed."""
        if not codes:
            return
        now = utcnow()
        rows = conn.execute(select(outbox).where(outbox.c.kind == COUPON, outbox.c.subject.in_(codes))).all()
        for row in rows:
            if row.channel == spent_in:
                continue
            if row.status != DONE:
                conn.execute(update(outbox).where(outbox.c.id == row.id)
                             .values(status=DONE, result="not needed: the reward was closed", updated_at=now,
                                     done_at=now))
                continue
            insert_ignore(conn, outbox, {
                "key": f"retire:{row.channel}:{row.subject}", "kind": RETIRE, "channel": row.channel,
                "customer_id": row.customer_id, "subject": row.subject, "version": 1, "status": PENDING,
                "attempts": 0, "due_at": now, "created_at": now, "updated_at": now,
            }, ["key"])


def shop_client(engine, channel: str):
    """The API client for a channel's shop (``ShopifyAdmin``, ``WooStore``),
    with its credentials; ``Unreachable`` saying what is missing."""
    creds = engine.credentials.get(channel)
    if creds is None:
        variables = " and ".join(CREDENTIAL_HINTS.get(channel, ()))
        raise Unreachable(f"no credentials for {channel}: install the app (see the README) or set {variables}",
                          retryable=True)
    settings = engine.connector(channel).settings
    if channel == "shopify":
        from connectors.shopify.admin import ShopifyAdmin

        return ShopifyAdmin(creds.get("shop") or settings["shop"], creds["token"],
                            settings.get("api_version") or "2026-04", base_url=settings.get("api_url"))
    if channel == "woocommerce":
        from connectors.woocommerce.rest import WooStore

        return WooStore(creds.get("shop") or settings["url"], creds["consumer_key"], creds["consumer_secret"])
    raise Unreachable(f"{channel} has no shop API", retryable=False)


class Unreachable(Exception):
    """A delivery that can't be done now; ``retryable`` says whether later may."""

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class Report:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delivered or self.retrying or self.failed)


class Deliverer:
    """Delivers due outbox rows through the shops' API clients."""

    def __init__(self, engine, clients: dict | None = None, gate=None):
        self.engine = engine
        #: channel → a client factory override (tests)
        self._clients = dict(clients or {})
        #: held around each of its write transactions, never around a call to a
        #: shop (``regulars serve``: the receipt writer's ``WriteGate``)
        self.gate = gate if gate is not None else nullcontext()

    # -- clients ------------------------------------------------------------------

    def client(self, channel: str):
        if channel in self._clients:
            return self._clients[channel]()
        if channel == NOTIFY_CHANNEL:
            settings = self.engine.config.notify
            if settings is None:
                raise Unreachable("[notify] is not in plugins.toml any more: nothing to send to", retryable=False)
            return Notifier(settings["url"], settings["secret"])
        return shop_client(self.engine, channel)

    # -- delivering ---------------------------------------------------------------

    def claim(self, limit: int, now: datetime) -> list:
        """Take up to ``limit`` due rows: their due time moves past a lease, so
        another deliverer (a second process) doesn't take them meanwhile."""
        db = self.engine.db
        query = (select(outbox).where(outbox.c.status == PENDING, outbox.c.due_at <= now)
                 .order_by(outbox.c.due_at, outbox.c.id).limit(limit))
        if db.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.gate, db.begin() as conn:
            rows = conn.execute(query).all()
            if rows:
                conn.execute(update(outbox).where(outbox.c.id.in_([r.id for r in rows]))
                             .values(due_at=now + LEASE))
        return rows

    def deliver_due(self, limit: int = 50, now: datetime | None = None) -> Report:
        """Deliver what is due; one pass. Returns what happened."""
        self.engine.ensure_schema()
        report = Report()
        now = now or utcnow()
        for row in self.claim(limit, now):
            try:
                result = self.deliver(row)
            except Exception as exc:  # the client's own errors carry .retryable
                retryable = getattr(exc, "retryable", None)
                if retryable is None:
                    log.exception("outbox %s (%s %s) failed", row.id, row.kind, row.channel)
                    retryable = True
                message = f"{type(exc).__name__}: {exc}"
                if self._failed(row, message, retryable, getattr(exc, "retry_after", None), now):
                    report.retrying += 1
                else:
                    report.failed += 1
                report.errors.append(f"{row.kind} {row.channel} {row.subject}: {message}")
            else:
                self._done(row, result)
                report.delivered += 1
        return report

    def deliver(self, row) -> str | None:
        client = self.client(row.channel)
        if row.kind == SYNC:
            return self._sync(client, row)
        if row.kind == COUPON:
            return self._coupon(client, row)
        if row.kind == NOTIFY:
            from engine.notify import payload

            body = payload(self.engine, row)
            return client.send(body) if body is not None else "skipped: what it was about is gone"
        if row.kind == RETIRE:
            removed = (client.delete_discount_code(row.subject) if row.channel == "shopify"
                       else client.delete_coupon(row.subject))
            return "removed" if removed else "was not there"
        raise Unreachable(f"unknown outbox kind {row.kind!r}", retryable=False)

    def _sync(self, client, row) -> str:
        from engine.customers import customer_summary, next_expiry

        summary = customer_summary(self.engine, f"{row.channel}:{row.subject}")
        if summary is None:
            return "skipped: the customer is no longer linked"
        values = {
            "points": summary["points"],
            "points_pending": summary["points_pending"],
            "tier": summary["tier"] or "",
            "stamps": summary["stamps"],
            "card_code": summary["card_code"],
        }
        if self.engine.ledger.expiry_months:
            with self.engine.db.connect() as conn:
                # {"on": "2027-01-15", "points": 50}: the first day some points expire (None clears it)
                values["points_expire_next"] = next_expiry(self.engine, conn, summary["id"])
        if row.channel == "shopify":
            client.set_customer_metafields(row.subject, values)
        else:
            client.set_customer_meta(row.subject, values)
        return f"points={values['points']} tier={values['tier'] or '-'}"

    def _coupon(self, client, row) -> str:
        with self.engine.db.connect() as conn:
            reward = conn.execute(select(rewards).where(rewards.c.code == row.subject)).one_or_none()
            if reward is None:
                raise Unreachable(f"no reward with code {row.subject}", retryable=False)
            person = conn.execute(select(customers.c.email).where(customers.c.id == reward.customer_id)).one()
            link = conn.execute(select(customer_links.c.external_id).where(
                customer_links.c.customer_id == reward.customer_id,
                customer_links.c.channel == row.channel).order_by(customer_links.c.id)).first()
        if reward.status != "issued":
            return f"skipped: the reward is {reward.status}"
        entry = self.engine.catalogue.entries.get(reward.reward, {})
        title = f"regulars: {reward.reward}"
        expires = as_utc(reward.expires_at)
        value = reward.value
        if row.channel == "shopify":
            if link is None:
                raise Unreachable("the customer has no Shopify id yet", retryable=True)
            return client.create_discount_code(code=reward.code, title=title, customer_id=link.external_id,
                                               kind=reward.kind, value=value, ends_at=expires,
                                               currency=self.engine.config.engine.get("currency"))
        products = None
        if reward.kind == "free_product" and (reward.sku or entry.get("sku")):
            products = client.product_ids_for_sku(reward.sku or entry.get("sku"))
        coupon = client.create_coupon(code=reward.code, kind=reward.kind, amount=value, email=person.email,
                                      expires_at=expires, description=title, product_ids=products)
        return str(coupon)

    def _done(self, row, result) -> None:
        now = utcnow()
        with self.gate, self.engine.db.begin() as conn:
            # A sync that raced a newer change stays pending for that change.
            changed = conn.execute(
                update(outbox).where(outbox.c.id == row.id, outbox.c.version == row.version)
                .values(status=DONE, attempts=row.attempts + 1, result=(result or "")[:255], last_error=None,
                        updated_at=now, done_at=now)).rowcount
            if not changed:
                conn.execute(update(outbox).where(outbox.c.id == row.id).values(due_at=now))

    def _failed(self, row, message: str, retryable: bool, retry_after: float | None,
                now: datetime | None = None) -> bool:
        """Record a failure; True when it will be tried again."""
        now = now or utcnow()
        attempts = row.attempts + 1
        again = retryable and attempts < MAX_ATTEMPTS
        values = {"attempts": attempts, "last_error": message[:2000], "updated_at": now}
        if again:
            values["due_at"] = now + timedelta(seconds=backoff(attempts, retry_after))
        else:
            values["status"] = FAILED
        with self.gate, self.engine.db.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.id == row.id).values(**values))
        log.warning("outbox %s (%s %s %s) %s: %s", row.id, row.kind, row.channel, row.subject,
                    "will retry" if again else "failed", message)
        return again


def listing(conn: Connection, status: str | None = None, limit: int = 100) -> list:
    query = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
    if status:
        query = query.where(outbox.c.status == status)
    return conn.execute(query).all()


def retry(conn: Connection, ids: list[int] | None = None) -> int:
    """Make failed rows (or the given ones) due again now, attempts reset."""
    condition = outbox.c.id.in_(ids) if ids else outbox.c.status == FAILED
    return conn.execute(update(outbox).where(condition).values(
        status=PENDING, attempts=0, due_at=utcnow(), updated_at=utcnow())).rowcount


def depth(conn: Connection) -> dict[str, int]:
    from sqlalchemy import func

    rows = conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all()
    return {status: n for status, n in rows}


class OutboxWorker(BackgroundLoop):
    """Delivers the outbox in the background, in-process (``regulars serve``):
    every ``interval`` seconds, or at once when woken."""

    def __init__(self, deliverer: Deliverer, interval: float = 1.0):
        super().__init__("outbox", interval, join_timeout=15)
        self.deliverer = deliverer

    def step(self) -> Report:
        return self.deliverer.deliver_due()
