"""Invariant 6, bad input gets a clear error, and invariant 5, nothing is lost:
every malformed delivery is kept in the inbox, raw, with a sentence saying what
is wrong with it, and changes nothing else. Bodies are the real contract
payloads with one thing broken."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from engine import inbox
from engine.customers import customer_summary
from engine.db.models import accounts, customer_links, customers, ledger_entries, lots, orders
from engine.db.models import inbox as inbox_table
from tests.conftest import examples, load_contract
from tests.test_event_loading import break_one_place

SHOPIFY_DELIVERY = "shopify/webhooks/orders_paid.delivery-2024-10.json"
WOO_ORDER = "woocommerce/webhooks/order_updated_completed.body.json"
EMAIL = "jon@example.com"  # the contract order's email
STATE_TABLES = (customers, customer_links, accounts, ledger_entries, lots, orders)


def shopify_paid(change: Callable[[dict], None] | None = None) -> dict:
    """Shopify's sample orders/paid body, made a real paid order (the sample is
    a cancelled, voided test order), then ``change``d."""
    body = copy.deepcopy(load_contract(SHOPIFY_DELIVERY)["body"])
    body.update(financial_status="paid", cancelled_at=None, cancel_reason=None, test=False)
    if change:
        change(body)
    return body


def woo_order(change: Callable[[dict], None] | None = None) -> dict:
    body = copy.deepcopy(load_contract(WOO_ORDER))
    if change:
        change(body)
    return body


def encode(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def state(engine) -> dict[str, int]:
    """Row counts of everything a delivery may change besides the inbox."""
    with engine.db.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in STATE_TABLES
        }


def inbox_rows(engine) -> int:
    with engine.db.connect() as conn:
        return conn.execute(select(func.count()).select_from(inbox_table)).scalar_one()


def stored(engine, inbox_id: int):
    with engine.db.connect() as conn:
        return inbox.get(conn, inbox_id)


def _set_line(body: dict, **values) -> None:
    body["line_items"][0].update(values)


def _shopify_price(value) -> Callable[[dict], None]:
    # Shopify sends the price twice (price and price_set.shop_money); break both.
    def change(body):
        _set_line(body, price=value)
        for money in body["line_items"][0]["price_set"].values():
            money["amount"] = value

    return change


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def shopify_case(case_id: str, body: bytes, *words: str, headers: dict | None = None):
    """An orders/paid delivery and the words its error must contain."""
    return pytest.param("shopify", "orders/paid", body, headers or {}, words, id=case_id)


def woo_case(case_id: str, body: bytes, *words: str, headers: dict | None = None):
    """An order.updated delivery and the words its error must contain."""
    return pytest.param("woocommerce", "order.updated", body, headers or {}, words, id=case_id)


BAD_DELIVERIES = [
    shopify_case("truncated-json", encode(shopify_paid())[:300], "not valid json", "line 1"),
    shopify_case("not-json", b"<html>502 Bad Gateway</html>", "not valid json"),
    shopify_case(
        "not-utf8-latin1",
        encode(shopify_paid()).replace(b"Smith", b"Sm\xeeth"),
        "not utf-8",
        "byte",
        "\\xee",
    ),
    shopify_case("empty-body", b"", "empty"),
    shopify_case("no-utc-moment", encode(shopify_paid(lambda b: b.update(updated_at="0001-01-01T00:00:00+05:00"))),
                 "not a valid datetime"),
    shopify_case("nested-too-deeply", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    shopify_case("integer-of-5000-digits", b'{"id": ' + b"9" * 5000 + b"}", "can't be read", "digits"),
    shopify_case("blank-body", b"  \n", "empty"),
    shopify_case("json-array", encode([shopify_paid()]), "list", "not an object"),
    shopify_case(
        "missing-order-id", encode(shopify_paid(lambda b: b.pop("id"))), "order id", "missing"
    ),
    shopify_case(
        "negative-quantity",
        encode(shopify_paid(lambda b: _set_line(b, quantity=-1))),
        "line_items[0].quantity",
        "negative",
        "-1",
    ),
    shopify_case(
        "absurd-amount",
        encode(shopify_paid(_shopify_price("1000000000000"))),
        "unit_price",
        "less than or equal to 1000000000",
    ),
    shopify_case(
        "price-abc",
        encode(shopify_paid(_shopify_price("abc"))),
        "price",
        "must be a number",
        "'abc'",
    ),
    shopify_case(
        "form-encoded",
        b"id=820982911946154508&email=jon%40example.com",
        "not valid json",
        headers=FORM,
    ),
    woo_case("woo-json-array", encode([woo_order()]), "array, not an object"),
    woo_case("woo-missing-order-id", encode(woo_order(lambda b: b.pop("id"))), "no usable 'id'"),
    woo_case(
        "woo-negative-quantity",
        encode(woo_order(lambda b: _set_line(b, quantity=-1))),
        "quantity",
        "out of range",
        "-1",
    ),
    woo_case(
        "woo-absurd-amount",
        encode(woo_order(lambda b: _set_line(b, subtotal="1e12", total="1e12"))),
        "subtotal",
        "largest accepted amount",
    ),
    woo_case(
        "woo-price-abc",
        encode(woo_order(lambda b: _set_line(b, subtotal="abc", total="abc"))),
        "subtotal",
        "must be a number",
        "'abc'",
    ),
    woo_case("woo-form-encoded", b"webhook_id=42", "not valid json", headers=FORM),
]


@pytest.mark.parametrize(("channel", "topic", "body", "headers", "words"), BAD_DELIVERIES)
def test_a_bad_delivery_is_kept_as_failed_with_what_is_wrong_and_changes_nothing(
    engine, channel, topic, body, headers, words
):
    before = state(engine)

    outcome = engine.ingest(channel, topic, body, headers)

    assert outcome.status == "failed", outcome
    for word in words:
        assert word.lower() in outcome.error.lower(), (word, outcome.error)
    assert "Traceback" not in outcome.error and outcome.plugin is None
    row = stored(engine, outcome.inbox_id)
    assert (row.status, row.error, row.channel, row.topic) == (
        "failed",
        outcome.error,
        channel,
        topic,
    )
    assert bytes(row.body) == body
    assert state(engine) == before == dict.fromkeys(before, 0)

    # Replaying it from the stored body fails again, the same way, still changing nothing.
    again = engine.replay(outcome.inbox_id)
    assert (again.status, again.error) == ("failed", outcome.error)
    assert stored(engine, outcome.inbox_id).attempts == 2
    assert state(engine) == before


def test_an_unknown_topic_is_recorded_as_ignored_and_changes_nothing(engine):
    body = encode(shopify_paid())

    outcome = engine.ingest("shopify", "inventory_levels/update", body)

    assert outcome.status == "ignored"
    assert "inventory_levels/update" in outcome.error and "shopify" in outcome.error
    row = stored(engine, outcome.inbox_id)
    assert (row.status, bytes(row.body)) == ("ignored", body)
    assert state(engine) == dict.fromkeys(state(engine), 0)


def test_a_unicode_customer_name_is_applied_and_kept_exactly(engine):
    first, last = "Žofie 🌸", "Ñandú-李 O’Brien"

    def rename(body):
        body["customer"].update(first_name=first, last_name=last)

    outcome = engine.ingest("shopify", "orders/paid", encode(shopify_paid(rename)))

    assert outcome.status == "applied", outcome
    summary = customer_summary(engine, EMAIL)
    assert (summary["first_name"], summary["last_name"]) == (first, last)
    assert summary["points"] > 0


def _unstorable_shopify(body):
    body["customer"].update(first_name="Ja\x00na", last_name="Nov\ud800ková")
    body["line_items"][0]["title"] = "Flat\x00white"
    body["note"] = "\x00"


def _unstorable_woo(body):
    body["billing"].update(first_name="Ja\x00na", last_name="Nov\ud800ková")
    body["line_items"][0]["name"] = "Flat\x00white"
    body["customer_note"] = "\x00"


@pytest.mark.parametrize(("channel", "topic", "body", "email"), [
    ("shopify", "orders/paid", shopify_paid(_unstorable_shopify), EMAIL),
    ("woocommerce", "order.updated", woo_order(_unstorable_woo), None),
], ids=["shopify", "woocommerce"])
def test_text_no_database_stores_is_mended_and_the_order_earns_all_the_same(engine, channel, topic, body, email):
    """A NUL character (PostgreSQL takes none in text) is dropped, a lone
    surrogate (not UTF-8: no database takes it) becomes U+FFFD; the order is
    applied on either database, and the raw body is kept as it came."""
    raw = json.dumps(body).encode()  # the surrogate escaped, as a shop would send it
    assert b"\\u0000" in raw and b"\\ud800" in raw

    outcome = engine.ingest(channel, topic, raw)

    assert outcome.status == "applied" and outcome.entries == 1, outcome
    assert bytes(stored(engine, outcome.inbox_id).body) == raw
    summary = customer_summary(engine, email or body["billing"]["email"])
    assert (summary["first_name"], summary["last_name"]) == ("Jana", "Nov\ufffdková")
    assert summary["points"] > 0
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []

    # The webhook's way (stored, applied in the background) ends the same.
    other = json.dumps({**body, "id": body["id"] + 1}).encode()
    assert engine.receive(channel, topic, other).status == "received"
    assert [(o.status, o.entries) for o in engine.apply_received()] == [("applied", 1)]


def _long_shopify(body):
    body["customer"].update(first_name="Ž" * 250, phone="call me after six, or write: " + "x" * 60)
    body["phone"] = None
    body["line_items"][0].update(title="Flat white " * 60, name="Flat white " * 60)
    body["discount_codes"] = [{"code": "X" * 300, "amount": "0.00", "type": "fixed_amount"}]


def _long_woo(body):
    body["billing"].update(first_name="Ž" * 250, phone="call me after six, or write: " + "x" * 60)
    body["line_items"][0]["name"] = "Flat white " * 60
    body["shipping"]["address_1"] = "Dlouhá " * 100


@pytest.mark.parametrize(("channel", "topic", "body", "email"), [
    ("shopify", "orders/paid", shopify_paid(_long_shopify), EMAIL),
    ("woocommerce", "order.updated", woo_order(_long_woo), None),
], ids=["shopify", "woocommerce"])
def test_text_longer_than_the_engine_keeps_costs_no_points(engine, channel, topic, body, email):
    """A name or an address longer than its column is cut to it, a product's
    name to 500 characters, a phone or an email longer than any valid one is
    no hint, a code longer than any reward's matches none: the order is
    applied, where before the whole order was refused."""
    outcome = engine.ingest(channel, topic, encode(body))

    assert outcome.status == "applied" and outcome.entries == 1, outcome
    summary = customer_summary(engine, email or body["billing"]["email"])
    assert summary["first_name"] == "Ž" * 200 and summary["points"] > 0
    with engine.db.connect() as conn:
        state_ = conn.execute(select(orders.c.state)).scalar_one()
        assert len(state_["snapshot"]["lines"][0]["name"]) == 500
        assert conn.execute(select(customers.c.phone)).scalar_one() is None


def test_a_key_longer_than_the_inbox_keeps_or_headers_with_nul_still_store_the_delivery(engine):
    """An order id of 10,000 characters makes a delivery key longer than the
    inbox's column (PostgreSQL refused the row, and the delivery was lost):
    it is stored under its head and its SHA-256, fails saying what is wrong,
    and is a duplicate when sent again. Headers with a NUL are mended."""
    long_id = encode(shopify_paid(lambda b: b.update(id="9" * 10_000)))
    failed = engine.ingest("shopify", "orders/paid", long_id)
    assert failed.status == "failed" and "id" in failed.error, failed
    row = stored(engine, failed.inbox_id)
    assert bytes(row.body) == long_id and len(row.key) <= 255 and "sha256:" in row.key
    assert engine.ingest("shopify", "orders/paid", long_id).status == "duplicate"

    odd = {"X-Shopify-Webhook-Id": "a\x00b", "X-Shopify-Topic": "orders/paid\ud800"}
    applied = engine.ingest("shopify", "orders/paid", encode(shopify_paid()), odd)
    assert applied.status == "applied", applied
    assert stored(engine, applied.inbox_id).key == "webhook:orders/paid:ab"


def test_an_error_quoting_a_huge_value_is_kept_cut_to_a_thousand_characters(engine):
    huge = "9x" * 5000
    outcome = engine.ingest("shopify", "orders/paid", encode(shopify_paid(_shopify_price(huge))))
    assert outcome.status == "failed" and outcome.error.startswith("The order line_items[0].price")
    assert len(outcome.error) <= 1000 and outcome.error.endswith("more characters)")
    assert stored(engine, outcome.inbox_id).error == outcome.error


def test_a_resent_identical_delivery_is_a_duplicate_and_changes_nothing(engine):
    recorded = load_contract(SHOPIFY_DELIVERY)
    body, headers = encode(shopify_paid()), recorded["headers"]
    first = engine.ingest("shopify", "orders/paid", body, headers)
    assert first.status == "applied"
    before, deliveries = state(engine), inbox_rows(engine)

    again = engine.ingest("shopify", "orders/paid", body, headers)

    assert (again.status, again.inbox_id) == ("duplicate", first.inbox_id)
    assert state(engine) == before
    assert inbox_rows(engine) == deliveries


def test_the_same_idempotency_key_with_another_body_is_kept_as_a_failed_conflict(engine):
    headers = load_contract(SHOPIFY_DELIVERY)["headers"]  # one X-Shopify-Webhook-Id for both
    first = engine.ingest("shopify", "orders/paid", encode(shopify_paid()), headers)
    assert first.status == "applied"
    before, points = state(engine), customer_summary(engine, EMAIL)["points"]
    other = encode(shopify_paid(lambda b: _set_line(b, quantity=5)))

    outcome = engine.ingest("shopify", "orders/paid", other, headers)

    assert outcome.status == "failed" and outcome.inbox_id != first.inbox_id
    assert "different body" in outcome.error
    row = stored(engine, outcome.inbox_id)
    assert row.status == "failed" and bytes(row.body) == other
    assert (
        f"already used by delivery {first.inbox_id}" in row.error and "different body" in row.error
    )
    assert state(engine) == before
    assert customer_summary(engine, EMAIL)["points"] == points
    # The conflicting delivery sent again is a duplicate of itself, not a third row.
    assert engine.ingest("shopify", "orders/paid", other, headers).status == "duplicate"
    assert inbox_rows(engine) == 2


def test_other_deliveries_go_on_after_a_failed_one(engine):
    failed = engine.ingest("shopify", "orders/paid", encode(shopify_paid(lambda b: b.pop("id"))))
    assert failed.status == "failed"

    applied = engine.ingest("shopify", "orders/paid", encode(shopify_paid()))

    assert applied.status == "applied" and applied.entries == 1
    assert customer_summary(engine, EMAIL)["points"] > 0
    assert stored(engine, failed.inbox_id).status == "failed"


def test_replaying_an_applied_delivery_changes_nothing(engine):
    applied = engine.ingest("shopify", "orders/paid", encode(shopify_paid()))
    before, points = state(engine), customer_summary(engine, EMAIL)["points"]

    again = engine.replay(applied.inbox_id)

    assert (again.status, again.entries) == ("applied", 0)
    assert state(engine) == before
    assert customer_summary(engine, EMAIL)["points"] == points


# -- any real payload, broken anywhere ----------------------------------------------

#: (channel, topic, contract, whether the file is a delivery holding the body)
REAL_DELIVERIES = [
    ("shopify", "orders/paid", "shopify/webhooks/orders_paid.delivery-2024-10.json", True),
    ("shopify", "orders/create", "shopify/webhooks/orders_create.delivery-2024-10.json", True),
    ("shopify", "orders/updated", "shopify/webhooks/orders_updated.delivery-2024-10.json", True),
    ("shopify", "orders/cancelled", "shopify/webhooks/orders_cancelled.delivery-2024-10.json", True),
    ("shopify", "refunds/create", "shopify/webhooks/refunds_create.delivery-2024-10.json", True),
    ("shopify", "customers/update", "shopify/webhooks/customers_update.delivery-2024-10.json", True),
    ("woocommerce", "order.created", "woocommerce/webhooks/order_created.body.json", False),
    ("woocommerce", "order.updated", "woocommerce/webhooks/order_updated_with_refunds.body.json", False),
    ("woocommerce", "customer.created", "woocommerce/webhooks/customer_created.body.json", False),
]
_SENT = itertools.count()


def _real(contract: str, delivery: bool) -> dict:
    data = load_contract(contract)
    return data["body"] if delivery else data


@st.composite
def broken_deliveries(draw):
    """A real payload with one to three things changed anywhere in it (a value
    replaced by junk or another type, a key deleted or added), the order or
    customer now and then another, under a key of its own (a new Shopify
    webhook id, a new WooCommerce ``date_modified_gmt``) so that it reaches
    the connector and the pipeline rather than the inbox's conflict check."""
    channel, topic, contract, delivery = draw(st.sampled_from(REAL_DELIVERIES))
    body = copy.deepcopy(_real(contract, delivery))
    for _ in range(draw(st.integers(1, 3))):
        break_one_place(draw, body, ("replace", "replace", "delete", "add"))
    if isinstance(body, dict) and isinstance(body.get("id"), int) and draw(st.booleans()):
        body["id"] += draw(st.integers(1, 3))
    headers = {}
    sent = next(_SENT)
    if channel == "shopify":
        headers["X-Shopify-Webhook-Id"] = f"broken-{sent}"
    elif isinstance(body, dict) and isinstance(body.get("date_modified_gmt"), str):
        body["date_modified_gmt"] = (datetime(2030, 1, 1) + timedelta(minutes=sent)).isoformat()
    return channel, topic, json.dumps(body, ensure_ascii=draw(st.booleans())).encode(), headers


