"""Tiers (issue 3, part 2): levels by points earned or spend in a rolling window,
upgrade at once, downgrade only at the review (one level or to the level
earned, after a grace period), a history, and the tier's multiplier on orders
paid while it holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import ConfigError
from engine.customers import customer_summary
from engine.hookspecs import hookimpl
from engine.jobs import run
from engine.rules_api import TierLevel, TierProgram
from tests.conftest import DEFAULT_TABLES, examples
from tests.streams import (
    Line,
    PlannedOrder,
    _shopify_order,
    _shopify_refund,
    _woo_order,
    shuffled_with_resends,
)
from tests.test_invariants import _fresh

EMAIL = "jana@example.com"
JAN = datetime(2026, 1, 10, tzinfo=UTC)
LEVELS = [
    {"name": "silver", "threshold": 500, "multiplier": 1.25},
    {"name": "gold", "threshold": 2000, "multiplier": 1.5},
]
REWARDS = {"big": {"kind": "fixed_amount", "cost": 400, "value": "4.00"}}


def tables(**tiers):
    return {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "tiers": {"levels": LEVELS, **tiers}},
            "rewards": REWARDS}


def buy(engine, number: int, euros: str, at: datetime, cancelled: bool = False):
    order = PlannedOrder("shopify", number, EMAIL, (Line(Decimal(euros), 1),))
    body = _shopify_order(order, "refunded" if cancelled else "paid", at, [], cancelled)
    topic = "orders/cancelled" if cancelled else "orders/paid"
    assert engine.ingest("shopify", topic, json.dumps(body).encode()).status == "applied"


def summary(engine):
    return customer_summary(engine, EMAIL)


def test_an_order_that_reaches_a_threshold_upgrades_at_once_and_later_orders_earn_more(make_engine):
    engine = make_engine(tables=tables())
    buy(engine, 1, "300.00", JAN)
    buy(engine, 2, "250.00", JAN + timedelta(days=1))  # 550 earned: silver now
    assert summary(engine)["tier"] == "silver"
    assert summary(engine)["points"] == 550  # the upgrading order earned at x1
    buy(engine, 3, "100.00", JAN + timedelta(days=2))
    assert summary(engine)["points"] == 550 + 125
    history = summary(engine)["tier_history"]
    assert [(h["from"], h["to"], h["reason"], h["metric"]) for h in history] == [(None, "silver", "upgrade", "550")]


def test_an_order_the_shop_moves_to_another_customer_takes_its_upgrade_with_it(make_engine):
    """The shop gives an order to another customer (it was booked under the
    wrong one): its points go with it, and so does the upgrade it brought;
    the first customer's tier is decided again as if it had never been
    theirs, the second's with it."""
    engine = make_engine(tables=tables())
    buy(engine, 1, "600.00", JAN)
    assert (summary(engine)["points"], summary(engine)["tier"]) == (600, "silver")
    moved = PlannedOrder("shopify", 1, "petr@example.com", (Line(Decimal("600.00"), 1),))
    body = _shopify_order(moved, "paid", JAN + timedelta(days=3), [], False)
    assert engine.ingest("shopify", "orders/updated", json.dumps(body).encode()).status == "applied"
    assert (summary(engine)["points"], summary(engine)["tier"]) == (0, None)
    petr = customer_summary(engine, "petr@example.com")
    assert (petr["points"], petr["tier"]) == (600, "silver")
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


def test_spending_points_never_lowers_a_tier(make_engine):
    engine = make_engine(tables=tables())
    buy(engine, 1, "600.00", JAN)
    engine.redeem(EMAIL, "big", at=JAN + timedelta(days=1))
    assert run(engine, "tier-review", JAN + timedelta(days=2)) == "1 tiers reviewed, 0 downgraded"
    assert summary(engine)["tier"] == "silver"


def test_a_refund_does_not_downgrade_until_the_review(make_engine):
    engine = make_engine(tables=tables())
    buy(engine, 1, "600.00", JAN)
    buy(engine, 1, "600.00", JAN + timedelta(days=3), cancelled=True)
    assert summary(engine)["tier"] == "silver"
    run(engine, "tier-review", JAN + timedelta(days=4))
    assert summary(engine)["tier"] is None


def test_the_review_downgrades_one_level_at_a_time(make_engine):
    engine = make_engine(tables=tables(window_days=90))
    buy(engine, 1, "2100.00", JAN)
    assert summary(engine)["tier"] == "gold"
    later = JAN + timedelta(days=100)  # the window no longer holds the order
    run(engine, "tier-review", later)
    assert summary(engine)["tier"] == "silver"
    run(engine, "tier-review", later + timedelta(days=1))
    assert summary(engine)["tier"] is None
    assert [h["to"] for h in summary(engine)["tier_history"]] == ["gold", "silver", None]


