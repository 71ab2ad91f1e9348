"""`regulars reconcile`: orders fetched from a loopback shop through its real
client, fed through the webhook path; nothing counted twice."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from connectors.woocommerce.translate import LISTED_AT
from engine.cli import main
from engine.db import utcnow
from engine.reconcile import Undetailed, listed_at, reconcile
from tests.fakes.woocommerce import FakeWoo
from tests.serving import free_port


@pytest.fixture
def woo(monkeypatch):
    with FakeWoo(order_count=7) as fake:
        monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", fake.key)
        monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", fake.secret)
        yield fake


def _tables(url: str) -> dict:
    return {"engine": {"currency": "EUR"}, "rules": {"points": {"per_unit": 1}},
            "connectors": {"woocommerce": {"url": url}}}


def _balances(engine) -> dict:
    from sqlalchemy import select

    from engine.db.models import accounts

    with engine.db.connect() as conn:
        return {(r.customer_id, r.unit): r.balance for r in conn.execute(select(accounts))}


def test_reconcile_applies_what_the_webhooks_missed_and_counts_nothing_twice(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    # Two of the orders came by webhook; the rest were missed.
    for order in woo.orders[:2]:
        assert engine.ingest("woocommerce", "order.updated", json.dumps(order).encode()).status == "applied"
    counts, failed = reconcile(engine, "woocommerce")
    assert failed == []
    assert counts["duplicate"] == 2 and sum(counts.values()) == 7
    after_first = _balances(engine)
    assert after_first

    counts, _ = reconcile(engine, "woocommerce")  # again: everything is a duplicate
    assert counts == {"duplicate": 7}
    assert _balances(engine) == after_first
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []

    # The same balances as if every order had come by webhook, once.
    fresh = make_engine(_tables(woo.url), url=f"sqlite:///{engine.config.base_dir / 'fresh.sqlite3'}")
    for order in woo.orders:
        fresh.ingest("woocommerce", "order.updated", json.dumps(order).encode())
    assert sorted(_balances(fresh).values()) == sorted(after_first.values())


def test_reconcile_since_only_fetches_newer_orders(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    counts, _ = reconcile(engine, "woocommerce", since=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    assert sum(counts.values()) == 4  # modified 12:30, 13:30, 14:30, 15:30
    query = [r["query"] for r in woo.requests if r["path"].endswith("/orders")][0]
    assert query["modified_after"].startswith("2024-05-01T12:00:00")


def _cli_shop(tmp_path, monkeypatch, url: str):
    """A plugins.toml for the CLI with the WooCommerce shop at ``url``, on a
    SQLite file of its own; its path."""
    config = tmp_path / "plugins.toml"
    config.write_text(f'[engine]\ncurrency = "EUR"\n[rules.points]\nper_unit = 1\n'
                      f'[connectors.woocommerce]\nurl = "{url}"\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    return config


def test_the_cli_reconciles_and_says_what_it_did(tmp_path, woo, monkeypatch):
    config = _cli_shop(tmp_path, monkeypatch, woo.url)
    result = CliRunner().invoke(main, ["--config", str(config), "reconcile", "woocommerce"])
    assert result.exit_code == 0, result.output
    assert "7 orders from woocommerce: 7 applied" in result.output
    result = CliRunner().invoke(main, ["--config", str(config), "reconcile", "woocommerce", "--since", "2024-05-01"])
    assert "7 duplicate" in result.output


def test_the_cli_says_which_credentials_are_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", raising=False)
    monkeypatch.delenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", raising=False)
    monkeypatch.setenv("REGULARS_SECRET_KEY", "a passphrase for the test")
    config = tmp_path / "plugins.toml"
    config.write_text('[engine]\ncurrency = "EUR"\n[connectors.woocommerce]\nurl = "https://shop.example"\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    result = CliRunner().invoke(main, ["--config", str(config), "reconcile", "woocommerce"])
    assert result.exit_code == 1
    assert "REGULARS_WOOCOMMERCE_CONSUMER_KEY" in result.output


def test_a_shop_that_is_down_is_one_sentence(tmp_path, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", "ck_x")
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", "cs_x")
    config = tmp_path / "plugins.toml"
    config.write_text(f'[engine]\ncurrency = "EUR"\n[connectors.woocommerce]\nurl = "http://127.0.0.1:{port}"\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    result = CliRunner().invoke(main, ["--config", str(config), "reconcile", "woocommerce"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().startswith("Error: woocommerce:") and "Connection refused" in result.output


def test_shopify_webhooks_and_reconciliation_together_count_each_order_once(make_engine, monkeypatch):
    """Shopify's webhook deliveries and reconciliation have different keys (a
    webhook id against the order's id and updated_at); the order's merged
    state makes the second one change nothing."""
    from tests.fakes.shopify import FakeShopify, make_orders

    orders = make_orders(6)
    for order in orders:  # paid, not test orders, so they earn
        order.update(financial_status="paid", cancelled_at=None, test=False)
    with FakeShopify(orders=orders) as shop:
        monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", shop.token)
        tables = {"engine": {"currency": "EUR"}, "rules": {"points": {"per_unit": 1}},
                  "connectors": {"shopify": {"shop": shop.shop, "api_url": shop.base_url}}}
        engine = make_engine(tables)
        for number, order in enumerate(orders[:3]):  # three came by webhook, with Shopify's headers
            headers = {"X-Shopify-Webhook-Id": f"b54557e4-{number}", "X-Shopify-Topic": "orders/paid"}
            assert engine.ingest("shopify", "orders/paid", json.dumps(order).encode(), headers).status == "applied"
        by_webhook = _balances(engine)
        counts, failed = reconcile(engine, "shopify")
        assert failed == [] and sum(counts.values()) == 6
        once = _balances(engine)
        assert reconcile(engine, "shopify")[0] == {"duplicate": 6}
        assert _balances(engine) == once
        with engine.db.connect() as conn:
            assert engine.ledger.audit(conn) == []

        fresh = make_engine(tables, url=f"sqlite:///{engine.config.base_dir / 'fresh.sqlite3'}")
        for order in orders:
            fresh.ingest("shopify", "orders/paid", json.dumps(order).encode())
        assert sorted(_balances(fresh).values()) == sorted(once.values())
        assert by_webhook != once  # reconciliation did bring the missed orders


# -- WooCommerce refunds read from the shop -----------------------------------------
#
# Order 727 as documented (completed): line 315 (2 x 3.00, 0.45 tax), line 316
# (12.00, 0.90 tax) and 10.00 of shipping; 18.00 eligible, 18 points. Its
# webhooks list a refund by its total only, tax and shipping in it; the
# reconciliation reads the refund's lines (GET orders/<id>/refunds).

T0 = datetime(2024, 6, 3, 9, 0)  # naive: WooCommerce's *_gmt


def _727(order_id: int, paid: datetime, email: str = "john.doe@example.com") -> dict:
    from tests.fakes.woocommerce import GMT_OFFSET, _rest

    order = _rest("order_update")
    order["id"], order["number"] = order_id, str(order_id)
    for field in ("date_created", "date_modified", "date_paid", "date_completed"):
        order[f"{field}_gmt"], order[field] = paid.isoformat(), (paid - GMT_OFFSET).isoformat()
    order["billing"]["email"] = email
    return order


def _refunded(order: dict, at: datetime, shown: datetime, refund_id: int = 801, **what) -> tuple[dict, dict]:
    """A refund of ``order`` made at ``at`` (``what``: lines, shipping) and the
    order as its webhook shows it at ``shown``."""
    from tests.fakes.woocommerce import make_refund, with_refunds

    refund = make_refund(order, refund_id, at, **what)
    return refund, with_refunds(order, [refund], shown)


def _send(engine, *bodies: dict) -> list[str]:
    return [engine.ingest("woocommerce", "order.updated", json.dumps(b).encode()).status for b in bodies]


def _points(engine, email: str = "john.doe@example.com") -> int:
    from engine.customers import customer_summary

    return customer_summary(engine, email)["points"]


def _woo(monkeypatch, orders: list[dict], refunds: dict[int, list[dict]]):
    from tests.fakes.woocommerce import FakeWoo

    fake = FakeWoo(orders=orders, refunds=refunds)
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", fake.key)
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", fake.secret)
    return fake


def _second_engine(make_engine, engine, tables: dict, name: str = "second"):
    return make_engine(tables, url=f"sqlite:///{engine.config.base_dir / f'{name}.sqlite3'}")


def test_a_refunded_line_takes_back_its_total_without_tax_whether_the_webhook_or_the_reconciliation_comes_first(
        make_engine, monkeypatch):
    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=2), T0 + timedelta(hours=2), lines={316: 1})
    assert shown["refunds"] == [{"id": 801, "reason": "", "total": "-12.90"}]  # 12.00 and its 0.90 VAT
    with _woo(monkeypatch, [shown], {6001: [refund]}) as woo:
        tables = _tables(woo.url)
        webhook_first = make_engine(tables)
        assert _send(webhook_first, paid, shown) == ["applied", "applied"]
        assert _points(webhook_first) == 5  # the webhook alone: 18.00 - 12.90 = 5.10
        counts, failed = reconcile(webhook_first, "woocommerce")
        assert (counts, failed) == ({"applied": 1}, [])  # not swallowed as the webhook's snapshot
        assert _points(webhook_first) == 6  # 18.00 - 12.00: the line, without its tax

        reconciled_first = _second_engine(make_engine, webhook_first, tables)
        reconcile(reconciled_first, "woocommerce")
        assert _points(reconciled_first) == 6
        assert _send(reconciled_first, shown, paid) == ["applied", "applied"]  # the webhooks, late
        assert _points(reconciled_first) == 6
        assert _balances(reconciled_first) == _balances(webhook_first)
        for engine in (webhook_first, reconciled_first):
            with engine.db.connect() as conn:
                assert engine.ledger.audit(conn) == []
    assert [r["path"] for r in woo.requests if r["path"].endswith("/refunds")] == [
        "/wp-json/wc/v3/orders/6001/refunds"] * 2


def test_refunded_shipping_takes_no_points(make_engine, monkeypatch):
    """A refund of the shipping alone, and one of a line and the shipping:
    only the line's merchandise comes off."""
    shipping_only = _727(6001, T0, "ship@example.com")
    with_a_line = _727(6002, T0, "line@example.com")
    later = T0 + timedelta(days=1)
    first, shown_first = _refunded(shipping_only, later, later, 801, shipping=True)
    second, shown_second = _refunded(with_a_line, later, later, 811, lines={315: 2}, shipping=True)
    assert (first["amount"], second["amount"]) == ("10.00", "16.45")
    assert first["line_items"] == [] and first["shipping_lines"][0]["total"] == "-10.00"
    with _woo(monkeypatch, [shown_first, shown_second], {6001: [first], 6002: [second]}) as woo:
        engine = make_engine(_tables(woo.url))
        _send(engine, shown_first, shown_second)
        assert (_points(engine, "ship@example.com"), _points(engine, "line@example.com")) == (8, 1)  # webhooks
        assert reconcile(engine, "woocommerce")[0] == {"applied": 2}
        assert _points(engine, "ship@example.com") == 18  # the shipping was no eligible spend
        assert _points(engine, "line@example.com") == 12  # 18.00 - 6.00 (line 315), not its tax nor shipping


