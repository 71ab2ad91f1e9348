"""The till's and the customer's API over real HTTP on loopback: terminal keys,
idempotent writes, sales, visits, voids, redemptions, offline batches, card
links, QR codes, and the OpenAPI document."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from engine import terminals
from engine.customers import customer_summary
from engine.db.models import customers
from engine.links import make_link, revoke
from engine.pipeline import EventRefused
from engine.web import create_app
from tests.serving import serve_app

TABLES = {
    "engine": {"currency": "EUR"},
    "rules": {"points": {"per_unit": 1},
              "stamps": {"coffee": {"required": 3, "reward": "free-coffee"}},  # orders and visits
              "subscriptions": {"vip": {"multiplier": 2.0, "start_points": 50, "renewal_points": 100}}},
    "rewards": {"five-off": {"kind": "fixed_amount", "cost": 50, "value": "5.00"},
                "free-coffee": {"kind": "free_product", "sku": "COFFEE"}},
    "connectors": {"pos": {}},
}
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def served(engine):
    """The engine's app on a free loopback port; a context yielding its base URL."""
    return serve_app(create_app(engine, secrets={}))


def with_till(make_engine, monkeypatch, tables: dict, extra_plugins: tuple = ()):
    """(engine, a terminal's key): an engine with these tables and plugins,
    its schema made, and one terminal."""
    monkeypatch.setenv("REGULARS_SECRET_KEY", "api test key")
    engine = make_engine(tables, extra_plugins=extra_plugins)
    engine.ensure_schema()
    return engine, terminals.add_terminal(engine.db, "Main Street", "till 1")[1]


@pytest.fixture
def api(make_engine, monkeypatch):
    """(engine, base URL, a terminal's key) with the app served on loopback."""
    engine, key = with_till(make_engine, monkeypatch, TABLES)
    with served(engine) as base:
        yield engine, base, key


def call(url: str, method: str = "GET", body=None, key: str | None = None, idem: str | None = None,
         raw: bytes | None = None, kind: str = "application/json") -> tuple[int, object]:
    headers = {"content-type": kind}
    if key:
        headers["authorization"] = f"Bearer {key}"
    if idem:
        headers["idempotency-key"] = idem
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
            kind = response.headers.get("content-type", "")
            return response.status, json.loads(payload) if "json" in kind else payload
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def enrol(base, key, email="jana@example.cz", idem="enrol-1"):
    return call(f"{base}/api/v1/customers", "POST", {"email": email, "first_name": "Jana", "last_name": "Nováková"},
                key, idem)


def sale(sale_id: str, card: str, price: str = "12.50", at: datetime = T0) -> dict:
    return {"id": sale_id, "occurred_at": at.isoformat(), "customer": {"card_code": card},
            "lines": [{"sku": "COFFEE", "name": "Flat white", "quantity": 2, "unit_price": price}]}


def test_a_terminal_enrols_sells_and_sees_the_balance_at_once(api):
    engine, base, key = api
    status, answer = enrol(base, key)
    assert status == 201 and answer["status"] == "applied"
    card = answer["customer"]["card_code"]
    assert answer["customer"]["last_name"] == "Nováková"

    status, answer = call(f"{base}/api/v1/sales", "POST", sale("s1", card), key, "sale-s1")
    assert status == 200 and answer["customer"]["points"] == 25
    status, found = call(f"{base}/api/v1/customers?key=JANA@example.cz", key=key)
    assert status == 200 and found["points"] == 25 and found["card_code"] == card


def test_a_birthday_given_at_enrolment_doubles_the_points_of_a_sale_in_that_month(make_engine, monkeypatch):
    tables = {**TABLES, "plugins": {"birthday-bonus": {"multiplier": 2}}}
    engine, key = with_till(make_engine, monkeypatch, tables)
    with served(engine) as base:
        body = {"email": "jana@example.cz", "birthday": "1990-11-03"}
        status, answer = call(f"{base}/api/v1/customers", "POST", body, key, "enrol-b")
        assert status == 201, answer
        card = answer["customer"]["card_code"]
        status, answer = call(f"{base}/api/v1/sales", "POST", sale("s1", card), key, "sale-b1")  # in November
        assert status == 200 and answer["customer"]["points"] == 50
        assert customer_summary(engine, card)["points"] == 50
        # a later birthday changes nothing; an impossible one is refused
        assert call(f"{base}/api/v1/customers", "POST", {**body, "birthday": "1991-05-01"}, key, "enrol-c")[0] in (200, 201)
        with engine.db.connect() as conn:
            born = conn.execute(select(customers.c.birthday)).scalar_one()
        assert born.date().isoformat() == "1990-11-03"
        for wrong in ("1990-13-01", "1850-01-01", "2999-01-01"):
            status, answer = call(f"{base}/api/v1/customers", "POST", {**body, "birthday": wrong}, key, f"e-{wrong}")
            assert status == 422 and "birthday" in answer["error"]["message"], answer


