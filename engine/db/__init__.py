"""Storage: the SQLAlchemy engine for SQLite (embedded, WAL) or PostgreSQL, and
the Alembic migrations that build its schema."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.exc import DisconnectionError

from engine import jsonio

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaOutdated(Exception):
    """The database is behind the code's migrations."""


class UnsuitableDatabase(Exception):
    """A PostgreSQL database that can't hold what regulars stores: one not
    encoded in UTF8 (a name in another script could not even be kept with
    its failed delivery)."""


def refuse_unsuitable(engine: SAEngine) -> None:
    """Raise ``UnsuitableDatabase`` for a PostgreSQL database not in UTF8."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        encoding = conn.exec_driver_sql("SHOW server_encoding").scalar()
    if encoding.upper() not in ("UTF8", "UTF-8"):
        name = engine.url.database
        raise UnsuitableDatabase(
            f"the database {name!r} is encoded in {encoding}, and regulars keeps names and deliveries in any script: "
            f"create it in UTF8 (createdb -E UTF8 -T template0 {name}, or CREATE DATABASE {name} ENCODING 'UTF8' "
            "TEMPLATE template0) and point REGULARS_DATABASE_URL at it")


def make_engine(url: str, **kwargs) -> SAEngine:
    """An SQLAlchemy engine. SQLite gets WAL, foreign keys, a busy timeout and
    ``BEGIN IMMEDIATE`` so that concurrent writers queue instead of failing."""
    # JSON columns written and read by orjson where it is exact (engine.jsonio).
    kwargs = {"json_serializer": jsonio.dumps, "json_deserializer": jsonio.loads, **kwargs}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            # Let SQLAlchemy's "begin" event below start transactions itself.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # A checkpoint every 10,000 WAL pages (40 MiB) instead of 1,000: the
            # hot pages (indexes, balances) are copied into the database once
            # per checkpoint, so fewer checkpoints write fewer pages (10 to 15 %
            # more deliveries a second in bench/ingest.py).
            cursor.execute("PRAGMA wal_autocheckpoint=10000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # A write lock from the start: no deadlocks between readers that
            # later want to write, one writer at a time. Sent on the driver's
            # connection (``exec_driver_sql`` takes 15 µs more, twice per
            # delivery); its error is SQLAlchemy's all the same.
            dbapi_connection = conn.connection.dbapi_connection
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
            except Exception as exc:
                conn._handle_dbapi_exception(exc, "BEGIN IMMEDIATE", (), None, None)

        return engine
    # READ COMMITTED whatever the server's default_transaction_isolation: the
    # engine's row locks make concurrent writers wait and then read what the
    # other committed; under REPEATABLE READ or SERIALIZABLE they would fail
    # instead ("could not serialize access"), and the delivery with them.
    engine = create_engine(url, **{"isolation_level": "READ COMMITTED", **kwargs})
    _ping_when_idle(engine)

    @event.listens_for(engine, "connect")
    def _postgresql_connect(dbapi_connection, _record):
        # Timestamps come back in UTC, and SQL reads them in UTC, whatever the
        # server's TimeZone (initdb takes the machine's: a server in New York
        # would hand a birthday stored as midnight UTC back as the evening
        # before, and a date taken from it a day early). Dates in ISO, the only
        # style psycopg reads (a server set to DateStyle 'SQL, DMY' failed every
        # delivery). The session's isolation too, for the transactions
        # engine.fastsql begins itself. (One round trip: no parameters.)
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'; SET DateStyle TO ISO; "
                           "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
        dbapi_connection.commit()

    return engine


#: a pooled connection unused for this many seconds is pinged before it is lent
PING_AFTER = 5.0


def _ping_when_idle(engine: SAEngine) -> None:
    """SQLAlchemy's pessimistic disconnect handling (its ``checkout`` event
    recipe), for connections that sat idle in the pool: they are the ones a
    database restart or an idle timeout may have closed. ``pool_pre_ping``
    would ping at every check-out, a round trip per transaction while the
    engine is busy. A connection closed under a busy engine fails its
    statement instead; SQLAlchemy then replaces the pool's connections, and
    the work is retried (a webhook's 503, a Celery task's retry, the inbox's
    replay)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy):
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < PING_AFTER:
            return  # new, or lent a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError(str(exc)) from exc  # the pool connects again
            raise


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision(url: str) -> str | None:
    """The newest migration's revision (the same for every database)."""
    return _head_revision()


@functools.cache
def _head_revision() -> str | None:
    # (read once per process: Alembic parses every migration file to find it,
    # about 11 ms, which each Engine's start paid)
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: SAEngine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: SAEngine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` on this engine's database."""
    refuse_unsuitable(engine)
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_schema(engine: SAEngine, auto: bool) -> None:
    """Upgrade an embedded SQLite on first use; refuse an outdated server
    database with what to run."""
    refuse_unsuitable(engine)
    url = engine.url.render_as_string(hide_password=False)
    if current_revision(engine) == head_revision(url):
        return
    if auto:
        upgrade(engine)
        return
    raise SchemaOutdated(
        f"the database at {engine.url.render_as_string(hide_password=True)} is not at the "
        "latest schema: run `regulars db upgrade`"
    )


_ZERO = timedelta(0)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A timestamp read from the database, in UTC: SQLite hands timestamps
    back without a zone (they were stored in UTC); PostgreSQL in the
    session's time zone (UTC, ``make_engine``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.utcoffset() == _ZERO else value.astimezone(UTC)
