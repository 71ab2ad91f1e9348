"""Expiry and pending points.

```toml
[rules.expiry]
months = 12          # points expire 12 months after they were earned
remind_days = 30     # tell the customer 30 days before (regulars_points_expiring)
pending_days = 14    # an order's points are spendable 14 days after it was paid
```

Points are kept in lots, one per earning. Spending and refunds take from lots
(a refund from its own order's lot first, spending from the soonest-expiring
spendable one), so expiry only ever takes points that are still there:
``regulars jobs run expire`` posts one ``expiry`` entry per lot past its date.
With ``pending_days``, buying, redeeming and returning is not a way to mint
points: the order's points can't be spent before the return window closes, and
a refund inside it takes them back before they ever were.
"""

from __future__ import annotations

from marshmallow import fields, validate

from engine.config import StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import PointsPolicy


class ExpirySettings(StrictSchema):
    months = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1, max=600))
    remind_days = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1, max=365))
    pending_days = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0, max=365))


class ExpiryRule:
    table = "rules.expiry"
    settings_schema = ExpirySettings

    def __init__(self, settings: dict):
        self.policy = PointsPolicy(settings["months"], settings["pending_days"], settings["remind_days"])

    @hookimpl
    def regulars_points_policy(self):
        return self.policy