def test_a_known_customer_s_birthday_is_added_by_their_card_code_and_an_unknown_code_is_refused(make_engine,
                                                                                               monkeypatch):
    """The till asks a customer for their birthday when it brings a gift
    (``birthday_wanted``) and sends it with their card code; a card code
    nobody has makes nobody."""
    tables = {**TABLES, "plugins": {"birthday-bonus": {"multiplier": 1, "gift": 50}}}
    engine, key = with_till(make_engine, monkeypatch, tables)
    with served(engine) as base:
        card = enrol(base, key)[1]["customer"]["card_code"]
        assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["birthday_wanted"] is True
        status, answer = call(f"{base}/api/v1/customers", "POST", {"card_code": card, "birthday": "1990-11-03"},
                              key, "birthday-1")
        assert status in (200, 201) and answer["customer"]["birthday_wanted"] is False, answer
        assert customer_summary(engine, card)["birthday"] == "1990-11-03"
        status, answer = call(f"{base}/api/v1/customers", "POST", {"card_code": "NOBODY2345", "birthday": "1990-11-03"},
                              key, "birthday-2")
        assert status == 404 and answer["error"]["code"] == "no_customer"
        with engine.db.connect() as conn:
            assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 1
        status, answer = call(f"{base}/api/v1/customers", "POST", {"birthday": "1990-11-03"}, key, "birthday-3")
        assert status == 422 and "card code" in answer["error"]["message"]


