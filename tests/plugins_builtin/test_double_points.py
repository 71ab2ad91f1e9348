"""[plugins.double-points]: a multiplier for orders paid on campaign days, on the
shop's calendar, kept for the order's refunds (plugins/double_points.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from engine.config import ConfigError
from tests.plugins_builtin.shop import moment, planned, points, programme, send, start
from tests.streams import _shopify_order, _shopify_refund, _woo_order

BLACK_FRIDAY = {"days": [{"start": "2026-11-27", "end": "2026-11-30"}]}  # Fri to Mon


def test_an_order_paid_inside_a_period_earns_the_multiplier(make_engine):
    engine = make_engine(programme(**{"double-points": BLACK_FRIDAY}))
    order = planned("shopify")
    send(
        engine,
        "shopify",
        "orders/paid",
        _shopify_order(order, "paid", moment("2026-11-30T20:00+00:00"), [], False),
    )
    assert points(engine) == 96  # 48.00 x 2


def test_an_order_paid_outside_every_period_earns_the_ordinary_points(make_engine):
    engine = make_engine(programme(**{"double-points": BLACK_FRIDAY}))
    order = planned("woocommerce")
    send(
        engine,
        "woocommerce",
        "order.updated",
        _woo_order(order, "processing", moment("2026-12-01T09:00+00:00"), []),
    )
    assert points(engine) == 48


@pytest.mark.parametrize(("zone", "expected"), [("Europe/Prague", 96), ("UTC", 48)])
def test_the_day_is_the_shops_day_in_its_timezone(make_engine, zone, expected):
    engine = make_engine(programme(**{"double-points": {**BLACK_FRIDAY, "timezone": zone}}))
    # 23:30 UTC on Thursday 26 November is 00:30 on Friday 27 November in Prague.
    paid = moment("2026-11-26T23:30+00:00")
    send(engine, "shopify", "orders/paid", _shopify_order(planned(), "paid", paid, [], False))
    assert points(engine) == expected


def test_weekdays_apply_and_the_highest_matching_multiplier_wins(make_engine):
    settings = {
        "weekdays": ["sat"],
        "multiplier": 2,
        "days": [{"start": "2026-11-28", "end": "2026-11-28", "multiplier": 3}],
    }
    engine = make_engine(programme(**{"double-points": settings}))
    saturdays = [moment("2026-11-21T10:00+00:00"), moment("2026-11-28T10:00+00:00")]
    for number, paid in enumerate(saturdays, start=1):
        order = planned("woocommerce", number)
        send(engine, "woocommerce", "order.updated", _woo_order(order, "processing", paid, []))
    assert points(engine) == 48 * 2 + 48 * 3  # not 48 x 2 x 3 on the 28th


def test_a_refund_after_the_campaign_is_reversed_at_the_campaign_rate_and_a_cancellation_reverses_all(
    make_engine,
):
    engine = make_engine(programme(**{"double-points": BLACK_FRIDAY}))
    order = planned("shopify")
    paid = moment("2026-11-28T10:00+00:00")
    send(engine, "shopify", "orders/paid", _shopify_order(order, "paid", paid, [], False))
    assert points(engine) == 96

    later = paid + timedelta(days=10)
    refund = _shopify_refund(order, 0, Decimal("10.00"), later)
    send(engine, "shopify", "refunds/create", refund)
    assert points(engine) == 76  # (48 - 10) x 2, though the campaign is over

    send(
        engine,
        "shopify",
        "orders/cancelled",
        _shopify_order(order, "refunded", later + timedelta(days=1), [refund], True),
    )
    assert points(engine) == 0


def test_woocommerce_refunds_and_cancellation_reverse_campaign_points(make_engine):
    engine = make_engine(programme(**{"double-points": {"weekdays": ["sun"], "multiplier": 1.5}}))
    order = planned("woocommerce")
    sunday = moment("2026-03-01T09:00+00:00")
    send(engine, "woocommerce", "order.updated", _woo_order(order, "processing", sunday, []))
    assert points(engine) == 72  # 48 x 1.5
    send(
        engine,
        "woocommerce",
        "order.updated",
        _woo_order(order, "completed", sunday + timedelta(days=2), [Decimal("7.00")]),
    )
    assert points(engine) == 61  # floor(41 x 1.5)
    send(
        engine,
        "woocommerce",
        "order.updated",
        _woo_order(order, "cancelled", sunday + timedelta(days=3), [Decimal("7.00")]),
    )
    assert points(engine) == 0


def test_a_snapshot_that_arrives_before_its_payment_ends_in_the_same_points(make_engine):
    # The refund's snapshot comes first: the order looks paid the day after the
    # campaign, until the late orders/paid moves paid_at back into it.
    engine = make_engine(programme(**{"double-points": BLACK_FRIDAY}))
    paid = moment("2026-11-30T10:00+00:00")  # the last campaign day
    refunded = paid + timedelta(days=1)

    def stream(order):
        refund = _shopify_refund(order, 0, Decimal("10.00"), refunded)
        return [
            ("orders/paid", _shopify_order(order, "paid", paid, [], False)),
            ("refunds/create", refund),
            (
                "orders/updated",
                _shopify_order(order, "partially_refunded", refunded, [refund], False),
            ),
        ]

    # The same order twice, for two customers: once in order, once the other way round.
    for topic, body in stream(planned("shopify", 1)):
        send(engine, "shopify", topic, body)
    other = replace(planned("shopify", 2), email="petr@example.com")
    for topic, body in reversed(stream(other)):
        send(engine, "shopify", topic, body)

    assert points(engine) == 76
    assert points(engine, "petr@example.com") == points(engine)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'days = [{ start = "2026-11-30", end = "2026-11-27" }]',
            "days.0.end: must be on or after start (2026-11-30)",
        ),
        (
            "days = [{ start = 2026-11-27, end = 2026-11-30, multiplier = 0 }]",
            "days.0.multiplier: Must be greater than 0",
        ),
        (
            'days = [{ start = "27.11.2026", end = "2026-11-30" }]',
            'days.0.start: not a date: write it as "YYYY-MM-DD"',
        ),
        (
            'weekdays = ["saturday"]',
            "weekdays.0: not a weekday: use one of mon, tue, wed, thu, fri, sat, sun",
        ),
        ("multiplier = 2", "days: give `days` (periods), `weekdays` or both"),
        (
            'weekdays = ["sat"]\ntimezone = "Europe/Prag"',
            "timezone: unknown time zone 'Europe/Prag'",
        ),
        (
            'weekdays = ["sat"]\nmultiplyer = 2',
            "multiplyer: unknown key (expected one of: days, multiplier, timezone, weekdays)",
        ),
    ],
    ids=[
        "end-before-start",
        "zero",
        "bad-date",
        "bad-weekday",
        "nothing-to-run",
        "bad-zone",
        "misspelt",
    ],
)
def test_a_wrong_setting_stops_the_start_naming_the_file_the_table_and_the_key(
    tmp_path, toml, expected
):
    with pytest.raises(ConfigError) as raised:
        start(tmp_path, f"[plugins.double-points]\n{toml}\n")
    assert f"{tmp_path / 'plugins.toml'} [plugins.double-points] {expected}" in str(raised.value)
