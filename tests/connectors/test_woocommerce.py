"""The WooCommerce connector against the real payloads in ../shared/contracts/woocommerce."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError

from connectors.base import BadDelivery
from connectors.woocommerce import WooCommerceConnector, WooCommerceSettingsSchema
from connectors.woocommerce.translate import with_refund_details
from engine.events import load_event
from tests.conftest import load_contract

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

# (file under woocommerce/, index in a list response or None)
ORDER_SOURCES = [
    ("webhooks/order_created.body.json", None),
    ("webhooks/order_updated_completed.body.json", None),
    ("webhooks/order_updated_with_refunds.body.json", None),
    ("rest_v3/order_get.json", None),
    ("rest_v3/order_create.json", None),
    ("rest_v3/order_update.json", None),
    ("rest_v3/orders_list.json", 0),
    ("rest_v3/orders_list.json", 1),
]
CUSTOMER_SOURCES = [
    ("webhooks/customer_created.body.json", None),
    ("rest_v3/customer_get.json", None),
    ("rest_v3/customer_create.json", None),
    ("rest_v3/customer_update.json", None),
]
ORDER_TOPICS = ("order.created", "order.updated")
CUSTOMER_TOPICS = ("customer.created", "customer.updated")


def _source_id(source: tuple[str, int | None]) -> str:
    name, index = source
    return name if index is None else f"{name}[{index}]"


def _payload(name: str, index: int | None = None) -> Any:
    """A WooCommerce resource: a webhook body, or a rest_v3 file's response."""
    data = load_contract(f"woocommerce/{name}")
    if name.startswith("rest_v3/"):
        data = data["response"]
    return data if index is None else data[index]