def test_without_a_birthday_gift_or_bonus_no_birthday_is_wanted(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["birthday_wanted"] is False


def test_a_retried_write_gets_the_first_answer_and_a_reused_key_is_refused(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    first = call(f"{base}/api/v1/sales", "POST", sale("s1", card), key, "k1")
    again = call(f"{base}/api/v1/sales", "POST", sale("s1", card), key, "k1")
    assert first == again and first[1]["customer"]["points"] == 25
    assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"] == 25
    status, answer = call(f"{base}/api/v1/sales", "POST", sale("s2", card), key, "k1")
    assert status == 422 and answer["error"]["code"] == "idempotency_key_reused"
    status, answer = call(f"{base}/api/v1/sales", "POST", sale("s3", card), key)
    assert status == 400 and answer["error"]["code"] == "idempotency_key"
    # The same sale under a new key (a till that lost its key) is still counted once.
    status, answer = call(f"{base}/api/v1/sales", "POST", sale("s1", card), key, "k9")
    assert status == 200 and answer["status"] == "duplicate" and answer["customer"]["points"] == 25


def test_a_sale_or_visit_without_its_time_sent_again_under_a_new_key_is_a_duplicate_not_a_conflict(api):
    """A till that gives no ``occurred_at`` (the engine's clock stands in) and
    resends after a lost answer, under a new key: counted once, with the time
    it was first received; a changed sale under the same id is still refused."""
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    untimed = {k: v for k, v in sale("s1", card).items() if k != "occurred_at"}
    assert call(f"{base}/api/v1/sales", "POST", untimed, key, "k1")[0] == 200
    status, answer = call(f"{base}/api/v1/sales", "POST", untimed, key, "k2")
    assert (status, answer["status"], answer["customer"]["points"]) == (200, "duplicate", 25)
    status, answer = call(f"{base}/api/v1/sales", "POST", {**untimed, "lines": untimed["lines"] * 2}, key, "k3")
    assert status == 422 and "already used" in answer["error"]["message"]
    visit = {"id": "v1", "customer": {"card_code": card}}
    assert call(f"{base}/api/v1/visits", "POST", visit, key, "v-1")[1]["status"] == "applied"
    assert call(f"{base}/api/v1/visits", "POST", visit, key, "v-2")[1]["status"] == "duplicate"


def test_visits_fill_a_stamp_card_and_a_void_takes_a_sale_s_points_back(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    for n in range(3):
        status, answer = call(f"{base}/api/v1/visits", "POST",
                              {"id": f"v{n}", "customer": {"card_code": card}}, key, f"v{n}")
        assert status == 200
    assert answer["customer"]["stamps"] == {"coffee": 0}
    assert [r["reward"] for r in answer["customer"]["rewards"]] == ["free-coffee"]
    answer = call(f"{base}/api/v1/sales", "POST", sale("s1", card), key, "s1")[1]
    assert (answer["customer"]["points"], answer["customer"]["stamps"]) == (25, {"coffee": 1})
    status, answer = call(f"{base}/api/v1/sales/s1/void", "POST", {"reason": "wrong card"}, key, "void-s1")
    assert status == 200 and (answer["customer"]["points"], answer["customer"]["stamps"]) == (0, {"coffee": 0})
    status, answer = call(f"{base}/api/v1/sales/nope/void", "POST", {}, key, "void-nope")
    assert status == 404


def test_redeeming_at_the_counter_debits_the_points_or_says_why_not(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    call(f"{base}/api/v1/sales", "POST", sale("s1", card, "30.00"), key, "s1")  # 60 points
    body = {"customer": {"card_code": card}, "reward": "five-off"}
    status, answer = call(f"{base}/api/v1/redemptions", "POST", body, key, "r1")
    assert status == 201 and answer["customer"]["points"] == 10 and answer["reward"]["code"]
    assert answer["reward"]["spendable_in"] == ["pos"] == answer["customer"]["rewards"][0]["spendable_in"]
    assert call(f"{base}/api/v1/redemptions", "POST", body, key, "r1")[1] == answer  # a retry
    status, answer = call(f"{base}/api/v1/redemptions", "POST", body, key, "r2")
    assert status == 409 and "costs 50 points" in answer["error"]["message"]
    assert (answer["error"]["code"], answer["error"]["reason"], answer["error"]["values"]) == (
        "refused", "insufficient", {"cost": 50, "balance": 10})


def test_an_offline_batch_is_applied_in_time_order_and_resending_it_changes_nothing(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    lines = [
        {"topic": "void", "key": "void-a", "sale_id": "a", "occurred_at": (T0 + timedelta(hours=2)).isoformat()},
        {"topic": "sale", "key": "a", **sale("a", card, "10.00", T0)},
        {"topic": "sale", "key": "b", **sale("b", card, "5.00", T0 + timedelta(hours=1))},
        {"topic": "visit", "key": "v", "id": "v", "customer": {"card_code": card},
         "occurred_at": (T0 + timedelta(hours=3)).isoformat()},
    ]
    body = b"\n".join(json.dumps(line).encode() for line in lines) + b"\n{\"topic\": \"sale\", \"id\"\n"
    status, answer = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="batch-1")
    assert status == 200
    results = answer["results"]
    assert [r["status"] for r in results] == ["applied", "applied", "applied", "applied", "refused"]
    assert "truncated" in results[4]["reason"]
    points = call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"]
    assert points == 10  # sale a voided (after it, though sent before), sale b kept

    assert call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="batch-1")[1] == answer  # a retry
    status, again = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="batch-1-resent")
    assert [r["status"] for r in again["results"]][:4] == ["duplicate"] * 4
    # A batch cut off halfway, then sent again whole, applies only what is missing.
    cut = b"\n".join(json.dumps(line).encode() for line in lines[:2])
    more = [{"topic": "sale", "key": "c", **sale("c", card, "1.00", T0 + timedelta(hours=4))}]
    whole = cut + b"\n" + b"\n".join(json.dumps(line).encode() for line in more)
    assert [r["status"] for r in call(f"{base}/api/v1/batches", "POST", raw=cut, key=key, idem="cut")[1]["results"]] == \
        ["duplicate", "duplicate"]
    assert [r["status"] for r in call(f"{base}/api/v1/batches", "POST", raw=whole, key=key, idem="whole")[1]["results"]] == \
        ["duplicate", "duplicate", "applied"]
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


def membership(card: str, change_id: str, action: str, at: datetime = T0, **more) -> dict:
    return {"id": change_id, "occurred_at": at.isoformat(), "customer": {"card_code": card}, "action": action,
            "plan": "vip", **more}


def test_a_membership_sold_at_the_counter_earns_its_points_and_doubles_sales_until_cancelled(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    end = (T0 + timedelta(days=30)).isoformat()
    status, answer = call(f"{base}/api/v1/memberships", "POST", membership(card, "m1", "start", period_end=end),
                          key, "m1")
    assert status == 200 and answer["status"] == "applied"
    assert answer["membership"]["status"] == "active" and answer["membership"]["channel"] == "pos"
    assert answer["membership"]["period_end"] == end
    assert answer["customer"]["points"] == 50  # the start points
    assert [m["plan"] for m in answer["customer"]["memberships"]] == ["vip"]
    assert call(f"{base}/api/v1/memberships", "POST", membership(card, "m1", "start", period_end=end),
                key, "m1") == (status, answer)  # a retry gets the first answer
    status, again = call(f"{base}/api/v1/memberships", "POST", membership(card, "m1", "start", period_end=end),
                         key, "m1-lost-key")
    assert status == 200 and again["status"] == "duplicate" and again["customer"]["points"] == 50

    answer = call(f"{base}/api/v1/sales", "POST", sale("s1", card, at=T0 + timedelta(hours=1)), key, "s1")[1]
    assert answer["customer"]["points"] == 50 + 50  # 25.00 at twice the points

    # A renewal earns once per period, whichever till change reports it.
    renewed_to = (T0 + timedelta(days=60)).isoformat()
    for change in ("m2", "m3"):
        status, answer = call(f"{base}/api/v1/memberships", "POST", membership(
            card, change, "renew", T0 + timedelta(days=30), period_end=renewed_to), key, change)
        assert status == 200 and answer["membership"]["period_end"] == renewed_to
    assert answer["customer"]["points"] == 100 + 100

    status, answer = call(f"{base}/api/v1/memberships", "POST",
                          membership(card, "m4", "cancel", T0 + timedelta(days=40)), key, "m4")
    assert status == 200 and answer["membership"]["status"] == "cancelled"
    answer = call(f"{base}/api/v1/sales", "POST", sale("s2", card, at=T0 + timedelta(days=41)), key, "s2")[1]
    assert answer["customer"]["points"] == 200 + 25  # no longer doubled
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


def test_a_membership_change_that_cant_be_applied_is_refused_saying_why(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    status, answer = call(f"{base}/api/v1/memberships", "POST", {**membership(card, "x1", "start"), "plan": "gold"},
                          key, "x1")
    assert status == 422 and answer["error"]["code"] == "unknown_plan"
    assert answer["error"]["message"] == "no membership plan 'gold'; plans: vip"
    status, answer = call(f"{base}/api/v1/memberships", "POST", membership(card, "x2", "upgrade"), key, "x2")
    assert status == 422 and answer["error"]["code"] == "invalid" and "action" in answer["error"]["message"]
    status, answer = call(f"{base}/api/v1/memberships", "POST", membership("NOBODY99", "x3", "start"), key, "x3")
    assert status == 404 and answer["error"]["code"] == "no_customer"
    # What the API checks, the till's connector checks too (a delivery sent to `regulars ingest pos`).
    outcome = engine.ingest("pos", "membership", json.dumps(
        {**membership(card, "x4", "upgrade"), "terminal": "1", "subscription_id": "s"}).encode())
    assert outcome.status == "failed" and "action must be one of start, renew" in outcome.error
    outcome = engine.ingest("pos", "membership", json.dumps(
        {**membership(card, "x5", "start"), "terminal": "1", "subscription_id": "s", "period_end": "soon"}).encode())
    assert outcome.status == "failed" and "period_end is not an ISO 8601 time" in outcome.error
    summary = call(f"{base}/api/v1/customers?key={card}", key=key)[1]
    assert (summary["points"], summary["memberships"]) == (0, [])


def test_an_offline_batch_carries_membership_changes(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    lines = [{"topic": "membership", "key": "m1", **membership(card, "m1", "start")},
             {"topic": "sale", "key": "a", **sale("a", card, "10.00", T0 + timedelta(hours=1))},
             {"topic": "membership", "key": "m2", **membership(card, "m2", "start"), "plan": "gold"}]
    body = b"\n".join(json.dumps(line).encode() for line in lines)
    results = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="b1")[1]["results"]
    assert [r["status"] for r in results] == ["applied", "applied", "refused"]
    assert results[2]["reason"] == "no membership plan 'gold'; plans: vip"
    assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"] == 50 + 40  # start, 20.00 doubled
    results = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="b2")[1]["results"]
    assert [r["status"] for r in results] == ["duplicate", "duplicate", "refused"]


def test_a_void_timed_before_its_sale_still_voids_it(api):
    """A void is final: one whose time is earlier than its sale's (the till's
    clock was behind, or the sale was sent in an earlier batch with a later
    time) takes the sale's points back all the same; it was answered
    ``applied`` and changed nothing."""
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    before = call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"]
    first = json.dumps({"topic": "sale", "key": "late", **sale("late", card, "10.00", T0 + timedelta(hours=5))})
    assert call(f"{base}/api/v1/batches", "POST", raw=first.encode(), key=key, idem="first")[1]["results"][0][
        "status"] == "applied"
    assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"] == before + 20  # two at 10.00
    void = json.dumps({"topic": "void", "key": "void-late", "sale_id": "late",
                       "occurred_at": (T0 + timedelta(hours=1)).isoformat()})
    assert call(f"{base}/api/v1/batches", "POST", raw=void.encode(), key=key, idem="second")[1]["results"][0][
        "status"] == "applied"
    assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"] == before
    # The same two in one batch: the void is applied after the sale it names, whatever their times.
    both = "\n".join([
        json.dumps({"topic": "void", "key": "void-early", "sale_id": "early",
                    "occurred_at": (T0 + timedelta(hours=6)).isoformat()}),
        json.dumps({"topic": "sale", "key": "early", **sale("early", card, "10.00", T0 + timedelta(hours=7))}),
    ]).encode()
    results = call(f"{base}/api/v1/batches", "POST", raw=both, key=key, idem="third")[1]["results"]
    assert [r["status"] for r in results] == ["applied", "applied"], results
    assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"] == before
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


def test_a_batch_line_is_what_the_live_request_was(api, monkeypatch):
    """An unknown card in a batch is refused as live (no customer is made up);
    a live visit whose answer was lost, sent again in a batch, is a duplicate
    (the same delivery); a line refused before is refused again, with its
    reason, not reported as a duplicate."""
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    with engine.db.connect() as conn:
        before = conn.execute(select(func.count()).select_from(customers)).scalar()
    visit = {"id": "v1", "customer": {"card_code": card}, "occurred_at": T0.isoformat()}
    assert call(f"{base}/api/v1/visits", "POST", visit, key, "v1")[1]["status"] == "applied"
    lines = [
        {"topic": "visit", "key": "v1", **visit},  # the same visit, its answer lost
        {"topic": "visit", "key": "v2", "id": "v2", "customer": {"card_code": "ZZZZZZZZZZZZ"},
         "occurred_at": T0.isoformat()},
        {"topic": "sale", "key": "s1", **sale("s1", card, "4.00")},
    ]
    body = b"\n".join(json.dumps(line).encode() for line in lines)
    real_apply = engine.pipeline.apply

    def refusing(conn, event):
        if event["type"] == "order.paid":
            raise EventRefused("the shop is closed today")
        return real_apply(conn, event)

    monkeypatch.setattr(engine.pipeline, "apply", refusing)
    results = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="b1")[1]["results"]
    monkeypatch.undo()
    assert [r["status"] for r in results] == ["duplicate", "refused", "refused"], results
    assert "no customer matches" in results[1]["reason"]
    refused_reason = results[2]["reason"]
    assert "the shop is closed today" in refused_reason
    again = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="b2")[1]["results"]
    assert [r["status"] for r in again] == ["duplicate", "refused", "refused"]
    assert again[2]["reason"] == refused_reason
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(customers)).scalar() == before


