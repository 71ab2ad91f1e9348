"""Identity: one customer across channels by email, phone, channel id, card."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from engine.customers import customer_summary
from engine.db.models import customers, ledger_entries
from engine.identity import normalize_email, normalize_phone
from tests.conftest import DEFAULT_TABLES, empty_database, examples
from tests.streams import T0, Line, PlannedOrder, _shopify_order, _woo_order

AT = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw,expected",
    [(" Jana.Novakova@Example.COM ", "jana.novakova@example.com"), ("no-at-sign", None), ("", None), ("a@b", None),
     ("ｊａｎａ@example.com", "jana@example.com"),
     ("a" * 308 + "@example.com", "a" * 308 + "@example.com"),  # 320 characters: the most an address holds
     ("a" * 309 + "@example.com", None), ("㍿" * 100 + "@example.com", None)],  # (NFKC: 400 characters)
)
def test_emails_are_normalized(raw, expected):
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw,country,expected",
    [("+420 601 123 456", None, "+420601123456"), ("601 123 456", "CZ", "+420601123456"),
     ("0905 123 456", "SK", "+421905123456"), ("12", "CZ", None), ("555-555-SHIP", "US", None)],
)
def test_phones_are_read_as_e164(raw, country, expected):
    assert normalize_phone(raw, country) == expected


def _order(channel, number, email, phone=None, price="10.00"):
    return PlannedOrder(channel, number, email, (Line(Decimal(price), 1),), phone=phone)


def test_the_same_email_in_two_shops_is_one_customer(engine):
    engine.ingest("shopify", "orders/paid", json.dumps(_shopify_order(_order("shopify", 1, "Jana@Example.com"), "paid", T0, [], False)).encode())
    engine.ingest("woocommerce", "order.updated", json.dumps(_woo_order(_order("woocommerce", 2, "jana@example.com"), "completed", T0, [])).encode())
    summary = customer_summary(engine, "jana@example.com")
    assert summary["points"] == 20
    assert set(summary["channels"]) == {"shopify"}  # the WooCommerce buyer was a guest
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 1


def test_a_customer_is_found_by_every_key(engine):
    engine.ingest("shopify", "orders/paid", json.dumps(_shopify_order(_order("shopify", 1, "jana@example.com", "+420601123456"), "paid", T0, [], False)).encode())
    summary = customer_summary(engine, "jana@example.com")
    shopify_id = summary["channels"]["shopify"][0]
    for key in ("JANA@example.com", "+420 601 123 456", "601123456", summary["card_code"],
                summary["card_code"].lower(), summary["referral_code"], str(summary["id"]), f"shopify:{shopify_id}"):
        assert customer_summary(engine, key)["id"] == summary["id"], key
    assert customer_summary(engine, "nobody@example.com") is None


def test_a_later_link_merges_two_customers_without_losing_an_entry(engine):
    # Bought by phone only at one shop, by email only at the other...
    phone_only = _woo_order(_order("woocommerce", 7, "placeholder@example.com", "+420601123456", "30.00"), "completed", T0, [])
    phone_only["billing"]["email"] = ""
    engine.ingest("woocommerce", "order.updated", json.dumps(phone_only).encode())
    engine.ingest("shopify", "orders/paid", json.dumps(_shopify_order(_order("shopify", 1, "jana@example.com", price="12.00"), "paid", T0, [], False)).encode())
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 2
        entries_before = conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()
    # ...then the shop learns both belong to one person.
    engine.ingest("shopify", "customers/update", json.dumps({
        "id": 42, "email": "jana@example.com", "phone": "+420601123456", "first_name": "Jana",
        "last_name": "Nováková", "updated_at": "2026-05-01T10:00:00+02:00",
    }).encode())
    summary = customer_summary(engine, "+420601123456")
    assert summary["email"] == "jana@example.com"
    assert summary["points"] == 42
    assert summary["orders"] == 2
    assert summary["last_name"] == "Nováková"
    with engine.db.connect() as conn:
        entries = conn.execute(select(ledger_entries).order_by(ledger_entries.c.id)).all()
        assert engine.ledger.audit(conn) == []
    # the two original entries remain, plus the pair that moved the balance
    assert len(entries) == entries_before + 2
    assert sorted(e.amount for e in entries if e.reason == "merge") == [-30, 30]


def test_the_card_of_a_customer_merged_into_another_still_earns_at_the_till_for_the_survivor(make_engine):
    """A merge leaves the merged-away customer's card code on their row (the
    plastic card in their wallet), pointing at the survivor: a sale scanned
    with either card earns for the one person, and either card finds them."""
    engine = make_engine(tables={**DEFAULT_TABLES, "connectors": {**DEFAULT_TABLES["connectors"], "pos": {}}})
    phone_only = _woo_order(_order("woocommerce", 7, "placeholder@example.com", "+420601123456", "30.00"),
                            "completed", T0, [])
    phone_only["billing"]["email"] = ""
    engine.ingest("woocommerce", "order.updated", json.dumps(phone_only).encode())
    engine.ingest("shopify", "orders/paid", json.dumps(
        _shopify_order(_order("shopify", 1, "jana@example.com", price="12.00"), "paid", T0, [], False)).encode())
    cards = [customer_summary(engine, key)["card_code"] for key in ("+420601123456", "jana@example.com")]
    engine.ingest("shopify", "customers/update", json.dumps({
        "id": 42, "email": "jana@example.com", "phone": "+420601123456", "first_name": "Jana",
        "updated_at": "2026-05-01T10:00:00+02:00"}).encode())
    with engine.db.connect() as conn:
        merged = conn.execute(select(customers.c.card_code).where(customers.c.merged_into.is_not(None))).scalars().all()
    assert len(merged) == 1 and merged[0] in cards  # one of the two cards is the merged-away customer's

    for number, card in enumerate(cards):
        sale = {"id": f"s{number}", "terminal": "1", "occurred_at": "2026-06-01T09:00:00+02:00",
                "customer": {"card_code": card}, "lines": [{"sku": "KAVA", "quantity": 1, "unit_price": "5.00"}]}
        assert engine.ingest("pos", "sale", json.dumps(sale).encode()).status == "applied"
        assert customer_summary(engine, card)["email"] == "jana@example.com"
    summary = customer_summary(engine, "jana@example.com")
    assert (summary["points"], summary["orders"]) == (30 + 12 + 5 + 5, 4)
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).where(customers.c.merged_into.is_(None))).scalar_one() == 1
        assert engine.ledger.audit(conn) == []


def test_customers_with_different_emails_are_never_merged_by_a_shared_phone(engine):
    a = _shopify_order(_order("shopify", 1, "jana@example.com", "+420601123456"), "paid", T0, [], False)
    b = _woo_order(_order("woocommerce", 2, "petr@example.com", "+420601123456"), "completed", T0, [])
    engine.ingest("shopify", "orders/paid", json.dumps(a).encode())
    engine.ingest("woocommerce", "order.updated", json.dumps(b).encode())
    assert customer_summary(engine, "jana@example.com")["id"] != customer_summary(engine, "petr@example.com")["id"]
    assert customer_summary(engine, "petr@example.com")["points"] == 10


def test_a_guest_order_without_email_or_phone_is_kept_until_someone_claims_it(engine):
    guest = _woo_order(_order("woocommerce", 9, "x@example.com"), "completed", T0, [])
    guest["billing"]["email"] = ""
    guest["billing"]["phone"] = ""
    outcome = engine.ingest("woocommerce", "order.updated", json.dumps(guest).encode())
    assert outcome.status == "applied"
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one() == 0


def test_a_merged_customers_shared_phone_with_another_email_makes_a_new_customer(engine):
    """The careful path (a merged customer among the matches) still refuses a
    household's phone and creates the new person."""
    with engine.db.begin() as conn:
        a = engine.identity.resolve(conn, "pos", {"phone": "+420601123456"}, AT)
        b = engine.identity.resolve(conn, "shopify", {"email": "jana@example.com", "external_id": "7"}, AT)
        # one delivery joins them: b keeps, a is merged into b
        assert engine.identity.resolve(conn, "shopify", {"email": "jana@example.com", "phone": "+420601123456"}, AT) == b
    with engine.db.begin() as conn:
        petr = engine.identity.resolve(conn, "woocommerce", {"email": "petr@example.com", "phone": "+420601123456"}, AT)
    assert petr not in (a, b)
    assert customer_summary(engine, "petr@example.com")["phone"] is None
    assert customer_summary(engine, "+420601123456")["id"] == b


