"""Points: ``floor(eligible x per_unit x multipliers)`` per order.

The rate ``per_unit`` is given to the order as its base multiplier the moment the
order is first awarded, so later changes to ``plugins.toml`` never rewrite what an
order already earned: a refund months later is recomputed with the rate and
multipliers the order was awarded with.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from marshmallow import validate

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import UNIT_POINTS, Award, Multiplier

BASE_RATE = "points per unit of currency"


class PointsSettings(StrictSchema):
    per_unit = DecimalString(
        load_default=Decimal(1),
        validate=validate.Range(min=Decimal(0), min_inclusive=False, max=Decimal(1_000_000)),
    )


def points_for(eligible: Decimal, multiplier: Decimal) -> int:
    """Whole points for an eligible spend, rounded down (never a fraction)."""
    return int((eligible * multiplier).to_integral_value(rounding=ROUND_FLOOR))


class PointsRule:
    """Awards points for the eligible spend of paid orders."""

    table = "rules.points"
    settings_schema = PointsSettings

    def __init__(self, settings: dict):
        self.per_unit: Decimal = settings["per_unit"]

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        return [Multiplier(BASE_RATE, self.per_unit)]

    @hookimpl
    def regulars_order_awards(self, order, customer):
        return [Award(UNIT_POINTS, points_for(order.eligible, order.multiplier), "order points")]
