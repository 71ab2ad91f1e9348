"""The reward codes a till sends with a sale, over real HTTP: the answer says,
for each code, whether this sale used it and if not why, so the cashier never
gives a discount for a reward the engine did not take; the same for the sale
resent, live or in an offline batch."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from engine.customers import customer_summary
from tests.test_api import TABLES, call, enrol, sale, served, with_till

CODES_TABLES = {
    **TABLES,
    "rewards": {**TABLES["rewards"],
                "web-ten": {"kind": "percentage", "cost": 30, "value": 10, "channels": ["shopify"]},
                "week-off": {"kind": "fixed_amount", "cost": 50, "value": "5.00", "expires_days": 7}},
    "connectors": {"pos": {}, "shopify": {"shop": "kavarna.myshopify.com"}},  # (web-ten is spent there)
}


@pytest.fixture
def till(make_engine, monkeypatch):
    """(engine, base URL, a terminal's key, Jana's card code) with the app
    served on loopback; Jana has 1,000 points to redeem rewards with."""
    engine, key = with_till(make_engine, monkeypatch, CODES_TABLES)
    with served(engine) as base:
        card = enrol(base, key)[1]["customer"]["card_code"]
        status, _ = call(f"{base}/api/v1/sales", "POST", sale("old", card, "250.00"), key, "old")
        assert status == 200
        yield engine, base, key, card


def spending(sale_id: str, card: str, codes: list[str]) -> dict:
    return {**sale(sale_id, card), "reward_codes": codes}


def unused(engine, card: str) -> list[str]:
    return [r["code"] for r in customer_summary(engine, card)["rewards"]]


def test_a_sale_says_which_codes_it_used_and_that_an_unknown_one_was_not(till):
    engine, base, key, card = till
    five = engine.redeem(card, "five-off", channel="pos").code
    status, answer = call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five.lower(), "NOSUCHCODE"]), key, "s1")
    assert status == 200 and answer["status"] == "applied"
    assert answer["codes"] == [{"code": five.lower(), "used": True, "reason": None},  # as the till sent it
                               {"code": "NOSUCHCODE", "used": False, "reason": "unknown"}]
    assert unused(engine, card) == []
    status, answer = call(f"{base}/api/v1/sales", "POST", sale("s2", card), key, "s2")
    assert status == 200 and answer["codes"] == []


def test_a_code_another_sale_used_is_not_used_again(till):
    engine, base, key, card = till
    five = engine.redeem(card, "five-off", channel="pos").code
    assert call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five]), key, "s1")[1]["codes"][0]["used"]
    points = customer_summary(engine, card)["points"]
    status, answer = call(f"{base}/api/v1/sales", "POST", spending("s2", card, [five]), key, "s2")
    assert status == 200 and answer["status"] == "applied"
    assert answer["codes"] == [{"code": five, "used": False, "reason": "already_used"}]
    assert answer["customer"]["points"] == points + 25  # the sale itself counts as ever


def test_a_code_kept_for_another_channel_is_not_used_at_the_till(till):
    engine, base, key, card = till
    web = engine.redeem(card, "web-ten").code  # channels = ["shopify"]
    five = engine.redeem(card, "five-off", channel="pos").code
    status, answer = call(f"{base}/api/v1/sales", "POST", spending("s1", card, [web, five]), key, "s1")
    assert status == 200
    assert answer["codes"] == [{"code": web, "used": False, "reason": "not_spendable_here"},
                               {"code": five, "used": True, "reason": None}]
    assert unused(engine, card) == [web]  # still the customer's, for the web shop


def test_another_customer_s_code_and_an_expired_one_are_not_used(till):
    engine, base, key, card = till
    petr = enrol(base, key, "petr@example.cz", "enrol-petr")[1]["customer"]["card_code"]
    call(f"{base}/api/v1/sales", "POST", sale("petr-old", petr, "50.00"), key, "petr-old")
    theirs = engine.redeem(petr, "five-off", channel="pos").code
    week = engine.redeem(card, "week-off", channel="pos").code
    with engine.db.begin() as conn:
        engine.rewards.expire(conn, datetime.now(UTC) + timedelta(days=8))
    status, answer = call(f"{base}/api/v1/sales", "POST", spending("s1", card, [theirs, week]), key, "s1")
    assert status == 200
    assert answer["codes"] == [{"code": theirs, "used": False, "reason": "not_this_customers"},
                               {"code": week, "used": False, "reason": "expired"}]
    assert unused(engine, petr) == [theirs]


def test_a_resent_sale_still_says_it_used_its_code(till):
    """Resent with the same Idempotency-Key (the first answer, replayed), under
    a new key (a duplicate delivery) or in an offline batch: the code was used
    by this sale, not ``already_used``."""
    engine, base, key, card = till
    five = engine.redeem(card, "five-off", channel="pos").code
    used = [{"code": five, "used": True, "reason": None}]
    first = call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five]), key, "s1")
    assert first[0] == 200 and first[1]["codes"] == used
    assert call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five]), key, "s1") == first
    status, again = call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five]), key, "s1-lost-key")
    assert status == 200 and again["status"] == "duplicate" and again["codes"] == used
    line = {"topic": "sale", "key": "s1", **spending("s1", card, [five])}
    status, batch = call(f"{base}/api/v1/batches", "POST", raw=json.dumps(line).encode(), key=key, idem="b1")
    assert status == 200
    assert [(r["status"], r["codes"]) for r in batch["results"]] == [("duplicate", used)]


def test_an_offline_batch_says_what_became_of_each_sale_s_codes(till):
    engine, base, key, card = till
    five = engine.redeem(card, "five-off", channel="pos").code
    at = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    later = (at + timedelta(hours=1)).isoformat()
    lines = [
        {"topic": "sale", "key": "b", **spending("b", card, [five]), "occurred_at": later},
        {"topic": "sale", "key": "a", **spending("a", card, [five]), "occurred_at": at.isoformat()},
        {"topic": "visit", "key": "v", "id": "v", "customer": {"card_code": card}, "occurred_at": at.isoformat()},
    ]
    body = b"\n".join(json.dumps(line).encode() for line in lines)
    status, answer = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="b1")
    assert status == 200
    results = answer["results"]
    assert [r["status"] for r in results] == ["applied"] * 3
    # a, the earlier sale, spent the code; b, applied after it, could not
    assert results[1]["codes"] == [{"code": five, "used": True, "reason": None}]
    assert results[0]["codes"] == [{"code": five, "used": False, "reason": "already_used"}]
    assert "codes" not in results[2]




def test_a_sale_kept_but_not_applied_has_not_used_its_code_yet(make_engine, monkeypatch):
    """A plugin failed on the sale (503, kept to be replayed): sent again, it
    is answered 503 again (not applied yet, and its code still the
    customer's); once replayed, the sale sent again says it used the code."""
    from engine import inbox
    from engine.hookspecs import hookimpl

    class BrokenOrders:
        broken = True

        @hookimpl
        def regulars_order_awards(self, order, customer):
            if BrokenOrders.broken and order.external_id.endswith(":s1"):
                raise ValueError("order hook broke")
            return None

    engine, key = with_till(make_engine, monkeypatch, CODES_TABLES, (("broken-orders", BrokenOrders()),))
    with served(engine) as base:
        card = enrol(base, key)[1]["customer"]["card_code"]
        call(f"{base}/api/v1/sales", "POST", sale("old", card, "250.00"), key, "old")
        five = engine.redeem(card, "five-off", channel="pos").code
        assert call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five]), key, "s1")[0] == 503
        status, answer = call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five]), key, "s1-again")
        assert (status, answer["error"]["code"], answer["error"]["plugin"]) == (503, "plugin_failed", "broken-orders")
        assert unused(engine, card) == [five]
        BrokenOrders.broken = False
        with engine.db.connect() as conn:
            [failed] = [row for row in inbox.listing(conn) if row.status == "failed"]
        assert engine.replay(failed.id).status == "applied"
        status, answer = call(f"{base}/api/v1/sales", "POST", spending("s1", card, [five]), key, "s1-replayed")
        assert status == 200 and answer["status"] == "duplicate"
        assert answer["codes"] == [{"code": five, "used": True, "reason": None}]
