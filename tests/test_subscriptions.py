"""Subscriptions and memberships (issue 3, part 4): start and renewal points,
each once whatever the deliveries; the plan's multiplier on orders paid while
the membership is active, kept for their refunds; the newest event by event
time gives the status, so a stale one changes nothing; unknown plans and wrong
plans.toml tables refused with what is wrong; `customer show` and the CLI."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import ClassVar

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from engine.cli import main
from engine.config import ConfigError
from engine.customers import customer_summary
from engine.db import as_utc
from engine.db.models import ledger_entries, orders
from engine.events import SUBSCRIPTION_TOPICS
from engine.hookspecs import hookimpl
from engine.rules_api import Multiplier, SubscriptionPlan
from tests.conftest import DEFAULT_TABLES, empty_database, examples
from tests.plugins.till import CanonicalTill
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
T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
JAN = datetime(2026, 1, 1, tzinfo=UTC)
VIP = {"multiplier": 2.0, "renewal_points": 100, "start_points": 50}


class MembershipTill(CanonicalTill):
    """The canonical till, also passing subscription events through as they are."""

    topics: ClassVar[tuple[str, ...]] = (*CanonicalTill.topics, "order.refunded", *SUBSCRIPTION_TOPICS)


def programme(plans: dict | None = None) -> dict:
    return {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "subscriptions": plans or {"vip": VIP}}}


@pytest.fixture
def shop(make_engine):
    return make_engine(tables=programme(), extra_plugins=(("till", MembershipTill()),))


def subscription(engine, kind: str, at: datetime, plan: str = "vip", sub_id: str = "S1",
                 period_end: datetime | None = None, key: str | None = None, email: str | None = EMAIL):
    """One ``subscription.<kind>`` delivery through the till connector."""
    event = {
        "idempotency_key": key or f"sub-{sub_id}-{kind}-{at.isoformat()}",
        "occurred_at": at.isoformat(),
        "customer": {"email": email} if email else {},
        "subscription": {"id": sub_id, "plan": plan,
                         **({"period_end": period_end.isoformat()} if period_end else {})},
    }
    return engine.ingest("till", f"subscription.{kind}", json.dumps(event).encode())


def sale(engine, number: int, euros: str, at: datetime, refunds: tuple[tuple[str, str], ...] = ()):
    """The till's order.updated for a paid order, with refunds (id, amount)."""
    event = {
        "idempotency_key": f"sale-{number}-{at.isoformat()}",
        "occurred_at": at.isoformat(),
        "customer": {"email": EMAIL},
        "order": {"id": str(number), "version": at.isoformat(), "status": "paid", "currency": "EUR",
                  "lines": [{"id": f"{number}-1", "sku": "TEA", "quantity": 1, "unit_price": euros}],
                  "refunds": [{"id": rid, "amount": amount} for rid, amount in refunds]},
    }
    outcome = engine.ingest("till", "order.updated", json.dumps(event).encode())
    assert outcome.status == "applied", outcome.error
    return outcome


def summary(engine) -> dict:
    return customer_summary(engine, EMAIL)


def points(engine) -> int:
    return summary(engine)["points"]


def memberships(engine) -> list[tuple[str, str]]:
    return [(m["plan"], m["status"]) for m in summary(engine)["memberships"]]


def entries(engine) -> int:
    with engine.db.connect() as conn:
        return conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()


# -- points ---------------------------------------------------------------------


def test_a_start_earns_the_start_points(shop):
    outcome = subscription(shop, "started", T0)
    assert (outcome.status, outcome.entries) == ("applied", 1)
    assert points(shop) == 50
    assert summary(shop)["memberships"] == [{
        "plan": "vip", "status": "active", "since": T0.isoformat(), "period_end": None,
        "status_since": T0.isoformat(), "channel": "till", "id": "S1",
    }]


