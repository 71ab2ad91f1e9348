"""The ledger's own rules: integer amounts, unique keys, lots with expiry dates
consumed soonest-expiring first, and the audit that finds drift."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from engine.db import as_utc
from engine.db.models import accounts, lots
from engine.ledger import add_months

AT = datetime(2026, 1, 31, 12, tzinfo=UTC)


def _customer(engine, email="jana@example.com") -> int:
    with engine.db.begin() as conn:
        return engine.identity.resolve(conn, "pos", {"email": email}, AT)


def test_months_are_added_on_the_calendar():
    assert add_months(AT, 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert add_months(AT, 12) == datetime(2027, 1, 31, 12, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 30, tzinfo=UTC), 3) == datetime(2027, 2, 28, tzinfo=UTC)


def test_amounts_must_be_integers(engine):
    customer = _customer(engine)
    with engine.db.begin() as conn, pytest.raises(TypeError, match="integers"):
        engine.ledger.post(conn, customer, "points", 1.5, "adjust", "t", None, "k1", AT)


def test_a_key_posts_once(engine):
    customer = _customer(engine)
    with engine.db.begin() as conn:
        engine.ledger.post(conn, customer, "points", 10, "adjust", "t", None, "same-key", AT)
    with pytest.raises(IntegrityError), engine.db.begin() as conn:
        engine.ledger.post(conn, customer, "points", 10, "adjust", "t", None, "same-key", AT)
    with engine.db.connect() as conn:
        assert engine.ledger.balances(conn, customer) == {"points": 10}


def _lots(engine):
    with engine.db.connect() as conn:
        rows = conn.execute(select(lots.c.amount, lots.c.remaining, lots.c.expires_at).order_by(lots.c.expires_at)).all()
    return [(r.amount, r.remaining, as_utc(r.expires_at)) for r in rows]


def test_earned_points_open_lots_that_expire_and_spending_takes_the_soonest_first(engine):
    engine.ledger.expiry_months = 12
    customer = _customer(engine)
    with engine.db.begin() as conn:
        engine.ledger.post(conn, customer, "points", 100, "order", "o1", None, "k1", datetime(2026, 3, 1, tzinfo=UTC))
        engine.ledger.post(conn, customer, "points", 50, "order", "o2", None, "k2", datetime(2026, 1, 1, tzinfo=UTC))
        engine.ledger.post(conn, customer, "points", -70, "redeem", "reward:X", None, "k3", datetime(2026, 4, 1, tzinfo=UTC))
    assert _lots(engine) == [
        (50, 0, datetime(2027, 1, 1, tzinfo=UTC)),
        (100, 80, datetime(2027, 3, 1, tzinfo=UTC)),
    ]


def test_a_refund_takes_back_its_own_orders_points_first(engine):
    engine.ledger.expiry_months = 12
    customer = _customer(engine)
    with engine.db.begin() as conn:
        engine.ledger.post(conn, customer, "points", 100, "order", "o1", None, "k1", datetime(2026, 3, 1, tzinfo=UTC))
        engine.ledger.post(conn, customer, "points", 50, "order", "o2", None, "k2", datetime(2026, 1, 1, tzinfo=UTC))
        engine.ledger.post(conn, customer, "points", -70, "refund", "o1", None, "k3", datetime(2026, 4, 1, tzinfo=UTC))
    assert _lots(engine) == [
        (50, 50, datetime(2027, 1, 1, tzinfo=UTC)),
        (100, 30, datetime(2027, 3, 1, tzinfo=UTC)),
    ]


def test_points_earned_while_in_debt_pay_the_debt_first(engine):
    customer = _customer(engine)
    with engine.db.begin() as conn:
        engine.ledger.post(conn, customer, "points", -40, "refund", "o1", None, "k1", AT)
        engine.ledger.post(conn, customer, "points", 100, "order", "o2", None, "k2", AT)
    assert [(a, r) for a, r, _ in _lots(engine)] == [(60, 60)]


def test_stamps_open_no_lots(engine):
    customer = _customer(engine)
    with engine.db.begin() as conn:
        engine.ledger.post(conn, customer, "stamps:coffee", 3, "visit", "v1", None, "k1", AT)
    with engine.db.connect() as conn:
        assert conn.execute(select(lots)).all() == []
        assert engine.ledger.balances(conn, customer) == {"stamps:coffee": 3}


def test_the_audit_finds_a_cached_balance_that_drifted(engine):
    customer = _customer(engine)
    with engine.db.begin() as conn:
        engine.ledger.post(conn, customer, "points", 42, "adjust", "t", None, "k1", AT)
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []
    with engine.db.begin() as conn:
        conn.execute(update(accounts).values(balance=41))
    with engine.db.connect() as conn:
        (drift,) = engine.ledger.audit(conn)
    assert (drift.customer_id, drift.unit, drift.cached, drift.entries) == (customer, "points", 41, 42)
