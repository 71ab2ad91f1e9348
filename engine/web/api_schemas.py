"""The API's marshmallow schemas: what a till or a customer may send (unknown
keys refused) and what the API answers, the money field they share, and a
refusal's messages in one line. The OpenAPI document
(``engine.web.openapi``) is generated from them, and an offline batch
(``engine.terminals.apply_batch``) checks its lines with them too."""

from __future__ import annotations

from decimal import Decimal

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from engine.identity import possible_birthday
from engine.rewards import NOT_USED
from engine.subscriptions import ACTIONS

MAX_MONEY = Decimal(1_000_000_000)


def _money_range(value: Decimal) -> None:
    if not value.is_finite() or not Decimal(0) <= value <= MAX_MONEY:
        raise ValidationError(f"must be an amount from 0 to {MAX_MONEY}")


def Money(**kwargs):  # noqa: N802 - a field factory, read as a type
    """An amount of money: a decimal string in, a decimal string out (never a float)."""
    return fields.Decimal(as_string=True, places=None, allow_nan=False, validate=_money_range,
                          metadata={"type": "string", "pattern": r"^[0-9]{1,10}(\.[0-9]{1,4})?$", "example": "12.50"},
                          **kwargs)


class _In(Schema):
    """A request body: unknown keys are refused (marshmallow's default)."""


class HintsSchema(_In):
    """Who the customer is: what the QR code says (the card code), a phone or an email."""

    card_code = fields.String(validate=validate.Length(min=4, max=64))
    phone = fields.String(validate=validate.Length(min=3, max=64))
    email = fields.String(validate=validate.Length(min=3, max=320))

    @validates_schema
    def _one(self, data, **kwargs):
        if not any(data.values()):
            raise ValidationError("give the card code, a phone or an email")


class LineSchema(_In):
    sku = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1_000_000))
    unit_price = Money(required=True)
    discount = Money(load_default=Decimal(0))


class SaleSchema(_In):
    """A sale at the counter."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=100),
                       metadata={"description": "the till's own id for the sale, unique per terminal"})
    occurred_at = fields.AwareDateTime(load_default=None, metadata={"description": "default: now"})
    customer = fields.Nested(HintsSchema, required=True)
    lines = fields.List(fields.Nested(LineSchema), required=True, validate=validate.Length(min=1, max=500))
    reward_codes = fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=list,
                               metadata={"description": "codes of rewards spent in this sale"})


class VisitSchema(_In):
    """A visit that earns a stamp."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=100))
    occurred_at = fields.AwareDateTime(load_default=None)
    customer = fields.Nested(HintsSchema, required=True)


class VoidSchema(_In):
    occurred_at = fields.AwareDateTime(load_default=None)
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class EnrolSchema(_In):
    """A new customer at the counter (a card is issued at once)."""

    email = fields.Email(load_default=None, allow_none=True)
    phone = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=3, max=64))
    card_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=4, max=64), metadata={
        "description": "a known customer's card code, to add what they tell you (their birthday, say); "
                       "a card code nobody has is refused with 404"})
    first_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    last_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    birthday = fields.Date(load_default=None, allow_none=True, metadata={
        "description": "YYYY-MM-DD: for [plugins.birthday-bonus]; kept once known (a later one changes nothing)"})

    @validates_schema
    def _one(self, data, **kwargs):
        if not (data.get("email") or data.get("phone") or data.get("card_code")):
            raise ValidationError("give an email or a phone (or a known customer's card code)")
        born = data.get("birthday")
        if born is not None and not possible_birthday(born):
            raise ValidationError({"birthday": ["a birthday between 1900-01-01 and today"]})