def test_without_start_points_a_start_earns_the_renewal_points(make_engine):
    engine = make_engine(tables=programme({"vip": {"renewal_points": 80}}), extra_plugins=(("till", MembershipTill()),))
    subscription(engine, "started", T0)
    assert points(engine) == 80


def test_each_renewal_earns_the_renewal_points_once(shop):
    subscription(shop, "started", T0, period_end=T0 + timedelta(days=30))
    subscription(shop, "renewed", T0 + timedelta(days=30), period_end=T0 + timedelta(days=60))
    subscription(shop, "renewed", T0 + timedelta(days=60), period_end=T0 + timedelta(days=90))
    assert points(shop) == 50 + 100 + 100
    assert summary(shop)["memberships"][0]["period_end"] == (T0 + timedelta(days=90)).isoformat()


def test_a_resent_renewal_changes_nothing(shop):
    subscription(shop, "started", T0)
    renewal = dict(kind="renewed", at=T0 + timedelta(days=30), period_end=T0 + timedelta(days=60))
    assert subscription(shop, **renewal).entries == 1
    before = entries(shop)
    # the same delivery again: a duplicate at the inbox
    assert subscription(shop, **renewal).status == "duplicate"
    # the same renewal (same period) resent by the channel under another delivery key
    again = subscription(shop, **renewal, key="resent-after-a-timeout")
    assert (again.status, again.entries) == ("applied", 0)
    # replayed from the inbox
    assert shop.replay(again.inbox_id).entries == 0
    assert (entries(shop), points(shop)) == (before, 150)


def test_a_renewal_without_a_period_earns_once_per_event_key(shop):
    subscription(shop, "started", T0)
    first = subscription(shop, "renewed", T0 + timedelta(days=30), key="renewal-1")
    subscription(shop, "renewed", T0 + timedelta(days=60), key="renewal-2")
    assert shop.replay(first.inbox_id).entries == 0
    assert points(shop) == 250


# -- the status, in any order ---------------------------------------------------


def test_a_stale_start_arriving_after_the_cancellation_keeps_it_cancelled(shop):
    subscription(shop, "cancelled", T0 + timedelta(days=5))
    assert memberships(shop) == [("vip", "cancelled")]
    subscription(shop, "started", T0)
    assert memberships(shop) == [("vip", "cancelled")]
    only = summary(shop)["memberships"][0]
    assert (only["since"], only["status_since"]) == (T0.isoformat(), (T0 + timedelta(days=5)).isoformat())
    assert points(shop) == 50  # the start happened: its points stand


def test_a_cancellation_stops_the_membership_and_keeps_the_points(shop):
    subscription(shop, "started", T0)
    subscription(shop, "renewed", T0 + timedelta(days=30), period_end=T0 + timedelta(days=60))
    subscription(shop, "cancelled", T0 + timedelta(days=40))
    assert memberships(shop) == [("vip", "cancelled")]
    assert points(shop) == 150
    sale(shop, 1, "10.00", T0 + timedelta(days=41))
    assert points(shop) == 160  # no multiplier any more


STREAM = (
    ("started", T0, None),
    ("renewed", T0 + timedelta(days=30), T0 + timedelta(days=60)),
    ("paused", T0 + timedelta(days=45), None),
    ("resumed", T0 + timedelta(days=50), None),
    ("renewed", T0 + timedelta(days=60), T0 + timedelta(days=90)),
    ("cancelled", T0 + timedelta(days=70), None),
)


def test_any_order_of_the_events_ends_in_the_same_state_and_points(shop):
    seen = set()
    picks = list(itertools.permutations(STREAM))[::37]  # a spread of the 720 orders
    picks.append(tuple(reversed(STREAM)))
    for order in picks:
        empty_database(shop)
        for kind, at, period_end in order:
            assert subscription(shop, kind, at, period_end=period_end).status == "applied"
        m = summary(shop)["memberships"][0]
        seen.add((points(shop), m["status"], m["since"], m["period_end"], m["status_since"]))
    assert seen == {(250, "cancelled", T0.isoformat(), (T0 + timedelta(days=90)).isoformat(),
                     (T0 + timedelta(days=70)).isoformat())}


