"""The WooCommerce connector: order and customer webhooks into canonical events.

Settings (the ``[connectors.woocommerce]`` table of ``plugins.toml``):

- ``url``: the shop's address, e.g. ``"https://shop.example.com"``;
- ``order_key_meta``: the order meta key a referral code may arrive under
  (default ``"_regulars_ref"``); it is kept in the order's ``attributes`` even
  though it starts with "_".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar

from marshmallow import RAISE, Schema, fields, validate

from connectors.base import BadDelivery, Connector
from connectors.woocommerce.translate import (
    CHANNEL,
    CUSTOMER_TOPICS,
    DEFAULT_ORDER_KEY_META,
    ORDER_DELETED,
    ORDER_TOPICS,
    TOPICS,
    customer_events,
    deleted_order_events,
    order_events,
    resource_key,
)


class WooCommerceSettingsSchema(Schema):
    """The ``[connectors.woocommerce]`` table; unknown keys are refused."""

    class Meta:
        unknown = RAISE

    url = fields.Url(required=True, schemes={"http", "https"})
    order_key_meta = fields.String(
        load_default=DEFAULT_ORDER_KEY_META, validate=validate.Length(min=1, max=255)
    )


class WooCommerceConnector(Connector):
    """Translates WooCommerce order and customer webhooks (REST API v3 bodies)."""

    channel: ClassVar[str] = CHANNEL
    topics: ClassVar[tuple[str, ...]] = TOPICS
    table: ClassVar[str | None] = "connectors.woocommerce"
    settings_schema: ClassVar[Any] = WooCommerceSettingsSchema

    @property
    def order_key_meta(self) -> str:
        """The order meta key a referral code may arrive under."""
        return self.settings.get("order_key_meta") or DEFAULT_ORDER_KEY_META

    def delivery_key(
        self, topic: str, payload: Any, headers: Mapping[str, str], body: bytes
    ) -> str:
        """The resource id and its ``date_modified_gmt`` (``order:727:<date>``,
        ``customer:25:<date>``, ``order.deleted:727``; an order sent by the
        reconciliation with its refunds' details adds ``:refunds:<sha256>`` of
        them), never the X-WC-Webhook-Delivery-ID header: WooCommerce repeats
        delivery ids.
        A payload that can't be keyed so falls back to the body's SHA-256,
        leaving ``translate`` to say what is wrong with it."""
        if topic in TOPICS:
            try:
                return resource_key(topic, payload, lambda: hashlib.sha256(body).hexdigest())
            except BadDelivery:
                pass
        return super().delivery_key(topic, payload, headers, body)

    def translate(
        self, topic: str, payload: Any, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Canonical events for one delivery: an order event for order topics, a
        customer.upserted for customer topics, nothing for other topics."""
        if topic in ORDER_TOPICS:
            return order_events(topic, payload, self.order_key_meta)
        if topic == ORDER_DELETED:
            return deleted_order_events(payload)
        if topic in CUSTOMER_TOPICS:
            return customer_events(topic, payload)
        return []


__all__ = ["WooCommerceConnector", "WooCommerceSettingsSchema"]
