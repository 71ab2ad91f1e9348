"""Referrals (issue 3, part 3): a code per customer, claimed with the first
order (discount code or order attribute) or explicitly; both rewards when the
referee's first paid order reaches the minimum; reversed on a full refund; the
guards, each refusal recorded with its reason."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from connectors.base import Connector
from engine.config import ConfigError
from engine.customers import customer_summary
from engine.db.models import customers, referrals
from engine.hookspecs import hookimpl
from engine.referrals import SHIPS_TO_REFERRER, ReferralRefused
from engine.rules_api import ReferralProgram
from tests.conftest import DEFAULT_TABLES, examples
from tests.streams import T0, Line, PlannedOrder, _shopify_order, _woo_order, shuffled_with_resends
from tests.test_invariants import _fresh

REFERRER = "petr@example.cz"
REFEREE = "jana@example.com"
PROGRAM = {"referrer_points": 200, "referee_points": 100, "min_order": "20.00", "weekly_limit": 2}


def tables(**program):
    return {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "referrals": {**PROGRAM, **program}}}


@pytest.fixture
def shop(make_engine):
    engine = make_engine(tables=tables())
    buy(engine, 1, REFERRER, "10.00")  # the referrer is a customer with a code
    return engine


def code_of(engine, email=REFERRER) -> str:
    return customer_summary(engine, email)["referral_code"]


def buy(engine, number, email, euros, *, code=None, attribute=None, channel="shopify", hours=0, cancelled=False,
        address=None):
    order = PlannedOrder(channel, number, email, (Line(Decimal(euros), 1),))
    at = T0 + timedelta(hours=number + hours)
    if channel == "shopify":
        body = _shopify_order(order, "refunded" if cancelled else "paid", at, [], cancelled)
        if code:
            body["discount_codes"] = [{"code": code, "amount": "0.00", "type": "fixed_amount"}]
        if attribute:
            body["note_attributes"] = [{"name": "ref", "value": attribute}]
        body["shipping_address"] = {**body["shipping_address"], "address1": address or f"{number} Elm Street"}
        topic = "orders/cancelled" if cancelled else "orders/paid"
    else:
        body = _woo_order(order, "cancelled" if cancelled else "completed", at, [])
        if attribute:
            body["meta_data"] = [{"id": 1, "key": "_regulars_ref", "value": attribute}]
        body["shipping"] = {**body["shipping"], "address_1": address or f"{number} Oak Street"}
        topic = "order.updated"
    outcome = engine.ingest(channel, topic, json.dumps(body).encode())
    assert outcome.status == "applied", outcome


def points(engine, email) -> int:
    return customer_summary(engine, email)["points"]


def statuses(engine) -> list[tuple[str, str | None]]:
    with engine.db.connect() as conn:
        return [(r.status, r.reason) for r in conn.execute(select(referrals).order_by(referrals.c.id))]


def test_a_code_used_as_a_discount_code_on_the_first_order_rewards_both(shop):
    buy(shop, 2, REFEREE, "30.00", code=code_of(shop).lower())
    assert points(shop, REFEREE) == 30 + 100
    assert points(shop, REFERRER) == 10 + 200
    assert statuses(shop) == [("rewarded", None)]
    assert customer_summary(shop, REFEREE)["referrals"][0]["role"] == "referee"


def test_a_code_in_a_woocommerce_meta_key_counts_too(shop):
    buy(shop, 2, REFEREE, "30.00", attribute=code_of(shop), channel="woocommerce")
    assert points(shop, REFEREE) == 130


def test_a_claim_at_signup_is_rewarded_with_the_first_paid_order_in_any_channel(shop):
    buy(shop, 9, REFEREE, "5.00", channel="woocommerce", cancelled=True)  # known, never bought
    shop.claim_referral(REFEREE, code_of(shop), at=T0 + timedelta(hours=9, minutes=30))  # before order 10
    buy(shop, 10, REFEREE, "25.00", channel="woocommerce")
    assert points(shop, REFEREE) == 125


def test_a_first_order_below_the_minimum_earns_no_referral(shop):
    buy(shop, 2, REFEREE, "19.99", code=code_of(shop))
    buy(shop, 3, REFEREE, "50.00")
    assert points(shop, REFERRER) == 10
    assert statuses(shop) == [("refused", "the first order (19.99) is below the minimum (20.00)")]


def test_a_first_order_of_exactly_the_minimum_earns_the_referral(shop):
    """``min_order`` is reached, not exceeded: 20.00 against 20.00 earns both."""
    buy(shop, 2, REFEREE, "20.00", code=code_of(shop))
    assert (points(shop, REFEREE), points(shop, REFERRER)) == (20 + 100, 10 + 200)
    assert statuses(shop) == [("rewarded", None)]


def test_a_full_refund_of_the_first_order_reverses_both_rewards(shop):
    buy(shop, 2, REFEREE, "30.00", code=code_of(shop))
    buy(shop, 2, REFEREE, "30.00", cancelled=True, hours=30)
    assert points(shop, REFEREE) == 0
    assert points(shop, REFERRER) == 10
    assert statuses(shop)[0][0] == "reversed"


def _refund_whole(number: int, hours: int) -> bytes:
    from tests.streams import _shopify_refund

    planned = PlannedOrder("shopify", number, REFEREE, (Line(Decimal("30.00"), 1),))
    return json.dumps(_shopify_refund(planned, 0, Decimal("30.00"), T0 + timedelta(hours=number + hours))).encode()


@pytest.mark.parametrize("refund_first", [False, True])
def test_a_full_refund_without_a_cancellation_reverses_both_rewards_too(shop, refund_first):
    """Shopify's refunds/create for the whole first order (the order is not
    cancelled: refunded in full), before or after the order itself."""
    if refund_first:
        assert shop.ingest("shopify", "refunds/create", _refund_whole(2, 30)).status == "applied"
    buy(shop, 2, REFEREE, "30.00", code=code_of(shop))
    if not refund_first:
        assert shop.ingest("shopify", "refunds/create", _refund_whole(2, 30)).status == "applied"
    assert (points(shop, REFEREE), points(shop, REFERRER)) == (0, 10)
    assert statuses(shop)[0][0] == "reversed"  # whichever came first


def test_a_woocommerce_order_set_refunded_reverses_both_rewards(shop):
    buy(shop, 2, REFEREE, "30.00", attribute=code_of(shop), channel="woocommerce")
    order = PlannedOrder("woocommerce", 2, REFEREE, (Line(Decimal("30.00"), 1),))
    body = _woo_order(order, "refunded", T0 + timedelta(hours=40), [Decimal("30.00")])
    assert shop.ingest("woocommerce", "order.updated", json.dumps(body).encode()).status == "applied"
    assert (points(shop, REFEREE), points(shop, REFERRER)) == (0, 10)
    assert statuses(shop)[0][0] == "reversed"


def test_someone_who_already_bought_earns_no_referral(shop):
    buy(shop, 2, REFEREE, "30.00")
    buy(shop, 3, REFEREE, "30.00", code=code_of(shop))
    assert points(shop, REFEREE) == 60
    assert statuses(shop) == [("refused", "the customer had already bought (in some channel) before using the code")]


@pytest.mark.parametrize("same", ["customer", "address"])
def test_self_referrals_are_refused(shop, same):
    if same == "customer":
        buy(shop, 2, REFERRER, "30.00", code=code_of(shop))
        expected = "a customer can't refer themselves"
    else:
        buy(shop, 2, REFEREE, "30.00", code=code_of(shop), address="1 Elm Street")  # the referrer's address
        expected = SHIPS_TO_REFERRER
    assert statuses(shop)[-1] == ("refused", expected)
    assert points(shop, REFERRER) in (10, 40)


def test_the_address_compared_is_the_first_order_s_not_the_referee_s_latest(shop):
    """The first order ships to the referrer's street; a later one to the
    referee's own: still a self-referral, in either arrival order."""
    buy(shop, 3, REFEREE, "30.00", channel="woocommerce", address="7 Oak Street")
    buy(shop, 2, REFEREE, "30.00", code=code_of(shop), address="1 Elm Street")
    assert statuses(shop) == [("refused", SHIPS_TO_REFERRER)]
    assert (points(shop, REFEREE), points(shop, REFERRER)) == (60, 10)