# -- the multiplier -------------------------------------------------------------


def test_an_order_paid_while_active_earns_double_and_its_refund_reverses_at_double(shop):
    subscription(shop, "started", T0)
    sale(shop, 1, "30.00", T0 + timedelta(days=1))
    assert points(shop) == 50 + 60
    subscription(shop, "cancelled", T0 + timedelta(days=2))
    sale(shop, 1, "30.00", T0 + timedelta(days=3), refunds=(("r1", "10.00"),))
    assert points(shop) == 50 + 40  # 20.00 standing, still x2
    with shop.db.connect() as conn:
        details = conn.execute(select(ledger_entries.c.amount, ledger_entries.c.detail)
                               .where(ledger_entries.c.source == "order:till:1").order_by(ledger_entries.c.id)).all()
    assert [d.amount for d in details] == [60, -20]
    assert ["vip membership", "2.0"] in details[0].detail["multipliers"]


def test_a_pause_stops_the_multiplier_for_orders_paid_after_and_a_resumption_restores_it(shop):
    subscription(shop, "started", T0)
    subscription(shop, "paused", T0 + timedelta(days=1))
    sale(shop, 1, "10.00", T0 + timedelta(days=2))
    assert points(shop) == 50 + 10
    assert memberships(shop) == [("vip", "paused")]
    subscription(shop, "resumed", T0 + timedelta(days=3))
    sale(shop, 2, "10.00", T0 + timedelta(days=4))
    assert points(shop) == 50 + 10 + 20


def test_an_order_of_a_customer_without_a_membership_earns_no_multiplier(shop):
    sale(shop, 1, "10.00", T0)
    subscription(shop, "started", T0 + timedelta(days=1), email="someone.else@example.com")
    sale(shop, 2, "10.00", T0 + timedelta(days=2))
    assert points(shop) == 20


def test_the_multipliers_of_two_active_plans_multiply(make_engine):
    plans = {"vip": VIP, "coffee-club": {"multiplier": 1.5}}
    engine = make_engine(tables=programme(plans), extra_plugins=(("till", MembershipTill()),))
    subscription(engine, "started", T0)
    subscription(engine, "started", T0, plan="coffee-club", sub_id="S2")
    sale(engine, 1, "10.00", T0 + timedelta(days=1))
    assert points(engine) == 50 + 30  # floor(10 x 2 x 1.5); coffee-club grants no points


def test_a_membership_follows_its_customer_into_a_merge_and_counts_for_their_orders_paid_while_active(shop):
    phone = "+420601123456"
    event = {"idempotency_key": "s", "occurred_at": T0.isoformat(), "customer": {"phone": phone},
             "subscription": {"id": "S1", "plan": "vip"}}
    assert shop.ingest("till", "subscription.started", json.dumps(event).encode()).status == "applied"
    sale(shop, 1, "10.00", T0 + timedelta(days=1))  # a second customer, known by email
    both = {"idempotency_key": "c", "occurred_at": (T0 + timedelta(days=2)).isoformat(),
            "customer": {"email": EMAIL, "phone": phone}}
    assert shop.ingest("till", "customer.upserted", json.dumps(both).encode()).status == "applied"
    assert memberships(shop) == [("vip", "active")]
    # the order the email half paid while the phone half's membership was
    # active earns double once they are one person, as it would had the
    # deliveries come the other way round
    assert points(shop) == 50 + 20
    sale(shop, 2, "10.00", T0 + timedelta(days=3))
    assert points(shop) == 50 + 20 + 20


# -- refusals ---------------------------------------------------------------------


