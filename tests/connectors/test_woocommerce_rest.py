"""WooStore against a loopback WooCommerce (tests/fakes/woocommerce.py), through
the real ``woocommerce`` client and its OAuth 1.0a signatures."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from woocommerce.oauth import OAuth

from connectors.woocommerce import WooCommerceConnector
from connectors.woocommerce.rest import WooError, WooStore
from connectors.woocommerce.translate import DEFAULT_ORDER_KEY_META, order_events
from engine.events import load_event
from tests.conftest import load_contract
from tests.fakes.woocommerce import FakeWoo, contract_refunds

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

CUSTOMER = 25  # the documented customer the fake starts with


@pytest.fixture
def woo():
    with FakeWoo() as fake:
        yield fake


#: the pauses between tries of a retried read, short for the tests
QUICK = (0.01, 0.01)


@pytest.fixture
def store(woo):
    return WooStore(woo.url, woo.key, woo.secret, timeout=5, retry_pauses=QUICK)


def _last(woo, method: str) -> dict:
    return [r for r in woo.requests if r["method"] == method][-1]


# -- customers ---------------------------------------------------------------------


def test_customer_meta_is_put_as_prefixed_meta_data(woo, store):
    store.set_customer_meta(str(CUSTOMER), {
        "points": 120, "tier": "gold", "card": {"stamps": 3, "of": 10}, "regulars_balance": Decimal("12.50"),
    })
    request = _last(woo, "PUT")
    assert request["path"] == f"/wp-json/wc/v3/customers/{CUSTOMER}"
    assert request["json"] == {"meta_data": [
        {"key": "regulars_points", "value": 120},
        {"key": "regulars_tier", "value": "gold"},
        {"key": "regulars_card", "value": '{"stamps":3,"of":10}'},
        {"key": "regulars_balance", "value": "12.50"},
    ]}

    store.set_customer_meta(CUSTOMER, {"points": 150})
    meta = {m["key"]: m["value"] for m in woo.customers[CUSTOMER]["meta_data"]}
    assert len(woo.customers[CUSTOMER]["meta_data"]) == 4  # updated in place, not added
    assert meta["regulars_points"] == 150 and meta["regulars_tier"] == "gold"


def test_unknown_customer_is_not_retryable(store):
    with pytest.raises(WooError) as caught:
        store.set_customer_meta("999", {"points": 1})
    assert not caught.value.retryable and caught.value.status == 404
    assert "woocommerce_rest_invalid_id" in str(caught.value) and "set_customer_meta" in str(caught.value)


def test_customer_id_must_be_numeric(store):
    with pytest.raises(ValueError):
        store.set_customer_meta("25/../coupons", {"points": 1})


# -- coupons -----------------------------------------------------------------------


def test_coupon_create_shape(woo, store):
    expires = datetime(2025, 1, 31, 23, 0, tzinfo=UTC) + timedelta(hours=2)  # given in UTC+0 here
    coupon_id = store.create_coupon(
        code="reg-5off-abc", kind="fixed_amount", amount=Decimal("5.00"), email="john.doe@example.com",
        expires_at=expires, description="5 EUR off, regulars reward 17",
    )
    request = _last(woo, "POST")
    assert request["path"] == "/wp-json/wc/v3/coupons"
    assert request["json"] == {
        "code": "reg-5off-abc", "discount_type": "fixed_cart", "amount": "5.00",
        "description": "5 EUR off, regulars reward 17", "individual_use": True,
        "usage_limit": 1, "usage_limit_per_user": 1,
        "email_restrictions": ["john.doe@example.com"], "date_expires_gmt": "2025-02-01T01:00:00",
    }
    stored = woo.coupons["reg-5off-abc"]
    assert stored["id"] == coupon_id and stored["usage_limit"] == 1
    assert stored["email_restrictions"] == ["john.doe@example.com"]


def test_percentage_and_free_product_coupons(woo, store):
    store.create_coupon(code="pct", kind="percentage", amount=10, email=None, expires_at=None,
                        description="")
    assert _last(woo, "POST")["json"]["discount_type"] == "percent"
    assert "email_restrictions" not in _last(woo, "POST")["json"]
    store.create_coupon(code="free", kind="free_product", amount=None, email=None, expires_at=None,
                        description="", product_ids=[93])
    body = _last(woo, "POST")["json"]
    assert (body["discount_type"], body["amount"], body["product_ids"]) == ("percent", "100", [93])
    assert body["limit_usage_to_x_items"] == 1
    with pytest.raises(ValueError):
        store.create_coupon(code="x", kind="gift", amount=1, email=None, expires_at=None, description="")


def test_creating_a_coupon_twice_gives_one_coupon_and_the_same_id(woo, store):
    args = dict(kind="percentage", amount="15", email="a@example.com", expires_at=None, description="")
    first = store.create_coupon(code="REG-TWICE", **args)
    second = store.create_coupon(code="REG-TWICE", **args)
    assert first == second and list(woo.coupons) == ["reg-twice"]  # WooCommerce lower-cases codes
    assert [r["method"] for r in woo.requests] == ["POST", "POST", "GET"]
    assert woo.requests[-1]["query"]["code"] == "REG-TWICE"


def test_delete_coupon(woo, store):
    store.create_coupon(code="gone", kind="fixed_amount", amount=1, email=None, expires_at=None,
                        description="")
    assert store.delete_coupon("gone") is True
    assert _last(woo, "DELETE")["query"] == {"force": "true"} and woo.coupons == {}
    assert store.delete_coupon("gone") is False


def test_product_ids_for_sku(store):
    assert store.product_ids_for_sku("FLAT-WHITE") == [94]
    assert store.product_ids_for_sku("NOPE") == []


# -- failures ----------------------------------------------------------------------


def test_429_is_retryable_with_retry_after(woo, store):
    woo.fail_next(429, retry_after=30)
    with pytest.raises(WooError) as caught:
        store.set_customer_meta(CUSTOMER, {"points": 1})
    assert caught.value.retryable and caught.value.retry_after == 30 and caught.value.status == 429
    store.set_customer_meta(CUSTOMER, {"points": 1})  # the next call goes through


def test_500_is_retryable(woo, store):
    woo.fail_next(500)
    with pytest.raises(WooError) as caught:
        store.product_ids_for_sku("BEANS-1")
    assert caught.value.retryable and caught.value.retry_after is None
    assert "HTTP 500" in str(caught.value)


def test_refused_connection_is_retryable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(WooError) as caught:
        WooStore(f"http://127.0.0.1:{port}", "ck_x", "cs_x", timeout=2).product_ids_for_sku("X")
    assert caught.value.retryable and caught.value.status is None


def test_wrong_secret_is_a_clear_permanent_error(woo):
    store = WooStore(woo.url, woo.key, "cs_wrong")
    with pytest.raises(WooError) as caught:
        store.set_customer_meta(CUSTOMER, {"points": 1})
    error = caught.value
    assert not error.retryable and error.status == 401
    assert error.code == "woocommerce_rest_authentication_error"
    message = str(error)
    assert "set_customer_meta" in message and "signature does not match" in message
    assert "consumer key and secret" in message


def test_the_fake_checks_signatures_nonces_and_presence(woo):
    signed = OAuth(url=f"{woo.url}/wp-json/wc/v3/products?sku=BEANS-1", consumer_key=woo.key,
                   consumer_secret=woo.secret, version="wc/v3", method="GET").get_oauth_url()
    assert requests.get(signed, timeout=5).status_code == 200
    replay = requests.get(signed, timeout=5)
    assert replay.status_code == 401 and "nonce" in replay.json()["message"]
    tampered = requests.get(signed.replace("BEANS-1", "FLAT-WHITE"), timeout=5)
    assert tampered.status_code == 401 and "signature" in tampered.json()["message"]
    unsigned = requests.get(f"{woo.url}/wp-json/wc/v3/products", timeout=5)
    assert unsigned.json()["code"] == "woocommerce_rest_authentication_missing_parameter"


# -- orders ------------------------------------------------------------------------


def test_orders_pages_through_every_order_once(woo, store):
    orders = list(store.orders(page_size=3))
    assert len(woo.orders) == 7
    assert sorted(o["id"] for o in orders) == sorted(o["id"] for o in woo.orders)
    assert len({o["id"] for o in orders}) == 7
    modified = [o["date_modified_gmt"] for o in orders]
    assert modified == sorted(modified)
    pages = [r["query"] for r in woo.requests]
    assert [q["page"] for q in pages] == ["1", "2", "3"]
    assert pages[0] == {"orderby": "modified", "order": "asc", "dates_are_gmt": "true",
                        "per_page": "3", "page": "1"}

    connector = WooCommerceConnector({"url": "https://shop.example"})
    for order in orders:
        for event in order_events("order.updated", order, DEFAULT_ORDER_KEY_META):
            load_event(event)
        assert connector.translate("order.updated", order, {})


def test_orders_since_filters_on_modified_after(woo, store):
    since = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # orders are modified at 09:30, 10:30, ...
    orders = list(store.orders(since=since))
    assert [o["date_modified_gmt"] for o in orders] == [
        "2024-05-01T12:30:00", "2024-05-01T13:30:00", "2024-05-01T14:30:00", "2024-05-01T15:30:00"]
    assert woo.requests[0]["query"]["modified_after"] == "2024-05-01T12:00:00"


def test_orders_keeps_the_json_exact(woo):
    woo.orders[0]["line_items"][0]["price"] = 18.99
    woo.orders[0]["big"] = 2**63 + 1
    store = WooStore(woo.url, woo.key, woo.secret)
    order = next(o for o in store.orders() if o["id"] == woo.orders[0]["id"])
    assert order["line_items"][0]["price"] == 18.99 and order["big"] == 2**63 + 1
    assert json.loads(json.dumps(order)) == woo.orders[0]


def test_order_refunds_reads_an_orders_refunds_as_documented(woo, store):
    order = next(o for o in woo.orders if o["refunds"])  # order 723 as documented, under its own id
    refunds = store.order_refunds(order["id"])
    assert woo.requests[-1]["path"] == f"/wp-json/wc/v3/orders/{order['id']}/refunds"
    documented = load_contract("woocommerce/rest_v3/order_refunds_list.json")["response"]
    assert [r["id"] for r in refunds] == [r["id"] for r in documented] == [726, 724]  # newest first
    assert [(r["amount"], r["line_items"]) for r in refunds] == [
        (r["amount"], r["line_items"]) for r in documented]
    assert refunds[0]["date_created_gmt"] == order["date_modified_gmt"]  # the last refund changed the order
    # and one refund (GET orders/<id>/refunds/<refund_id>, order_refund_get.json)
    one = store._json("refund", store._call("refund", "GET", f"orders/{order['id']}/refunds/726"))
    documented_one = load_contract("woocommerce/rest_v3/order_refund_get.json")["response"]
    assert {k: v for k, v in one.items() if not k.startswith(("date_", "_links"))} == {
        k: v for k, v in documented_one.items() if not k.startswith(("date_", "_links"))}


def test_with_refund_details_puts_each_refund_in_the_order_that_lists_it(woo, store):
    order = next(o for o in store.orders() if o["refunds"])
    detailed = store.with_refund_details(order)
    assert [(r["id"], r["total"], r["amount"], len(r["line_items"])) for r in detailed["refunds"]] == [
        (726, "-10.00", "10.00", 0), (724, "-9.00", "9.00", 1)]
    assert {k: v for k, v in detailed.items() if k != "refunds"} == {k: v for k, v in order.items() if k != "refunds"}
    plain = next(o for o in store.orders() if not o["refunds"])
    calls = len(woo.requests)
    assert store.with_refund_details(plain) == plain and len(woo.requests) == calls  # nothing to read


def test_refunds_that_fail_are_a_woo_error(woo, store):
    order = next(o for o in woo.orders if o["refunds"])
    woo.refunds_failing.add(order["id"])
    with pytest.raises(WooError) as caught:
        store.with_refund_details(order)
    assert caught.value.retryable and caught.value.status == 500
    with pytest.raises(WooError, match="not found|Invalid order ID"):
        store.order_refunds(999999)


def _refund_reads(woo, order_id) -> list[dict]:
    return [r for r in woo.requests if r["path"] == f"/wp-json/wc/v3/orders/{order_id}/refunds"]


def test_a_refunds_read_that_fails_on_what_may_mend_is_tried_again_a_moment_later(woo, store):
    order = next(o for o in woo.orders if o["refunds"])
    woo.fail_refunds(order["id"], 503, "reset")  # a 503, then the connection closed unanswered
    assert [r["id"] for r in store.order_refunds(order["id"])] == [726, 724]
    assert len(_refund_reads(woo, order["id"])) == 3

    woo.fail_refunds(order["id"], 404)  # not what a retry mends
    with pytest.raises(WooError) as caught:
        store.order_refunds(order["id"])
    assert caught.value.status == 404 and len(_refund_reads(woo, order["id"])) == 4


def test_a_refunds_read_gives_up_after_a_couple_of_tries_and_a_long_retry_after_is_not_waited_for(woo, store):
    order = next(o for o in woo.orders if o["refunds"])
    woo.fail_refunds(order["id"], 500, 502, 503, 504)
    with pytest.raises(WooError) as caught:
        store.with_refund_details(order)
    assert caught.value.retryable and caught.value.status == 503  # the third try's
    assert len(_refund_reads(woo, order["id"])) == 3

    woo.refund_failures.clear()
    woo.fail_next(429, retry_after=3600)  # an hour: not within a run
    with pytest.raises(WooError) as caught:
        store.order_refunds(order["id"])
    assert caught.value.status == 429 and len(_refund_reads(woo, order["id"])) == 4
    once = WooStore(woo.url, woo.key, woo.secret, retry_pauses=())
    woo.fail_refunds(order["id"], 503)
    with pytest.raises(WooError):
        once.order_refunds(order["id"])


def test_order_refunds_reads_every_page_each_tried_again_if_it_fails(woo, store):
    """WooCommerce answers at most 100 refunds a page (X-WP-TotalPages says how
    many pages); 130 refunds of one order, the second page failing once."""
    order = next(o for o in woo.orders if o["refunds"])
    order["refunds"] = [{"id": 2000 + n, "reason": "", "total": "-0.10"} for n in range(130)]
    woo.refunds[order["id"]] = contract_refunds(order)
    woo.fail_refunds(order["id"], 502, page=2)
    refunds = store.order_refunds(order["id"])
    assert sorted(r["id"] for r in refunds) == [2000 + n for n in range(130)]
    assert [r["query"]["page"] for r in _refund_reads(woo, order["id"])] == ["1", "2", "2"]
    assert {r["query"]["per_page"] for r in _refund_reads(woo, order["id"])} == {"100"}
    detailed = store.with_refund_details(order)
    assert all(isinstance(entry.get("line_items"), list) for entry in detailed["refunds"])


def test_order_reads_one_order_as_the_orders_list_has_it(woo, store):
    wanted = woo.orders[2]
    woo.fail_next(502)
    assert store.order(wanted["id"]) == wanted  # tried again after the 502
    assert [r["path"] for r in woo.requests] == [f"/wp-json/wc/v3/orders/{wanted['id']}"] * 2
    with pytest.raises(WooError) as caught:
        store.order(999999)
    assert not caught.value.retryable and caught.value.status == 404
    assert "woocommerce_rest_shop_order_invalid_id" in str(caught.value)


@pytest.mark.parametrize(("answer", "complaint"), [
    ([{"id": 726, "amount": "10.00", "line_items": []}, {"amount": "9.00", "line_items": []}],
     "Refund 2 of 2 has no usable id"),
    ([726, 724], "Refund 1 of 2 is a number, not an object"),
    ([{"id": 726, "amount": "10.00", "line_items": {"0": {}}}], "Refund 726's line_items is an object, not a list"),
    ([{"id": True, "line_items": []}], "Refund 1 of 1 has no usable id (got True)"),
])
def test_refunds_the_shop_answers_that_are_not_refunds_are_a_woo_error_saying_what(woo, store, answer, complaint):
    order = next(o for o in woo.orders if o["refunds"])
    woo.refund_answers[order["id"]] = answer
    with pytest.raises(WooError) as caught:
        store.with_refund_details(order)
    assert not caught.value.retryable
    assert f"orders/{order['id']}/refunds" in str(caught.value) and complaint in str(caught.value)


# -- webhooks ----------------------------------------------------------------------


def test_register_webhooks_is_idempotent(woo, store):
    topics = ["order.created", "order.updated", "customer.created"]
    url = "https://loyalty.example/webhooks/woocommerce"
    assert store.register_webhooks(url, "s3cret", topics) == topics
    assert store.register_webhooks(url, "s3cret", topics) == []
    assert sorted(h["topic"] for h in woo.webhooks.values()) == sorted(topics)
    hook = next(iter(woo.webhooks.values()))
    assert (hook["delivery_url"], hook["secret"], hook["status"]) == (url, "s3cret", "active")
    posted = _last(woo, "POST")["json"]
    assert set(posted) == {"name", "topic", "delivery_url", "secret", "status"}


def test_register_webhooks_reactivates_a_disabled_one(woo, store):
    url = "https://loyalty.example/webhooks/woocommerce"
    store.register_webhooks(url, "old", ["order.updated"])
    hook = next(iter(woo.webhooks.values()))
    hook["status"] = "disabled"  # WooCommerce does this after 5 failed deliveries
    assert store.register_webhooks(url, "new", ["order.updated"]) == ["order.updated"]
    assert len(woo.webhooks) == 1 and (hook["status"], hook["secret"]) == ("active", "new")


def test_register_webhooks_pages_through_existing_ones(woo, store):
    for i in range(1, 121):  # other apps' webhooks fill the first page
        woo.webhooks[i] = {"id": i, "topic": "order.created", "status": "active",
                           "delivery_url": f"https://other.example/{i}"}
    url = "https://loyalty.example/hook"
    assert store.register_webhooks(url, "s", ["order.created"]) == ["order.created"]
    assert store.register_webhooks(url, "s", ["order.created"]) == []
    pages = [r["query"]["page"] for r in woo.requests if r["method"] == "GET"]
    assert pages == ["1", "2", "1", "2"]


# -- key exchange ------------------------------------------------------------------


def test_authorize_url_has_the_documented_parameters():
    url = WooStore.authorize_url("https://shop.example/", "Regulars loyalty", "merchant 7",
                                 "https://loyalty.example/woo/return", "https://loyalty.example/woo/keys")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "shop.example", "/wc-auth/v1/authorize")
    assert parse_qs(parts.query) == {
        "app_name": ["Regulars loyalty"], "scope": ["read_write"], "user_id": ["merchant 7"],
        "return_url": ["https://loyalty.example/woo/return"],
        "callback_url": ["https://loyalty.example/woo/keys"],
    }
    with pytest.raises(ValueError, match="https"):
        WooStore.authorize_url("https://shop.example", "R", "1", "https://a/r", "http://a/k")
    with pytest.raises(ValueError, match="scope"):
        WooStore.authorize_url("https://shop.example", "R", "1", "https://a/r", "https://a/k", "all")


DOCUMENTED_CALLBACK = b"""{
    "key_id": 1,
    "user_id": 123,
    "consumer_key": "ck_xxxxxxxxxxxxxxxx",
    "consumer_secret": "cs_xxxxxxxxxxxxxxxx",
    "key_permissions": "read_write"
}"""


def test_read_auth_callback_accepts_the_documented_body():
    assert WooStore.read_auth_callback(DOCUMENTED_CALLBACK) == {
        "key_id": 1, "user_id": "123", "consumer_key": "ck_xxxxxxxxxxxxxxxx",
        "consumer_secret": "cs_xxxxxxxxxxxxxxxx", "key_permissions": "read_write",
    }


@pytest.mark.parametrize("body, complaint", [
    (b"", "not JSON"),
    (b"key_id=1&user_id=2", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (DOCUMENTED_CALLBACK.replace(b'"consumer_secret": "cs_xxxxxxxxxxxxxxxx",', b""), "consumer_secret"),
    (DOCUMENTED_CALLBACK.replace(b'"user_id": 123', b'"user_id": ""'), "user_id"),
    (DOCUMENTED_CALLBACK.replace(b'"ck_', b'"cs_'), "consumer_key"),
    (DOCUMENTED_CALLBACK.replace(b'"read_write"', b'"admin"'), "key_permissions"),
])
def test_read_auth_callback_refuses_a_broken_body(body, complaint):
    with pytest.raises(ValueError, match=complaint):
        WooStore.read_auth_callback(body)
