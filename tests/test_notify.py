"""Notifications ([notify], engine/notify.py): what happens to a customer's
points and rewards is POSTed, signed, to a receiver on loopback (a real HTTP
server), through the outbox: written with the change, retried, never sent for
work rolled back."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import threading
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine import outbox as ob
from engine.config import ConfigError, config_from_tables
from engine.customers import customer_summary
from engine.db import utcnow
from engine.db.models import outbox
from engine.hookspecs import hookimpl
from tests.conftest import DEFAULT_TABLES, examples
from tests.streams import T0, Line, PlannedOrder, _shopify_order, _shopify_refund, _woo_order
from tests.test_invariants import programmes

SECRET = "a notify secret of some length"
EMAIL = "jana@example.com"


class Receiver:
    """A receiver on loopback: records each request, answers what ``answers`` says (then 200)."""

    def __init__(self):
        self.requests: list[tuple[dict, bytes]] = []
        self.answers: list[tuple[int, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(b"nope" if status >= 300 else b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/regulars"

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.requests]


@pytest.fixture
def receiver():
    found = Receiver()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()


def tables(url: str, **notify) -> dict:
    found = copy.deepcopy(DEFAULT_TABLES)
    found["notify"] = {"url": url, **notify}
    found["rewards"] = {"five-off": {"kind": "fixed_amount", "cost": 20, "value": "5.00"}}
    return found


@pytest.fixture
def shop(make_engine, receiver, monkeypatch):
    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    return make_engine(tables(receiver.url))


def order(engine, number: int = 1, price: str = "40.00", email: str = EMAIL):
    planned = PlannedOrder("shopify", number, email, (Line(Decimal(price), 1),))
    assert engine.ingest("shopify", "orders/paid",
                         json.dumps(_shopify_order(planned, "paid", T0, [], False)).encode()).status == "applied"
    return planned


def deliver(engine, hours: float = 0) -> ob.Report:
    return ob.Deliverer(engine).deliver_due(now=utcnow() + timedelta(hours=hours))


def test_points_and_rewards_are_notified_signed_once_each(shop, receiver):
    planned = order(shop)
    refund = _shopify_refund(planned, 0, Decimal("10.00"), T0 + timedelta(days=1))
    assert shop.ingest("shopify", "refunds/create", json.dumps(refund).encode()).status == "applied"
    shop.redeem(EMAIL, "five-off")
    assert deliver(shop).delivered == 4
    bodies = receiver.bodies()
    card = customer_summary(shop, EMAIL)["card_code"]
    assert [(b["type"], (b.get("change") or {}).get("amount"), (b.get("reward") or {}).get("reward")) for b in bodies] \
        == [("points.changed", 40, None), ("points.changed", -10, None), ("points.changed", -20, None),
            ("reward.issued", None, "five-off")]
    first = bodies[0]
    assert first["customer"]["email"] == EMAIL and first["customer"]["card_code"] == card
    order_id = _shopify_order(planned, "paid", T0, [], False)["id"]
    assert first["change"] == {"amount": 40, "reason": "order", "source": f"order:shopify:{order_id}"}
    assert first["balance"] == 10  # (when sent)
    assert first["occurred_at"].startswith(T0.date().isoformat())
    assert bodies[3]["reward"]["kind"] == "fixed_amount" and bodies[3]["reward"]["value"] == "5"
    for headers, body in receiver.requests:
        signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
        assert headers["X-Regulars-Hmac-Sha256"] == signature
        assert headers["X-Regulars-Event"] == json.loads(body)["type"]
        assert headers["X-Regulars-Id"] == json.loads(body)["id"]
    assert len({b["id"] for b in bodies}) == 4
    assert deliver(shop, hours=3).delivered == 0 and len(receiver.requests) == 4  # nothing twice
    # the same delivery again: a duplicate, no new notification
    assert shop.ingest("shopify", "orders/paid",
                       json.dumps(_shopify_order(planned, "paid", T0, [], False)).encode()).status == "duplicate"
    assert deliver(shop).delivered == 0


def test_a_receiver_that_fails_gets_it_later_and_a_refusal_is_kept_as_failed(shop, receiver):
    receiver.answers = [(503, {}), (429, {"Retry-After": "60"})]
    order(shop)
    assert deliver(shop).retrying == 1
    assert deliver(shop, hours=2).retrying == 1
    assert deliver(shop, hours=4).delivered == 1
    assert [b["id"] for b in receiver.bodies()] == [receiver.bodies()[0]["id"]] * 3  # the same notification
    receiver.answers = [(410, {})]
    order(shop, number=2, price="5.00")
    report = deliver(shop, hours=6)
    assert report.failed == 1 and "410" in report.errors[0]
    with shop.db.connect() as conn:
        failed = conn.execute(select(outbox.c.last_error).where(outbox.c.status == ob.FAILED)).scalar_one()
    assert "the receiver answered 410: nope" in failed


def test_a_redirect_is_not_followed_and_says_where(shop, receiver):
    receiver.answers = [(301, {"Location": "https://elsewhere.example/hook"})]
    order(shop)
    report = deliver(shop)
    assert report.failed == 1 and "301 to https://elsewhere.example/hook" in report.errors[0]
    assert len(receiver.requests) == 1


def test_an_unreachable_receiver_is_retried(make_engine, monkeypatch):
    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    engine = make_engine(tables("http://127.0.0.1:9/nobody-listens"))
    order(engine)
    report = deliver(engine)
    assert report.retrying == 1 and "can't be reached" in report.errors[0]


class Broken:
    @hookimpl
    def regulars_order_awards(self, order, customer):  # noqa: ARG002
        if order.external_id == "bad":
            raise RuntimeError("no")
        return None


def test_work_rolled_back_is_never_notified_and_a_merge_is_not_a_change(make_engine, receiver, monkeypatch):
    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    engine = make_engine(tables(receiver.url, events=["points.changed"]), extra_plugins=(("broken", Broken()),))
    good = PlannedOrder("shopify", 1, EMAIL, (Line(Decimal("40.00"), 1),))
    bad = _shopify_order(PlannedOrder("shopify", 2, EMAIL, (Line(Decimal("9.00"), 1),)), "paid", T0, [], False)
    bad["id"] = "bad"
    outcomes = engine.ingest_batch("shopify", [
        ("orders/paid", json.dumps(_shopify_order(good, "paid", T0, [], False)).encode(), None),
        ("orders/paid", json.dumps(bad).encode(), None)])
    assert [o.status for o in outcomes] == ["applied", "failed"]
    # Two records of one person joined: their points move, nothing changed for them.
    other = PlannedOrder("woocommerce", 3, "jana.other@example.com", (Line(Decimal("5.00"), 1),))
    engine.ingest("woocommerce", "order.updated", json.dumps(_woo_order(other, "processing", T0, [])).encode())
    keep, gone = customer_summary(engine, EMAIL)["id"], customer_summary(engine, "jana.other@example.com")["id"]
    with engine.db.begin() as conn:
        engine.identity.merge(conn, keep=keep, gone=gone, at=T0 + timedelta(days=1))
    engine.redeem(EMAIL, "five-off")  # reward.issued is not asked for
    deliver(engine)
    assert [(b["type"], b["change"]["amount"]) for b in receiver.bodies()] == [
        ("points.changed", 40), ("points.changed", 5), ("points.changed", -20)]


@pytest.mark.parametrize(("notify", "env", "says"), [
    ({"url": "https://hooks.example/x"}, {}, "set REGULARS_NOTIFY_SECRET to a random string"),
    ({"url": "https://hooks.example/x"}, {"REGULARS_NOTIFY_SECRET": "short"}, "(the one set is shorter)"),
    ({"url": "ftp://hooks.example/x"}, {"REGULARS_NOTIFY_SECRET": SECRET}, "url: an http:// or https:// URL"),
    ({"url": "https://h.example", "events": ["points.spent"]}, {"REGULARS_NOTIFY_SECRET": SECRET},
     "events.0: Must be one of: points.changed, stamps.changed, reward.issued, points.expiring, tier.changed."),
    ({"url": "https://h.example", "emails": True}, {"REGULARS_NOTIFY_SECRET": SECRET}, "emails: unknown key"),
    ({}, {"REGULARS_NOTIFY_SECRET": SECRET}, "url: Missing data for required field."),
])
def test_a_wrong_notify_table_stops_the_start_saying_what_is_wrong(tmp_path, notify, env, says):
    with pytest.raises(ConfigError) as raised:
        config_from_tables({**DEFAULT_TABLES, "notify": notify}, tmp_path / "plugins.toml", env=env)
    assert "[notify]" in str(raised.value) and says in str(raised.value)


def test_the_dashboard_lists_what_was_refused_and_sends_it_again(shop, receiver, monkeypatch):
    """/admin/outbox: a notification the receiver refused is listed with its
    answer; "Send again" makes it due, and it goes once the receiver takes it.
    One being retried (the receiver down) is listed with its next try."""
    from engine.web import create_app
    from engine.web.pages.admin import add_user
    from tests.serving import serve_app
    from tests.test_page_admin import PASSWORD, _csrf, signed_in

    monkeypatch.setenv("REGULARS_SECRET_KEY", "admin test key")
    add_user(shop, "owner", PASSWORD)
    receiver.answers = [(410, {}), (503, {})]
    order(shop)
    assert deliver(shop).failed == 1
    order(shop, number=2, price="3.00")
    assert deliver(shop).retrying == 1
    with serve_app(create_app(shop, secrets={}, background=False)) as base:
        session = signed_in(base)
        overview = session.get(f"{base}/admin/").text  # said at the top of the overview, with a link
        assert re.search(r'<a href="/admin/outbox">1 update was refused by a shop or your \[notify\] receiver.</a>',
                         overview)
        page = session.get(f"{base}/admin/outbox")
        assert page.status_code == 200
        refused = re.search(r'<section class="panel" aria-labelledby="failed-title">(.*?)</section>', page.text, re.S)[1]
        assert "notification" in refused and "the receiver answered 410: nope" in refused
        retrying = re.search(r'aria-labelledby="retrying-title">(.*?)</section>', page.text, re.S)[1]
        assert "the receiver answered 503" in retrying
        [row_id] = re.findall(r'action="/admin/outbox/(\d+)/retry"', page.text)
        answer = session.post(f"{base}/admin/outbox/{row_id}/retry", data={"csrf": _csrf(page.text)})
        assert "1 row will be sent again in a moment." in answer.text and "Nothing refused." in answer.text
        assert session.post(f"{base}/admin/outbox/retry", data={"csrf": "forged"}).status_code == 403
        assert 'id="trouble"' not in session.get(f"{base}/admin/").text  # nothing refused now
    assert deliver(shop).delivered == 1
    assert [b["change"]["amount"] for b in receiver.bodies()] == [40, 3, 40]


def test_points_about_to_expire_are_notified_once_with_the_reminder(make_engine, receiver, monkeypatch):
    from datetime import UTC, datetime

    from engine.jobs import run

    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    found = tables(receiver.url, events=["points.expiring"])
    found["rules"] = {**found["rules"], "expiry": {"months": 12, "remind_days": 30}}
    engine = make_engine(found)
    order(engine)  # paid on T0: its 40 points expire a year later
    at = datetime(2027, 2, 15, 9, tzinfo=UTC)
    assert run(engine, "expiry-reminders", at) == "1 customers reminded"
    assert run(engine, "expiry-reminders", at) == "0 customers reminded"  # each lot once
    assert deliver(engine).delivered == 1
    [body] = receiver.bodies()
    assert body["type"] == "points.expiring" and body["occurred_at"] == at.isoformat()
    assert body["expiring"] == {"points": 40, "expires_at": "2027-03-01T09:00:00+00:00"}
    assert body["customer"]["email"] == EMAIL and body["balance"] == 40


def feed_in_batches(engine, stream: list, batch: int) -> None:
    """``stream`` (channel, topic, body) through ``ingest_batch``, ``batch`` at a time."""
    for start in range(0, len(stream), batch):
        by_channel: dict[str, list] = {}
        for channel, topic, body in stream[start:start + batch]:
            by_channel.setdefault(channel, []).append((topic, body, None))
        for channel, items in by_channel.items():
            engine.ingest_batch(channel, items)


@settings(max_examples=examples(20), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(programme=programmes(), batch=st.integers(1, 5))
def test_every_points_entry_is_notified_once_in_any_order_and_batching(programme, batch, make_engine, tmp_path,
                                                                       _sqlite_template, monkeypatch):
    """A shuffled multi-channel stream with resends, fed in batches: exactly
    one notification per ledger entry of points (none twice, none for work
    rolled back, none for a merge's pair), each for the entry's customer."""
    from engine.db.models import accounts, ledger_entries
    from engine.ledger import MOVED
    from tests.test_invariants import _fresh

    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    _, _, shuffled = programme
    engine = _fresh(make_engine, tmp_path, _sqlite_template,
                    tables={**DEFAULT_TABLES, "notify": {"url": "https://hooks.example/x", "events": ["points.changed"]}})
    feed_in_batches(engine, shuffled, batch)
    with engine.db.connect() as conn:
        entries = {(f"entry:{r.key}", r.customer_id) for r in conn.execute(
            select(ledger_entries.c.key, accounts.c.customer_id).join(accounts)
            .where(accounts.c.unit == "points", ledger_entries.c.reason.not_in(MOVED)))}
        notified = [(r.subject, r.customer_id) for r in conn.execute(
            select(outbox.c.subject, outbox.c.customer_id).where(outbox.c.kind == ob.NOTIFY))]
    assert len(notified) == len(set(notified))
    follow = {}
    with engine.db.connect() as conn:
        for _, customer_id in notified:
            follow[customer_id] = engine.identity.follow(conn, customer_id)
        entry_people = {cid: engine.identity.follow(conn, cid) for _, cid in entries}
    assert {(s, follow[c]) for s, c in notified} == {(s, entry_people[c]) for s, c in entries}
    engine.db.dispose()  # (an engine per example: its connections go back now, not at the test's end)


CARD = {"coffee": {"required": 2, "per": "order", "reward": "free-coffee"}}
FREE_COFFEE = {"kind": "free_product", "sku": "COFFEE"}


def test_stamps_are_notified_with_the_card_and_a_full_card_is_its_reward(make_engine, receiver, monkeypatch):
    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    found = tables(receiver.url, events=["stamps.changed", "reward.issued"])
    found["rules"] = {**found["rules"], "stamps": CARD}
    found["rewards"] = {**found["rewards"], "free-coffee": FREE_COFFEE}
    engine = make_engine(found)
    order(engine, 1)
    assert deliver(engine).delivered == 1
    [first] = receiver.bodies()
    assert first["type"] == "stamps.changed" and first["customer"]["email"] == EMAIL
    assert first["card"] == {"name": "coffee", "required": 2, "reward": "free-coffee", "stamps": 1}
    order_id = _shopify_order(PlannedOrder("shopify", 1, EMAIL, (Line(Decimal("40.00"), 1),)), "paid", T0, [],
                              False)["id"]
    assert first["change"] == {"amount": 1, "reason": "order", "source": f"order:shopify:{order_id}"}
    assert first["balance"] == 40  # the points
    second = order(engine, 2)  # fills the card: its reward is issued, the card starts again
    assert deliver(engine).delivered == 2
    said = [(b["type"], (b.get("card") or {}).get("stamps"), (b.get("reward") or {}).get("reward"))
            for b in receiver.bodies()[1:]]
    assert sorted(said, key=str) == sorted([("stamps.changed", 0, None), ("reward.issued", None, "free-coffee")],
                                           key=str)  # (the open card when sent: emptied, its reward issued)
    # the second order cancelled: its stamp is taken back, the unused reward voided (no notification of that)
    cancelled = _shopify_order(second, "voided", T0 + timedelta(days=1), [], True)
    assert engine.ingest("shopify", "orders/cancelled", json.dumps(cancelled).encode()).status == "applied"
    assert deliver(engine).delivered == 1
    last = receiver.bodies()[-1]
    assert (last["type"], last["change"]["amount"], last["card"]["stamps"]) == ("stamps.changed", -1, 1)
    assert customer_summary(engine, EMAIL)["stamps"] == {"coffee": 1}


def test_stamps_are_not_notified_unless_asked_for(make_engine, receiver, monkeypatch):
    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    found = tables(receiver.url, events=["points.changed"])
    found["rules"] = {**found["rules"], "stamps": CARD}
    found["rewards"] = {**found["rewards"], "free-coffee": FREE_COFFEE}
    engine = make_engine(found)
    order(engine, 1)
    assert deliver(engine).delivered == 1 and receiver.bodies()[0]["type"] == "points.changed"


@settings(max_examples=examples(15), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(programme=programmes(), batch=st.integers(1, 5))
def test_every_stamps_entry_is_notified_once_in_any_order_and_batching(programme, batch, make_engine, tmp_path,
                                                                       _sqlite_template, monkeypatch):
    """As for points: one notification per ledger entry of stamps earned or
    taken (not a full card's emptying or reopening, not a merge's pair), for
    its customer, whatever the order, resends and batches."""
    from engine.db.models import accounts, ledger_entries
    from engine.ledger import CARD_BOOKKEEPING, MOVED
    from tests.test_invariants import _fresh

    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    _, _, shuffled = programme
    found = {**DEFAULT_TABLES, "rules": {**DEFAULT_TABLES["rules"], "stamps": CARD},
             "rewards": {"free-coffee": FREE_COFFEE},
             "notify": {"url": "https://hooks.example/x", "events": ["stamps.changed"]}}
    engine = _fresh(make_engine, tmp_path, _sqlite_template, tables=found)
    feed_in_batches(engine, shuffled, batch)
    with engine.db.connect() as conn:
        entries = {(f"entry:{r.key}", engine.identity.follow(conn, r.customer_id)) for r in conn.execute(
            select(ledger_entries.c.key, accounts.c.customer_id).join(accounts)
            .where(accounts.c.unit == "stamps:coffee", ledger_entries.c.reason.not_in((*MOVED, *CARD_BOOKKEEPING))))}
        notified = [(r.subject, engine.identity.follow(conn, r.customer_id)) for r in conn.execute(
            select(outbox.c.subject, outbox.c.customer_id).where(outbox.c.kind == ob.NOTIFY))]
    assert len(notified) == len(set(notified))
    assert set(notified) == entries
    engine.db.dispose()


def test_tier_changes_are_notified_up_at_once_and_down_at_the_review(make_engine, receiver, monkeypatch):
    from engine.jobs import run
    from tests.test_tiers import LEVELS

    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    found = tables(receiver.url, events=["tier.changed"])
    found["rules"] = {"points": {"per_unit": 1}, "tiers": {"levels": LEVELS, "window_days": 90}}
    engine = make_engine(found)
    order(engine, number=1, price="2100.00")  # gold at once
    assert customer_summary(engine, EMAIL)["tier"] == "gold"
    later = T0 + timedelta(days=100)  # the window no longer holds the order
    run(engine, "tier-review", later)
    run(engine, "tier-review", later + timedelta(days=1))
    assert deliver(engine).delivered == 3
    said = [(b["tier"]["from"], b["tier"]["to"], b["occurred_at"][:10]) for b in receiver.bodies()]
    assert said == [(None, "gold", T0.date().isoformat()), ("gold", "silver", later.date().isoformat()),
                    ("silver", None, (later + timedelta(days=1)).date().isoformat())]
    assert all(b["type"] == "tier.changed" and b["customer"]["email"] == EMAIL for b in receiver.bodies())


def test_regulars_notify_test_sends_a_signed_sample_of_each_event(make_engine, receiver, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from engine.cli import main

    monkeypatch.setenv("REGULARS_NOTIFY_SECRET", SECRET)
    config = tmp_path / "plugins.toml"
    config.write_text(f'[engine]\ncurrency = "EUR"\n\n[rules.points]\nper_unit = 1\n\n[notify]\nurl = "{receiver.url}"\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    result = CliRunner().invoke(main, ["--config", str(config), "notify", "test"])
    assert result.exit_code == 0, result.output
    bodies = receiver.bodies()
    assert [b["type"] for b in bodies] == ["points.changed", "stamps.changed", "reward.issued", "points.expiring",
                                          "tier.changed"]
    assert all(b["test"] is True and b["customer"]["first_name"] == "Jana" for b in bodies)
    for headers, body in receiver.requests:
        assert headers["X-Regulars-Hmac-Sha256"] == base64.b64encode(
            hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    receiver.answers = [(404, {})]
    result = CliRunner().invoke(main, ["--config", str(config), "notify", "test", "--event", "tier.changed"])
    assert result.exit_code == 1 and "the receiver answered 404" in result.output
    config.write_text('[engine]\ncurrency = "EUR"\n\n[rules.points]\nper_unit = 1\n')
    result = CliRunner().invoke(main, ["--config", str(config), "notify", "test"])
    assert result.exit_code == 1 and "there is no [notify] table" in result.output
