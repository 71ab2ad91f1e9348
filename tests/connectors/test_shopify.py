"""The Shopify connector against real Shopify payloads (../shared/contracts/shopify).

Expected values were worked out by hand from the contract files. The sample ids
in the webhook files are the rounded ones (see SOURCES.md), so they are expected
as written in the file, never as the ids in the ``gid://`` strings.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError

from connectors.base import BadDelivery
from connectors.shopify import ShopifyConnector, ShopifySettingsSchema
from connectors.shopify.translate import translate_refund
from engine.events import line_eligible, load_event
from tests.conftest import load_contract

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

WEBHOOKS = "shopify/webhooks"
REST_FIXTURES = "shopify/python_api_fixtures"
ORDER_TOPICS = ("orders/create", "orders/paid", "orders/updated", "orders/cancelled")
WEBHOOK_FILES = (
    "orders_create.delivery-2024-10.json",
    "orders_create.docs-2026-04.json",
    "orders_paid.delivery-2024-10.json",
    "orders_paid.docs-2026-04.json",
    "orders_updated.delivery-2024-10.json",
    "orders_updated.docs-2026-04.json",
    "orders_cancelled.delivery-2024-10.json",
    "orders_cancelled.docs-2026-04.json",
    "refunds_create.delivery-2024-10.json",
    "refunds_create.docs-2026-04.json",
    "customers_create.delivery-2024-10.json",
    "customers_create.docs-2026-04.json",
    "customers_update.delivery-2024-10.json",
    "customers_update.docs-2026-04.json",
)
EXPECTED_TYPES = {
    "orders/create": "order.updated",
    "orders/updated": "order.updated",
    "orders/paid": "order.paid",
    "orders/cancelled": "order.cancelled",
    "refunds/create": "order.refunded",
    "customers/create": "customer.upserted",
    "customers/update": "customer.upserted",
}

# The sample order of every orders/* file, as its (rounded) numbers read.
SAMPLE_ORDER_ID = "820982911946154500"
SAMPLE_CUSTOMER_ID = "115310627314723950"
SAMPLE_TIME = "2021-12-31T19:00:00-05:00"

connector = ShopifyConnector({"shop": "example.myshopify.com"})


def webhook(name: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(topic, body, headers) of a webhook contract file; a docs body has no
    headers, and its topic is in its name."""
    data = load_contract(f"{WEBHOOKS}/{name}")
    if "body" in data and "headers" in data:
        return data["topic"], data["body"], data["headers"]
    return name.split(".")[0].replace("_", "/", 1), data, {}


def body(name: str) -> dict[str, Any]:
    """A fresh copy of a webhook contract body, to change in one test."""
    return copy.deepcopy(webhook(name)[1])


def translate_one(topic: str, payload: Any) -> dict[str, Any]:
    """The single event of a delivery, checked by ``load_event`` and returned loaded."""
    events = connector.translate(topic, payload, {})
    assert len(events) == 1
    return load_event(events[0])


def dumped(topic: str, payload: Any) -> dict[str, Any]:
    """The single event of a delivery, as the connector returned it (JSON-able)."""
    (event,) = connector.translate(topic, payload, {})
    return event


# -- Every contract file -------------------------------------------------------------


def test_every_order_refund_and_customer_webhook_file_has_a_contract_test(contracts_dir: Path):
    on_disk = {
        path.name
        for path in (contracts_dir / WEBHOOKS).glob("*.json")
        if path.name.split("_")[0] in ("orders", "refunds", "customers")
    }
    assert on_disk == set(WEBHOOK_FILES)


@pytest.mark.parametrize("name", WEBHOOK_FILES)
def test_contract_webhook_translates_to_valid_json_able_events(name: str):
    topic, payload, headers = webhook(name)
    events = connector.translate(topic, payload, headers)

    assert len(events) == 1
    json.dumps(events)  # JSON-able: no Decimal, no datetime
    loaded = load_event(events[0])
    assert loaded["type"] == EXPECTED_TYPES[topic]
    assert loaded["channel"] == "shopify"
    assert events[0]["idempotency_key"] == connector.delivery_key(topic, payload, {}, b"")


