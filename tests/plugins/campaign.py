"""Campaign plugins: the shapes of plugin a shop owner's developer writes."""

from __future__ import annotations

from decimal import Decimal

from marshmallow import fields, validate

from engine.config import StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import UNIT_POINTS, Award, Multiplier


class BonusSettings(StrictSchema):
    points = fields.Integer(load_default=5, strict=True, validate=validate.Range(min=0))


class BonusCampaign:
    """``[plugins.bonus]``: a flat bonus of ``points`` for every paid order."""

    table = "plugins.bonus"
    settings_schema = BonusSettings

    def __init__(self, settings: dict):
        self.points = settings["points"]

    @hookimpl
    def regulars_order_awards(self, order, customer):
        # A total, not a difference: nothing once the order is cancelled.
        return [Award(UNIT_POINTS, self.points if order.awardable else 0, "bonus campaign")]


class DoublePoints:
    """Always on (no table): every order earns its points twice over."""

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        return [Multiplier("double points week", Decimal(2))]


class CoffeeStampPerVisit:
    """A stamp on the coffee card for every counter visit."""

    @hookimpl
    def regulars_visit_awards(self, visit, customer):
        return [Award("stamps:coffee", 1, f"visit at {visit['location'] or 'the counter'}")]


class ExplodingCampaign:
    """A decision hook that raises, as a buggy plugin does."""

    @hookimpl
    def regulars_order_awards(self, order, customer):
        raise RuntimeError("campaign service unreachable")


class SloppyCampaign:
    """Returns a plain number where an ``Award`` is required."""

    @hookimpl
    def regulars_order_awards(self, order, customer):
        return [5]


class MisspeltCampaign:
    """``regulars_order_award`` (no "s"): not a hook, refused at start."""

    @hookimpl
    def regulars_order_award(self, order, customer):
        return [Award(UNIT_POINTS, 5)]