def test_the_review_can_go_straight_to_the_level_earned(make_engine):
    engine = make_engine(tables=tables(window_days=90, downgrade="to_earned"))
    buy(engine, 1, "2100.00", JAN)
    run(engine, "tier-review", JAN + timedelta(days=100))
    assert summary(engine)["tier"] is None


def test_a_grace_period_keeps_the_tier_for_a_while_below_the_threshold(make_engine):
    engine = make_engine(tables=tables(window_days=90, grace_days=30))
    buy(engine, 1, "700.00", JAN)
    first = JAN + timedelta(days=100)
    assert run(engine, "tier-review", first) == "1 tiers reviewed, 0 downgraded"
    assert run(engine, "tier-review", first + timedelta(days=29)) == "1 tiers reviewed, 0 downgraded"
    assert run(engine, "tier-review", first + timedelta(days=30)) == "1 tiers reviewed, 1 downgraded"
    assert summary(engine)["tier"] is None


def test_spend_can_be_the_metric(make_engine):
    engine = make_engine(tables={**tables(metric="spend"), "rules": {"tiers": {"levels": LEVELS, "metric": "spend"}}})
    buy(engine, 1, "499.99", JAN)
    assert summary(engine)["tier"] is None
    buy(engine, 2, "0.01", JAN + timedelta(hours=1))
    assert summary(engine)["tier"] == "silver"


@pytest.mark.parametrize(
    "tiers,message",
    [({"levels": [LEVELS[1], LEVELS[0]]}, r"levels: levels\[1\].threshold must be greater than levels\[0\]'s \(2000\)"),
     ({"levels": LEVELS, "metric": "visits"}, "metric: Must be one of"),
     ({"levels": []}, "levels: Shorter than minimum length 1"),
     ({"levels": [{"name": "x", "threshold": 0}]}, r"levels.0.threshold: Must be greater than 0")],
)
def test_a_wrong_tier_programme_is_refused_naming_it(make_engine, tiers, message):
    with pytest.raises(ConfigError, match=rf"\[rules.tiers\] {message}"):
        make_engine(tables={**DEFAULT_TABLES, "rules": {"tiers": tiers}})


class VipProgram:
    """A plugin that brings its own tier programme (no [rules.tiers] table)."""

    @hookimpl
    def regulars_register_tier_program(self):
        return TierProgram("spend", 30, (TierLevel("vip", Decimal(100), Decimal(2)),))


def test_a_plugin_can_give_the_tier_programme(make_engine):
    engine = make_engine(extra_plugins=(("vip", VipProgram()),))
    buy(engine, 1, "150.00", JAN)
    assert summary(engine)["tier"] == "vip"


def test_a_late_delivered_order_earns_at_the_tier_that_held_when_it_was_paid(make_engine):
    engine = make_engine(tables=tables())
    buy(engine, 1, "300.00", JAN)
    buy(engine, 2, "250.00", JAN + timedelta(days=1))  # silver from here
    buy(engine, 3, "100.00", JAN + timedelta(hours=12))  # paid before the upgrade, delivered after
    assert summary(engine)["points"] == 550 + 100
    buy(engine, 4, "100.00", JAN + timedelta(days=2))  # paid while silver holds
    assert summary(engine)["points"] == 650 + 125


def refund(engine, number: int, euros: str, at: datetime, index: int = 0):
    order = PlannedOrder("shopify", number, EMAIL, (Line(Decimal("1"), 1),))
    body = _shopify_refund(order, index, Decimal(euros), at)
    assert engine.ingest("shopify", "refunds/create", json.dumps(body).encode()).status == "applied"


def test_an_order_paid_after_an_upgrade_but_delivered_before_its_cause_earns_at_the_new_tier(make_engine):
    """The case PRODUCT.md's invariant 2 is about: the order that reached
    silver arrives last, and the one paid after it is asked again."""
    engine = make_engine(tables=tables())
    buy(engine, 2, "100.00", JAN + timedelta(days=2))  # paid after the upgrade, delivered first
    assert (summary(engine)["points"], summary(engine)["tier"]) == (100, None)
    buy(engine, 1, "600.00", JAN)  # silver from here
    assert summary(engine)["tier"] == "silver"
    assert summary(engine)["points"] == 600 + 125
    history = summary(engine)["tier_history"]
    assert [(h["to"], h["at"], h["metric"]) for h in history] == [("silver", JAN.isoformat(), "600")]


