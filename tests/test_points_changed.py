"""Observers hear of points changes after commit (``regulars_points_changed``):
once per customer and committed transaction, from every path that posts
points; never of a rolled-back one, of a merge, or of a rehearsal
(``regulars simulate``); a failing observer undoes nothing."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.customers import customer_summary
from engine.hookspecs import hookimpl
from engine.imports import import_points
from engine.jobs import run
from tests.conftest import DEFAULT_TABLES, examples
from tests.plugins.notifier import BrokenNotifier, PointsNotifier
from tests.streams import T0, Line, PlannedOrder, _shopify_order, _shopify_refund, _woo_order
from tests.test_invariants import _fresh, _points_by_email, programmes

EMAIL = "jana@example.com"
TABLES = {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "expiry": {"months": 12},
                                      "subscriptions": {"vip": {"renewal_points": 50}}},
          "rewards": {"five-off": {"kind": "fixed_amount", "cost": 20, "value": "5.00"}}}


@pytest.fixture
def heard(make_engine):
    notifier = PointsNotifier()
    engine = make_engine(tables=TABLES, extra_plugins=(("broken", BrokenNotifier()), ("notifier", notifier)))
    return engine, notifier


def order(number: int, euros: str, email: str = EMAIL, phone: str | None = None) -> PlannedOrder:
    return PlannedOrder("shopify", number, email, (Line(Decimal(euros), 1),), phone=phone)


def paid(engine, planned: PlannedOrder, at=T0) -> str:
    body = json.dumps(_shopify_order(planned, "paid", at, [], False)).encode()
    return engine.ingest("shopify", "orders/paid", body).status


def test_an_order_and_its_refund_are_heard_once_each_and_a_resent_one_not_at_all(heard, caplog):
    engine, notifier = heard
    caplog.set_level(logging.ERROR)
    assert paid(engine, order(1, "35.00")) == "applied"
    assert notifier.heard == [(EMAIL, [(35, "order")], 35)]
    assert "plugin broken failed in regulars_points_changed" in caplog.text  # logged, and nothing undone
    assert paid(engine, order(1, "35.00")) == "duplicate"
    refund = _shopify_refund(order(1, "35.00"), 0, Decimal("10.00"), T0 + timedelta(days=1))
    assert engine.ingest("shopify", "refunds/create", json.dumps(refund).encode()).status == "applied"
    assert notifier.heard[1:] == [(EMAIL, [(-10, "refund")], 25)]
    assert customer_summary(engine, EMAIL)["points"] == 25


def test_a_batch_is_heard_per_customer_without_the_delivery_that_failed(make_engine):
    class FailsOnOrder3:
        @hookimpl
        def regulars_order_awards(self, order, customer):
            if order.external_id.endswith("3"):
                raise RuntimeError("the bonus service is down")

    notifier = PointsNotifier()
    engine = make_engine(tables=TABLES, extra_plugins=(("notifier", notifier), ("flaky", FailsOnOrder3())))
    bodies = [json.dumps(_shopify_order(order(n, f"{n}0.00", f"c{n % 2}@example.com"), "paid", T0, [], False)).encode()
              for n in (1, 2, 3, 4)]
    outcomes = engine.ingest_batch("shopify", [("orders/paid", body, None) for body in bodies])
    assert [o.status for o in outcomes] == ["applied", "applied", "failed", "applied"]
    assert sorted(notifier.heard) == [("c0@example.com", [(20, "order"), (40, "order")], 60),
                                      ("c1@example.com", [(10, "order")], 10)]


def test_redemptions_adjustments_imports_claims_memberships_and_jobs_are_heard(heard):
    engine, notifier = heard
    paid(engine, order(1, "35.00"), at=datetime(2026, 1, 10, tzinfo=UTC))
    engine.redeem(EMAIL, "five-off")
    engine.adjust(EMAIL, 7, "goodwill", "cli:ana")
    import_points(engine, b"email,points\njana@example.com,3\nnew@example.com,9\n", "moved", "cli:ana")
    import_points(engine, b"email,points\njana@example.com,4\n", "moved", "cli:ana", dry_run=True)
    engine.subscription("start", EMAIL, "vip")
    run(engine, "expire", datetime(2027, 1, 11, tzinfo=UTC))
    assert notifier.heard[1:] == [
        (EMAIL, [(-20, "redeem")], 15),
        (EMAIL, [(7, "adjust")], 22),
        (EMAIL, [(3, "adjust")], 25), ("new@example.com", [(9, "adjust")], 9),  # one import, after its rows
        (EMAIL, [(50, "subscription")], 75),
        (EMAIL, [(-15, "expiry")], 60),  # what was left of January's lot; the other lots are younger
    ]


def test_a_merge_is_no_change_and_a_rehearsal_is_heard_by_nobody(heard):
    engine, notifier = heard
    phone_only = _woo_order(order(7, "30.00", "placeholder@example.com", "+420601123456"), "completed", T0, [])
    phone_only["billing"]["email"] = ""
    assert engine.ingest("woocommerce", "order.updated", json.dumps(phone_only).encode()).status == "applied"
    assert paid(engine, order(1, "12.00")) == "applied"
    notifier.heard.clear()
    merging = {"id": 42, "email": EMAIL, "phone": "+420601123456", "updated_at": "2026-05-01T10:00:00+02:00"}
    assert engine.ingest("shopify", "customers/update", json.dumps(merging).encode()).status == "applied"
    assert customer_summary(engine, EMAIL)["points"] == 42
    assert notifier.heard == []  # the points moved, none changed

    from engine.simulate import scratch_engine

    rehearsal = PointsNotifier()
    with scratch_engine(engine.config, extra_plugins=(("rehearsal", rehearsal),)) as scratch:
        assert paid(scratch, order(9, "50.00")) == "applied"
    assert rehearsal.heard == []


def test_a_claim_that_rewards_at_once_is_heard_for_both(make_engine):
    notifier = PointsNotifier()
    tables = {**TABLES, "rules": {**TABLES["rules"], "referrals": {"referrer_points": 200, "referee_points": 100}}}
    engine = make_engine(tables=tables, extra_plugins=(("notifier", notifier),))
    assert paid(engine, order(1, "10.00", "petr@example.cz")) == "applied"
    code = customer_summary(engine, "petr@example.cz")["referral_code"]
    body = _shopify_order(order(2, "30.00"), "paid", T0 + timedelta(hours=2), [], False)
    body["shipping_address"] = {**body["shipping_address"], "address1": "7 Oak Street"}  # not the referrer's
    assert engine.ingest("shopify", "orders/paid", json.dumps(body).encode()).status == "applied"
    notifier.heard.clear()
    engine.claim_referral(EMAIL, code, at=T0 + timedelta(hours=1))  # claimed before that order was paid
    assert sorted(notifier.heard) == [(EMAIL, [(100, "referral")], 130),
                                      ("petr@example.cz", [(200, "referral")], 210)]


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(programme=programmes(), batch=st.integers(1, 5))
def test_what_observers_heard_adds_up_to_each_balance_in_any_order_and_batching(
        programme, batch, make_engine, tmp_path, _sqlite_template):
    """A shuffled multi-channel stream with resends, fed in batches: for every
    customer the changes heard add up to their balance, and the last balance
    heard is it (nothing heard twice, nothing rolled back heard, nothing lost)."""
    _, _, shuffled = programme
    notifier = PointsNotifier()
    engine = _fresh(make_engine, tmp_path, _sqlite_template, extra_plugins=(("notifier", notifier),))
    for start in range(0, len(shuffled), batch):
        chunk = shuffled[start:start + batch]
        by_channel: dict[str, list] = {}
        for channel, topic, body in chunk:
            by_channel.setdefault(channel, []).append((topic, body, None))
        for channel, items in by_channel.items():
            engine.ingest_batch(channel, items)
    heard: dict[str, list] = {}
    for email, changes, balance in notifier.heard:
        heard.setdefault(email, []).append((sum(amount for amount, _ in changes), balance))
    balances = _points_by_email(engine)
    for email, points in balances.items():
        said = heard.get(email, [])
        assert sum(amount for amount, _ in said) == points, (email, said)
        if said:
            assert said[-1][1] == points