def test_a_refund_of_an_amount_only_keeps_its_total(make_engine, woo):
    """Order 723 as documented: refund 726 is an amount (10.00) with no line,
    724 gives back line 311 (9.00, no tax); 29.00 eligible, 10 left."""
    engine = make_engine(_tables(woo.url))
    refunded = [o for o in woo.orders if o["refunds"]]  # two copies of 723, João Silva's
    assert [r["line_items"] for r in woo.refunds[refunded[0]["id"]] if r["id"] == 726] == [[]]
    _send(engine, *refunded)
    email = refunded[0]["billing"]["email"]
    assert _points(engine, email) == 2 * 10
    reconcile(engine, "woocommerce")
    assert f"/wp-json/wc/v3/orders/{refunded[0]['id']}/refunds" in [r["path"] for r in woo.requests]
    with engine.db.connect() as conn:
        keys = [k for (k,) in conn.execute(text("SELECT key FROM inbox WHERE key LIKE :k"),
                                           {"k": f"order:{refunded[0]['id']}:%"})]
    assert len(keys) == 2 and any(":refunds:" in k for k in keys)  # the reconciled snapshot went in
    assert _points(engine, email) == 2 * 10  # 29.00 - 10.00 - 9.00 each, as the webhooks had it


def test_the_snapshot_with_its_refunds_read_sent_again_is_a_duplicate(make_engine, monkeypatch):
    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=1), T0 + timedelta(hours=1), lines={316: 1})
    with _woo(monkeypatch, [shown], {6001: [refund]}) as woo:
        engine = make_engine(_tables(woo.url))
        _send(engine, paid, shown)
        assert reconcile(engine, "woocommerce")[0] == {"applied": 1}
        once = _balances(engine)
        assert reconcile(engine, "woocommerce")[0] == {"duplicate": 1}

        from connectors.woocommerce.rest import WooStore

        store = WooStore(woo.url, woo.key, woo.secret)
        body = json.dumps(store.with_refund_details(shown)).encode()
        assert [engine.ingest("woocommerce", "order.updated", body).status for _ in range(2)] == [
            "duplicate", "duplicate"]
        assert _balances(engine) == once and _points(engine) == 6