@pytest.mark.parametrize("source", ["delivery-2024-10", "docs-2026-04"])
@pytest.mark.parametrize("topic", ORDER_TOPICS)
def test_sample_order_is_cancelled_test_order_whatever_the_topic(topic: str, source: str):
    name = f"{topic.replace('/', '_')}.{source}.json"
    event = translate_one(topic, webhook(name)[1])

    assert event["type"] == EXPECTED_TYPES[topic]
    assert event["idempotency_key"] == f"{topic}:{SAMPLE_ORDER_ID}:{SAMPLE_TIME}"
    order = event["order"]
    assert order["id"] == SAMPLE_ORDER_ID
    # cancelled_at is set (and financial_status is "voided")
    assert order["status"] == "cancelled"
    assert order["test"] is True
    assert order["version"] == datetime.fromisoformat(SAMPLE_TIME)
    assert event["occurred_at"] == datetime.fromisoformat(SAMPLE_TIME)


def test_delivery_2024_10_order_lines_totals_and_customer_hints():
    event = translate_one("orders/paid", webhook("orders_paid.delivery-2024-10.json")[1])
    order = event["order"]

    assert [line["id"] for line in order["lines"]] == ["866550311766439000", "141249953214522980"]
    assert {line["sku"] for line in order["lines"]} == {"IPOD2008PINK"}
    assert [line["unit_price"] for line in order["lines"]] == [Decimal("199.00")] * 2
    # the lines' discount_allocations are empty: the order's 20.00 total_discounts
    # is not allocated to any line in this sample
    assert [line["discount"] for line in order["lines"]] == [Decimal(0)] * 2
    assert [line["tax"] for line in order["lines"]] == [Decimal(0)] * 2
    assert sum(line_eligible(line) for line in order["lines"]) == Decimal("398.00")
    assert order["currency"] == "USD"
    assert order["shipping"] == Decimal("10.00")
    assert order["tax"] == Decimal("0.00")
    assert order["tip"] == Decimal("0.00")
    assert order["total"] == Decimal("388.00")
    assert order["refunds"] == []
    assert order["discount_codes"] == []
    assert order["attributes"] == {}
    assert dumped("orders/paid", webhook("orders_paid.delivery-2024-10.json")[1])["customer"] == {
        "email": "jon@example.com",  # the order's email wins over customer.email
        "phone": "555-555-SHIP",  # order and customer have none: billing address
        "external_id": SAMPLE_CUSTOMER_ID,
        "first_name": "John",
        "last_name": "Smith",
        "country": "US",  # billing address, not the customer's default (CA)
        "accepts_marketing": False,  # email_marketing_consent.state "not_subscribed"
        "address": "123 Shipping Street, 40003, US",  # the shipping address
    }


def test_docs_2026_04_order_has_five_lines_worth_414_95():
    event = translate_one("orders/paid", webhook("orders_paid.docs-2026-04.json")[1])
    order = event["order"]

    assert [(line["sku"], line["unit_price"]) for line in order["lines"]] == [
        ("SKU2006-001", Decimal("89.99")),
        ("LENS-PROTECT-2YR", Decimal("19.99")),
        ("CASE-LEATHER-PREM", Decimal("24.99")),
        ("SKU2006-020", Decimal("159.99")),
        ("SKU2006-035", Decimal("119.99")),
    ]
    assert order["lines"][0]["id"] == "487817672276298560"
    assert order["lines"][0]["name"] == "Aviator sunglasses"
    assert sum(line_eligible(line) for line in order["lines"]) == Decimal("414.95")
    assert order["shipping"] == Decimal("10.00")
    assert order["total"] == Decimal("404.95")
    # no email_marketing_consent on this customer: consent unknown
    assert event["customer"]["accepts_marketing"] is None
    assert event["customer"]["external_id"] == SAMPLE_CUSTOMER_ID


def test_refund_delivery_2024_10_refunds_two_lines_of_199():
    event = translate_one("refunds/create", webhook("refunds_create.delivery-2024-10.json")[1])

    assert event["idempotency_key"] == "refunds/create:890088186047892400"
    assert event["occurred_at"] == datetime.fromisoformat(SAMPLE_TIME)
    assert event["order"]["id"] == SAMPLE_ORDER_ID
    assert event["order"]["lines"] is None
    assert event["order"]["status"] is None
    (refund,) = event["order"]["refunds"]
    assert refund["id"] == "890088186047892400"
    assert refund["amount"] == Decimal("398.00")
    assert refund["occurred_at"] == datetime.fromisoformat(SAMPLE_TIME)
    assert refund["lines"] == [
        {"line_id": "866550311766439000", "sku": "IPOD2008PINK", "quantity": 1,
         "amount": "199.00"},
        {"line_id": "141249953214522980", "sku": "IPOD2008PINK", "quantity": 1,
         "amount": "199.00"},
    ]


