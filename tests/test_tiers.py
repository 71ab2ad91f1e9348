"""Tiers (issue 3, part 2): levels by points earned or spend in a rolling window,
upgrade at once, downgrade only at the review (one level or to the level
earned, after a grace period), a history, and the tier's multiplier on orders
paid while it holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from engine.config import ConfigError
from engine.customers import customer_summary
from engine.hookspecs import hookimpl
from engine.jobs import run
from engine.rules_api import TierLevel, TierProgram
from tests.conftest import DEFAULT_TABLES
from tests.streams import Line, PlannedOrder, _shopify_order

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
