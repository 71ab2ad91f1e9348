"""engine.orders: an order's refunds merged from every report of them, in any
order; refunds read from their lines win over the same refunds known by their
totals; states stored before keep their numbers."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import load_event
from engine.orders import as_of, merge, undetailed_refunds, view
from tests.conftest import examples

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

PAID = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)
MADE = PAID + timedelta(days=1)  # when the refund was made
SHOWN = PAID + timedelta(days=3)  # the snapshot that first shows it


def _event(key: str, at: datetime, refunds: list[dict]) -> dict:
    """A WooCommerce-like snapshot: 18.00 of lines, no tax in them."""
    return load_event({
        "type": "order.paid", "channel": "woocommerce", "idempotency_key": key, "occurred_at": at.isoformat(),
        "order": {"id": "6001", "version": at.isoformat(), "status": "paid", "currency": "USD",
                  "lines": [{"id": "315", "quantity": 2, "unit_price": "3.00", "subtotal": "6.00"},
                            {"id": "316", "quantity": 1, "unit_price": "12.00", "subtotal": "12.00"}],
                  "refunds": refunds},
    })


PAID_EVENT = _event("order:6001:paid", PAID, [])
WEBHOOK = _event("order:6001:shown", SHOWN, [{"id": "801", "amount": "12.90"}])  # its total: tax in it
DETAILED = _event("order:6001:shown:refunds:ab", SHOWN, [
    {"id": "801", "amount": "12.00", "tax": "0.90", "occurred_at": MADE.isoformat(), "itemized": True,
     "lines": [{"line_id": "316", "quantity": 1, "amount": "12.00"}]}])


def _state(*events: dict) -> dict | None:
    state = None
    for event in events:
        state = merge(state, event)
    return state


def _eligible(state: dict, at: datetime | None = None) -> Decimal:
    return view(1, "woocommerce", "6001", as_of(state, at) if at else state, None).eligible


def test_the_refund_read_from_its_lines_wins_in_any_order_and_twice_changes_nothing():
    states = [_state(*events) for events in itertools.permutations([PAID_EVENT, WEBHOOK, DETAILED])]
    states.append(_state(PAID_EVENT, DETAILED, WEBHOOK, DETAILED, WEBHOOK))
    assert all(state == states[0] for state in states)
    assert _eligible(states[0]) == Decimal("6.00")  # 18.00 - 12.00, not - 12.90
    assert _eligible(_state(PAID_EVENT, WEBHOOK)) == Decimal("5.10")  # the webhook alone


def test_the_refund_counts_from_its_own_time_over_the_snapshot_that_showed_it():
    for state in (_state(PAID_EVENT, WEBHOOK, DETAILED), _state(DETAILED, PAID_EVENT, WEBHOOK)):
        assert _eligible(state, MADE - timedelta(seconds=1)) == Decimal("18.00")
        assert _eligible(state, MADE) == Decimal("6.00")
    alone = _state(PAID_EVENT, WEBHOOK)
    assert _eligible(alone, MADE) == Decimal("18.00") and _eligible(alone, SHOWN) == Decimal("5.10")


def test_states_stored_before_keep_their_numbers_and_take_the_itemized_refund():
    stored = {  # as merge wrote them before refunds were itemized
        **_state(PAID_EVENT),
        "refunds": {"801": "12.90", "802": ["1.21", "0.21"]},
        "refund_at": {"801": SHOWN.isoformat(), "802": SHOWN.isoformat()},
    }
    assert _eligible(stored) == Decimal("18.00") - Decimal("12.90") - Decimal("1.21")
    assert _eligible(stored, MADE) == Decimal("18.00")
    assert merge(stored, PAID_EVENT)["refunds"] == stored["refunds"]  # a stale snapshot: nothing new

    updated = merge(stored, DETAILED)
    assert updated["refunds"] == {"801": ["12.00", "0.90", "itemized"], "802": ["1.21", "0.21"]}
    assert _eligible(updated) == Decimal("18.00") - Decimal("12.00") - Decimal("1.21")
    assert _eligible(updated, MADE) == Decimal("18.00") - Decimal("12.00")
    assert merge(updated, WEBHOOK)["refunds"] == updated["refunds"]


# -- Refunds still known only by their totals (engine.reconcile comes back for them) ---

SECOND = PAID + timedelta(days=2)  # when a second refund, of line 315, was made
BOTH_SHOWN = _event("order:6001:both", SHOWN, [{"id": "801", "amount": "12.90"}, {"id": "802", "amount": "3.23"}])
READ_801 = {"id": "801", "amount": "12.00", "tax": "0.90", "occurred_at": MADE.isoformat(), "itemized": True,
            "lines": [{"line_id": "316", "quantity": 1, "amount": "12.00"}]}
# 801 read from its lines; 802 listed by the order but not returned by the shop
ONE_READ = _event("order:6001:both:refunds:cd", SHOWN, [READ_801, {"id": "802", "amount": "3.23"}])
# both read: 802 as an amount only (its lines moved no money), still with its own time
BOTH_READ = _event("order:6001:both:refunds:ef", SHOWN, [
    READ_801, {"id": "802", "amount": "3.23", "occurred_at": SECOND.isoformat()}])
REPORTS = [PAID_EVENT, WEBHOOK, DETAILED, BOTH_SHOWN, ONE_READ, BOTH_READ]


def test_a_refund_is_undetailed_until_a_report_of_it_says_when_it_was_made():
    assert undetailed_refunds(_state(PAID_EVENT)) == []
    assert undetailed_refunds(_state(PAID_EVENT, BOTH_SHOWN)) == ["801", "802"]
    assert undetailed_refunds(_state(BOTH_SHOWN, ONE_READ)) == ["802"]
    assert undetailed_refunds(_state(ONE_READ, BOTH_SHOWN, BOTH_READ)) == []  # an amount only, read, counts
    stored = {"refunds": {"801": "12.90"}, "refund_at": {"801": SHOWN.isoformat()}}  # as kept before
    assert undetailed_refunds(stored) == ["801"] and undetailed_refunds({}) == []


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.sampled_from(REPORTS), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_reports_of_an_orders_refunds_in_any_order_and_repeated_leave_the_same_ones_undetailed(reports, random):
    """Whatever order the webhooks and reconciliations of an order come in,
    and however often, the state (so the balances) is the same, and a refund
    is left for a later reconciliation exactly when no report read it."""
    shuffled = reports + random.sample(reports, len(reports))
    random.shuffle(shuffled)
    state = _state(*reports)
    assert _state(*shuffled) == state
    listed = {refund["id"] for report in reports for refund in report["order"]["refunds"]}
    read = {refund["id"] for report in reports for refund in report["order"]["refunds"] if refund["occurred_at"]}
    assert set(undetailed_refunds(state)) == listed - read
    assert len(undetailed_refunds(state)) == len(set(undetailed_refunds(state)))


def _shipped(key: str, at: datetime, address: str | None) -> dict:
    event = _event(key, at, [])
    return {**event, "customer": {**event["customer"], "address": address}}


def test_the_address_is_the_newest_snapshot_s_in_any_order():
    """What the referral guard reads (engine.referrals): a refund's own
    delivery (no lines, no address) or an older snapshot change nothing."""
    first = _shipped("a", PAID, "1 Elm Street")
    moved = _shipped("b", SHOWN, "2 Elm Street")
    refund = load_event({"type": "order.refunded", "channel": "shopify", "idempotency_key": "c",
                         "occurred_at": (SHOWN + timedelta(days=1)).isoformat(),
                         "order": {"id": "6001", "refunds": [{"id": "801", "amount": "1.00"}]}})
    for events in itertools.permutations([first, moved, refund]):
        state = _state(*events)
        assert view(1, "woocommerce", "6001", state, None).address == "2 Elm Street"
    assert view(1, "woocommerce", "6001", _state(PAID_EVENT), None).address is None


def _listing(key: str, at: datetime, refunds: list[dict], listed_at: datetime | None = None) -> dict:
    event = _event(key, at, refunds)
    event["order"]["refunds_complete"] = True  # (as WooCommerce's translation says)
    event["order"]["refunds_listed_at"] = listed_at
    return event


def test_a_refund_deleted_in_the_shop_stops_counting_whatever_the_order_and_an_old_snapshot_does_not_bring_it_back():
    listed = _listing("a", SHOWN, [{"id": "801", "amount": "12.90"}])
    after = _listing("b", SHOWN + timedelta(days=1), [])  # the order changed since, 801 gone
    for events in itertools.permutations([PAID_EVENT, listed, after]):
        state = _state(*events, listed)  # (the old webhook resent last)
        assert state["refunds"] == {} and list(state["refunds_deleted"]) == ["801"]
        assert _eligible(state) == Decimal("18.00")
        assert undetailed_refunds(state) == []


def test_an_order_read_again_with_its_version_unchanged_says_from_when_its_list_held():
    """WooCommerce leaves date_modified as it was when a refund is deleted:
    the same version read again a day later lists it no more."""
    listed = _listing("a", SHOWN, [{"id": "801", "amount": "12.90"}])
    same_version = _listing("b", SHOWN, [])
    assert _eligible(_state(PAID_EVENT, listed, same_version)) == Decimal("5.10")  # (no saying which is newer)
    read_later = _listing("c", SHOWN, [], listed_at=SHOWN + timedelta(days=1))
    for events in itertools.permutations([PAID_EVENT, listed, read_later]):
        assert _eligible(_state(*events)) == Decimal("18.00")
    made_after = _listing("d", SHOWN + timedelta(days=2), [{"id": "802", "amount": "1.00"}])
    assert _eligible(_state(PAID_EVENT, read_later, made_after)) == Decimal("17.00")  # a refund made after: counts


def test_a_shopify_snapshot_never_deletes_a_refund():
    listed = _event("a", SHOWN, [{"id": "801", "amount": "12.90"}])
    after = _event("b", SHOWN + timedelta(days=1), [])  # (no refunds_complete)
    assert _eligible(_state(PAID_EVENT, listed, after)) == Decimal("5.10")
