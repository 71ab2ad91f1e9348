"""Ingest throughput, beside the raw driver's figure for the same rows.

    python bench/ingest.py [--n 2000] [--customers 1000] [--batch 500]
                           [--database-url postgresql://postgres@127.0.0.1:5432/test]
                           [--profile]

Builds N realistic Shopify ``orders/paid`` bodies (``engine.demo.shopify_order``,
~1000 distinct customers, the first order of each creating them) and ingests
them the way ``regulars ingest`` does, on a fresh database each time:

(a) one transaction per event: ``engine.ingest`` (``regulars ingest``);
(b) a batched replay: ``engine.ingest_batch`` in batches of 500
    (``regulars ingest --batch 500``).

Beside each, the raw driver (``sqlite3`` or ``psycopg``) writes what a minimal
loyalty ingest must write per event, into the same schema: the inbox row with the
raw body, two ledger rows with unique keys and a balance update; one transaction
per event, then batched (``executemany`` per statement, one commit per batch).

On PostgreSQL it also counts, per event of path (a), the SQL statements seen by
SQLAlchemy's cursor events (``before_cursor_execute``; the engine's DBAPI-cursor
statements, ``engine.fastsql``, fire them too) plus BEGIN and COMMIT, and, in a
second pass, the round trips on the wire (libpq's protocol trace: one
``ReadyForQuery`` per round trip), which also sees pool pings. The two differ:
the last writes of a transaction (the dashboard's counters, the inbox mark) go
to the server together in one pipeline, several statements in one round trip.

Not part of the test suite. WARNING: with --database-url the database's
``public`` schema is dropped and recreated.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import math
import pstats
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import event, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.app import Engine  # noqa: E402
from engine.config import config_from_tables, resolve_database_url  # noqa: E402
from engine.db import make_engine, upgrade  # noqa: E402
from engine.demo import SHOPIFY_ID_BASE, T0, make_customer, random_lines, shopify_order  # noqa: E402

TABLES = {
    "engine": {"currency": "EUR", "default_country": "CZ"},
    "rules": {"points": {"per_unit": 1}},
    "connectors": {"shopify": {"shop": "example.myshopify.com"}},
}
#: TABLES as a plugins.toml, for the benchmarks that start `regulars` processes
PLUGINS_TOML = """\
[engine]
currency = "EUR"
default_country = "CZ"

[rules.points]
per_unit = 1