def test_an_unknown_plan_fails_the_delivery_naming_the_plan_and_replays_once_configured(shop, make_engine):
    outcome = subscription(shop, "started", T0, plan="gold")
    assert outcome.status == "failed"
    assert "unknown subscription plan 'gold'" in outcome.error and "configured plans: vip" in outcome.error
    assert "[rules.subscriptions.gold]" in outcome.error
    assert summary(shop) is None and entries(shop) == 0  # nothing, not even the customer

    fixed = make_engine(tables=programme({"vip": VIP, "gold": {"renewal_points": 300}}),
                        extra_plugins=(("till", MembershipTill()),))
    assert fixed.replay(outcome.inbox_id).status == "applied"
    assert memberships(fixed) == [("gold", "active")] and points(fixed) == 300


def test_without_subscription_plans_a_subscription_event_fails_saying_so(make_engine):
    engine = make_engine(extra_plugins=(("till", MembershipTill()),))
    outcome = subscription(engine, "started", T0)
    assert outcome.status == "failed"
    assert "unknown subscription plan 'vip' (configured plans: none)" in outcome.error


def test_an_event_for_an_unknown_subscription_without_a_customer_fails_saying_so(shop):
    outcome = subscription(shop, "renewed", T0, email=None)
    assert outcome.status == "failed" and "no customer" in outcome.error
    # once the subscription is known, its events need no customer
    subscription(shop, "started", T0 - timedelta(days=30))
    assert shop.replay(outcome.inbox_id).status == "applied"
    assert points(shop) == 150


def test_a_subscription_event_without_its_subscription_fails_validation(shop):
    body = json.dumps({"idempotency_key": "k", "occurred_at": T0.isoformat(), "customer": {"email": EMAIL}})
    outcome = shop.ingest("till", "subscription.started", body.encode())
    assert outcome.status == "failed"
    assert "subscription.started needs a 'subscription'" in outcome.error


@pytest.mark.parametrize(
    "plans,message",
    [({"vip": {"multipler": 2}}, r"vip.multipler: unknown key \(expected one of: grace_days, multiplier, "
                                 r"renewal_points, start_points\)"),
     ({"vip": {"renewal_points": -1}}, "vip.renewal_points: Must be greater than or equal to 0"),
     ({"vip": {"renewal_points": 1.5}}, "vip.renewal_points: Not a valid integer"),
     ({"vip": {"multiplier": "lots"}}, "vip.multiplier: Not a valid number"),
     ({}, r"\(table\): add at least one plan, e.g. \[rules.subscriptions.vip\]")],
)
def test_a_wrong_plan_is_refused_naming_the_file_the_table_and_the_key(make_engine, plans, message):
    tables = {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "subscriptions": plans}}
    with pytest.raises(ConfigError, match=rf"plugins.toml \[rules.subscriptions\] {message}"):
        make_engine(tables=tables)


# -- plans from a plugin ----------------------------------------------------------


class FamilyPlan:
    """A third-party plugin with its own plan and multiplier (no table)."""

    @hookimpl
    def regulars_register_subscription_plans(self):
        return [SubscriptionPlan("family", Decimal("1.5"), renewal_points=20, start_points=0)]

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        return [Multiplier("family membership", Decimal("1.5"))] if "family" in customer.plans else None


class AnotherVip:
    @hookimpl
    def regulars_register_subscription_plans(self):
        return [SubscriptionPlan("vip", renewal_points=1)]


def test_a_plugin_can_register_a_plan_beside_the_built_in_ones(make_engine):
    engine = make_engine(tables=programme(), extra_plugins=(("till", MembershipTill()), ("family", FamilyPlan())))
    subscription(engine, "started", T0, plan="family", sub_id="F1")
    assert points(engine) == 0  # start_points = 0
    subscription(engine, "renewed", T0 + timedelta(days=30), plan="family", sub_id="F1")
    sale(engine, 1, "10.00", T0 + timedelta(days=31))
    assert points(engine) == 20 + 15
    with engine.db.connect() as conn:
        rules = conn.execute(select(ledger_entries.c.rule).where(ledger_entries.c.reason == "subscription")).scalars()
        assert list(rules) == ["family"]


