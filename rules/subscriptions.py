"""Memberships: a plan's multiplier on orders paid while it is active, and points
when it starts and on every renewal.

```toml
[rules.subscriptions.vip]
multiplier = 2.0        # on orders paid while the membership is active
renewal_points = 100    # points on each renewal (and at the start, if start_points is not given)
start_points = 50       # optional
grace_days = 7          # optional: lapse 7 days after the paid period ends (subscription-check job)
```

The engine keeps the subscriptions and posts the points (engine/subscriptions.py);
this plugin gives the plans and the multiplier of the customer's memberships
active when the order was paid (``customer.plans``; asked again when a late
event changes which were). Without ``grace_days`` a
membership's ``period_end`` is reported, not enforced; with it, ``regulars jobs
run subscription-check`` lapses memberships whose period ended more than
``grace_days`` ago.
"""

from __future__ import annotations

from decimal import Decimal

from marshmallow import fields, validate

from engine.config import DecimalString, StrictSchema, named_tables
from engine.hookspecs import hookimpl
from engine.rules_api import Multiplier, SubscriptionPlan

POINTS = validate.Range(min=0, max=1_000_000)


class PlanSettings(StrictSchema):
    multiplier = DecimalString(load_default=Decimal(1), validate=validate.Range(min=Decimal(0), max=Decimal(100)))
    renewal_points = fields.Integer(strict=True, load_default=0, validate=POINTS)
    start_points = fields.Integer(strict=True, load_default=None, allow_none=True, validate=POINTS)
    grace_days = fields.Integer(strict=True, load_default=None, allow_none=True,
                                validate=validate.Range(min=0, max=3650))


SubscriptionsSettings = named_tables(PlanSettings, "plan", "[rules.subscriptions.vip]")


class SubscriptionsRule:
    table = "rules.subscriptions"
    settings_schema = SubscriptionsSettings

    def __init__(self, settings: dict):
        self.plans = {
            name: SubscriptionPlan(name, plan["multiplier"], plan["renewal_points"], plan["start_points"],
                                   plan["grace_days"])
            for name, plan in settings.items()
        }

    @hookimpl
    def regulars_register_subscription_plans(self):
        return list(self.plans.values())

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        found = [Multiplier(f"{name} membership", self.plans[name].multiplier)
                 for name in customer.plans if name in self.plans and self.plans[name].multiplier != 1]
        return found or None
