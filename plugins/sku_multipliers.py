"""SKU and category multipliers: extra points for the lines that match.

```toml
[plugins.sku-multipliers]
rules = [
  { skus = ["COFFEE-*"], multiplier = 2 },
  { categories = ["books"], multiplier = 1.5 },
]
```

A line matches a rule when its SKU matches one of ``skus`` (shell-style
patterns: ``*``, ``?``, ``[...]``) or one of its categories is in
``categories``, both case-insensitively; a line matching several rules takes
the highest multiplier. The order earns, beside its ordinary points::

    floor(sum(line eligible x (multiplier - 1)) x order multiplier x standing share)

where the order multiplier is the one it was awarded with (rate, tier,
campaigns) and the standing share is ``order.eligible / order.gross_eligible``:
what is left after refunds (WooCommerce reports refunds as totals, not lines,
so they are spread over the whole order). A cancellation or full refund takes
all of it back. The extra points are floored on their own, so an order may earn
one point less than flooring the whole sum at once would give.

Only lines that carry categories can match ``categories``: the Shopify and
WooCommerce webhooks don't list a product's categories, so today that needs a
connector that fills ``categories`` (a till's, for instance).
"""

from __future__ import annotations

from decimal import Decimal
from fnmatch import fnmatchcase

from marshmallow import ValidationError, fields, validate, validates_schema

from engine.config import DecimalString, StrictSchema
from engine.events import line_eligible
from engine.hookspecs import hookimpl
from engine.rules_api import UNIT_POINTS, Award
from plugins.settings import StrictRow

REASON = "SKU and category multipliers"


class RuleSchema(StrictRow):
    skus = fields.List(fields.String(validate=validate.Length(min=1, max=255)), load_default=list)
    categories = fields.List(
        fields.String(validate=validate.Length(min=1, max=255)), load_default=list
    )
    multiplier = DecimalString(
        required=True,
        validate=validate.Range(
            min=Decimal(1),
            max=Decimal(100),
            error="must be between {min} and {max}: this campaign adds points, it never takes them",
        ),
    )

    @validates_schema
    def _matches_something(self, data, **kwargs):
        if not data["skus"] and not data["categories"]:
            raise ValidationError(
                "give `skus`, `categories` or both: this rule matches no line", "skus"
            )


class SkuMultiplierSettings(StrictSchema):
    rules = fields.List(
        fields.Nested(RuleSchema),
        required=True,
        validate=validate.Length(min=1, error="give at least one rule"),
    )


class SkuMultipliers:
    """``[plugins.sku-multipliers]``: extra points for matching lines."""

    table = "plugins.sku-multipliers"
    settings_schema = SkuMultiplierSettings

    def __init__(self, settings: dict):
        self.rules = [
            (
                tuple(pattern.casefold() for pattern in rule["skus"]),
                frozenset(category.casefold() for category in rule["categories"]),
                rule["multiplier"],
            )
            for rule in settings["rules"]
        ]

    def line_multiplier(self, line: dict) -> Decimal:
        """The highest multiplier of the rules a line matches (1 for none)."""
        sku = (line.get("sku") or "").casefold()
        categories = {c.casefold() for c in line.get("categories") or ()}
        best = Decimal(1)
        for patterns, wanted, factor in self.rules:
            matched = (sku and any(fnmatchcase(sku, p) for p in patterns)) or (categories & wanted)
            if matched and factor > best:
                best = factor
        return best

    def extra_points(self, order) -> int:
        """The extra points the order should have earned in total, as it stands."""
        if order.eligible <= 0 or order.gross_eligible <= 0:
            return 0
        weighted = sum(
            (line_eligible(line) * (self.line_multiplier(line) - 1) for line in order.lines),
            Decimal(0),
        )
        # One exact integer division for the floor: no rounded quotient on the way.
        return int((weighted * order.multiplier * order.eligible) // order.gross_eligible)

    @hookimpl
    def regulars_order_awards(self, order, customer):
        # A total, not a difference: the engine posts what changed since last time.
        return [Award(UNIT_POINTS, self.extra_points(order), REASON)]