def test_a_refund_read_from_the_shop_counts_from_its_own_time(make_engine, monkeypatch):
    """Order A (18.00) paid, its line 316 refunded a day later, order B (18.00)
    the day after: with the refund counted, 24 earned by B's payment stays
    under silver's 30. The webhook that showed the refund was missed; a later
    snapshot (day 3) shows it, and alone it would date the refund at day 3,
    after B made silver. Read from the shop, the refund counts from its
    date_created_gmt, whichever comes first."""
    paid_a, paid_b = _727(6001, T0), _727(6002, T0 + timedelta(days=2))
    refund, shown = _refunded(paid_a, T0 + timedelta(days=1), T0 + timedelta(days=3), lines={316: 1})
    assert refund["date_created_gmt"] == "2024-06-04T09:00:00"
    levels = [{"name": "silver", "threshold": 30, "multiplier": 2}]
    with _woo(monkeypatch, [shown, paid_b], {6001: [refund]}) as woo:
        tables = {**_tables(woo.url), "rules": {"points": {"per_unit": 1}, "tiers": {"levels": levels}}}
        webhooks_only = make_engine(tables)
        _send(webhooks_only, paid_a, paid_b, shown)
        assert _tier(webhooks_only) == ("silver", 5 + 18)  # the refund dated by the snapshot, day 3

        webhooks_first = _second_engine(make_engine, webhooks_only, tables, "webhooks_first")
        _send(webhooks_first, paid_a, paid_b, shown)
        reconcile(webhooks_first, "woocommerce")
        reconciled_first = _second_engine(make_engine, webhooks_only, tables, "reconciled_first")
        reconcile(reconciled_first, "woocommerce")
        _send(reconciled_first, shown, paid_b, paid_a)
        for engine in (webhooks_first, reconciled_first):
            assert _tier(engine) == (None, 6 + 18)


