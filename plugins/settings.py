"""Settings pieces the built-in campaigns share: rows of a list in a table, and
the shop's calendar.

``order.paid_at`` is an aware UTC moment; a campaign that runs "on Saturday" or
"from 27 to 30 November" means the shop's calendar, so each such plugin takes a
``timezone`` setting (an IANA name, default ``"UTC"``) and reads the paid moment
in it.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import ValidationError, fields, pre_load

from engine.config import StrictSchema

#: weekday names as plugins.toml spells them, Monday first (``date.weekday()``)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class StrictRow(StrictSchema):
    """A schema for one row of a list of tables (``days = [{ start = ... }]``).

    An unknown key is named with the keys *this row* takes; left to the table's
    error, it would list the table's keys instead."""

    @pre_load
    def _known_keys_only(self, data, **kwargs):
        if isinstance(data, dict):
            known = sorted(f.data_key or name for name, f in self.load_fields.items())
            unknown = [key for key in data if key not in known]
            if unknown:
                expected = f"unknown key (expected one of: {', '.join(known)})"
                raise ValidationError({key: [expected] for key in unknown})
        return data


class TimeZone(fields.String):
    """An IANA time zone name (``"Europe/Prague"``), loaded as a ``ZoneInfo``."""

    default_error_messages = {
        "unknown": "unknown time zone {value!r}: use an IANA name such as 'Europe/Prague' or 'UTC'",
    }

    def _deserialize(self, value, attr, data, **kwargs) -> ZoneInfo:
        name = super()._deserialize(value, attr, data, **kwargs)
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.make_error("unknown", value=name) from None

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else str(value)


class Day(fields.Date):
    """A calendar day: a TOML date (``2026-11-27``) or an ISO string (``"2026-11-27"``)."""

    default_error_messages = {"invalid": 'not a date: write it as "YYYY-MM-DD"'}

    def _deserialize(self, value, attr, data, **kwargs) -> date:
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        return super()._deserialize(value, attr, data, **kwargs)
