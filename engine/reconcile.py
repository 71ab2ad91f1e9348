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
If they can't be read, the order goes in as its webhook would, and is counted
``undetailed`` (a later reconciliation that reads them corrects it).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from engine.outbox import shop_client

TOPICS = {"shopify": "orders/updated", "woocommerce": "order.updated"}
#: the header that marks a delivery as fetched, not pushed (kept in the inbox)
SOURCE_HEADER = "X-Regulars-Source"
#: what an order's delivery came to (``undetailed`` is counted beside them)
STATUSES = ("applied", "duplicate", "ignored", "failed")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Undetailed:
    """An order ingested without its refunds' details, which the shop's API
    would not give: its refunds count whole, as its webhook's do."""

    order_id: str
    #: the delivery ingested in its place
    inbox_id: int
    error: str


def reconcile(engine, channel: str, since: datetime | None = None,
              progress: Callable[[int], None] | None = None, client=None) -> tuple[Counter, list]:
    """Fetch and ingest the channel's orders changed since ``since``. Returns
    the outcomes counted by status (``STATUSES``, and ``undetailed``: orders
    whose refunds could not be read) and what went wrong: the failed
    deliveries' outcomes and an ``Undetailed`` for each order so counted."""
    if channel not in TOPICS:
        raise ValueError(f"reconcile works for {' and '.join(TOPICS)}, not {channel!r}")
    engine.connector(channel)  # configured?
    client = client or shop_client(engine, channel)
    topic = TOPICS[channel]
    detail = getattr(client, "with_refund_details", None)
    counts: Counter = Counter()
    failed: list = []
    for order in client.orders(since):
        problem = None
        if detail is not None and order.get("refunds"):
            try:
                order = detail(order)
            except Exception as exc:  # the shop's API (its errors say ``retryable``): the order goes on
                if getattr(exc, "retryable", None) is None:
                    raise
                problem = str(exc)
                log.warning("reconcile %s: the refunds of order %s were not read: %s", channel,
                            order.get("id"), problem)
        body = json.dumps(order, ensure_ascii=False).encode()
        outcome = engine.ingest(channel, topic, body, {SOURCE_HEADER: "reconcile"})
        counts[outcome.status] += 1
        if outcome.status == "failed":
            failed.append(outcome)
        if problem is not None:
            counts["undetailed"] += 1
            failed.append(Undetailed(str(order.get("id")), outcome.inbox_id, problem))
        if progress:
            progress(1)
    return counts, failed