def _tier(engine) -> tuple:
    from engine.customers import customer_summary

    summary = customer_summary(engine, "john.doe@example.com")
    return summary["tier"], summary["points"]


def test_an_order_whose_refunds_cannot_be_read_goes_in_as_its_webhook_and_the_rest_go_on(make_engine, monkeypatch):
    from engine.reconcile import Undetailed

    one, other = _727(6001, T0, "one@example.com"), _727(6002, T0, "other@example.com")
    later = T0 + timedelta(hours=3)
    first, shown_one = _refunded(one, later, later, 801, lines={316: 1})
    second, shown_other = _refunded(other, later, later, 811, lines={316: 1})
    with _woo(monkeypatch, [shown_one, shown_other], {6001: [first], 6002: [second]}) as woo:
        woo.refunds_failing.add(6001)
        engine = make_engine(_tables(woo.url))
        counts, failed = reconcile(engine, "woocommerce")
        assert counts == {"applied": 2, "undetailed": 1}
        (problem,) = failed
        assert isinstance(problem, Undetailed) and problem.order_id == "6001"
        assert "orders/6001/refunds" in problem.error and "HTTP 500" in problem.error
        assert (_points(engine, "one@example.com"), _points(engine, "other@example.com")) == (5, 6)

        woo.refunds_failing.clear()  # the next run reads them
        assert reconcile(engine, "woocommerce") == ({"applied": 1, "duplicate": 1}, [])
        assert (_points(engine, "one@example.com"), _points(engine, "other@example.com")) == (6, 6)


