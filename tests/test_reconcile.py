"""`regulars reconcile`: orders fetched from a loopback shop through its real
client, fed through the webhook path; nothing counted twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.reconcile import reconcile
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


def test_the_cli_reconciles_and_says_what_it_did(tmp_path, woo, monkeypatch):
    config = tmp_path / "plugins.toml"
    config.write_text(f'[engine]\ncurrency = "EUR"\n[rules.points]\nper_unit = 1\n'
                      f'[connectors.woocommerce]\nurl = "{woo.url}"\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
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
