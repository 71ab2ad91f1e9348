"""Stamp cards: one stamp per qualifying paid order or counter visit
(``per = "order"``), or per matching unit (``per = "item"``).

```toml
[rules.stamps.coffee]
required = 10
per = "item"
skus = ["COFFEE-*"]     # optional: only matching lines count
min_spend = "3.00"      # optional: the order's eligible spend must reach it
reward = "free-coffee"  # from the catalogue
visits = false          # a counter visit earns a stamp (default: per = "order")
```

A stamp card holds while the order stands: a cancellation or a full refund
takes its stamps back, and so does a partial refund that brings the order below
``min_spend``. (A partial refund otherwise keeps the stamps: the channels don't
all say which lines were refunded.) Every channel stamps the same card.
"""

from __future__ import annotations

from decimal import Decimal
from fnmatch import fnmatchcase

from marshmallow import fields, validate

from engine.config import DecimalString, StrictSchema, named_tables
from engine.hookspecs import hookimpl
from engine.rules_api import Award, StampCard


class CardSettings(StrictSchema):
    required = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1000))
    per = fields.String(load_default="order", validate=validate.OneOf(["order", "item"]))
    skus = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    min_spend = DecimalString(load_default=Decimal(0), validate=validate.Range(min=Decimal(0)))
    reward = fields.String(required=True)
    visits = fields.Boolean(load_default=None, allow_none=True)


StampsSettings = named_tables(CardSettings, "card", "[rules.stamps.coffee]")


class StampsRule:
    """Stamps for orders and visits; the engine completes the cards."""

    table = "rules.stamps"
    settings_schema = StampsSettings

    def __init__(self, settings: dict):
        self.cards = settings

    @hookimpl
    def regulars_register_stamp_cards(self):
        return [StampCard(name, card["required"], card["reward"]) for name, card in self.cards.items()]

    @hookimpl
    def regulars_order_awards(self, order, customer):
        return [Award(f"stamps:{name}", self._stamps(card, order), "stamps") for name, card in self.cards.items()]

    @hookimpl
    def regulars_visit_awards(self, visit, customer):
        return [
            Award(f"stamps:{name}", 1, "counter visit")
            for name, card in self.cards.items()
            if (card["visits"] if card["visits"] is not None else card["per"] == "order")
        ]

    @staticmethod
    def _stamps(card: dict, order) -> int:
        if not order.awardable or order.eligible <= 0 or order.eligible < card["min_spend"]:
            return 0
        matching = [line for line in order.lines if not line["gift_card"] and _matches(card["skus"], line.get("sku"))]
        if card["per"] == "item":
            return sum(line["quantity"] for line in matching)
        return 1 if matching else 0


def _matches(patterns: list[str], sku: str | None) -> bool:
    if not patterns:
        return True
    return bool(sku) and any(fnmatchcase(sku.upper(), p.upper()) for p in patterns)