def test_two_plugins_registering_one_plan_stop_the_start_naming_both(make_engine):
    with pytest.raises(ConfigError, match="both register the subscription plan 'vip'") as refused:
        make_engine(tables=programme(), extra_plugins=(("other", AnotherVip()),))
    assert "'rules.subscriptions'" in str(refused.value) and "'other'" in str(refused.value)


# -- by hand: the CLI ---------------------------------------------------------------


PLUGINS_TOML = """
[engine]
currency = "EUR"

[rules.points]
per_unit = 1

[rules.subscriptions.vip]
multiplier = 2.0
renewal_points = 100
start_points = 50
"""


@pytest.fixture
def cli(shop, database_url, tmp_path):
    """The CLI on the shop's database, with a customer the till created."""
    config = tmp_path / "cli.toml"
    config.write_text(PLUGINS_TOML, encoding="utf-8")
    event = {"idempotency_key": "c1", "occurred_at": T0.isoformat(), "customer": {"email": EMAIL}}
    assert shop.ingest("till", "customer.upserted", json.dumps(event).encode()).status == "applied"
    runner = CliRunner(env={"REGULARS_DATABASE_URL": database_url, "COLUMNS": "200"})
    return lambda *args: runner.invoke(main, ["--config", str(config), *args])


def test_the_cli_starts_renews_pauses_and_cancels_a_membership(cli, shop):
    started = cli("subscription", "start", EMAIL, "vip", "--at", "2026-01-10T09:00:00", "--json")
    assert started.exit_code == 0, started.output
    state = json.loads(started.output)
    assert (state["plan"], state["status"], state["channel"]) == ("vip", "active", "cli")
    assert points(shop) == 50
    for _ in range(2):  # retried with the same key: one renewal
        renewed = cli("subscription", "renew", EMAIL, "vip", "--key", "feb", "--at", "2026-02-10")
        assert renewed.exit_code == 0, renewed.output
    assert "vip active" in renewed.output
    assert points(shop) == 150
    assert cli("subscription", "pause", EMAIL, "vip", "--at", "2026-02-11").exit_code == 0
    assert memberships(shop) == [("vip", "paused")]
    cancelled = cli("subscription", "cancel", EMAIL, "vip", "--at", "2026-02-12T10:00:00+01:00")
    assert cancelled.exit_code == 0, cancelled.output
    assert memberships(shop) == [("vip", "cancelled")]
    shown = cli("customer", "show", EMAIL, "--json")
    assert [m["status"] for m in json.loads(shown.output)["memberships"]] == ["cancelled"]


def test_the_cli_refuses_an_unknown_plan_or_customer_saying_why(cli, shop):
    unknown_plan = cli("subscription", "start", EMAIL, "gold")
    assert unknown_plan.exit_code == 1
    assert "unknown subscription plan 'gold'" in unknown_plan.output
    nobody = cli("subscription", "start", "nobody@example.com", "vip")
    assert nobody.exit_code == 1 and "no customer matches 'nobody@example.com'" in nobody.output
    assert points(shop) == 0


# -- whatever order the deliveries come in (PRODUCT.md invariant 2) -------------------


def order_multipliers(engine) -> dict[str, list]:
    with engine.db.connect() as conn:
        rows = conn.execute(select(orders.c.external_id, orders.c.multipliers)).all()
    return {r.external_id: sorted(m for m in r.multipliers or [] if m[0].endswith(" membership")) for r in rows}


def test_an_order_delivered_before_the_start_of_a_membership_it_was_paid_in_earns_double_once_it_arrives(shop):
    sale(shop, 1, "10.00", T0 + timedelta(days=1))
    assert points(shop) == 10
    subscription(shop, "started", T0)
    assert points(shop) == 50 + 20
    assert order_multipliers(shop) == {"1": [["vip membership", "2.0"]]}
    subscription(shop, "started", T0)  # the start resent: nothing more
    assert points(shop) == 50 + 20


