"""The embedded SQLite's connection settings (``engine.db.make_engine``) and
its ``BEGIN IMMEDIATE``, sent on the driver's connection but failing as
SQLAlchemy's errors do."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from engine.db import make_engine

pytestmark = pytest.mark.same_in_both_passes  # SQLite files of its own (see tests/conftest.py)


def test_every_connection_gets_the_engines_pragmas(tmp_path):
    db = make_engine(f"sqlite:///{tmp_path / 'shop.sqlite3'}")
    with db.connect() as conn:
        got = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
               for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "wal_autocheckpoint")}
    assert got == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 30000,
                   "wal_autocheckpoint": 10000}
    db.dispose()


def test_a_transaction_takes_the_write_lock_and_a_busy_database_raises_sqlalchemys_error(tmp_path):
    path = tmp_path / "shop.sqlite3"
    db = make_engine(f"sqlite:///{path}")
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    with db.begin() as conn:  # BEGIN IMMEDIATE: the write lock is held from the start
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")
    with db.connect() as conn:
        conn.connection.dbapi_connection.execute("PRAGMA busy_timeout=50")  # (no transaction begun)
        with pytest.raises(OperationalError, match="locked"):
            conn.begin()
        assert conn.in_transaction() is False
    other.execute("ROLLBACK")
    with db.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    other.close()
    db.dispose()
