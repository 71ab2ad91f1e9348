"""Balances adjusted by hand (engine/adjustments.py): goodwill points and
corrections with a note, through the engine, the CLI and the dashboard's form;
lots, stamp cards, refusals, request keys, the counters, the outbox, erasure,
and staff taking the same points at once on PostgreSQL."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select

from engine import metrics
from engine.adjustments import LIMIT, NOTE_LIMIT, AdjustmentRefused
from engine.cli import main
from engine.customers import customer_summary
from engine.db.models import ledger_entries, lots, outbox
from engine.jobs import run
from engine.privacy import ERASED_NOTE, erase
from engine.web import create_app
from engine.web.pages.admin import add_user
from tests.conftest import DEFAULT_TABLES
from tests.serving import serve_app
from tests.streams import Line, PlannedOrder, _shopify_order

EMAIL = "jana@example.com"
JAN = datetime(2026, 1, 15, 10, tzinfo=UTC)
TABLES = {
    **DEFAULT_TABLES,
    "rules": {"points": {"per_unit": 1}, "expiry": {"months": 12},
              "stamps": {"coffee": {"required": 3, "per": "order", "reward": "free-coffee"}}},
    "rewards": {"free-coffee": {"kind": "free_product", "sku": "COFFEE-LATTE"},
                "hundred": {"kind": "fixed_amount", "cost": 100, "value": "1.00", "partial": True}},
}


@pytest.fixture
def shop(make_engine):
    return make_engine(tables=TABLES)


def buy(engine, number: int, euros: str, at: datetime = JAN, email: str = EMAIL):
    order = PlannedOrder("shopify", number, email, (Line(Decimal(euros), 1),))
    body = _shopify_order(order, "paid", at, [], False)
    assert engine.ingest("shopify", "orders/paid", json.dumps(body).encode()).status == "applied"


def summary(engine, key=EMAIL) -> dict:
    return customer_summary(engine, key)


def entries(engine, reason="adjust") -> list:
    with engine.db.connect() as conn:
        return conn.execute(select(ledger_entries).where(ledger_entries.c.reason == reason)
                            .order_by(ledger_entries.c.id)).all()


def audit_clean(engine) -> bool:
    with engine.db.connect() as conn:
        return engine.ledger.audit(conn) == []


# -- the engine ---------------------------------------------------------------------------------


def test_points_given_are_one_entry_with_the_note_and_who_and_expire_as_earned_points_do(shop):
    buy(shop, 1, "40.00")
    at = JAN + timedelta(days=30)
    made = shop.adjust(EMAIL, 25, "  late parcel,\n sorry  ", "cli:ana", at=at)
    assert (made.unit, made.amount, made.balance, made.note, made.by, made.duplicate) == (
        "points", 25, 65, "late parcel, sorry", "cli:ana", False)
    assert summary(shop)["points"] == 65
    [entry] = entries(shop)
    assert (entry.amount, entry.reason, entry.rule, entry.detail) == (25, "adjust", None,
                                                                      {"note": "late parcel, sorry", "by": "cli:ana"})
    assert entry.source == entry.key == made.key
    with shop.db.connect() as conn:
        lot = conn.execute(select(lots).where(lots.c.entry_id == entry.id)).one()
    assert (lot.remaining, lot.available_at) == (25, None)  # spendable at once, no return window
    # expires 12 months after it was given, not with the order's January lot
    assert run(shop, "expire", datetime(2027, 1, 16, tzinfo=UTC)) == "40 points expired in 1 lots"
    assert run(shop, "expire", datetime(2027, 2, 14, tzinfo=UTC)) == "0 points expired in 0 lots"
    assert run(shop, "expire", datetime(2027, 2, 15, 11, tzinfo=UTC)) == "25 points expired in 1 lots"
    assert audit_clean(shop)


def test_points_taken_close_the_soonest_expiring_lots_even_one_an_adjustment_gave_later(shop):
    buy(shop, 1, "100.00", JAN)
    shop.adjust(EMAIL, 50, "goodwill", "cli:ana", at=JAN + timedelta(days=60))
    made = shop.adjust(EMAIL, -120, "points given twice by mistake", "cli:ana", at=JAN + timedelta(days=90))
    assert (made.amount, made.balance) == (-120, 30)
    with shop.db.connect() as conn:
        remaining = conn.execute(select(lots.c.remaining).order_by(lots.c.id)).scalars().all()
    assert remaining == [0, 30]  # the January lot first, then the goodwill one
    assert run(shop, "expire", datetime(2027, 1, 16, tzinfo=UTC)) == "0 points expired in 0 lots"
    assert audit_clean(shop)


def test_an_adjustment_never_takes_a_balance_below_zero_and_a_refusal_changes_nothing(shop):
    buy(shop, 1, "30.00")
    with pytest.raises(AdjustmentRefused, match="the balance is 30 points: taking 31 would leave it below zero") as exc:
        shop.adjust(EMAIL, -31, "fraud", "cli:ana")
    assert (exc.value.reason, exc.value.values) == ("below_zero", {"balance": 30})
    assert shop.adjust(EMAIL, -30, "fraud", "cli:ana").balance == 0
    assert summary(shop)["points"] == 0 and len(entries(shop)) == 1


@pytest.mark.parametrize("amount,note,card,key,reason", [
    (0, "why", None, None, "amount"),
    (LIMIT + 1, "why", None, None, "amount"),
    (-LIMIT - 1, "why", None, None, "amount"),
    (True, "why", None, None, "amount"),
    (5, "   \n ", None, None, "note"),
    (5, "x" * (NOTE_LIMIT + 1), None, None, "note"),
    (5, "nul \x00 inside", None, None, "note"),
    (5, "why", "tea", None, "unknown_card"),
    (5, "why", None, "k" * 201, "key"),
    (5, "why", None, "", "key"),
])
def test_bad_requests_are_refused_saying_why_and_change_nothing(shop, amount, note, card, key, reason):
    buy(shop, 1, "30.00")
    with pytest.raises(AdjustmentRefused) as exc:
        shop.adjust(EMAIL, amount, note, "cli:ana", card, key)
    assert exc.value.reason == reason
    assert summary(shop)["points"] == 30 and entries(shop) == []
    with pytest.raises(AdjustmentRefused, match="no customer matches 'nobody@example.com'"):
        shop.adjust("nobody@example.com", 5, "why", "cli:ana")


def test_the_same_key_makes_one_adjustment_and_is_refused_for_another(shop):
    buy(shop, 1, "30.00")
    first = shop.adjust(EMAIL, 10, "goodwill", "admin:owner", idempotency_key="form-1")
    again = shop.adjust(EMAIL, 10, "goodwill, sent twice", "admin:owner", idempotency_key="form-1")
    assert (again.duplicate, again.balance, again.note, again.key) == (True, 40, "goodwill", first.key)
    with pytest.raises(AdjustmentRefused, match="already used for another adjustment"):
        shop.adjust(EMAIL, 11, "goodwill", "admin:owner", idempotency_key="form-1")
    buy(shop, 2, "20.00", email="petr@example.com")
    with pytest.raises(AdjustmentRefused, match="already used for another adjustment"):
        shop.adjust("petr@example.com", 10, "goodwill", "admin:owner", idempotency_key="form-1")
    assert summary(shop)["points"] == 40 and len(entries(shop)) == 1


def test_stamps_given_fill_the_card_which_issues_its_reward_and_stamps_taken_stop_at_zero(shop):
    buy(shop, 1, "5.00")  # one stamp (per order)
    made = shop.adjust(EMAIL, 4, "stamps the till forgot", "cli:ana", card="coffee")
    assert (made.unit, made.balance) == ("stamps:coffee", 2)  # 5 stamps: a full card of 3, 2 carried over
    after = summary(shop)
    assert after["stamps"] == {"coffee": 2}
    assert [r["reward"] for r in after["rewards"]] == ["free-coffee"]
    assert after["points"] == 5  # points untouched
    with pytest.raises(AdjustmentRefused, match="the balance is 2 stamps on the coffee card"):
        shop.adjust(EMAIL, -3, "too many", "cli:ana", card="coffee")
    assert shop.adjust(EMAIL, -2, "a stamp given twice", "cli:ana", card="coffee").balance == 0
    assert audit_clean(shop)


def test_the_counters_count_adjustments_as_points_issued_in_no_channel_and_the_shops_hear_of_them(shop, monkeypatch):
    shop.ensure_schema()
    metrics.ensure_built(shop)
    buy(shop, 1, "30.00", datetime(2026, 3, 2, 9, tzinfo=UTC))
    shop.adjust(EMAIL, 20, "goodwill", "cli:ana", at=datetime(2026, 3, 5, 9, tzinfo=UTC))
    shop.adjust(EMAIL, -5, "correction", "cli:ana", at=datetime(2026, 4, 5, 9, tzinfo=UTC))
    start, end = date(2026, 3, 1), date(2026, 4, 30)
    issued = dict(metrics.series(shop, "points_issued", start, end))
    assert issued == {date(2026, 3, 1): 50, date(2026, 4, 1): -5}
    assert dict(metrics.series(shop, "points_issued", start, end, channel="shopify")) == {
        date(2026, 3, 1): 30, date(2026, 4, 1): 0}
    names = [m.name for m in metrics.METRICS]
    counted = metrics.compute(shop, names, start, end, None)
    metrics.rebuild(shop)
    assert metrics.compute(shop, names, start, end, None) == counted


def test_an_adjustment_queues_the_balance_for_the_shops(make_engine, monkeypatch):
    monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", "shpat_test")
    engine = make_engine(tables=TABLES)
    buy(engine, 1, "30.00")
    with engine.db.begin() as conn:
        conn.execute(outbox.delete())
    engine.adjust(EMAIL, 5, "goodwill", "cli:ana")
    with engine.db.connect() as conn:
        queued = conn.execute(select(outbox.c.kind, outbox.c.channel, outbox.c.customer_id)).all()
    assert [(kind, channel) for kind, channel, _ in queued] == [("customer.sync", "shopify")]


def test_erasure_replaces_the_notes_of_adjustments_and_keeps_the_amounts(shop):
    buy(shop, 1, "30.00")
    shop.adjust(EMAIL, 7, "Jana called from +420 601 123 456", "cli:ana")
    done = erase(shop, EMAIL, datetime.now(UTC))
    assert done["adjustment_notes"] == 1
    [entry] = entries(shop)
    assert (entry.amount, entry.detail) == (7, {"note": ERASED_NOTE, "by": "cli:ana"})
    assert audit_clean(shop)


def test_two_staff_taking_the_same_points_at_once_take_them_once_on_postgresql(make_engine, postgres_url):
    engine = make_engine(tables=TABLES, url=postgres_url)
    buy(engine, 1, "100.00")
    engine.db.dispose()

    def attempt(n):
        try:
            return engine.adjust(EMAIL, -70, f"correction {n}", "cli:ana").balance
        except AdjustmentRefused as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(attempt, range(6)))
    assert [r for r in results if isinstance(r, int)] == [30]
    assert all(isinstance(r, AdjustmentRefused) and r.reason == "below_zero" for r in results if not isinstance(r, int))
    assert summary(engine)["points"] == 30 and audit_clean(engine)


# -- the CLI ----------------------------------------------------------------------------------------


def test_the_adjust_command(shop, tmp_path, monkeypatch):
    buy(shop, 1, "30.00")
    monkeypatch.setattr("engine.cli.Context.engine", shop)
    runner = CliRunner()
    monkeypatch.setattr("getpass.getuser", lambda: "ana")
    out = runner.invoke(main, ["customer", "adjust", EMAIL, "-10", "--note", "a correction"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == f"{EMAIL}: -10 points (a correction); balance now 20"
    out = runner.invoke(main, ["customer", "adjust", EMAIL, "4", "--note", "forgotten", "--card", "coffee",
                               "--key", "k1", "--json"])
    assert out.exit_code == 0, out.output
    made = json.loads(out.output)
    assert {k: made[k] for k in ("unit", "amount", "balance", "by", "duplicate")} == {
        "unit": "stamps:coffee", "amount": 4, "balance": 2, "by": "cli:ana", "duplicate": False}
    out = runner.invoke(main, ["customer", "adjust", EMAIL, "4", "--note", "forgotten", "--card", "coffee",
                               "--key", "k1"])
    assert out.exit_code == 0 and "already done with key k1" in out.output
    out = runner.invoke(main, ["customer", "adjust", EMAIL, "-21", "--note", "too much"])
    assert out.exit_code == 1 and "refused: the balance is 20 points: taking 21" in out.output
    out = runner.invoke(main, ["customer", "adjust", EMAIL, "5"])
    assert out.exit_code == 2 and "Missing option '--note'" in out.output
    out = runner.invoke(main, ["customer", "adjust", EMAIL, "five", "--note", "x"])
    assert out.exit_code == 2 and "'five' is not a valid integer" in out.output
    assert summary(shop)["points"] == 20


# -- the dashboard ------------------------------------------------------------------------------------


def test_the_customer_page_adjusts_once_per_form_and_says_why_it_refuses(shop, monkeypatch):
    monkeypatch.setenv("REGULARS_SECRET_KEY", "admin test key")
    from tests.test_page_admin import PASSWORD, _csrf, signed_in

    buy(shop, 1, "30.00")
    customer_id = summary(shop)["id"]
    add_user(shop, "owner", PASSWORD)
    with serve_app(create_app(shop, secrets={}, background=False)) as base:
        session = signed_in(base)
        page = session.get(f"{base}/admin/customers/{customer_id}").text
        assert '<option value="stamps:coffee">' in page
        key = _key(page)
        form = {"csrf": _csrf(page), "key": key, "unit": "points", "amount": "15", "note": "a late parcel"}
        answer = session.post(f"{base}/admin/customers/{customer_id}/adjust", data=form)
        assert "Adjusted points by +15. The balance is now 45." in answer.text
        assert "a late parcel" in answer.text and "(admin:owner)" in answer.text  # the ledger's line
        assert _key(answer.text) != key  # the page comes back with a new form
        again = session.post(f"{base}/admin/customers/{customer_id}/adjust", data=form)  # sent twice
        assert "This adjustment was already made; nothing changed. The balance is 45." in again.text
        refused = session.post(f"{base}/admin/customers/{customer_id}/adjust",
                               data={**form, "key": _key(again.text), "amount": "-46"})
        assert "The balance is 45: taking that much would leave it below zero." in refused.text
        for amount in ("", "ten", "0"):
            bad = session.post(f"{base}/admin/customers/{customer_id}/adjust",
                               data={**form, "key": _key(again.text), "amount": amount})
            assert "Give a whole number other than 0, at most 1,000,000 either way." in bad.text
        for unit in ("beans", "stamps:tea"):  # not on the form: refused, not taken for points
            forged = session.post(f"{base}/admin/customers/{customer_id}/adjust",
                                  data={**form, "key": _key(again.text), "unit": unit})
            assert "There is no such stamp card." in forged.text
        blank = session.post(f"{base}/admin/customers/{customer_id}/adjust",
                             data={**form, "key": _key(again.text), "note": " "})
        assert "Say why in the note (at most 500 characters)." in blank.text
        czech = session.post(f"{base}/admin/customers/{customer_id}/adjust", headers={"Accept-Language": "cs"},
                             data={**form, "key": _key(again.text), "unit": "stamps:coffee", "amount": "2"})
        assert "Účet stamps:coffee upraven o +2." in czech.text and "ruční úprava" in czech.text
        forged = requests.post(f"{base}/admin/customers/{customer_id}/adjust", cookies=session.cookies,
                               data={**form, "csrf": "forged", "key": "other"}, allow_redirects=False)
        assert forged.status_code == 403
        # every adjustment, newest first, on a page of its own
        listed = session.get(f"{base}/admin/adjustments").text
        rows = re.findall(r"<tr><td>.*?</tr>", listed, re.S)
        assert len(rows) == 2 and "stamps:coffee" in rows[0] and "+2" in rows[0]
        assert "a late parcel" in rows[1] and "+15" in rows[1] and "admin:owner" in rows[1]
        assert f'href="/admin/customers/{customer_id}"' in rows[1]
        assert requests.get(f"{base}/admin/adjustments", allow_redirects=False).status_code == 303  # signed out
    assert summary(shop)["points"] == 45 and summary(shop)["stamps"] == {"coffee": 0}
    assert [e.detail["by"] for e in entries(shop)] == ["admin:owner", "admin:owner"]


def _key(html: str) -> str:
    found = re.search(r'name="key" value="([^"]+)"', html)
    assert found, "no adjustment form on the page"
    return found.group(1)