def test_a_first_order_whose_address_is_corrected_is_decided_again(shop):
    buy(shop, 2, REFEREE, "30.00", code=code_of(shop), address="1 Elm Street")
    assert statuses(shop) == [("refused", SHIPS_TO_REFERRER)]
    buy(shop, 2, REFEREE, "30.00", code=code_of(shop), address="2 Elm Street", hours=1)  # a newer snapshot
    assert statuses(shop) == [("rewarded", None)]
    assert (points(shop, REFEREE), points(shop, REFERRER)) == (130, 210)


def test_the_referrer_s_order_to_that_address_delivered_late_takes_the_rewards_back(shop):
    """The referrer shipped to 9 Birch Lane before the referee's first order
    went there; that order of theirs arrives last: any address the
    referrer's orders shipped to counts, whenever it was delivered."""
    buy(shop, 2, REFEREE, "30.00", code=code_of(shop), address="9 Birch Lane")
    assert statuses(shop) == [("rewarded", None)]
    buy(shop, 5, REFERRER, "10.00", address="9  birch lane", hours=-4)  # at hour 1; as normalized
    assert statuses(shop) == [("refused", SHIPS_TO_REFERRER)]
    assert (points(shop, REFEREE), points(shop, REFERRER)) == (30, 20)
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


class _Crm(Connector):
    """A third-party connector whose customer profiles carry an address."""

    channel: ClassVar[str] = "crm"
    topics: ClassVar[tuple[str, ...]] = ("customer",)

    def delivery_key(self, topic, payload, headers, body) -> str:
        return payload["idempotency_key"]

    def translate(self, topic, payload, headers) -> list[dict]:
        return [{**payload, "channel": "crm"}]