def test_refund_docs_2026_04_refunds_five_lines_worth_414_95():
    event = translate_one("refunds/create", webhook("refunds_create.docs-2026-04.json")[1])

    (refund,) = event["order"]["refunds"]
    assert refund["amount"] == Decimal("414.95")
    assert [line["amount"] for line in refund["lines"]] == [
        "89.99", "19.99", "24.99", "159.99", "119.99"
    ]
    assert refund["lines"][3]["line_id"] == "976318377106520300"


def test_refund_amount_from_float_subtotals_is_exact():
    payload = body("refunds_create.docs-2026-04.json")
    for refund_line in payload["refund_line_items"]:
        del refund_line["subtotal_set"]  # leaves "subtotal": 89.99 etc., JSON floats

    (refund,) = dumped("refunds/create", payload)["order"]["refunds"]

    assert refund["amount"] == "414.95"
    assert refund["lines"][0]["amount"] == "89.99"


def test_refund_skips_gift_card_lines():
    payload = body("refunds_create.delivery-2024-10.json")
    payload["refund_line_items"][0]["line_item"]["gift_card"] = True

    (refund,) = dumped("refunds/create", payload)["order"]["refunds"]

    assert refund["amount"] == "199.00"
    assert [line["line_id"] for line in refund["lines"]] == ["141249953214522980"]


def test_order_refunds_are_translated_like_refunds_create():
    order = body("orders_updated.docs-2026-04.json")
    refund = body("refunds_create.docs-2026-04.json")
    order["refunds"] = [refund]

    event = dumped("orders/updated", order)

    assert event["order"]["refunds"] == [translate_refund(refund)]
    assert event["order"]["refunds"][0]["amount"] == "414.95"
    load_event(event)


@pytest.mark.parametrize("source", ["delivery-2024-10", "docs-2026-04"])
@pytest.mark.parametrize("topic", ["customers/create", "customers/update"])
def test_customer_webhook_gives_identity_hints(topic: str, source: str):
    payload = webhook(f"{topic.replace('/', '_')}.{source}.json")[1]
    event = translate_one(topic, payload)

    assert event["idempotency_key"] == f"{topic}:706405506930370000:{SAMPLE_TIME}"
    assert event["occurred_at"] == datetime.fromisoformat(SAMPLE_TIME)
    hints = event["customer"]
    assert hints["email"] == "bob@biller.com"
    assert hints["phone"] is None
    assert hints["external_id"] == "706405506930370000"
    assert (hints["first_name"], hints["last_name"]) == ("Bob", "Biller")
    # only the docs body has a default_address; neither has a consent state
    assert hints["country"] == ("CA" if source == "docs-2026-04" else None)
    assert hints["accepts_marketing"] is None


def test_customer_subscribed_to_email_accepts_marketing():
    payload = body("customers_update.delivery-2024-10.json")
    payload["email_marketing_consent"] = {"state": "subscribed", "opt_in_level": "single_opt_in"}

    assert translate_one("customers/update", payload)["customer"]["accepts_marketing"] is True


# -- REST shapes (ShopifyAPI's fixtures) ---------------------------------------------


