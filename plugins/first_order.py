"""First-order bonus: ``points`` for a customer's first paid order.

```toml
[plugins.first-order-bonus]
points = 100
min_order = "20.00"   # eligible spend the first order must reach (after refunds)
```

"First" is a fact about a customer's *other* orders, so this plugin takes the
``history`` argument of ``regulars_order_awards``: the engine passes the
customer's other paid orders and asks it again about them whenever one of the
customer's orders changes (docs/writing-a-plugin.md, "Decisions that need
other orders").

The rule (``first_order_bonus``):

- the *first* order is the customer's paid, not-cancelled order with the
  earliest ``paid_at`` (ties broken by channel, then the channel's order id);
- it earns ``points`` while its standing eligible spend reaches ``min_order``;
  a refund below it, or a full refund, takes the bonus back, and it does not
  pass to a later order (a bought-and-returned first order used its chance);
- a cancelled order never happened: the next order becomes the first.

It depends only on the set of the customer's orders as they stand, not on the
order deliveries came in, so replays and reorderings end in the same bonus.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from marshmallow import fields, validate

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import UNIT_POINTS, Award

REASON = "first order bonus"


class FirstOrderSettings(StrictSchema):
    points = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=1_000_000)
    )
    min_order = DecimalString(load_default=Decimal(0), validate=validate.Range(min=Decimal(0)))


def _sort_key(order) -> tuple:
    return (order.paid_at, order.channel, order.external_id)


def first_paid_order(orders: Iterable):
    """The customer's first order among ``orders`` (``OrderView``-like): paid,
    not cancelled, earliest ``paid_at``, then channel, then order id. None when
    there is none."""
    paid = [o for o in orders if o.paid and not o.cancelled and o.paid_at is not None]
    return min(paid, key=_sort_key, default=None)


def first_order_bonus(order, history: Iterable, points: int, min_order: Decimal) -> int:
    """What ``order`` should have earned from the bonus, in total, given the
    customer's other orders ``history``: ``points`` or 0."""
    first = first_paid_order([order, *history])
    if first is None or (first.channel, first.external_id) != (order.channel, order.external_id):
        return 0
    return points if order.eligible > 0 and order.eligible >= min_order else 0


class FirstOrderBonus:
    """``[plugins.first-order-bonus]``: a bonus for a customer's first paid order."""

    table = "plugins.first-order-bonus"
    settings_schema = FirstOrderSettings

    def __init__(self, settings: dict):
        self.points: int = settings["points"]
        self.min_order: Decimal = settings["min_order"]

    @hookimpl
    def regulars_order_awards(self, order, customer, history):
        amount = first_order_bonus(order, history, self.points, self.min_order)
        return [Award(UNIT_POINTS, amount, REASON)]