class _CrmPlugin:
    @hookimpl
    def regulars_register_connectors(self):
        return [_Crm()]


@pytest.mark.parametrize("first", ["profile", "order"])
def test_a_referrer_s_profile_address_counts_whenever_it_arrives(make_engine, first):
    """The referrer's own address comes with a customer.upserted (a
    connector's profile), before or after the referee's first order ships
    there: the claim ends refused either way."""
    engine = make_engine(tables=tables(), extra_plugins=(("crm", _CrmPlugin()),))
    buy(engine, 1, REFERRER, "10.00")
    profile = {"type": "customer.upserted", "idempotency_key": "crm:petr:1",
               "occurred_at": (T0 + timedelta(hours=3)).isoformat(),
               "customer": {"email": REFERRER, "address": "9 Birch Lane, 40003, US"}}

    def send_profile():
        assert engine.ingest("crm", "customer", json.dumps(profile).encode()).status == "applied"

    if first == "profile":
        send_profile()
    buy(engine, 2, REFEREE, "30.00", code=code_of(engine), address="9 birch  lane")
    if first == "order":
        assert statuses(engine) == [("rewarded", None)]
        send_profile()
    assert statuses(engine) == [("refused", SHIPS_TO_REFERRER)]
    assert (points(engine, REFEREE), points(engine, REFERRER)) == (30, 10)
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


def test_a_claim_at_the_counter_is_judged_on_the_first_order_s_address(shop):
    buy(shop, 9, REFEREE, "5.00", channel="woocommerce", cancelled=True)  # known, never bought
    shop.claim_referral(REFEREE, code_of(shop), at=T0 + timedelta(hours=1, minutes=30))
    assert statuses(shop) == [("claimed", None)]
    buy(shop, 2, REFEREE, "30.00", address="1 Elm Street")
    assert statuses(shop) == [("refused", SHIPS_TO_REFERRER)]


def test_a_referrer_has_a_weekly_limit(shop):
    code = code_of(shop)
    for n, email in enumerate(["a@example.com", "b@example.com", "c@example.com"], start=2):
        buy(shop, n, email, "30.00", code=code)
    assert points(shop, REFERRER) == 10 + 2 * 200
    assert statuses(shop)[-1] == ("refused", "the referrer reached the limit of 2 referrals a week")


