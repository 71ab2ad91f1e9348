"""Canonical events: what every connector translates its channel's dialect into.

A connector turns a Shopify webhook, a WooCommerce webhook or a till's sale into
one or more canonical events (plain dicts), and the engine validates each with
``EventSchema`` before anything is applied. Money is ``Decimal`` in the shop's
currency; quantities are integers; external ids are strings (Shopify's ids exceed
2^53, so they never pass through a float).

Order events carry a *snapshot* of the order as the channel knows it at
``order.version``; the engine merges snapshots so that duplicates, stale and
reordered deliveries converge on the same state (see ``engine.orders``).
"""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

ORDER_TOPICS = ("order.paid", "order.updated", "order.refunded", "order.cancelled")
SUBSCRIPTION_TOPICS = (
    "subscription.started",
    "subscription.renewed",
    "subscription.paused",
    "subscription.resumed",
    "subscription.cancelled",
)
#: a shop's privacy requests (Shopify's mandatory customers/data_request,
#: customers/redact and shop/redact webhooks): engine.privacy acts on them
PRIVACY_TOPICS = ("privacy.data_request", "privacy.redact", "privacy.shop_redact")
EVENT_TYPES = (*ORDER_TOPICS, "customer.upserted", "visit", "coupon.used", *SUBSCRIPTION_TOPICS, *PRIVACY_TOPICS)

#: The order's status in the channel, reduced to what the rules need.
#: ``refunded`` means refunded in full; partial refunds are listed in ``refunds``.
ORDER_STATUSES = ("pending", "paid", "refunded", "cancelled")

# Absurd amounts are refused rather than stored: no shop sells a line for more.
MAX_MONEY = Decimal("1000000000")
MAX_QUANTITY = 1_000_000

Money = lambda **kw: fields.Decimal(  # noqa: E731 - a field factory, read as a type
    places=None,
    as_string=True,
    allow_nan=False,
    validate=validate.Range(min=Decimal(0), max=MAX_MONEY),
    **kw,
)


class UtcDateTime(fields.AwareDateTime):
    """An aware date and time, kept in UTC: SQLite stores a datetime's wall
    time and drops its offset, so ``11:00-05:00`` would read back as 11:00 UTC."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).astimezone(UTC)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class CustomerHintsSchema(_Strict):
    """What the channel tells us about who the customer is (identity hints)."""

    email = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=320))
    phone = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    #: the channel's own customer id (a Shopify or WooCommerce customer id)
    external_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    card_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    first_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    last_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    #: ISO 3166 country used to read a phone number written without a country code
    country = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2))
    accepts_marketing = fields.Boolean(load_default=None, allow_none=True)
    #: the shipping address as one line (street, postcode, country)
    address = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    birthday = fields.Date(load_default=None, allow_none=True)


class LineItemSchema(_Strict):
    """One line of an order. Eligible spend of the line is
    ``subtotal - discount - tax`` unless it is a gift-card purchase."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    sku = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=MAX_QUANTITY))
    unit_price = Money(required=True)
    #: quantity x unit price as the channel computed it; defaults to that product
    subtotal = Money(load_default=None, allow_none=True)
    #: every discount allocated to this line (line and order level)
    discount = Money(load_default=Decimal(0))
    #: tax contained in the line's price, when the channel's prices include tax
    tax = Money(load_default=Decimal(0))
    gift_card = fields.Boolean(load_default=False)
    categories = fields.List(fields.String(), load_default=list)


class RefundSchema(_Strict):
    """One refund of an order. ``amount`` is the eligible merchandise refunded
    (after discounts, without shipping and tax where the channel separates them)."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    amount = Money(required=True)
    occurred_at = UtcDateTime(load_default=None, allow_none=True)
    lines = fields.List(fields.Dict(), load_default=list)


class OrderSchema(_Strict):
    """A snapshot of one order, as the channel knows it at ``version``."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    #: when the channel last changed the order; a newer snapshot wins
    version = UtcDateTime(load_default=None, allow_none=True)
    status = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(ORDER_STATUSES))
    currency = fields.String(load_default=None, allow_none=True, validate=validate.Length(equal=3))
    #: absent on an event that only reports refunds
    lines = fields.List(fields.Nested(LineItemSchema), load_default=None, allow_none=True)
    shipping = Money(load_default=Decimal(0))
    tax = Money(load_default=Decimal(0))
    tip = Money(load_default=Decimal(0))
    total = Money(load_default=None, allow_none=True)
    refunds = fields.List(fields.Nested(RefundSchema), load_default=list)
    discount_codes = fields.List(fields.String(validate=validate.Length(max=255)), load_default=list)
    #: free-form attributes the channel sent (note attributes, meta data)
    attributes = fields.Dict(keys=fields.String(), load_default=dict)
    test = fields.Boolean(load_default=False)


