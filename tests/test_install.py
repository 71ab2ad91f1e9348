"""Installing regulars in a shop over real HTTP: Shopify's OAuth and
WooCommerce's wc-auth key exchange against loopback shops, the credentials
stored encrypted, the webhooks registered, and then used: the outbox delivers
with the stored token, and WooCommerce's webhooks are verified with the secret
the install gave them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import select

from engine import outbox as ob
from engine.db.models import shop_credentials
from engine.web import create_app
from engine.web.install import SHOPIFY_WEBHOOKS, WOO_WEBHOOKS, Install
from engine.web.signatures import sign
from tests.conftest import load_contract
from tests.fakes.shopify import FakeShopify
from tests.fakes.woocommerce import FakeWoo
from tests.serving import serve_app

PUBLIC = "https://regulars.example"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def call(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def shops(monkeypatch):
    with FakeShopify() as shopify, FakeWoo() as woo:
        for name in ("REGULARS_SHOPIFY_ACCESS_TOKEN", "REGULARS_WOOCOMMERCE_CONSUMER_KEY",
                     "REGULARS_WOOCOMMERCE_CONSUMER_SECRET"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("REGULARS_SECRET_KEY", "install test key")
        monkeypatch.setenv("REGULARS_SHOPIFY_API_SECRET", shopify.api_secret)
        yield shopify, woo


@pytest.fixture
def installed(make_engine, shops):
    """An engine configured for both loopback shops, served with its install
    routes; yields (engine, base URL, fake Shopify, fake WooCommerce)."""
    shopify, woo = shops
    engine = make_engine({
        "engine": {"currency": "EUR"},
        "rules": {"points": {"per_unit": 1}},
        "connectors": {"shopify": {"shop": shopify.shop, "api_url": shopify.base_url},
                       "woocommerce": {"url": woo.url}},
    })
    env = {"REGULARS_PUBLIC_URL": PUBLIC, "REGULARS_SHOPIFY_API_KEY": shopify.api_key,
           "REGULARS_SHOPIFY_API_SECRET": shopify.api_secret}
    app = create_app(engine, secrets={"shopify": [], "woocommerce": []},
                     install=Install(engine, env=env, shopify_base_url=shopify.base_url))
    with serve_app(app) as base:
        yield engine, base, shopify, woo


def _shopify_install(base: str, shopify) -> tuple[int, bytes]:
    status, headers, _ = call(f"{base}/install/shopify?shop={shopify.shop}")
    assert status == 302
    location = urlsplit(headers["location"])
    assert f"{location.scheme}://{location.netloc}" == shopify.base_url
    assert location.path == "/admin/oauth/authorize"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["client_id"] == shopify.api_key
    assert query["redirect_uri"] == f"{PUBLIC}/install/shopify/callback"
    assert set(query["scope"].split(",")) >= {"read_orders", "write_customers", "write_discounts"}
    # The merchant approves; Shopify sends them back with a signed query.
    params = shopify.callback_params(state=query["state"])
    status, _, page = call(f"{base}/install/shopify/callback?{urlencode(params)}")
    return status, page


def test_shopify_oauth_stores_the_token_encrypted_and_registers_the_webhooks(installed):
    engine, base, shopify, _ = installed
    status, page = _shopify_install(base, shopify)
    assert status == 200, page
    assert b"installed" in page
    assert engine.credentials.get("shopify")["token"] == shopify.token
    with engine.db.connect() as conn:
        stored = conn.execute(select(shop_credentials)).one()
    assert stored.shop == shopify.shop and shopify.token.encode() not in bytes(stored.secret)
    assert sorted(h["topic"] for h in shopify.webhooks) == sorted(t.upper().replace("/", "_") for t in SHOPIFY_WEBHOOKS)
    assert {h["uri"] for h in shopify.webhooks} == {f"{PUBLIC}/webhooks/shopify"}

    # Installing again registers nothing twice.
    shopify.code = "another-code"
    assert _shopify_install(base, shopify)[0] == 200
    assert len(shopify.webhooks) == len(SHOPIFY_WEBHOOKS)

    # The stored token is what the outbox uses.
    order = load_contract("shopify/webhooks/orders_paid.docs-2026-04.json")
    order.update(financial_status="paid", cancelled_at=None, test=False)
    assert engine.ingest("shopify", "orders/paid", json.dumps(order).encode()).status == "applied"
    assert ob.Deliverer(engine).deliver_due().delivered == 1
    assert shopify.metafields


def test_a_tampered_callback_or_a_forged_state_installs_nothing(installed):
    engine, base, shopify, _ = installed
    status, headers, _ = call(f"{base}/install/shopify?shop={shopify.shop}")
    state = parse_qs(urlsplit(headers["location"]).query)["state"][0]
    params = shopify.callback_params(state=state)
    tampered = {**params, "code": "someone-else-s-code"}
    status, _, body = call(f"{base}/install/shopify/callback?{urlencode(tampered)}")
    assert status == 401 and b"hmac" in body
    forged = shopify.callback_params(state="not-a-state-of-ours")
    status, _, body = call(f"{base}/install/shopify/callback?{urlencode(forged)}")
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_state"
    assert call(f"{base}/install/shopify?shop=evil.example.com")[0] == 400
    assert engine.credentials.get("shopify") is None


def test_woocommerce_key_exchange_stores_the_keys_and_creates_signed_webhooks(installed):
    engine, base, _, woo = installed
    status, headers, _ = call(f"{base}/install/woocommerce?store_url={woo.url}")
    assert status == 302
    location = urlsplit(headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{woo.url}/wc-auth/v1/authorize"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["callback_url"] == f"{PUBLIC}/install/woocommerce/callback"
    assert query["return_url"] == f"{PUBLIC}/install/woocommerce/return"
    assert query["scope"] == "read_write" and query["app_name"] == "regulars"

    # The store posts the keys to the callback, with our state as user_id.
    keys = {"key_id": 1, "user_id": query["user_id"], "consumer_key": woo.key, "consumer_secret": woo.secret,
            "key_permissions": "read_write"}
    status, _, body = call(f"{base}/install/woocommerce/callback", json.dumps(keys).encode(),
                           {"content-type": "application/json"})
    assert status == 200, body
    creds = engine.credentials.get("woocommerce")
    assert creds["consumer_key"] == woo.key and creds["shop"] == woo.url
    hooks = list(woo.webhooks.values())
    assert sorted(h["topic"] for h in hooks) == sorted(WOO_WEBHOOKS)
    assert {h["delivery_url"] for h in hooks} == {f"{PUBLIC}/webhooks/woocommerce"}
    assert {h["secret"] for h in hooks} == {creds["webhook_secret"]}

    # A delivery signed with that secret is accepted; one signed otherwise is not.
    order = json.dumps(load_contract("woocommerce/webhooks/order_updated_with_refunds.body.json")).encode()
    signed = {"x-wc-webhook-topic": "order.updated", "content-type": "application/json",
              "x-wc-webhook-signature": sign(order, creds["webhook_secret"])}
    status, _, body = call(f"{base}/webhooks/woocommerce", order, signed)
    assert status == 200, body
    signed["x-wc-webhook-signature"] = sign(order, "a guess")
    assert call(f"{base}/webhooks/woocommerce", order, signed)[0] == 401


def test_a_woocommerce_callback_with_a_forged_state_or_a_broken_body_is_refused(installed):
    engine, base, _, woo = installed
    keys = {"key_id": 1, "user_id": "forged", "consumer_key": woo.key, "consumer_secret": woo.secret,
            "key_permissions": "read_write"}
    status, _, body = call(f"{base}/install/woocommerce/callback", json.dumps(keys).encode())
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_state"
    status, _, body = call(f"{base}/install/woocommerce/callback", b'{"key_id": 1')
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_callback"
    assert engine.credentials.get("woocommerce") is None
    assert woo.webhooks == {}


def test_install_without_a_public_url_says_what_to_set(make_engine):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from starlette.requests import Request

    install = Install(make_engine(), env={})
    request = Request({"type": "http", "method": "GET", "path": "/install/shopify",
                       "query_string": b"shop=a.myshopify.com", "headers": []})
    # in a thread of its own: a browser test run before this one leaves Playwright's loop running in this one
    with ThreadPoolExecutor(1) as thread:
        answer = thread.submit(asyncio.run, install.shopify_start(request)).result()
    assert answer.status_code == 503
    message = json.loads(answer.body)["error"]["message"]
    assert "REGULARS_PUBLIC_URL" in message and "REGULARS_SHOPIFY_API_KEY" in message


def test_stored_credentials_need_the_key_they_were_sealed_with(make_engine, monkeypatch):
    from engine.credentials import CredentialsError

    monkeypatch.setenv("REGULARS_SECRET_KEY", "install test key")
    engine = make_engine()
    engine.credentials.store("woocommerce", "https://shop.example", {"consumer_key": "ck", "consumer_secret": "cs"})
    monkeypatch.setenv("REGULARS_SECRET_KEY", "another key")
    engine.credentials._cache.clear()
    with pytest.raises(CredentialsError, match="REGULARS_SECRET_KEY"):
        engine.credentials.get("woocommerce")
    monkeypatch.setenv("REGULARS_SECRET_KEY", "another key,install test key")  # rotation: the old key still reads
    engine.credentials._cache.clear()
    assert engine.credentials.get("woocommerce")["consumer_key"] == "ck"
