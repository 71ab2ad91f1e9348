"""A till that posts canonical events as they are (``{"type": "order.paid",
...}``): lines with ``categories`` and customers with a ``birthday``, which the
Shopify and WooCommerce webhooks don't carry, for the campaigns that read them."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from connectors.base import BadDelivery, Connector

CHANNEL = "till"


class CanonicalTill(Connector):
    channel: ClassVar[str] = CHANNEL
    topics: ClassVar[tuple[str, ...]] = (
        "order.paid",
        "order.updated",
        "order.cancelled",
        "customer.upserted",
    )

    def delivery_key(self, topic, payload, headers, body) -> str:
        return payload["idempotency_key"]

    def translate(self, topic: str, payload: Any, headers) -> list[dict[str, Any]]:
        if not isinstance(payload, dict):
            raise BadDelivery("a till delivery is a JSON object")
        return [{**payload, "type": topic, "channel": CHANNEL}]


def till_sale(
    number: int,
    email: str,
    at: datetime,
    lines: list[tuple[str, Decimal, list[str]]],
    status: str = "paid",
) -> tuple[str, str, bytes]:
    """A till's ``order.updated`` delivery: ``lines`` are (sku, price, categories)."""
    event = {
        "idempotency_key": f"sale-{number}-{status}-{at.isoformat()}",
        "occurred_at": at.isoformat(),
        "customer": {"email": email},
        "order": {
            "id": str(number),
            "version": at.isoformat(),
            "status": status,
            "currency": "EUR",
            "lines": [
                {
                    "id": f"{number}-{i}",
                    "sku": sku,
                    "quantity": 1,
                    "unit_price": str(price),
                    "categories": categories,
                }
                for i, (sku, price, categories) in enumerate(lines)
            ],
        },
    }
    return CHANNEL, "order.updated", json.dumps(event).encode()


def till_customer(email: str, at: datetime, **hints: Any) -> tuple[str, str, bytes]:
    """A till's ``customer.upserted`` delivery (``birthday="1990-05-12"``, ...)."""
    event = {
        "idempotency_key": f"customer-{email}-{at.isoformat()}",
        "occurred_at": at.isoformat(),
        "customer": {"email": email, **hints},
    }
    return CHANNEL, "customer.upserted", json.dumps(event).encode()
