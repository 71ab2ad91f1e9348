"""Referrals: both rewards when the referee's first paid order reaches the minimum.

```toml
[rules.referrals]
referrer_points = 200
referee_points = 100
min_order = "20.00"
weekly_limit = 10                 # rewarded referrals per referrer in any 7 days
attribute_keys = ["ref"]          # order attributes that may carry a code
```

The engine keeps the claims and the guards (engine/referrals.py).
"""

from __future__ import annotations

from decimal import Decimal

from marshmallow import fields, validate

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import ReferralProgram


class ReferralSettings(StrictSchema):
    referrer_points = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=1_000_000))
    referee_points = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=1_000_000))
    min_order = DecimalString(load_default=Decimal(0), validate=validate.Range(min=Decimal(0)))
    weekly_limit = fields.Integer(strict=True, load_default=10, validate=validate.Range(min=1, max=10_000))
    attribute_keys = fields.List(fields.String(validate=validate.Length(min=1)),
                                 load_default=lambda: ["ref", "referral", "_regulars_ref"])


class ReferralsRule:
    table = "rules.referrals"
    settings_schema = ReferralSettings

    def __init__(self, settings: dict):
        self.program = ReferralProgram(settings["referrer_points"], settings["referee_points"],
                                       settings["min_order"], settings["weekly_limit"],
                                       tuple(settings["attribute_keys"]))

    @hookimpl
    def regulars_register_referral_program(self):
        return self.program
