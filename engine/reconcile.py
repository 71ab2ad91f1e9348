"""Reconciliation: what the webhooks missed, fetched from the shops' APIs and
fed through the same idempotent path.

WooCommerce delivers each webhook at most once and Shopify guarantees none, so
`regulars reconcile shopify|woocommerce [--since DATE]` pages through the
shop's orders (with their refunds) changed since a date and ingests each as an
``orders/updated`` (Shopify) or ``order.updated`` (WooCommerce) delivery. A
snapshot already seen is a duplicate; an order the engine knows is merged by
its version and refund ids (engine.orders), so nothing is counted twice when a
webhook and a reconciliation both bring it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from engine.outbox import shop_client

TOPICS = {"shopify": "orders/updated", "woocommerce": "order.updated"}
#: the header that marks a delivery as fetched, not pushed (kept in the inbox)
SOURCE_HEADER = "X-Regulars-Source"


def reconcile(engine, channel: str, since: datetime | None = None,
              progress: Callable[[int], None] | None = None, client=None) -> tuple[Counter, list]:
    """Fetch and ingest the channel's orders changed since ``since``. Returns
    the outcomes counted by status and the failed ones."""
    if channel not in TOPICS:
        raise ValueError(f"reconcile works for {' and '.join(TOPICS)}, not {channel!r}")
    engine.connector(channel)  # configured?
    client = client or shop_client(engine, channel)
    topic = TOPICS[channel]
    counts: Counter = Counter()
    failed = []
    for order in client.orders(since):
        body = json.dumps(order, ensure_ascii=False).encode()
        outcome = engine.ingest(channel, topic, body, {SOURCE_HEADER: "reconcile"})
        counts[outcome.status] += 1
        if outcome.status == "failed":
            failed.append(outcome)
        if progress:
            progress(1)
    return counts, failed
