"""Concurrent deliveries for the same customer and the same order, and ones
that merge two customers into one, from many
threads at once, on PostgreSQL (row locks) and on SQLite (one writer at a time):
the balances are the sequential ones and the audit is clean."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from engine.customers import customer_summary
from engine.db.models import customers
from tests.streams import Line, PlannedOrder, deliveries, expected_by_email

EMAILS = ["jana@example.com", "petr@example.cz"]


def _stream(n_orders: int, seed: int):
    rng = random.Random(seed)
    planned = [
        PlannedOrder(
            channel=rng.choice(["shopify", "woocommerce"]),
            number=n,
            email=rng.choice(EMAILS),
            lines=(Line(Decimal(rng.randint(100, 9999)) / 100, rng.randint(1, 3)),),
            refunds=(Decimal("1.50"),) if n % 3 == 0 else (),
            cancelled=n % 7 == 0,
        )
        for n in range(1, n_orders + 1)
    ]
    stream = [d for order in planned for d in deliveries(order)]
    stream = stream + stream[: len(stream) // 2]  # resent deliveries race their originals
    rng.shuffle(stream)
    return planned, stream


def _run_concurrently(engine, stream, workers=8):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda d: engine.ingest(*d), stream))


def _engine_on(backend: str, make_engine, request):
    """An engine on PostgreSQL (the suite's database) or on an SQLite file of its own."""
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{request.getfixturevalue('tmp_path') / 'concurrent.sqlite3'}"
    return make_engine(url=url)


@pytest.mark.parametrize("seed", [3, 5, 11])
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_deliveries_for_one_customer_end_in_the_sequential_balances(backend, seed, make_engine, request):
    engine = _engine_on(backend, make_engine, request)
    planned, stream = _stream(24, seed=seed)
    outcomes = _run_concurrently(engine, stream)
    failed = [o for o in outcomes if o.status == "failed"]
    assert not failed, failed
    for email, points in expected_by_email(planned).items():
        assert customer_summary(engine, email)["points"] == points
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
        # racing creations of the same person end in one customer, not a merge later
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == len(EMAILS)


#: (email, phone) of three people
PEOPLE = [(f"person{n}@example.com", f"+4206011234{n:02d}") for n in range(3)]


def _merging_stream(n_orders: int, seed: int):
    """Each person first buys in the Shopify shop under their email alone and
    in the WooCommerce shop as a guest who gives only their phone: two
    customers (``first``, sent one by one). Then, all at once and resent, more
    of both, and Shopify orders naming the email and the phone together,
    which merge the two (each person has at least one)."""
    rng = random.Random(seed)
    planned = []
    for n in range(1, n_orders + 1):
        email, phone = PEOPLE[(n - 1) % len(PEOPLE)] if n <= 3 * len(PEOPLE) else rng.choice(PEOPLE)
        step = (n - 1) // len(PEOPLE)  # 0: email alone, 1: phone alone, 2: both, then any
        shopify = step in (0, 2) or (step > 2 and rng.random() < 0.5)
        with_phone = step != 0 and (step in (1, 2) or not shopify or rng.random() < 0.5)
        planned.append((email, PlannedOrder(
            channel="shopify" if shopify else "woocommerce", number=n, email=email if shopify else "",
            phone=phone if with_phone else None, lines=(Line(Decimal(rng.randint(100, 9999)) / 100, rng.randint(1, 3)),),
            refunds=(Decimal("1.50"),) if n % 3 == 0 else (), cancelled=n % 7 == 0)))
    first = [deliveries(order)[0] for _, order in planned[: 2 * len(PEOPLE)]]
    stream = [d for _, order in planned for d in deliveries(order)]
    stream = stream + stream[: len(stream) // 2]
    rng.shuffle(stream)
    return planned, first, stream


@pytest.mark.parametrize("seed", [2, 7])
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_deliveries_that_merge_customers_lose_no_points(backend, seed, make_engine, request):
    engine = _engine_on(backend, make_engine, request)
    planned, first, stream = _merging_stream(30, seed=seed)
    assert all(engine.ingest(*delivery).status == "applied" for delivery in first)
    outcomes = _run_concurrently(engine, stream)
    failed = [o for o in outcomes if o.status == "failed"]
    assert not failed, failed
    for email, _ in PEOPLE:
        expected = sum(order.expected_points() for owner, order in planned if owner == email)
        assert customer_summary(engine, email)["points"] == expected
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
        merged = customers.c.merged_into.is_not(None)
        live, gone = conn.execute(select(func.count().filter(~merged), func.count().filter(merged))).one()
        assert (live, gone) == (len(PEOPLE), len(PEOPLE))  # one customer a person, their phone's merged in
