"""What a merge must carry over beyond the balances: a stamp card that the
two halves fill together completes, referrals made with the merged-away
customer's code (or by them) follow to the survivor, and the tier metric
counts the orders of everyone merged into the customer.

The usual way two customers turn out to be one: a phone-only buyer at one shop,
an email-only buyer at the other, then a delivery that carries both keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from engine.customers import customer_summary
from engine.db.models import customers, referrals, rewards
from engine.referrals import BOUGHT_BEFORE, SHIPS_TO_REFERRER, ReferralRefused
from tests.conftest import DEFAULT_TABLES
from tests.streams import T0, Line, PlannedOrder, _shopify_order, _woo_order

JANA, JANA_PHONE = "jana@example.com", "+420601123456"
PETR, PETR_PHONE = "petr@example.cz", "+420602123456"
KAREL = "karel@example.cz"


def by_phone(engine, number: int, phone: str, euros: str = "10.00", at: datetime | None = None,
             ref: str | None = None, cancelled: bool = False):
    """A WooCommerce guest order that gives only a phone."""
    order = PlannedOrder("woocommerce", number, "unused@example.com", (Line(Decimal(euros), 1),), phone=phone)
    body = _woo_order(order, "cancelled" if cancelled else "completed", at or T0 + timedelta(hours=number), [])
    body["billing"]["email"] = ""
    body["shipping"] = {**body["shipping"], "address_1": f"{number} Oak Street"}
    if ref:
        body["meta_data"] = [{"id": 1, "key": "_regulars_ref", "value": ref}]
    assert engine.ingest("woocommerce", "order.updated", json.dumps(body).encode()).status == "applied"


def by_email(engine, number: int, email: str, euros: str = "10.00", at: datetime | None = None,
             ref: str | None = None, cancelled: bool = False, shipping: dict | None = None):
    """A Shopify order that gives only an email."""
    order = PlannedOrder("shopify", number, email, (Line(Decimal(euros), 1),))
    body = _shopify_order(order, "refunded" if cancelled else "paid", at or T0 + timedelta(hours=number), [],
                          cancelled)
    body["shipping_address"] = {**body["shipping_address"], "address1": f"{number} Elm Street", **(shipping or {})}
    if ref:
        body["note_attributes"] = [{"name": "ref", "value": ref}]
    topic = "orders/cancelled" if cancelled else "orders/paid"
    assert engine.ingest("shopify", topic, json.dumps(body).encode()).status == "applied"


def link(engine, shopify_id: int, email: str, phone: str, at: datetime | None = None):
    """The shop learns that the email and the phone are one person's."""
    at = at or T0 + timedelta(days=1)
    body = {"id": shopify_id, "email": email, "phone": phone, "first_name": "Jana", "last_name": "Nováková",
            "updated_at": at.isoformat()}
    assert engine.ingest("shopify", "customers/update", json.dumps(body).encode()).status == "applied"


def ids(engine, *keys) -> list[int]:
    return [customer_summary(engine, key)["id"] for key in keys]


def audit_is_clean(engine) -> None:
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


# -- stamp cards -------------------------------------------------------------------

STAMPS = {
    **DEFAULT_TABLES,
    "rules": {"points": {"per_unit": 1},
              "stamps": {"coffee": {"required": 3, "per": "order", "reward": "free-coffee"}}},
    "rewards": {"free-coffee": {"kind": "free_product", "sku": "COFFEE-LATTE"}},
}


def test_a_card_the_two_halves_fill_together_issues_its_reward_at_the_merge(make_engine):
    engine = make_engine(tables=STAMPS)
    by_phone(engine, 1, JANA_PHONE)
    by_phone(engine, 2, JANA_PHONE)
    by_email(engine, 3, JANA)
    by_email(engine, 4, JANA)
    assert customer_summary(engine, JANA)["stamps"] == {"coffee": 2}
    link(engine, 42, JANA, JANA_PHONE)
    survivor = customer_summary(engine, JANA_PHONE)
    assert survivor["id"] == customer_summary(engine, JANA)["id"]
    assert survivor["stamps"] == {"coffee": 1}  # 4 stamps: one full card, one carried over
    assert [r["reward"] for r in survivor["rewards"]] == ["free-coffee"]
    audit_is_clean(engine)
    # the next card goes on counting from the stamp carried over
    by_email(engine, 5, JANA)
    by_email(engine, 6, JANA)
    survivor = customer_summary(engine, JANA)
    assert survivor["stamps"] == {"coffee": 0}
    assert [r["reward"] for r in survivor["rewards"]] == ["free-coffee", "free-coffee"]
    with engine.db.connect() as conn:
        assert len(set(conn.execute(select(rewards.c.key)).scalars())) == 2
    audit_is_clean(engine)