def test_rest_order_fixture_translates_like_a_webhook():
    event = translate_one("orders/updated", load_contract(f"{REST_FIXTURES}/order.json")["order"])
    order = event["order"]

    assert event["idempotency_key"] == "orders/updated:450789469:2008-01-10T11:00:00-05:00"
    assert order["id"] == "450789469"
    assert order["status"] == "pending"  # financial_status "authorized"
    assert [line["id"] for line in order["lines"]] == ["466157049", "518995019", "703073504"]
    assert [line["sku"] for line in order["lines"]] == [
        "IPOD2008GREEN", "IPOD2008RED", "IPOD2008BLACK"
    ]
    assert sum(line_eligible(line) for line in order["lines"]) == Decimal("597.00")
    assert order["shipping"] == Decimal("0.00")  # from shipping_lines: no *_set here
    assert order["tax"] == Decimal("11.94")
    assert order["tip"] == Decimal(0)
    assert order["total"] == Decimal("409.94")
    assert order["discount_codes"] == ["TENOFF"]
    assert order["attributes"] == {"custom engraving": "Happy Birthday", "colour": "green"}
    assert order["test"] is False
    assert event["customer"] == {
        "email": "bob.norman@hostmail.com",
        "phone": "555-625-1199",
        "external_id": "207119551",
        "first_name": "Bob",
        "last_name": "Norman",
        "country": "US",
        "accepts_marketing": None,
        "address": "Chestnut Street 92, 40202, US",
        "card_code": None,
        "birthday": None,
    }


def test_rest_orders_fixture_without_line_items_is_a_bad_delivery():
    (order,) = load_contract(f"{REST_FIXTURES}/orders.json")["orders"]

    with pytest.raises(BadDelivery, match="Order 450789469 has no line_items list"):
        connector.translate("orders/updated", order, {})


def test_rest_orders_fixture_customer_hints_prefer_the_order_phone():
    (order,) = copy.deepcopy(load_contract(f"{REST_FIXTURES}/orders.json")["orders"])
    order["line_items"] = []

    event = translate_one("orders/paid", order)

    assert event["order"]["status"] == "paid"  # financial_status "partially_refunded"
    assert event["customer"]["phone"] == "+557734881234"
    assert event["customer"]["email"] == "bob.norman@hostmail.com"


def test_rest_refund_without_subtotals_is_rebuilt_from_line_prices():
    event = translate_one("refunds/create", load_contract(f"{REST_FIXTURES}/refund.json")["refund"])

    assert event["order"]["id"] == "450789469"
    assert event["occurred_at"] == datetime.fromisoformat("2016-06-20T13:35:06-04:00")  # created_at
    (refund,) = event["order"]["refunds"]
    assert refund["id"] == "509562969"
    assert refund["amount"] == Decimal("398.00")
    assert [(line["line_id"], line["amount"]) for line in refund["lines"]] == [
        ("703073504", "199.00"), ("466157049", "199.00")
    ]


def test_rest_refund_without_subtotal_prorates_the_line_discount():
    payload = copy.deepcopy(load_contract(f"{REST_FIXTURES}/refund.json")["refund"])
    line_item = payload["refund_line_items"][0]["line_item"]
    line_item["quantity"] = 2
    line_item["discount_allocations"] = [{"amount": "10.00", "discount_application_index": 0}]

    (refund,) = dumped("refunds/create", payload)["order"]["refunds"]

    # one of two units refunded: 199.00 less half of the line's 10.00 discount
    assert refund["lines"][0]["amount"] == "194.00"
    assert refund["amount"] == "393.00"


# -- Order rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("financial_status", "status"),
    [
        ("paid", "paid"),
        ("partially_refunded", "paid"),
        ("refunded", "refunded"),
        ("voided", "cancelled"),
        ("pending", "pending"),
        ("authorized", "pending"),
        ("partially_paid", "pending"),
        ("unpaid", "pending"),
        ("expired", "pending"),
        (None, "pending"),
        ({}, "pending"),  # not a string: an unknown status, not a TypeError
        (["paid"], "pending"),
    ],
)
def test_status_follows_financial_status_when_not_cancelled(financial_status, status):
    payload = body("orders_updated.docs-2026-04.json")
    payload["cancelled_at"] = None
    payload["financial_status"] = financial_status

    assert translate_one("orders/updated", payload)["order"]["status"] == status


def test_cancelled_at_makes_a_paid_order_cancelled():
    payload = body("orders_updated.docs-2026-04.json")
    payload["financial_status"] = "paid"

    assert translate_one("orders/updated", payload)["order"]["status"] == "cancelled"


def test_unit_price_prefers_shop_money_over_the_plain_price():
    payload = body("orders_paid.delivery-2024-10.json")
    payload["line_items"][0]["price"] = "250.00"  # presentment currency, say

    assert translate_one("orders/paid", payload)["order"]["lines"][0]["unit_price"] == Decimal(
        "199.00"
    )