LIMIT = ("refused", "the referrer reached the limit of 2 referrals a week")
FRIENDS = ("a@example.com", "b@example.com", "c@example.com")


def by_referee(engine) -> dict[str, tuple[str, str | None]]:
    with engine.db.connect() as conn:
        rows = conn.execute(select(referrals.c.status, referrals.c.reason, customers.c.email)
                            .join(customers, customers.c.id == referrals.c.referee_id)).all()
    return {r.email: (r.status, r.reason) for r in rows}


def test_the_weekly_limit_goes_by_when_the_first_orders_were_paid_not_by_when_they_arrived(shop):
    code = code_of(shop)
    for n, email in reversed(list(enumerate(FRIENDS, start=2))):  # paid a, b, c; delivered c, b, a
        buy(shop, n, email, "30.00", code=code)
    assert by_referee(shop) == {"a@example.com": ("rewarded", None), "b@example.com": ("rewarded", None),
                                "c@example.com": LIMIT}
    assert points(shop, REFERRER) == 10 + 2 * 200
    assert [points(shop, email) for email in FRIENDS] == [130, 130, 30]
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


def test_a_referral_refused_at_the_limit_is_rewarded_when_an_earlier_one_is_taken_back(shop):
    code = code_of(shop)
    for n, email in enumerate(FRIENDS, start=2):
        buy(shop, n, email, "30.00", code=code)
    buy(shop, 2, "a@example.com", "30.00", cancelled=True, hours=30)
    assert by_referee(shop) == {"a@example.com": ("reversed", "the first order was refunded in full or cancelled"),
                                "b@example.com": ("rewarded", None), "c@example.com": ("rewarded", None)}
    assert points(shop, REFERRER) == 10 + 2 * 200
    assert [points(shop, email) for email in FRIENDS] == [0, 130, 130]


def test_referrals_more_than_a_week_apart_are_each_within_the_limit(shop):
    code = code_of(shop)
    for n, email in enumerate(FRIENDS, start=2):
        buy(shop, n, email, "30.00", code=code, hours=24 * 7 * (n - 2))
    assert set(by_referee(shop).values()) == {("rewarded", None)}
    assert points(shop, REFERRER) == 10 + 3 * 200


def test_a_referee_refused_at_the_limit_still_holds_their_claim(shop):
    """A second code they use is refused as already referred: the first may
    yet be rewarded, when an earlier referral is taken back."""
    code = code_of(shop)
    for n, email in enumerate(FRIENDS, start=2):
        buy(shop, n, email, "30.00", code=code)
    other = code_of(shop, "a@example.com")
    buy(shop, 9, "c@example.com", "30.00", code=other)
    assert statuses(shop)[-2:] == [LIMIT, ("refused", f"this customer was already referred with code {code}")]
    buy(shop, 2, "a@example.com", "30.00", cancelled=True, hours=30)
    assert statuses(shop)[-2][0] == "rewarded"
    assert points(shop, "c@example.com") == 60 + 100


def test_explicit_claims_say_why_they_are_refused_and_are_recorded(shop):
    with pytest.raises(ReferralRefused, match="no customer has the referral code NOPE"):
        shop.claim_referral(REFERRER, "nope")
    with pytest.raises(ReferralRefused, match="can't refer themselves"):
        shop.claim_referral(REFERRER, code_of(shop))
    assert [s for s, _ in statuses(shop)] == ["refused", "refused"]


def test_a_wrong_referral_setting_is_refused_naming_it(make_engine):
    with pytest.raises(ConfigError, match=r"\[rules.referrals\] referrer_points: Missing data"):
        make_engine(tables={**DEFAULT_TABLES, "rules": {"referrals": {"referee_points": 1}}})


class FriendsProgram:
    @hookimpl
    def regulars_register_referral_program(self):
        return ReferralProgram(referrer_points=5, referee_points=5)


