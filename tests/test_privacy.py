"""Export and erasure of a customer's data (GDPR requests): everything held is
exported; erasure removes what identifies the person, raw deliveries
included, and keeps every balance and the audit exact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from engine import inbox
from engine.customers import customer_summary
from engine.privacy import UnknownCustomer, erase, export
from tests.streams import T0, Line, PlannedOrder, _shopify_order, _woo_order

EMAIL = "jana.novakova@example.com"


def shop_with_jana(engine):
    jana = PlannedOrder("shopify", 1, EMAIL, (Line(Decimal("40.00"), 1),), phone="+420601123456")
    body = _shopify_order(jana, "paid", T0, [], False)
    body["note"] = "ring twice, Jana"
    engine.ingest("shopify", "orders/paid", json.dumps(body).encode())
    woo = _woo_order(PlannedOrder("woocommerce", 2, EMAIL, (Line(Decimal("10.00"), 1),)), "completed", T0, [])
    engine.ingest("woocommerce", "order.updated", json.dumps(woo).encode())
    other = PlannedOrder("shopify", 3, "petr@example.cz", (Line(Decimal("5.00"), 1),))
    engine.ingest("shopify", "orders/paid", json.dumps(_shopify_order(other, "paid", T0, [], False)).encode())


def test_an_export_holds_the_customer_their_ledger_orders_and_raw_deliveries(engine):
    shop_with_jana(engine)
    data = export(engine, EMAIL)
    assert data["customer"][0]["email"] == EMAIL
    assert sum(e["amount"] for e in data["ledger"]) == 50
    assert len(data["orders"]) == 2
    assert len(data["deliveries"]) == 2 and all(EMAIL in d["body"] for d in data["deliveries"])
    assert {c["channel"] for c in data["channels"]} == {"shopify"}


def test_erasure_removes_what_identifies_the_person_and_keeps_the_balances_exact(engine):
    shop_with_jana(engine)
    card = customer_summary(engine, EMAIL)["card_code"]
    done = erase(engine, EMAIL, T0 + timedelta(days=1))
    assert done == {"customers": 1, "deliveries": 2, "orders_with_notes": 1}
    after = customer_summary(engine, card)
    assert (after["email"], after["phone"], after["first_name"], after["last_name"]) == (None, None, None, None)
    assert after["points"] == 50
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
        bodies = [bytes(inbox.get(conn, row.id).body) for row in inbox.listing(conn)]
    assert not any(EMAIL.encode() in b or b"+420601123456" in b or b"ring twice" in b for b in bodies)
    assert any(b"petr@example.cz" in b for b in bodies)  # other customers' deliveries are kept
    assert customer_summary(engine, "petr@example.cz")["points"] == 5


def test_an_unknown_customer_is_refused(engine):
    with pytest.raises(UnknownCustomer):
        erase(engine, "nobody@example.com", datetime.now(UTC))


def test_the_cli_exports_and_erases_only_with_yes(engine, tmp_path):
    from engine.cli import main

    shop_with_jana(engine)
    (tmp_path / "plugins.toml").write_text('[engine]\ncurrency = "EUR"\n[rules.points]\nper_unit = 1\n'
                                          '[connectors.shopify]\nshop = "x.myshopify.com"\n'
                                          '[connectors.woocommerce]\nurl = "https://shop.example"\n')
    runner = CliRunner(env={"REGULARS_DATABASE_URL": engine.config.database_url})
    config = ["--config", str(tmp_path / "plugins.toml")]
    exported = runner.invoke(main, [*config, "customer", "export", EMAIL])
    assert exported.exit_code == 0 and json.loads(exported.output)["customer"][0]["email"] == EMAIL
    refused = runner.invoke(main, [*config, "customer", "erase", EMAIL])
    assert refused.exit_code == 2 and "--yes" in refused.output
    erased = runner.invoke(main, [*config, "customer", "erase", EMAIL, "--yes"])
    assert erased.exit_code == 0 and "balances unchanged" in " ".join(erased.output.split())
