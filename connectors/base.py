"""The connector contract: what a sales channel's plugin must and may do.

A connector speaks one channel's dialect. For each delivery (a webhook body, a
recorded payload, a till's sale) the engine asks it for an idempotency key and
for the canonical events the delivery means. It never touches the database: the
engine stores the raw delivery first, then applies what ``translate`` returned.

Must:
- ``channel``: the channel's name (``"shopify"``), unique across plugins;
- ``topics``: the topics it understands (``"orders/paid"``);
- ``translate(topic, payload, headers)``: the canonical events (dicts that
  ``engine.events.load_event`` accepts), or ``[]`` when the delivery means
  nothing for loyalty (a test ping, a draft order).

May:
- ``delivery_key(topic, payload, headers)``: the idempotency key of a delivery;
  the default keys on the body's hash, so only byte-identical deliveries are
  duplicates;
- ``settings_schema`` and ``table``: its table in ``plugins.toml``.

Raises:
- ``BadDelivery`` with a sentence saying what is wrong, when the payload can't
  be understood (a missing id, a negative quantity). The delivery is kept as
  failed with that sentence; nothing else changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from engine.hookspecs import hookimpl


class BadDelivery(ValueError):
    """A delivery the connector can't translate; the message says why."""


class Connector:
    """Base class for channel connectors (see the module docstring)."""

    channel: ClassVar[str] = ""
    topics: ClassVar[tuple[str, ...]] = ()
    #: the plugins.toml table this connector owns, e.g. "connectors.shopify"
    table: ClassVar[str | None] = None
    settings_schema: ClassVar[Any] = None

    def __init__(self, settings: Mapping[str, Any] | None = None):
        self.settings = dict(settings or {})

    def delivery_key(self, topic: str, payload: Any, headers: Mapping[str, str], body: bytes) -> str:
        """The idempotency key of one delivery. Override it with the channel's
        own delivery or resource ids; the default is the body's SHA-256."""
        return body_key(topic, body)

    def translate(
        self, topic: str, payload: Any, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Canonical events for one delivery; raise ``BadDelivery`` if it can't."""
        raise NotImplementedError

    # Registered with pluggy as a plugin object: the engine collects it through
    # this registration hook, like any third-party connector.
    @hookimpl
    def regulars_register_connectors(self):
        return [self]


def body_key(topic: str, body: bytes) -> str:
    """A delivery key from the body's SHA-256: only byte-identical deliveries
    share it (the default, and what keys a payload too broken to read)."""
    return f"{topic}:sha256:{hashlib.sha256(body).hexdigest()}"


def read_decimal(value: Any, what: str) -> Decimal:
    """An exact Decimal from a JSON number or a decimal string; ``BadDelivery``
    saying ``what`` must be a number otherwise. Floats go through ``str()``: their
    shortest repr (89.99) is what the shop meant."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadDelivery(f"{what} must be a number, got {value!r}.")
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise BadDelivery(f"{what} must be a number, got {value!r}.") from None
    if not result.is_finite():
        raise BadDelivery(f"{what} must be a finite number, got {value!r}.")
    return result


def address_line(street: Any, postcode: Any, country: Any) -> str | None:
    """A shipping address as one line (street, postcode, country), for the
    referral guard that stops a customer referring themselves under another
    email; None when the street is unknown."""
    parts = [str(p).strip() for p in (street, postcode, country) if isinstance(p, str | int) and str(p).strip()]
    return ", ".join(parts) if parts and isinstance(street, str) and street.strip() else None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value whatever its casing (HTTP headers are case-insensitive),
    stripped; None when it is absent or blank (a blank id would make every
    delivery that carries it one delivery)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return str(value).strip() or None if value is not None else None
    return None