def test_a_key_of_unicode_digits_finds_nobody_instead_of_failing(engine):
    with engine.db.connect() as conn:
        assert engine.identity.find(conn, "¹") is None
        assert engine.identity.find(conn, "١٢٣") is None  # Arabic-Indic digits


def test_a_key_no_database_stores_finds_nobody_instead_of_failing(engine):
    """PostgreSQL refuses a NUL character in any text and neither database
    takes a lone surrogate: such a key can match nothing stored."""
    engine.ingest("shopify", "orders/paid", json.dumps(_shopify_order(_order("shopify", 1, "jana@example.com", "+420601123456"), "paid", T0, [], False)).encode())
    card = customer_summary(engine, "jana@example.com")["card_code"]
    with engine.db.connect() as conn:
        for key in ("jana@example.com\x00", "+420601123456\x00", card + "\x00", "shopify:1\x00", "jana\ud800@example.com"):
            assert engine.identity.find(conn, key) is None, key
    assert customer_summary(engine, "jana\x00@example.com") is None


def _profile(first: str, consent: str | None, updated_at: str) -> bytes:
    """Shopify's customers/update delivery (the recorded one), renamed and dated."""
    from tests.conftest import load_contract

    body = dict(load_contract("shopify/webhooks/customers_update.delivery-2024-10.json")["body"])
    body.update(first_name=first, updated_at=updated_at,
                email_marketing_consent=None if consent is None else {"state": consent, "opt_in_level": "single_opt_in",
                                                                        "consent_updated_at": updated_at})
    return json.dumps(body).encode()