[connectors.shopify]
shop = "example.myshopify.com"
"""
assert tomllib.loads(PLUGINS_TOML) == TABLES, "PLUGINS_TOML must say what TABLES says"
TOPIC = "orders/paid"
console = Console(width=max(Console().width, 100))


@dataclass
class Run:
    label: str
    events: int
    seconds: float
    #: seconds per event: one per event, or batch time / batch size per batch
    samples: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


# -- the workload ------------------------------------------------------------------


def make_bodies(n: int, customers: int, seed: int = 1) -> tuple[list[bytes], list[int]]:
    """N orders/paid bodies and the customer number of each: every customer's
    first order, then orders from random returning customers."""
    rng = random.Random(seed)
    people = [make_customer(number, rng) for number in range(1, customers + 1)]
    bodies, owners = [], []
    for k in range(1, n + 1):
        c = people[k - 1] if k <= customers else rng.choice(people)
        lines = random_lines(rng)
        codes = ("VITEJTE10",) if any(line.discount for line in lines) else ()
        at = T0 + timedelta(minutes=7 * k)
        body = shopify_order(SHOPIFY_ID_BASE + k, c, lines, updated_at=at, discount_codes=codes)
        bodies.append(json.dumps(body, ensure_ascii=False).encode())
        owners.append(c.number)
    return bodies, owners


def fresh_database(database_url: str | None, workdir: Path, name: str) -> str:
    """A migrated, empty database: a new SQLite file, or PostgreSQL's public
    schema dropped and recreated."""
    if database_url is None:
        url = f"sqlite:///{workdir / f'{name}.sqlite3'}"
    else:
        url = resolve_database_url(workdir, {"REGULARS_DATABASE_URL": database_url})
        admin = make_engine(url)
        with admin.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        admin.dispose()
    sa = make_engine(url)
    upgrade(sa)
    sa.dispose()
    return url


def build_engine(url: str, workdir: Path) -> Engine:
    engine = Engine(config_from_tables(TABLES, workdir / "plugins.toml", {"REGULARS_DATABASE_URL": url}))
    engine.ensure_schema()
    return engine


# -- the engine ---------------------------------------------------------------------


def engine_single(engine: Engine, bodies: Sequence[bytes]) -> Run:
    samples = []
    started = time.perf_counter()
    for body in bodies:
        t = time.perf_counter()
        outcome = engine.ingest("shopify", TOPIC, body, {})
        samples.append(time.perf_counter() - t)
        if outcome.status != "applied":
            raise SystemExit(f"delivery {outcome.inbox_id} {outcome.status}: {outcome.error}")
    return Run("engine.ingest, 1 tx/event", len(bodies), time.perf_counter() - started, samples)


def engine_batched(engine: Engine, bodies: Sequence[bytes], batch: int) -> Run:
    samples = []
    started = time.perf_counter()
    for start in range(0, len(bodies), batch):
        chunk = [(TOPIC, body, {}) for body in bodies[start : start + batch]]
        t = time.perf_counter()
        outcomes = engine.ingest_batch("shopify", chunk)
        samples.append((time.perf_counter() - t) / len(chunk))
        bad = [o for o in outcomes if o.status != "applied"]
        if bad:
            raise SystemExit(f"{len(bad)} deliveries not applied, e.g. {bad[0]}")
    return Run(f"engine.ingest_batch, {batch}/tx", len(bodies), time.perf_counter() - started, samples)


def settled(url: str, run: Run) -> Run:
    """``run`` with the checkpoint of its WAL counted in its time (SQLite):
    a pass is done when its rows are in the database file. (SQLite
    checkpoints by itself every ``wal_autocheckpoint`` pages, inside the
    COMMIT that crosses the mark, so without this a short pass could end
    just before its checkpoint and another just after, and the figures would
    say where the mark fell more than what each pass cost.)"""
    if not url.startswith("sqlite"):
        return run
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
    started = time.perf_counter()
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    seconds = time.perf_counter() - started
    conn.close()
    if busy:
        raise SystemExit("the WAL checkpoint was blocked: something still reads the database")
    return Run(run.label, run.events, run.seconds + seconds, run.samples)


# -- the raw driver -----------------------------------------------------------------

INBOX = ("INSERT INTO inbox (channel, topic, key, body, body_sha256, headers, status, attempts, received_at)"
         " VALUES ({0}, {0}, {0}, {0}, {0}, NULL, 'applied', 1, {0})")
LEDGER = ("INSERT INTO ledger_entries (account_id, amount, reason, source, rule, key, occurred_at, created_at,"
          " detail) VALUES ({0}, {0}, 'order', {0}, 'points', {0}, {0}, {0}, {0})")
BALANCE = "UPDATE accounts SET balance = balance + {0} WHERE id = {0}"


def _rows(i: int, body: bytes, owner: int, now: object, detail: object) -> list[tuple[str, tuple]]:
    """The statements of one event: the inbox row, two ledger rows, the balance."""
    key, source = f"orders/paid:{SHOPIFY_ID_BASE + i}", f"order:shopify:{SHOPIFY_ID_BASE + i}"
    return [
        (INBOX, ("shopify", TOPIC, key, body, hashlib.sha256(body).hexdigest(), now)),
        (LEDGER, (owner, 40, source, f"raw:{i}:a", now, now, detail)),
        (LEDGER, (owner, 2, source, f"raw:{i}:b", now, now, detail)),
        (BALANCE, (42, owner)),
    ]


def raw_sqlite(url: str) -> sqlite3.Connection:
    """The bare driver's connection to a SQLite URL, with the engine's pragmas
    (engine/db: WAL, synchronous NORMAL, foreign keys, a checkpoint every
    10,000 pages) and transactions begun by hand."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=10000"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


@dataclass
class Raw:
    """The bare driver on a database: its connection and cursor, its
    paramstyle's mark, now as it binds a timestamp, its JSON wrapper, and how
    a transaction begins and commits."""

    conn: Any
    cur: Any
    mark: str
    now: object
    wrap: Callable
    label: str
    begin: Callable[[], object]
    commit: Callable[[], object]