def test_a_plugin_can_give_the_referral_programme(make_engine):
    engine = make_engine(extra_plugins=(("friends", FriendsProgram()),))
    buy(engine, 1, REFERRER, "10.00")
    buy(engine, 2, REFEREE, "1.00", attribute=code_of(engine))
    assert points(engine, REFEREE) == 1 + 5


def _order_deliveries(order: PlannedOrder, paid, cancel, carries_code: bool, address: str | None = None) -> list:
    """An order's deliveries, ``(at, channel, topic, body)``: paid, and
    cancelled when ``cancel`` is a time; the code (``{code}``) on it when it
    carries it; shipped to ``address`` when given."""
    deliveries = []
    for status, at in (("paid", paid), ("cancelled", cancel)):
        if at is None:
            continue
        if order.channel == "shopify":
            body = _shopify_order(order, "refunded" if status == "cancelled" else "paid", at, [], status == "cancelled")
            if carries_code:
                body["discount_codes"] = [{"code": "{code}", "amount": "0.00", "type": "fixed_amount"}]
            if address:
                body["shipping_address"] = {**body["shipping_address"], "address1": address}
            topic = "orders/cancelled" if status == "cancelled" else "orders/paid"
        else:
            body = _woo_order(order, "cancelled" if status == "cancelled" else "completed", at, [])
            if carries_code:
                body["meta_data"] = [{"id": 1, "key": "_regulars_ref", "value": "{code}"}]
            if address:
                body["shipping"] = {**body["shipping"], "address_1": address}
            topic = "order.updated"
        deliveries.append((at, order.channel, topic, json.dumps(body)))
    return deliveries


@st.composite
def referee_streams(draw):
    """A referee's orders at distinct paid times (Shopify or WooCommerce),
    some cancelled later, and one way of using the referrer's code: on one of
    the orders, or a claim at the counter at some moment; in time order, and
    shuffled with some sent twice."""
    n = draw(st.integers(1, 4))
    hours = draw(st.lists(st.integers(2, 200), min_size=n, max_size=n, unique=True))
    carrier = draw(st.integers(-1, n - 1))  # -1: a claim at the counter instead
    timed = []  # (when, step): ("order", channel, topic, body) or ("claim", moment)
    for index, hour in enumerate(hours):
        number = 10 + index
        euros = draw(st.sampled_from(["10.00", "19.99", "20.00", "35.00"]))
        channel = draw(st.sampled_from(["shopify", "woocommerce"]))
        order = PlannedOrder(channel, number, REFEREE, (Line(Decimal(euros), 1),))
        paid = T0 + timedelta(hours=hour)
        cancel = paid + timedelta(hours=draw(st.integers(1, 48)), minutes=30) if draw(st.integers(0, 3)) == 0 else None
        for at, channel_, topic, body in _order_deliveries(order, paid, cancel, index == carrier):
            timed.append((at, ("order", channel_, topic, body)))
    if carrier == -1:
        timed.append((T0 + timedelta(hours=draw(st.integers(2, 200)), minutes=15), ("claim",)))
    timed.sort(key=lambda item: item[0])
    ordered = [(at, step) for at, step in timed]
    shuffled = shuffled_with_resends(draw, ordered, 2)
    return ordered, shuffled


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=referee_streams())
def test_a_referral_does_not_depend_on_the_order_deliveries_arrive_in(stream, make_engine, tmp_path, _sqlite_template):
    """PRODUCT.md's invariant 2 for referrals: any reordering and duplication
    of the referee's deliveries (and of when the claim is seen) ends in the
    same points for both and the same decision as the stream in time order."""
    results = []
    for steps in stream:
        engine = _fresh(make_engine, tmp_path, _sqlite_template, tables())
        buy(engine, 1, REFERRER, "10.00")
        code = code_of(engine)
        with engine.db.begin() as conn:  # the referee signed up at the counter before anything else
            engine.identity.resolve(conn, "pos", {"email": REFEREE}, T0)
        for at, step in steps:
            if step[0] == "claim":
                try:
                    engine.claim_referral(REFEREE, code, at=at)
                except ReferralRefused:
                    pass  # recorded all the same
                continue
            _, channel, topic, body = step
            outcome = engine.ingest(channel, topic, body.replace("{code}", code).encode())
            assert outcome.status in ("applied", "duplicate"), outcome
        with engine.db.connect() as conn:
            # (A refused claim seen twice, with its order delivered twice, is recorded twice.)
            decided = sorted({(r.status, r.reason or "", r.order_ref or "") for r in conn.execute(select(referrals))})
            assert engine.ledger.audit(conn) == []
        referee = customer_summary(engine, REFEREE)
        results.append((referee["points"], points(engine, REFERRER), decided))
        engine.db.dispose()
    assert results[1] == results[0]