def test_two_orders_that_reach_a_tier_together_upgrade_whatever_their_arrival(make_engine):
    engine = make_engine(tables=tables())
    buy(engine, 2, "300.00", JAN + timedelta(days=1))
    buy(engine, 1, "300.00", JAN)  # at its time 300: no tier; at order 2's, 600
    assert summary(engine)["tier"] == "silver"
    assert summary(engine)["tier_history"][0]["at"] == (JAN + timedelta(days=1)).isoformat()
    assert summary(engine)["points"] == 600  # both paid before silver held


def test_a_refund_made_before_the_order_that_reached_a_tier_arriving_late_undoes_the_upgrade(make_engine):
    """A refund counts from its time, whenever it arrives: one made before
    the order that would have reached silver keeps the customer below."""
    early = make_engine(tables=tables())
    buy(early, 1, "400.00", JAN)
    buy(early, 2, "150.00", JAN + timedelta(days=2))  # 550: silver, as far as the engine knows
    assert summary(early)["tier"] == "silver"
    refund(early, 1, "100.00", JAN + timedelta(days=1))  # made before order 2: 450 at its time
    assert (summary(early)["tier"], summary(early)["tier_history"]) == (None, [])
    assert summary(early)["points"] == 450


def test_a_refund_made_after_the_upgrade_lowers_nothing_until_the_review(make_engine):
    late = make_engine(tables=tables())
    buy(late, 1, "400.00", JAN)
    buy(late, 2, "150.00", JAN + timedelta(days=2))
    refund(late, 1, "100.00", JAN + timedelta(days=3))  # after the upgrade
    assert summary(late)["tier"] == "silver"


@pytest.mark.parametrize("metric", ["points_earned", "spend"])
def test_an_earlier_order_refunded_later_counts_as_it_stood_when_a_late_order_was_paid(make_engine, metric):
    """Order 1's refund is made after order 2 was paid but delivered before
    order 2: at order 2's time order 1 still counted whole (400 + 150), so
    order 2 reached silver. (The walk reads the earlier orders light and
    order 1 whole, for its refund after that moment.)"""
    engine = make_engine(tables=tables(metric=metric))
    buy(engine, 1, "400.00", JAN)
    refund(engine, 1, "100.00", JAN + timedelta(days=3))
    buy(engine, 2, "150.00", JAN + timedelta(days=2))
    assert summary(engine)["tier"] == "silver"
    assert [(h["to"], h["at"], h["metric"]) for h in summary(engine)["tier_history"]] == [
        ("silver", (JAN + timedelta(days=2)).isoformat(), "550")]


def test_an_order_event_reads_the_earlier_orders_of_the_window_without_their_states(make_engine, monkeypatch):
    """A customer's next order costs the tiers' walk the same whether they
    have 3 orders in the window or 30: the earlier ones are read light (the
    points they earned and when anything in them happened), not viewed."""
    import engine.pipeline as pipeline

    engine = make_engine(tables=tables(levels=[{"name": "silver", "threshold": 100_000, "multiplier": 1.25}]))
    viewed = []
    real = pipeline.view
    monkeypatch.setattr(pipeline, "view", lambda order_id, *rest: viewed.append(order_id) or real(order_id, *rest))
    seen = []
    for number in range(1, 31):
        viewed.clear()
        buy(engine, number, "10.00", JAN + timedelta(days=number))
        seen.append(len(viewed))
    assert summary(engine)["points"] == 300
    assert seen[3] == seen[29] <= 3, seen  # the new order's views, however many came before


def test_the_light_read_decodes_no_state_of_an_order_never_refunded_nor_cancelled(make_engine):
    """``_EARLIER_LIGHT`` marks an order with no refund and no reversal
    ``plain`` and reads its state's parts as nothing; a refunded one's parts
    are read (the walk's metric needs them as it stood earlier)."""
    from sqlalchemy import select

    from engine.db.models import customers
    from engine.pipeline import _EARLIER_LIGHT

    engine = make_engine(tables=tables())
    buy(engine, 1, "40.00", JAN)
    buy(engine, 2, "50.00", JAN + timedelta(days=1))
    refund(engine, 2, "10.00", JAN + timedelta(days=2))
    with engine.db.connect() as conn:
        customer_id = conn.execute(select(customers.c.id)).scalar_one()
        rows = conn.execute(_EARLIER_LIGHT, {"customer_id": customer_id, "after": JAN - timedelta(days=1),
                                             "before": JAN + timedelta(days=9)}).all()
    assert [(bool(r.plain), r.refunds is None, r.refund_at is None) for r in rows] == [
        (True, True, True), (False, False, False)]


