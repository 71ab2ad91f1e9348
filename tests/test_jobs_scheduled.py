"""The scheduled jobs `subscription-check` and `reconcile` (engine/jobs.py):
memberships lapse once their paid period plus the plan's grace_days is over,
only for plans that set grace_days; a lapsed membership earns no multiplier; a
late renewal that brings a later period brings it back, whatever order the
events and the job came in; running a job twice changes nothing more; the
reconcile job fetches the last two days of orders from each shop with
credentials, skips one without, reports one that is down and fails only when
every shop it tried failed."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from engine.cli import main
from engine.config import ConfigError
from engine.db.models import accounts, subscriptions
from engine.jobs import JOBS, JobFailed, run
from engine.rules_api import SubscriptionPlan
from tests.conftest import DEFAULT_TABLES, empty_database
from tests.fakes.shopify import FakeShopify
from tests.fakes.shopify import make_orders as shopify_orders
from tests.fakes.woocommerce import FakeWoo
from tests.serving import free_port
from tests.test_subscriptions import (
    EMAIL,
    T0,
    VIP,
    MembershipTill,
    memberships,
    points,
    programme,
    sale,
    subscription,
    summary,
)

GRACE = 3
P1 = T0 + timedelta(days=30)  # the end of the first paid period
#: just after the first period's grace is over
LAPSE = P1 + timedelta(days=GRACE, seconds=1)


@pytest.fixture
def shop(make_engine):
    """vip lapses 3 days after its period; coffee-club (x1.5) never does."""
    plans = {"vip": {**VIP, "grace_days": GRACE}, "coffee-club": {"multiplier": 1.5}}
    return make_engine(tables=programme(plans), extra_plugins=(("till", MembershipTill()),))


def check(engine, at: datetime) -> str:
    return run(engine, "subscription-check", at)


def membership(engine, sub_id: str = "S1") -> dict:
    return next(m for m in summary(engine)["memberships"] if m["id"] == sub_id)


def rows(engine, leave_out: tuple[str, ...] = ()) -> list[tuple]:
    """Every stored column of every subscription (updated_at included), but
    those left out."""
    with engine.db.connect() as conn:
        return [tuple(v for k, v in r._mapping.items() if k not in leave_out)
                for r in conn.execute(select(subscriptions).order_by(subscriptions.c.id))]


def active_plans(engine) -> tuple[str, ...]:
    with engine.db.connect() as conn:
        customer_id = engine.identity.find(conn, EMAIL)
        return engine.subscriptions.active_plans(conn, customer_id)


# -- subscription-check: when a membership lapses ----------------------------------


def test_both_jobs_are_in_the_jobs_table():
    assert JOBS["subscription-check"].__name__ == "check_subscriptions"
    assert JOBS["reconcile"].__name__ == "reconcile_shops"


def test_a_membership_lapses_once_its_period_and_the_grace_are_over_not_before(shop):
    subscription(shop, "started", T0, period_end=P1)
    assert check(shop, P1) == "0 memberships lapsed"
    assert check(shop, P1 + timedelta(days=GRACE)) == "0 memberships lapsed"  # the last day of grace
    assert memberships(shop) == [("vip", "active")] and active_plans(shop) == ("vip",)

    assert check(shop, LAPSE) == "1 memberships lapsed"
    lapsed = membership(shop)
    assert (lapsed["status"], lapsed["status_since"]) == ("lapsed", LAPSE.isoformat())
    assert (lapsed["since"], lapsed["period_end"]) == (T0.isoformat(), P1.isoformat())
    assert active_plans(shop) == ()
    assert points(shop) == 50  # the start points stay


def test_a_renewal_before_the_check_keeps_the_membership_active(shop):
    subscription(shop, "started", T0, period_end=P1)
    subscription(shop, "renewed", P1, period_end=P1 + timedelta(days=30))
    assert check(shop, LAPSE) == "0 memberships lapsed"
    assert memberships(shop) == [("vip", "active")]


def test_a_plan_without_grace_days_never_lapses(shop):
    subscription(shop, "started", T0, plan="coffee-club", sub_id="C1", period_end=P1)
    assert check(shop, P1 + timedelta(days=3650)) == "0 memberships lapsed"
    assert memberships(shop) == [("coffee-club", "active")]


def test_without_any_grace_days_the_job_says_so_and_changes_nothing(make_engine):
    engine = make_engine(tables=programme(), extra_plugins=(("till", MembershipTill()),))
    subscription(engine, "started", T0, period_end=P1)
    before = rows(engine)
    assert check(engine, P1 + timedelta(days=3650)) == "no lapses: no [rules.subscriptions.<plan>] sets grace_days"
    assert rows(engine) == before and memberships(engine) == [("vip", "active")]


def test_a_membership_without_a_period_never_lapses(shop):
    subscription(shop, "started", T0)
    assert check(shop, T0 + timedelta(days=3650)) == "0 memberships lapsed"
    assert memberships(shop) == [("vip", "active")]


def test_paused_and_cancelled_memberships_are_left_as_they_are(shop):
    subscription(shop, "started", T0, period_end=P1)
    subscription(shop, "paused", T0 + timedelta(days=5))
    subscription(shop, "started", T0, plan="vip", sub_id="S2", period_end=P1)
    subscription(shop, "cancelled", T0 + timedelta(days=6), sub_id="S2")
    assert check(shop, LAPSE) == "0 memberships lapsed"
    assert sorted(memberships(shop)) == [("vip", "cancelled"), ("vip", "paused")]


def test_grace_days_zero_lapses_right_after_the_period(make_engine):
    engine = make_engine(tables=programme({"vip": {**VIP, "grace_days": 0}}),
                         extra_plugins=(("till", MembershipTill()),))
    subscription(engine, "started", T0, period_end=P1)
    assert check(engine, P1) == "0 memberships lapsed"
    assert check(engine, P1 + timedelta(microseconds=1)) == "1 memberships lapsed"


def test_only_the_memberships_past_their_grace_lapse(shop):
    subscription(shop, "started", T0, period_end=P1)
    subscription(shop, "started", T0, sub_id="S2", email="other@example.com", period_end=P1 + timedelta(days=10))
    subscription(shop, "started", T0, plan="coffee-club", sub_id="C1", period_end=P1)
    assert check(shop, LAPSE) == "1 memberships lapsed"
    assert [(m["id"], m["status"]) for m in summary(shop)["memberships"]] == [("S1", "lapsed"), ("C1", "active")]
    with shop.db.connect() as conn:
        statuses = dict(conn.execute(select(subscriptions.c.external_id, subscriptions.c.status)).all())
    assert statuses == {"S1": "lapsed", "S2": "active", "C1": "active"}


def test_running_the_check_twice_changes_nothing_more(shop):
    subscription(shop, "started", T0, period_end=P1)
    assert check(shop, LAPSE) == "1 memberships lapsed"
    once = rows(shop)
    assert check(shop, LAPSE) == "0 memberships lapsed"
    assert check(shop, LAPSE + timedelta(days=1)) == "0 memberships lapsed"
    assert rows(shop) == once


# -- subscription-check: the multiplier ----------------------------------------------


def test_the_multiplier_stops_for_orders_after_the_lapse(shop):
    subscription(shop, "started", T0, period_end=P1)
    sale(shop, 1, "10.00", P1 + timedelta(days=1))  # in the grace: still x2
    assert points(shop) == 50 + 20
    check(shop, LAPSE)
    sale(shop, 2, "10.00", LAPSE + timedelta(hours=1))
    assert points(shop) == 50 + 20 + 10
    # the other plan of the same customer, without grace_days, keeps its x1.5;
    # it began before both orders, so they earn it too once its start arrives
    subscription(shop, "started", T0, plan="coffee-club", sub_id="C1", period_end=P1)
    assert points(shop) == 50 + 30 + 15
    check(shop, LAPSE + timedelta(days=1))
    sale(shop, 3, "10.00", LAPSE + timedelta(days=2))
    assert points(shop) == 50 + 30 + 15 + 15


def test_a_lapsed_order_keeps_its_multiplier_for_its_refund(shop):
    subscription(shop, "started", T0, period_end=P1)
    sale(shop, 1, "30.00", P1)
    check(shop, LAPSE)
    sale(shop, 1, "30.00", LAPSE + timedelta(hours=1), refunds=(("r1", "10.00"),))
    assert points(shop) == 50 + 40  # 20.00 standing, still x2 as awarded


# -- subscription-check: late events -------------------------------------------------


def test_a_late_renewal_with_a_later_period_makes_it_active_again(shop):
    subscription(shop, "started", T0, period_end=P1)
    check(shop, LAPSE)
    # the renewal happened at the end of the first period; it arrives after the check
    renewal = subscription(shop, "renewed", P1, period_end=P1 + timedelta(days=30))
    assert (renewal.status, renewal.entries) == ("applied", 1)
    again = membership(shop)
    assert (again["status"], again["status_since"]) == ("active", P1.isoformat())
    assert again["period_end"] == (P1 + timedelta(days=30)).isoformat()
    assert active_plans(shop) == ("vip",)
    sale(shop, 1, "10.00", LAPSE + timedelta(hours=1))
    assert points(shop) == 50 + 100 + 20


def test_a_stale_event_with_a_later_period_revives_it_to_the_newest_events_status(shop):
    subscription(shop, "started", T0, period_end=P1)
    subscription(shop, "resumed", T0 + timedelta(days=20))  # the newest event
    check(shop, LAPSE)
    # an older renewal whose period was never seen
    subscription(shop, "renewed", T0 + timedelta(days=10), period_end=P1 + timedelta(days=30))
    again = membership(shop)
    assert (again["status"], again["status_since"]) == ("active", (T0 + timedelta(days=20)).isoformat())


def test_a_stale_renewal_that_brings_no_later_period_leaves_it_lapsed(shop):
    subscription(shop, "started", T0, period_end=T0 + timedelta(days=15))
    subscription(shop, "renewed", T0 + timedelta(days=15), period_end=P1)
    check(shop, LAPSE)
    kept = ("history", "updated_at")  # (the history keeps every event, these two as well)
    before = rows(shop, leave_out=kept)
    subscription(shop, "renewed", T0 + timedelta(days=15), period_end=P1, key="resent")  # the same period again
    subscription(shop, "renewed", T0 + timedelta(days=5), period_end=T0 + timedelta(days=20))  # an older one
    assert memberships(shop) == [("vip", "lapsed")]
    assert rows(shop, leave_out=kept) == before


def test_a_newer_event_without_a_later_period_leaves_it_lapsed(shop):
    subscription(shop, "started", T0, period_end=P1)
    at = P1 + timedelta(days=10)
    check(shop, at)
    subscription(shop, "resumed", at + timedelta(hours=1))  # no period: nothing paid beyond P1
    subscription(shop, "renewed", at + timedelta(hours=2), key="renewal-without-a-period")
    m = membership(shop)
    assert (m["status"], m["status_since"]) == ("lapsed", at.isoformat())
    # a later period whose grace was also over when the check ran: the check would have lapsed it too
    subscription(shop, "renewed", P1, period_end=P1 + timedelta(days=5))
    assert memberships(shop) == [("vip", "lapsed")]
    # one that ran past the check: it was premised on a period that was not the latest
    subscription(shop, "renewed", P1 + timedelta(days=5), period_end=P1 + timedelta(days=35))
    m = membership(shop)
    assert (m["status"], m["status_since"]) == ("active", (at + timedelta(hours=2)).isoformat())
    assert check(shop, at) == "0 memberships lapsed"


def test_a_newer_event_moving_it_to_a_plan_without_grace_makes_it_active(shop):
    subscription(shop, "started", T0, period_end=P1)
    check(shop, LAPSE)
    subscription(shop, "renewed", LAPSE + timedelta(hours=1), plan="coffee-club", key="switch")
    assert memberships(shop) == [("coffee-club", "active")]


def test_a_cancellation_or_pause_after_the_lapse_wins_as_usual(shop):
    subscription(shop, "started", T0, period_end=P1)
    check(shop, LAPSE)
    subscription(shop, "paused", T0 + timedelta(days=10))  # newer than the start, older than the lapse
    assert memberships(shop) == [("vip", "paused")]
    subscription(shop, "cancelled", T0 + timedelta(days=40))
    assert memberships(shop) == [("vip", "cancelled")]
    # a late renewal does not undo a newer cancellation
    subscription(shop, "renewed", P1, period_end=P1 + timedelta(days=30))
    assert memberships(shop) == [("vip", "cancelled")] and active_plans(shop) == ()


def test_a_cancellation_older_than_the_newest_event_leaves_it_lapsed(shop):
    subscription(shop, "started", T0, period_end=T0 + timedelta(days=1))
    subscription(shop, "renewed", T0 + timedelta(days=1), period_end=P1)
    check(shop, LAPSE)
    subscription(shop, "cancelled", T0 + timedelta(hours=12))  # before the renewal
    assert memberships(shop) == [("vip", "lapsed")]


SCENARIOS = {
    # the full story ends past the grace: lapsed, whenever the check ran
    "lapses": (T0 + timedelta(days=100), (
        ("started", T0, T0 + timedelta(days=30)),
        ("renewed", T0 + timedelta(days=30), T0 + timedelta(days=60)),
        ("renewed", T0 + timedelta(days=60), T0 + timedelta(days=90)),
    )),
    # the last renewal covers the check: active, even when the check saw only the start
    "renewed in time": (T0 + timedelta(days=65), (
        ("started", T0, T0 + timedelta(days=30)),
        ("renewed", T0 + timedelta(days=30), T0 + timedelta(days=60)),
        ("renewed", T0 + timedelta(days=60), T0 + timedelta(days=90)),
    )),
    "cancelled": (T0 + timedelta(days=65), (
        ("started", T0, T0 + timedelta(days=30)),
        ("renewed", T0 + timedelta(days=30), T0 + timedelta(days=60)),
        ("cancelled", T0 + timedelta(days=62), None),
    )),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_check_anywhere_among_the_events_in_any_order_ends_in_the_same_state(shop, scenario):
    """Events in every order, the check run once among them at the same time:
    the same state as all the events and then the check. (A check before the
    membership is known can't lapse it: there, the next run does.)"""
    at, stream = SCENARIOS[scenario]
    seen = set()
    for order in itertools.permutations(stream):
        for position in range(len(order) + 1):
            empty_database(shop)
            for step, (kind, when, period_end) in enumerate(order):
                if step == position:
                    check(shop, at)
                assert subscription(shop, kind, when, period_end=period_end).status == "applied"
            if position in (0, len(order)):
                check(shop, at)
            m = membership(shop)
            seen.add((points(shop), m["status"], m["since"], m["period_end"], m["status_since"]))
    assert len(seen) == 1, seen
    status = seen.pop()[1]
    assert status == {"lapses": "lapsed", "renewed in time": "active", "cancelled": "cancelled"}[scenario]


# -- subscription-check: configuration and the CLI ---------------------------------------


@pytest.mark.parametrize("value,message", [(-1, "Must be greater than or equal to 0"),
                                           (1.5, "Not a valid integer"), ("7", "Not a valid integer")])
def test_a_wrong_grace_days_is_refused_naming_the_key(make_engine, value, message):
    tables = programme({"vip": {**VIP, "grace_days": value}})
    with pytest.raises(ConfigError, match=rf"\[rules.subscriptions\] vip.grace_days: {message}"):
        make_engine(tables=tables)


def test_a_plan_from_a_plugin_may_set_grace_days_and_is_checked():
    assert SubscriptionPlan("family", grace_days=5).grace_days == 5
    assert SubscriptionPlan("family").grace_days is None
    with pytest.raises(TypeError, match="grace_days"):
        SubscriptionPlan("family", grace_days=-1)


PLUGINS_TOML = f"""
[engine]
currency = "EUR"

[rules.points]
per_unit = 1

[rules.subscriptions.vip]
multiplier = 2.0
renewal_points = 100
start_points = 50
grace_days = {GRACE}
"""


def test_the_cli_runs_the_subscription_check(shop, database_url, tmp_path):
    subscription(shop, "started", T0, period_end=P1)
    config = tmp_path / "cli.toml"
    config.write_text(PLUGINS_TOML, encoding="utf-8")
    runner = CliRunner(env={"REGULARS_DATABASE_URL": database_url, "COLUMNS": "200"})

    def cli(*args):
        return runner.invoke(main, ["--config", str(config), *args])

    early = cli("jobs", "run", "subscription-check", "--at", "2026-02-12T09:00:00")
    assert early.exit_code == 0, early.output
    assert early.output.strip() == "0 memberships lapsed"
    result = cli("jobs", "run", "subscription-check", "--at", "2026-02-13")
    assert (result.exit_code, result.output.strip()) == (0, "1 memberships lapsed")
    again = cli("jobs", "run", "subscription-check", "--at", "2026-02-14")
    assert (again.exit_code, again.output.strip()) == (0, "0 memberships lapsed")
    shown = cli("customer", "show", EMAIL, "--json")
    assert [m["status"] for m in json.loads(shown.output)["memberships"]] == ["lapsed"]
    assert "subscription-check" in cli("jobs", "run", "--help").output


# -- reconcile ------------------------------------------------------------------------

CREDENTIALS = ("REGULARS_SHOPIFY_ACCESS_TOKEN", "REGULARS_WOOCOMMERCE_CONSUMER_KEY",
               "REGULARS_WOOCOMMERCE_CONSUMER_SECRET")
#: the fake shops' orders are updated from 2024-05-01 09:00 on, an hour apart
NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_shop_credentials(monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)


def paid_shopify_orders(count: int) -> list[dict]:
    orders = shopify_orders(count)
    for order in orders:  # paid, not test orders, so they earn
        order.update(financial_status="paid", cancelled_at=None, test=False)
    return orders


@pytest.fixture
def shopify(monkeypatch):
    with FakeShopify(orders=paid_shopify_orders(6)) as fake:
        monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", fake.token)
        yield fake


@pytest.fixture
def woo(monkeypatch):
    with FakeWoo(order_count=7) as fake:
        monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", fake.key)
        monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", fake.secret)
        yield fake


def down() -> str:
    """The address of a shop that is down (nothing listens there)."""
    return f"http://127.0.0.1:{free_port()}"


def shops(shopify_url: str | None = None, woo_url: str | None = None) -> dict:
    connectors = {}
    if shopify_url:
        connectors["shopify"] = {"shop": "regulars-test.myshopify.com", "api_url": shopify_url}
    if woo_url:
        connectors["woocommerce"] = {"url": woo_url}
    return {"engine": {"currency": "EUR"}, "rules": {"points": {"per_unit": 1}}, "connectors": connectors}


def balances(engine) -> dict:
    with engine.db.connect() as conn:
        return {(r.customer_id, r.unit): r.balance for r in conn.execute(select(accounts))}


def reconcile_job(engine, now: datetime = NOW) -> str:
    return run(engine, "reconcile", now)


def test_the_reconcile_job_brings_the_orders_the_webhooks_missed_and_twice_changes_nothing(make_engine, shopify):
    engine = make_engine(shops(shopify.base_url))
    assert reconcile_job(engine) == "shopify: 6 orders (6 applied)"
    once = balances(engine)
    assert once and sum(once.values()) > 0
    assert reconcile_job(engine) == "shopify: 6 orders (6 duplicate)"
    assert balances(engine) == once
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []

    # the same balances as if every order had come by webhook, once
    fresh = make_engine(shops(shopify.base_url), url=f"sqlite:///{engine.config.base_dir / 'fresh.sqlite3'}")
    for order in shopify.orders:
        fresh.ingest("shopify", "orders/paid", json.dumps(order).encode())
    assert sorted(balances(fresh).values()) == sorted(once.values())


def test_the_reconcile_job_fetches_the_last_two_days(make_engine, shopify):
    engine = make_engine(shops(shopify.base_url))
    # orders updated at 09:00 ... 14:00 on May 1st; two days before May 3rd 11:30
    assert reconcile_job(engine, datetime(2024, 5, 3, 11, 30, tzinfo=UTC)) == "shopify: 3 orders (3 applied)"
    first = [r.query for r in shopify.requests if r.path.endswith("/orders.json")][0]
    assert first["updated_at_min"].startswith("2024-05-01T11:30:00")


def test_the_reconcile_job_does_both_shops(make_engine, shopify, woo):
    engine = make_engine(shops(shopify.base_url, woo.url))
    assert reconcile_job(engine) == "shopify: 6 orders (6 applied); woocommerce: 7 orders (7 applied)"
    assert reconcile_job(engine) == "shopify: 6 orders (6 duplicate); woocommerce: 7 orders (7 duplicate)"


def test_a_shop_without_credentials_is_skipped_not_an_error(make_engine, shopify, monkeypatch):
    engine = make_engine(shops(shopify.base_url, "https://shop.example"))
    assert reconcile_job(engine) == "shopify: 6 orders (6 applied); woocommerce skipped (no credentials)"
    asked = len(shopify.requests)
    monkeypatch.delenv("REGULARS_SHOPIFY_ACCESS_TOKEN")
    assert reconcile_job(engine) == "shopify skipped (no credentials); woocommerce skipped (no credentials)"
    assert len(shopify.requests) == asked


def test_without_a_shop_the_reconcile_job_has_nothing_to_do(make_engine):
    engine = make_engine({**DEFAULT_TABLES, "connectors": {}})
    assert reconcile_job(engine) == (
        "nothing to reconcile: no [connectors.shopify] or [connectors.woocommerce] table")


def test_a_shop_that_is_down_does_not_stop_the_other(make_engine, woo, monkeypatch):
    monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", "shpat_x")
    engine = make_engine(shops(down(), woo.url))  # shopify, tried first, is down
    summary_line = reconcile_job(engine)
    shopify_part, woo_part = summary_line.split("; ")
    assert shopify_part.startswith("shopify failed: ") and "\n" not in summary_line
    assert "refused" in shopify_part.lower()
    assert woo_part == "woocommerce: 7 orders (7 applied)"


def test_a_shop_answering_errors_is_reported_with_the_first_line(make_engine, shopify, woo):
    shopify.fail_next(503, count=5)
    engine = make_engine(shops(shopify.base_url, woo.url))
    summary_line = reconcile_job(engine)
    assert summary_line.startswith("shopify failed: ") and "503" in summary_line
    assert summary_line.endswith("; woocommerce: 7 orders (7 applied)")
    assert "\n" not in summary_line


def test_when_every_shop_tried_fails_the_job_raises_after_trying_them_all(make_engine, shopify, monkeypatch):
    shopify.fail_next(503, count=5)
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", "ck_x")
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", "cs_x")
    engine = make_engine(shops(shopify.base_url, down()))
    with pytest.raises(JobFailed) as failed:
        reconcile_job(engine)
    message = str(failed.value)
    assert message.startswith("reconcile failed: shopify failed: ") and "503" in message
    assert "; woocommerce failed: " in message and "refused" in message.lower()
    assert "ck_x" not in message and "oauth_signature" not in message  # URLs' query strings left out
    assert "\n" not in message
    assert shopify.requests  # shopify was tried, then woocommerce


def test_one_shop_down_and_the_other_without_credentials_fails_the_job(make_engine, monkeypatch):
    monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", "shpat_x")
    engine = make_engine(shops(down(), "https://shop.example"))
    with pytest.raises(JobFailed, match=r"shopify failed: .*; woocommerce skipped \(no credentials\)"):
        reconcile_job(engine)


def test_the_cli_runs_the_reconcile_job(tmp_path, woo, monkeypatch):
    config = tmp_path / "plugins.toml"
    config.write_text(f'[engine]\ncurrency = "EUR"\n[rules.points]\nper_unit = 1\n'
                      f'[connectors.woocommerce]\nurl = "{woo.url}"\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    for expected in ("7 applied", "7 duplicate"):
        result = CliRunner().invoke(main, ["--config", str(config), "jobs", "run", "reconcile",
                                           "--at", "2024-05-02T12:00:00"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"woocommerce: 7 orders ({expected})"
