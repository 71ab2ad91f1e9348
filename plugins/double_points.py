"""Double points: a multiplier on orders paid on given days or weekdays.

```toml
[plugins.double-points]
timezone = "Europe/Prague"   # the shop's calendar (default "UTC")
multiplier = 2               # for `weekdays`, and for periods without their own
weekdays = ["sat"]
days = [{ start = "2026-11-27", end = "2026-11-30", multiplier = 3 }]
```

An order whose ``paid_at``, read in ``timezone``, falls on a listed weekday or
inside a period (both ends included) earns its points times the multiplier.
When several match, the highest one applies (a Black Friday on a Saturday is
not 3 x 2). Like every multiplier it is decided when the order is first awarded
and kept for its refunds, so a refund after the campaign ended is still
recomputed at the campaign's rate.
"""

from __future__ import annotations

from decimal import Decimal
from zoneinfo import ZoneInfo

from marshmallow import ValidationError, fields, validate, validates_schema

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import Multiplier
from plugins.settings import WEEKDAYS, Day, StrictRow, TimeZone

#: multipliers beyond this are a typo, not a campaign
MAX_MULTIPLIER = Decimal(100)


def _factor(**kwargs) -> DecimalString:
    return DecimalString(
        validate=validate.Range(min=Decimal(0), min_inclusive=False, max=MAX_MULTIPLIER),
        **kwargs,
    )


class PeriodSchema(StrictRow):
    start = Day(required=True)
    end = Day(required=True)
    multiplier = _factor(load_default=None)

    @validates_schema
    def _end_not_before_start(self, data, **kwargs):
        if data["end"] < data["start"]:
            raise ValidationError(
                f"must be on or after start ({data['start'].isoformat()}); both days count", "end"
            )


class DoublePointsSettings(StrictSchema):
    timezone = TimeZone(load_default=lambda: ZoneInfo("UTC"))
    multiplier = _factor(load_default=Decimal(2))
    weekdays = fields.List(
        fields.String(
            validate=validate.OneOf(WEEKDAYS, error="not a weekday: use one of {choices}")
        ),
        load_default=list,
    )
    days = fields.List(fields.Nested(PeriodSchema), load_default=list)

    @validates_schema
    def _something_to_run(self, data, **kwargs):
        if not data["weekdays"] and not data["days"]:
            raise ValidationError(
                "give `days` (periods), `weekdays` or both: without them the campaign never applies",
                "days",
            )


class DoublePoints:
    """``[plugins.double-points]``: a multiplier for orders paid on campaign days."""

    table = "plugins.double-points"
    settings_schema = DoublePointsSettings

    def __init__(self, settings: dict):
        self.zone = settings["timezone"]
        default = settings["multiplier"]
        self.weekdays = {WEEKDAYS.index(day) for day in settings["weekdays"]}
        self.weekday_factor = default
        self.periods = [
            (period["start"], period["end"], period["multiplier"] or default)
            for period in settings["days"]
        ]

    def campaign_on(self, paid_at) -> Multiplier | None:
        """The multiplier for an order paid at ``paid_at``, or None."""
        day = paid_at.astimezone(self.zone).date()
        matches = [
            Multiplier(f"double points {start.isoformat()} to {end.isoformat()}", factor)
            for start, end, factor in self.periods
            if start <= day <= end
        ]
        if day.weekday() in self.weekdays:
            matches.append(
                Multiplier(f"double points on {WEEKDAYS[day.weekday()]}", self.weekday_factor)
            )
        return max(matches, key=lambda m: m.factor, default=None)

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        if order.paid_at is None:
            return None
        found = self.campaign_on(order.paid_at)
        return [found] if found is not None else None
