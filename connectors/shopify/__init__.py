"""The Shopify connector: Shopify webhooks (orders, refunds, customers) in,
canonical events out.

The translation lives in ``connectors.shopify.translate``; this module holds
the ``Connector`` the engine registers, its settings and its delivery keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from marshmallow import RAISE, Schema, fields, validate

from connectors.base import BadDelivery, Connector, header
from connectors.shopify.translate import (
    CHANNEL,
    PRIVACY_EVENT_TYPES,
    TOPICS,
    content_key,
    translate_payload,
    translate_privacy,
)

DEFAULT_API_VERSION = "2026-04"


class ShopifySettingsSchema(Schema):
    """The ``[connectors.shopify]`` table of ``plugins.toml``."""

    class Meta:
        unknown = RAISE

    #: the shop's myshopify domain, e.g. "example.myshopify.com"
    shop = fields.String(required=True, validate=validate.Length(min=1, max=255))
    api_version = fields.String(load_default=DEFAULT_API_VERSION, validate=validate.Length(min=1))
    #: where the Admin API is reached, when not https://{shop} (a proxy; a test double)
    api_url = fields.Url(load_default=None, allow_none=True, schemes={"http", "https"}, require_tld=False)


class ShopifyConnector(Connector):
    """Translates Shopify webhook deliveries into canonical events."""

    channel: ClassVar[str] = CHANNEL
    topics: ClassVar[tuple[str, ...]] = TOPICS
    table: ClassVar[str | None] = "connectors.shopify"
    settings_schema: ClassVar[Any] = ShopifySettingsSchema

    def delivery_key(
        self, topic: str, payload: Any, headers: Mapping[str, str], body: bytes
    ) -> str:
        """``X-Shopify-Event-Id`` when present, else ``X-Shopify-Webhook-Id``,
        else the resource id and its ``updated_at`` (a refund's id alone).

        The header keys carry the topic too, in case one Shopify event fans out
        to several topics. A payload too broken to name its resource falls back
        to the body's hash, so the delivery is still stored and ``translate``
        can say what is wrong with it.
        """
        if topic in PRIVACY_EVENT_TYPES and not header(headers, "X-Shopify-Event-Id") \
                and not header(headers, "X-Shopify-Webhook-Id"):
            try:
                return translate_privacy(topic, payload)["idempotency_key"]
            except BadDelivery:
                return super().delivery_key(topic, payload, headers, body)
        event_id = header(headers, "X-Shopify-Event-Id")
        if event_id:
            return f"event:{topic}:{event_id}"
        webhook_id = header(headers, "X-Shopify-Webhook-Id")
        if webhook_id:
            return f"webhook:{topic}:{webhook_id}"
        try:
            return content_key(topic, payload)
        except BadDelivery:
            return super().delivery_key(topic, payload, headers, body)

    def translate(
        self, topic: str, payload: Any, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """The canonical events of one delivery (the engine validates them);
        ``BadDelivery`` saying why when the payload can't be translated."""
        if topic in PRIVACY_EVENT_TYPES:
            event = translate_privacy(topic, payload, header(headers, "X-Shopify-Triggered-At"))
            ours, theirs = self.settings.get("shop"), event["privacy"].get("shop")
            if ours and theirs and theirs.lower() != ours.lower():
                # (a signed webhook can't be another shop's; a delivery fed to `regulars ingest` can)
                raise BadDelivery(f"This {topic} request is for the shop {theirs}, not this engine's {ours}: "
                                  "nothing was erased or exported.")
            return [event]
        return translate_payload(topic, payload)


__all__ = ["ShopifyConnector", "ShopifySettingsSchema"]
