"""PRODUCT.md's invariants 1, 2, 3 and 5, proved with hypothesis on generated
multi-channel streams of real Shopify and WooCommerce bodies:

- any duplication, interleaving and reordering of the deliveries ends in the
  balances the ordered stream ends in, which are the model's (1, 2);
- balance = sum of the ledger for every account, after every stream (3);
- every delivery answered is stored and applied (5).
"""

from __future__ import annotations

import shutil
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.customers import customer_summary
from tests.conftest import DEFAULT_TABLES, POSTGRES_URL, examples, reset_postgres
from tests.streams import (
    Line,
    PlannedOrder,
    deliveries,
    expected_by_email,
    ingest_all,
    shuffled_with_resends,
)

EMAILS = ["jana@example.com", "petr@example.cz", "zuzana@example.sk"]

money = st.integers(min_value=0, max_value=20_000).map(lambda cents: Decimal(cents) / 100)


@st.composite
def lines(draw):
    price = draw(money)
    quantity = draw(st.integers(1, 3))
    discount = draw(st.integers(0, int(price * quantity * 100))) / Decimal(100)
    return Line(price, quantity, discount, gift_card=draw(st.integers(0, 5)) == 0)


@st.composite
def orders(draw, number):
    order_lines = tuple(draw(st.lists(lines(), min_size=1, max_size=3)))
    paid = draw(st.integers(0, 5)) > 0
    gross = sum((line.eligible for line in order_lines), Decimal(0))
    refunds = []
    left = gross
    for _ in range(draw(st.integers(0, 2))):
        if left <= 0:
            break
        amount = draw(st.integers(1, int(left * 100))) / Decimal(100)
        refunds.append(amount)
        left -= amount
    channel = draw(st.sampled_from(["shopify", "woocommerce"]))
    deleted = None  # a WooCommerce refund deleted in the shop afterwards
    if channel == "woocommerce" and paid and refunds and draw(st.integers(0, 3)) == 0:
        deleted = draw(st.integers(0, len(refunds) - 1))
    return PlannedOrder(
        channel=channel,
        number=number,
        email=draw(st.sampled_from(EMAILS)),
        lines=order_lines,
        paid=paid,
        refunds=tuple(refunds),
        deleted=deleted,
        cancelled=draw(st.integers(0, 6)) == 0,
    )


@st.composite
def programmes(draw):
    n = draw(st.integers(1, 4))
    planned = [draw(orders(number)) for number in range(1, n + 1)]
    ordered = [d for order in planned for d in deliveries(order)]
    shuffled = shuffled_with_resends(draw, ordered, 4)
    return planned, ordered, shuffled


def _fresh(make_engine, tmp_path, sqlite_template, tables=None, counter=[0], extra_plugins=()):  # noqa: B006 - a per-process counter
    if POSTGRES_URL:
        engine = make_engine(tables=tables, extra_plugins=extra_plugins)
        reset_postgres(engine.db)
        return engine
    counter[0] += 1
    path = tmp_path / f"example-{counter[0]}.sqlite3"
    shutil.copy(sqlite_template, path)
    return make_engine(tables=tables, url=f"sqlite:///{path}", extra_plugins=extra_plugins)


def _points_by_email(engine) -> dict[str, int]:
    result = {}
    for email in EMAILS:
        summary = customer_summary(engine, email)
        if summary is not None:
            result[email] = summary["points"]
    return result