def test_a_wrong_or_revoked_terminal_key_and_bad_input_get_clear_4xx(api):
    engine, base, key = api
    assert call(f"{base}/api/v1/customers?key=a@b.cz")[0] == 401
    assert call(f"{base}/api/v1/customers?key=a@b.cz", key="rt_wrong")[0] == 401
    status, answer = call(f"{base}/api/v1/sales", "POST", raw=b'{"id": "x", "lines": [', key=key, idem="t1")
    assert status == 400 and answer["error"]["code"] == "bad_json"
    status, answer = call(f"{base}/api/v1/sales", "POST", raw=b"[" * 100_000 + b"]" * 100_000, key=key, idem="t3")
    assert status == 400 and answer["error"]["code"] == "bad_json"
    deep = b'{"topic": "sale", "key": "d", "lines": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, answer = call(f"{base}/api/v1/batches", "POST", raw=deep, key=key, idem="t4")
    assert status == 200 and answer["results"][0]["status"] == "refused"
    status, answer = call(f"{base}/api/v1/sales", "POST",
                          {"id": "x", "customer": {}, "lines": [{"quantity": -1, "unit_price": "1e400"}]}, key, "t2")
    assert status == 422 and "customer" in answer["error"]["message"] and "quantity" in answer["error"]["message"]
    assert call(f"{base}/api/v1/customers?key=nobody@example.cz", key=key)[0] == 404
    terminal_id = terminals.listing(engine.db)[0].id
    terminals.revoke(engine.db, terminal_id)
    assert call(f"{base}/api/v1/customers?key=a@b.cz", key=key)[0] == 401


