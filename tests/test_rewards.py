"""Rewards and redemption: the catalogue, points debited with the reward issued
in one transaction, clear refusals, codes spent by orders, expiry."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import fields
from sqlalchemy import func, select

from engine.config import ConfigError, StrictSchema
from engine.customers import customer_summary
from engine.db.models import rewards
from engine.hookspecs import hookimpl
from engine.rewards import CODE_LENGTH, RedemptionRefused
from engine.rules_api import RewardKind
from tests.conftest import DEFAULT_TABLES, examples
from tests.streams import T0, Line, PlannedOrder, _shopify_order

EMAIL = "jana@example.com"
CATALOGUE = {
    "five-off": {"kind": "fixed_amount", "cost": 500, "value": "5.00", "expires_days": 30, "refund_on_expiry": True},
    "points-off": {"kind": "fixed_amount", "cost": 100, "value": "1.00", "partial": True, "max_units": 5},
    "ten-percent": {"kind": "percentage", "cost": 800, "value": 10, "channels": ["shopify"]},
    "free-coffee": {"kind": "free_product", "sku": "COFFEE-LATTE"},
}
TABLES = {**DEFAULT_TABLES, "rewards": CATALOGUE}


@pytest.fixture
def shop(make_engine):
    return make_engine(tables=TABLES)


def earn(engine, euros: str, number: int = 1, email: str = EMAIL):
    order = PlannedOrder("shopify", number, email, (Line(Decimal(euros), 1),))
    body = _shopify_order(order, "paid", T0 + timedelta(hours=number), [], False)
    assert engine.ingest("shopify", "orders/paid", json.dumps(body).encode()).status == "applied"
    return body


def points(engine, key=EMAIL) -> int:
    return customer_summary(engine, key)["points"]


def test_redeeming_debits_the_points_and_issues_a_reward_with_an_unguessable_code(shop):
    earn(shop, "620.00")
    issued = shop.redeem(EMAIL, "five-off", channel="woocommerce")
    assert (issued.reward, issued.kind, issued.cost, issued.value, issued.channel) == (
        "five-off", "fixed_amount", 500, Decimal("5"), "woocommerce")
    assert len(issued.code) == CODE_LENGTH and issued.code.isalnum()
    assert points(shop) == 120
    summary = customer_summary(shop, EMAIL)
    assert [(r["code"], r["kind"], r["channel"]) for r in summary["rewards"]] == [(issued.code, "fixed_amount", "woocommerce")]
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


def test_codes_differ_between_rewards(shop):
    earn(shop, "2000.00")
    codes = {shop.redeem(EMAIL, "five-off").code for _ in range(4)}
    assert len(codes) == 4


@pytest.mark.parametrize(
    "reward,kwargs,reason",
    [
        ("five-off", {}, "'five-off' costs 500 points and the balance is 320"),
        ("nope", {}, "there is no reward 'nope' in the catalogue"),
        ("free-coffee", {}, "can't be bought with points"),
        ("five-off", {"units": 2}, "one at a time"),
        ("points-off", {"units": 6}, "at most 5 at once"),
        ("ten-percent", {"channel": "woocommerce"}, "can be spent in shopify, not in woocommerce"),
        ("five-off", {"channel": "ebay"}, "there is no channel 'ebay'"),
    ],
)
def test_a_refused_redemption_says_why_and_changes_nothing(shop, reward, kwargs, reason):
    earn(shop, "320.00")
    with pytest.raises(RedemptionRefused, match=reason):
        shop.redeem(EMAIL, reward, **kwargs)
    assert points(shop) == 320
    with shop.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(rewards)).scalar_one() == 0


def test_an_unknown_customer_is_refused(shop):
    with pytest.raises(RedemptionRefused, match="no customer matches"):
        shop.redeem("nobody@example.com", "five-off")


def test_a_negative_balance_waits_until_it_is_positive_again(shop):
    earn(shop, "600.00")
    shop.redeem(EMAIL, "five-off")
    body = earn(shop, "0.00", number=2)  # keep a second order around
    assert body
    # cancelling the first order takes 600 back from a balance of 100
    first = _shopify_order(PlannedOrder("shopify", 1, EMAIL, (Line(Decimal("600.00"), 1),)), "refunded", T0 + timedelta(days=2), [], True)
    shop.ingest("shopify", "orders/cancelled", json.dumps(first).encode())
    assert points(shop) == -500
    with pytest.raises(RedemptionRefused, match="waits until it is positive"):
        shop.redeem(EMAIL, "points-off")


def test_a_partial_reward_buys_multiples_of_its_cost(shop):
    earn(shop, "450.00")
    issued = shop.redeem(EMAIL, "points-off", units=4)
    assert (issued.cost, issued.value) == (400, Decimal("4"))
    assert points(shop) == 50


def test_a_retried_redemption_with_the_same_key_returns_the_first_reward(shop):
    earn(shop, "1200.00")
    first = shop.redeem(EMAIL, "five-off", idempotency_key="till-7-0042")
    again = shop.redeem(EMAIL, "five-off", idempotency_key="till-7-0042")
    assert again.code == first.code
    assert points(shop) == 700
    with pytest.raises(RedemptionRefused, match="already used for another redemption"):
        shop.redeem(EMAIL, "points-off", idempotency_key="till-7-0042")


def test_an_order_that_carries_the_code_uses_the_reward(shop):
    earn(shop, "600.00")
    issued = shop.redeem(EMAIL, "five-off")
    order = PlannedOrder("shopify", 3, EMAIL, (Line(Decimal("30.00"), 1, Decimal("5.00")),))
    body = _shopify_order(order, "paid", T0 + timedelta(days=3), [], False)
    body["discount_codes"] = [{"code": issued.code.lower(), "amount": "5.00", "type": "fixed_amount"}]
    shop.ingest("shopify", "orders/paid", json.dumps(body).encode())
    assert customer_summary(shop, EMAIL)["rewards"] == []
    with shop.db.connect() as conn:
        row = conn.execute(select(rewards)).one()
    assert (row.status, row.used_in) == ("used", f"order:shopify:{body['id']}")


def test_an_expired_unused_reward_gives_its_points_back_when_the_catalogue_says_so(shop):
    earn(shop, "1000.00")
    refunded = shop.redeem(EMAIL, "five-off", at=T0)
    kept = shop.redeem(EMAIL, "points-off", at=T0)
    assert points(shop) == 400
    with shop.db.begin() as conn:
        expired = shop.rewards.expire(conn, T0 + timedelta(days=31))
    assert [r.code for r in expired] == [refunded.code]
    with shop.db.begin() as conn:
        assert shop.rewards.expire(conn, T0 + timedelta(days=60)) == []  # twice is once
    assert points(shop) == 900
    assert [r["code"] for r in customer_summary(shop, EMAIL)["rewards"]] == [kept.code]


class GiftCardKind:
    class Settings(StrictSchema):
        value = fields.Decimal(required=True)

    @hookimpl
    def regulars_register_reward_kinds(self):
        return [RewardKind("gift_card", self.Settings, lambda e: f"{e['value']} gift card")]


def test_a_plugin_adds_a_reward_kind_the_catalogue_can_use(make_engine):
    tables = {**TABLES, "rewards": {**CATALOGUE, "card-10": {"kind": "gift_card", "cost": 1000, "value": "10"}}}
    engine = make_engine(tables=tables, extra_plugins=(("gift-cards", GiftCardKind()),))
    earn(engine, "1000.00")
    assert engine.redeem(EMAIL, "card-10").kind == "gift_card"


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"kind": "voucher", "cost": 1}, r"\[rewards.bad\] kind: unknown kind 'voucher' \(known: fixed_amount, free_product, percentage\)"),
        ({"kind": "fixed_amount", "cost": 10}, r"\[rewards.bad\] value: Missing data"),
        ({"kind": "percentage", "cost": 10, "value": 150}, r"\[rewards.bad\] value: Must be greater"),
        ({"kind": "fixed_amount", "cost": 0, "value": "1"}, r"\[rewards.bad\] cost: Must be greater"),
        ({"kind": "free_product", "sku": "X", "colour": "red"}, r"\[rewards.bad\] colour: unknown key"),
        ({"kind": "fixed_amount", "value": "1", "partial": True}, r"\[rewards.bad\] partial: needs a cost"),
        ({"kind": "fixed_amount", "cost": 10, "value": "1", "channels": ["shopify", "shoify"]},
         r"\[rewards.bad\] channels: no connector for 'shoify' \(channels: .*shopify.*\): it could be spent nowhere"),
    ],
)
def test_a_wrong_catalogue_entry_stops_the_start_naming_it(make_engine, entry, message):
    with pytest.raises(ConfigError, match=message):
        make_engine(tables={**TABLES, "rewards": {"bad": entry}})


def test_two_plugins_registering_one_kind_are_refused_naming_both(make_engine):
    with pytest.raises(ConfigError, match="'gift-cards' and 'rules.rewards' both register the reward kind 'fixed_amount'"):
        class Clash(GiftCardKind):
            @hookimpl
            def regulars_register_reward_kinds(self):
                return [RewardKind("fixed_amount", self.Settings)]

        make_engine(tables=TABLES, extra_plugins=(("gift-cards", Clash()),))


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("earn"), st.integers(0, 900)),
    st.tuples(st.just("redeem"), st.sampled_from(["five-off", "points-off", "ten-percent"]), st.integers(1, 6)),
), max_size=12))
def test_redemption_never_overspends(shop, steps):
    from tests.conftest import empty_database

    empty_database(shop)
    balance, spent, number = 0, 0, 0
    for step in steps:
        if step[0] == "earn":
            number += 1
            earn(shop, f"{step[1]}.00", number=number)
            balance += step[1]
            continue
        _, name, units = step
        cost = CATALOGUE[name]["cost"] * (units if name == "points-off" else 1)
        try:
            issued = shop.redeem(EMAIL, name, units=units)
        except RedemptionRefused:
            assert number == 0 or cost > balance or (units > 1 and name != "points-off") or units > 5
            continue
        assert issued.cost == cost <= balance
        balance -= cost
        spent += cost
        assert points(shop) == balance >= 0
    with shop.db.connect() as conn:
        assert conn.execute(select(func.coalesce(func.sum(rewards.c.cost), 0))).scalar_one() == spent
        assert shop.ledger.audit(conn) == []


def test_eight_terminals_redeeming_the_same_points_at_once_get_one_reward_on_postgresql(make_engine, postgres_url):
    engine = make_engine(tables=TABLES, url=postgres_url)
    earn(engine, "700.00")
    engine.db.dispose()

    def attempt(_):
        try:
            return engine.redeem(EMAIL, "five-off").code
        except RedemptionRefused as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    codes = [r for r in results if isinstance(r, str)]
    refusals = [r for r in results if isinstance(r, RedemptionRefused)]
    assert len(codes) == 1 and len(refusals) == 7
    assert all("costs 500 points and the balance is 200" in str(r) for r in refusals)
    assert points(engine) == 200
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


class Coupons:
    """Stands for a connector that makes each reward a coupon in its shop."""

    def __init__(self):
        self.made = []

    @hookimpl
    def regulars_reward_issued(self, reward, customer):
        self.made.append((customer.email, reward.reward, reward.code))


class BrokenCoupons:
    @hookimpl
    def regulars_reward_issued(self, reward, customer):
        raise ConnectionError("the shop is down")


def test_observers_hear_of_each_issued_reward_after_commit_and_a_failing_one_undoes_nothing(make_engine):
    coupons = Coupons()
    engine = make_engine(tables=TABLES, extra_plugins=(("broken", BrokenCoupons()), ("coupons", coupons)))
    earn(engine, "600.00")
    issued = engine.redeem(EMAIL, "five-off")
    assert coupons.made == [(EMAIL, "five-off", issued.code)]
    with pytest.raises(RedemptionRefused):
        engine.redeem(EMAIL, "five-off")  # refused: nobody hears of anything
    assert len(coupons.made) == 1
    assert [r["code"] for r in customer_summary(engine, EMAIL)["rewards"]] == [issued.code]


def test_a_coupon_used_event_spends_the_reward_once(make_engine):
    from tests.plugins.counter import TillPlugin

    engine = make_engine(tables=TABLES, extra_plugins=(("till", TillPlugin()),))
    earn(engine, "600.00")
    issued = engine.redeem(EMAIL, "five-off")
    connector = engine.connectors["counter"]
    connector.topics = (*connector.topics, "coupon.used")
    event = {"type": "coupon.used", "idempotency_key": "use-1", "occurred_at": "2026-03-05T10:00:00+00:00",
             "coupon": {"code": issued.code, "order_id": "till-77"}}
    assert engine.ingest("counter", "coupon.used", json.dumps(event).encode()).status == "applied"
    with engine.db.connect() as conn:
        row = conn.execute(select(rewards)).one()
    assert (row.status, row.used_in) == ("used", "order:counter:till-77")
    assert customer_summary(engine, EMAIL)["rewards"] == []


def _status(engine, code: str) -> tuple[str, str | None]:
    with engine.db.connect() as conn:
        row = conn.execute(select(rewards.c.status, rewards.c.used_in).where(rewards.c.code == code)).one()
    return row.status, row.used_in


def test_a_reward_kept_for_some_channels_is_used_up_only_there(make_engine):
    """``ten-percent`` lists ``channels = ["shopify"]``: the till's sale and a
    WooCommerce order that carry its code don't use it up (the sale and the
    order count as ever); a Shopify order does."""
    from tests.streams import _woo_order

    engine = make_engine(tables={**TABLES, "connectors": {**DEFAULT_TABLES["connectors"], "pos": {}}})
    earn(engine, "900.00")
    issued = engine.redeem(EMAIL, "ten-percent")
    assert points(engine) == 100

    sale = {"id": "s1", "terminal": "t1", "occurred_at": (T0 + timedelta(days=1)).isoformat(),
            "customer": {"email": EMAIL}, "lines": [{"sku": "X", "quantity": 1, "unit_price": "20.00"}],
            "reward_codes": [issued.code]}
    assert engine.ingest("pos", "sale", json.dumps(sale).encode()).status == "applied"
    assert _status(engine, issued.code) == ("issued", None)

    woo = _woo_order(PlannedOrder("woocommerce", 7, EMAIL, (Line(Decimal("30.00"), 1),)), "processing",
                     T0 + timedelta(days=2), [])
    woo["coupon_lines"] = [{"id": 1, "code": issued.code.lower(), "discount": "3.00", "discount_tax": "0",
                            "meta_data": []}]
    assert engine.ingest("woocommerce", "order.updated", json.dumps(woo).encode()).status == "applied"
    assert _status(engine, issued.code) == ("issued", None)
    assert points(engine) == 150  # both counted
    assert [r["code"] for r in customer_summary(engine, EMAIL)["rewards"]] == [issued.code]

    order = PlannedOrder("shopify", 3, EMAIL, (Line(Decimal("30.00"), 1, Decimal("3.00")),))
    body = _shopify_order(order, "paid", T0 + timedelta(days=3), [], False)
    body["discount_codes"] = [{"code": issued.code, "amount": "3.00", "type": "percentage"}]
    engine.ingest("shopify", "orders/paid", json.dumps(body).encode())
    assert _status(engine, issued.code) == ("used", f"order:shopify:{body['id']}")


def test_the_customer_and_the_redemption_say_where_each_reward_can_be_spent(make_engine):
    """``spendable_in``: a catalogue entry's ``channels``, else every
    configured channel; ``channel`` stays where it was redeemed."""
    engine = make_engine(tables={**TABLES, "connectors": {**DEFAULT_TABLES["connectors"], "pos": {}}})
    earn(engine, "1400.00")
    anywhere = engine.redeem(EMAIL, "five-off", channel="pos")
    web = engine.redeem(EMAIL, "ten-percent")
    assert engine.rewards.as_json(web)["spendable_in"] == ["shopify"]
    held = {r["code"]: r for r in customer_summary(engine, EMAIL)["rewards"]}
    assert (held[anywhere.code]["channel"], held[anywhere.code]["spendable_in"]) == (
        "pos", ["pos", "shopify", "woocommerce"])
    assert held[web.code]["spendable_in"] == ["shopify"]


def test_a_reward_without_channels_is_used_up_anywhere_and_coupon_used_names_its_channel(make_engine):
    from tests.plugins.counter import TillPlugin

    engine = make_engine(tables=TABLES, extra_plugins=(("till", TillPlugin()),))
    earn(engine, "1400.00")
    anywhere = engine.redeem(EMAIL, "five-off", channel="shopify")
    shopify_only = engine.redeem(EMAIL, "ten-percent")
    connector = engine.connectors["counter"]
    connector.topics = (*connector.topics, "coupon.used")
    for n, code in enumerate((anywhere.code, shopify_only.code)):
        event = {"type": "coupon.used", "idempotency_key": f"use-{n}", "occurred_at": "2026-03-05T10:00:00+00:00",
                 "coupon": {"code": code}}
        assert engine.ingest("counter", "coupon.used", json.dumps(event).encode()).status == "applied"
    assert _status(engine, anywhere.code) == ("used", "counter")
    assert _status(engine, shopify_only.code) == ("issued", None)