def test_line_discount_is_the_sum_of_its_allocations_in_shop_money():
    payload = body("orders_paid.docs-2026-04.json")
    allocation = {
        "amount": "7.00",
        "amount_set": {
            "shop_money": {"amount": "5.00", "currency_code": "USD"},
            "presentment_money": {"amount": "7.00", "currency_code": "EUR"},
        },
        "discount_application_index": 0,
    }
    payload["line_items"][3]["discount_allocations"] = [allocation, dict(allocation)]
    payload["line_items"][3]["total_discount"] = "99.00"  # legacy: ignored

    line = translate_one("orders/paid", payload)["order"]["lines"][3]

    assert line["discount"] == Decimal("10.00")
    assert line_eligible(line) == Decimal("149.99")


def test_line_discount_falls_back_to_total_discount_without_allocations():
    payload = body("orders_paid.docs-2026-04.json")
    del payload["line_items"][0]["discount_allocations"]
    payload["line_items"][0]["total_discount_set"]["shop_money"]["amount"] = "9.99"

    line = translate_one("orders/paid", payload)["order"]["lines"][0]

    assert line["discount"] == Decimal("9.99")
    assert line_eligible(line) == Decimal("80.00")


@pytest.mark.parametrize(("taxes_included", "tax"), [(True, "14.99"), (False, "0")])
def test_line_tax_counts_only_when_prices_include_tax(taxes_included: bool, tax: str):
    payload = body("orders_paid.docs-2026-04.json")
    payload["taxes_included"] = taxes_included
    payload["line_items"][0]["tax_lines"] = [
        {"price": "10.00", "rate": 0.2, "title": "VAT"},
        {"price": "4.99", "rate": 0.1, "title": "Other"},
    ]

    line = translate_one("orders/paid", payload)["order"]["lines"][0]

    assert line["tax"] == Decimal(tax)


def test_gift_card_line_is_flagged_and_earns_nothing():
    payload = body("orders_paid.docs-2026-04.json")
    payload["line_items"][1]["gift_card"] = True

    lines = translate_one("orders/paid", payload)["order"]["lines"]

    assert lines[1]["gift_card"] is True
    assert sum(line_eligible(line) for line in lines) == Decimal("394.96")


def test_shipping_falls_back_to_the_sum_of_shipping_lines():
    payload = body("orders_paid.delivery-2024-10.json")
    del payload["total_shipping_price_set"]
    payload["shipping_lines"].append({"price": 2.5, "title": "Insurance"})

    assert dumped("orders/paid", payload)["order"]["shipping"] == "12.50"


def test_note_and_note_attributes_become_attributes():
    payload = body("orders_paid.docs-2026-04.json")
    payload["note"] = "Leave at the door"
    payload["note_attributes"] = [{"name": "gift_wrap", "value": "yes"}]
    payload["discount_codes"] = [{"code": "SPRING10", "amount": "10.00", "type": "percentage"}]

    order = translate_one("orders/paid", payload)["order"]

    assert order["attributes"] == {"gift_wrap": "yes", "note": "Leave at the door"}
    assert order["discount_codes"] == ["SPRING10"]


def test_occurred_at_falls_back_to_processed_at_then_created_at():
    payload = body("orders_paid.docs-2026-04.json")
    payload["updated_at"] = None
    payload["processed_at"] = "2022-01-02T03:04:05+01:00"

    event = translate_one("orders/paid", payload)
    assert event["order"]["version"] is None
    assert event["occurred_at"] == datetime.fromisoformat("2022-01-02T03:04:05+01:00")

    del payload["processed_at"]
    assert translate_one("orders/paid", payload)["occurred_at"] == datetime.fromisoformat(SAMPLE_TIME)


def test_customer_names_come_from_the_billing_address_when_the_customer_has_none():
    payload = body("orders_paid.delivery-2024-10.json")
    del payload["customer"]

    hints = translate_one("orders/paid", payload)["customer"]

    assert (hints["first_name"], hints["last_name"]) == ("Steve", "Shipper")
    assert hints["external_id"] is None
    assert hints["accepts_marketing"] is None


