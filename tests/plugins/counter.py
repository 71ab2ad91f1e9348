"""A third-party connector: a till that posts canonical events as they are
(``{"type": "visit", ...}``), registered by a plugin through
``regulars_register_connectors`` as the built-in Shopify and WooCommerce
connectors are."""

from __future__ import annotations

from typing import Any, ClassVar

from connectors.base import BadDelivery, Connector
from engine.hookspecs import hookimpl

CHANNEL = "counter"


class CounterConnector(Connector):
    channel: ClassVar[str] = CHANNEL
    topics: ClassVar[tuple[str, ...]] = ("visit",)

    def delivery_key(self, topic, payload, headers, body) -> str:
        return payload["idempotency_key"]

    def translate(self, topic: str, payload: Any, headers) -> list[dict[str, Any]]:
        if not isinstance(payload, dict):
            raise BadDelivery("a counter delivery is a JSON object")
        return [{**payload, "channel": CHANNEL}]


class TillPlugin:
    """A plugin (not itself a connector) that brings the till's connector."""

    @hookimpl
    def regulars_register_connectors(self):
        return [CounterConnector()]


class SecondShopify(Connector):
    """Claims the ``shopify`` channel the built-in connector already has."""

    channel: ClassVar[str] = "shopify"
    topics: ClassVar[tuple[str, ...]] = ("orders/paid",)