def test_the_cli_says_whose_refunds_were_not_read_and_exits_1(tmp_path, monkeypatch):
    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=1), T0 + timedelta(hours=1), lines={316: 1})
    with _woo(monkeypatch, [shown], {6001: [refund]}) as woo:
        woo.refunds_failing.add(6001)
        config = _cli_shop(tmp_path, monkeypatch, woo.url)
        result = CliRunner().invoke(main, ["--config", str(config), "reconcile", "woocommerce"])
    assert result.exit_code == 1, result.output
    assert "1 order from woocommerce: 1 applied; 1 without their refunds' details" in result.output
    assert "order 6001: refunds counted by their totals until a reconcile reads them: WooCommerce order_refunds " \
           "(GET orders/6001/refunds) failed: HTTP 500" in " ".join(result.output.split())
    assert "Traceback" not in result.output


# -- Refunds read again: within the run, and by later runs ----------------------------


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch):
    """A read of refunds that fails is tried again a moment later: a short moment here."""
    monkeypatch.setattr("connectors.woocommerce.rest.READ_RETRY_PAUSES", (0.01, 0.01), raising=False)


#: a week after the orders below changed: no run's ``since`` covers them any more
LATER = datetime(2024, 6, 10, 9, 0, tzinfo=UTC)


def _paths(woo) -> list[str]:
    return [r["path"].removeprefix("/wp-json/wc/v3/") for r in woo.requests]


def test_a_refunds_read_that_fails_once_or_twice_is_tried_again_within_the_run(make_engine, monkeypatch):
    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=1), T0 + timedelta(hours=1), lines={316: 1})
    with _woo(monkeypatch, [shown], {6001: [refund]}) as woo:
        woo.fail_refunds(6001, 502, "reset")  # a bad gateway, then the connection closed unanswered
        engine = make_engine(_tables(woo.url))
        assert reconcile(engine, "woocommerce") == ({"applied": 1}, [])
        assert _points(engine) == 6  # its line, without tax: read
    assert _paths(woo) == ["orders"] + ["orders/6001/refunds"] * 3