class MembershipSchema(_In):
    """A membership sold, renewed, paused, resumed or cancelled at the counter."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=100),
                       metadata={"description": "the till's own id for this change, unique per terminal"})
    occurred_at = fields.AwareDateTime(load_default=None, metadata={"description": "default: now"})
    customer = fields.Nested(HintsSchema, required=True)
    action = fields.String(required=True, validate=validate.OneOf(list(ACTIONS)))
    plan = fields.String(required=True, validate=validate.Length(min=1, max=64),
                         metadata={"description": "a plan of plugins.toml ([rules.subscriptions.<plan>])"})
    subscription_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=100),
                                    metadata={"description": "which membership; default: one per customer and plan "
                                                             "at the counter"})
    period_end = fields.AwareDateTime(load_default=None, allow_none=True, metadata={
        "description": "the end of the period paid for (a renewal for the same period earns once)"})


class RedeemSchema(_In):
    customer = fields.Nested(HintsSchema, required=True)
    reward = fields.String(required=True, validate=validate.Length(min=1, max=64))
    units = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=10_000))
    channel = fields.String(load_default="pos", validate=validate.Length(min=1, max=64))


class MeRedeemSchema(_In):
    """The customer redeems on their own card, for the shop they will spend it in."""

    reward = fields.String(required=True, validate=validate.Length(min=1, max=64))
    channel = fields.String(required=True, validate=validate.Length(min=1, max=64),
                            metadata={"description": "shopify, woocommerce or pos: where the coupon is issued"})
    units = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=10_000))


class RewardSchema(Schema):
    code = fields.String()
    reward = fields.String()
    kind = fields.String()
    status = fields.String()
    cost = fields.Integer()
    value = fields.String(allow_none=True)
    channel = fields.String(allow_none=True, metadata={"description": "the channel it was redeemed in"})
    spendable_in = fields.List(fields.String(), metadata={
        "description": "the channels where it can be spent: its catalogue entry's `channels`, else every one"})
    expires_at = fields.String(allow_none=True)


class MembershipStateSchema(Schema):
    plan = fields.String()
    status = fields.String(metadata={"description": "active, paused, cancelled or lapsed"})
    since = fields.String()
    period_end = fields.String(allow_none=True)
    status_since = fields.String()
    channel = fields.String()
    id = fields.String()


class ExpiringSchema(Schema):
    on = fields.String(metadata={"description": "the day they expire, in the shop's time zone (YYYY-MM-DD)"})
    points = fields.Integer()


class CustomerSchema(Schema):
    """What the till shows: the customer's balance, stamps and tier at a glance."""

    id = fields.Integer()
    card_code = fields.String()
    first_name = fields.String(allow_none=True)
    last_name = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    points = fields.Integer()
    points_pending = fields.Integer()
    points_expiring = fields.List(fields.Nested(ExpiringSchema), metadata={
        "description": "of the points, those that expire within `[rules.expiry] remind_days` (default 30), per "
                       "day, soonest first; empty when points don't expire"})
    stamps = fields.Dict(keys=fields.String(), values=fields.Integer())
    tier = fields.String(allow_none=True)
    rewards = fields.List(fields.Nested(RewardSchema))
    referral_code = fields.String()
    memberships = fields.List(fields.Nested(MembershipStateSchema))
    birthday_wanted = fields.Boolean(metadata={
        "description": "true: a birthday gift or bonus is on and the customer's birthday is not known yet "
                       "(ask them; send it with POST /api/v1/customers)"})


class ResultSchema(Schema):
    status = fields.String(metadata={"description": "applied, or duplicate for a sale seen before"})
    customer = fields.Nested(CustomerSchema, allow_none=True)


class CodeUseSchema(Schema):
    """What became of a reward code the till sent with a sale."""

    code = fields.String(metadata={"description": "the code, as the till sent it"})
    used = fields.Boolean(metadata={"description": "true: this sale used the reward (true again for the sale resent)"})
    reason = fields.String(allow_none=True, validate=validate.OneOf(NOT_USED), metadata={
        "description": "when not used, why: `unknown` (no reward has this code), `not_this_customers`, "
                       "`already_used` (by another order), `expired`, `voided` (a stamp card's reward taken back), "
                       "`not_spendable_here` (its catalogue `channels` leave the till out), `still_issued` (valid, "
                       "but this sale didn't spend it: the sale is not applied yet, kept after a plugin failed); "
                       "the reward was not used, so no discount is owed for it"})


class SaleResultSchema(ResultSchema):
    codes = fields.List(fields.Nested(CodeUseSchema), metadata={
        "description": "each of the sale's `reward_codes`, once: used by this sale or why not"})


class MembershipResultSchema(ResultSchema):
    membership = fields.Nested(MembershipStateSchema, allow_none=True)


class RedemptionSchema(Schema):
    reward = fields.Nested(RewardSchema)
    customer = fields.Nested(CustomerSchema)


class BatchLineSchema(Schema):
    line = fields.Integer()
    key = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "applied, duplicate or refused"})
    reason = fields.String(allow_none=True)
    codes = fields.List(fields.Nested(CodeUseSchema), metadata={
        "description": "a sale's line, applied or duplicate: its reward codes, as a live sale's answer has them"})


class BatchSchema(Schema):
    results = fields.List(fields.Nested(BatchLineSchema))


class ErrorBodySchema(Schema):
    code = fields.String()
    message = fields.String(metadata={"description": "what went wrong, in English"})
    reason = fields.String(metadata={
        "description": "with code `refused` (a redemption): why, as a word a till can translate: `insufficient`, "
                       "`pending`, `negative_balance`, `max_units`, `one_at_a_time`, `earned_only`, "
                       "`wrong_channel`, `unknown_reward`, `unknown_channel`, `key_reused`, `unknown_customer`"})
    values = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "with `reason`: its numbers (`cost`, `balance`, `spendable`, `max`)"})
    plugin = fields.String(metadata={"description": "with code `plugin_failed`: the plugin that failed"})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema)


def _customer_json(summary: dict | None) -> dict | None:
    if summary is None:
        return None
    return CustomerSchema().dump(summary)


def _messages(messages) -> str:
    parts = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path and key != "_schema" else (path or str(key)))
        elif isinstance(node, list) and all(isinstance(m, str) for m in node):
            parts.append(f"{path}: {' '.join(node)}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
        else:
            parts.append(f"{path}: {node}")

    walk(messages, "")
    return "; ".join(parts) or "invalid input"
