"""The reward catalogue (``[rewards.*]`` in plugins.toml) and the built-in kinds:
``fixed_amount`` (so much off), ``percentage`` (so many percent off) and
``free_product`` (one SKU free).

Common keys of a catalogue entry (validated by ``engine.rewards``):

- ``kind``: one of the registered kinds;
- ``cost``: points it costs; without it the reward can only be earned (a full
  stamp card), not bought;
- ``partial = true``: the customer may spend any multiple of ``cost`` for as
  many times ``value`` ("100 points for 1.00 off, as many as you like");
- ``max_units``: with ``partial``, the most multiples in one redemption;
- ``expires_days``: an unused reward expires so many days after it was issued;
- ``refund_on_expiry = true``: its points come back when it expires unused;
- ``channels``: where it may be spent (default: any channel).
"""

from __future__ import annotations

from decimal import Decimal

from marshmallow import INCLUDE, Schema, fields, validate

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import RewardKind

MONEY = validate.Range(min=Decimal("0.01"), max=Decimal(1_000_000))


class FixedAmount(StrictSchema):
    value = DecimalString(required=True, validate=MONEY)


class Percentage(StrictSchema):
    value = DecimalString(required=True, validate=validate.Range(min=Decimal("0.01"), max=Decimal(100)))


class FreeProduct(StrictSchema):
    sku = fields.String(required=True, validate=validate.Length(min=1, max=255))


class _Entries(Schema):
    """The raw ``[rewards.*]`` tables: engine.rewards validates each against its
    kind once every plugin has registered its kinds."""

    class Meta:
        unknown = INCLUDE


class RewardCatalogue:
    """Owns ``[rewards]``."""

    table = "rewards"
    settings_schema = _Entries

    def __init__(self, settings: dict):
        self.entries = settings

    @hookimpl
    def regulars_register_reward_kinds(self):
        return [
            RewardKind("fixed_amount", FixedAmount, lambda e: f"{e['value']} off"),
            RewardKind("percentage", Percentage, lambda e: f"{e['value']}% off"),
            RewardKind("free_product", FreeProduct, lambda e: f"free {e['sku']}"),
        ]