def test_an_order_left_undetailed_is_read_again_by_a_later_run_and_once_read_not_asked_for_again(
        make_engine, monkeypatch):
    """6001's refunds could not be read when it was reconciled; 6002 came by
    webhook only. Later runs, whose ``since`` no longer covers them, come back
    to both once the shop answers, and after that leave them alone."""
    one, other = _727(6001, T0, "one@example.com"), _727(6002, T0, "other@example.com")
    later = T0 + timedelta(hours=3)
    first, shown_one = _refunded(one, later, later, 801, lines={316: 1})
    second, shown_other = _refunded(other, later, later, 811, lines={316: 1})
    with _woo(monkeypatch, [shown_one], {6001: [first], 6002: [second]}) as woo:
        engine = make_engine(_tables(woo.url))
        woo.refunds_failing.add(6001)  # all three tries fail
        assert reconcile(engine, "woocommerce")[0] == {"applied": 1, "undetailed": 1}
        woo.orders.append(shown_other)  # (its webhook came; no reconciliation saw it)
        assert _send(engine, shown_other) == ["applied"]
        assert (_points(engine, "one@example.com"), _points(engine, "other@example.com")) == (5, 5)  # whole

        woo.requests.clear()
        counts, failed = reconcile(engine, "woocommerce", since=LATER)
        # (6001 read again goes in as a delivery of its own, its list of refunds as it held that day)
        assert counts == {"applied": 2, "revisited": 2, "undetailed": 1}
        assert [(problem.order_id, problem.error) for problem in failed] == [(
            "6001", "WooCommerce order_refunds (GET orders/6001/refunds) failed: HTTP 500 fake_failure: "
                    "Injected HTTP 500 for this order's refunds.")]
        assert _paths(woo) == ["orders", "orders/6002", "orders/6002/refunds", "orders/6001"] + [
            "orders/6001/refunds"] * 3  # the most recently changed first
        assert (_points(engine, "one@example.com"), _points(engine, "other@example.com")) == (5, 6)

        woo.refunds_failing.clear()  # the shop answers again
        assert reconcile(engine, "woocommerce", since=LATER) == ({"applied": 1, "revisited": 1}, [])
        assert (_points(engine, "one@example.com"), _points(engine, "other@example.com")) == (6, 6)
        woo.requests.clear()
        assert reconcile(engine, "woocommerce", since=LATER) == ({}, [])
        assert _paths(woo) == ["orders"]  # both read: not asked for again

        fresh = _second_engine(make_engine, engine, _tables(woo.url))  # the same as when read at once
        reconcile(fresh, "woocommerce")
        assert sorted(_balances(fresh).values()) == sorted(_balances(engine).values())


def test_a_run_comes_back_to_a_bounded_number_of_orders_the_most_recently_changed_first(make_engine, monkeypatch):
    bodies, refunds = [], {}
    for number, email in enumerate(("a@example.com", "b@example.com", "c@example.com")):
        order = _727(6001 + number, T0 + timedelta(hours=number), email)
        refund, shown = _refunded(order, T0 + timedelta(hours=number + 1), T0 + timedelta(hours=number + 1),
                                  801 + 10 * number, lines={316: 1})
        bodies.append(shown)
        refunds[order["id"]] = [refund]
    with _woo(monkeypatch, bodies, refunds) as woo:
        engine = make_engine(_tables(woo.url))
        _send(engine, *bodies)  # webhooks only: 6003 changed last
        asked = []
        for _ in range(3):
            woo.requests.clear()
            counts, failed = reconcile(engine, "woocommerce", since=LATER, revisit=2)
            assert failed == [] and counts["applied"] == counts["revisited"]
            asked.append([path for path in _paths(woo) if path.count("/") == 1])
        assert asked == [["orders/6003", "orders/6002"], ["orders/6001"], []]
        assert [_points(engine, email) for email in ("a@example.com", "b@example.com", "c@example.com")] == [6, 6, 6]