def test_a_merge_that_leaves_no_full_card_issues_nothing(make_engine):
    engine = make_engine(tables=STAMPS)
    by_phone(engine, 1, JANA_PHONE)
    by_email(engine, 2, JANA)
    link(engine, 42, JANA, JANA_PHONE)
    survivor = customer_summary(engine, JANA)
    assert survivor["stamps"] == {"coffee": 2}
    assert survivor["rewards"] == []


# -- referrals ----------------------------------------------------------------------

REFERRALS = {
    **DEFAULT_TABLES,
    "rules": {"points": {"per_unit": 1},
              "referrals": {"referrer_points": 200, "referee_points": 100, "min_order": "20.00", "weekly_limit": 5}},
}


def claims(engine) -> list[tuple[int | None, int, str, str | None]]:
    with engine.db.connect() as conn:
        return [(r.referrer_id, r.referee_id, r.status, r.reason)
                for r in conn.execute(select(referrals).order_by(referrals.c.id))]


def test_a_code_of_the_merged_away_customer_rewards_the_survivor(make_engine):
    engine = make_engine(tables=REFERRALS)
    by_phone(engine, 1, PETR_PHONE)  # Petr at the counter: his first code
    old_code = customer_summary(engine, PETR_PHONE)["referral_code"]
    by_email(engine, 2, PETR)
    link(engine, 43, PETR, PETR_PHONE)
    (petr,) = set(ids(engine, PETR, PETR_PHONE))
    by_email(engine, 3, JANA, "30.00", ref=old_code)  # Jana uses the code Petr gave her before
    jana = customer_summary(engine, JANA)["id"]
    assert claims(engine) == [(petr, jana, "rewarded", None)]
    assert customer_summary(engine, PETR)["points"] == 20 + 200
    assert customer_summary(engine, JANA)["points"] == 30 + 100
    assert customer_summary(engine, PETR)["referrals"][0]["role"] == "referrer"
    audit_is_clean(engine)


def test_a_referee_who_ships_where_the_merged_away_half_of_the_referrer_shipped_is_refused_at_the_merge(make_engine):
    """Jana's first order ships to 2 Oak Street, where Petr's phone-only
    order shipped; nobody knew that was Petr until the link: the merge
    decides her claim again, as if the link had come first."""
    engine = make_engine(tables=REFERRALS)
    by_email(engine, 1, PETR)
    code = customer_summary(engine, PETR)["referral_code"]
    by_phone(engine, 2, PETR_PHONE)  # ships to 2 Oak Street
    by_email(engine, 3, JANA, "30.00", ref=code,  # (the postcode and country of the WooCommerce body)
             shipping={"address1": "2 Oak Street", "zip": "12345-000", "country_code": "BR"})
    assert [c[2] for c in claims(engine)] == ["rewarded"]
    link(engine, 43, PETR, PETR_PHONE)
    assert [(c[2], c[3]) for c in claims(engine)] == [("refused", SHIPS_TO_REFERRER)]
    assert (customer_summary(engine, PETR)["points"], customer_summary(engine, JANA)["points"]) == (20, 30)
    audit_is_clean(engine)


def test_the_survivor_cannot_claim_the_code_of_the_customer_merged_into_them(make_engine):
    engine = make_engine(tables=REFERRALS)
    by_phone(engine, 1, JANA_PHONE)
    old_code = customer_summary(engine, JANA_PHONE)["referral_code"]
    by_email(engine, 2, JANA)
    link(engine, 42, JANA, JANA_PHONE)
    with pytest.raises(ReferralRefused, match="can't refer themselves"):
        engine.claim_referral(JANA, old_code, at=T0 + timedelta(days=2))


