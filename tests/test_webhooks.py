"""The webhook receivers over real HTTP on loopback (uvicorn in a thread), with
the contract payloads re-signed with the test's secrets: signatures wrong,
missing, for another body and rotated; bodies truncated, not JSON, a form body,
huge; WooCommerce's unsigned ping; the background applier."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import uvicorn

from engine.customers import customer_summary
from engine.web import create_app
from engine.web.signatures import secrets_from_env, sign, verify
from tests.conftest import load_contract

SHOPIFY_SECRETS = ["new-secret", "old-secret"]
WOO_SECRET = "w&amp;c-secret"  # as typed into WooCommerce's settings, HTML-encoded


@pytest.fixture
def server(engine):
    """The app served on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secrets = secrets_from_env({"REGULARS_SHOPIFY_WEBHOOK_SECRET": ",".join(SHOPIFY_SECRETS),
                                "REGULARS_WOOCOMMERCE_WEBHOOK_SECRET": WOO_SECRET})
    app = create_app(engine, secrets=secrets)
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def shopify_delivery(secret: str = "new-secret", topic: str = "orders/paid", body: bytes | None = None):
    delivery = load_contract("shopify/webhooks/orders_paid.delivery-2024-10.json")
    payload = delivery["body"]
    payload.update(cancelled_at=None, financial_status="paid")
    body = body if body is not None else json.dumps(payload).encode()
    headers = {k: v for k, v in delivery["headers"].items() if k not in ("content-length", "accept-encoding")}
    headers.update({"x-shopify-topic": topic, "x-shopify-hmac-sha256": sign(body, secret),
                    "content-type": "application/json"})
    return body, headers


def wait_for(predicate, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_signed_shopify_delivery_is_stored_answered_and_applied_within_a_second(server, engine):
    body, headers = shopify_delivery()
    started = time.monotonic()
    status, answer = post(f"{server}/webhooks/shopify", body, headers)
    assert (status, answer["status"]) == (200, "received")
    assert wait_for(lambda: (customer_summary(engine, "jon@example.com") or {}).get("points", 0) > 0, 1.5)
    assert time.monotonic() - started < 1.5
    again = post(f"{server}/webhooks/shopify", body, headers)
    assert again == (200, {"status": "duplicate", "delivery": answer["delivery"]})


def test_a_secret_being_rotated_out_is_still_accepted(server):
    body, headers = shopify_delivery(secret="old-secret")
    assert post(f"{server}/webhooks/shopify", body, headers)[0] == 200


@pytest.mark.parametrize("case", ["wrong", "missing", "another body"])
def test_a_bad_signature_is_401_and_nothing_is_stored(server, engine, case):
    body, headers = shopify_delivery()
    if case == "wrong":
        headers["x-shopify-hmac-sha256"] = sign(body, "not-the-secret")
    elif case == "missing":
        del headers["x-shopify-hmac-sha256"]
    else:
        headers["x-shopify-hmac-sha256"] = sign(b'{"id": 1}', "new-secret")
    status, answer = post(f"{server}/webhooks/shopify", body, headers)
    assert (status, answer["error"]["code"]) == (401, "bad_signature")
    from engine import inbox

    with engine.db.connect() as conn:
        assert inbox.listing(conn) == []


@pytest.mark.parametrize(
    "body,message",
    [(b'{"id": 1, "line_items": [', "body is not valid JSON"),
     (b"not json at all", "body is not valid JSON"),
     (b"id=1&email=a%40b.c", "body is not valid JSON"),
     (b"\xff\xfe{}", "body is not UTF-8"),
     (b"[]", "")],
)
def test_a_malformed_body_is_400_saying_what_is_wrong_and_kept_as_failed(server, engine, body, message):
    _, headers = shopify_delivery(body=body)
    status, answer = post(f"{server}/webhooks/shopify", body, headers)
    assert status == 400 and answer["error"]["code"] == "bad_delivery"
    assert message in answer["error"]["message"]
    from engine import inbox

    with engine.db.connect() as conn:
        (row,) = inbox.listing(conn)
    assert row.status == "failed"


def test_an_unknown_topic_is_accepted_and_recorded_as_ignored(server, engine):
    body, headers = shopify_delivery(topic="products/update")
    status, answer = post(f"{server}/webhooks/shopify", body, headers)
    assert (status, answer["status"]) == (200, "ignored")


def test_a_huge_body_is_413_before_it_is_read(server):
    import http.client
    from urllib.parse import urlsplit

    _, headers = shopify_delivery(body=b"{}")
    address = urlsplit(server)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.putrequest("POST", "/webhooks/shopify")
    for name, value in {**headers, "content-length": str(6 * 1024 * 1024)}.items():
        connection.putheader(name, value)
    connection.endheaders()  # the body never comes: the answer must not wait for it
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())["error"]["code"]) == (413, "too_large")
    connection.close()


def test_woocommerce_deliveries_are_signed_with_the_html_decoded_secret(server, engine):
    payload = load_contract("woocommerce/webhooks/order_updated_with_refunds.body.json")
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "x-wc-webhook-topic": "order.updated",
               "x-wc-webhook-signature": sign(body, "w&c-secret"), "x-wc-webhook-delivery-id": "1e39b411c16382875440af2d87b25755"}
    status, answer = post(f"{server}/webhooks/woocommerce", body, headers)
    assert (status, answer["status"]) == (200, "received")
    assert wait_for(lambda: (customer_summary(engine, "joao.silva@example.com") or {}).get("points") == 10)
    headers["x-wc-webhook-signature"] = sign(body, WOO_SECRET)  # the encoded text is not the secret
    assert post(f"{server}/webhooks/woocommerce", body, headers)[0] == 401


def test_woocommerce_s_unsigned_creation_ping_gets_200(server, engine):
    status, answer = post(f"{server}/webhooks/woocommerce", b"webhook_id=4",
                          {"content-type": "application/x-www-form-urlencoded"})
    assert (status, answer) == (200, {"status": "ok", "ping": True})


def test_signatures_are_compared_over_the_raw_bytes():
    body = b'{"a": 1}'
    assert verify(body, sign(body, "s"), ["x", "s"])
    assert not verify(body + b" ", sign(body, "s"), ["s"])
    assert not verify(body, None, ["s"]) and not verify(body, sign(body, "s"), [])


def test_unknown_endpoints_and_methods_answer_in_the_json_error_shape(server):
    request = urllib.request.Request(f"{server}/nowhere")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 404 and json.loads(raised.value.read())["error"]["code"] == "not_found"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{server}/webhooks/shopify", timeout=10)  # a GET
    assert raised.value.code == 405 and json.loads(raised.value.read())["error"]["code"] == "method_not_allowed"
