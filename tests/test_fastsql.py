"""engine.fastsql: statements deferred and read ahead share a round trip on
PostgreSQL (counted on the wire with libpq's trace), and give what running
them at once gives; elsewhere they run at once."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, text

from engine.db import make_engine
from engine.fastsql import Fast, deferring

pytestmark = pytest.mark.same_in_both_passes  # its own SQLite, and PostgreSQL in both passes

_INSERT = Fast(text("INSERT INTO fast_probe (x) VALUES (:x)").bindparams(bindparam("x")))
_COUNT = Fast(text("SELECT count(*) AS n FROM fast_probe"))
_SUM = Fast(text("SELECT coalesce(sum(x), 0) AS total FROM fast_probe WHERE x > :above").bindparams(bindparam("above")))


@pytest.fixture
def sqlite_db(tmp_path):
    db = make_engine(f"sqlite:///{tmp_path / 'probe.sqlite3'}")
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE fast_probe (x INTEGER)"))
    yield db
    db.dispose()


@pytest.fixture
def postgres_db(postgres_url):
    db = make_engine(postgres_url)
    with db.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS fast_probe"))
        conn.execute(text("CREATE TABLE fast_probe (x INTEGER)"))
    yield db
    with db.begin() as conn:
        conn.execute(text("DROP TABLE fast_probe"))
    db.dispose()


def test_on_sqlite_later_and_ahead_run_at_once(sqlite_db):
    with sqlite_db.begin() as conn, deferring(conn):
        _INSERT.later(conn, {"x": 5})
        ahead = _SUM.ahead(conn, {"above": 1})
        assert ahead.done  # nothing to save on SQLite: it ran already
        _INSERT.later(conn, {"x": 7})
        assert ahead.rows()[0][0] == 5
        assert _COUNT.scalar(conn, {}) == 2


class Wire:
    """libpq's protocol trace of one psycopg connection: round trips = ReadyForQuery."""

    def __init__(self, conn, path):
        import psycopg

        self.path = path
        self.file = open(path, "w")  # noqa: SIM115 - closed in count()
        raw = conn.connection.dbapi_connection
        raw.pgconn.trace(self.file.fileno())
        raw.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        self.raw = raw

    def count(self) -> tuple[int, str]:
        self.file.flush()
        self.raw.pgconn.untrace()
        self.file.close()
        log = self.path.read_text()
        return log.count("\tReadyForQuery\t"), log


def test_on_postgresql_a_read_ahead_shares_the_round_trip_of_the_next_statement(postgres_db, tmp_path):
    with postgres_db.connect() as conn:
        with conn.begin():
            _INSERT.execute(conn, {"x": 1})  # the transaction is open: no BEGIN below
            wire = Wire(conn, tmp_path / "trace")
            with deferring(conn):
                _INSERT.later(conn, {"x": 10})
                ahead = _SUM.ahead(conn, {"above": 5})  # sees the deferred insert: it was issued first
                _INSERT.later(conn, {"x": 20})
                assert not ahead.done
                total = _SUM.scalar(conn, {"above": 0})  # the one round trip: all four statements
                assert ahead.done
                round_trips, log = wire.count()
            assert ahead.rows()[0][0] == 10
            assert total == 31
        assert round_trips == 1, log


def test_on_postgresql_ahead_rows_sends_what_is_deferred(postgres_db):
    with postgres_db.begin() as conn, deferring(conn):
        _INSERT.later(conn, {"x": 3})
        ahead = _COUNT.ahead(conn, {})
        assert ahead.rows()[0][0] == 1 and ahead.done


def test_on_postgresql_deferring_with_commit_sends_the_commit_with_the_last_writes(postgres_db, tmp_path):
    with postgres_db.connect() as conn:
        with conn.begin():
            _INSERT.execute(conn, {"x": 1})
            wire = Wire(conn, tmp_path / "trace")
            with deferring(conn, commit=True):
                _INSERT.later(conn, {"x": 2})
                _INSERT.later(conn, {"x": 3})
            round_trips, log = wire.count()
        # SQLAlchemy's own commit found the transaction ended: nothing more on the wire
        assert round_trips == 1, log
        assert "COMMIT" in log
    with postgres_db.connect() as other:
        assert _COUNT.scalar(other, {}) == 3


def test_on_postgresql_a_failed_deferred_write_rolls_everything_back(postgres_db):
    from sqlalchemy.exc import DataError

    with pytest.raises(DataError), postgres_db.begin() as conn, deferring(conn, commit=True):
        _INSERT.later(conn, {"x": 1})
        _INSERT.later(conn, {"x": "not a number"})
    with postgres_db.connect() as other:
        assert _COUNT.scalar(other, {}) == 0