def test_a_start_after_the_order_was_paid_gives_it_nothing(shop):
    sale(shop, 1, "10.00", T0)
    subscription(shop, "started", T0 + timedelta(hours=1))
    assert points(shop) == 50 + 10


def test_a_cancellation_delivered_late_takes_back_the_double_of_orders_paid_after_it(shop):
    subscription(shop, "started", T0)
    sale(shop, 1, "10.00", T0 + timedelta(days=1))
    sale(shop, 2, "10.00", T0 + timedelta(days=3))
    assert points(shop) == 50 + 20 + 20
    subscription(shop, "cancelled", T0 + timedelta(days=2))
    assert points(shop) == 50 + 20 + 10
    assert order_multipliers(shop) == {"1": [["vip membership", "2.0"]], "2": []}
    # a refund of the second order reverses at what it now holds
    sale(shop, 2, "10.00", T0 + timedelta(days=4), refunds=(("r1", "5.00"),))
    assert points(shop) == 50 + 20 + 5


def test_a_pause_and_resumption_delivered_late_move_the_multiplier_to_the_orders_paid_while_active(shop):
    subscription(shop, "started", T0)
    for number, day in ((1, 1), (2, 3), (3, 5)):
        sale(shop, number, "10.00", T0 + timedelta(days=day))
    subscription(shop, "resumed", T0 + timedelta(days=4))
    subscription(shop, "paused", T0 + timedelta(days=2))
    assert points(shop) == 50 + 20 + 10 + 20
    assert memberships(shop) == [("vip", "active")]


def test_a_membership_past_its_period_and_grace_gives_no_multiplier_before_the_job_runs(make_engine):
    engine = make_engine(tables=programme({"vip": {**VIP, "grace_days": 7}}), extra_plugins=(("till", MembershipTill()),))
    subscription(engine, "started", T0, period_end=T0 + timedelta(days=30))
    sale(engine, 1, "10.00", T0 + timedelta(days=37))  # the last day of the grace
    sale(engine, 2, "10.00", T0 + timedelta(days=38))
    assert points(engine) == 50 + 20 + 10
    assert memberships(engine) == [("vip", "active")]  # (the job has not run)
    # a renewal made in the grace, delivered late, covers the second order too
    subscription(engine, "renewed", T0 + timedelta(days=33), period_end=T0 + timedelta(days=60))
    assert points(engine) == 50 + 100 + 20 + 20


@st.composite
def membership_streams(draw):
    """A customer's VIP membership (started, maybe renewed, paused, resumed,
    cancelled; periods of 10 days, 3 days' grace) and a coffee club's, and
    their Shopify and WooCommerce orders, some refunded in part; the deliveries
    in time order, and shuffled with some sent twice."""
    timed = []  # (when, channel, topic, body)
    start = draw(st.integers(0, 24 * 10))
    events = [("started", start)]
    for kind in ("renewed", "paused", "resumed", "cancelled"):
        if draw(st.booleans()):
            events.append((kind, draw(st.integers(start, 24 * 40))))
    for kind, hour in events:
        at = JAN + timedelta(hours=hour, minutes=7)
        period_end = at + timedelta(days=10) if kind in ("started", "renewed") else None
        timed.append((at, "till", f"subscription.{kind}", _membership(kind, at, "vip", "S1", period_end)))
    if draw(st.booleans()):
        club = JAN + timedelta(hours=draw(st.integers(0, 24 * 40)), minutes=11)
        timed.append((club, "till", "subscription.started", _membership("started", club, "coffee-club", "S2", None)))
        if draw(st.booleans()):
            end = club + timedelta(hours=draw(st.integers(1, 24 * 10)))
            timed.append((end, "till", "subscription.cancelled", _membership("cancelled", end, "coffee-club", "S2",
                                                                             None)))
    n = draw(st.integers(1, 5))
    for number, hour in enumerate(draw(st.lists(st.integers(0, 24 * 45), min_size=n, max_size=n, unique=True)),
                                  start=1):
        euros = draw(st.sampled_from(["10.00", "25.00", "33.00"]))
        channel = draw(st.sampled_from(["shopify", "woocommerce"]))
        order = PlannedOrder(channel, number, EMAIL, (Line(Decimal(euros), 1),))
        paid = JAN + timedelta(hours=hour)
        refund_at = paid + timedelta(hours=draw(st.integers(1, 24 * 10))) if draw(st.booleans()) else None
        half = Decimal(euros) / 2
        if channel == "shopify":
            timed.append((paid, channel, "orders/paid", _shopify_order(order, "paid", paid, [], False)))
            if refund_at:
                timed.append((refund_at, channel, "refunds/create", _shopify_refund(order, 0, half, refund_at)))
        else:
            timed.append((paid, channel, "order.updated", _woo_order(order, "processing", paid, [])))
            if refund_at:
                timed.append((refund_at, channel, "order.updated", _woo_order(order, "processing", refund_at, [half])))
    timed.sort(key=lambda item: item[0])
    ordered = [(channel, topic, json.dumps(body).encode()) for _, channel, topic, body in timed]
    shuffled = shuffled_with_resends(draw, ordered, 3)
    return ordered, shuffled, events