def test_unknown_payload_keys_are_ignored():
    payload = body("orders_paid.docs-2026-04.json")
    payload["a_field_from_2030"] = {"nested": [1, 2, 3]}
    payload["line_items"][0]["another_new_field"] = "x"

    assert translate_one("orders/paid", payload)["order"]["id"] == SAMPLE_ORDER_ID


def test_ids_above_2_53_stay_exact():
    exact = json.loads('{"order": 820982911946154508, "customer": 115310627314723954}')
    payload = body("orders_paid.docs-2026-04.json")
    payload["id"] = exact["order"]
    payload["customer"]["id"] = exact["customer"]

    event = dumped("orders/paid", payload)

    assert event["order"]["id"] == "820982911946154508"
    assert event["customer"]["external_id"] == "115310627314723954"
    assert event["idempotency_key"] == f"orders/paid:820982911946154508:{SAMPLE_TIME}"
    assert load_event(event)["order"]["id"] == "820982911946154508"


def test_refund_ids_above_2_53_stay_exact():
    exact = json.loads('{"refund": 890088186047892319, "order": 820982911946154508}')
    payload = body("refunds_create.docs-2026-04.json")
    payload["id"], payload["order_id"] = exact["refund"], exact["order"]

    event = dumped("refunds/create", payload)

    assert event["order"]["id"] == "820982911946154508"
    assert event["order"]["refunds"][0]["id"] == "890088186047892319"


# -- Delivery keys -------------------------------------------------------------------


def test_delivery_key_prefers_the_event_id_over_the_webhook_id():
    topic, payload, headers = webhook("orders_paid.delivery-2024-10.json")
    headers = {**headers, "X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5"}

    key = connector.delivery_key(topic, payload, headers, b"{}")

    assert key == "event:orders/paid:98880550-7158-44d4-b7cd-2c97c8a091b5"


def test_delivery_key_reads_headers_whatever_their_casing():
    payload = webhook("orders_paid.docs-2026-04.json")[1]

    lower = connector.delivery_key("orders/paid", payload, {"x-shopify-event-id": "e1"}, b"")
    upper = connector.delivery_key("orders/paid", payload, {"X-SHOPIFY-EVENT-ID": "e1"}, b"")

    assert lower == upper == "event:orders/paid:e1"


def test_delivery_key_uses_the_webhook_id_without_an_event_id():
    topic, payload, headers = webhook("refunds_create.delivery-2024-10.json")

    key = connector.delivery_key(topic, payload, headers, b"{}")

    assert key == "webhook:refunds/create:883d4f6c-1972-46f8-ac0e-1a889021f949"


def test_a_blank_webhook_id_is_no_key_and_the_resource_keys_the_delivery():
    payload = body("orders_paid.docs-2026-04.json")
    headers = {"X-Shopify-Webhook-Id": "   ", "X-Shopify-Event-Id": ""}

    key = connector.delivery_key("orders/paid", payload, headers, b"{}")

    assert key == f"orders/paid:{SAMPLE_ORDER_ID}:{SAMPLE_TIME}"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("orders_paid.docs-2026-04.json", f"orders/paid:{SAMPLE_ORDER_ID}:{SAMPLE_TIME}"),
        ("refunds_create.docs-2026-04.json", "refunds/create:890088186047892400"),
        ("customers_update.docs-2026-04.json",
         f"customers/update:706405506930370000:{SAMPLE_TIME}"),
    ],
)
def test_delivery_key_without_headers_is_the_resource_id_and_version(name: str, key: str):
    topic, payload, _ = webhook(name)

    assert connector.delivery_key(topic, payload, {}, b"{}") == key


def test_delivery_key_changes_with_the_order_version():
    payload = body("orders_updated.docs-2026-04.json")
    before = connector.delivery_key("orders/updated", payload, {}, b"")
    payload["updated_at"] = "2022-01-01T10:00:00-05:00"

    assert connector.delivery_key("orders/updated", payload, {}, b"") != before


def test_delivery_key_of_an_unreadable_payload_is_the_body_hash():
    key = connector.delivery_key("orders/paid", ["not", "an", "order"], {}, b'["not"]')

    assert key.startswith("orders/paid:sha256:")


# -- Bad deliveries ------------------------------------------------------------------