def test_text_no_database_stores_is_refused_live_and_in_a_batch(api):
    """A NUL character or a lone surrogate in a request: 422 saying so (the
    till can mend what it sends); in a batch, that line is refused and the
    others go on."""
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    for number, name in enumerate(("Flat\x00white", "Flat\ud800white")):
        bad = sale(f"bad-{number}", card)
        bad["lines"][0]["name"] = name
        status, answer = call(f"{base}/api/v1/sales", "POST", raw=json.dumps(bad).encode(), key=key,
                              idem=f"bad-{number}")
        assert status == 422 and "NUL characters or lone surrogates" in answer["error"]["message"], answer
    assert call(f"{base}/api/v1/customers?key=Ja%00na@example.cz", key=key)[0] == 422
    lines = [{"topic": "sale", "key": "x", **sale("x", card, "3.00")},
             {"topic": "sale", "key": "y", **sale("y", card, "4.00")}]
    lines[0]["customer"]["card_code"] = card + "\x00"
    body = b"\n".join(json.dumps(line).encode() for line in lines)
    results = call(f"{base}/api/v1/batches", "POST", raw=body, key=key, idem="batch-nul")[1]["results"]
    assert [r["status"] for r in results] == ["refused", "applied"], results
    assert "NUL characters or lone surrogates" in results[0]["reason"]
    assert call(f"{base}/api/v1/customers?key={card}", key=key)[1]["points"] == 8