@st.composite
def referrer_streams(draw):
    """Three referees of one referrer (weekly limit 2), each with one or two
    orders over ten days (Shopify or WooCommerce), the code on one of
    them, now and then a cancellation; in time order, and shuffled with some
    sent twice."""
    timed = []
    number = 10
    for email in FRIENDS:
        n = draw(st.integers(1, 2))
        hours = sorted(draw(st.lists(st.integers(2, 24 * 10), min_size=n, max_size=n, unique=True)))
        carrier = draw(st.sampled_from([0, 0, 0, n - 1]))  # mostly their first order
        for index, hour in enumerate(hours):
            number += 1
            euros = draw(st.sampled_from(["35.00", "35.00", "35.00", "10.00"]))
            channel = draw(st.sampled_from(["shopify", "woocommerce"]))
            order = PlannedOrder(channel, number, email, (Line(Decimal(euros), 1),))
            paid = T0 + timedelta(hours=hour, minutes=number)  # (no two orders paid at once)
            cancel = paid + timedelta(hours=draw(st.integers(1, 48))) if draw(st.integers(0, 4)) == 0 else None
            timed.extend(_order_deliveries(order, paid, cancel, index == carrier, address=f"{email} Street"))
    timed.sort(key=lambda item: item[0])
    ordered = [step[1:] for step in timed]
    shuffled = shuffled_with_resends(draw, ordered, 2)
    return ordered, shuffled


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=referrer_streams())
def test_a_referrer_s_weekly_limit_does_not_depend_on_the_order_deliveries_arrive_in(
    stream, make_engine, tmp_path, _sqlite_template
):
    """PRODUCT.md's invariant 2 across referees: any reordering and
    duplication of three referees' deliveries ends in the same points for
    everyone and the same decisions as the stream in time order, the weekly
    limit included."""
    results = []
    for steps in stream:
        engine = _fresh(make_engine, tmp_path, _sqlite_template, tables())
        buy(engine, 1, REFERRER, "10.00")
        code = code_of(engine)
        for channel, topic, body in steps:
            outcome = engine.ingest(channel, topic, body.replace("{code}", code).encode())
            assert outcome.status in ("applied", "duplicate"), outcome
        with engine.db.connect() as conn:
            assert engine.ledger.audit(conn) == []
        decided = sorted(set(by_referee(engine).items()))
        results.append((points(engine, REFERRER), [points(engine, email) for email in FRIENDS], decided))
        engine.db.dispose()
    assert results[1] == results[0]


def test_two_referrers_found_to_be_one_person_share_one_weekly_limit(shop):
    other = "petr.novak@example.cz"
    buy(shop, 2, other, "10.00")
    for n, (email, referrer) in enumerate(zip(FRIENDS, (REFERRER, other, other), strict=True), start=3):
        buy(shop, n, email, "30.00", code=code_of(shop, referrer))
    assert set(by_referee(shop).values()) == {("rewarded", None)}
    keep, gone = (customer_summary(shop, e)["id"] for e in (REFERRER, other))
    with shop.db.begin() as conn:
        shop.identity.merge(conn, keep, gone, T0 + timedelta(days=1))
    assert by_referee(shop) == {"a@example.com": ("rewarded", None), "b@example.com": ("rewarded", None),
                                "c@example.com": LIMIT}
    assert points(shop, REFERRER) == 10 + 10 + 2 * 200
    assert points(shop, "c@example.com") == 30
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []
