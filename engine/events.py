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

import re
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    missing,
    validate,
    validates_schema,
)
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA

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
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it: no UTC moment
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


class _Sized(fields.String):
    """A string field with a ``length`` that its subclass does not refuse:
    ``sized`` says what a string becomes."""

    def __init__(self, length: int, **kwargs):
        super().__init__(**kwargs)
        self.length = length

    def sized(self, text: str) -> str | None:
        raise NotImplementedError

    def _deserialize(self, value, attr, data, **kwargs):
        return self.sized(super()._deserialize(value, attr, data, **kwargs))


class Clipped(_Sized):
    """Descriptive text (a name, an address, a product's name) cut to
    ``length`` characters instead of refused: a shop that allows a longer one
    would otherwise cost the customer the whole order's points for it."""

    def sized(self, text: str) -> str:
        return text[: self.length]


class Hint(_Sized):
    """An identity hint (an email, a phone) longer than ``length``: no valid
    one is, so it is read as absent, as a hint that does not parse is."""

    def sized(self, text: str) -> str | None:
        return text if len(text) <= self.length else None


def normalize_address(raw: str | None) -> str | None:
    """A shipping address reduced for comparison: NFKC, lower-case, letters
    and digits only, single spaces."""
    if not raw:
        return None
    text = unicodedata.normalize("NFKC", raw).lower()
    words = "".join(c if c.isalnum() else " " for c in text).split()
    return " ".join(words) or None


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class CustomerHintsSchema(_Strict):
    """What the channel tells us about who the customer is (identity hints)."""

    email = Hint(320, load_default=None, allow_none=True)
    #: any text: read as a phone number if it is one (64 characters at most, else absent)
    phone = Hint(64, load_default=None, allow_none=True)
    #: the channel's own customer id (a Shopify or WooCommerce customer id)
    external_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    card_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    first_name = Clipped(200, load_default=None, allow_none=True)
    last_name = Clipped(200, load_default=None, allow_none=True)
    #: ISO 3166 country used to read a phone number written without a country code
    country = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2))
    accepts_marketing = fields.Boolean(load_default=None, allow_none=True)
    #: the shipping address as one line (street, postcode, country)
    address = Clipped(500, load_default=None, allow_none=True)
    birthday = fields.Date(load_default=None, allow_none=True)


class LineItemSchema(_Strict):
    """One line of an order. Eligible spend of the line is
    ``subtotal - discount - tax`` unless it is a gift-card purchase."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    sku = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    name = Clipped(500, load_default=None, allow_none=True)
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
    """One refund of an order. ``amount`` is the merchandise refunded (after
    discounts, without shipping); ``tax`` the tax on it, which ``amount``
    contains when the order's prices include tax (its lines carry ``tax``):
    the engine then refunds ``amount - tax`` of eligible spend."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    amount = Money(required=True)
    tax = Money(load_default=Decimal(0))
    #: when the refund was made, by its own account (else the delivery's time stands in)
    occurred_at = UtcDateTime(load_default=None, allow_none=True)
    lines = fields.List(fields.Dict(), load_default=list)
    #: ``amount`` was read from the refund's lines. A channel that first knows a
    #: refund only by its total (WooCommerce's order webhooks: shipping and tax
    #: in it) reports it again itemized once its lines are read; for the same
    #: refund id, the itemized report wins (``engine.orders.merge``)
    itemized = fields.Boolean(load_default=False)


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
    #: the snapshot lists every refund the order has (WooCommerce's): one made
    #: before it and not listed was deleted in the shop (engine.orders)
    refunds_complete = fields.Boolean(load_default=False)
    #: when a complete list held for certain (the shop's API read, not the
    #: order changed): a refund made before it and not listed was deleted
    refunds_listed_at = UtcDateTime(load_default=None, allow_none=True)
    #: any length: a code longer than a reward's matches none
    discount_codes = fields.List(fields.String(), load_default=list)
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


# -- the lean path ------------------------------------------------------------------
#
# ``Schema.load`` spends most of its time on bookkeeping for errors: an error
# store, a closure and a try per field, an ``And`` validator built per field
# and call, a full ``load`` per nested object. For a valid event none of it
# changes the result. The lean loader below walks the same schema objects and
# calls the same fields' own conversions (``Field._deserialize``) and
# validators, so a valid event loads to exactly what ``Schema.load`` returns;
# at the first thing it does not vouch for (a missing or null value, a type
# it does not expect, any validator that fails, any exception at all) it
# gives up and ``Schema.load`` loads the event from the start, so every error
# and its message is marshmallow's own. It follows only what the canonical
# schemas use; a schema with anything else (hooks, data keys, ``many``) is
# always loaded by marshmallow.


class _NotLean(Exception):
    """The lean loader can't vouch for this input: marshmallow decides."""


def _lean_field(field):
    """A step ``(value, name, data) -> loaded value`` for one field."""
    if isinstance(field, fields.Nested):
        inner = _lean_schema(field.schema) if not field.many and field.unknown in (None, RAISE) else None
        if inner is not None:
            return _lean_nested(field, inner)
    if isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
        nested = field.inner
        inner = _lean_schema(nested.schema) if not nested.many and nested.unknown in (None, RAISE) else None
        if inner is not None:
            return _lean_list(field, _lean_nested(nested, inner))
    return _lean_leaf(field)


def _check(field, validators, value) -> None:
    """``field._validate(value)`` when it passes; else raise."""
    for validator in validators:
        if validator(value) is False and not isinstance(validator, validate.Validator):
            raise _NotLean


def _kept_as_is(field) -> type | None:
    """The type whose values ``field._deserialize`` returns unchanged (a
    ``str`` for a String, a ``bool`` for a Boolean with the usual truthy and
    falsy sets, an ``int`` for an Integer), or None."""
    kind = type(field)
    if kind is fields.String:
        return str
    if kind is fields.Integer:
        return int
    if kind is fields.Boolean and field.truthy == fields.Boolean.truthy and field.falsy == fields.Boolean.falsy:
        return bool
    return None


#: the shape the connectors write (and nothing else: ``fromisoformat`` also
#: takes ``00:00.00`` for a time, which marshmallow refuses)
_CONNECTOR_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", re.ASCII)


def _utc_from_iso(convert):
    """UtcDateTime's conversion, with a string shaped ``YYYY-MM-DDTHH:MM:SS±HH:MM``
    (what the connectors write) read by ``datetime.fromisoformat``, which gives
    the same moment and, after ``astimezone(UTC)``, the same value; anything
    else, or anything it refuses, goes to the field's own conversion."""

    def step(value, name, data):
        if type(value) is str and len(value) == 25 and _CONNECTOR_ISO.fullmatch(value) is not None:
            try:
                return datetime.fromisoformat(value).astimezone(UTC)
            except (ValueError, OverflowError):  # (the field's own conversion says what is wrong)
                pass
        return convert(value, name, data)

    return step


def _lean_leaf(field):
    convert, validators, deserialize = field._deserialize, tuple(field.validators), field.deserialize
    if type(field) is UtcDateTime and field.format in (None, "iso", "iso8601"):
        convert = _utc_from_iso(convert)
    exact = _kept_as_is(field)
    if isinstance(field, _Sized):  # (String._deserialize gives a str as it is; then the field's own sizing)
        exact, sized = str, field.sized
    else:
        sized = None

    def step(value, name, data):
        if type(value) is exact:
            loaded = value if sized is None else sized(value)
        elif value is missing or value is None:
            return deserialize(value, name, data)  # the default, or None, or the error: marshmallow's
        else:
            loaded = convert(value, name, data)
        _check(field, validators, loaded)
        return loaded

    return step


def _lean_nested(field, inner):
    validators, deserialize = tuple(field.validators), field.deserialize

    def step(value, name=None, data=None):
        if value is missing or value is None:
            return deserialize(value, name, data)
        loaded = inner(value)
        _check(field, validators, loaded)
        return loaded

    return step


def _lean_list(field, item):
    validators, deserialize = tuple(field.validators), field.deserialize

    def step(value, name, data):
        if value is missing or value is None:
            return deserialize(value, name, data)
        if type(value) is not list:
            raise _NotLean
        loaded = []
        for each in value:
            if each is None:
                raise _NotLean
            loaded.append(item(each))
        _check(field, validators, loaded)
        return loaded

    return step


def _lean_schema(schema):
    """A loader giving what ``schema.load`` gives for a valid input, or None
    when the schema uses something the lean path does not follow."""
    hooks = schema._hooks
    if schema.many or schema.partial or schema.unknown != RAISE or hooks[PRE_LOAD] or hooks[POST_LOAD] \
            or hooks[VALIDATES]:
        return None
    checks = []
    for attr_name, pass_many, kwargs in hooks[VALIDATES_SCHEMA]:
        if pass_many or kwargs.get("pass_original"):
            return None
        checks.append(getattr(schema, attr_name))
    steps = []
    for name, field in schema.load_fields.items():
        if field.data_key is not None or field.attribute is not None or "." in name:
            return None
        steps.append((name, _lean_field(field)))
    names = frozenset(schema.load_fields)

    def load(data):
        if type(data) is not dict or not names.issuperset(data):
            raise _NotLean  # not an object, or unknown keys
        loaded = {}
        for name, step in steps:
            value = step(data.get(name, missing), name, data)
            if value is not missing:
                loaded[name] = value
        for check in checks:
            check(loaded, partial=None, many=False)
        return loaded

    return load


_lean_event = _lean_schema(_event_schema)


def load_event(data: dict) -> dict:
    """Validate a canonical event dict; raise ``marshmallow.ValidationError``
    with every problem found. Returns the loaded event (Decimals, datetimes)."""
    if _lean_event is not None:
        try:
            return _lean_event(data)
        except Exception:  # noqa: BLE001 - whatever it is, marshmallow says it
            pass
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