@pytest.mark.parametrize("topic", sorted(EXPECTED_TYPES))
@pytest.mark.parametrize("payload", [[1, 2], "order", None, 42])
def test_a_payload_that_is_not_a_json_object_is_a_bad_delivery(topic: str, payload: Any):
    with pytest.raises(BadDelivery, match="not an object"):
        connector.translate(topic, payload, {})


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("orders_paid.docs-2026-04.json", "id"),
        ("customers_create.docs-2026-04.json", "id"),
        ("refunds_create.docs-2026-04.json", "order_id"),
        ("refunds_create.docs-2026-04.json", "id"),
    ],
)
def test_a_payload_without_its_id_is_a_bad_delivery(name: str, key: str):
    topic, payload, _ = webhook(name)
    payload = {k: v for k, v in payload.items() if k != key}

    with pytest.raises(BadDelivery, match=f"{key} is missing"):
        connector.translate(topic, payload, {})


@pytest.mark.parametrize("price", ["abc", "", True, "NaN", "Infinity", {"amount": "1"}])
def test_a_non_numeric_price_is_a_bad_delivery(price: Any):
    payload = body("orders_paid.delivery-2024-10.json")
    del payload["line_items"][0]["price_set"]
    payload["line_items"][0]["price"] = price

    with pytest.raises(BadDelivery, match=r"line_items\[0\]\.price must be a"):
        connector.translate("orders/paid", payload, {})


def test_a_non_numeric_shop_money_amount_is_a_bad_delivery():
    payload = body("refunds_create.delivery-2024-10.json")
    payload["refund_line_items"][1]["subtotal_set"]["shop_money"]["amount"] = "12,50"

    with pytest.raises(BadDelivery, match=r"refund_line_items\[1\]\.subtotal_set"):
        connector.translate("refunds/create", payload, {})


def test_line_items_that_are_not_a_list_are_a_bad_delivery():
    payload = body("orders_paid.delivery-2024-10.json")
    payload["line_items"] = {"id": 1}

    with pytest.raises(BadDelivery, match="no line_items list"):
        connector.translate("orders/paid", payload, {})


def test_a_negative_quantity_is_a_bad_delivery():
    payload = body("orders_paid.delivery-2024-10.json")
    payload["line_items"][1]["quantity"] = -1

    with pytest.raises(BadDelivery, match=r"line_items\[1\]\.quantity must not be negative"):
        connector.translate("orders/paid", payload, {})


def test_a_float_id_is_a_bad_delivery_because_its_digits_are_lost():
    payload = body("orders_paid.delivery-2024-10.json")
    payload["id"] = 8.209829119461545e17

    with pytest.raises(BadDelivery, match="order id must be an integer"):
        connector.translate("orders/paid", payload, {})


def test_an_event_the_schema_refuses_is_refused_by_the_engine_validation():
    payload = body("orders_paid.delivery-2024-10.json")
    payload["currency"] = "DOLLARS"

    (event,) = connector.translate("orders/paid", payload, {})
    with pytest.raises(ValidationError) as raised:
        load_event(event)
    assert "currency" in raised.value.messages["order"]


def test_an_unknown_topic_is_a_bad_delivery():
    topic, payload, _ = webhook("discounts_create.delivery-2024-10.json")

    with pytest.raises(BadDelivery, match="does not handle the topic 'discounts/create'"):
        connector.translate(topic, payload, {})


# -- Connector contract --------------------------------------------------------------


def test_connector_declares_its_channel_table_and_topics():
    assert ShopifyConnector.channel == "shopify"
    assert ShopifyConnector.table == "connectors.shopify"
    privacy = {"customers/data_request", "customers/redact", "shop/redact"}
    assert set(ShopifyConnector.topics) == set(EXPECTED_TYPES) | privacy


def test_settings_default_the_api_version():
    settings = ShopifySettingsSchema().load({"shop": "example.myshopify.com"})

    assert settings == {"shop": "example.myshopify.com", "api_version": "2026-04", "api_url": None}
    assert ShopifyConnector(settings).settings["api_version"] == "2026-04"


@pytest.mark.parametrize(
    "table",
    [{}, {"shop": "example.myshopify.com", "secret_typo": "x"}],
)
def test_settings_refuse_a_missing_shop_or_an_unknown_key(table: dict[str, Any]):
    with pytest.raises(ValidationError):
        ShopifySettingsSchema().load(table)
