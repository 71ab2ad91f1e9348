"""Happy hour: orders paid between ``start`` and ``end`` on the shop's clock
earn their points times ``multiplier``.

```toml
[plugins.happy-hour]
start = "16:00"
end = "18:00"                # not included; an end before the start runs past midnight
multiplier = 2
timezone = "Europe/Prague"
```

A regulars plugin is a class with the ``plugins.toml`` table it owns, a
marshmallow schema for that table, and ``@hookimpl`` methods named after the
hook specs in ``engine/hookspecs.py``. regulars finds it through the entry point
in this package's ``pyproject.toml``, constructs it with its validated table
when the table is present, and leaves it off otherwise.
"""

from __future__ import annotations

from datetime import time
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import ValidationError, fields, validate, validates_schema

from engine.config import DecimalString, StrictSchema
from engine.hookspecs import hookimpl
from engine.rules_api import Multiplier

__all__ = ["HappyHour", "HappyHourSettings"]


class ClockTime(fields.Field):
    """A time of day: ``"16:00"`` (or a TOML local time, ``16:00:00``)."""

    default_error_messages = {"invalid": 'not a time of day: write it as "HH:MM", e.g. "16:00"'}

    def _deserialize(self, value, attr, data, **kwargs) -> time:
        if isinstance(value, time):
            return value
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            return time.fromisoformat(value)
        except ValueError:
            raise self.make_error("invalid") from None


class TimeZone(fields.String):
    """An IANA time zone name, loaded as a ``ZoneInfo``."""

    default_error_messages = {
        "unknown": "unknown time zone {value!r}: use an IANA name such as 'Europe/Prague'",
    }

    def _deserialize(self, value, attr, data, **kwargs) -> ZoneInfo:
        name = super()._deserialize(value, attr, data, **kwargs)
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.make_error("unknown", value=name) from None


class HappyHourSettings(StrictSchema):
    """``[plugins.happy-hour]``; StrictSchema refuses unknown keys."""

    start = ClockTime(required=True)
    end = ClockTime(required=True)
    multiplier = DecimalString(
        load_default=Decimal(2),
        validate=validate.Range(min=Decimal(0), min_inclusive=False, max=Decimal(100)),
    )
    timezone = TimeZone(load_default=lambda: ZoneInfo("UTC"))

    @validates_schema
    def _a_real_window(self, data, **kwargs):
        if data["start"] == data["end"]:
            raise ValidationError("must differ from start: the happy hour would never end", "end")


class HappyHour:
    """A multiplier for orders paid during the happy hour."""

    #: the plugins.toml table this plugin owns; the plugin is on when it's present
    table = "plugins.happy-hour"
    #: validates that table; the constructor receives the loaded result
    settings_schema = HappyHourSettings

    def __init__(self, settings: dict):
        self.start: time = settings["start"]
        self.end: time = settings["end"]
        self.factor: Decimal = settings["multiplier"]
        self.zone: ZoneInfo = settings["timezone"]

    def is_happy_hour(self, moment) -> bool:
        """Whether an aware moment falls in the window on the shop's clock."""
        clock = moment.astimezone(self.zone).time()
        if self.start < self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end  # runs past midnight

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        # A decision hook: pure, no clock of its own. The order says when it was paid.
        if order.paid_at is not None and self.is_happy_hour(order.paid_at):
            return [Multiplier(f"happy hour {self.start:%H:%M}-{self.end:%H:%M}", self.factor)]
        return None