def test_a_claim_made_before_the_merge_follows_the_referee_to_the_survivor(make_engine):
    engine = make_engine(tables=REFERRALS)
    by_email(engine, 1, PETR)
    code = customer_summary(engine, PETR)["referral_code"]
    by_phone(engine, 2, JANA_PHONE, "30.00", ref=code)  # Jana's first order, at the counter, with Petr's code
    assert customer_summary(engine, JANA_PHONE)["points"] == 30 + 100
    assert customer_summary(engine, PETR)["points"] == 10 + 200
    by_email(engine, 3, JANA)
    link(engine, 42, JANA, JANA_PHONE)
    (jana,) = set(ids(engine, JANA, JANA_PHONE))
    petr = customer_summary(engine, PETR)["id"]
    assert claims(engine) == [(petr, jana, "rewarded", None)]
    assert customer_summary(engine, JANA)["referrals"][0]["role"] == "referee"
    # the first order cancelled after the merge: the rewards are taken back from both
    by_phone(engine, 2, JANA_PHONE, "30.00", at=T0 + timedelta(days=3), cancelled=True)
    assert [c[2] for c in claims(engine)] == ["reversed"]
    assert customer_summary(engine, JANA)["points"] == 10
    assert customer_summary(engine, PETR)["points"] == 10
    audit_is_clean(engine)


def test_a_claim_still_waiting_for_the_first_order_is_rewarded_by_the_survivors_order(make_engine):
    engine = make_engine(tables=REFERRALS)
    by_email(engine, 1, PETR)
    code = customer_summary(engine, PETR)["referral_code"]
    with engine.db.begin() as conn:  # Jana gives her phone at the counter, her email to the newsletter
        engine.identity.resolve(conn, "pos", {"phone": JANA_PHONE}, T0)
        engine.identity.resolve(conn, "pos", {"email": JANA}, T0)
    engine.claim_referral(JANA_PHONE, code, at=T0 + timedelta(hours=2))  # with Petr's code, buying nothing yet
    link(engine, 42, JANA, JANA_PHONE, at=T0 + timedelta(hours=3))
    by_email(engine, 4, JANA, "30.00")  # her first order
    assert [c[2] for c in claims(engine)] == ["rewarded"]
    assert customer_summary(engine, JANA)["points"] == 30 + 100
    assert customer_summary(engine, PETR)["points"] == 10 + 200
    audit_is_clean(engine)


def test_two_waiting_claims_leave_the_survivor_the_older_one(make_engine):
    engine = make_engine(tables=REFERRALS)
    by_email(engine, 1, PETR)
    by_email(engine, 2, KAREL)
    petr, karel = ids(engine, PETR, KAREL)
    with engine.db.begin() as conn:
        engine.identity.resolve(conn, "pos", {"phone": JANA_PHONE}, T0)
        engine.identity.resolve(conn, "pos", {"email": JANA}, T0)
    engine.claim_referral(JANA_PHONE, customer_summary(engine, PETR)["referral_code"], at=T0 + timedelta(hours=3))
    engine.claim_referral(JANA, customer_summary(engine, KAREL)["referral_code"], at=T0 + timedelta(hours=4))
    link(engine, 42, JANA, JANA_PHONE, at=T0 + timedelta(hours=5))
    jana = customer_summary(engine, JANA)["id"]
    by_email(engine, 6, JANA, "30.00")
    code = customer_summary(engine, PETR)["referral_code"]
    assert claims(engine) == [
        (petr, jana, "rewarded", None),
        (karel, jana, "refused", f"this customer was already referred with code {code}"),
    ]
    assert customer_summary(engine, PETR)["points"] == 10 + 200
    assert customer_summary(engine, KAREL)["points"] == 10
    assert customer_summary(engine, JANA)["points"] == 30 + 100