@pytest.mark.parametrize("late", [False, True])
def test_an_older_profile_delivered_late_does_not_undo_a_newer_name_or_consent(engine, late):
    """The customer unsubscribed and changed their name on 2 January; the
    1 January snapshot is delivered last (a retried webhook): the 2 January
    values stand, in either arrival order."""
    older = _profile("Robert", "subscribed", "2022-01-01T10:00:00-05:00")
    newer = _profile("Bob", "unsubscribed", "2022-01-02T10:00:00-05:00")
    for body in ((newer, older) if late else (older, newer)):
        assert engine.ingest("shopify", "customers/update", body).status == "applied"
    bob = customer_summary(engine, "bob@biller.com")
    with engine.db.connect() as conn:
        consent = conn.execute(select(customers.c.accepts_marketing).where(customers.c.id == bob["id"])).scalar_one()
    assert (bob["first_name"], consent) == ("Bob", False)


def test_a_field_nobody_gave_is_taken_from_an_older_snapshot_and_a_newer_one_still_wins(engine):
    first = _profile("Bob", None, "2022-01-03T10:00:00-05:00")  # no consent given
    late = _profile("Robert", "subscribed", "2022-01-01T10:00:00-05:00")
    assert engine.ingest("shopify", "customers/update", first).status == "applied"
    assert engine.ingest("shopify", "customers/update", late).status == "applied"
    with engine.db.connect() as conn:
        row = conn.execute(select(customers.c.first_name, customers.c.accepts_marketing)).one()
    assert tuple(row) == ("Bob", True)  # the name was newer; the consent is all we know
    assert engine.ingest("shopify", "customers/update",
                         _profile("Bob", "unsubscribed", "2022-01-04T10:00:00-05:00")).status == "applied"
    with engine.db.connect() as conn:
        assert conn.execute(select(customers.c.accepts_marketing)).scalar_one() is False


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(snapshots=st.lists(st.tuples(st.sampled_from(["Bob", "Robert", "Bobby"]),
                                    st.sampled_from([None, "subscribed", "unsubscribed"])),
                          min_size=1, max_size=6),
       order=st.randoms(use_true_random=False))
def test_any_arrival_order_of_profiles_ends_with_the_newest_values(engine, snapshots, order):
    """Profiles one day apart, delivered in any order: the name is the newest
    profile's, and the consent the newest that gave one."""
    empty_database(engine)
    bodies = [_profile(name, consent, f"2022-01-{day + 1:02d}T10:00:00-05:00")
              for day, (name, consent) in enumerate(snapshots)]
    order.shuffle(bodies)
    for body in bodies:
        assert engine.ingest("shopify", "customers/update", body).status == "applied"
    with engine.db.connect() as conn:
        row = conn.execute(select(customers.c.first_name, customers.c.accepts_marketing)).one()
    given = [consent for _, consent in snapshots if consent is not None]
    assert tuple(row) == (snapshots[-1][0], given[-1] == "subscribed" if given else None)
