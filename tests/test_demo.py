"""`regulars demo` and the payload builders it shares with the benchmark.

The demo must ingest cleanly, join a customer's two shops into one account,
earn what a small model of the bodies says, and change nothing when run again.
The builders must give bodies in the contract payloads' shape that the real
connectors translate.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal

import pytest
from rich.console import Console
from sqlalchemy import func, select

from connectors.shopify import ShopifyConnector
from connectors.woocommerce import WooCommerceConnector
from engine.customers import customer_summary
from engine.db.models import accounts, customers, inbox, ledger_entries
from engine.demo import (
    GIFT_CARD,
    SHOPIFY_ID_BASE,
    SHOWCASE,
    DemoCustomer,
    DemoLine,
    plan,
    run_demo,
    shopify_customer,
    shopify_line_id,
    shopify_order,
    shopify_refund,
    woocommerce_customer,
    woocommerce_order,
)
from engine.events import line_eligible, load_event
from tests.conftest import load_contract

CUSTOMERS, SEED = 40, 11
AT = datetime(2026, 2, 3, 10, 30, tzinfo=UTC)
ORDER_ID = SHOPIFY_ID_BASE + 123_456_789  # far above 2^53
CUSTOMER = DemoCustomer(7, "Šárka", "Němcová", "sarka.nemcova7@example.com", "+420601000007",
                        woo_id=1007, accepts_marketing=True)
LINES = [DemoLine("KAVA-ETH-250", "Výběrová káva Etiopie 250 g", 3, Decimal("12.90"), Decimal("3.87")),
         DemoLine("HRNEK-SMALT", "Smaltovaný hrnek", 1, Decimal("9.50")), GIFT_CARD]


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def _state(engine) -> tuple:
    with engine.db.connect() as conn:
        balances = conn.execute(
            select(accounts.c.customer_id, accounts.c.unit, accounts.c.balance).order_by(accounts.c.id)
        ).all()
        counts = [conn.execute(select(func.count()).select_from(t)).scalar_one()
                  for t in (customers, ledger_entries, inbox)]
    return balances, counts


def _expected_points(stream) -> dict[str, int]:
    """Points per email (1 per EUR) read from the bodies alone: the eligible
    merchandise of each order less its refunds, nothing if unpaid or cancelled."""
    orders: dict[tuple[str, int], dict] = {}
    for (channel, topic), group in stream.items():
        for _, body in group:
            if topic == "refunds/create":
                order = orders.setdefault((channel, body["order_id"]), {"refunds": {}})
                order["refunds"][body["id"]] = sum(
                    Decimal(i["subtotal_set"]["shop_money"]["amount"]) for i in body["refund_line_items"])
                continue
            if not topic.startswith("order"):
                continue
            order = orders.setdefault((channel, body["id"]), {"refunds": {}})
            if channel == "shopify":
                order["email"] = body["email"].lower()
                order["eligible"] = sum(Decimal(x["price"]) * x["quantity"]
                                        - sum(Decimal(a["amount"]) for a in x["discount_allocations"])
                                        for x in body["line_items"] if not x["gift_card"])
                order["paid"] = order.get("paid") or body["financial_status"] == "paid"
                order["cancelled"] = order.get("cancelled") or body["cancelled_at"] is not None
                refunds = {r["id"]: sum(Decimal(i["subtotal_set"]["shop_money"]["amount"])
                                        for i in r["refund_line_items"]) for r in body["refunds"]}
            else:
                order["email"] = body["billing"]["email"].lower()
                order["eligible"] = sum(Decimal(x["total"]) for x in body["line_items"]
                                        if not any(m["key"] == "_wc_gc_giftcard" for m in x["meta_data"]))
                order["paid"] = order.get("paid") or body["status"] in ("processing", "completed")
                order["cancelled"] = order.get("cancelled") or body["status"] == "cancelled"
                refunds = {r["id"]: -Decimal(r["total"]) for r in body["refunds"]}
            order["refunds"].update(refunds)
    points: dict[str, int] = {}
    for order in orders.values():
        standing = max(Decimal(0), order["eligible"] - sum(order["refunds"].values(), Decimal(0)))
        earned = order["paid"] and not order["cancelled"]
        points[order["email"]] = points.get(order["email"], 0) + (
            int(standing.to_integral_value(ROUND_FLOOR)) if earned else 0)
    return points


@pytest.fixture
def demo_engine(make_engine):
    engine = make_engine()
    first = run_demo(engine, CUSTOMERS, SEED, _quiet())
    return engine, first


def test_demo_ingests_cleanly_and_earns_what_the_bodies_say(demo_engine):
    engine, first = demo_engine
    assert first["failed"] == 0 and first["ignored"] == 0
    assert first["applied"] == first["deliveries"] > CUSTOMERS
    assert first["drifts"] == 0
    assert first["customers"] == CUSTOMERS
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
    stream, _ = plan(CUSTOMERS, SEED)
    expected = _expected_points(stream)
    got = {email: customer_summary(engine, email)["points"] for email in expected}
    assert got == expected
    assert first["points"] == sum(expected.values())
    assert first["top"][0][1] == max(expected.values())


def test_a_customer_of_both_shops_has_one_account_with_both_links(demo_engine):
    engine, first = demo_engine
    stream, tally = plan(CUSTOMERS, SEED)
    assert tally["both"] > 0
    seen: dict[str, set[str]] = {}
    typed: dict[str, set[str]] = {}
    for (channel, topic), group in stream.items():
        for _, body in group:
            if topic.startswith("order") and topic != "refunds/create":
                email = body["email"] if channel == "shopify" else body["billing"]["email"]
                seen.setdefault(email.lower(), set()).add(channel)
                typed.setdefault(email.lower(), set()).add(email)
    both = [email for email, channels in seen.items() if channels == {"shopify", "woocommerce"}]
    assert len(both) == tally["both"]
    for email in both:
        summary = customer_summary(engine, email)
        assert set(summary["channels"]) == {"shopify", "woocommerce"}, email
        assert summary["email"] == email
        # Every spelling the customer used (Jana.Novakova@ vs jana.novakova@) leads to them.
        assert {customer_summary(engine, spelling)["id"] for spelling in typed[email]} == {summary["id"]}
    with engine.db.connect() as conn:
        n = conn.execute(select(func.count()).select_from(customers)).scalar_one()
    assert n == CUSTOMERS  # nobody was created twice
    # The customer the README shows after `scripts/demo`.
    jana = customer_summary(engine, SHOWCASE)
    assert jana["first_name"] == "Jana" and jana["phone"] == "+420601000001"
    assert set(jana["channels"]) == {"shopify", "woocommerce"} and jana["orders"] >= 3


def test_running_the_demo_again_is_all_duplicates_and_changes_nothing(demo_engine):
    engine, first = demo_engine
    before = _state(engine)
    second = run_demo(engine, CUSTOMERS, SEED, _quiet())
    assert second["duplicate"] == second["deliveries"] == first["deliveries"]
    assert second["applied"] == second["failed"] == second["ignored"] == 0
    assert second["points"] == first["points"] and second["drifts"] == 0
    assert _state(engine) == before


def test_the_demo_s_history_ends_at_the_hour_it_was_first_run_and_stays_there(demo_engine):
    """The dashboard's current month has the demo's latest sales; a later run
    (another day: ``now`` moved on) keeps the first run's dates, so it is
    still all duplicates."""
    from datetime import timedelta

    from sqlalchemy import func

    from engine.db import as_utc
    from engine.db.models import orders
    from engine.demo import demo_start

    engine, _ = demo_engine
    now = datetime.now(UTC)
    with engine.db.connect() as conn:
        newest = as_utc(conn.execute(select(func.max(orders.c.paid_at))).scalar())
    assert now - timedelta(days=14) < newest <= now
    start = demo_start(engine, CUSTOMERS, SEED)
    assert demo_start(engine, CUSTOMERS, SEED, now=now + timedelta(days=30)) == start
    stream, _ = plan(CUSTOMERS, SEED, start)
    last = max(moment for group in stream.values() for moment, _ in group)
    assert timedelta(0) <= now - last < timedelta(hours=2)  # (the hour it began, truncated)


def test_with_the_repository_s_catalogue_some_customers_spend_points_once(make_engine, monkeypatch, tmp_path):
    """The README's demo (plugins.toml has rewards): some customers buy one,
    dated in the shop's history, so the dashboard's points spent and
    redemption rate have figures; what they spent is what their balances
    lack of what they earned; a second run spends nothing more."""
    import tomllib
    from pathlib import Path

    from engine.db.models import rewards

    tables = tomllib.loads((Path(__file__).resolve().parents[1] / "plugins.toml").read_text())
    engine = make_engine(tables)
    first = run_demo(engine, CUSTOMERS * 2, SEED, _quiet())
    assert first["failed"] == 0 and first["drifts"] == 0
    with engine.db.connect() as conn:
        bought = conn.execute(select(rewards.c.reward, rewards.c.cost, rewards.c.channel, rewards.c.issued_at,
                                     customers.c.email)
                              .join(customers, customers.c.id == rewards.c.customer_id)
                              .where(rewards.c.key.startswith(f"redeem:demo:{SEED}:"))).all()
        spent = dict(conn.execute(
            select(customers.c.email, -func.sum(ledger_entries.c.amount))
            .join(accounts, accounts.c.customer_id == customers.c.id)
            .join(ledger_entries, ledger_entries.c.account_id == accounts.c.id)
            .where(accounts.c.unit == "points", ledger_entries.c.reason == "redeem")
            .group_by(customers.c.email)).all())
        newest = conn.execute(select(func.max(inbox.c.received_at))).scalar()
    assert first["redeemed"] == len(bought) > 0
    with_points = [email for email in _expected_points(plan(CUSTOMERS * 2, SEED)[0])
                   if customer_summary(engine, email)["points"] + spent.get(email, 0) >= 100]
    assert len(bought) < len(with_points)  # (a share, about engine.demo.SPENDERS ‰, not everyone)
    assert SHOWCASE not in {row.email for row in bought}
    assert {row.channel for row in bought} == {"pos"}
    assert {email: cost for _, cost, _, _, email in bought} == spent
    for row in bought:  # in the shop's history, not at the hour the demo ran
        assert row.issued_at < newest
    # the same shop without the spending: every balance is what was spent more
    monkeypatch.setattr("engine.demo.SPENDERS", 0)
    unspent = make_engine(tables, url=f"sqlite:///{tmp_path / 'unspent.sqlite3'}")
    unspent.ensure_schema()
    assert run_demo(unspent, CUSTOMERS * 2, SEED, _quiet())["redeemed"] == 0
    emails = list(_expected_points(plan(CUSTOMERS * 2, SEED)[0]))
    assert {email: customer_summary(engine, email)["points"] + spent.get(email, 0) for email in emails} == {
        email: customer_summary(unspent, email)["points"] for email in emails}
    monkeypatch.undo()
    before = _state(engine)
    second = run_demo(engine, CUSTOMERS * 2, SEED, _quiet())
    assert second["redeemed"] == 0 and second["applied"] == 0
    assert _state(engine) == before


def test_shopify_bodies_translate_with_the_real_connector():
    connector = ShopifyConnector({"shop": "example.myshopify.com"})
    refund = shopify_refund(SHOPIFY_ID_BASE + 9, ORDER_ID, [(0, LINES[0], 1)], AT)
    body = shopify_order(ORDER_ID, CUSTOMER, LINES, financial_status="partially_refunded", updated_at=AT,
                         discount_codes=["VITEJTE10"], refunds=[refund])
    payload = json.loads(json.dumps(body, ensure_ascii=False))  # ids above 2^53 survive JSON
    [event] = connector.translate("orders/updated", payload, {})
    loaded = load_event(event)
    order = loaded["order"]
    assert order["id"] == str(ORDER_ID) and ORDER_ID > 2**53
    assert [line["id"] for line in order["lines"]] == [str(shopify_line_id(ORDER_ID, i)) for i in range(3)]
    assert [line["discount"] for line in order["lines"]] == [Decimal("3.87"), 0, 0]
    assert [line["gift_card"] for line in order["lines"]] == [False, False, True]
    assert sum(map(line_eligible, order["lines"])) == Decimal("38.70") - Decimal("3.87") + Decimal("9.50")
    assert order["shipping"] == Decimal("5.00") and order["discount_codes"] == ["VITEJTE10"]
    assert order["refunds"][0]["amount"] == Decimal("11.61")  # 12.90 less a third of 3.87
    assert loaded["customer"]["email"] == CUSTOMER.email and loaded["customer"]["phone"] == CUSTOMER.phone
    assert loaded["customer"]["external_id"] == str(CUSTOMER.shopify_id)

    [refunded] = connector.translate("refunds/create", json.loads(json.dumps(refund)), {})
    assert load_event(refunded)["order"]["refunds"][0]["amount"] == Decimal("11.61")
    assert load_event(connector.translate("customers/create", shopify_customer(CUSTOMER, AT), {})[0])
    pending = shopify_order(ORDER_ID, CUSTOMER, LINES, financial_status="pending", updated_at=AT)
    assert load_event(connector.translate("orders/create", pending, {})[0])["order"]["status"] == "pending"
    cancelled = shopify_order(ORDER_ID, CUSTOMER, LINES, financial_status="refunded", updated_at=AT,
                              cancelled_at=AT)
    assert load_event(connector.translate("orders/cancelled", cancelled, {})[0])["order"]["status"] == "cancelled"


def test_woocommerce_bodies_translate_with_the_real_connector():
    connector = WooCommerceConnector({"url": "https://shop.example"})
    body = woocommerce_order(20_001, CUSTOMER, LINES, modified_gmt=AT, refunds=[(520_001, Decimal("11.61"))])
    [event] = connector.translate("order.updated", json.loads(json.dumps(body)), {})
    loaded = load_event(event)
    assert loaded["type"] == "order.paid" and loaded["order"]["id"] == "20001"
    assert sum(map(line_eligible, loaded["order"]["lines"])) == Decimal("44.33")
    assert [(r["id"], r["amount"]) for r in loaded["order"]["refunds"]] == [("520001", Decimal("11.61"))]
    assert loaded["customer"]["phone"] == "601 000 007" and loaded["customer"]["country"] == "CZ"
    assert load_event(connector.translate("customer.created", woocommerce_customer(CUSTOMER, AT), {})[0])


def test_bodies_have_the_contract_payloads_shape():
    refund = shopify_refund(SHOPIFY_ID_BASE + 9, ORDER_ID, [(0, LINES[0], 1)], AT)
    order = shopify_order(ORDER_ID, CUSTOMER, LINES, updated_at=AT, refunds=[refund])
    real = load_contract("shopify/webhooks/orders_paid.docs-2026-04.json")
    assert set(order) == set(real)
    assert set(order["line_items"][0]) == set(real["line_items"][0])
    assert set(order["shipping_lines"][0]) == set(real["shipping_lines"][0])
    # email_marketing_consent is in the 2024-10 deliveries' order customer
    assert set(order["customer"]) - {"email_marketing_consent"} == set(real["customer"])
    real_refund = load_contract("shopify/webhooks/refunds_create.docs-2026-04.json")
    assert set(refund) == set(real_refund)
    assert set(refund["refund_line_items"][0]) == set(real_refund["refund_line_items"][0])
    assert set(refund["refund_line_items"][0]["line_item"]) == set(
        real_refund["refund_line_items"][0]["line_item"])
    assert set(refund["transactions"][0]) == set(real_refund["transactions"][0])
    real_customer = load_contract("shopify/webhooks/customers_create.docs-2026-04.json")
    assert set(shopify_customer(CUSTOMER, AT)) - {"email_marketing_consent"} == set(real_customer)
    woo = woocommerce_order(20_001, CUSTOMER, LINES, modified_gmt=AT)
    real_woo = load_contract("woocommerce/webhooks/order_updated_completed.body.json")
    assert set(woo) == set(real_woo)
    for part in ("billing", "shipping"):
        assert set(woo[part]) == set(real_woo[part])
    assert set(woo["line_items"][0]) == set(real_woo["line_items"][0])
    assert woo["date_modified_gmt"] == "2026-02-03T10:30:00" and woo["date_modified"] == "2026-02-03T11:30:00"
    real_woo_customer = load_contract("woocommerce/webhooks/customer_created.body.json")
    assert set(woocommerce_customer(CUSTOMER, AT)) == set(real_woo_customer)


def test_builders_are_deterministic():
    assert plan(5, 1) == plan(5, 1)
    assert plan(5, 1) != plan(5, 2)
