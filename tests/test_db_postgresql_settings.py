"""A PostgreSQL server's own defaults change nothing: regulars sets what it
relies on in each session (engine.db.make_engine): READ COMMITTED, ISO dates,
UTC (the time zone is tested with the birthdays it shifted,
tests/test_birthday_gifts.py)."""

from __future__ import annotations

import pytest

from engine.customers import customer_summary
from tests.streams import expected_by_email
from tests.test_concurrency import _run_concurrently, _stream


@pytest.mark.postgres
@pytest.mark.parametrize("isolation", ["serializable", "repeatable read"])
def test_a_server_whose_default_isolation_is_stricter_changes_nothing(isolation, make_engine, postgres_url,
                                                                       monkeypatch):
    """Some servers default to SERIALIZABLE or REPEATABLE READ: there the
    engine's waiting writers would fail instead ("could not serialize
    access"). regulars runs its sessions in READ COMMITTED."""
    escaped = isolation.replace(" ", "\\ ")
    monkeypatch.setenv("PGOPTIONS", f"-c default_transaction_isolation={escaped}")  # (libpq's, at connect)
    engine = make_engine(url=postgres_url)
    with engine.db.connect() as conn:
        assert conn.exec_driver_sql("SHOW default_transaction_isolation").scalar() == "read committed"
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    planned, stream = _stream(24, seed=3)
    outcomes = _run_concurrently(engine, stream)
    assert not [o for o in outcomes if o.status == "failed"]
    for email, points in expected_by_email(planned).items():
        assert customer_summary(engine, email)["points"] == points
    from engine import metrics

    metrics.rebuild(engine)  # (REPEATABLE READ of its own: the pool's connections go back to READ COMMITTED)
    assert _run_concurrently(engine, stream)  # all duplicates now
    with engine.db.connect() as conn:
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"


@pytest.mark.postgres
def test_a_server_whose_date_style_is_not_iso_changes_nothing(make_engine, postgres_url, monkeypatch):
    """psycopg reads dates only in ISO style: a server set to DateStyle
    'SQL, DMY' (a European locale's choice) made every delivery fail.
    regulars sets its sessions to ISO."""
    monkeypatch.setenv("PGOPTIONS", "-c DateStyle=SQL,DMY")
    engine = make_engine(url=postgres_url)
    planned, stream = _stream(6, seed=5)
    assert not [o for o in (engine.ingest(*d) for d in stream) if o.status == "failed"]
    for email, points in expected_by_email(planned).items():
        assert customer_summary(engine, email)["points"] == points
    with engine.db.connect() as conn:
        assert conn.exec_driver_sql("SHOW DateStyle").scalar().startswith("ISO")
