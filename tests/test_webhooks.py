"""The webhook receivers over real HTTP on loopback (uvicorn in a thread), with
the contract payloads re-signed with the test's secrets: signatures wrong,
missing, for another body and rotated; bodies truncated, not JSON, a form body,
huge; WooCommerce's unsigned ping; the background applier; the group commit of
concurrent deliveries (many at once, a duplicate, a bad body or a bad row in
one batch, a database outage)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DataError, OperationalError

from engine import inbox
from engine.customers import customer_summary
from engine.db.models import inbox as inbox_table
from engine.db.models import orders
from engine.web import create_app
from engine.web.signatures import secrets_from_env, sign, verify
from tests.conftest import load_contract
from tests.serving import serve_app

SHOPIFY_SECRETS = ["new-secret", "old-secret"]
WOO_SECRET = "w&amp;c-secret"  # as typed into WooCommerce's settings, HTML-encoded


@pytest.fixture
def served(engine):
    """The app served on a free loopback port: its base ``url`` and the ``app``."""
    secrets = secrets_from_env({"REGULARS_SHOPIFY_WEBHOOK_SECRET": ",".join(SHOPIFY_SECRETS),
                                "REGULARS_WOOCOMMERCE_WEBHOOK_SECRET": WOO_SECRET})
    app = create_app(engine, secrets=secrets)
    with serve_app(app) as url:
        yield SimpleNamespace(url=url, app=app)


@pytest.fixture
def server(served):
    """The served app's base URL."""
    return served.url


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
     (b"", "body is empty"),
     (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
     (b'{"id": ' + b"9" * 5000 + b"}", "can't be read")],
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


def test_a_json_body_its_connector_can_t_read_is_received_then_kept_as_failed_with_why(server, engine):
    # Translation is the applier's: receipt only checks that the body is JSON.
    body, headers = shopify_delivery(body=b"[]")
    status, answer = post(f"{server}/webhooks/shopify", body, headers)
    assert (status, answer["status"]) == (200, "received")

    def failed():
        with engine.db.connect() as conn:
            row = inbox.get(conn, answer["delivery"])
        return row if row.status == "failed" else None

    assert wait_for(failed)
    assert "list" in failed().error and "not an object" in failed().error


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


# -- group commit ----------------------------------------------------------------------


def order_delivery(number: int):
    """A distinct signed orders/paid delivery: its own order id and
    X-Shopify-Webhook-Id."""
    payload = load_contract("shopify/webhooks/orders_paid.delivery-2024-10.json")["body"]
    payload.update(id=1000 + number, cancelled_at=None, financial_status="paid")
    body, headers = shopify_delivery(body=json.dumps(payload).encode())
    headers["x-shopify-webhook-id"] = str(uuid.uuid4())
    return body, headers


def inbox_rows(engine):
    with engine.db.connect() as conn:
        return conn.execute(select(inbox_table.c.id, inbox_table.c.key, inbox_table.c.status,
                                   inbox_table.c.error)).all()


def record_batches(receipts, monkeypatch) -> list[list[bytes]]:
    """The bodies of each batch the receipt writer stores, as it takes them."""
    batches: list[list[bytes]] = []
    write = receipts.write

    def recording(batch):
        batches.append([d.body for d in batch])
        return write(batch)

    monkeypatch.setattr(receipts, "write", recording)
    return batches


def post_in_one_batch(served, monkeypatch, deliveries) -> list[tuple[int, dict]]:
    """Post ``deliveries`` at once so that the writer stores them in one batch,
    and return their answers. A first delivery is let in and held at the
    writer's gate while the others queue up behind it; its answer comes first."""
    receipts = served.app.state.receipts
    batches = record_batches(receipts, monkeypatch)
    url = f"{served.url}/webhooks/shopify"
    with ThreadPoolExecutor(len(deliveries) + 1) as pool:
        with receipts.gate:
            futures = [pool.submit(post, url, *order_delivery(999))]
            assert wait_for(lambda: len(batches) == 1), "the writer did not take the first delivery"
            futures += [pool.submit(post, url, body, headers) for body, headers in deliveries]
            assert wait_for(lambda: receipts.queued == len(deliveries)), "the deliveries did not queue up"
        answers = [future.result(timeout=30) for future in futures]
    assert [len(batch) for batch in batches] == [1, len(deliveries)]  # the premise held
    return answers