def raw_connection(url: str) -> Raw:
    """``sqlite3`` (the engine's pragmas, ``BEGIN IMMEDIATE`` by hand) or
    ``psycopg`` (which opens its transactions itself) on ``url``."""
    if url.startswith("sqlite"):
        conn = raw_sqlite(url)
        return Raw(conn, conn.cursor(), "?", datetime.now(UTC).isoformat(" "), json.dumps, "sqlite3",
                   lambda: conn.execute("BEGIN IMMEDIATE"), lambda: conn.execute("COMMIT"))
    import psycopg
    from psycopg.types.json import Json

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    return Raw(conn, conn.cursor(), "%s", datetime.now(UTC), Json, "psycopg", lambda: None, conn.commit)


def raw_run(url: str, bodies: Sequence[bytes], owners: Sequence[int], customers: int, batch: int | None) -> Run:
    """The same rows written by the bare driver, on a fresh migrated database."""
    raw = raw_connection(url)
    conn, cur, mark, now, wrap, label, begin, commit = (
        raw.conn, raw.cur, raw.mark, raw.now, raw.wrap, raw.label, raw.begin, raw.commit)
    begin()
    cur.executemany(
        f"INSERT INTO customers (id, card_code, referral_code, created_at, updated_at) VALUES "
        f"({mark}, {mark}, {mark}, {mark}, {mark})",
        [(n, f"CARD{n}", f"REF{n}", now, now) for n in range(1, customers + 1)])
    cur.executemany(f"INSERT INTO accounts (id, customer_id, unit, balance) VALUES ({mark}, {mark}, 'points', 0)",
                    [(n, n) for n in range(1, customers + 1)])
    commit()
    detail = wrap({"eligible": "42.00", "multipliers": [["points per unit of currency", "1"]]})
    samples = []
    started = time.perf_counter()
    step = batch or 1
    for start in range(0, len(bodies), step):
        t = time.perf_counter()
        begin()
        statements = [_rows(start + j + 1, body, owners[start + j], now, detail)
                      for j, body in enumerate(bodies[start : start + step])]
        if batch is None:
            for sql, params in statements[0]:
                cur.execute(sql.format(mark), params)
        else:
            for k in range(4):
                cur.executemany(statements[0][k][0].format(mark), [event[k][1] for event in statements])
        commit()
        samples.append((time.perf_counter() - t) / len(statements))
    seconds = time.perf_counter() - started
    conn.close()
    what = f"{label}, 1 tx/event" if batch is None else f"{label} executemany, {batch}/tx"
    return Run(what, len(bodies), seconds, samples)


# -- round trips (PostgreSQL) -----------------------------------------------------------


