"""Concurrent deliveries for the same customer and the same order, from many
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


@pytest.mark.parametrize("seed", [3, 5, 11])
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_deliveries_for_one_customer_end_in_the_sequential_balances(backend, seed, make_engine, request):
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{request.getfixturevalue('tmp_path') / 'concurrent.sqlite3'}"
    engine = make_engine(url=url)
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
