"""Export and erasure of a customer's data (GDPR requests): everything held is
exported; erasure removes what identifies the person, raw deliveries
included, and keeps every balance and the audit exact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine import inbox
from engine.customers import customer_summary
from engine.db.models import customers, orders
from engine.privacy import UnknownCustomer, erase, export
from tests.conftest import CONTRACTS, empty_database, examples
from tests.streams import (
    T0,
    Line,
    PlannedOrder,
    _shopify_order,
    _woo_order,
    deliveries,
    expected_by_email,
    ingest_all,
    shuffled_with_resends,
)

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


def test_an_export_holds_their_visits_memberships_card_links_and_dashboard_footprint(make_engine):
    from tests.conftest import DEFAULT_TABLES

    engine = make_engine({**DEFAULT_TABLES, "connectors": {**DEFAULT_TABLES["connectors"], "pos": {}}})
    shop_with_jana(engine)
    visit = {"id": "v1", "terminal": "t1", "occurred_at": "2026-03-02T09:30:00+00:00", "customer": {"email": EMAIL}}
    assert engine.ingest("pos", "visit", json.dumps(visit).encode()).status == "applied"
    data = export(engine, EMAIL)
    assert [(v["channel"], v["day"]) for v in data["visit_days"]] == [("pos", "2026-03-02")]
    assert data["subscriptions"] == [] and data["card_links"] == []
    [footprint] = data["dashboard_footprints"]
    assert footprint["customer_id"] == data["customer"][0]["id"] and footprint["footprint"]
    json.dumps(data)  # all of it JSON


def test_erasure_removes_what_identifies_the_person_and_keeps_the_balances_exact(engine):
    shop_with_jana(engine)
    card = customer_summary(engine, EMAIL)["card_code"]
    done = erase(engine, EMAIL, T0 + timedelta(days=1))
    assert done == {"customers": 1, "deliveries": 2, "orders_with_notes": 1, "adjustment_notes": 0}
    after = customer_summary(engine, card)
    assert (after["email"], after["phone"], after["first_name"], after["last_name"]) == (None, None, None, None)
    assert after["points"] == 50
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
        bodies = [bytes(inbox.get(conn, row.id).body) for row in inbox.listing(conn)]
    assert not any(EMAIL.encode() in b or b"+420601123456" in b or b"ring twice" in b for b in bodies)
    assert any(b"petr@example.cz" in b for b in bodies)  # other customers' deliveries are kept
    assert customer_summary(engine, "petr@example.cz")["points"] == 5
    with engine.db.connect() as conn:  # the shipping address kept for the referral guard goes too
        kept = [r.state["snapshot"].get("address") for r in conn.execute(select(orders).order_by(orders.c.id))]
    assert kept == [None, None, "123 Shipping Street, 40003, US"]  # (Jana's two orders, then Petr's)


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


# -- Shopify's mandatory privacy webhooks ----------------------------------------------
#
# The bodies are the examples of shopify.dev's "Privacy law compliance" page
# (shared/contracts has none): customers/data_request, customers/redact, shop/redact.

def _privacy_body(topic: str, customer_id: str | None = None, email: str = EMAIL) -> bytes:
    body = {"shop_id": 954889, "shop_domain": "example.myshopify.com"}
    if topic != "shop/redact":
        body["customer"] = {"id": int(customer_id), "email": email, "phone": "555-625-1199"}
    if topic == "customers/data_request":
        body["orders_requested"] = [299938, 280263, 220458]
        body["data_request"] = {"id": 9999}
    elif topic == "customers/redact":
        body["orders_to_redact"] = [299938, 280263, 220458]
    return json.dumps(body).encode()


def _headers(topic: str, webhook_id: str) -> dict:
    return {"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Triggered-At": "2026-11-20T10:00:00.123456789Z", "X-Shopify-Shop-Domain": "example.myshopify.com"}


def _requests(engine):
    from engine.privacy import requests

    with engine.db.connect() as conn:
        return requests(conn)


@pytest.mark.parametrize("orders", [5, "299938", {"id": 299938}])
def test_a_privacy_request_whose_orders_are_not_a_list_is_kept_as_failed_saying_so(engine, orders):
    body = json.loads(_privacy_body("customers/redact", "42"))
    body["orders_to_redact"] = orders
    outcome = engine.ingest("shopify", "customers/redact", json.dumps(body).encode(), _headers("customers/redact", "x"))
    assert outcome.status == "failed" and outcome.plugin is None, outcome
    assert "orders_to_redact must be a list" in outcome.error


def test_a_shopify_data_request_keeps_the_customer_s_export_for_the_merchant(engine):
    shop_with_jana(engine)
    shopify_id = customer_summary(engine, EMAIL)["channels"]["shopify"][0]
    topic = "customers/data_request"
    body = _privacy_body(topic, shopify_id)
    assert engine.ingest("shopify", topic, body, _headers(topic, "b1")).status == "applied"
    assert engine.ingest("shopify", topic, body, _headers(topic, "b2")).status == "applied"  # resent: recorded once
    (request,) = _requests(engine)
    assert (request.kind, request.status) == ("data_request", "exported")
    assert request.data["customer"][0]["email"] == EMAIL
    assert sum(e["amount"] for e in request.data["ledger"]) == 50
    assert customer_summary(engine, EMAIL)["points"] == 50  # nothing else changed


def test_a_shopify_redact_request_erases_the_person_and_keeps_the_ledger(engine):
    shop_with_jana(engine)
    summary = customer_summary(engine, EMAIL)
    topic = "customers/redact"
    outcome = engine.ingest("shopify", topic, _privacy_body(topic, summary["channels"]["shopify"][0]),
                            _headers(topic, "r1"))
    assert outcome.status == "applied"
    after = customer_summary(engine, summary["card_code"])
    assert (after["email"], after["phone"], after["points"]) == (None, None, 50)
    (request,) = _requests(engine)
    assert (request.kind, request.status) == ("redact", "erased")
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
        bodies = [bytes(inbox.get(conn, row.id).body) for row in inbox.listing(conn)]
    assert not any(EMAIL.encode() in b for b in bodies)  # the request's own body included


def test_an_erasure_of_more_deliveries_than_a_statement_takes_goes_in_parts(engine, monkeypatch):
    """A customer named in more stored deliveries than one statement's
    parameters allow (65,535 with PostgreSQL's driver): the inbox is erased in
    parts (here of 3, to keep the test small)."""
    from engine import privacy

    monkeypatch.setattr(privacy, "_IDS_PER_STATEMENT", 3)
    shop_with_jana(engine)
    for n in range(7):  # deliveries that mention her and failed, kept raw
        engine.ingest("shopify", "orders/paid", json.dumps({"email": EMAIL, "n": n}).encode())
    summary = customer_summary(engine, EMAIL)
    topic = "customers/redact"
    outcome = engine.ingest("shopify", topic, _privacy_body(topic, summary["channels"]["shopify"][0]),
                            _headers(topic, "r1"))
    assert outcome.status == "applied", outcome
    (request,) = _requests(engine)
    assert request.data["deliveries"] >= 9  # her two orders, the seven failed ones (and the request)
    with engine.db.connect() as conn:
        bodies = [bytes(inbox.get(conn, row.id).body) for row in inbox.listing(conn, limit=100)]
    assert not any(EMAIL.encode() in b for b in bodies)


def test_a_request_for_someone_never_seen_is_recorded_as_nothing_held(engine):
    topic = "customers/data_request"
    body = _privacy_body(topic, "191167", email="nobody@example.com")
    assert engine.ingest("shopify", topic, body, _headers(topic, "n1")).status == "applied"
    (request,) = _requests(engine)
    assert (request.status, request.customer_id, request.data) == ("nothing-held", None, None)


def test_a_shop_redact_erases_customers_known_only_through_the_shop(engine):
    shop_with_jana(engine)  # Jana buys in both shops; Petr only in Shopify
    topic = "shop/redact"
    assert engine.ingest("shopify", topic, _privacy_body(topic), _headers(topic, "s1")).status == "applied"
    (request,) = _requests(engine)
    assert request.data["customers_erased"] == 1 and request.data["customers_kept_for_other_channels"] == 1
    assert customer_summary(engine, "petr@example.cz") is None  # no longer findable by email
    assert customer_summary(engine, EMAIL)["points"] == 50
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
        shopify_bodies = [bytes(inbox.get(conn, r.id).body) for r in inbox.listing(conn) if r.channel == "shopify"]
    assert all(b.startswith(b'{"erased"') for b in shopify_bodies)


def test_a_redaction_for_another_shop_erases_nothing(engine):
    """A shop/redact names its shop: one for another shop (fed to ``regulars
    ingest`` by mistake; a signed webhook can't be) fails saying so."""
    shop_with_jana(engine)
    topic = "shop/redact"
    body = json.dumps({"shop_id": 1, "shop_domain": "another.myshopify.com"}).encode()
    outcome = engine.ingest("shopify", topic, body, _headers(topic, "s9"))
    assert outcome.status == "failed" and "another.myshopify.com" in outcome.error, outcome
    assert customer_summary(engine, "petr@example.cz") is not None and _requests(engine) == []


def test_a_privacy_webhook_without_a_customer_is_refused_with_the_reason(engine):
    topic = "customers/redact"
    outcome = engine.ingest("shopify", topic, b'{"shop_id": 954889, "shop_domain": "example.myshopify.com"}',
                            _headers(topic, "x1"))
    assert outcome.status == "failed" and "customer" in outcome.error


# -- whose raw deliveries are whose --------------------------------------------------

WOO_HOOKS = CONTRACTS / "woocommerce" / "webhooks"


def _woo(name: str, **changes) -> bytes:
    body = json.loads((WOO_HOOKS / name).read_text())
    for key, value in changes.items():
        if key == "email":
            body["billing"]["email"] = value
        else:
            body[key] = value
    return json.dumps(body, indent=2).encode()


def test_an_erasure_keeps_deliveries_that_only_hold_a_longer_or_another_thing_s_id(engine):
    """A WooCommerce customer's id is small (3): erasing them must not erase
    another customer's order that holds ``"customer_id": 31`` and line items
    ``"id": 315`` (a longer number), nor one whose tax line is ``"id": 3``
    (another thing's id). Real WooCommerce bodies, from shared/contracts."""
    created = json.loads((WOO_HOOKS / "customer_created.body.json").read_text())
    created.update(id=3, email="ema@example.com")
    assert engine.ingest("woocommerce", "customer.created", json.dumps(created).encode()).status == "applied"
    hers = _woo("order_updated_completed.body.json", id=901, customer_id=3, email="ema@example.com")
    assert engine.ingest("woocommerce", "order.updated", hers).status == "applied"
    other = _woo("order_updated_completed.body.json", id=902, customer_id=31, email="oskar@example.com")
    assert engine.ingest("woocommerce", "order.updated", other).status == "applied"
    guest = json.loads(_woo("order_updated_completed.body.json", id=903, customer_id=0, email="guest@example.com"))
    guest["tax_lines"][0]["id"] = 3
    assert engine.ingest("woocommerce", "order.updated", json.dumps(guest, indent=2).encode()).status == "applied"

    assert len(export(engine, "ema@example.com")["deliveries"]) == 2
    done = erase(engine, "ema@example.com", T0 + timedelta(days=1))
    assert done["deliveries"] == 2, done
    with engine.db.connect() as conn:
        bodies = [bytes(inbox.get(conn, row.id).body) for row in inbox.listing(conn)]
        assert engine.ledger.audit(conn) == []
    assert sum(b.startswith(b'{"erased"') for b in bodies) == 2
    assert any(b"oskar@example.com" in b for b in bodies) and any(b"guest@example.com" in b for b in bodies)


def test_a_delivery_that_names_them_only_by_their_channel_id_is_theirs(engine):
    """Found by the channel's id alone, where it names the customer: a
    WooCommerce order's ``customer_id`` (spaced or compact JSON), a customer
    body's own ``id``, and in a body kept raw because it did not parse; not
    the same number from another channel."""
    created = json.loads((WOO_HOOKS / "customer_created.body.json").read_text())
    created.update(id=3, email="ema@example.com")
    theirs = [engine.ingest("woocommerce", "customer.created", json.dumps(created).encode()).inbox_id]
    no_email = json.loads(_woo("order_updated_completed.body.json", id=904, customer_id=3, email=""))
    theirs.append(engine.ingest("woocommerce", "order.updated", json.dumps(no_email, indent=2).encode()).inbox_id)
    no_email["id"] = 907
    theirs.append(engine.ingest("woocommerce", "order.updated",
                                json.dumps(no_email, separators=(",", ":")).encode()).inbox_id)
    truncated = engine.ingest("woocommerce", "order.updated", b'{"id": 905, "customer_id": 3, "status": "compl')
    assert truncated.status == "failed"
    theirs.append(truncated.inbox_id)
    engine.ingest("woocommerce", "order.updated", b'{"id": 906, "customer_id": 31, "status": "compl')
    engine.ingest("shopify", "orders/paid", b'{"id": 908, "customer": {"id": 3}, "status": "compl')
    found = export(engine, "ema@example.com")["deliveries"]
    assert sorted(d["id"] for d in found) == sorted(theirs)


def test_a_delivery_is_theirs_by_their_email_in_any_case_and_their_phone_as_written(engine):
    """Their email however capitalized, their phone in the national form
    under a key that says phone or in the international form in a note:
    all theirs. An address that only ends with theirs is someone else's."""
    shop_with_jana(engine)
    bodies = {
        "capitals": {"id": 11, "email": "JANA.Novakova@Example.COM"},
        "national": {"id": 12, "customer": {"phone": "601 123 456"}},
        "note": {"id": 13, "note": "call her on +420601123456, or ring twice"},
        "not hers": {"id": 14, "email": "xjana.novakova@example.com", "phone": "+420 601 999 999"},
    }
    stored = {name: engine.ingest("shopify", "orders/paid", json.dumps(b).encode()).inbox_id
              for name, b in bodies.items()}
    found = {d["id"] for d in export(engine, EMAIL)["deliveries"]}
    assert {name for name, inbox_id in stored.items() if inbox_id in found} == {"capitals", "national", "note"}
    erase(engine, EMAIL, T0 + timedelta(days=1))
    with engine.db.connect() as conn:
        kept = bytes(inbox.get(conn, stored["not hers"]).body)
    assert b"xjana.novakova@example.com" in kept


def test_a_shop_redact_erases_what_other_channels_hold_of_its_customers_and_only_that(engine):
    shop_with_jana(engine)  # Jana buys in both shops; Petr only in Shopify
    petr = engine.ingest("woocommerce", "order.updated", b'{"id": 77, "billing": {"email": "Petr@Example.cz"')
    jana = engine.ingest("woocommerce", "order.updated", b'{"id": 78, "billing": {"email": "' + EMAIL.encode())
    topic = "shop/redact"
    assert engine.ingest("shopify", topic, _privacy_body(topic), _headers(topic, "s2")).status == "applied"
    with engine.db.connect() as conn:
        assert bytes(inbox.get(conn, petr.inbox_id).body) == b'{"erased": "personal data removed on request"}'
        assert EMAIL.encode() in bytes(inbox.get(conn, jana.inbox_id).body)
        woo_orders = [bytes(inbox.get(conn, r.id).body) for r in inbox.listing(conn)
                      if r.channel == "woocommerce" and r.topic == "order.updated"]
    assert sum(EMAIL.encode() in b for b in woo_orders) == 2  # her order and the raw one: she is kept


def test_a_snapshot_from_before_an_erasure_brings_nothing_back_and_a_newer_one_does(engine):
    from datetime import UTC, datetime

    from tests.test_identity import _profile

    assert engine.ingest("shopify", "customers/update",
                         _profile("Bob", "subscribed", "2022-01-02T10:00:00-05:00")).status == "applied"
    erase(engine, "bob@biller.com", datetime(2022, 1, 5, tzinfo=UTC))
    late = _profile("Robert", "subscribed", "2022-01-03T10:00:00-05:00")  # taken before the erasure
    assert engine.ingest("shopify", "customers/update", late).status == "applied"
    with engine.db.connect() as conn:
        row = conn.execute(select(customers.c.email, customers.c.first_name, customers.c.accepts_marketing)).one()
    assert tuple(row) == (None, None, None)
    back = _profile("Bob", "unsubscribed", "2022-01-06T10:00:00-05:00")  # the customer came back
    assert engine.ingest("shopify", "customers/update", back).status == "applied"
    with engine.db.connect() as conn:
        row = conn.execute(select(customers.c.email, customers.c.first_name, customers.c.accepts_marketing)).one()
    assert tuple(row) == ("bob@biller.com", "Bob", False)


# -- snapshots taken before an erasure, delivered after it ---------------------------------

GUEST = "guest.buyer@example.com"
ERASED_AT = T0 + timedelta(days=30)  # after every snapshot the streams make (T0 to T0 + 9 days)


def _bodies_holding(engine, text: str) -> list[int]:
    with engine.db.connect() as conn:
        return [row.id for row in inbox.listing(conn, limit=10_000)
                if text.encode() in bytes(inbox.get(conn, row.id).body).lower()]


def _customer_rows(engine) -> list[tuple]:
    with engine.db.connect() as conn:
        return [tuple(r) for r in conn.execute(select(customers.c.id, customers.c.email).order_by(customers.c.id))]


def test_a_guest_s_order_snapshot_from_before_the_erasure_stays_theirs_and_is_erased_in_turn(engine):
    """A WooCommerce guest (no shop account: known by email only) is erased;
    their order's next snapshot, taken before the erasure, is delivered after
    it (a retried webhook). It used to make the guest anew from the email and
    move the order's points to that new customer."""
    order = PlannedOrder("woocommerce", 5, GUEST, (Line(Decimal("40.00"), 1),), phone="+420777123456")
    paid = _woo_order(order, "processing", T0 + timedelta(hours=1), [])
    assert engine.ingest("woocommerce", "order.updated", json.dumps(paid).encode()).status == "applied"
    card = customer_summary(engine, GUEST)["card_code"]
    erase(engine, GUEST, ERASED_AT)

    late = _woo_order(order, "completed", T0 + timedelta(days=2), [Decimal("10.00")])  # and a refund
    outcome = engine.ingest("woocommerce", "order.updated", json.dumps(late).encode())
    assert (outcome.status, outcome.entries) == ("applied", 1)
    assert _customer_rows(engine) == [(1, None)]  # nobody made from the email
    after = customer_summary(engine, card)
    assert (after["points"], after["email"], after["phone"], after["first_name"]) == (30, None, None, None)
    assert _bodies_holding(engine, GUEST) == [] and _bodies_holding(engine, "777123456") == []
    with engine.db.connect() as conn:
        assert bytes(inbox.get(conn, outcome.inbox_id).body) == inbox.ERASED_BODY
        assert engine.ledger.audit(conn) == []
    # The same delivery again is still a duplicate (its key and its body's digest are kept).
    assert engine.ingest("woocommerce", "order.updated", json.dumps(late).encode()).status == "duplicate"


def test_a_snapshot_from_before_the_erasure_goes_to_the_erased_customer_even_when_the_person_came_back(engine):
    """After the erasure the guest buys again with the same email: that is a
    new customer. An old order's snapshot from before the erasure stays with
    the erased customer, and the new customer's order with them."""
    old = PlannedOrder("woocommerce", 5, GUEST, (Line(Decimal("40.00"), 1),))
    engine.ingest("woocommerce", "order.updated", json.dumps(_woo_order(old, "processing", T0, [])).encode())
    erase(engine, GUEST, ERASED_AT)
    new = PlannedOrder("woocommerce", 6, GUEST, (Line(Decimal("7.00"), 1),))
    back = _woo_order(new, "processing", ERASED_AT + timedelta(days=1), [])
    assert engine.ingest("woocommerce", "order.updated", json.dumps(back).encode()).status == "applied"
    late = _woo_order(old, "completed", T0 + timedelta(days=2), [Decimal("15.00")])
    assert engine.ingest("woocommerce", "order.updated", json.dumps(late).encode()).status == "applied"

    assert _customer_rows(engine) == [(1, None), (2, GUEST)]
    assert customer_summary(engine, "id:1")["points"] == 25
    assert customer_summary(engine, GUEST)["points"] == 7
    assert len(_bodies_holding(engine, GUEST)) == 1  # the new order's, theirs to keep
    # Erased again: a snapshot taken between the two erasures is the second customer's.
    erase(engine, GUEST, ERASED_AT + timedelta(days=10))
    between = _woo_order(new, "completed", ERASED_AT + timedelta(days=2), [Decimal("2.00")])
    assert engine.ingest("woocommerce", "order.updated", json.dumps(between).encode()).status == "applied"
    assert _customer_rows(engine) == [(1, None), (2, None)]
    assert (customer_summary(engine, "id:1")["points"], customer_summary(engine, "id:2")["points"]) == (25, 5)
    assert _bodies_holding(engine, GUEST) == []


def test_a_phone_erased_finds_the_erased_customer_too(engine):
    """Known by phone only (a guest who gave no email): the phone's digest finds them."""
    order = PlannedOrder("woocommerce", 8, "", (Line(Decimal("12.00"), 1),), phone="+420 777 123 456")
    engine.ingest("woocommerce", "order.updated", json.dumps(_woo_order(order, "processing", T0, [])).encode())
    erase(engine, "+420777123456", ERASED_AT)
    late = _woo_order(order, "completed", T0 + timedelta(days=1), [Decimal("2.00")])
    assert engine.ingest("woocommerce", "order.updated", json.dumps(late).encode()).status == "applied"
    with engine.db.connect() as conn:
        assert conn.execute(select(customers.c.phone)).scalars().all() == [None]
    assert customer_summary(engine, "id:1")["points"] == 10
    assert _bodies_holding(engine, "777 123 456") == []


def test_a_late_snapshot_in_a_batch_erases_only_its_own_body(engine):
    """``ingest --batch``: the late snapshot's body is erased, the rest of the
    batch kept; one that fails in the batch changes nothing of it."""
    order = PlannedOrder("woocommerce", 5, GUEST, (Line(Decimal("40.00"), 1),))
    engine.ingest("woocommerce", "order.updated", json.dumps(_woo_order(order, "processing", T0, [])).encode())
    erase(engine, GUEST, ERASED_AT)
    other = PlannedOrder("woocommerce", 9, "someone.else@example.com", (Line(Decimal("3.00"), 1),))
    late = _woo_order(order, "completed", T0 + timedelta(days=2), [Decimal("10.00")])
    batch = [("order.updated", json.dumps(_woo_order(other, "processing", T0, [])).encode(), None),
             ("order.updated", json.dumps(late).encode(), None),
             ("order.updated", b'{"id": 10, "status": "processing", "line_items": "not a list"}', None)]
    outcomes = engine.ingest_batch("woocommerce", batch)
    assert [o.status for o in outcomes] == ["applied", "applied", "failed"]
    assert _bodies_holding(engine, GUEST) == []
    assert len(_bodies_holding(engine, "someone.else@example.com")) == 1
    assert customer_summary(engine, "id:1")["points"] == 30


def test_a_linked_customer_s_late_snapshot_is_erased_in_turn_and_a_newer_one_kept(engine):
    """A Shopify customer is found by their shop id after an erasure as
    before; the late profile's raw body, which names them, is erased once
    applied; the profile they give after the erasure is theirs to keep."""
    from tests.test_identity import _profile

    engine.ingest("shopify", "customers/update", _profile("Bob", "subscribed", "2022-01-02T10:00:00-05:00"))
    erase(engine, "bob@biller.com", datetime(2022, 1, 5, tzinfo=UTC))
    late = engine.ingest("shopify", "customers/update", _profile("Robert", None, "2022-01-03T10:00:00-05:00"))
    back = engine.ingest("shopify", "customers/update", _profile("Bob", None, "2022-01-06T10:00:00-05:00"))
    with engine.db.connect() as conn:
        assert bytes(inbox.get(conn, late.inbox_id).body) == inbox.ERASED_BODY
        assert b"bob@biller.com" in bytes(inbox.get(conn, back.inbox_id).body)
    assert _customer_rows(engine) == [(1, "bob@biller.com")]


def test_a_late_snapshot_that_names_them_only_by_their_shop_id_is_erased_in_turn(engine):
    """No email in it (a profile with the name and the shop's id only): the
    customer is found by the id, and the body, which holds their name, is
    erased all the same."""
    from tests.test_identity import _profile

    engine.ingest("shopify", "customers/update", _profile("Bob", "subscribed", "2022-01-02T10:00:00-05:00"))
    erase(engine, "bob@biller.com", datetime(2022, 1, 5, tzinfo=UTC))
    body = json.loads(_profile("Robert", None, "2022-01-03T10:00:00-05:00"))
    body.update(email=None, phone=None, default_address=None, addresses=[])
    late = engine.ingest("shopify", "customers/update", json.dumps(body).encode())
    assert late.status == "applied"
    with engine.db.connect() as conn:
        assert bytes(inbox.get(conn, late.inbox_id).body) == inbox.ERASED_BODY
        assert conn.execute(select(customers.c.first_name)).scalars().all() == [None]


@st.composite
def _late_streams(draw):
    """A guest's WooCommerce orders and a Shopify customer's orders (one
    email), every snapshot taken before the erasure, delivered in any order
    with resends; the erasure comes after ``cut`` of them; after it, the
    person may come back with an order of their own."""
    plans = [PlannedOrder(draw(st.sampled_from(["woocommerce", "shopify"])), number, GUEST,
                          (Line(Decimal(draw(st.integers(5, 60))), 1),),
                          refunds=tuple(Decimal(a) for a in draw(st.lists(st.integers(1, 4), max_size=2))),
                          cancelled=draw(st.booleans()) and draw(st.booleans()))
             for number in range(1, draw(st.integers(1, 3)) + 1)]
    stream = shuffled_with_resends(draw, [d for plan in plans for d in deliveries(plan)], 2)
    cut = draw(st.integers(1, len(stream)))
    comes_back = draw(st.booleans())
    return plans, stream, cut, comes_back


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_late_streams())
def test_any_arrival_order_around_an_erasure_keeps_the_erased_customer_s_balance_and_no_trace(engine, case):
    """Whatever arrives before or after the erasure, in any order and twice:
    the erased customer ends with the ordered stream's balance, nobody holds
    the email but a customer made after the erasure, and no stored body
    names the person but that customer's own."""
    plans, stream, cut, comes_back = case
    empty_database(engine)
    ingest_all(engine, stream[:cut])
    while not _customer_rows(engine):  # (refunds first: no customer yet to erase)
        ingest_all(engine, stream[cut:cut + 1])
        cut += 1
    erase(engine, GUEST, ERASED_AT)
    new = PlannedOrder("woocommerce", 99, GUEST, (Line(Decimal("3.00"), 1),))
    after = stream[cut:]
    if comes_back:  # in the middle of what comes late
        after.insert(len(after) // 2, ("woocommerce", "order.updated",
                                       json.dumps(_woo_order(new, "processing", ERASED_AT + timedelta(days=1), [])).encode()))
    ingest_all(engine, after)
    rows = _customer_rows(engine)
    erased = rows[0][0]
    assert rows == [(erased, None), *([(rows[-1][0], GUEST)] if comes_back else [])]
    assert customer_summary(engine, f"id:{erased}")["points"] == expected_by_email(plans)[GUEST]
    if comes_back:
        assert customer_summary(engine, GUEST)["points"] == 3
    assert len(_bodies_holding(engine, GUEST)) == (1 if comes_back else 0)
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