def _ledger(engine) -> tuple:
    with engine.db.connect() as conn:
        return (conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one(),
                conn.execute(select(func.coalesce(func.sum(accounts.c.balance), 0))).scalar_one())


@settings(max_examples=examples(150), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(deliveries=st.lists(broken_deliveries(), min_size=1, max_size=4))
def test_a_real_payload_broken_anywhere_is_applied_or_kept_with_a_clear_error_and_the_ledger_stays_exact(
        engine, deliveries):
    # (The engine and its database last the whole test: each example's
    # deliveries come after the earlier examples', the real payloads first.)
    if not _ledger(engine)[0]:
        for channel, topic, contract, delivery in REAL_DELIVERIES:
            assert engine.ingest(channel, topic, encode(_real(contract, delivery)),
                                 {"X-Shopify-Webhook-Id": f"real-{topic}"}).status in ("applied", "ignored")
    for channel, topic, body, headers in deliveries:
        before = (state(engine), _ledger(engine))

        outcome = engine.ingest(channel, topic, body, headers)

        assert outcome.status in ("applied", "ignored", "failed", "duplicate"), outcome
        if outcome.status == "failed":
            # A sentence about the payload, not a connector's or the pipeline's exception.
            assert outcome.plugin is None and not outcome.error.startswith("internal error"), outcome
            assert (state(engine), _ledger(engine)) == before
        row = stored(engine, outcome.inbox_id)
        assert bytes(row.body) == body and row.status == outcome.status.replace("duplicate", row.status)
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
