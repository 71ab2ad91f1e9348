"""Birthday bonus: a multiplier on orders paid in the customer's birthday
month, and a gift of points on the birthday itself.

```toml
[plugins.birthday-bonus]
multiplier = 2               # 1: no multiplier
timezone = "Europe/Prague"   # the shop's calendar for the month (default "UTC")
gift = 100                   # points on the birthday (default 0: none)
```

The gift is given by the ``birthday-gifts`` job (hourly), once a year, on
the birthday in ``[engine] timezone`` or up to two days after it (see
``engine.birthdays``). A birthday learnt on the day or later gets its first
gift the next year. The points are earned points like an order's: they
expire as ``[rules.expiry]`` says.

The month is read from ``order.paid_at`` in ``timezone``; a customer whose
birthday the engine doesn't know earns nothing extra. Like every multiplier it
is decided when the order is first awarded and kept for its refunds: a
birthday learnt after that doesn't change an order already awarded.

It reads ``customer.birthday`` (a ``date`` or None): the customer gives it on
their card, the counter or a till with the customer, ``regulars customer
birthday`` sets it, or a plugin's connector does; Shopify and WooCommerce
don't send one.

"Double points on the first order of the birthday month" is not offered: like
the first-order bonus, it is a fact about the customer's other orders, which a
multiplier can't see (see ``plugins.first_order``); the gift is what stands in
for it.
"""

from __future__ import annotations

from decimal import Decimal
from zoneinfo import ZoneInfo

from marshmallow import fields, validate

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import UNIT_POINTS, Award, Multiplier
from plugins.settings import TimeZone

NAME = "birthday month"


class BirthdaySettings(StrictSchema):
    multiplier = DecimalString(
        load_default=Decimal(2),
        validate=validate.Range(min=Decimal(0), min_inclusive=False, max=Decimal(100)),
    )
    timezone = TimeZone(load_default=lambda: ZoneInfo("UTC"))
    gift = fields.Integer(load_default=0, strict=True, validate=validate.Range(min=0, max=1_000_000))


class BirthdayBonus:
    """``[plugins.birthday-bonus]``: a multiplier in the customer's birthday
    month, and ``gift`` points on the birthday."""

    table = "plugins.birthday-bonus"
    settings_schema = BirthdaySettings

    def __init__(self, settings: dict):
        self.factor: Decimal = settings["multiplier"]
        self.zone = settings["timezone"]
        self.gift: int = settings["gift"]

    def applies(self, paid_at, birthday) -> bool:
        """Whether an order paid at ``paid_at`` is in the month of ``birthday``."""
        if paid_at is None or birthday is None:
            return False
        return paid_at.astimezone(self.zone).month == birthday.month

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        if self.factor != 1 and self.applies(order.paid_at, customer.birthday):
            return [Multiplier(NAME, self.factor)]
        return None

    @hookimpl
    def regulars_birthday_awards(self):  # (the job picked the customer and the day)
        if self.gift:
            return [Award(UNIT_POINTS, self.gift, "birthday gift")]
        return None
