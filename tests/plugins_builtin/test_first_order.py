"""[plugins.first-order-bonus]: the rule (plugins/first_order.py), and the
engine asking it again about the customer's other orders (``history``)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

from engine.orders import OrderView
from plugins.first_order import first_order_bonus, first_paid_order
from tests.plugins_builtin.shop import planned, points, programme, send
from tests.streams import T0, _shopify_order, _woo_order

BONUS = {"points": 100, "min_order": "20.00"}


def order(
    external_id: str, hours: float, eligible: str = "30.00", *, channel: str = "shopify", **state
) -> OrderView:
    """An order as a decision hook sees it, paid ``hours`` after T0."""
    amount = Decimal(eligible)
    values = {
        "paid": True,
        "cancelled": False,
        "status": "paid",
        "eligible": amount,
        "gross_eligible": max(amount, Decimal("30.00")),
        "refunded": Decimal(0),
        "paid_at": T0 + timedelta(hours=hours),
        **state,
    }
    return OrderView(id=0, channel=channel, external_id=external_id, **values)


def bonuses(orders: list[OrderView], points: int = 100, min_order: str = "20.00") -> dict[str, int]:
    """What each order earns, each seeing the others as its history."""
    return {
        o.external_id: first_order_bonus(
            o, [h for h in orders if h is not o], points, Decimal(min_order)
        )
        for o in orders
    }


def test_the_earliest_paid_order_earns_the_bonus_whatever_order_they_are_seen_in():
    orders = [order("a", 5), order("b", 1), order("c", 3)]
    for seen in itertools.permutations(orders):
        assert bonuses(list(seen)) == {"a": 0, "b": 100, "c": 0}


def test_an_unpaid_or_cancelled_order_is_not_first_and_the_next_one_is():
    orders = [order("a", 1, cancelled=True, eligible="0"), order("b", 2, paid=False), order("c", 3)]
    assert bonuses(orders) == {"a": 0, "b": 0, "c": 100}
    assert first_paid_order([]) is None


def test_a_first_order_below_the_minimum_earns_nothing_and_gives_its_chance_to_no_other():
    assert bonuses([order("a", 1, "19.99"), order("b", 2, "50.00")]) == {"a": 0, "b": 0}
    assert bonuses([order("a", 1, "20.00")]) == {"a": 100}


def test_a_refund_below_the_minimum_or_in_full_takes_the_bonus_back():
    assert bonuses([order("a", 1, "15.00", refunded=Decimal("15.00"))]) == {"a": 0}
    refunded = order("a", 1, "0", status="refunded", refunded=Decimal("30.00"))
    assert bonuses([refunded, order("b", 2)]) == {"a": 0, "b": 0}
    assert bonuses([order("a", 1, "0")], min_order="0") == {"a": 0}


def test_orders_paid_at_the_same_moment_are_told_apart_by_channel_then_id():
    same = [order("9", 1, channel="woocommerce"), order("2", 1), order("10", 1)]
    assert bonuses(same) == {"9": 0, "2": 0, "10": 100}  # "shopify" < "woocommerce"; "10" < "2"


def test_the_bonus_goes_to_the_first_paid_order_once_whatever_order_deliveries_come_in(make_engine):
    engine = make_engine(programme(**{"first-order-bonus": BONUS}))
    first, second = planned("shopify", 1), planned("woocommerce", 2)  # 48.00 each
    send(
        engine,
        "woocommerce",
        "order.updated",
        _woo_order(second, "processing", T0 + timedelta(days=2), []),
    )
    send(
        engine,
        "shopify",
        "orders/paid",
        _shopify_order(first, "paid", T0 + timedelta(hours=1), [], False),
    )
    assert points(engine) == 48 + 48 + 100

    cancelled = _shopify_order(first, "refunded", T0 + timedelta(days=3), [], True)
    send(engine, "shopify", "orders/cancelled", cancelled)
    assert points(engine) == 48 + 100  # a cancelled order never happened: the second is first


def test_whatever_the_order_of_deliveries_the_bonus_is_paid_once_to_the_first_standing_order(make_engine):
    import random

    from tests.conftest import empty_database
    from tests.streams import EMAIL_FOR_TESTS, Line, PlannedOrder, deliveries, expected_by_email

    engine = make_engine(programme(**{"first-order-bonus": BONUS}))
    for seed in range(6):
        empty_database(engine)
        rng = random.Random(seed)
        planned_orders = [
            PlannedOrder(rng.choice(["shopify", "woocommerce"]), n, EMAIL_FOR_TESTS,
                         (Line(Decimal(rng.choice(["12.00", "25.00", "40.00"])), 1),),
                         cancelled=rng.random() < 0.3)
            for n in range(1, 5)
        ]
        stream = [d for o in planned_orders for d in deliveries(o)]
        rng.shuffle(stream)
        for channel, topic, body in stream:
            assert engine.ingest(channel, topic, body).status in ("applied", "duplicate")
        standing = [o for o in planned_orders if not o.cancelled]
        # deliveries() pays order n at T0 + 1 hour for every n: the first is the
        # lowest channel, then order id, among those that stand
        first = min(standing, key=lambda o: (o.channel, str(o.number if o.channel == "woocommerce"
                                                                else 5_000_000_000_000_000_000 + o.number)),
                    default=None)
        bonus = 100 if first is not None and first.gross >= Decimal("20.00") else 0
        assert points(engine, EMAIL_FOR_TESTS) == expected_by_email(planned_orders)[EMAIL_FOR_TESTS] + bonus, seed
