"""Points that expire soon, where the customer and the cashier see them: the
customer's JSON (``points_expiring``: per day in the shop's time zone, within
``remind_days``), the card page and the counter."""

from __future__ import annotations

import json
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from engine import customers as summaries
from engine import terminals
from engine.customers import customer_summary, next_expiry
from engine.jobs import run
from engine.ledger import add_months
from engine.links import make_link
from engine.web import create_app
from engine.web.pages.render import Formats
from tests.conftest import DEFAULT_TABLES
from tests.serving import serve_app
from tests.streams import Line, PlannedOrder, _shopify_order
from tests.test_api import call
from tests.test_page_card import TABLES as CARD_TABLES
from tests.test_page_card import customer_id, fetch, serve_shop
from tests.test_page_counter import TABLES as COUNTER_TABLES
from tests.test_page_counter import find, sign_in

EMAIL = "jana@example.com"


def tables(**expiry) -> dict:
    return {**DEFAULT_TABLES, "engine": {**DEFAULT_TABLES["engine"], "timezone": "Europe/Prague"},
            "rules": {"points": {"per_unit": 1}, "expiry": expiry},
            "rewards": {"hundred": {"kind": "fixed_amount", "cost": 100, "value": "1.00", "partial": True}}}


def buy(engine, number: int, euros: str, at: datetime) -> None:
    order = PlannedOrder("shopify", number, EMAIL, (Line(Decimal(euros), 1),))
    body = _shopify_order(order, "paid", at, [], False)
    assert engine.ingest("shopify", "orders/paid", json.dumps(body).encode()).status == "applied"


def expiring(engine, now: datetime, monkeypatch) -> list[dict]:
    monkeypatch.setattr(summaries, "utcnow", lambda: now)
    return customer_summary(engine, EMAIL)["points_expiring"]


def test_points_expiring_are_summed_per_shop_day_within_remind_days(make_engine, monkeypatch):
    engine = make_engine(tables(months=12, remind_days=20))
    buy(engine, 1, "100.00", datetime(2026, 1, 10, 10, tzinfo=UTC))
    buy(engine, 2, "40.00", datetime(2026, 1, 10, 16, tzinfo=UTC))  # the same day in Prague
    buy(engine, 3, "30.00", datetime(2026, 1, 20, 23, 30, tzinfo=UTC))  # 21 January in Prague
    buy(engine, 4, "50.00", datetime(2026, 3, 1, 10, tzinfo=UTC))
    now = datetime(2027, 1, 1, tzinfo=UTC)
    assert expiring(engine, now, monkeypatch) == [{"on": "2027-01-10", "points": 140},
                                                  {"on": "2027-01-21", "points": 30}]
    assert expiring(engine, datetime(2026, 12, 1, tzinfo=UTC), monkeypatch) == []  # none within 20 days
    with engine.db.connect() as conn:  # what the shops are told: the first day, however far off
        assert next_expiry(engine, conn, customer_summary(engine, EMAIL)["id"]) == {"on": "2027-01-10", "points": 140}
    # spending takes the soonest lots first: what is left of them expires
    engine.redeem(EMAIL, "hundred", units=1, at=datetime(2026, 12, 20, tzinfo=UTC))
    assert expiring(engine, now, monkeypatch) == [{"on": "2027-01-10", "points": 40},
                                                  {"on": "2027-01-21", "points": 30}]
    # past its date and not taken by the job yet: still counted, on its day; once taken, gone
    late = datetime(2027, 1, 12, tzinfo=UTC)
    assert expiring(engine, late, monkeypatch)[0] == {"on": "2027-01-10", "points": 40}
    run(engine, "expire", late)
    assert expiring(engine, late, monkeypatch) == [{"on": "2027-01-21", "points": 30}]


def test_without_remind_days_the_window_is_30_days_and_without_expiry_nothing_expires(make_engine, monkeypatch):
    engine = make_engine(tables(months=12))
    buy(engine, 1, "100.00", datetime(2026, 1, 10, 10, tzinfo=UTC))
    assert expiring(engine, datetime(2026, 12, 12, tzinfo=UTC), monkeypatch) == [{"on": "2027-01-10", "points": 100}]
    assert expiring(engine, datetime(2026, 12, 10, tzinfo=UTC), monkeypatch) == []
    forever = make_engine({**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}}})
    buy(forever, 2, "100.00", datetime(2026, 1, 10, 10, tzinfo=UTC))  # (the same database)
    assert expiring(forever, datetime(2027, 1, 9, tzinfo=UTC), monkeypatch) == []
    with forever.db.connect() as conn:
        assert next_expiry(forever, conn, customer_summary(forever, EMAIL)["id"]) is None