def count_statements(engine: Engine) -> Callable[[], Counter]:
    """Count what the engine sends through SQLAlchemy: statements by kind, and
    the BEGIN and COMMIT of each transaction."""
    counts: Counter = Counter()

    @event.listens_for(engine.db, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        counts[statement.lstrip().split(None, 1)[0].upper()] += 1

    @event.listens_for(engine.db, "begin")
    def _begin(conn):  # noqa: ARG001
        counts["BEGIN"] += 1

    @event.listens_for(engine.db, "commit")
    def _commit(conn):  # noqa: ARG001
        counts["COMMIT"] += 1

    return lambda: Counter(counts)


def wire_round_trips(url: str, workdir: Path, bodies: Sequence[bytes]) -> float:
    """Round trips per event of ``engine.ingest`` as libpq saw them (every
    ReadyForQuery the server sent), on a fresh database."""
    import psycopg

    engine = Engine(config_from_tables(TABLES, workdir / "plugins.toml", {"REGULARS_DATABASE_URL": url}))
    trace = open(workdir / "libpq.trace", "w")  # noqa: SIM115 - closed below

    @event.listens_for(engine.db, "connect")
    def _trace(dbapi_connection, record):  # noqa: ARG001
        dbapi_connection.pgconn.trace(trace.fileno())
        dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    engine.ensure_schema()
    engine.ingest("shopify", TOPIC, bodies[0], {})  # warm the pool; not counted
    trace.flush()
    before = (workdir / "libpq.trace").read_text().count("\tReadyForQuery\t")
    for body in bodies[1:]:
        engine.ingest("shopify", TOPIC, body, {})
    engine.db.dispose()
    trace.close()
    after = (workdir / "libpq.trace").read_text().count("\tReadyForQuery\t")
    return (after - before) / (len(bodies) - 1)


# -- main ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="events (default 2000)")
    parser.add_argument("--customers", type=int, default=1000, help="distinct customers (default 1000)")
    parser.add_argument("--batch", type=int, default=500, help="events per batch (default 500)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary SQLite file); "
                        "its public schema is DROPPED")
    parser.add_argument("--profile", action="store_true", help="cProfile path (a) and print where time goes")
    in_scratch(run, parser.parse_args(argv), "regulars-bench-")


def in_scratch(run: Callable[[argparse.Namespace, Path], None], args: argparse.Namespace, prefix: str) -> None:
    """``run(args, workdir)`` in a temporary directory, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> None:
    bodies, owners = make_bodies(args.n, args.customers)
    size = sum(map(len, bodies)) / len(bodies)
    where = "SQLite (temporary file, WAL)" if args.database_url is None else "PostgreSQL"
    console.print(f"{args.n} Shopify orders/paid bodies ({size / 1024:.1f} KiB each), "
                  f"{min(args.n, args.customers)} customers, on {where}")

    url = fresh_database(args.database_url, workdir, "single")
    engine = build_engine(url, workdir)
    counted = count_statements(engine) if not url.startswith("sqlite") else None
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    single = settled(url, engine_single(engine, bodies))
    if profiler:
        profiler.disable()
    statements = counted() if counted else None
    engine.db.dispose()
    raw_url = fresh_database(args.database_url, workdir, "raw-single")
    raw_single = settled(raw_url, raw_run(raw_url, bodies, owners, args.customers, None))

    url = fresh_database(args.database_url, workdir, "batched")
    engine = build_engine(url, workdir)
    batched = settled(url, engine_batched(engine, bodies, args.batch))
    engine.db.dispose()
    raw_url = fresh_database(args.database_url, workdir, "raw-batched")
    raw_batched = settled(raw_url, raw_run(raw_url, bodies, owners, args.customers, args.batch))

    table = Table(title=f"ingest, {args.n} events on {where}")
    for column in ("path", "events/s", "p50 ms", "p99 ms", "seconds", "engine / raw"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for run, raw in ((single, raw_single), (batched, raw_batched)):
        for r in (run, raw):
            ratio = f"{r.seconds / raw.seconds:.1f}×" if r is run else ""
            table.add_row(r.label, f"{r.rate:,.0f}", f"{r.pct(0.5) * 1000:.2f}", f"{r.pct(0.99) * 1000:.2f}",
                          f"{r.seconds:.2f}", ratio)
    console.print(table)
    console.print("p50/p99 of a batched run: batch time / batch size, over its batches")
    if args.database_url is None:
        console.print("each SQLite pass ends with a checkpoint of its WAL, counted in its seconds and events/s "
                      "(not in p50/p99)")
    if profiler:
        console.print("[yellow]the first row ran under cProfile: it is about twice as slow as without[/yellow]")

    if statements is not None:
        wire = wire_round_trips(fresh_database(args.database_url, workdir, "trips"), workdir, bodies)
        trips = Table(title="statements and round trips per event, engine.ingest on PostgreSQL")
        trips.add_column("what")
        trips.add_column("per event", justify="right")
        for kind, n in sorted(statements.items(), key=lambda kv: -kv[1]):
            trips.add_row(kind, f"{n / args.n:.2f}")
        trips.add_row("[bold]statements, BEGIN and COMMIT (SQLAlchemy events)[/bold]",
                      f"[bold]{sum(statements.values()) / args.n:.2f}[/bold]")
        trips.add_row("[bold]round trips on the wire (libpq trace)[/bold]", f"[bold]{wire:.2f}[/bold]")
        trips.add_row("raw psycopg, 1 tx/event: BEGIN, 4 statements, COMMIT", "6.00")
        console.print(trips)
        console.print("the wire also carries the pool's ping of a connection idle for 5 s or more (none in a busy "
                      "run: engine.db.PING_AFTER); pipelined statements share a round trip")

    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
