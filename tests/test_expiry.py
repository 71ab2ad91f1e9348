"""Expiry and pending points (issue 3, part 5): lots expire so many months after
they were earned, spending takes the soonest-expiring first, expiry never takes
points that were spent, reminders before, and pending points can't be spent
inside the return window."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from engine.adjustments import AdjustmentRefused
from engine.config import ConfigError
from engine.customers import customer_summary
from engine.db import as_utc, utcnow
from engine.db.models import ledger_entries, lots
from engine.hookspecs import hookimpl
from engine.jobs import run
from engine.rewards import RedemptionRefused
from tests.conftest import DEFAULT_TABLES, empty_database, examples
from tests.streams import Line, PlannedOrder, _shopify_order, _shopify_refund

EMAIL = "jana@example.com"
JAN = datetime(2026, 1, 15, 10, tzinfo=UTC)
REWARDS = {"hundred": {"kind": "fixed_amount", "cost": 100, "value": "1.00", "partial": True}}


def tables(**expiry):
    return {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "expiry": expiry}, "rewards": REWARDS}


def buy(engine, number: int, euros: str, at: datetime):
    order = PlannedOrder("shopify", number, EMAIL, (Line(Decimal(euros), 1),))
    body = _shopify_order(order, "paid", at, [], False)
    assert engine.ingest("shopify", "orders/paid", json.dumps(body).encode()).status == "applied"
    return order


def points(engine) -> int:
    return customer_summary(engine, EMAIL)["points"]


def test_points_expire_months_after_they_were_earned(make_engine):
    engine = make_engine(tables=tables(months=12))
    buy(engine, 1, "100.00", JAN)
    buy(engine, 2, "40.00", JAN + timedelta(days=100))
    assert run(engine, "expire", datetime(2027, 1, 14, tzinfo=UTC)) == "0 points expired in 0 lots"
    assert run(engine, "expire", datetime(2027, 1, 16, tzinfo=UTC)) == "100 points expired in 1 lots"
    assert run(engine, "expire", datetime(2027, 1, 16, tzinfo=UTC)) == "0 points expired in 0 lots"
    assert points(engine) == 40


def test_an_order_paid_at_another_offset_expires_at_the_same_instant(make_engine):
    """Times keep their instant on SQLite too: an order paid at 11:00-05:00 is
    16:00 UTC, and its points expire 12 months after that, not 5 hours off."""
    from datetime import timezone

    engine = make_engine(tables=tables(months=12))
    new_york = timezone(timedelta(hours=-5))
    buy(engine, 1, "100.00", datetime(2026, 1, 15, 11, tzinfo=new_york))
    with engine.db.connect() as conn:
        occurred = conn.execute(select(ledger_entries.c.occurred_at)).scalar_one()
    assert as_utc(occurred) == datetime(2026, 1, 15, 16, tzinfo=UTC)
    assert run(engine, "expire", datetime(2027, 1, 15, 15, 59, tzinfo=UTC)) == "0 points expired in 0 lots"
    assert run(engine, "expire", datetime(2027, 1, 15, 16, 1, tzinfo=UTC)) == "100 points expired in 1 lots"


def test_spending_takes_the_soonest_expiring_points_so_expiry_takes_only_what_is_left(make_engine):
    engine = make_engine(tables=tables(months=12))
    buy(engine, 1, "100.00", JAN)
    buy(engine, 2, "300.00", JAN + timedelta(days=100))
    engine.redeem(EMAIL, "hundred", units=3, at=JAN + timedelta(days=101))
    run(engine, "expire", datetime(2027, 2, 1, tzinfo=UTC))  # the January lot: spent entirely
    assert points(engine) == 100
    run(engine, "expire", datetime(2027, 6, 1, tzinfo=UTC))
    assert points(engine) == 0
    with engine.db.connect() as conn:
        expired = conn.execute(select(func.sum(ledger_entries.c.amount)).where(ledger_entries.c.reason == "expiry")).scalar_one()
        assert engine.ledger.audit(conn) == []
    assert expired == -100


class Reminders:
    def __init__(self):
        self.heard = []

    @hookimpl
    def regulars_points_expiring(self, customer, points, expires_at):
        self.heard.append((customer.email, points, expires_at))


class BrokenReminder:
    @hookimpl
    def regulars_points_expiring(self, customer, points, expires_at):
        raise RuntimeError("the mail server is down")


def test_customers_hear_once_that_points_expire_soon_and_a_broken_plugin_stops_nobody(make_engine):
    heard = Reminders()
    engine = make_engine(tables=tables(months=12, remind_days=30),
                         extra_plugins=(("broken", BrokenReminder()), ("mailer", heard)))
    buy(engine, 1, "100.00", JAN)
    buy(engine, 2, "25.00", JAN + timedelta(days=10))
    assert run(engine, "expiry-reminders", datetime(2026, 12, 1, tzinfo=UTC)) == "0 customers reminded"
    assert run(engine, "expiry-reminders", datetime(2026, 12, 20, tzinfo=UTC)) == "1 customers reminded"
    assert heard.heard == [(EMAIL, 100, datetime(2027, 1, 15, 10, tzinfo=UTC))]
    assert run(engine, "expiry-reminders", datetime(2026, 12, 21, tzinfo=UTC)) == "0 customers reminded"
    run(engine, "expiry-reminders", datetime(2027, 1, 10, tzinfo=UTC))
    assert heard.heard[-1] == (EMAIL, 25, datetime(2027, 1, 25, 10, tzinfo=UTC))


def test_pending_points_cannot_be_spent_inside_the_return_window(make_engine):
    engine = make_engine(tables=tables(pending_days=14))
    paid = utcnow() - timedelta(days=1)
    buy(engine, 1, "250.00", paid)
    assert customer_summary(engine, EMAIL)["points_pending"] == 250
    with pytest.raises(RedemptionRefused, match="only 0 of the 250 are spendable; 250 are pending"):
        engine.redeem(EMAIL, "hundred", at=paid + timedelta(days=3))
    issued = engine.redeem(EMAIL, "hundred", units=2, at=paid + timedelta(days=15))
    assert issued.cost == 200


def test_a_refund_inside_the_window_cancels_points_that_never_were_spendable(make_engine):
    engine = make_engine(tables=tables(pending_days=14))
    old = buy(engine, 1, "100.00", JAN - timedelta(days=60))  # spendable long ago
    new = buy(engine, 2, "300.00", JAN)
    refund = _shopify_refund(new, 0, Decimal("300.00"), JAN + timedelta(days=2))
    engine.ingest("shopify", "refunds/create", json.dumps(refund).encode())
    assert points(engine) == 100
    # the refund took the new order's pending lot, not the old spendable one
    engine.redeem(EMAIL, "hundred", at=JAN + timedelta(days=3))
    assert points(engine) == 0
    assert old


@pytest.mark.parametrize("expiry,message", [({"months": 0}, "months: Must be greater"),
                                            ({"pending_days": -1}, "pending_days: Must be greater"),
                                            ({"month": 12}, "month: unknown key")])
def test_a_wrong_expiry_setting_is_refused_naming_it(make_engine, expiry, message):
    with pytest.raises(ConfigError, match=rf"\[rules.expiry\] {message}"):
        make_engine(tables=tables(**expiry))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("earn"), st.integers(1, 400)),
    st.tuples(st.just("spend"), st.integers(1, 4)),
    st.tuples(st.just("expire"), st.just(0)),
    st.tuples(st.just("adjust"), st.integers(-300, 300).filter(bool)),
), min_size=1, max_size=12))
def test_expiry_never_takes_points_that_were_spent(make_engine, steps):
    """Earning, spending, expiring and adjusting by hand in any sequence: the
    open lots always hold the balance, and in the end every point earned or
    given was spent, taken back or expired, once."""
    engine = make_engine(tables=tables(months=3))
    empty_database(engine)
    at, earned, spent, number = JAN, 0, 0, 0
    for kind, amount in steps:
        at += timedelta(days=20)
        if kind == "earn":
            number += 1
            buy(engine, number, f"{amount}.00", at)
            earned += amount
        elif kind == "spend" and number:
            try:
                spent += engine.redeem(EMAIL, "hundred", units=amount, at=at).cost
            except RedemptionRefused:
                pass
        elif kind == "adjust" and number:
            try:
                engine.adjust(EMAIL, amount, "a correction", "cli:test", at=at)
            except AdjustmentRefused as exc:
                assert exc.reason == "below_zero" and amount < 0
            else:
                earned, spent = (earned + amount, spent) if amount > 0 else (earned, spent - amount)
        else:
            run(engine, "expire", at)
        if number:
            assert points(engine) >= 0
            with engine.db.connect() as conn:
                held = conn.execute(select(func.coalesce(func.sum(lots.c.remaining), 0))).scalar_one()
            assert held == points(engine)
    if not number:
        return
    run(engine, "expire", at + timedelta(days=400))
    with engine.db.connect() as conn:
        expired = -conn.execute(select(func.coalesce(func.sum(ledger_entries.c.amount), 0))
                                .where(ledger_entries.c.reason == "expiry")).scalar_one()
        assert engine.ledger.audit(conn) == []
    # everything earned was either spent or expired, never both
    assert expired == earned - spent
    assert points(engine) == 0


class MonthlyExpiry:
    """A plugin that sets the policy itself (no [rules.expiry] table)."""

    @hookimpl
    def regulars_points_policy(self):
        from engine.rules_api import PointsPolicy

        return PointsPolicy(expiry_months=1)


def test_a_plugin_can_give_the_points_policy(make_engine):
    engine = make_engine(tables={**DEFAULT_TABLES, "rewards": REWARDS}, extra_plugins=(("monthly", MonthlyExpiry()),))
    buy(engine, 1, "80.00", JAN)
    run(engine, "expire", datetime(2026, 2, 16, tzinfo=UTC))
    assert points(engine) == 0
