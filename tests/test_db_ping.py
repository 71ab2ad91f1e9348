"""PostgreSQL connections are pinged before they are lent only when they sat
idle in the pool (``engine.db.PING_AFTER``): a busy engine sends no ping, and
a connection the server closed while it sat idle is replaced, unnoticed."""

from __future__ import annotations

import pytest
from sqlalchemy import text

import engine.db as db

pytestmark = pytest.mark.same_in_both_passes  # PostgreSQL in both passes (see tests/conftest.py)


@pytest.fixture
def pg(postgres_url):
    made = db.make_engine(postgres_url)
    yield made
    made.dispose()


@pytest.fixture
def pings(pg, monkeypatch):
    """How many pings the engine's dialect sent."""
    sent = []
    ping = pg.dialect.do_ping
    monkeypatch.setattr(pg.dialect, "do_ping", lambda connection: sent.append(1) or ping(connection))
    return sent


def backend_pid(pg) -> int:
    with pg.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_busy_engine_sends_no_ping(pg, pings):
    for _ in range(5):
        with pg.begin() as conn:
            conn.execute(text("SELECT 1"))
    assert pings == []


def test_a_connection_closed_while_idle_is_replaced_before_it_is_used(pg, pings, postgres_url, monkeypatch):
    first = backend_pid(pg)
    with db.make_engine(postgres_url).connect() as other:  # the server (an admin, a restart) closes it
        assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
    monkeypatch.setattr(db, "PING_AFTER", 0.0)  # as if it had sat idle long enough
    assert backend_pid(pg) != first
    assert pings == [1]


def test_without_the_idle_time_a_closed_connection_fails_once_then_the_pool_recovers(pg, pings, postgres_url):
    from sqlalchemy.exc import OperationalError

    first = backend_pid(pg)
    with db.make_engine(postgres_url).connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    with pytest.raises(OperationalError) as failed:
        backend_pid(pg)
    assert failed.value.connection_invalidated
    assert backend_pid(pg) != first
    assert pings == []
