"""Reconciliation: what the webhooks missed, fetched from the shops' APIs and
fed through the same idempotent path.

WooCommerce delivers each webhook at most once and Shopify guarantees none, so
`regulars reconcile shopify|woocommerce [--since DATE]` pages through the
shop's orders (with their refunds) changed since a date and ingests each as an
``orders/updated`` (Shopify) or ``order.updated`` (WooCommerce) delivery. A
snapshot already seen is a duplicate; an order the engine knows is merged by
its version and refund ids (engine.orders), so nothing is counted twice when a
webhook and a reconciliation both bring it.

A WooCommerce order lists its refunds by their totals only (tax and shipping
in them), so for each order that lists refunds the client's
``with_refund_details`` reads them (``GET orders/<id>/refunds``): the order
then goes in with their lines and times, under a delivery key of its own, and
each refund takes off only the merchandise of its lines, from when it was made.
If they can't be read (the shop fails even when asked again, or answers what
can't be refunds), or a refund the order lists is not among them, the order
goes in as its webhook would (or with the refunds that were read), and is
counted ``undetailed`` with the reason (``Undetailed``).

Nobody would come back for such an order once it is older than the ``since``
of the runs, so each WooCommerce run then also comes back to up to
``REVISIT_LIMIT`` orders the engine holds with a refund still known only by
its total (``engine.orders.undetailed_refunds``; ``undetailed_orders`` finds
them), the most recently changed first: it reads each again (``GET
orders/<id>``) with its refunds. Once read, a refund is known with its own
time and the order is not asked for again. One the order read again no
longer lists was deleted in the shop (WooCommerce allows it, and leaves the
order's ``date_modified`` as it was): it stops counting, its points come
back (``engine.orders``), and it is counted ``refunds_deleted``. One the
order still lists but its refunds endpoint does not return is asked for on
later runs, behind the others.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text

from connectors.woocommerce.translate import LISTED_AT
from engine.db import utcnow
from engine.db.models import orders
from engine.orders import undetailed_refunds
from engine.outbox import shop_client

TOPICS = {"shopify": "orders/updated", "woocommerce": "order.updated"}
#: the header that marks a delivery as fetched, not pushed (kept in the inbox)
SOURCE_HEADER = "X-Regulars-Source"
#: what an order's delivery came to (``undetailed`` and ``revisited`` are counted beside them)
STATUSES = ("applied", "duplicate", "ignored", "failed")
#: the orders with refunds known only by their totals one run comes back to, at most
REVISIT_LIMIT = 50
#: an order read again lists its refunds as they were this long before the
#: start of the day it was read (the shop's clock and this machine's may differ)
LISTED_MARGIN = timedelta(minutes=10)

log = logging.getLogger(__name__)

# The orders of a channel with a refund that no delivery said the time of:
# known only by the total a webhook lists (engine.orders.undetailed_refunds).
_HAS_UNDETAILED = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(o.state, '$.refunds') r WHERE r.key NOT IN "
              "(SELECT m.key FROM json_each(o.state, '$.refund_made_at') m))",
    "postgresql": "EXISTS (SELECT 1 FROM json_object_keys(o.state -> 'refunds') k "
                  "WHERE o.state -> 'refund_made_at' -> k IS NULL)",
}
_UNDETAILED_ORDERS = {
    dialect: text(f"SELECT o.external_id FROM orders o WHERE o.channel = :channel AND {where} "
                  "ORDER BY o.updated_at DESC, o.id DESC")
    for dialect, where in _HAS_UNDETAILED.items()
}
_STATES = select(orders.c.external_id, orders.c.state).where(
    orders.c.channel == bindparam("channel"), orders.c.external_id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True)
class Undetailed:
    """An order ingested without (all of) its refunds' details, which the
    shop's API would not give: those refunds count whole, as its webhook's do,
    until a later run reads them."""

    order_id: str
    #: the delivery ingested in its place (None: the order itself could not be read)
    inbox_id: int | None
    #: why, in a sentence
    error: str


def reconcile(engine, channel: str, since: datetime | None = None,
              progress: Callable[[int], None] | None = None, client=None,
              revisit: int = REVISIT_LIMIT) -> tuple[Counter, list]:
    """Fetch and ingest the channel's orders changed since ``since``, then (for
    a shop whose refunds are read apart, WooCommerce) up to ``revisit`` older
    orders whose refunds are still known only by their totals. Returns the
    outcomes counted by status (``STATUSES``; ``undetailed``: orders whose
    refunds could not all be read; ``revisited``: the older orders read
    again, counted in their statuses too) and what went wrong: the failed
    deliveries' outcomes and an ``Undetailed`` for each order so counted."""
    if channel not in TOPICS:
        raise ValueError(f"reconcile works for {' and '.join(TOPICS)}, not {channel!r}")
    engine.connector(channel)  # configured?
    client = client or shop_client(engine, channel)
    feed = _Feed(engine, channel, client)
    seen: set[str] = set()
    for order in client.orders(since):
        seen.add(str(order.get("id")))
        feed.order(order)
        if progress:
            progress(1)
    if feed.detail is not None and callable(getattr(client, "order", None)) and revisit > 0:
        with engine.db.connect() as conn:
            again = undetailed_orders(conn, channel, revisit, skip=seen)
        for external_id, known in again.items():
            feed.counts["revisited"] += 1
            feed.revisit(external_id, known)
            if progress:
                progress(1)
    return feed.counts, feed.failed


