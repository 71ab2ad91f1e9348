"""The till (``pos``): what a terminal sends through the API (engine.web.api),
as canonical events. The shapes are ours (JSON); the API fills ``terminal``
from the authenticated terminal, so a sale id only has to be unique per
terminal.

- ``sale``: ``{"id", "terminal", "location", "occurred_at", "customer":
  {"card_code" | "phone" | "email"}, "lines": [{"sku", "name", "quantity",
  "unit_price", "discount"}], "reward_codes": [...]}`` → ``order.paid`` for
  order ``<terminal>:<id>`` (prices include tax; the points rule reads the
  lines);
- ``void``: ``{"sale_id", "terminal", "occurred_at", "reason"}`` →
  ``order.cancelled`` for that order, final (a sale can't be sold again,
  and its time is no newer snapshot to lose to): its points go back through
  the same rules as a refund;
- ``visit``: ``{"id", "terminal", "location", "occurred_at", "customer"}`` →
  ``visit`` (a stamp on cards that count visits);
- ``enrol``: ``{"id", "terminal", "occurred_at", "customer": {"email",
  "phone", "first_name", "last_name", "birthday"}}`` → ``customer.upserted``;
- ``membership``: ``{"id", "terminal", "occurred_at", "customer", "action":
  "start" | "renew" | "pause" | "resume" | "cancel", "plan",
  "subscription_id", "period_end"}`` → ``subscription.started`` (and so on)
  for subscription ``subscription_id`` of channel ``pos`` (a membership
  sold or changed at the counter).

The delivery key is ``<topic>:<terminal>:<id>``: a till that resends a sale
changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from marshmallow import RAISE, Schema, fields, validate

from connectors.base import BadDelivery, Connector
from engine.subscriptions import ACTIONS  # a membership's action → its canonical event

CHANNEL = "pos"
TOPICS = ("sale", "void", "visit", "enrol", "membership")
MAX_PRICE = Decimal("1000000")
HINTS = ("card_code", "phone", "email")


class PosSettingsSchema(Schema):
    """The ``[connectors.pos]`` table (it may be empty)."""

    class Meta:
        unknown = RAISE

    #: the till's currency, when not the shop's ([engine] currency)
    currency = fields.String(load_default=None, allow_none=True, validate=validate.Length(equal=3))


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadDelivery(f"The {what} must be a JSON object.")
    return value


def _text(payload: Mapping[str, Any], key: str, what: str, required: bool = True) -> str | None:
    value = payload.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadDelivery(f"The {what} has no {key!r}.")
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise BadDelivery(f"The {what}'s {key!r} must be a string, got {value!r}.")
    return str(value).strip()


def _moment(payload: Mapping[str, Any], what: str, key: str = "occurred_at") -> str:
    raw = _text(payload, key, what)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadDelivery(f"The {what}'s {key} is not an ISO 8601 time: {raw!r}.") from None
    if moment.tzinfo is None:
        raise BadDelivery(f"The {what}'s {key} has no UTC offset: {raw!r}.")
    return moment.isoformat()


def _money(value: Any, what: str) -> str:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise BadDelivery(f"The {what} is not a decimal amount: {value!r}.") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_PRICE:
        raise BadDelivery(f"The {what} must be between 0 and {MAX_PRICE}, got {value!r}.")
    return str(amount)


def _customer(payload: Mapping[str, Any], what: str, keys=HINTS) -> dict[str, str]:
    customer = _object(payload.get("customer"), f"{what}'s customer")
    hints = {k: str(customer[k]).strip() for k in keys if isinstance(customer.get(k), str) and customer[k].strip()}
    if not any(hints.get(k) for k in HINTS):
        raise BadDelivery(f"The {what} names no customer: give a card code, a phone or an email.")
    return hints


def translate(topic: str, payload: Any, currency: str | None) -> list[dict[str, Any]]:
    body = _object(payload, f"till's {topic}")
    terminal = _text(body, "terminal", topic)
    if topic == "void":
        sale = _text(body, "sale_id", "void")
        return [{
            "type": "order.cancelled", "channel": CHANNEL, "idempotency_key": f"void:{terminal}:{sale}",
            "occurred_at": _moment(body, "void"), "customer": {},
            # No version: a void is final (engine.orders.merge), whatever its time says
            # beside the sale's: a till whose clock was behind, a void sent before its sale.
            "order": {"id": f"{terminal}:{sale}", "status": "cancelled"},
        }]
    ident = _text(body, "id", topic)
    at = _moment(body, topic)
    key = f"{topic}:{terminal}:{ident}"
    if topic == "visit":
        return [{"type": "visit", "channel": CHANNEL, "idempotency_key": key, "occurred_at": at,
                 "customer": _customer(body, "visit"),
                 "visit": {"id": f"{terminal}:{ident}", "location": _text(body, "location", "visit", False)}}]
    if topic == "enrol":
        return [{"type": "customer.upserted", "channel": CHANNEL, "idempotency_key": key, "occurred_at": at,
                 "customer": _customer(body, "enrolment", (*HINTS, "first_name", "last_name", "birthday"))}]
    if topic == "membership":
        action = _text(body, "action", "membership")
        if action not in ACTIONS:
            raise BadDelivery(f"The membership's action must be one of {', '.join(ACTIONS)}, "
                              f"got {action!r}.")
        period_end = _moment(body, "membership", "period_end") if body.get("period_end") is not None else None
        return [{"type": ACTIONS[action], "channel": CHANNEL, "idempotency_key": key, "occurred_at": at,
                 "customer": _customer(body, "membership"),
                 "subscription": {"id": _text(body, "subscription_id", "membership"),
                                  "plan": _text(body, "plan", "membership"), "period_end": period_end}}]
    lines = body.get("lines")
    if not isinstance(lines, list) or not lines:
        raise BadDelivery("The sale has no lines.")
    canonical = []
    for number, raw in enumerate(lines):
        line = _object(raw, f"sale's line {number}")
        quantity = line.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or not 0 < quantity <= 1_000_000:
            raise BadDelivery(f"The sale's line {number} quantity must be a whole number from 1, got {quantity!r}.")
        canonical.append({
            "id": f"{terminal}:{ident}:{number}", "sku": _text(line, "sku", f"sale's line {number}", False),
            "name": _text(line, "name", f"sale's line {number}", False), "quantity": quantity,
            "unit_price": _money(line.get("unit_price"), f"sale's line {number} unit_price"),
            "discount": _money(line.get("discount", "0"), f"sale's line {number} discount"),
        })
    codes = body.get("reward_codes") or []
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise BadDelivery("The sale's reward_codes must be a list of codes.")
    return [{
        "type": "order.paid", "channel": CHANNEL, "idempotency_key": key, "occurred_at": at,
        "customer": _customer(body, "sale"),
        "order": {"id": f"{terminal}:{ident}", "version": at, "status": "paid", "currency": currency,
                  "lines": canonical, "discount_codes": codes,
                  "attributes": {"location": _text(body, "location", "sale", False)}},
    }]


class PosConnector(Connector):
    """The till's deliveries (through the API) as canonical events."""

    channel: ClassVar[str] = CHANNEL
    topics: ClassVar[tuple[str, ...]] = TOPICS
    table: ClassVar[str | None] = "connectors.pos"
    settings_schema: ClassVar[Any] = PosSettingsSchema

    def delivery_key(self, topic: str, payload: Any, headers: Mapping[str, str], body: bytes) -> str:
        if isinstance(payload, Mapping):
            ident = payload.get("sale_id") if topic == "void" else payload.get("id")
            if payload.get("terminal") and ident:
                return f"{topic}:{payload['terminal']}:{ident}"
        return super().delivery_key(topic, payload, headers, body)

    def translate(self, topic: str, payload: Any, headers: Mapping[str, str]) -> list[dict[str, Any]]:
        return translate(topic, payload, self.settings.get("currency"))


__all__ = ["PosConnector", "PosSettingsSchema"]
