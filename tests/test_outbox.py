"""The outbox: effects in the shops written with the ledger change, delivered
afterwards through the real clients to loopback shops, with retries.

The WooCommerce side runs against tests/fakes/woocommerce.py (the real
``woocommerce`` client, OAuth-signed), the Shopify side against
tests/fakes/shopify.py (the real ``ShopifyAPI`` client, GraphQL)."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from engine import outbox as ob
from engine.customers import customer_summary
from engine.db import utcnow
from engine.db.models import outbox, rewards
from tests.conftest import load_contract
from tests.fakes.woocommerce import FakeWoo
from tests.serving import free_port

WOO_ORDER = "woocommerce/webhooks/order_updated_with_refunds.body.json"  # order 723, customer 26, 39.00


def _closed_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture
def woo(monkeypatch):
    with FakeWoo() as fake:
        fake.customers[26] = {"id": 26, "email": "joao.silva@example.com", "meta_data": []}
        monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", fake.key)
        monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", fake.secret)
        yield fake


def _tables(woo_url: str, **extra) -> dict:
    return {
        "engine": {"currency": "EUR"},
        "rules": {"points": {"per_unit": 10}},
        "rewards": {"five-off": {"kind": "fixed_amount", "cost": 100, "value": "5.00"}},
        "connectors": {"woocommerce": {"url": woo_url}},
        **extra,
    }


def _woo_order(**changes) -> bytes:
    payload = copy.deepcopy(load_contract(WOO_ORDER))
    payload.update(changes)
    return json.dumps(payload).encode()


def _meta(fake, customer_id=26) -> dict:
    return {m["key"]: m["value"] for m in fake.customers[customer_id].get("meta_data", [])}


def _rows(engine, **where):
    query = select(outbox).order_by(outbox.c.id)
    for name, value in where.items():
        query = query.where(outbox.c[name] == value)
    with engine.db.connect() as conn:
        return conn.execute(query).all()


def test_an_order_writes_a_sync_row_in_its_own_transaction_and_the_balance_reaches_the_shop(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    assert engine.ingest("woocommerce", "order.updated", _woo_order()).status == "applied"
    (row,) = _rows(engine)
    assert (row.kind, row.channel, row.subject, row.status) == ("customer.sync", "woocommerce", "26", "pending")

    report = ob.Deliverer(engine).deliver_due()
    assert (report.delivered, report.failed) == (1, 0)
    with engine.db.connect() as conn:
        points = engine.ledger.balances(conn, engine.identity.find(conn, "woocommerce:26"))["points"]
    meta = _meta(woo)
    assert int(meta["regulars_points"]) == points > 0
    assert meta["regulars_card_code"]
    (row,) = _rows(engine)
    assert row.status == "done" and row.attempts == 1
    put = [r for r in woo.requests if r["method"] == "PUT"]
    assert [r["path"] for r in put] == ["/wp-json/wc/v3/customers/26"]


def test_without_credentials_nothing_is_written_to_the_outbox(make_engine, monkeypatch):
    monkeypatch.delenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", raising=False)
    monkeypatch.delenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", raising=False)
    engine = make_engine(_tables("https://shop.example"))
    assert engine.ingest("woocommerce", "order.updated", _woo_order()).status == "applied"
    assert _rows(engine) == []


def test_a_shop_that_answers_500_then_429_loses_nothing(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    engine.ingest("woocommerce", "order.updated", _woo_order())
    deliverer = ob.Deliverer(engine)

    woo.fail_next(500)
    report = deliverer.deliver_due()
    assert (report.delivered, report.retrying) == (0, 1)
    (row,) = _rows(engine)
    assert row.status == "pending" and row.attempts == 1 and "500" in row.last_error
    assert row.due_at is not None
    assert deliverer.deliver_due().delivered == 0  # not due yet: it backs off

    woo.fail_next(429, retry_after=7200)
    later = utcnow() + timedelta(hours=1)
    assert deliverer.deliver_due(now=later).retrying == 1
    (row,) = _rows(engine)
    assert row.attempts == 2
    assert deliverer.deliver_due(now=later + timedelta(minutes=90)).delivered == 0  # Retry-After is honoured

    assert deliverer.deliver_due(now=later + timedelta(hours=3)).delivered == 1
    assert int(_meta(woo)["regulars_points"]) > 0
    assert _rows(engine)[0].status == "done"


def test_a_shop_that_is_down_gets_the_effect_when_it_is_back(make_engine, woo):
    down = make_engine(_tables(f"http://127.0.0.1:{_closed_port()}"))
    down.ingest("woocommerce", "order.updated", _woo_order())
    assert ob.Deliverer(down).deliver_due().retrying == 1
    (row,) = _rows(down)
    assert row.status == "pending" and "connect" in row.last_error.lower()

    back = make_engine(_tables(woo.url))  # the same database, the shop reachable again
    assert ob.Deliverer(back).deliver_due(now=utcnow() + timedelta(hours=2)).delivered == 1
    assert int(_meta(woo)["regulars_points"]) > 0


def test_a_change_during_a_delivery_leaves_the_row_pending_for_it(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    engine.ingest("woocommerce", "order.updated", _woo_order())
    deliverer = ob.Deliverer(engine)
    (claimed,) = deliverer.claim(10, utcnow())
    # A newer order lands between the claim and the delivery's end.
    newer = _woo_order(id=724, date_modified_gmt="2017-03-22T10:00:00", line_items=load_contract(WOO_ORDER)["line_items"])
    assert engine.ingest("woocommerce", "order.updated", newer).status == "applied"
    deliverer._done(claimed, "sent an older balance")
    (row,) = _rows(engine)
    assert row.status == "pending" and row.version == claimed.version + 1
    assert deliverer.deliver_due().delivered == 1
    assert _rows(engine)[0].status == "done"


def test_a_refusal_is_kept_as_failed_with_the_shop_s_words_and_can_be_retried(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    engine.ingest("woocommerce", "order.updated", _woo_order())
    del woo.customers[26]  # the shop no longer knows the customer: 404
    report = ob.Deliverer(engine).deliver_due()
    assert report.failed == 1
    (row,) = _rows(engine)
    assert row.status == "failed" and "woocommerce_rest_invalid_id" in row.last_error

    woo.customers[26] = {"id": 26, "meta_data": []}
    with engine.db.begin() as conn:
        assert ob.retry(conn) == 1
    assert ob.Deliverer(engine).deliver_due().delivered == 1


def test_a_redeemed_reward_becomes_a_single_use_coupon_and_its_use_in_an_order_spends_it(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    engine.ingest("woocommerce", "order.updated", _woo_order())  # 39.00 x 10 = 390 points
    issued = engine.redeem("joao.silva@example.com", "five-off", channel="woocommerce")
    coupon_rows = _rows(engine, kind="reward.coupon")
    assert [(r.channel, r.subject) for r in coupon_rows] == [("woocommerce", issued.code)]

    assert ob.Deliverer(engine).deliver_due().failed == 0
    coupon = woo.coupons[issued.code.lower()]
    assert coupon["usage_limit"] == 1
    assert coupon["email_restrictions"] == ["joao.silva@example.com"]
    assert coupon["discount_type"] == "fixed_cart" and coupon["amount"] == "5.00"
    assert _rows(engine, kind="reward.coupon")[0].result == str(coupon["id"])

    # The customer spends it in a later order (WooCommerce lower-cases the code).
    spent = _woo_order(id=900, date_modified_gmt="2017-04-01T10:00:00",
                       coupon_lines=[{"id": 1, "code": issued.code.lower(), "discount": "5.00",
                                      "discount_tax": "0.00", "meta_data": []}])
    assert engine.ingest("woocommerce", "order.updated", spent).status == "applied"
    with engine.db.connect() as conn:
        assert conn.execute(select(rewards.c.status).where(rewards.c.code == issued.code)).scalar_one() == "used"


def test_a_coupon_is_created_once_however_often_it_is_delivered(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    engine.ingest("woocommerce", "order.updated", _woo_order())
    issued = engine.redeem("joao.silva@example.com", "five-off", channel="woocommerce")
    deliverer = ob.Deliverer(engine)
    deliverer.deliver_due()
    # A deliverer that died before recording its success: the row is due again.
    with engine.db.begin() as conn:
        conn.execute(update(outbox).values(status="pending", due_at=utcnow()))
    assert deliverer.deliver_due().failed == 0
    assert [c for c in woo.coupons if c == issued.code.lower()] == [issued.code.lower()]
    assert len([r for r in woo.requests if r["method"] == "POST" and r["path"].endswith("/coupons")]) == 2


def test_a_reward_spent_before_its_coupon_was_made_makes_no_coupon(make_engine, woo):
    engine = make_engine(_tables(woo.url))
    engine.ingest("woocommerce", "order.updated", _woo_order())
    issued = engine.redeem("joao.silva@example.com", "five-off", channel="woocommerce")
    with engine.db.begin() as conn:
        engine.rewards.mark_used(conn, None, [issued.code], "pos", utcnow())
    ob.Deliverer(engine).deliver_due()
    assert woo.coupons == {}
    (row,) = _rows(engine, kind="reward.coupon")
    assert row.status == "done" and "closed" in row.result


def test_backoff_grows_and_honours_retry_after():
    assert ob.backoff(1) < ob.backoff(4) < ob.MAX_DELAY * 1.3
    assert ob.backoff(30) <= ob.MAX_DELAY * 1.2
    assert ob.backoff(1, retry_after=500) >= 500


def test_a_shop_that_stays_down_is_retried_for_about_a_day(monkeypatch):
    """The README promises retries "for about a day": the waits between the
    MAX_ATTEMPTS tries (jitter aside) add up to a day, not half of one."""
    monkeypatch.setattr(ob.random, "uniform", lambda low, high: 1.0)
    waited = sum(ob.backoff(attempts) for attempts in range(1, ob.MAX_ATTEMPTS))
    assert timedelta(hours=22) <= timedelta(seconds=waited) <= timedelta(hours=26), timedelta(seconds=waited)


# -- Shopify -------------------------------------------------------------------------

SHOPIFY_ORDER = "shopify/webhooks/orders_paid.docs-2026-04.json"
SHOPIFY_CUSTOMER = "115310627314723954"  # the contract order's customer (its gid's exact id)


@pytest.fixture
def shopify(monkeypatch):
    from tests.fakes.shopify import FakeShopify

    with FakeShopify() as fake:
        monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", fake.token)
        yield fake


def _shopify_tables(fake, woo_url: str | None = None) -> dict:
    connectors = {"shopify": {"shop": fake.shop, "api_url": fake.base_url}}
    if woo_url:
        connectors["woocommerce"] = {"url": woo_url}
    return {
        "engine": {"currency": "EUR"},
        "rules": {"points": {"per_unit": 10},
                  "stamps": {"kava": {"required": 1, "per": "order", "reward": "free-bag"}}},
        "rewards": {"five-off": {"kind": "fixed_amount", "cost": 100, "value": "5.00", "expires_days": 30},
                    "free-bag": {"kind": "free_product", "sku": "KAVA-1"}},
        "connectors": connectors,
    }


def _shopify_order(order_id: int = 820982911946154508, **changes) -> bytes:
    body = copy.deepcopy(load_contract(SHOPIFY_ORDER))
    body.update(id=order_id, financial_status="paid", cancelled_at=None, cancel_reason=None, test=False, **changes)
    body["customer"] = {**body["customer"], "id": int(SHOPIFY_CUSTOMER)}
    return json.dumps(body).encode()


def test_shopify_metafields_get_the_balance_through_metafieldsset(make_engine, shopify):
    engine = make_engine(_shopify_tables(shopify))
    assert engine.ingest("shopify", "orders/paid", _shopify_order()).status == "applied"
    assert ob.Deliverer(engine).deliver_due().failed == 0
    assert _rows(engine, kind="customer.sync")[0].status == "done"
    fields = shopify.metafields[SHOPIFY_CUSTOMER]
    with engine.db.connect() as conn:
        customer = engine.identity.find(conn, f"shopify:{SHOPIFY_CUSTOMER}")
        points = engine.ledger.balances(conn, customer)["points"]
    assert fields["points"] == ("number_integer", str(points))
    assert json.loads(fields["stamps"][1]) == {"kava": 0}  # the one-stamp card filled and reset
    assert "tier" not in fields  # no tier: no blank metafield
    sent = [r for r in shopify.requests if r.json and "metafieldsSet" in r.json.get("query", "")]
    assert sent and all(r.headers.get("x-shopify-access-token") == shopify.token for r in sent)


def test_the_shops_are_told_when_points_expire_next_and_told_again_when_that_changes(make_engine, shopify, woo):
    tables = _shopify_tables(shopify, woo.url)
    tables["rules"] = {**tables["rules"], "expiry": {"months": 12}}
    engine = make_engine(tables)
    engine.ingest("shopify", "orders/paid", _shopify_order())
    engine.ingest("woocommerce", "order.updated", _woo_order())
    assert ob.Deliverer(engine).deliver_due().failed == 0
    from engine.customers import next_expiry

    with engine.db.connect() as conn:
        first = {key: next_expiry(engine, conn, engine.identity.find(conn, key))
                 for key in (f"shopify:{SHOPIFY_CUSTOMER}", "woocommerce:26")}
    assert all(expiry is not None and expiry["points"] > 0 for expiry in first.values())
    kind, text = shopify.metafields[SHOPIFY_CUSTOMER]["points_expire_next"]
    assert (kind, json.loads(text)) == ("json", first[f"shopify:{SHOPIFY_CUSTOMER}"])
    assert json.loads(_meta(woo)["regulars_points_expire_next"]) == first["woocommerce:26"]
    # every point spent: nothing left to expire, and the values go
    for key in first:
        engine.adjust(key, -customer_summary(engine, key)["points"], "closing the account", "cli:test")
    assert ob.Deliverer(engine).deliver_due(now=utcnow() + timedelta(seconds=5)).failed == 0
    assert "points_expire_next" not in shopify.metafields[SHOPIFY_CUSTOMER]
    assert _meta(woo)["regulars_points_expire_next"] == ""


def test_a_full_card_s_reward_becomes_a_discount_for_that_customer_only(make_engine, shopify):
    engine = make_engine(_shopify_tables(shopify))
    engine.ingest("shopify", "orders/paid", _shopify_order())
    with engine.db.connect() as conn:
        (reward,) = conn.execute(select(rewards)).all()
    assert ob.Deliverer(engine).deliver_due().failed == 0
    given = shopify.discounts[reward.code]
    assert given["usageLimit"] == 1 and given["appliesOncePerCustomer"] is True
    assert given["context"]["customers"]["add"] == [f"gid://shopify/Customer/{SHOPIFY_CUSTOMER}"]
    row = _rows(engine, kind="reward.coupon")[0]
    assert row.status == "done" and row.result.startswith("gid://shopify/DiscountCodeNode/")


def test_shopify_throttling_and_errors_are_retried_and_user_errors_kept(make_engine, shopify):
    engine = make_engine(_shopify_tables(shopify))
    engine.ingest("shopify", "orders/paid", _shopify_order())
    deliverer = ob.Deliverer(engine)
    shopify.fail_next(429, count=2, retry_after=2)
    report = deliverer.deliver_due()
    assert report.delivered == 0 and report.retrying == 2  # the sync and the coupon
    assert all(r.status == "pending" and r.attempts == 1 for r in _rows(engine))
    assert deliverer.deliver_due(now=utcnow() + timedelta(hours=1)).delivered == 2
    assert shopify.metafields[SHOPIFY_CUSTOMER]["points"][0] == "number_integer"


def test_a_reward_spent_in_one_shop_is_removed_from_the_other(make_engine, shopify, woo):
    engine = make_engine(_shopify_tables(shopify, woo.url))
    # The same person in both shops: a Shopify order and a WooCommerce one, by email.
    engine.ingest("shopify", "orders/paid", _shopify_order())
    woo_body = json.loads(_woo_order())
    woo_body["billing"]["email"] = json.loads(_shopify_order())["email"]
    outcome = engine.ingest("woocommerce", "order.updated", json.dumps(woo_body).encode())
    assert outcome.status == "applied", outcome
    with engine.db.connect() as conn:
        codes = [r.code for r in conn.execute(select(rewards).order_by(rewards.c.id))]
    first = codes[1]  # issued once the customer was known in both shops
    ob.Deliverer(engine).deliver_due()
    assert first in shopify.discounts and first.lower() in woo.coupons

    spent = _woo_order(id=901, date_modified_gmt="2017-05-01T10:00:00",
                       billing={**woo_body["billing"]},
                       coupon_lines=[{"id": 1, "code": first.lower(), "discount": "1.00", "discount_tax": "0",
                                      "meta_data": []}])
    assert engine.ingest("woocommerce", "order.updated", spent).status == "applied"
    (retire,) = _rows(engine, kind="reward.retire")
    assert (retire.channel, retire.subject) == ("shopify", first)
    ob.Deliverer(engine).deliver_due()
    assert first not in shopify.discounts  # gone from Shopify
    assert first.lower() in woo.coupons  # used up where it was spent


def test_a_reward_kept_for_some_channels_becomes_a_coupon_only_there(make_engine, shopify, woo):
    """The full card's reward lists ``channels = ["shopify"]``: issued without a
    channel to a customer both shops know, it becomes a coupon in Shopify only."""
    tables = _shopify_tables(shopify, woo.url)
    tables["rewards"]["free-bag"]["channels"] = ["shopify"]
    engine = make_engine(tables)
    engine.ingest("shopify", "orders/paid", _shopify_order())
    woo_body = json.loads(_woo_order())
    woo_body["billing"]["email"] = json.loads(_shopify_order())["email"]
    assert engine.ingest("woocommerce", "order.updated", json.dumps(woo_body).encode()).status == "applied"
    with engine.db.connect() as conn:
        issued = [(r.code, r.channel) for r in conn.execute(select(rewards).order_by(rewards.c.id))]
    assert len(issued) == 2 and all(channel is None for _, channel in issued)
    second = issued[1][0]  # issued once the customer was known in both shops
    assert [(r.channel, r.subject) for r in _rows(engine, kind="reward.coupon") if r.subject == second] == [
        ("shopify", second)]
    assert ob.Deliverer(engine).deliver_due().failed == 0
    assert second in shopify.discounts and woo.coupons == {}
