"""Tiers by points earned (or spend) in a rolling window, each with a multiplier.

```toml
[rules.tiers]
metric = "points_earned"    # or "spend"
window_days = 365
downgrade = "one_level"     # or "to_earned", at `regulars jobs run tier-review`
grace_days = 30             # below the threshold this long before a downgrade
levels = [
  { name = "silver", threshold = 500, multiplier = 1.25 },
  { name = "gold", threshold = 2000, multiplier = 1.5 },
]
```

The engine keeps the tiers (engine/tiers.py); this plugin gives the program and
the multiplier of the tier that held when an order was paid.
"""

from __future__ import annotations

from decimal import Decimal

from marshmallow import ValidationError, fields, validate, validates_schema

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import Multiplier, TierLevel, TierProgram


class LevelSettings(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    threshold = DecimalString(required=True, validate=validate.Range(min=Decimal(0), min_inclusive=False))
    multiplier = DecimalString(load_default=Decimal(1), validate=validate.Range(min=Decimal(0), max=Decimal(100)))


class TiersSettings(StrictSchema):
    metric = fields.String(load_default="points_earned", validate=validate.OneOf(["points_earned", "spend"]))
    window_days = fields.Integer(strict=True, load_default=365, validate=validate.Range(min=1, max=3650))
    downgrade = fields.String(load_default="one_level", validate=validate.OneOf(["one_level", "to_earned"]))
    grace_days = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0, max=3650))
    levels = fields.List(fields.Nested(LevelSettings), required=True, validate=validate.Length(min=1))

    @validates_schema
    def _increasing(self, data, **kwargs):
        levels = data.get("levels") or []
        names = [level["name"] for level in levels]
        if len(set(names)) != len(names):
            raise ValidationError("level names must differ", "levels")
        for i in range(1, len(levels)):
            if levels[i]["threshold"] <= levels[i - 1]["threshold"]:
                raise ValidationError(
                    f"levels[{i}].threshold must be greater than levels[{i - 1}]'s ({levels[i - 1]['threshold']})",
                    "levels",
                )


class TiersRule:
    table = "rules.tiers"
    settings_schema = TiersSettings

    def __init__(self, settings: dict):
        levels = tuple(TierLevel(lv["name"], lv["threshold"], lv["multiplier"]) for lv in settings["levels"])
        self.program = TierProgram(settings["metric"], settings["window_days"], levels,
                                   settings["downgrade"], settings["grace_days"])
        self.multipliers = {level.name: level.multiplier for level in levels}

    @hookimpl
    def regulars_register_tier_program(self):
        return self.program

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        tier = customer.tier_at(order.paid_at)  # the tier that held when it was paid
        factor = self.multipliers.get(tier)
        return [Multiplier(f"{tier} tier", factor)] if factor is not None else None