def _body(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")


@pytest.fixture
def connector() -> WooCommerceConnector:
    settings = WooCommerceSettingsSchema().load({"url": "https://shop.example.com"})
    return WooCommerceConnector(settings)


def _one(connector: WooCommerceConnector, topic: str, payload: Any) -> dict[str, Any]:
    """The single event a delivery translates into, checked by the engine's schema."""
    events = connector.translate(topic, payload, {})
    assert len(events) == 1
    json.dumps(events)  # JSON-able: no Decimal, no datetime
    load_event(events[0])
    return events[0]


def _order_727() -> dict[str, Any]:
    return copy.deepcopy(_payload("webhooks/order_created.body.json"))


# -- Contracts ------------------------------------------------------------------


def test_every_woocommerce_order_and_customer_contract_is_covered(contracts_dir: Path):
    root = contracts_dir / "woocommerce"
    bodies = {f"webhooks/{p.name}" for p in (root / "webhooks").glob("*.body.json")}
    resources = {
        f"rest_v3/{p.name}"
        for p in (root / "rest_v3").glob("*.json")
        if p.name.startswith(("order_", "orders_", "customer"))
        and not p.name.startswith("order_refund")
    }
    covered = {name for name, _ in ORDER_SOURCES + CUSTOMER_SOURCES}
    assert bodies | resources == covered


@pytest.mark.parametrize("source", ORDER_SOURCES, ids=_source_id)
@pytest.mark.parametrize("topic", [*ORDER_TOPICS, "order.deleted"])
def test_every_contract_order_translates_into_valid_events(connector, topic, source):
    event = _one(connector, topic, _payload(*source))
    assert event["channel"] == "woocommerce"
    assert event["order"]["id"] == str(_payload(*source)["id"])


@pytest.mark.parametrize("source", CUSTOMER_SOURCES, ids=_source_id)
@pytest.mark.parametrize("topic", CUSTOMER_TOPICS)
def test_every_contract_customer_translates_into_a_valid_upsert(connector, topic, source):
    event = _one(connector, topic, _payload(*source))
    assert event["type"] == "customer.upserted"
    assert event["customer"]["external_id"] == "25"


def test_processing_guest_order_727_is_paid_with_its_lines_totals_and_hints(connector):
    event = _one(connector, "order.created", _payload("webhooks/order_created.body.json"))

    assert event["type"] == "order.paid"
    assert event["idempotency_key"] == "order:727:2017-03-22T19:28:08"
    assert event["occurred_at"] == "2017-03-22T19:28:08+00:00"
    order = event["order"]
    assert order["status"] == "paid"
    assert order["version"] == "2017-03-22T19:28:08+00:00"
    assert order["currency"] == "USD"
    assert order["lines"] == [
        {
            "id": "315",
            "sku": None,
            "name": "Woo Single #1",
            "quantity": 2,
            "unit_price": "3.00",
            "subtotal": "6.00",
            "discount": "0.00",
            "tax": "0",
            "gift_card": False,
        },
        {
            "id": "316",
            "sku": "Bar3",
            "name": "Ship Your Idea &ndash; Color: Black, Size: M Test",
            "quantity": 1,
            "unit_price": "12.00",
            "subtotal": "12.00",
            "discount": "0.00",
            "tax": "0",
            "gift_card": False,
        },
    ]
    assert (order["shipping"], order["tax"], order["total"]) == ("10.00", "1.35", "29.35")
    assert order["refunds"] == []
    assert order["discount_codes"] == []
    # _download_permissions_granted is private meta; line meta (pa_color, size) is not order meta
    assert order["attributes"] == {}
    assert event["customer"] == {
        "email": "john.doe@example.com",
        "phone": "(555) 555-5555",
        "external_id": None,  # customer_id 0: a guest
        "first_name": "John",
        "last_name": "Doe",
        "country": "US",
        "address": "969 Market, 94103, US",
    }


def test_completed_update_of_727_is_paid_at_its_newer_version(connector):
    event = _one(connector, "order.updated", _payload("rest_v3/order_update.json"))
    assert event["type"] == "order.paid"
    assert event["order"]["status"] == "paid"
    assert event["order"]["version"] == "2017-03-22T19:30:35+00:00"
    assert event["idempotency_key"] == "order:727:2017-03-22T19:30:35"


def test_order_723_lists_both_refunds_as_positive_amounts(connector):
    event = _one(
        connector, "order.updated", _payload("webhooks/order_updated_with_refunds.body.json")
    )

    order = event["order"]
    assert event["type"] == "order.paid"
    assert order["refunds"] == [{"id": "726", "amount": "10.00"}, {"id": "724", "amount": "9.00"}]
    loaded = load_event(event)
    assert sum(r["amount"] for r in loaded["order"]["refunds"]) == Decimal("19.00")
    assert [(line["id"], line["unit_price"]) for line in order["lines"]] == [
        ("311", "9.00"),
        ("313", "20.00"),
    ]
    assert (order["shipping"], order["tax"], order["total"]) == ("10.00", "0.00", "39.00")


def test_order_723_keeps_unicode_names_and_the_registered_customer_id(connector):
    event = _one(connector, "order.updated", _payload("rest_v3/orders_list.json", 1))
    assert event["customer"] == {
        "email": "joao.silva@example.com",
        "phone": "(11) 1111-1111",
        "external_id": "26",
        "first_name": "João",
        "last_name": "Silva",
        "country": "BR",
        "address": "Av. Brasil, 432, 12345-000, BR",
    }


def test_customer_created_gives_identity_hints_from_the_customer_and_billing(connector):
    event = _one(connector, "customer.created", _payload("webhooks/customer_created.body.json"))
    assert event["idempotency_key"] == "customer:25:2017-03-21T19:09:30"
    assert event["occurred_at"] == "2017-03-21T19:09:30+00:00"
    assert event["customer"] == {
        "email": "john.doe@example.com",
        "phone": "(555) 555-5555",
        "external_id": "25",
        "first_name": "John",
        "last_name": "Doe",
        "country": "US",
    }


def test_customer_update_carries_the_new_first_name_and_time(connector):
    event = _one(connector, "customer.updated", _payload("rest_v3/customer_update.json"))
    assert event["customer"]["first_name"] == "James"
    assert event["occurred_at"] == "2017-03-21T19:12:28+00:00"


def test_customer_without_modified_date_occurs_at_its_creation(connector):
    payload = copy.deepcopy(_payload("rest_v3/customer_get.json"))
    payload["date_modified_gmt"] = None
    event = _one(connector, "customer.created", payload)
    assert event["occurred_at"] == "2017-03-21T19:09:28+00:00"


def test_coupon_topics_are_not_handled(connector):
    delivery = load_contract("woocommerce/webhooks/coupon_created.delivery.json")
    assert delivery["topic"] == "coupon.created"
    assert "coupon.created" not in connector.topics
    assert connector.translate(delivery["topic"], delivery["body"], delivery["headers"]) == []


# -- Status mapping -------------------------------------------------------------


@pytest.mark.parametrize(
    ("wc_status", "event_type", "status"),
    [
        ("processing", "order.paid", "paid"),
        ("completed", "order.paid", "paid"),
        ("refunded", "order.updated", "refunded"),
        ("cancelled", "order.cancelled", "cancelled"),
        ("failed", "order.cancelled", "cancelled"),
        ("trash", "order.cancelled", "cancelled"),
        ("pending", "order.updated", "pending"),
        ("on-hold", "order.updated", "pending"),
        ("checkout-draft", "order.updated", "pending"),
        ("some-plugin-status", "order.updated", "pending"),
        (None, "order.updated", "pending"),
        (["processing"], "order.updated", "pending"),
    ],
)
def test_woocommerce_status_decides_event_type_and_status(connector, wc_status, event_type, status):
    payload = _order_727()
    payload["status"] = wc_status
    event = _one(connector, "order.updated", payload)
    assert (event["type"], event["order"]["status"]) == (event_type, status)


def test_deleted_order_is_a_versionless_cancellation(connector):
    before = datetime.now(UTC)
    event = _one(connector, "order.deleted", {"id": 727})
    assert event["type"] == "order.cancelled"
    assert event["idempotency_key"] == "order.deleted:727"
    assert event["order"] == {"id": "727", "status": "cancelled"}
    occurred = datetime.fromisoformat(event["occurred_at"])
    assert before - timedelta(seconds=1) <= occurred <= datetime.now(UTC)


def test_deleted_order_with_a_modified_date_occurs_at_that_date(connector):
    event = _one(
        connector, "order.deleted", {"id": 727, "date_modified_gmt": "2017-03-23T10:00:00"}
    )
    assert event["occurred_at"] == "2017-03-23T10:00:00+00:00"


# -- Lines, discounts, attributes -----------------------------------------------


def test_line_discount_is_subtotal_minus_total_and_coupon_codes_are_listed(connector):
    payload = _order_727()
    payload["line_items"][0]["total"] = "4.50"
    payload["coupon_lines"] = [
        {
            "id": 320,
            "code": "save25",
            "discount": "1.50",
            "discount_tax": "0.00",
            "meta_data": [],
            "discount_type": "percent",
            "nominal_amount": 25,
            "free_shipping": False,
        },
    ]
    order = _one(connector, "order.updated", payload)["order"]
    assert order["lines"][0]["discount"] == "1.50"
    assert order["lines"][0]["subtotal"] == "6.00"
    assert order["discount_codes"] == ["save25"]


def test_line_total_above_subtotal_gives_no_negative_discount(connector):
    payload = _order_727()
    payload["line_items"][1]["total"] = "13.00"
    assert _one(connector, "order.updated", payload)["order"]["lines"][1]["discount"] == "0"


def test_unit_price_is_subtotal_over_quantity_rounded_to_cents(connector):
    payload = _order_727()
    payload["line_items"][0].update(quantity=3, subtotal="10.00", total="10.00")
    assert _one(connector, "order.updated", payload)["order"]["lines"][0]["unit_price"] == "3.33"


def test_zero_quantity_line_has_a_zero_unit_price(connector):
    payload = _order_727()
    payload["line_items"][0].update(quantity=0, subtotal="0.00", total="0.00")
    line = _one(connector, "order.updated", payload)["order"]["lines"][0]
    assert (line["quantity"], line["unit_price"]) == (0, "0")


def test_numeric_money_is_read_through_str_without_float_error(connector):
    payload = _order_727()
    payload["total"] = 29.35
    payload["shipping_total"] = 10
    order = _one(connector, "order.updated", payload)["order"]
    assert (order["total"], order["shipping"]) == ("29.35", "10")


def test_gift_card_meta_marks_the_line_as_a_gift_card(connector):
    payload = _order_727()
    payload["line_items"][1]["meta_data"].append({"id": 1, "key": "_wc_gc_giftcard", "value": "1"})
    lines = _one(connector, "order.updated", payload)["order"]["lines"]
    assert [line["gift_card"] for line in lines] == [False, True]


def test_public_meta_and_the_referral_meta_key_become_attributes(connector):
    payload = _order_727()
    payload["meta_data"] += [
        {"id": 1, "key": "_regulars_ref", "value": "ANNA-7"},
        {"id": 2, "key": "gift_note", "value": "Happy birthday"},
        {"id": 3, "key": "_wc_internal", "value": "x"},
    ]
    attributes = _one(connector, "order.updated", payload)["order"]["attributes"]
    assert attributes == {"_regulars_ref": "ANNA-7", "gift_note": "Happy birthday"}


def test_referral_meta_key_comes_from_the_settings():
    settings = WooCommerceSettingsSchema().load(
        {"url": "https://shop.example.com", "order_key_meta": "_ref_code"}
    )
    connector = WooCommerceConnector(settings)
    payload = _order_727()
    payload["meta_data"] += [
        {"id": 1, "key": "_regulars_ref", "value": "IGNORED"},
        {"id": 2, "key": "_ref_code", "value": "ANNA-7"},
    ]
    assert _one(connector, "order.updated", payload)["order"]["attributes"] == {
        "_ref_code": "ANNA-7"
    }


def test_unknown_keys_in_the_payload_are_ignored(connector):
    payload = _order_727()
    payload["brand_new_field"] = {"anything": [1, 2]}
    payload["line_items"][0]["image"] = {"id": 9, "src": "https://example.com/x.png"}
    assert _one(connector, "order.updated", payload)["type"] == "order.paid"


def test_php_empty_array_billing_gives_empty_hints(connector):
    payload = _order_727()
    payload["billing"] = []
    payload["shipping"] = []
    assert set(_one(connector, "order.updated", payload)["customer"].values()) == {None}


# -- Refunds read from the shop (the reconciliation) ------------------------------


def _documented_refunds() -> list[dict[str, Any]]:
    """GET orders/723/refunds as documented: 726 an amount only, 724 line 311."""
    return copy.deepcopy(_payload("rest_v3/order_refunds_list.json"))


def _refund_of_line_316(total: str = "-12.00", tax: str = "-0.90") -> dict[str, Any]:
    """A refund of order 727's taxed line 316, in the documented refund shape."""
    refund = _documented_refunds()[1]
    line = refund["line_items"][0]
    line.update(id=320, name="Ship Your Idea", product_id=22, variation_id=23, sku="Bar3", price=-12,
                subtotal="-12.00", subtotal_tax="-0.90", total=total, total_tax=tax,
                taxes=[{"id": 75, "total": tax, "subtotal": "-0.90"}])
    line["meta_data"][0]["value"] = "316"
    amount = -(Decimal(total) + Decimal(tax))
    refund.update(id=730, amount=f"{amount:.2f}", date_created_gmt="2017-03-23T08:15:00")
    return refund


def _727_refunded(*refunds: dict[str, Any]) -> dict[str, Any]:
    order = copy.deepcopy(_payload("rest_v3/order_update.json"))
    order["refunds"] = [{"id": r["id"], "reason": "", "total": f"-{r['amount']}"} for r in refunds]
    return order


def test_a_refund_read_with_its_lines_is_their_merchandise_without_tax_at_its_own_time(connector):
    refund = _refund_of_line_316()
    order = with_refund_details(_727_refunded(refund), [refund])
    (translated,) = _one(connector, "order.updated", order)["order"]["refunds"]
    assert translated == {
        "id": "730", "amount": "12.00", "tax": "0.90", "occurred_at": "2017-03-23T08:15:00+00:00",
        "lines": [{"line_id": "316", "sku": "Bar3", "quantity": 1, "amount": "12.00"}], "itemized": True,
    }
    # the same order as its webhook has it: the whole 12.90, no time of its own
    assert _one(connector, "order.updated", _727_refunded(refund))["order"]["refunds"] == [
        {"id": "730", "amount": "12.90"}]


def test_a_refunded_line_counts_after_its_discount(connector):
    refund = _refund_of_line_316(total="-10.00", tax="-0.75")  # 2.00 off the line by a coupon
    order = with_refund_details(_727_refunded(refund), [refund])
    (translated,) = _one(connector, "order.updated", order)["order"]["refunds"]
    assert (translated["amount"], translated["tax"]) == ("10.00", "0.75")


def test_documented_refunds_of_723_the_amount_only_one_keeps_its_amount(connector):
    order = with_refund_details(_payload("webhooks/order_updated_with_refunds.body.json"), _documented_refunds())
    refunds = _one(connector, "order.updated", order)["order"]["refunds"]
    assert refunds == [
        {"id": "726", "amount": "10.00", "occurred_at": "2017-03-21T20:07:11+00:00"},
        {"id": "724", "amount": "9.00", "tax": "0.00", "occurred_at": "2017-03-21T19:55:37+00:00",
         "lines": [{"line_id": "311", "sku": None, "quantity": 1, "amount": "9.00"}], "itemized": True},
    ]
    assert all("_links" not in entry for entry in order["refunds"])


def test_a_refund_of_shipping_alone_takes_no_merchandise(connector):
    refund = _documented_refunds()[0]
    refund.update(id=731, amount="10.00", shipping_lines=[{
        "id": 332, "method_title": "Flat Rate", "method_id": "flat_rate", "total": "-10.00",
        "total_tax": "0.00", "taxes": [], "meta_data": [{"id": 2101, "key": "_refunded_item_id", "value": "317"}]}])
    order = with_refund_details(_727_refunded(refund), [refund])
    (translated,) = _one(connector, "order.updated", order)["order"]["refunds"]
    assert (translated["amount"], translated["tax"], translated["itemized"]) == ("0", "0", True)


def test_a_refund_whose_lines_moved_no_money_is_its_amount(connector):
    refund = _refund_of_line_316(total="0.00", tax="0.00")  # restocked; an amount typed by hand
    refund["amount"] = "5.00"
    order = with_refund_details(_727_refunded(refund), [refund])
    (translated,) = _one(connector, "order.updated", order)["order"]["refunds"]
    assert translated == {"id": "730", "amount": "5.00", "occurred_at": "2017-03-23T08:15:00+00:00"}


def test_a_refunded_gift_card_line_takes_nothing(connector):
    refund = _refund_of_line_316()
    order = _727_refunded(refund)
    order["line_items"][1]["meta_data"].append({"id": 1, "key": "_gift_card", "value": "yes"})
    (translated,) = _one(connector, "order.updated", with_refund_details(order, [refund]))["order"]["refunds"]
    assert (translated["amount"], translated["lines"], translated["itemized"]) == ("0", [], True)


def test_a_refund_the_shop_did_not_return_stays_as_the_order_lists_it(connector):
    listed = _payload("webhooks/order_updated_with_refunds.body.json")
    order = with_refund_details(listed, [_documented_refunds()[1]])  # 726 missing
    refunds = _one(connector, "order.updated", order)["order"]["refunds"]
    assert refunds[0] == {"id": "726", "amount": "10.00"} and refunds[1]["itemized"] is True


def test_an_order_with_its_refunds_read_has_a_key_of_its_own_stable_for_the_same_details(connector):
    listed = _payload("webhooks/order_updated_with_refunds.body.json")
    detailed = with_refund_details(listed, _documented_refunds())
    plain = connector.delivery_key("order.updated", listed, {}, _body(listed))
    key = connector.delivery_key("order.updated", detailed, {}, _body(detailed))
    assert plain == "order:723:2017-03-21T19:54:51"  # a webhook's key is as it was
    assert key.startswith(plain + ":refunds:") and len(key) == len(plain) + len(":refunds:") + 64
    again = with_refund_details(copy.deepcopy(listed), _documented_refunds())
    assert connector.delivery_key("order.updated", again, {}, _body(again)) == key
    changed = _documented_refunds()
    changed[1]["line_items"][0]["total"] = "-8.00"
    other = with_refund_details(listed, changed)
    assert connector.delivery_key("order.updated", other, {}, _body(other)) not in (key, plain)
    assert _one(connector, "order.updated", detailed)["idempotency_key"] == key


def _shipping_refunded(refund: dict[str, Any]) -> None:
    refund["shipping_lines"] = [{"id": 332, "method_title": "Flat Rate", "method_id": "flat_rate", "total": "10.00",
                                 "total_tax": "0.00", "taxes": [], "meta_data": []}]


@pytest.mark.parametrize(("spoil", "complaint"), [
    (lambda r: r.pop("date_created_gmt"), "refund 730 has no date_created_gmt"),
    (lambda r: r.update(amount="-12.90"), "refund 730 amount is negative: '-12.90'"),
    (lambda r: r["line_items"][0].update(total="12.00"), "refund 730's line 320 total is positive: '12.00'"),
    (lambda r: r["line_items"][0].update(total_tax="0.90"), "refund 730's line 320 total_tax is positive"),
    (_shipping_refunded, "refund 730's shipping_lines total is positive: '10.00'"),
    (lambda r: r["line_items"][0].update(total="-1200.00"),
     "refund 730's line 320 gives back 1200.00 of line 316, which came to 12.00"),
    (lambda r: r["line_items"][0].update(quantity=-5), "refund 730's line 320 gives back 5 of line 316, which has 1"),
])
def test_refund_details_no_shop_would_write_are_refused_saying_what(connector, spoil, complaint):
    """A refund read from the shop that can't be what WooCommerce wrote: the
    reconciliation then sends the order without it (engine.reconcile)."""
    refund = _refund_of_line_316()
    spoil(refund)
    with pytest.raises(BadDelivery, match=re.escape(complaint)):
        connector.translate("order.updated", with_refund_details(_727_refunded(refund), [refund]), {})


@pytest.mark.parametrize(("refunds", "complaint"), [
    ({"code": "rest_forbidden", "message": "Sorry"}, "The refunds are an object, not a list."),
    ([{"id": 730, "line_items": []}, "730"], "Refund 2 of 2 is a string, not an object."),
    ([{"amount": "12.90", "line_items": []}], "Refund 1 of 1 has no usable id (got None)."),
    ([{"id": 730, "amount": "12.90"}], "Refund 730's line_items is null, not a list."),
])
def test_refunds_that_are_not_what_the_refunds_endpoint_answers_are_refused(refunds, complaint):
    order = _727_refunded(_refund_of_line_316())
    with pytest.raises(BadDelivery) as caught:
        with_refund_details(order, refunds)
    assert str(caught.value) == complaint
    # a refund the order does not list yet is left for a newer snapshot, whatever it holds
    assert with_refund_details(order, [{"id": 731, "amount": "1.00"}]) == order


# -- Delivery keys --------------------------------------------------------------


def test_order_created_and_updated_of_the_same_snapshot_share_a_delivery_key(connector):
    payload = _payload("webhooks/order_created.body.json")
    body = _body(payload)
    created = connector.delivery_key("order.created", payload, {}, body)
    updated = connector.delivery_key("order.updated", payload, {}, body)
    assert created == updated == "order:727:2017-03-22T19:28:08"


def test_newer_modified_date_gives_a_different_delivery_key(connector):
    older = _payload("rest_v3/order_get.json")
    newer = _payload("rest_v3/order_update.json")
    assert connector.delivery_key(
        "order.updated", older, {}, _body(older)
    ) != connector.delivery_key("order.updated", newer, {}, _body(newer))


def test_delivery_id_header_is_ignored(connector):
    headers = load_contract("woocommerce/webhooks/coupon_created.delivery.json")["headers"]
    older = _payload("rest_v3/order_get.json")
    newer = _payload("rest_v3/order_update.json")
    other_id = {**headers, "x-wc-webhook-delivery-id": "0" * 32}
    # a new delivery id on the same snapshot is still the same delivery ...
    assert connector.delivery_key("order.updated", older, headers, _body(older)) == (
        connector.delivery_key("order.updated", older, other_id, _body(older))
    )
    # ... and a repeated delivery id on a newer snapshot is a new one
    assert connector.delivery_key("order.updated", older, headers, _body(older)) != (
        connector.delivery_key("order.updated", newer, headers, _body(newer))
    )


@pytest.mark.parametrize(
    ("topic", "source"),
    [
        ("order.updated", ORDER_SOURCES[0]),
        ("order.deleted", ORDER_SOURCES[0]),
        ("customer.updated", CUSTOMER_SOURCES[0]),
    ],
)
def test_event_idempotency_key_equals_the_delivery_key(connector, topic, source):
    payload = _payload(*source)
    event = _one(connector, topic, payload)
    assert event["idempotency_key"] == connector.delivery_key(topic, payload, {}, _body(payload))


def test_customer_keys_on_id_and_date_and_deleted_order_on_id_alone(connector):
    customer = _payload("webhooks/customer_created.body.json")
    assert connector.delivery_key("customer.created", customer, {}, b"{}") == (
        "customer:25:2017-03-21T19:09:30"
    )
    assert connector.delivery_key("order.deleted", {"id": 727}, {}, b'{"id":727}') == (
        "order.deleted:727"
    )


def test_missing_modified_date_keys_on_the_body_hash(connector):
    payload = _order_727()
    del payload["date_modified_gmt"]
    key = connector.delivery_key("order.updated", payload, {}, b"one body")
    assert key.startswith("order:727:sha256:")
    assert key == connector.delivery_key("order.created", payload, {}, b"one body")
    assert key != connector.delivery_key("order.updated", payload, {}, b"another body")
    event = _one(connector, "order.updated", payload)
    assert event["order"]["version"] is None
    assert event["occurred_at"] == "2017-03-22T19:28:02+00:00"  # date_created_gmt


def test_unkeyable_payload_falls_back_to_the_default_body_hash(connector):
    key = connector.delivery_key("order.created", ["not", "an", "object"], {}, b'["x"]')
    assert key.startswith("order.created:sha256:")


# -- Bad deliveries -------------------------------------------------------------


@pytest.mark.parametrize("payload", [["id", 727], "727", None, 727], ids=repr)
def test_non_object_payload_is_a_bad_delivery(connector, payload):
    with pytest.raises(BadDelivery, match="not an object"):
        connector.translate("order.created", payload, {})


@pytest.mark.parametrize("topic", ["order.created", "order.deleted", "customer.updated"])
def test_payload_without_id_is_a_bad_delivery(connector, topic):
    payload = _order_727()
    del payload["id"]
    with pytest.raises(BadDelivery, match="no usable 'id'"):
        connector.translate(topic, payload, {})


def test_non_numeric_total_is_a_bad_delivery(connector):
    payload = _order_727()
    payload["total"] = "twenty-nine"
    with pytest.raises(BadDelivery, match="Order 727's total must be a number"):
        connector.translate("order.updated", payload, {})


def test_non_numeric_line_total_is_a_bad_delivery(connector):
    payload = _order_727()
    payload["line_items"][1]["total"] = "N/A"
    with pytest.raises(BadDelivery, match="line 316 total must be a number"):
        connector.translate("order.updated", payload, {})


def test_line_items_that_is_not_a_list_is_a_bad_delivery(connector):
    payload = _order_727()
    payload["line_items"] = {"315": payload["line_items"][0]}
    with pytest.raises(BadDelivery, match="line_items of resource 727 is an object, not a list"):
        connector.translate("order.updated", payload, {})


def test_negative_quantity_is_a_bad_delivery(connector):
    payload = _order_727()
    payload["line_items"][0]["quantity"] = -1
    with pytest.raises(BadDelivery, match="quantity is out of range"):
        connector.translate("order.updated", payload, {})


def test_unreadable_modified_date_is_a_bad_delivery(connector):
    payload = _order_727()
    payload["date_modified_gmt"] = "yesterday"
    with pytest.raises(BadDelivery, match="date_modified_gmt is not an ISO 8601 date"):
        connector.translate("order.updated", payload, {})


# -- Settings -------------------------------------------------------------------


def test_settings_default_the_referral_meta_key():
    settings = WooCommerceSettingsSchema().load({"url": "https://shop.example.com"})
    assert settings == {"url": "https://shop.example.com", "order_key_meta": "_regulars_ref"}


@pytest.mark.parametrize(
    "table",
    [{}, {"url": "not a url"}, {"url": "https://shop.example.com", "secret": "x"}],
    ids=["missing url", "bad url", "unknown key"],
)
def test_settings_refuse_a_missing_url_a_bad_url_and_unknown_keys(table):
    with pytest.raises(ValidationError):
        WooCommerceSettingsSchema().load(table)


def test_connector_declares_its_channel_table_and_topics():
    assert WooCommerceConnector.channel == "woocommerce"
    assert WooCommerceConnector.table == "connectors.woocommerce"
    assert WooCommerceConnector.settings_schema is WooCommerceSettingsSchema
    assert set(WooCommerceConnector.topics) == {
        "order.created",
        "order.updated",
        "order.deleted",
        "customer.created",
        "customer.updated",
    }


def test_an_order_read_again_by_the_reconciliation_says_from_when_its_refunds_held_and_is_a_delivery_of_its_own(
        connector):
    """``_regulars_listed_at`` (set by engine.reconcile, never by the shop):
    the list of refunds holds from then, and the same snapshot read on
    another day is another delivery; a value no reconciliation writes is refused."""
    from connectors.woocommerce.translate import LISTED_AT

    order = _order_727()
    plain = _one(connector, "order.updated", order)
    read = _one(connector, "order.updated", {**order, LISTED_AT: "2026-11-29T23:50:00+00:00"})
    next_day = _one(connector, "order.updated", {**order, LISTED_AT: "2026-11-30T23:50:00+00:00"})
    assert plain["order"]["refunds_complete"] and plain["order"]["refunds_listed_at"] is None
    assert read["order"]["refunds_listed_at"] == "2026-11-29T23:50:00+00:00"
    assert len({plain["idempotency_key"], read["idempotency_key"], next_day["idempotency_key"]}) == 3
    with pytest.raises(BadDelivery, match=f"{LISTED_AT} is not an ISO 8601 date: 'yesterday'"):
        connector.translate("order.updated", {**order, LISTED_AT: "yesterday"}, {})