def test_the_card_says_which_points_expire_soon(make_engine, monkeypatch):
    card_tables = {**CARD_TABLES, "rules": {**CARD_TABLES["rules"], "expiry": {"months": 1, "remind_days": 40}}}
    for engine, base in serve_shop(make_engine, monkeypatch, card_tables):
        # serve_shop's orders: 20 points paid two days ago, 180 yesterday; a month later
        # they expire on two days (one, when the month's end clamps both to its last day)
        status, _, page = fetch(f"{base}/card/{make_link(engine, customer_id(engine))}")
        assert status == 200
        days = customer_summary(engine, "jana@example.cz")["points_expiring"]
        assert [e["points"] for e in days] in ([20, 180], [200])
        fmt = Formats("en", "EUR")
        first, *later = days
        wanted = f'data-testid="expiring">{first["points"]} points expire on {fmt.date(date.fromisoformat(first["on"]))}'
        if later:
            wanted += f', 180 more by {fmt.date(date.fromisoformat(later[-1]["on"]))}'
        assert wanted + "</div>" in page
        if not later:
            continue
        # once the first lot is past its date and taken, the card speaks of the rest alone
        run(engine, "expire", add_months(datetime.now(UTC) - timedelta(days=2), 1) + timedelta(minutes=1))
        assert customer_summary(engine, "jana@example.cz")["points"] == 180
        _, _, page = fetch(f"{base}/card/{make_link(engine, customer_id(engine))}")
        assert f'data-testid="expiring">180 points expire on {fmt.date(date.fromisoformat(later[0]["on"]))}</div>' in page


@pytest.fixture
def till(make_engine, monkeypatch):
    monkeypatch.setenv("REGULARS_SECRET_KEY", "counter test key")
    engine = make_engine({**COUNTER_TABLES, "rules": {**COUNTER_TABLES["rules"],
                                                      "expiry": {"months": 1, "remind_days": 40}}})
    engine.ensure_schema()
    _, key = terminals.add_terminal(engine.db, "Main Street", "till 1")
    with ExitStack() as stack:
        base = stack.enter_context(serve_app(create_app(engine, secrets={}, background=False)))
        yield engine, base, key


def test_the_counter_tells_the_cashier_which_points_expire_soon(till, browser_page):
    from playwright.sync_api import expect

    engine, base, key = till
    status, _ = call(f"{base}/api/v1/customers", "POST", {"email": "jana@example.cz"}, key, "enrol-jana")
    assert status == 201
    status, answer = call(f"{base}/api/v1/sales", "POST", {
        "id": "s1", "customer": {"email": "jana@example.cz"}, "lines": [{"quantity": 1, "unit_price": "42.00"}]},
        key, "s1")
    assert status == 200
    assert answer["customer"]["points_expiring"] == customer_summary(engine, "jana@example.cz")["points_expiring"]
    [soonest] = answer["customer"]["points_expiring"]
    assert soonest["points"] == 42
    page = browser_page
    sign_in(page, base, key)
    find(page, "jana@example.cz")
    expect(page.locator("#customer-points")).to_have_text("42")
    shown = Formats("en", "EUR").date(date.fromisoformat(soonest["on"]))
    expect(page.locator("#customer-expiring")).to_have_text(f"42 points expire on {shown}")


def test_customer_show_says_which_points_expire_soon(make_engine, monkeypatch):
    from click.testing import CliRunner

    from engine.cli import main

    engine = make_engine(tables(months=12, remind_days=20))
    buy(engine, 1, "100.00", datetime(2026, 1, 10, 10, tzinfo=UTC))
    monkeypatch.setattr("engine.cli.Context.engine", engine)
    monkeypatch.setattr(summaries, "utcnow", lambda: datetime(2027, 1, 1, tzinfo=UTC))
    out = CliRunner().invoke(main, ["customer", "show", EMAIL])
    assert out.exit_code == 0, out.output
    assert [line.split() for line in out.output.splitlines() if line.strip().startswith("expiring")] == [
        ["expiring", "100", "on", "2027-01-10"]]