def test_the_review_s_downgrade_stands_when_an_earlier_order_arrives_late(make_engine):
    engine = make_engine(tables=tables())
    buy(engine, 1, "600.00", JAN)
    run(engine, "tier-review", JAN + timedelta(days=400))  # out of the window: down to none
    assert summary(engine)["tier"] is None
    buy(engine, 2, "10.00", JAN + timedelta(days=1))  # delivered after the review, paid long before it
    assert summary(engine)["tier"] is None
    assert [(h["to"], h["reason"]) for h in summary(engine)["tier_history"]] == [
        ("silver", "upgrade"), (None, "downgrade")]


TIERED = {"silver": (500, Decimal("1.25")), "gold": (1000, Decimal("1.5"))}


@st.composite
def tier_streams(draw):
    """One customer's Shopify and WooCommerce orders at distinct paid times,
    some refunded in part or cancelled later; the deliveries in time order,
    and shuffled with some sent twice."""
    n = draw(st.integers(1, 5))
    hours = draw(st.lists(st.integers(0, 24 * 20), min_size=n, max_size=n, unique=True))
    timed = []  # (when, channel, topic, body)
    for number, hour in enumerate(hours, start=1):
        euros = draw(st.sampled_from(["80.00", "250.00", "300.00", "450.00", "700.00"]))
        channel = draw(st.sampled_from(["shopify", "woocommerce"]))
        order = PlannedOrder(channel, number, EMAIL, (Line(Decimal(euros), 1),))
        paid = JAN + timedelta(hours=hour)
        refund_at = paid + timedelta(hours=draw(st.integers(1, 24 * 10))) if draw(st.booleans()) else None
        cancel_at = (paid + timedelta(hours=draw(st.integers(1, 24 * 10)), minutes=30)  # never a refund's moment
                     if draw(st.integers(0, 4)) == 0 else None)
        half = Decimal(euros) / 2
        if channel == "shopify":
            timed.append((paid, channel, "orders/paid", _shopify_order(order, "paid", paid, [], False)))
            refunds = [_shopify_refund(order, 0, half, refund_at)] if refund_at else []
            if refund_at:
                timed.append((refund_at, channel, "refunds/create", refunds[0]))
            if cancel_at:
                timed.append((cancel_at, channel, "orders/cancelled",
                              _shopify_order(order, "refunded", cancel_at, refunds, True)))
        else:
            timed.append((paid, channel, "order.updated", _woo_order(order, "processing", paid, [])))
            if refund_at:  # WooCommerce says no refund's time: the snapshot that shows it first does
                timed.append((refund_at, channel, "order.updated", _woo_order(order, "processing", refund_at, [half])))
            if cancel_at:
                timed.append((cancel_at, channel, "order.updated",
                              _woo_order(order, "cancelled", cancel_at, [half] if refund_at else [])))
    timed.sort(key=lambda item: item[0])
    ordered = [(channel, topic, json.dumps(body).encode()) for _, channel, topic, body in timed]
    shuffled = shuffled_with_resends(draw, ordered, 3)
    return ordered, shuffled


def _outcome(engine) -> tuple:
    found = summary(engine)
    return found["points"], found["tier"], [(h["to"], h["at"], h["reason"]) for h in found["tier_history"]]


@pytest.mark.parametrize("metric", ["points_earned", "spend"])
@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=tier_streams())
def test_tiers_and_their_multipliers_do_not_depend_on_the_order_deliveries_arrive_in(
    stream, metric, make_engine, tmp_path, _sqlite_template
):
    """PRODUCT.md's invariant 2 for tiers: any reordering and duplication of
    a customer's deliveries ends in the same points, tier and upgrades (each
    at the same moment) as the stream in time order."""
    ordered, shuffled = stream
    levels = [{"name": name, "threshold": threshold, "multiplier": float(factor)}
              for name, (threshold, factor) in TIERED.items()]
    programme = {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1},
                                             "tiers": {"levels": levels, "metric": metric}}}
    results = []
    for deliveries in (ordered, shuffled):
        engine = _fresh(make_engine, tmp_path, _sqlite_template, programme)
        for channel, topic, body in deliveries:
            outcome = engine.ingest(channel, topic, body)
            assert outcome.status in ("applied", "duplicate"), outcome
        results.append(_outcome(engine))
        with engine.db.connect() as conn:
            assert engine.ledger.audit(conn) == []
        engine.db.dispose()
    assert results[1] == results[0]
