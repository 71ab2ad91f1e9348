"""[plugins.birthday-bonus]: a multiplier on orders paid in the customer's
birthday month, on the shop's calendar (plugins/birthday.py). Its ``gift`` on
the birthday itself: tests/test_birthday_gifts.py."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from engine.config import ConfigError
from engine.rules_api import Award, Multiplier
from plugins.birthday import BirthdayBonus, BirthdaySettings
from tests.plugins.till import CanonicalTill, till_customer
from tests.plugins_builtin.shop import EMAIL, moment, planned, points, programme, send, start
from tests.streams import _shopify_order, _shopify_refund

MAY_BIRTHDAY = SimpleNamespace(birthday=date(1990, 5, 12))


def campaign(**settings) -> BirthdayBonus:
    return BirthdayBonus(BirthdaySettings().load(settings))


def test_an_order_paid_in_the_birthday_month_gets_the_multiplier():
    hook = campaign(multiplier=3).regulars_order_multipliers
    in_may = SimpleNamespace(paid_at=moment("2026-05-31T12:00+00:00"))
    in_june = SimpleNamespace(paid_at=moment("2026-06-01T12:00+00:00"))
    assert hook(order=in_may, customer=MAY_BIRTHDAY) == [Multiplier("birthday month", Decimal(3))]
    assert hook(order=in_june, customer=MAY_BIRTHDAY) is None
    assert hook(order=in_may, customer=SimpleNamespace(birthday=None)) is None
    assert campaign(multiplier=1).regulars_order_multipliers(order=in_may, customer=MAY_BIRTHDAY) is None


def test_the_gift_is_its_points_or_nothing():
    assert campaign(gift=150).regulars_birthday_awards() == [Award("points", 150, "birthday gift")]
    assert campaign().regulars_birthday_awards() is None


@pytest.mark.parametrize(("zone", "applies"), [("Europe/Prague", True), ("UTC", False)])
def test_the_month_is_the_shops_month_in_its_timezone(zone, applies):
    # 22:30 UTC on 30 April is 00:30 on 1 May in Prague.
    assert (
        campaign(timezone=zone).applies(moment("2026-04-30T22:30+00:00"), date(1990, 5, 12))
        is applies
    )


def test_a_birthday_month_order_earns_double_and_its_refund_is_reversed_at_that_rate(make_engine):
    engine = make_engine(
        programme(**{"birthday-bonus": {"timezone": "Europe/Prague"}}),
        extra_plugins=(("till", CanonicalTill()),),
    )
    send(engine, *till_customer(EMAIL, moment("2026-01-10T10:00+00:00"), birthday="1990-05-12"))
    order = planned()
    paid = moment("2026-05-20T10:00+00:00")
    send(engine, "shopify", "orders/paid", _shopify_order(order, "paid", paid, [], False))
    assert points(engine) == 96  # 48 x 2
    refund = _shopify_refund(order, 0, Decimal("8.00"), paid + timedelta(days=30))
    send(engine, "shopify", "refunds/create", refund)
    assert points(engine) == 80  # (48 - 8) x 2, in June


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("multiplier = 0", "multiplier: Must be greater than 0"),
        ('timezone = "Mars/Olympus"', "timezone: unknown time zone 'Mars/Olympus'"),
        ("points = 50", "points: unknown key (expected one of: gift, multiplier, timezone)"),
        ("gift = -5", "gift: Must be greater than or equal to 0 and less than or equal to 1000000."),
        ('gift = "100"', "gift: Not a valid integer."),
    ],
    ids=["zero", "bad-zone", "points-not-offered", "negative-gift", "gift-as-text"],
)
def test_a_wrong_setting_stops_the_start_naming_the_file_the_table_and_the_key(
    tmp_path, toml, expected
):
    with pytest.raises(ConfigError) as raised:
        start(tmp_path, f"[plugins.birthday-bonus]\n{toml}\n")
    assert f"{tmp_path / 'plugins.toml'} [plugins.birthday-bonus] {expected}" in str(raised.value)
