"""The points rule and refund/cancellation reversal, as PRODUCT.md defines them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select

from engine.customers import customer_summary
from engine.db.models import ledger_entries, orders
from engine.hookspecs import hookimpl
from engine.rules_api import Multiplier
from rules.points import points_for
from tests.conftest import DEFAULT_TABLES, load_contract
from tests.streams import (
    Line,
    PlannedOrder,
    _shopify_order,
    _shopify_refund,
    _woo_order,
    deliveries,
)

EMAIL = "jana@example.com"


def points(engine, key=EMAIL) -> int:
    summary = customer_summary(engine, key)
    return summary["points"] if summary else 0


def send(engine, channel, topic, body):
    outcome = engine.ingest(channel, topic, json.dumps(body).encode())
    assert outcome.status in ("applied", "duplicate"), outcome
    return outcome


def order(**kw) -> PlannedOrder:
    base = dict(channel="shopify", number=1, email=EMAIL, lines=(Line(Decimal("25.50"), 2, Decimal("3.00")),))
    return PlannedOrder(**{**base, **kw})


def test_points_are_the_floor_of_eligible_spend_times_rate():
    assert points_for(Decimal("47.99"), Decimal(1)) == 47
    assert points_for(Decimal("10.00"), Decimal("1.25") * Decimal("1.5")) == 18  # 18.75
    assert points_for(Decimal("0.99"), Decimal(1)) == 0


def test_paid_order_earns_floor_of_merchandise_after_discounts(engine):
    send(engine, "shopify", "orders/paid", _shopify_order(order(), "paid", order_time(1), [], False))
    assert points(engine) == 48  # 2 x 25.50 - 3.00


def order_time(hours):
    from datetime import timedelta

    from tests.streams import T0

    return T0 + timedelta(hours=hours)


def test_shipping_tax_tips_and_gift_cards_earn_nothing(engine):
    body = _shopify_order(
        order(lines=(Line(Decimal("30.00"), 1), Line(Decimal("50.00"), 1, gift_card=True))),
        "paid", order_time(1), [], False,
    )
    body["total_tip_received"] = "5.00"
    body["total_tax"] = "6.30"
    send(engine, "shopify", "orders/paid", body)
    assert points(engine) == 30


def test_tax_included_in_prices_is_not_eligible(engine):
    body = _shopify_order(order(lines=(Line(Decimal("121.00"), 1),)), "paid", order_time(1), [], False)
    body["taxes_included"] = True
    body["line_items"][0]["tax_lines"] = [{"price": "21.00", "rate": 0.21, "title": "VAT"}]
    send(engine, "shopify", "orders/paid", body)
    assert points(engine) == 100


def _taxed_order(taxes_included: bool):
    """Two lines at 121.00 (21.00 VAT in them) or at 100.00 (21.00 VAT on top)."""
    price = "121.00" if taxes_included else "100.00"
    planned = order(lines=(Line(Decimal(price), 1), Line(Decimal(price), 1)))
    body = _shopify_order(planned, "paid", order_time(1), [], False)
    body["taxes_included"] = taxes_included
    for item in body["line_items"]:
        item["tax_lines"] = [{"price": "21.00", "rate": 0.21, "title": "VAT"}]
    return planned, body


def _line_refund(planned, body, at):
    """Shopify's refund of the first line whole: its subtotal, and its
    total_tax as the real refunds/create carries it."""
    refund = _shopify_refund(planned, 0, Decimal(body["line_items"][0]["price"]), at)
    refund["refund_line_items"][0]["total_tax"] = 21.0
    refund["refund_line_items"][0]["total_tax_set"] = {"shop_money": {"amount": "21.00", "currency_code": "EUR"}}
    return refund


@pytest.mark.parametrize("refund_first", [False, True])
def test_a_refund_in_a_shop_whose_prices_include_tax_takes_back_the_points_of_the_price_without_tax(
        engine, refund_first):
    """121.00 with 21.00 VAT in it earned 100; refunding that line (subtotal
    121.00, total_tax 21.00) takes back 100, not 121, whichever comes first."""
    planned, body = _taxed_order(taxes_included=True)
    refund = _line_refund(planned, body, order_time(30))
    deliveries = [("orders/paid", body), ("refunds/create", refund)]
    for topic, delivery in reversed(deliveries) if refund_first else deliveries:
        send(engine, "shopify", topic, delivery)
    assert points(engine) == 100


def test_a_refund_in_a_shop_that_adds_tax_takes_back_the_line_s_subtotal(engine):
    """100.00 + 21.00 VAT on top earned 100 a line; the refund's subtotal
    (100.00) is without the tax, which is not taken off again."""
    planned, body = _taxed_order(taxes_included=False)
    send(engine, "shopify", "orders/paid", body)
    assert points(engine) == 200
    send(engine, "shopify", "refunds/create", _line_refund(planned, body, order_time(30)))
    assert points(engine) == 100


def test_a_refund_in_an_order_snapshot_takes_its_tax_out_too(engine):
    """The same refund seen in an ``orders/updated`` snapshot (its ``refunds``)
    and in its webhook counts once, without its tax."""
    planned, body = _taxed_order(taxes_included=True)
    send(engine, "shopify", "orders/paid", body)
    refund = _line_refund(planned, body, order_time(30))
    updated = {**body, "financial_status": "partially_refunded", "refunds": [refund],
               "updated_at": "2026-01-06T15:00:00+00:00"}
    send(engine, "shopify", "orders/updated", updated)
    assert points(engine) == 100
    send(engine, "shopify", "refunds/create", refund)
    assert points(engine) == 100


def test_an_unpaid_order_earns_nothing_until_it_is_paid(engine):
    planned = order()
    send(engine, "shopify", "orders/create", _shopify_order(planned, "pending", order_time(0), [], False))
    assert points(engine) == 0
    send(engine, "shopify", "orders/paid", _shopify_order(planned, "paid", order_time(1), [], False))
    assert points(engine) == 48


def test_a_partial_refund_reverses_the_points_of_what_was_refunded(engine):
    planned = order()
    send(engine, "shopify", "orders/paid", _shopify_order(planned, "paid", order_time(1), [], False))
    send(engine, "shopify", "refunds/create", _shopify_refund(planned, 0, Decimal("20.40"), order_time(30)))
    assert points(engine) == 27  # floor(48 - 20.40) = floor(27.60)
    with engine.db.connect() as conn:
        reasons = [r.reason for r in conn.execute(select(ledger_entries).order_by(ledger_entries.c.id))]
    assert reasons == ["order", "refund"]


def test_a_refund_that_arrives_before_its_order_is_counted_when_the_order_comes(engine):
    planned = order()
    send(engine, "shopify", "refunds/create", _shopify_refund(planned, 0, Decimal("20.40"), order_time(30)))
    assert points(engine) == 0
    send(engine, "shopify", "orders/paid", _shopify_order(planned, "paid", order_time(1), [], False))
    assert points(engine) == 27


def test_a_refund_seen_in_its_webhook_and_in_the_order_snapshot_counts_once(engine):
    planned = order()
    refund = _shopify_refund(planned, 0, Decimal("10.00"), order_time(30))
    send(engine, "shopify", "orders/paid", _shopify_order(planned, "paid", order_time(1), [], False))
    send(engine, "shopify", "refunds/create", refund)
    send(engine, "shopify", "orders/updated", _shopify_order(planned, "partially_refunded", order_time(31), [refund], False))
    assert points(engine) == 38


def test_cancellation_reverses_everything_the_order_earned(engine):
    planned = order(cancelled=True)
    for channel, topic, body in deliveries(planned):
        engine.ingest(channel, topic, body)
    assert points(engine) == 0
    with engine.db.connect() as conn:
        amounts = [r.amount for r in conn.execute(select(ledger_entries).order_by(ledger_entries.c.id))]
    assert amounts == [48, -48]


def test_a_stale_woocommerce_snapshot_arriving_after_a_newer_one_changes_nothing(engine):
    planned = order(channel="woocommerce")
    newer = _woo_order(planned, "completed", order_time(48), [Decimal("10.00")])
    older = _woo_order(planned, "processing", order_time(1), [])
    send(engine, "woocommerce", "order.updated", newer)
    assert points(engine) == 38
    send(engine, "woocommerce", "order.updated", older)
    assert points(engine) == 38


def test_woocommerce_refunded_status_reverses_all_points(engine):
    planned = order(channel="woocommerce")
    send(engine, "woocommerce", "order.updated", _woo_order(planned, "processing", order_time(1), []))
    send(engine, "woocommerce", "order.updated", _woo_order(planned, "refunded", order_time(2), []))
    assert points(engine) == 0


def test_woocommerce_deleted_order_is_cancelled_for_good(engine):
    planned = order(channel="woocommerce")
    send(engine, "woocommerce", "order.updated", _woo_order(planned, "completed", order_time(1), []))
    send(engine, "woocommerce", "order.deleted", {"id": planned.number})
    assert points(engine) == 0
    # a later snapshot of a deleted order doesn't bring its points back
    send(engine, "woocommerce", "order.updated", _woo_order(planned, "completed", order_time(5), []))
    assert points(engine) == 0


def test_a_reversal_may_take_the_balance_below_zero(engine):
    """Points already moved away (here: by a manual debit) leave a negative
    balance when the order is refunded; it is recorded, not clipped."""
    planned = order()
    send(engine, "shopify", "orders/paid", _shopify_order(planned, "paid", order_time(1), [], False))
    with engine.db.begin() as conn:
        customer_id = engine.identity.find(conn, EMAIL)
        engine.ledger.post(conn, customer_id, "points", -40, "adjust", "test", None, "manual-debit", order_time(2))
    send(engine, "shopify", "orders/cancelled", _shopify_order(planned, "refunded", order_time(3), [], True))
    assert points(engine) == 8 - 48


def test_the_real_contract_order_is_paid_then_cancelled_without_points(engine):
    delivery = load_contract("shopify/webhooks/orders_cancelled.delivery-2024-10.json")
    outcome = engine.ingest("shopify", "orders/cancelled", json.dumps(delivery["body"]).encode(), delivery["headers"])
    assert outcome.status == "applied"
    assert points(engine, "jon@example.com") == 0


class DoublePoints:
    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        return [Multiplier("double points day", Decimal(2))]


def test_multipliers_multiply_and_a_refund_uses_the_ones_the_order_was_awarded_with(make_engine):
    planned = order()
    engine = make_engine(extra_plugins=(("double-points", DoublePoints()),))
    send(engine, "shopify", "orders/paid", _shopify_order(planned, "paid", order_time(1), [], False))
    assert points(engine) == 96
    # the campaign ends and the rate changes; the refund still uses x1 x2
    tables = {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 3}}}
    later = make_engine(tables=tables)
    send(later, "shopify", "refunds/create", _shopify_refund(planned, 0, Decimal("8.00"), order_time(30)))
    assert points(later) == 80  # floor((48 - 8) x 2)
    with later.db.connect() as conn:
        frozen = conn.execute(select(orders.c.multipliers)).scalar_one()
    assert sorted(frozen) == [["double points day", "2"], ["points per unit of currency", "1"]]


@pytest.mark.parametrize("per_unit,expected", [(1, 48), (Decimal("0.1"), 4), (2.5, 120)])
def test_per_unit_sets_the_rate(make_engine, per_unit, expected):
    rate = str(per_unit) if isinstance(per_unit, Decimal) else per_unit
    engine = make_engine(tables={**DEFAULT_TABLES, "rules": {"points": {"per_unit": rate}}})
    send(engine, "shopify", "orders/paid", _shopify_order(order(), "paid", order_time(1), [], False))
    assert points(engine) == expected