def _membership(kind: str, at: datetime, plan: str, sub_id: str, period_end: datetime | None) -> dict:
    return {"idempotency_key": f"{sub_id}-{kind}-{at.isoformat()}", "occurred_at": at.isoformat(),
            "customer": {"email": EMAIL},
            "subscription": {"id": sub_id, "plan": plan, **({"period_end": period_end.isoformat()} if period_end
                                                             else {})}}


def _vip_at(events: list[tuple[str, int]], moment: datetime) -> bool:
    """The VIP membership's rule, told again: active at a moment when its
    newest event by then started, renewed or resumed it and its latest period
    by then (10 days from a start or renewal) plus 3 days' grace has not ended."""
    seen = sorted((JAN + timedelta(hours=hour, minutes=7), _RANKS[kind], kind) for kind, hour in events)
    seen = [(at, kind) for at, _, kind in seen if at <= moment]
    if not seen or seen[-1][1] in ("paused", "cancelled"):
        return False
    period_end = max(at for at, kind in seen if kind in ("started", "renewed")) + timedelta(days=10)
    return moment <= period_end + timedelta(days=3)


_RANKS = {"started": 0, "renewed": 1, "resumed": 2, "paused": 3, "cancelled": 4}


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=membership_streams())
def test_memberships_multipliers_do_not_depend_on_the_order_deliveries_arrive_in(
    stream, make_engine, tmp_path, _sqlite_template
):
    """PRODUCT.md's invariant 2 for memberships: any reordering and
    duplication of a customer's orders and membership events ends in the same
    points, memberships and multipliers as the stream in time order, and each
    order holds the VIP multiplier exactly when the membership was active at
    its payment."""
    ordered, shuffled, events = stream
    plans = {"vip": {**VIP, "grace_days": 3}, "coffee-club": {"multiplier": 1.5}}
    results = []
    for deliveries in (ordered, shuffled):
        engine = _fresh(make_engine, tmp_path, _sqlite_template, programme(plans),
                        extra_plugins=(("till", MembershipTill()),))
        for channel, topic, body in deliveries:
            outcome = engine.ingest(channel, topic, body)
            assert outcome.status in ("applied", "duplicate"), outcome
        found = summary(engine)
        with engine.db.connect() as conn:
            assert engine.ledger.audit(conn) == []
            paid = {r.external_id: as_utc(r.paid_at) for r in conn.execute(select(orders)).all()}
        results.append((found["points"], sorted(tuple(sorted(m.items())) for m in found["memberships"]),
                        order_multipliers(engine)))
        engine.db.dispose()
    assert results[1] == results[0]
    for external_id, multipliers in results[0][2].items():
        assert (["vip membership", "2.0"] in multipliers) == _vip_at(events, paid[external_id]), external_id