def test_the_reconcile_job_comes_back_to_older_orders_whose_refunds_it_could_not_read(make_engine, monkeypatch):
    from engine.jobs import run

    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=1), T0 + timedelta(hours=1), lines={316: 1})
    with _woo(monkeypatch, [shown], {6001: [refund]}) as woo:
        engine = make_engine(_tables(woo.url))
        woo.refunds_failing.add(6001)
        assert run(engine, "reconcile", datetime(2024, 6, 4, 9, 0, tzinfo=UTC)) == (
            "woocommerce: 1 orders (1 applied, 1 without refund details)")
        woo.refunds_failing.clear()
        assert run(engine, "reconcile", LATER) == "woocommerce: 1 orders (1 applied, 1 revisited for refund details)"
        assert run(engine, "reconcile", LATER) == "woocommerce: 0 orders"
        assert _points(engine) == 6


def _line_changed(refund: dict, **changes) -> dict:
    refund = copy.deepcopy(refund)
    refund["line_items"][0].update(changes)
    return refund


SPOILED = [  # (what the shop answers in place of refund 801's resource, what the report says)
    (lambda r: {k: v for k, v in r.items() if k != "id"}, "Refund 1 of 1 has no usable id (got None)"),
    (lambda r: "801", "Refund 1 of 1 is a string, not an object"),
    (lambda r: {**r, "amount": "-12.90"}, "refund 801 amount is negative"),
    (lambda r: _line_changed(r, total="12.00"), "refund 801's line 802 total is positive"),
    (lambda r: _line_changed(r, total="-1200.00"), "gives back 1200.00 of line 316, which came to 12.00"),
    (lambda r: _line_changed(r, total="twelve"), "refund 801's line 802 total"),
]


@pytest.mark.parametrize(("spoil", "complaint"), SPOILED)
def test_refund_details_that_cant_be_used_leave_the_order_as_its_webhook_would_and_say_why(
        make_engine, monkeypatch, spoil, complaint):
    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=1), T0 + timedelta(hours=1), lines={316: 1})
    with _woo(monkeypatch, [shown], {6001: [spoil(refund)]}) as woo:
        engine = make_engine(_tables(woo.url))
        counts, failed = reconcile(engine, "woocommerce")
        assert counts == {"applied": 1, "undetailed": 1}
        (problem,) = failed
        assert isinstance(problem, Undetailed) and problem.order_id == "6001" and complaint in problem.error
        assert _points(engine) == 5  # its total, as the webhook has it
        with engine.db.connect() as conn:
            rows = conn.execute(text("SELECT key, status FROM inbox")).all()
        assert rows == [("order:6001:2024-06-03T10:00:00", "applied")]  # the webhook's snapshot; nothing failed
        assert _send(engine, shown) == ["duplicate"]

        woo.refunds[6001] = [refund]  # the shop mended: a later run reads it
        assert reconcile(engine, "woocommerce", since=LATER) == ({"applied": 1, "revisited": 1}, [])
        assert _points(engine) == 6


def _two_refunds() -> tuple[dict, dict, dict, dict]:
    """Order 6001 paid, its refunds 801 (line 316) and 811 (line 315), and the
    order listing both."""
    from tests.fakes.woocommerce import make_refund, with_refunds

    paid = _727(6001, T0)
    first = make_refund(paid, 801, T0 + timedelta(hours=1), lines={316: 1})
    second = make_refund(paid, 811, T0 + timedelta(hours=2), lines={315: 1})
    return paid, first, second, with_refunds(paid, [first, second], T0 + timedelta(hours=2))


def test_a_refund_the_order_lists_but_the_shop_does_not_return_is_reported_and_read_by_a_later_run(
        make_engine, monkeypatch):
    _, first, second, shown = _two_refunds()
    with _woo(monkeypatch, [shown], {6001: [second]}) as woo:  # 801 not returned (deleted meanwhile?)
        engine = make_engine(_tables(woo.url))
        counts, failed = reconcile(engine, "woocommerce")
        assert counts == {"applied": 1, "undetailed": 1}
        assert failed == [Undetailed("6001", 1, "refund 801 is not among those GET orders/6001/refunds returned "
                                                "(deleted meanwhile, or moved while its pages were read)")]
        assert _points(engine) == 2  # 18.00 - 12.90 (801 whole) - 3.00 (811's line 315, without its tax)

        woo.refunds[6001] = [second, first]
        assert reconcile(engine, "woocommerce", since=LATER) == ({"applied": 1, "revisited": 1}, [])
        assert _points(engine) == 3  # 18.00 - 12.00 - 3.00


