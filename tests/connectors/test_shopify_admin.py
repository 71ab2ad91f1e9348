"""connectors.shopify.admin through the real ShopifyAPI client against the
loopback Shopify in tests/fakes/shopify.py."""

from __future__ import annotations

import socket
import threading
import urllib.request
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import shopify

from connectors.shopify.admin import ShopifyAdmin, ShopifyError
from connectors.shopify.translate import translate_payload
from tests.fakes.shopify import FakeShopify, make_orders

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

CUSTOMER = "115310627314723954"  # above 2**53


@pytest.fixture
def fake():
    with FakeShopify() as shop:
        yield shop


@pytest.fixture
def admin(fake):
    return ShopifyAdmin(fake.shop, fake.token, base_url=fake.base_url, timeout=2.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(fake):
    return [r for r in fake.requests if r.path.endswith("/graphql.json")]


# -- metafields ------------------------------------------------------------------------


def test_metafields_set_sends_typed_values_in_the_regulars_namespace(fake, admin):
    admin.set_customer_metafields(CUSTOMER, {
        "points": 120, "tier": "gold", "stamps": {"coffee": 3}, "card_code": None})

    request, delete = _graphql(fake)
    assert (request.method, request.path) == ("POST", "/admin/api/2026-04/graphql.json")
    assert request.headers["x-shopify-access-token"] == fake.token
    assert "metafieldsSet(metafields: $metafields)" in request.json["query"]
    owner = f"gid://shopify/Customer/{CUSTOMER}"
    assert request.json["variables"]["metafields"] == [
        {"ownerId": owner, "namespace": "regulars", "key": "points", "type": "number_integer", "value": "120"},
        {"ownerId": owner, "namespace": "regulars", "key": "tier", "type": "single_line_text_field",
         "value": "gold"},
        {"ownerId": owner, "namespace": "regulars", "key": "stamps", "type": "json",
         "value": '{"coffee":3}'},
    ]
    assert "metafieldsDelete" in delete.json["query"]  # card_code None: no metafield
    assert fake.metafields[CUSTOMER] == {"points": ("number_integer", "120"),
                                         "tier": ("single_line_text_field", "gold"),
                                         "stamps": ("json", '{"coffee":3}')}


def test_a_blank_or_none_value_deletes_the_metafield(fake, admin):
    admin.set_customer_metafields(CUSTOMER, {"points": 5, "tier": "gold"})
    admin.set_customer_metafields(CUSTOMER, {"points": 6, "tier": ""})

    assert fake.metafields[CUSTOMER] == {"points": ("number_integer", "6")}
    delete = _graphql(fake)[-1].json
    assert "metafieldsDelete" in delete["query"]
    assert delete["variables"] == {"metafields": [
        {"ownerId": f"gid://shopify/Customer/{CUSTOMER}", "namespace": "regulars", "key": "tier"}]}


def test_user_errors_are_not_retryable_and_say_what_is_wrong(fake, admin):
    fake.metafields[CUSTOMER] = {"points": ("single_line_text_field", "many")}

    with pytest.raises(ShopifyError) as caught:
        admin.set_customer_metafields(CUSTOMER, {"points": 7})

    assert caught.value.retryable is False
    message = str(caught.value)
    assert message.startswith("metafieldsSet: metafields.0.type: ")
    assert "must be consistent with the existing type 'single_line_text_field'" in message
    assert fake.metafields[CUSTOMER] == {"points": ("single_line_text_field", "many")}


# -- failures --------------------------------------------------------------------------


def test_429_with_retry_after_is_retryable_with_its_delay(fake, admin):
    fake.fail_next(429, retry_after=2)
    with pytest.raises(ShopifyError) as caught:
        admin.set_customer_metafields(CUSTOMER, {"points": 1})
    assert (caught.value.retryable, caught.value.retry_after, caught.value.status) == (True, 2.0, 429)
    assert "metafieldsSet: HTTP 429" in str(caught.value)

    fake.fail_next(429, retry_after=3)  # the REST path (pyactiveresource) too
    with pytest.raises(ShopifyError) as caught:
        list(admin.orders())
    assert (caught.value.retryable, caught.value.retry_after) == (True, 3.0)


def test_5xx_is_retryable_on_graphql_and_rest(fake, admin):
    fake.fail_next(500)
    with pytest.raises(ShopifyError) as caught:
        admin.register_webhooks("https://regulars.example/webhooks/shopify", ["orders/paid"])
    assert (caught.value.retryable, caught.value.retry_after, caught.value.status) == (True, None, 500)

    fake.fail_next(503, retry_after=4)
    with pytest.raises(ShopifyError) as caught:
        list(admin.orders())
    assert (caught.value.retryable, caught.value.retry_after, caught.value.status) == (True, 4.0, 503)


def test_graphql_throttled_is_retryable_after_the_bucket_refills(fake, admin):
    fake.throttle_next()
    with pytest.raises(ShopifyError) as caught:
        admin.set_customer_metafields(CUSTOMER, {"points": 1})
    assert caught.value.retryable is True
    assert caught.value.retry_after == pytest.approx(0.05)  # (10 - 5) / 100
    assert "Throttled" in str(caught.value)


def test_a_refused_connection_and_a_timeout_are_retryable(fake):
    closed = ShopifyAdmin(fake.shop, fake.token, base_url=f"http://127.0.0.1:{_closed_port()}")
    for call in (lambda: closed.set_customer_metafields(CUSTOMER, {"points": 1}),
                 lambda: list(closed.orders())):
        with pytest.raises(ShopifyError) as caught:
            call()
        assert caught.value.retryable is True
        assert "could not be reached" in str(caught.value)

    impatient = ShopifyAdmin(fake.shop, fake.token, base_url=fake.base_url, timeout=0.2)
    fake.stall_next(0.6)
    with pytest.raises(ShopifyError) as caught:
        impatient.set_customer_metafields(CUSTOMER, {"points": 1})
    assert caught.value.retryable is True


def test_graphql_errors_a_retry_cannot_mend_are_not_retryable(fake, admin):
    with pytest.raises(ShopifyError) as caught:
        admin._graphql("shop", "query { shop { name } }", {})  # the fake knows no `shop`
    assert caught.value.retryable is False
    assert str(caught.value).startswith("shop: ")


def test_no_session_is_left_active_after_a_call(fake, admin):
    admin.set_customer_metafields(CUSTOMER, {"points": 1})
    with pytest.raises(ShopifyError):
        ShopifyAdmin(fake.shop, "shpat_wrong", base_url=fake.base_url).set_customer_metafields(CUSTOMER, {"a": 1})
    assert shopify.ShopifyResource.site is None
    assert "X-Shopify-Access-Token" not in shopify.ShopifyResource.headers


def test_a_wrong_token_is_not_retryable(fake):
    wrong = ShopifyAdmin(fake.shop, "shpat_wrong", base_url=fake.base_url)
    with pytest.raises(ShopifyError) as caught:
        wrong.set_customer_metafields(CUSTOMER, {"points": 1})
    assert (caught.value.retryable, caught.value.status) == (False, 401)
    assert "Invalid API key or access token" in str(caught.value)


def test_clients_of_two_shops_used_from_several_threads_each_send_their_own_token():
    with FakeShopify() as one, FakeShopify() as two:
        clients = [ShopifyAdmin(f.shop, f.token, base_url=f.base_url) for f in (one, two)]
        errors = []

        def work(client, n):
            try:
                for i in range(5):
                    client.set_customer_metafields(str(n), {"points": i})
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(clients[n % 2], n)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for fake, customers in ((one, {"0", "2", "4"}), (two, {"1", "3", "5"})):
            assert set(fake.metafields) == customers
            assert {r.headers["x-shopify-access-token"] for r in fake.requests} == {fake.token}


# -- discounts -------------------------------------------------------------------------


def test_create_discount_code_sends_the_2026_04_shape_and_is_idempotent(fake, admin):
    ends = datetime(2030, 1, 31, 12, tzinfo=UTC)
    first = admin.create_discount_code(code="REG-5OFF-1", title="regulars: five-off", customer_id=CUSTOMER,
                                       kind="fixed_amount", value="5.00", ends_at=ends, currency="EUR")
    again = admin.create_discount_code(code="REG-5OFF-1", title="regulars: five-off", customer_id=CUSTOMER,
                                       kind="fixed_amount", value="5.00", ends_at=ends, currency="EUR")

    assert first == again and first.startswith("gid://shopify/DiscountCodeNode/")
    assert list(fake.discounts) == ["REG-5OFF-1"]
    given = fake.discounts["REG-5OFF-1"]
    assert given["context"] == {"customers": {"add": [f"gid://shopify/Customer/{CUSTOMER}"]}}
    assert given["customerGets"] == {"value": {"discountAmount": {"amount": "5.00", "appliesOnEachItem": False}},
                                     "items": {"all": True}}
    assert (given["usageLimit"], given["appliesOncePerCustomer"]) == (1, True)
    assert given["endsAt"] == "2030-01-31T12:00:00+00:00"
    assert datetime.fromisoformat(given["startsAt"]) <= datetime.now(UTC)
    assert "codeDiscountNodeByCode" in _graphql(fake)[-1].json["query"]


def test_percentage_and_free_product_discounts(fake, admin):
    for code, kind, value in (("PCT", "percentage", 10), ("FREE", "free_product", None)):
        admin.create_discount_code(code=code, title=code, customer_id=CUSTOMER, kind=kind, value=value,
                                   ends_at=None)
    assert fake.discounts["PCT"]["customerGets"] == {"value": {"percentage": 0.1}, "items": {"all": True}}
    assert fake.discounts["FREE"]["customerGets"] == {"value": {"percentage": 1.0}, "items": {"all": True}}
    assert fake.discounts["PCT"]["endsAt"] is None
    with pytest.raises(ValueError):
        admin.create_discount_code(code="X", title="X", customer_id=CUSTOMER, kind="voucher", value=1,
                                   ends_at=None)


def test_a_code_taken_by_another_discount_is_not_ours(fake, admin):
    admin.create_discount_code(code="SUMMER", title="the merchant's", customer_id=CUSTOMER,
                               kind="percentage", value=20, ends_at=None)
    with pytest.raises(ShopifyError) as caught:
        admin.create_discount_code(code="summer", title="regulars: five-off", customer_id=CUSTOMER,
                                   kind="fixed_amount", value="5", ends_at=None)
    assert caught.value.retryable is False
    assert "already used by another discount" in str(caught.value)


def test_delete_discount_code(fake, admin):
    admin.create_discount_code(code="GONE", title="t", customer_id=CUSTOMER, kind="percentage", value=5,
                               ends_at=None)
    assert admin.delete_discount_code("GONE") is True
    assert fake.discounts == {}
    assert admin.delete_discount_code("GONE") is False


# -- webhooks --------------------------------------------------------------------------


def test_register_webhooks_twice_creates_each_topic_once(fake, admin):
    url = "https://regulars.example/webhooks/shopify"
    topics = ["orders/paid", "orders/updated", "refunds/create"]

    assert admin.register_webhooks(url, topics) == topics
    assert admin.register_webhooks(url, topics + ["customers/update"]) == ["customers/update"]

    assert sorted((h["topic"], h["uri"], h["format"]) for h in fake.webhooks) == [
        ("CUSTOMERS_UPDATE", url, "JSON"), ("ORDERS_PAID", url, "JSON"),
        ("ORDERS_UPDATED", url, "JSON"), ("REFUNDS_CREATE", url, "JSON")]
    assert admin.register_webhooks("https://elsewhere.example/hooks", ["orders/paid"]) == ["orders/paid"]


# -- orders ----------------------------------------------------------------------------


def test_orders_pages_through_every_contract_order_once_with_exact_ids(fake, admin):
    orders = list(admin.orders(page_size=1))

    assert sorted(o["id"] for o in orders) == [450789469, 820982911946154508]
    assert all(type(o["id"]) is int for o in orders)
    gets = [r for r in fake.requests if r.path.endswith("/orders.json")]
    assert len(gets) == 2
    assert gets[0].query == {"status": "any", "limit": "1"}
    assert set(gets[1].query) == {"limit", "page_info"}
    for order in orders:
        (event,) = translate_payload("orders/updated", order)
        assert event["order"]["id"] == str(order["id"])
    big = next(o for o in orders if o["id"] > 2**53)
    assert translate_payload("orders/updated", big)[0]["customer"]["external_id"] == "115310627314723954"


def test_orders_since_a_moment_across_several_pages():
    orders = make_orders(7)  # updated 09:00, 10:00, ... 15:00 on 2024-05-01
    with FakeShopify(orders) as fake:
        admin = ShopifyAdmin(fake.shop, fake.token, base_url=fake.base_url)
        since = datetime(2024, 5, 1, 11, tzinfo=UTC)
        got = list(admin.orders(since=since, page_size=2))

    assert sorted(o["id"] for o in got) == [o["id"] for o in orders[2:]]
    assert len([r for r in fake.requests if r.path.endswith("/orders.json")]) == 3
    assert fake.requests[0].query["updated_at_min"] == "2024-05-01T11:00:00+00:00"


# -- OAuth -----------------------------------------------------------------------------


def test_permission_url_names_the_scopes_redirect_and_state(fake):
    url = ShopifyAdmin.permission_url(fake.shop, fake.api_key, fake.api_secret, ["read_orders", "write_discounts"],
                                      "https://regulars.example/install/shopify/callback", "st4te")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", fake.shop, "/admin/oauth/authorize")
    assert parse_qs(parts.query) == {"client_id": [fake.api_key], "scope": ["read_orders,write_discounts"],
                                     "redirect_uri": ["https://regulars.example/install/shopify/callback"],
                                     "state": ["st4te"]}
    local = ShopifyAdmin.permission_url(fake.shop, fake.api_key, fake.api_secret, ["read_orders"],
                                        "https://r.example/cb", "s", base_url=fake.base_url)
    assert local.startswith(fake.base_url + "/admin/oauth/authorize?")


def test_exchange_token_checks_the_hmac_then_trades_the_code(fake):
    params = fake.callback_params(state="st4te")
    token = ShopifyAdmin.exchange_token(fake.shop, fake.api_key, fake.api_secret, params, base_url=fake.base_url)
    assert token == fake.token
    (post,) = [r for r in fake.requests if r.path == "/admin/oauth/access_token"]
    assert post.json == {"client_id": fake.api_key, "client_secret": fake.api_secret, "code": params["code"]}

    with pytest.raises(ShopifyError) as caught:  # the code was used
        ShopifyAdmin.exchange_token(fake.shop, fake.api_key, fake.api_secret, params, base_url=fake.base_url)
    assert (caught.value.retryable, caught.value.status) == (False, 400)


@pytest.mark.parametrize("change", [{"state": "other"}, {"hmac": "0" * 64}, {"shop": "evil.myshopify.com"}])
def test_a_tampered_callback_is_refused_before_any_request(fake, change):
    params = {**fake.callback_params(state="st4te"), **change}
    with pytest.raises(ShopifyError) as caught:
        ShopifyAdmin.exchange_token(fake.shop, fake.api_key, fake.api_secret, params, base_url=fake.base_url)
    assert caught.value.retryable is False
    assert "the callback's hmac does not match" in str(caught.value)
    assert fake.requests == []


def test_a_stale_callback_is_refused(fake):
    params = fake.callback_params(timestamp="1500000000")
    with pytest.raises(ShopifyError, match="over a day old"):
        ShopifyAdmin.exchange_token(fake.shop, fake.api_key, fake.api_secret, params, base_url=fake.base_url)


def test_exchange_token_over_https_goes_through_shopify_session_request_token(monkeypatch):
    with FakeShopify(tls=True) as fake:
        monkeypatch.setenv("SSL_CERT_FILE", fake.ca_file)
        # urlopen's opener, once built, keeps the TLS context it made (Python 3.13's
        # HTTPSHandler makes it at once): a test before this one built it without the CA
        monkeypatch.setattr(urllib.request, "_opener", None)
        token = ShopifyAdmin.exchange_token(fake.shop, fake.api_key, fake.api_secret, fake.callback_params(),
                                            base_url=fake.base_url)
        assert token == fake.token
        (post,) = fake.requests
        assert post.headers["content-type"] == "application/x-www-form-urlencoded"
        # the same client over https: GraphQL and REST
        admin = ShopifyAdmin(fake.shop, token, base_url=fake.base_url)
        admin.set_customer_metafields(CUSTOMER, {"points": 3})
        assert len(list(admin.orders())) == 2
        assert fake.metafields[CUSTOMER] == {"points": ("number_integer", "3")}
