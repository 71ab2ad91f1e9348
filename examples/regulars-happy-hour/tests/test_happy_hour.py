"""The happy-hour plugin through a real engine, with regulars' test helpers
(``engine.testing``): an installed package, found through its entry point the
way ``regulars serve`` finds it. Install it first: ``pip install -e .``"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.config import ConfigError
from engine.testing import balance, engine_for, paid_order

EMAIL = "jana@example.com"
HAPPY_HOUR = {"start": "16:00", "end": "18:00", "multiplier": 2, "timezone": "Europe/Prague"}


def shop(tmp_path, **settings):
    """A shop with happy hour on (1 point per EUR, both shops, from engine.testing)."""
    return engine_for(tmp_path, tables={"plugins": {"happy-hour": {**HAPPY_HOUR, **settings}}})


def test_the_plugin_loads_from_its_entry_point_when_its_table_is_present(tmp_path):
    loaded = {p.name: p for p in shop(tmp_path).plugins.loaded}
    assert loaded["happy-hour"].source == (
        "entry point regulars_happy_hour:HappyHour (regulars-happy-hour)"
    )
    assert (loaded["happy-hour"].table, loaded["happy-hour"].hooks) == (
        "plugins.happy-hour",
        ["regulars_order_multipliers"],
    )


def test_the_plugin_is_off_without_its_table(tmp_path):
    engine = engine_for(tmp_path)
    assert "happy-hour" not in [p.name for p in engine.plugins.loaded]


def test_an_order_paid_during_happy_hour_on_the_shops_clock_earns_double(tmp_path):
    engine = shop(tmp_path)
    # 15:30 UTC is 16:30 in Prague in March (UTC+1).
    engine.ingest(*paid_order(total="12.40", paid_at=datetime(2026, 3, 2, 15, 30, tzinfo=UTC)))
    assert balance(engine, EMAIL) == 24  # floor(12.40 x 1 x 2)


@pytest.mark.parametrize(
    "paid_at",
    [
        datetime(2026, 3, 2, 14, 59, tzinfo=UTC),  # 15:59 in Prague
        datetime(2026, 3, 2, 17, 0, tzinfo=UTC),  # 18:00 in Prague: the end is not included
        datetime(2026, 7, 2, 16, 30, tzinfo=UTC),  # 18:30 in Prague in summer (UTC+2)
    ],
    ids=["before", "at-the-end", "summer-time"],
)
def test_an_order_paid_outside_happy_hour_earns_the_ordinary_points(tmp_path, paid_at):
    engine = shop(tmp_path)
    engine.ingest(*paid_order("woocommerce", total="12.40", paid_at=paid_at))
    assert balance(engine, EMAIL) == 12


def test_a_window_past_midnight_wraps_round(tmp_path):
    engine = shop(tmp_path, start="22:00", end="02:00", multiplier=3)
    engine.ingest(
        *paid_order(order_id=1, total="10.00", paid_at=datetime(2026, 3, 2, 0, 30, tzinfo=UTC))
    )
    engine.ingest(
        *paid_order(order_id=2, total="10.00", paid_at=datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    )
    assert balance(engine, EMAIL) == 30 + 10


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"start": "4pm"}, 'start: not a time of day: write it as "HH:MM"'),
        ({"end": "16:00"}, "end: must differ from start"),
        ({"multiplier": 0}, "multiplier: Must be greater than 0"),
        ({"timezone": "Europe/Prag"}, "timezone: unknown time zone 'Europe/Prag'"),
        (
            {"multipler": 2},
            "multipler: unknown key (expected one of: end, multiplier, start, timezone)",
        ),
    ],
    ids=["bad-time", "empty-window", "zero", "bad-zone", "misspelt-key"],
)
def test_a_wrong_setting_stops_the_start_naming_the_table_and_the_key(tmp_path, settings, expected):
    with pytest.raises(ConfigError) as raised:
        shop(tmp_path, **settings)
    assert f"plugins.toml [plugins.happy-hour] {expected}" in str(raised.value)
