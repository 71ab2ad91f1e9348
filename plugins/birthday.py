"""Birthday bonus: a multiplier on orders paid in the customer's birthday month.

```toml
[plugins.birthday-bonus]
multiplier = 2
timezone = "Europe/Prague"   # the shop's calendar (default "UTC")
```

The month is read from ``order.paid_at`` in ``timezone``; a customer whose
birthday the engine doesn't know earns nothing extra. Like every multiplier it
is decided when the order is first awarded and kept for its refunds: a
birthday learnt after that doesn't change an order already awarded.

It reads ``customer.birthday`` (a ``date`` or None): a till, or a plugin's
connector, gives it with the customer; Shopify and WooCommerce don't send one.

A "``points`` once a year" variant is not offered: like the first-order bonus,
"the first order of the birthday month" is a fact about the customer's other
orders, which a decision hook can't see (see ``plugins.first_order``).
"""

from __future__ import annotations

from decimal import Decimal
from zoneinfo import ZoneInfo

from marshmallow import validate

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import Multiplier
from plugins.settings import TimeZone

NAME = "birthday month"


class BirthdaySettings(StrictSchema):
    multiplier = DecimalString(
        load_default=Decimal(2),
        validate=validate.Range(min=Decimal(0), min_inclusive=False, max=Decimal(100)),
    )
    timezone = TimeZone(load_default=lambda: ZoneInfo("UTC"))


class BirthdayBonus:
    """``[plugins.birthday-bonus]``: a multiplier in the customer's birthday month."""

    table = "plugins.birthday-bonus"
    settings_schema = BirthdaySettings

    def __init__(self, settings: dict):
        self.factor: Decimal = settings["multiplier"]
        self.zone = settings["timezone"]

    def applies(self, paid_at, birthday) -> bool:
        """Whether an order paid at ``paid_at`` is in the month of ``birthday``."""
        if paid_at is None or birthday is None:
            return False
        return paid_at.astimezone(self.zone).month == birthday.month

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        if self.applies(order.paid_at, customer.birthday):
            return [Multiplier(NAME, self.factor)]
        return None
