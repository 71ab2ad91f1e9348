"""[plugins.sku-multipliers]: extra points for matching lines, scaled by what
stands after refunds, all taken back by a cancellation (plugins/sku_multipliers.py)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from engine.config import ConfigError
from tests.plugins.till import CanonicalTill, till_sale
from tests.plugins_builtin.shop import EMAIL, planned, points, programme, send, start, with_skus
from tests.streams import T0, Line, _shopify_order, _shopify_refund, _woo_order

COFFEE_DOUBLE = {"rules": [{"skus": ["COFFEE-*"], "multiplier": 2}]}
# 2 x 4.50 coffee with 1.00 off (8.00 eligible) and a 20.00 book: 28.00 eligible
LINES = (Line(Decimal("4.50"), 2, Decimal("1.00")), Line(Decimal("20.00"), 1))
SKUS = ("COFFEE-LATTE", "BOOK-1")


def shopify(status, at, refunds=(), cancelled=False) -> dict:
    """The coffee-and-book order's Shopify body."""
    order = planned("shopify", 1, *LINES)
    return with_skus(_shopify_order(order, status, at, list(refunds), cancelled), *SKUS)


def woo(status, at, refunds=()) -> dict:
    """The coffee-and-book order's WooCommerce body."""
    return with_skus(
        _woo_order(planned("woocommerce", 1, *LINES), status, at, list(refunds)), *SKUS
    )


def test_matching_lines_earn_their_extra_points_on_a_shopify_order(make_engine):
    engine = make_engine(programme(**{"sku-multipliers": COFFEE_DOUBLE}))
    send(engine, "shopify", "orders/paid", shopify("paid", T0))
    assert points(engine) == 28 + 8  # the coffee's 8.00 earns twice


def test_the_extra_points_follow_the_orders_multipliers(make_engine):
    sundays = {"weekdays": ["sun"]}  # T0 is a Sunday
    engine = make_engine(programme(**{"sku-multipliers": COFFEE_DOUBLE, "double-points": sundays}))
    send(engine, "shopify", "orders/paid", shopify("paid", T0))
    assert points(engine) == 56 + 16  # 28 x 2, and 8 x (2 - 1) x 2


def test_a_woocommerce_refund_scales_the_extra_points_and_a_cancellation_takes_them_back(
    make_engine,
):
    engine = make_engine(programme(**{"sku-multipliers": COFFEE_DOUBLE}))
    paid = T0 + timedelta(hours=1)
    send(engine, "woocommerce", "order.updated", woo("processing", paid))
    assert points(engine) == 36

    refund = [Decimal("10.00")]  # WooCommerce reports a total: 18 of 28 still stands
    send(engine, "woocommerce", "order.updated", woo("completed", paid + timedelta(days=1), refund))
    assert points(engine) == 18 + 5  # floor(8 x 18 / 28) = floor(5.14)

    send(engine, "woocommerce", "order.updated", woo("cancelled", paid + timedelta(days=2), refund))
    assert points(engine) == 0


def test_a_shopify_refund_and_cancellation_reverse_the_extra_points(make_engine):
    engine = make_engine(programme(**{"sku-multipliers": COFFEE_DOUBLE}))
    send(engine, "shopify", "orders/paid", shopify("paid", T0))
    refund = _shopify_refund(
        planned("shopify", 1, *LINES), 0, Decimal("7.00"), T0 + timedelta(days=1)
    )
    send(engine, "shopify", "refunds/create", refund)
    assert points(engine) == 21 + 6  # 21 of 28 stands: floor(8 x 21 / 28) = 6

    cancelled = shopify("refunded", T0 + timedelta(days=2), [refund], cancelled=True)
    send(engine, "shopify", "orders/cancelled", cancelled)
    assert points(engine) == 0


def test_a_line_takes_the_highest_rule_it_matches_and_patterns_ignore_case(make_engine):
    rules = {
        "rules": [
            {"skus": ["coffee-*"], "multiplier": 2},
            {"skus": ["COFFEE-LATTE"], "multiplier": 3},
        ]
    }
    engine = make_engine(programme(**{"sku-multipliers": rules}))
    lines = (Line(Decimal("10.00"), 1), Line(Decimal("10.00"), 1), Line(Decimal("10.00"), 1))
    body = _shopify_order(planned("shopify", 1, *lines), "paid", T0, [], False)
    send(engine, "shopify", "orders/paid", with_skus(body, "COFFEE-LATTE", "Coffee-Beans", "TEA-1"))
    assert points(engine) == 30 + 20 + 10  # latte x 3, beans x 2, tea x 1


def test_categories_match_lines_from_a_channel_that_sends_them(make_engine):
    rules = {"rules": [{"categories": ["books"], "multiplier": 1.5}]}
    engine = make_engine(
        programme(**{"sku-multipliers": rules}), extra_plugins=(("till", CanonicalTill()),)
    )
    sale = till_sale(
        1,
        EMAIL,
        T0,
        [("NOVEL-1", Decimal("19.99"), ["Books", "Fiction"]), ("PEN", Decimal("3.00"), [])],
    )
    send(engine, *sale)
    assert points(engine) == 22 + 9  # floor(22.99), and floor(19.99 x 0.5)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("rules = [{ multiplier = 2 }]", "rules.0.skus: give `skus`, `categories` or both"),
        (
            'rules = [{ skus = ["A"], multiplier = 0.5 }]',
            "rules.0.multiplier: must be between 1 and 100",
        ),
        ('rules = [{ skus = ["A"] }]', "rules.0.multiplier: Missing data for required field."),
        ("rules = []", "rules: give at least one rule"),
        (
            'rules = [{ sku = ["A"], multiplier = 2 }]',
            "rules.0.sku: unknown key (expected one of: categories, multiplier, skus)",
        ),
    ],
    ids=["matches-nothing", "below-one", "no-multiplier", "no-rules", "misspelt"],
)
def test_a_wrong_rule_stops_the_start_naming_the_file_the_table_and_the_key(
    tmp_path, toml, expected
):
    with pytest.raises(ConfigError) as raised:
        start(tmp_path, f"[plugins.sku-multipliers]\n{toml}\n")
    assert f"{tmp_path / 'plugins.toml'} [plugins.sku-multipliers] {expected}" in str(raised.value)