class CouponSchema(_Strict):
    """A reward's code spent in a channel, reported on its own (an order that
    carries the code in its discount codes uses it too)."""

    code = fields.String(required=True, validate=validate.Length(min=1, max=64))
    #: the order it was spent on, if the channel says
    order_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))


class VisitSchema(_Strict):
    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    location = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))


class SubscriptionSchema(_Strict):
    """A membership as the channel knows it (``subscription.*`` events)."""

    #: the channel's subscription id
    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    #: the plan's name in plugins.toml ([rules.subscriptions.<plan>])
    plan = fields.String(required=True, validate=validate.Length(min=1, max=64))
    #: the end of the period paid for (a renewal for the same period earns once)
    period_end = UtcDateTime(load_default=None, allow_none=True)


class PrivacySchema(_Strict):
    """A privacy request: who asks (the shop) and its reference."""

    #: the channel's request id (Shopify's data_request.id), if it has one
    request_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    #: the shop the request is from ("example.myshopify.com")
    shop = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    #: the orders the request names
    orders = fields.List(fields.String(validate=validate.Length(max=128)), load_default=list)


class EventSchema(_Strict):
    """A canonical event. ``idempotency_key`` is unique per channel; the same key
    delivered again changes nothing."""

    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    channel = fields.String(required=True, validate=validate.Length(min=1, max=64))
    idempotency_key = fields.String(required=True, validate=validate.Length(min=1, max=255))
    occurred_at = UtcDateTime(required=True)
    customer = fields.Nested(CustomerHintsSchema, load_default=dict)
    order = fields.Nested(OrderSchema, load_default=None, allow_none=True)
    visit = fields.Nested(VisitSchema, load_default=None, allow_none=True)
    coupon = fields.Nested(CouponSchema, load_default=None, allow_none=True)
    subscription = fields.Nested(SubscriptionSchema, load_default=None, allow_none=True)
    privacy = fields.Nested(PrivacySchema, load_default=None, allow_none=True)

    @validates_schema
    def _payload_matches_type(self, data, **kwargs):
        kind = data["type"]
        if kind in ORDER_TOPICS:
            if data.get("order") is None:
                raise ValidationError(f"{kind} needs an 'order'", "order")
            if kind in ("order.paid", "order.updated") and data["order"].get("lines") is None:
                raise ValidationError(f"{kind} needs the order's 'lines'", "order")
        elif kind in SUBSCRIPTION_TOPICS and data.get("subscription") is None:
            raise ValidationError(f"{kind} needs a 'subscription'", "subscription")
        elif kind in PRIVACY_TOPICS and data.get("privacy") is None:
            raise ValidationError(f"{kind} needs a 'privacy' with the shop and the request's reference", "privacy")
        elif kind == "coupon.used" and data.get("coupon") is None:
            raise ValidationError("coupon.used needs a 'coupon' with its code", "coupon")
        elif kind == "visit" and data.get("visit") is None:
            raise ValidationError("visit needs a 'visit'", "visit")
        elif kind == "customer.upserted" and not any(data.get("customer", {}).values()):
            raise ValidationError("customer.upserted needs at least one identity hint", "customer")


_event_schema = EventSchema()


def load_event(data: dict) -> dict:
    """Validate a canonical event dict; raise ``marshmallow.ValidationError``
    with every problem found. Returns the loaded event (Decimals, datetimes)."""
    return _event_schema.load(data)


def dump_event(event: dict) -> dict:
    """The JSON-able form of a loaded event (Decimals and datetimes as strings)."""
    return _event_schema.dump(event)


def line_eligible(line: dict) -> Decimal:
    """Eligible spend of one line: merchandise after discounts, without tax
    contained in the price; gift-card purchases earn nothing."""
    if line["gift_card"]:
        return Decimal(0)
    subtotal = line["subtotal"]
    if subtotal is None:
        subtotal = line["unit_price"] * line["quantity"]
    return max(Decimal(0), subtotal - line["discount"] - line["tax"])


__all__ = [
    "EVENT_TYPES",
    "ORDER_STATUSES",
    "ORDER_TOPICS",
    "SUBSCRIPTION_TOPICS",
    "PRIVACY_TOPICS",
    "EXCLUDE",
    "EventSchema",
    "SubscriptionSchema",
    "dump_event",
    "line_eligible",
    "load_event",
]
