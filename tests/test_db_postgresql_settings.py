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


@pytest.mark.postgres
def test_a_database_not_in_utf8_is_refused_at_start_saying_how_to_make_one(postgres_url, tmp_path, monkeypatch):
    """In a LATIN2 database a delivery naming someone in another script
    could not be stored even as failed (its key holds the name): it would be
    lost. regulars refuses such a database at start and at db upgrade."""
    from click.testing import CliRunner
    from sqlalchemy import create_engine, make_url, text

    from engine.app import Engine
    from engine.cli import main
    from engine.config import config_from_tables
    from engine.db import UnsuitableDatabase
    from tests.conftest import DEFAULT_TABLES

    name = "regulars_test_latin2"
    server = create_engine(make_url(postgres_url), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            conn.execute(text(f"CREATE DATABASE {name} ENCODING 'LATIN2' LC_COLLATE 'C' LC_CTYPE 'C' "
                              "TEMPLATE template0"))
    server.dispose()
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    engine = Engine(config_from_tables(DEFAULT_TABLES, tmp_path / "plugins.toml", {"REGULARS_DATABASE_URL": url}))
    with pytest.raises(UnsuitableDatabase, match=rf"'{name}' is encoded in LATIN2.*createdb -E UTF8 -T template0"):
        engine.ensure_schema()
    engine.db.dispose()
    (tmp_path / "plugins.toml").write_text('[engine]\ncurrency = "EUR"\n\n[rules.points]\nper_unit = 1\n')
    monkeypatch.setenv("REGULARS_DATABASE_URL", url)
    for command in (["db", "upgrade"], ["customer", "show", "jana@example.com"]):
        done = CliRunner().invoke(main, ["--config", str(tmp_path / "plugins.toml"), *command])
        assert done.exit_code == 1 and "is encoded in LATIN2" in done.output, (command, done.output)