def test_fifty_concurrent_deliveries_are_all_answered_200_and_stored_exactly_once(served, engine, monkeypatch):
    batches = record_batches(served.app.state.receipts, monkeypatch)
    deliveries = [order_delivery(n) for n in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda d: post(f"{served.url}/webhooks/shopify", *d), deliveries))
    assert [status for status, _ in answers] == [200] * 50
    assert {answer["status"] for _, answer in answers} == {"received"}
    ids = [answer["delivery"] for _, answer in answers]
    rows = inbox_rows(engine)
    assert len(set(ids)) == 50 and sorted(ids) == sorted(row.id for row in rows)
    assert sorted(row.key for row in rows) == sorted(f"webhook:orders/paid:{h['x-shopify-webhook-id']}"
                                                     for _, h in deliveries)
    assert sum(len(batch) for batch in batches) == 50
    assert wait_for(lambda: {row.status for row in inbox_rows(engine)} == {"applied"}, 30)
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(orders)).scalar_one() == 50


def test_a_duplicate_inside_one_batch_is_answered_duplicate(served, engine, monkeypatch):
    first, second = order_delivery(1), order_delivery(2)
    _, *answers = post_in_one_batch(served, monkeypatch, [first, second, first])
    assert [status for status, _ in answers] == [200, 200, 200]
    twins, other = [answers[0][1], answers[2][1]], answers[1][1]
    assert {twin["status"] for twin in twins} == {"received", "duplicate"}
    assert twins[0]["delivery"] == twins[1]["delivery"] != other["delivery"]
    assert other["status"] == "received"
    assert len(inbox_rows(engine)) == 3  # the held first delivery, `first` once, `second`


def test_a_key_reused_with_another_body_inside_one_batch_is_kept_as_a_conflict(served, engine, monkeypatch):
    first, changed = order_delivery(1), order_delivery(2)
    changed[1]["x-shopify-webhook-id"] = first[1]["x-shopify-webhook-id"]
    _, *answers = post_in_one_batch(served, monkeypatch, [first, changed])
    assert sorted(status for status, _ in answers) == [200, 400]  # whichever was queued second is refused
    (refused, body), = [(answer, sent[0]) for (status, answer), sent in zip(answers, [first, changed], strict=True)
                        if status == 400]
    assert "was already used by delivery" in refused["error"]["message"]
    rows = inbox_rows(engine)
    (conflict,) = [row for row in rows if row.status == "failed"]
    assert len(rows) == 3 and conflict.key.endswith(f"#conflict:{hashlib.sha256(body).hexdigest()}")


def test_a_body_that_is_not_json_inside_a_batch_fails_alone(served, engine, monkeypatch):
    broken = shopify_delivery(body=b'{"id": 1, "line_items": [')
    _, good, bad, other = post_in_one_batch(served, monkeypatch, [order_delivery(1), broken, order_delivery(2)])
    assert (good[0], good[1]["status"], other[0], other[1]["status"]) == (200, "received", 200, "received")
    assert bad[0] == 400 and "body is not valid JSON" in bad[1]["error"]["message"]
    rows = inbox_rows(engine)
    assert len(rows) == 4 and {good[1]["delivery"], other[1]["delivery"]} <= {row.id for row in rows}
    (failed,) = [row for row in rows if row.status == "failed"]
    assert "body is not valid JSON" in failed.error


def test_a_row_that_fails_the_batch_s_transaction_fails_alone(served, engine, monkeypatch):
    poison = order_delivery(2)
    receive_many = inbox.receive_many

    def refusing(conn, deliveries):
        if any(body == poison[0] for _, _, _, body, _ in deliveries):
            raise DataError("INSERT INTO inbox ...", {}, ValueError("value too long for type character varying"))
        return receive_many(conn, deliveries)

    monkeypatch.setattr(inbox, "receive_many", refusing)
    _, good, bad, other = post_in_one_batch(served, monkeypatch, [order_delivery(1), poison, order_delivery(3)])
    assert (good[0], good[1]["status"], other[0], other[1]["status"]) == (200, "received", 200, "received")
    assert (bad[0], bad[1]["error"]["code"]) == (503, "unavailable")
    stored = {row.id for row in inbox_rows(engine)}
    assert len(stored) == 3 and {good[1]["delivery"], other[1]["delivery"]} <= stored


def test_a_database_outage_is_503_for_every_delivery_waiting(served, engine, monkeypatch):
    receive_many = inbox.receive_many

    def down(conn, deliveries):
        raise OperationalError("INSERT INTO inbox ...", {}, Exception("database is locked"))

    monkeypatch.setattr(inbox, "receive_many", down)
    deliveries = [order_delivery(n) for n in range(3)]
    answers = post_in_one_batch(served, monkeypatch, deliveries)
    assert [(status, answer["error"]["code"]) for status, answer in answers] == [(503, "unavailable")] * 4
    assert inbox_rows(engine) == []
    monkeypatch.setattr(inbox, "receive_many", receive_many)  # back up: the resent deliveries are stored
    for body, headers in deliveries:
        assert post(f"{served.url}/webhooks/shopify", body, headers)[0] == 200