def _audit_clean(engine) -> bool:
    with engine.db.connect() as conn:
        return engine.ledger.audit(conn) == []


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(programme=programmes())
def test_any_reordering_and_duplication_ends_in_the_balances_of_the_ordered_stream(
    programme, make_engine, tmp_path, _sqlite_template
):
    planned, ordered, shuffled = programme
    expected = {e: p for e, p in expected_by_email(planned).items()}

    engine = _fresh(make_engine, tmp_path, _sqlite_template)
    outcomes = ingest_all(engine, ordered)
    assert {o.status for o in outcomes} <= {"applied", "duplicate"}, [o for o in outcomes if o.status == "failed"]
    assert _points_by_email(engine) == expected
    assert _audit_clean(engine)
    engine.db.dispose()

    engine = _fresh(make_engine, tmp_path, _sqlite_template)
    outcomes = ingest_all(engine, shuffled)
    assert {o.status for o in outcomes} <= {"applied", "duplicate"}, [o for o in outcomes if o.status == "failed"]
    assert _points_by_email(engine) == expected
    assert _audit_clean(engine)


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(programme=programmes(), batch=st.integers(1, 7))
def test_a_batched_replay_of_a_shuffled_stream_ends_in_the_same_balances(
    programme, batch, make_engine, tmp_path, _sqlite_template
):
    planned, _ordered, shuffled = programme
    engine = _fresh(make_engine, tmp_path, _sqlite_template)
    for start in range(0, len(shuffled), batch):
        chunk = shuffled[start : start + batch]
        for channel in ("shopify", "woocommerce"):
            part = [(topic, body, None) for ch, topic, body in chunk if ch == channel]
            if part:
                outcomes = engine.ingest_batch(channel, part)
                assert all(o.status in ("applied", "duplicate") for o in outcomes), outcomes
    assert _points_by_email(engine) == expected_by_email(planned)
    assert _audit_clean(engine)


def test_replaying_every_stored_delivery_changes_nothing(engine):
    planned = [
        PlannedOrder("shopify", 1, "jana@example.com", (Line(Decimal("40.00"), 2, Decimal("5.00")),), refunds=(Decimal("12.50"),)),
        PlannedOrder("woocommerce", 2, "jana@example.com", (Line(Decimal("19.99"), 1),), refunds=(Decimal("4.99"),)),
    ]
    stream = [d for order in planned for d in deliveries(order)]
    ingest_all(engine, stream)
    before = _points_by_email(engine)
    assert before == {"jana@example.com": 62 + 15}  # floor(80 - 5 - 12.50) + (19.99 - 4.99)
    from engine import inbox

    with engine.db.connect() as conn:
        ids = [row.id for row in inbox.listing(conn, limit=1000)]
    assert len(ids) == len(stream)
    for inbox_id in ids:
        assert engine.replay(inbox_id).status == "applied"
    assert _points_by_email(engine) == before
    assert _audit_clean(engine)


# Every rule whose outcome depends only on the orders as they stand (not on the
# order they were applied in): points with expiry lots, a stamp card and its
# rewards, SKU multipliers and the first-order bonus.
ORDER_INDEPENDENT = {
    **DEFAULT_TABLES,
    "rules": {
        "points": {"per_unit": 1},
        "expiry": {"months": 12},
        "stamps": {"sku0": {"required": 3, "per": "item", "skus": ["SKU-0"], "reward": "free"}},
    },
    "rewards": {"free": {"kind": "free_product", "sku": "SKU-0"}},
    "plugins": {
        "sku-multipliers": {"rules": [{"skus": ["SKU-1"], "multiplier": 2}]},
        "first-order-bonus": {"points": 50, "min_order": "10.00"},
    },
}


def _state(engine) -> dict:
    from sqlalchemy import func, select

    from engine.db.models import customers, rewards

    found = {}
    for email in EMAILS:
        summary = customer_summary(engine, email)
        if summary is not None:
            found[email] = (summary["points"], summary["stamps"])
    with engine.db.connect() as conn:
        issued = conn.execute(
            select(customers.c.email, func.count())
            .join(rewards, rewards.c.customer_id == customers.c.id)
            .where(rewards.c.status == "issued")
            .group_by(customers.c.email)
        ).all()
    return {"balances": found, "rewards": dict(issued)}


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(programme=programmes())
def test_with_stamp_cards_campaigns_and_the_first_order_bonus_any_reordering_ends_the_same(
    programme, make_engine, tmp_path, _sqlite_template
):
    _planned, ordered, shuffled = programme
    engine = _fresh(make_engine, tmp_path, _sqlite_template, ORDER_INDEPENDENT)
    assert all(o.status in ("applied", "duplicate") for o in ingest_all(engine, ordered))
    expected = _state(engine)
    assert _audit_clean(engine)
    engine.db.dispose()

    engine = _fresh(make_engine, tmp_path, _sqlite_template, ORDER_INDEPENDENT)
    assert all(o.status in ("applied", "duplicate") for o in ingest_all(engine, shuffled))
    assert _state(engine) == expected
    assert _audit_clean(engine)
