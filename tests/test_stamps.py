"""Stamp cards (issue 3, part 1): several cards, per order or per item, SKU
globs, minimum spend, counter visits, full cards issue their reward with extra
stamps carried over, and refunds take stamps back consistently."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.config import ConfigError
from engine.customers import customer_summary
from engine.db.models import rewards
from engine.hookspecs import hookimpl
from engine.rules_api import StampCard
from tests.conftest import DEFAULT_TABLES, empty_database, examples
from tests.plugins.counter import TillPlugin
from tests.streams import T0, PlannedOrder, _shopify_order, _woo_order

EMAIL = "jana@example.com"
TABLES = {
    **DEFAULT_TABLES,
    "rules": {
        "points": {"per_unit": 1},
        "stamps": {
            "coffee": {"required": 10, "per": "item", "skus": ["COFFEE-*"], "reward": "free-coffee"},
            "visit": {"required": 3, "per": "order", "min_spend": "10.00", "reward": "five-off"},
        },
    },
    "rewards": {
        "free-coffee": {"kind": "free_product", "sku": "COFFEE-LATTE"},
        "five-off": {"kind": "fixed_amount", "value": "5.00", "cost": 500},
    },
}


@pytest.fixture
def shop(make_engine):
    return make_engine(tables=TABLES, extra_plugins=(("till", TillPlugin()),))


def line(sku: str, quantity: int = 1, price: str = "3.50"):
    from tests.streams import Line

    return (sku, Line(Decimal(price), quantity))


def shopify(shop, number: int, *lines, status="paid", cancelled=False, hours=0):
    order = PlannedOrder("shopify", number, EMAIL, tuple(item for _, item in lines))
    body = _shopify_order(order, status, T0 + timedelta(hours=number + hours), [], cancelled)
    for item, (sku, _) in zip(body["line_items"], lines, strict=True):
        item["sku"] = sku
    topic = "orders/cancelled" if cancelled else "orders/paid"
    outcome = shop.ingest("shopify", topic, json.dumps(body).encode())
    assert outcome.status in ("applied", "duplicate"), outcome


def woo(shop, number: int, *lines, status="completed"):
    order = PlannedOrder("woocommerce", number, EMAIL, tuple(item for _, item in lines))
    body = _woo_order(order, status, T0 + timedelta(hours=number), [])
    for item, (sku, _) in zip(body["line_items"], lines, strict=True):
        item["sku"] = sku
    assert shop.ingest("woocommerce", "order.updated", json.dumps(body).encode()).status in ("applied", "duplicate")


def visit(shop, number: int):
    event = {"type": "visit", "idempotency_key": f"visit-{number}", "occurred_at": "2026-03-02T10:00:00+01:00",
             "customer": {"email": EMAIL}, "visit": {"id": f"v{number}", "location": "Brno"}}
    assert shop.ingest("counter", "visit", json.dumps(event).encode()).status in ("applied", "duplicate")


def card(shop) -> dict:
    return customer_summary(shop, EMAIL)["stamps"]


def issued(shop, status="issued") -> list[str]:
    with shop.db.connect() as conn:
        return [r.reward for r in conn.execute(select(rewards).where(rewards.c.status == status).order_by(rewards.c.id))]


def test_stamps_from_every_channel_land_on_the_same_card(shop):
    shopify(shop, 1, line("COFFEE-LATTE", 2), line("CAKE", 1, "4.00"))
    woo(shop, 2, line("coffee-espresso", 3))
    visit(shop, 1)
    # coffee: 2 + 3 matching units; visit: two orders of 10.00 or more and a
    # counter visit fill its 3 stamps, which issues five-off and starts again
    assert card(shop) == {"coffee": 5, "visit": 0}
    assert issued(shop) == ["five-off"]


def test_per_order_cards_need_the_minimum_spend_and_count_visits(shop):
    shopify(shop, 1, line("CAKE", 1, "9.99"))
    shopify(shop, 2, line("CAKE", 1, "10.00"))
    visit(shop, 1)
    visit(shop, 1)  # a resent visit stamps once
    assert card(shop)["visit"] == 2


def test_a_full_card_issues_its_reward_and_extra_stamps_carry_over(shop):
    shopify(shop, 1, line("COFFEE-LATTE", 7))
    shopify(shop, 2, line("COFFEE-LATTE", 5))
    assert card(shop)["coffee"] == 2
    assert issued(shop) == ["free-coffee"]
    rewards_json = customer_summary(shop, EMAIL)["rewards"]
    assert [(r["reward"], r["kind"], r["sku"], r["cost"]) for r in rewards_json] == [
        ("free-coffee", "free_product", "COFFEE-LATTE", 0)]


def test_one_big_order_can_fill_several_cards(shop):
    shopify(shop, 1, line("COFFEE-LATTE", 23))
    assert card(shop)["coffee"] == 3
    assert issued(shop) == ["free-coffee", "free-coffee"]


def test_cancelling_the_order_that_filled_a_card_voids_its_unused_reward(shop):
    shopify(shop, 1, line("COFFEE-LATTE", 7))
    shopify(shop, 2, line("COFFEE-LATTE", 5))
    shopify(shop, 2, line("COFFEE-LATTE", 5), status="refunded", cancelled=True, hours=30)
    assert card(shop)["coffee"] == 7
    assert issued(shop) == []
    assert issued(shop, "voided") == ["free-coffee"]
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


def test_a_full_refund_without_a_cancellation_takes_the_stamps_back(shop):
    """Shopify's refunds/create for the whole order (not cancelled), or
    WooCommerce's status refunded: the order's stamps go, as PRODUCT.md says."""
    from tests.streams import Line, _shopify_refund

    shopify(shop, 1, line("COFFEE-LATTE", 3))
    woo(shop, 2, line("coffee-espresso", 2))
    assert card(shop)["coffee"] == 5
    planned = PlannedOrder("shopify", 1, EMAIL, (Line(Decimal("3.50"), 3),))
    refund = _shopify_refund(planned, 0, Decimal("10.50"), T0 + timedelta(hours=30))
    assert shop.ingest("shopify", "refunds/create", json.dumps(refund).encode()).status == "applied"
    assert card(shop)["coffee"] == 2
    order = PlannedOrder("woocommerce", 2, EMAIL, (Line(Decimal("3.50"), 2),))
    body = _woo_order(order, "refunded", T0 + timedelta(hours=40), [Decimal("7.00")])
    body["line_items"][0]["sku"] = "coffee-espresso"
    assert shop.ingest("woocommerce", "order.updated", json.dumps(body).encode()).status == "applied"
    assert card(shop)["coffee"] == 0
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


def test_a_used_reward_stays_used_and_the_card_owes_the_stamps(shop):
    shopify(shop, 1, line("COFFEE-LATTE", 10))
    (code,) = [r["code"] for r in customer_summary(shop, EMAIL)["rewards"]]
    order = PlannedOrder("shopify", 5, EMAIL, (line("COFFEE-LATTE")[1],))
    body = _shopify_order(order, "paid", T0 + timedelta(hours=5), [], False)
    body["line_items"][0]["sku"] = "TEA"
    body["discount_codes"] = [{"code": code, "amount": "3.50", "type": "fixed_amount"}]
    shop.ingest("shopify", "orders/paid", json.dumps(body).encode())
    assert issued(shop, "used") == ["free-coffee"]
    shopify(shop, 1, line("COFFEE-LATTE", 10), status="refunded", cancelled=True, hours=30)
    assert card(shop)["coffee"] == -10
    shopify(shop, 7, line("COFFEE-LATTE", 12))
    assert card(shop)["coffee"] == 2
    assert issued(shop, "used") == ["free-coffee"] and issued(shop) == []


def test_a_card_whose_reward_is_not_in_the_catalogue_stops_the_start(make_engine):
    tables = {**TABLES, "rewards": {"five-off": TABLES["rewards"]["five-off"]}}
    with pytest.raises(ConfigError, match="stamp card 'coffee' .* issues reward 'free-coffee', which is not in the catalogue"):
        make_engine(tables=tables)


@pytest.mark.parametrize(
    "card_table,message",
    [({"required": 0, "reward": "five-off"}, r"\[rules.stamps\] coffee.required: Must be greater"),
     ({"required": 5, "per": "visit", "reward": "five-off"}, r"\[rules.stamps\] coffee.per: Must be one of"),
     ({"required": 5}, r"\[rules.stamps\] coffee.reward: Missing data")],
)
def test_a_wrong_card_is_refused_naming_it(make_engine, card_table, message):
    tables = {**TABLES, "rules": {"stamps": {"coffee": card_table}}}
    with pytest.raises(ConfigError, match=message):
        make_engine(tables=tables)


class LoyaltyPunchCard:
    """A plugin that registers its own card (and stamps it per paid order)."""

    @hookimpl
    def regulars_register_stamp_cards(self):
        return [StampCard("books", 2, "five-off")]

    @hookimpl
    def regulars_order_awards(self, order, customer):
        from engine.rules_api import Award

        return [Award("stamps:books", 1 if order.awardable else 0)]


def test_a_plugin_registers_a_card_the_engine_completes(make_engine):
    shop = make_engine(tables=TABLES, extra_plugins=(("punch", LoyaltyPunchCard()),))
    shopify(shop, 1, line("BOOK", 1, "12.00"))
    shopify(shop, 2, line("BOOK", 1, "12.00"))
    assert card(shop)["books"] == 0
    assert issued(shop) == ["five-off"]


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quantities=st.lists(st.integers(1, 9), min_size=1, max_size=6), cancelled=st.data(), seed=st.integers(0, 10**6))
def test_cards_and_rewards_end_the_same_whatever_the_order_of_sales_and_refunds(shop, quantities, cancelled, seed):
    empty_database(shop)
    gone = cancelled.draw(st.sets(st.integers(0, len(quantities) - 1)))
    steps = [("sale", i) for i in range(len(quantities))] + [("cancel", i) for i in gone]
    random.Random(seed).shuffle(steps)
    for kind, i in steps:
        shopify(shop, 100 + i, line("COFFEE-LATTE", quantities[i]),
                status="refunded" if kind == "cancel" else "paid", cancelled=kind == "cancel",
                hours=50 if kind == "cancel" else 0)
    standing = sum(q for i, q in enumerate(quantities) if i not in gone)
    assert card(shop).get("coffee", 0) == standing % 10
    assert issued(shop).count("free-coffee") == standing // 10
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


def test_a_full_card_is_announced_to_observers_after_commit(make_engine):
    from tests.test_rewards import Coupons

    coupons = Coupons()
    shop = make_engine(tables=TABLES, extra_plugins=(("till", TillPlugin()), ("coupons", coupons)))
    shopify(shop, 1, line("COFFEE-LATTE", 10))
    assert [(email, reward) for email, reward, _ in coupons.made] == [(EMAIL, "free-coffee")]


def test_the_cards_an_event_touched_are_its_own_thread_s(shop):
    """One engine applies events on several threads (the webhook applier, the
    till's requests): an event starting on another thread must not empty the
    list of cards this thread's event will settle (it did: one attribute)."""
    import threading

    pipeline = shop.pipeline
    pipeline.cards_to_settle.add((1, "stamps:coffee"))

    def another_event() -> None:  # a coupon used in the shop, applied on another thread
        with shop.db.begin() as conn:
            pipeline.apply(conn, {"type": "coupon.used", "channel": "shopify", "occurred_at": T0,
                                  "coupon": {"code": "NOSUCHCODE"}})

    other = threading.Thread(target=another_event)
    other.start()
    other.join()
    assert pipeline.cards_to_settle == {(1, "stamps:coffee")}
