"""The till's deliveries as canonical events: every topic, and bad input
refused with a sentence that says what is wrong."""

from __future__ import annotations

import pytest

from connectors.base import BadDelivery
from connectors.pos import PosConnector
from engine.events import load_event

AT = "2026-11-20T09:00:00+01:00"
SALE = {"id": "42", "terminal": "3", "location": "Náměstí", "occurred_at": AT,
        "customer": {"card_code": "ABCD2345EFGH"},
        "lines": [{"sku": "KAVA-1", "name": "Káva ☕", "quantity": 2, "unit_price": "3.50", "discount": "0.50"}],
        "reward_codes": ["XYZ"]}


def events(topic, payload):
    return [load_event(e) for e in PosConnector({}).translate(topic, payload, {})]


def test_a_sale_is_a_paid_order_keyed_by_terminal_and_id():
    (event,) = events("sale", SALE)
    assert (event["type"], event["order"]["id"], event["order"]["status"]) == ("order.paid", "3:42", "paid")
    assert event["order"]["lines"][0]["name"] == "Káva ☕" and str(event["order"]["lines"][0]["discount"]) == "0.50"
    assert event["order"]["discount_codes"] == ["XYZ"]
    assert PosConnector({}).delivery_key("sale", SALE, {}, b"") == "sale:3:42"


def test_a_void_cancels_the_sale_a_visit_stamps_an_enrolment_upserts():
    (void,) = events("void", {"sale_id": "42", "terminal": "3", "occurred_at": AT})
    assert (void["type"], void["order"]["id"]) == ("order.cancelled", "3:42")
    (visit,) = events("visit", {"id": "v1", "terminal": "3", "occurred_at": AT, "customer": {"phone": "+420601123456"}})
    assert visit["type"] == "visit" and visit["visit"]["id"] == "3:v1"
    (enrol,) = events("enrol", {"id": "e1", "terminal": "3", "occurred_at": AT,
                                "customer": {"email": "jana@example.cz", "first_name": "Jana"}})
    assert enrol["type"] == "customer.upserted" and enrol["customer"]["first_name"] == "Jana"


@pytest.mark.parametrize(("change", "says"), [
    ({"customer": {}}, "names no customer"),
    ({"lines": []}, "no lines"),
    ({"lines": [{"quantity": -1, "unit_price": "1"}]}, "quantity"),
    ({"lines": [{"quantity": 1, "unit_price": "abc"}]}, "not a decimal"),
    ({"lines": [{"quantity": 1, "unit_price": "1e12"}]}, "between 0 and"),
    ({"occurred_at": "2026-11-20T09:00:00"}, "no UTC offset"),
    ({"occurred_at": "yesterday"}, "not an ISO 8601"),
    ({"terminal": None}, "'terminal'"),
    ({"reward_codes": "XYZ"}, "reward_codes"),
])
def test_bad_sales_are_refused_saying_why(change, says):
    with pytest.raises(BadDelivery, match=says):
        PosConnector({}).translate("sale", {**SALE, **change}, {})