def test_a_refund_deleted_in_the_shop_stops_counting_once_the_order_is_read_again_and_is_not_asked_for_again(
        make_engine, monkeypatch):
    """801 was deleted in the shop after its webhook: WooCommerce leaves the
    order's date_modified as it was, so only the order read again (its list
    of refunds as it held that day) says so. Its points come back; 811 is
    read from its lines; the next run has nothing left to ask."""
    from tests.fakes.woocommerce import with_refunds

    paid, _, second, shown = _two_refunds()
    now = {**with_refunds(paid, [second], T0 + timedelta(hours=3)), "date_modified_gmt": shown["date_modified_gmt"]}
    with _woo(monkeypatch, [now], {6001: [second]}) as woo:
        engine = make_engine(_tables(woo.url))
        _send(engine, shown)
        assert _points(engine) == 1  # both refunds, whole
        assert reconcile(engine, "woocommerce", since=LATER) == (
            {"applied": 1, "revisited": 1, "refunds_deleted": 1}, [])
        assert _points(engine) == 15  # 811 read from its lines; 801 no longer counts
        assert reconcile(engine, "woocommerce", since=LATER) == ({}, [])
        _send(engine, shown)  # the old webhook again: 801 stays deleted
        assert _points(engine) == 15
        with engine.db.connect() as conn:
            assert engine.ledger.audit(conn) == []


def test_the_cli_says_how_many_older_orders_it_read_again(tmp_path, monkeypatch):
    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=1), T0 + timedelta(hours=1), lines={316: 1})
    with _woo(monkeypatch, [shown], {6001: [refund]}) as woo:
        config = _cli_shop(tmp_path, monkeypatch, woo.url)
        woo.refunds_failing.add(6001)
        result = CliRunner().invoke(main, ["--config", str(config), "reconcile", "woocommerce"])
        assert result.exit_code == 1 and "1 without their refunds' details" in result.output
        woo.refunds_failing.clear()
        result = CliRunner().invoke(main, ["--config", str(config), "reconcile", "woocommerce", "--since", "2024-06-10"])
    assert result.exit_code == 0, result.output
    assert "1 order from woocommerce: 1 applied; 1 read again for their refunds' details" in result.output


def test_refunds_read_before_but_not_applied_are_reported_not_asked_for_in_silence(make_engine, monkeypatch):
    from connectors.woocommerce.rest import WooStore

    paid = _727(6001, T0)
    refund, shown = _refunded(paid, T0 + timedelta(hours=1), T0 + timedelta(hours=1), lines={316: 1})
    with _woo(monkeypatch, [shown], {6001: [refund]}) as woo:
        engine = make_engine(_tables(woo.url))
        _send(engine, shown)
        read = WooStore(woo.url, woo.key, woo.secret).with_refund_details(shown)
        body = json.dumps({**read, LISTED_AT: listed_at(utcnow())}).encode()  # as a run today reads it
        assert engine.receive("woocommerce", "order.updated", body).status == "received"  # kept, not applied yet
        counts, failed = reconcile(engine, "woocommerce", since=LATER)
        assert counts == {"duplicate": 1, "revisited": 1, "undetailed": 1}
        assert failed == [Undetailed("6001", 2, "its refunds were read and sent before, as delivery 2, which is not "
                                                "applied (failed: `regulars events list --failed`; or still waiting)")]
        engine.apply_received()
        assert _points(engine) == 6
        assert reconcile(engine, "woocommerce", since=LATER) == ({}, [])