def test_of_two_rewarded_claims_the_one_made_after_the_person_had_bought_is_taken_back(make_engine):
    engine = make_engine(tables=REFERRALS)
    by_email(engine, 1, PETR)
    by_email(engine, 2, KAREL)
    petr, karel = ids(engine, PETR, KAREL)
    by_phone(engine, 3, JANA_PHONE, "30.00", ref=customer_summary(engine, PETR)["referral_code"])
    by_email(engine, 4, JANA, "30.00", ref=customer_summary(engine, KAREL)["referral_code"])
    phone_half, email_half = ids(engine, JANA_PHONE, JANA)
    link(engine, 42, JANA, JANA_PHONE)
    assert customer_summary(engine, JANA_PHONE)["id"] == email_half
    # One person, who had bought (order 3, with Petr's code) before using Karel's
    # code (order 4): Karel's referral is taken back, Petr's stays, as if the
    # shop had known them for one person all along.
    assert claims(engine) == [(petr, phone_half, "rewarded", None), (karel, email_half, "refused", BOUGHT_BEFORE)]
    assert customer_summary(engine, KAREL)["points"] == 10
    by_email(engine, 5, JANA, "5.00", at=T0 + timedelta(days=2))  # the order goes through
    by_email(engine, 4, JANA, "30.00", at=T0 + timedelta(days=3), cancelled=True)
    assert [c[2] for c in claims(engine)] == ["rewarded", "refused"]
    assert customer_summary(engine, JANA)["points"] == 30 + 100 + 5
    assert customer_summary(engine, KAREL)["points"] == 10
    assert customer_summary(engine, PETR)["points"] == 10 + 200
    audit_is_clean(engine)


def test_a_waiting_claim_between_the_two_halves_is_refused_as_a_self_referral(make_engine):
    engine = make_engine(tables=REFERRALS)
    by_phone(engine, 1, JANA_PHONE)
    with engine.db.begin() as conn:
        engine.identity.resolve(conn, "pos", {"email": JANA}, T0)
    engine.claim_referral(JANA, customer_summary(engine, JANA_PHONE)["referral_code"], at=T0 + timedelta(hours=2))
    link(engine, 42, JANA, JANA_PHONE)
    jana = customer_summary(engine, JANA)["id"]
    assert claims(engine) == [(jana, jana, "refused", "a customer can't refer themselves")]
    by_email(engine, 5, JANA, "30.00", at=T0 + timedelta(days=2))
    assert customer_summary(engine, JANA)["points"] == 10 + 30
    audit_is_clean(engine)


# -- tiers --------------------------------------------------------------------------

JAN = datetime(2026, 1, 10, tzinfo=UTC)


def tiers(metric: str = "points_earned") -> dict:
    return {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "tiers": {
        "metric": metric, "levels": [{"name": "silver", "threshold": 40, "multiplier": 1.5}]}}}


@pytest.mark.parametrize("metric", ["points_earned", "spend"])
def test_the_tier_metric_counts_the_orders_of_the_customer_merged_in(make_engine, metric):
    engine = make_engine(tables=tiers(metric))
    by_phone(engine, 1, JANA_PHONE, "30.00", at=JAN)
    by_email(engine, 2, JANA, "12.00", at=JAN + timedelta(days=1))
    link(engine, 42, JANA, JANA_PHONE, at=JAN + timedelta(days=2))
    # The merge decides the survivor's upgrades again with both customers' orders:
    # together they had reached 40 at the second order's payment.
    survivor = customer_summary(engine, JANA)
    assert survivor["tier"] == "silver"
    assert [(h["to"], h["metric"], h["at"]) for h in survivor["tier_history"]] == [
        ("silver", "42", (JAN + timedelta(days=1)).isoformat())]  # each order once
    by_email(engine, 3, JANA, "2.00", at=JAN + timedelta(days=3))
    assert customer_summary(engine, JANA)["points"] == 42 + 3  # at silver's 1.5


def test_the_tier_metric_follows_merges_of_merges(make_engine):
    engine = make_engine(tables=tiers())
    by_phone(engine, 1, JANA_PHONE, "15.00", at=JAN)
    by_email(engine, 2, JANA, "15.00", at=JAN)
    by_email(engine, 3, "jana.novakova@example.com", "9.00", at=JAN)
    first, second, third = ids(engine, JANA_PHONE, JANA, "jana.novakova@example.com")
    with engine.db.begin() as conn:
        engine.identity.merge(conn, keep=second, gone=first, at=JAN + timedelta(days=1))
        engine.identity.merge(conn, keep=third, gone=second, at=JAN + timedelta(days=1))
        assert engine.tiers.metric(conn, third, JAN + timedelta(days=2)) == 39
        # (The metric counts orders, and a merge moves them to the survivor.)
        assert engine.tiers.metric(conn, second, JAN + timedelta(days=2)) == 0
        merged = dict(conn.execute(select(customers.c.id, customers.c.merged_into)).all())
    assert merged == {first: second, second: third, third: None}
    by_email(engine, 4, "jana.novakova@example.com", "1.00", at=JAN + timedelta(days=3))
    assert customer_summary(engine, third)["tier"] == "silver"