def test_the_card_s_qr_code_and_printable_card(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    status, svg = call(f"{base}/api/v1/cards/{card}.svg", key=key)
    assert status == 200 and svg.startswith(b"<?xml") and b"<svg" in svg
    status, png = call(f"{base}/api/v1/cards/{card}.png", key=key)
    assert status == 200 and png.startswith(b"\x89PNG")
    status, page = call(f"{base}/api/v1/cards/{card}.html", key=key)
    assert status == 200 and card.encode() in page and "Nováková".encode() in page
    assert call(f"{base}/api/v1/cards/NOSUCHCARD.svg", key=key)[0] == 404


def test_a_card_link_shows_the_customer_their_card_until_it_expires_or_is_revoked(api):
    engine, base, key = api
    card = enrol(base, key)[1]["customer"]["card_code"]
    call(f"{base}/api/v1/sales", "POST", sale("s1", card, "30.00"), key, "s1")
    with engine.db.connect() as conn:
        customer_id = engine.identity.find(conn, card)
    token = make_link(engine, customer_id, days=30)
    status, me = call(f"{base}/api/v1/me?token={token}")
    assert status == 200 and me["points"] == 60 and me["referral_code"]
    status, answer = call(f"{base}/api/v1/me/redemptions?token={token}", "POST",
                          {"reward": "five-off", "channel": "pos"})
    assert status == 201 and answer["customer"]["points"] == 10
    assert call(f"{base}/api/v1/me?token={token[:-4]}AAAA")[0] == 401
    old = make_link(engine, customer_id, days=1, at=datetime.now(UTC) - timedelta(days=2))
    status, answer = call(f"{base}/api/v1/me?token={old}")
    assert status == 401 and "expired" in answer["error"]["message"]
    revoke(engine, customer_id)
    status, answer = call(f"{base}/api/v1/me?token={token}")
    assert status == 401 and "revoked" in answer["error"]["message"]


def test_the_openapi_document_describes_every_route_and_the_reference_page_reads_it(api):
    engine, base, key = api
    status, document = call(f"{base}/api/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    assert {"/api/v1/customers", "/api/v1/sales", "/api/v1/visits", "/api/v1/redemptions", "/api/v1/batches",
            "/api/v1/me"} <= set(document["paths"])
    assert document["components"]["schemas"]["Sale"]["required"] == ["customer", "id", "lines"]
    status, page = call(f"{base}/api/docs")
    assert status == 200 and b"/api/v1/sales" in page and b"<table>" in page


@pytest.mark.postgres
def test_eight_terminals_redeeming_the_same_points_at_once_get_one_reward_on_postgresql(make_engine, postgres_url):
    engine = make_engine(TABLES, url=postgres_url)
    engine.ensure_schema()
    keys = [terminals.add_terminal(engine.db, "Main Street", f"till {n}")[1] for n in range(8)]
    with served(engine) as base:
        card = enrol(base, keys[0])[1]["customer"]["card_code"]
        call(f"{base}/api/v1/sales", "POST", sale("s1", card, "30.00"), keys[0], "s1")  # 60 points: one five-off
        body = {"customer": {"card_code": card}, "reward": "five-off"}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda k: call(f"{base}/api/v1/redemptions", "POST", body, k, "same-moment"),
                                    keys))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] + [409] * 7, answers
    assert all("costs 50 points and the balance is 10" in a["error"]["message"] for s, a in answers if s == 409)
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


def test_the_cli_adds_lists_and_revokes_terminals_and_makes_card_links(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from engine.app import Engine
    from engine.cli import main
    from engine.config import load_config

    config = tmp_path / "plugins.toml"
    config.write_text('[engine]\ncurrency = "EUR"\n[rules.points]\nper_unit = 1\n[connectors.pos]\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("REGULARS_SECRET_KEY", "cli test key")
    run = lambda *args: CliRunner().invoke(main, ["--config", str(config), *args])  # noqa: E731
    added = run("pos", "add-terminal", "Main Street", "--name", "till 1")
    assert added.exit_code == 0, added.output
    key = next(line for line in added.output.splitlines() if line.startswith("rt_"))
    engine = Engine(load_config(str(config)))
    assert terminals.authenticate(engine.db, key).location == "Main Street"
    listed = run("pos", "terminals")
    assert key[:10] in listed.output and key not in listed.output  # only the prefix is shown
    assert run("pos", "revoke-terminal", "1").exit_code == 0
    assert terminals.authenticate(engine.db, key) is None
    assert run("pos", "revoke-terminal", "1").exit_code == 1

    assert run("card", "link", "nobody@example.cz").exit_code == 1
    with engine.db.begin() as conn:
        engine.identity.resolve(conn, "pos", {"email": "jana@example.cz"}, T0)
    link = run("card", "link", "jana@example.cz", "--base-url", "https://shop.example")
    assert link.exit_code == 0 and link.output.startswith("https://shop.example/card/")
    assert "1 link(s) revoked" in run("card", "revoke", "jana@example.cz").output
    engine.db.dispose()


def test_a_plugin_that_fails_on_a_visit_is_no_fault_of_the_till(make_engine, monkeypatch):
    """The till's visit is kept but not applied when a plugin fails: 503
    ``plugin_failed`` naming it (it was 422 ``refused``, as if the till had
    sent something wrong), and the delivery applies once replayed."""
    from engine.hookspecs import hookimpl

    class BrokenVisits:
        broken = True

        @hookimpl
        def regulars_visit_awards(self, visit, customer):
            if BrokenVisits.broken:
                raise ValueError("visit hook broke")
            return []

    engine, key = with_till(make_engine, monkeypatch, TABLES, (("broken-visits", BrokenVisits()),))
    with served(engine) as base:
        card = enrol(base, key)[1]["customer"]["card_code"]
        visit = {"id": "v1", "customer": {"card_code": card}, "occurred_at": T0.isoformat()}
        status, answer = call(f"{base}/api/v1/visits", "POST", visit, key, "visit-1")
        assert status == 503, answer
        assert answer["error"]["code"] == "plugin_failed" and answer["error"]["plugin"] == "broken-visits"
        assert "ValueError: visit hook broke" in answer["error"]["message"]
    BrokenVisits.broken = False
    with engine.db.connect() as conn:
        from engine import inbox

        [failed] = [row for row in inbox.listing(conn) if row.status == "failed"]
    assert engine.replay(failed.id).status == "applied"