def undetailed_orders(conn, channel: str, limit: int, skip: Iterable[str] = ()) -> dict[str, list[str]]:
    """Up to ``limit`` of the channel's orders (external ids, not those in
    ``skip``) with refunds known only by their totals, the most recently
    changed first, each with those refunds' ids. (Orders whose refunds the
    shop can never give sink behind those it may give now.)"""
    skip = set(skip)
    query = _UNDETAILED_ORDERS["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    chosen: list[str] = []
    for (external_id,) in conn.execute(query, {"channel": channel}):
        if external_id not in skip:
            chosen.append(external_id)
            if len(chosen) >= limit:
                break
    if not chosen:
        return {}
    states = dict(conn.execute(_STATES, {"channel": channel, "ids": chosen}).all())
    return {external_id: undetailed_refunds(states[external_id]) for external_id in chosen}


def listed_at(now: datetime) -> str:
    """What an order read again at ``now`` says of when its list of refunds
    held (``LISTED_AT``): the start of that day, less ``LISTED_MARGIN``."""
    return (now.replace(hour=0, minute=0, second=0, microsecond=0) - LISTED_MARGIN).isoformat()


class _Feed:
    """One run's ingestion of a channel's orders, with what it counted."""

    def __init__(self, engine, channel: str, client):
        self.engine, self.channel, self.client = engine, channel, client
        self.topic = TOPICS[channel]
        self.detail = getattr(client, "with_refund_details", None)
        self.counts: Counter = Counter()
        self.failed: list = []

    def revisit(self, external_id: str, known: list[str]) -> None:
        """An order the engine holds with refunds ``known`` only by their
        totals, read again with them. Its list of refunds holds from the
        start of the day it was read (``LISTED_AT``, less ``LISTED_MARGIN``
        for the two clocks; a day's runs send one same delivery): one it no
        longer lists, made before, was deleted in the shop, which leaves the
        order's version as it was (``engine.orders``)."""
        try:
            order = self.client.order(external_id)
        except Exception as exc:  # the shop's API (its errors say ``retryable``): the others go on
            if getattr(exc, "retryable", None) is None:
                raise
            self._undetailed(external_id, None, f"the order could not be read again: {exc}")
            return
        self.order({**order, LISTED_AT: listed_at(utcnow())}, known)

    def order(self, order: dict, known: list[str] = ()) -> None:
        """Ingest one order, with its refunds' details when they can be read
        (else as its webhook would); ``known``: the refunds the engine holds
        by their totals only."""
        problem, gone = None, []
        if self.detail is not None and (order.get("refunds") or known):
            order, problem, gone = self._detailed(order, known)
        outcome = self.engine.ingest(self.channel, self.topic, json.dumps(order, ensure_ascii=False).encode(),
                                     {SOURCE_HEADER: "reconcile"})
        self.counts[outcome.status] += 1
        if outcome.status == "failed":
            self.failed.append(outcome)
        if known and problem is None and outcome.status == "duplicate":
            # Read and sent before, yet the engine still holds them by their totals.
            problem = (f"its refunds were read and sent before, as delivery {outcome.inbox_id}, which is not applied "
                       "(failed: `regulars events list --failed`; or still waiting)")
        if gone:  # deleted in the shop: they stop counting (engine.orders), unless this delivery was not applied
            with self.engine.db.connect() as conn:
                state = conn.execute(select(orders.c.state).where(
                    orders.c.channel == self.channel, orders.c.external_id == str(order.get("id")))).scalar() or {}
            kept = [rid for rid in gone if rid in (state.get("refunds") or {})]
            self.counts["refunds_deleted"] += len(gone) - len(kept)
            if kept:
                problem = "; ".join(filter(None, [problem, f"{_refunds_named(kept)} no longer listed by the order "
                                                           "(deleted in the shop?), yet still counted"]))
            if len(kept) < len(gone):
                log.info("reconcile %s: order %s: refunds %s were deleted in the shop: they no longer count",
                         self.channel, order.get("id"), ", ".join(rid for rid in gone if rid not in kept))
        if problem is not None:
            self._undetailed(str(order.get("id")), outcome.inbox_id, problem)

    def _detailed(self, order: dict, known: list[str]) -> tuple[dict, str | None, list[str]]:
        """The order to ingest, with its refunds' details when they can be
        read and used; why some refunds are still without them (or None); and
        which of the ``known`` ones it no longer lists (deleted in the shop)."""
        try:
            detailed = self.detail(order)
        except Exception as exc:  # the shop's API (its errors say ``retryable``): the order goes on
            if getattr(exc, "retryable", None) is None:
                raise
            return order, str(exc), []
        refunds, unusable = self._refunds(detailed)
        if unusable is not None:
            if self._refunds(order)[1] is not None:
                return order, None, []  # the order itself can't go in: a failed delivery, as its webhook's
            return order, f"its refunds as read from the shop can't be used: {unusable}", []
        # (a refund goes in with its own time once read: engine.orders.undetailed_refunds)
        unread = [refund["id"] for refund in refunds if refund.get("occurred_at") is None]
        gone = [rid for rid in known if rid not in {refund["id"] for refund in refunds}]
        oid = order.get("id")
        reasons = []
        if unread:
            reasons.append(f"{_refunds_named(unread)} not among those GET orders/{oid}/refunds returned "
                           "(deleted meanwhile, or moved while its pages were read)")
        return detailed, "; ".join(reasons) or None, gone

    def _refunds(self, order: dict) -> tuple[list[dict], str | None]:
        """The order's refunds as the engine would take them in (translated
        and loaded by ingest's own ``Engine._decide``), or why it would fail
        as a delivery."""
        body = json.dumps(order, ensure_ascii=False).encode()
        events, status, error, _plugin = self.engine._decide(self.channel, self.topic, body, {})
        if status == "failed":
            return [], error
        return [refund for event in events or () for refund in (event.get("order") or {}).get("refunds") or ()], None

    def _undetailed(self, order_id: str, inbox_id: int | None, reason: str) -> None:
        log.warning("reconcile %s: order %s went in without its refunds' details: %s", self.channel, order_id, reason)
        self.counts["undetailed"] += 1
        self.failed.append(Undetailed(order_id, inbox_id, reason))


def _refunds_named(ids: list[str]) -> str:
    """``refund 801 is`` / ``refunds 801 and 802 are``"""
    if len(ids) == 1:
        return f"refund {ids[0]} is"
    return f"refunds {', '.join(ids[:-1])} and {ids[-1]} are"
