"""The least a batched ingest with the engine's schema can cost, on SQLite.

    python bench/floor.py [--n 2000] [--customers 1000] [--batch 500]

``bench/ingest.py`` sets ``engine.ingest_batch`` beside the raw driver writing
four rows per event (the inbox row, two ledger rows, a balance). This asks how
close any implementation of the engine could come, by timing the two parts no
implementation can skip, each at the raw driver's speed:

1. **the engine's rows**: a second batched pass of the engine runs with every
   statement it sends captured (SQL and the driver's parameters, from
   SQLAlchemy's ``before_cursor_execute``, which the engine's DBAPI-cursor
   statements fire too). They are then written again on a fresh database by
   ``sqlite3`` alone, the way a set-based engine would write them: per
   transaction of the engine, one ``executemany`` per distinct write
   statement (in the order each first appeared, so that a row comes before
   the rows that refer to it), ``RETURNING`` dropped, the reads left out
   (their answers are already in the captured parameters), one commit.
2. **reading the bodies**: ``Engine._decide`` on each body, with no database:
   JSON parsing, the connector's translation and the canonical event's
   validation.

Their sum is a floor: it leaves out everything else an engine does in Python
(resolving identities, merging the order's state, asking the rules, counting
for the dashboard, building the rows). It is set beside the raw batched pass of
``bench/ingest.py`` (the same function, the same run): the floor's ratio is the
best ``engine / raw`` ratio a batched engine with these rows could show.

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import (  # noqa: E402
    TOPIC,
    Run,
    build_engine,
    engine_batched,
    fresh_database,
    in_scratch,
    make_bodies,
    raw_run,
    raw_sqlite,
    settled,
)

console = Console(width=max(Console().width, 100))
#: the words that make a statement a write (SAVEPOINT and RELEASE are left out)
WRITES = ("INSERT", "UPDATE", "DELETE")
_RETURNING = re.compile(r"\s+RETURNING\s.*\Z", re.IGNORECASE | re.DOTALL)


def captured_writes(url: str, workdir: Path, bodies: Sequence[bytes], batch: int) -> list[list[tuple]]:
    """The writes of each transaction of the engine's batched pass:
    ``[[(sql, parameters, executemany), ...], ...]``, one list per COMMIT."""
    engine = build_engine(url, workdir)
    transactions: list[list[tuple]] = [[]]

    @event.listens_for(engine.db, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        if statement.lstrip().split(None, 1)[0].upper() in WRITES:
            transactions[-1].append((statement, parameters, executemany))

    @event.listens_for(engine.db, "commit")
    def _commit(conn):  # noqa: ARG001
        transactions.append([])

    engine_batched(engine, bodies, batch)
    engine.db.dispose()
    return [t for t in transactions if t]


def grouped(writes: list[tuple]) -> list[tuple[str, list]]:
    """One transaction's writes as ``(sql, [parameters, ...])``, one per
    distinct statement, in the order each first appeared."""
    groups: dict[str, list] = {}
    for sql, parameters, many in writes:
        rows = groups.setdefault(_RETURNING.sub("", sql), [])
        rows.extend(parameters if many else [parameters])
    return list(groups.items())


def replay(url: str, transactions: list[list[tuple]], events: int) -> tuple[Run, int, int]:
    """The captured writes, set-based, by ``sqlite3`` alone: the time, and how
    many rows and ``executemany`` calls that took."""
    plans = [grouped(writes) for writes in transactions]
    conn = raw_sqlite(url)
    cur = conn.cursor()
    started = time.perf_counter()
    for plan in plans:
        conn.execute("BEGIN IMMEDIATE")
        for sql, rows in plan:
            cur.executemany(sql, rows)
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    rows = sum(len(r) for plan in plans for _, r in plan)
    calls = sum(len(plan) for plan in plans)
    return Run("the engine's rows, sqlite3 executemany", events, seconds, []), rows, calls


def decoding(url: str, workdir: Path, bodies: Sequence[bytes]) -> float:
    """Seconds to parse, translate and validate every body (``Engine._decide``),
    no database work."""
    engine = build_engine(url, workdir)
    started = time.perf_counter()
    for body in bodies:
        events, status, error, _ = engine._decide("shopify", TOPIC, body, {})
        if events is None:
            raise SystemExit(f"a body did not decode: {status}: {error}")
    seconds = time.perf_counter() - started
    engine.db.dispose()
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="events (default 2000)")
    parser.add_argument("--customers", type=int, default=1000, help="distinct customers (default 1000)")
    parser.add_argument("--batch", type=int, default=500, help="events per batch (default 500)")
    in_scratch(run, parser.parse_args(argv), "regulars-floor-")


def run(args: argparse.Namespace, workdir: Path) -> None:
    bodies, owners = make_bodies(args.n, args.customers)
    console.print(f"{args.n} Shopify orders/paid bodies, {min(args.n, args.customers)} customers, "
                  f"batches of {args.batch}, on SQLite (temporary file, WAL)")
    url = fresh_database(None, workdir, "engine")
    engine = build_engine(url, workdir)
    engine_run = settled(url, engine_batched(engine, bodies, args.batch))  # not captured: listeners cost time
    engine.db.dispose()
    transactions = captured_writes(fresh_database(None, workdir, "captured"), workdir, bodies, args.batch)
    url = fresh_database(None, workdir, "floor")
    rows_run, rows, calls = replay(url, transactions, args.n)
    rows_run = settled(url, rows_run)
    decode = decoding(fresh_database(None, workdir, "decode"), workdir, bodies)
    raw_url = fresh_database(None, workdir, "raw")
    raw = settled(raw_url, raw_run(raw_url, bodies, owners, args.customers, args.batch))

    per = 1e6 / args.n
    floor = rows_run.seconds + decode
    budget = raw.seconds / 0.15
    table = Table(title=f"a batched ingest's floor, {args.n} events on SQLite")
    for column in ("what", "µs/event", "raw / this"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row(raw.label + " (bench/ingest.py's 4 rows per event)", f"{raw.seconds * per:,.0f}", "1")
    table.add_row(engine_run.label, f"{engine_run.seconds * per:,.0f}", f"{raw.seconds / engine_run.seconds:.3f}")
    table.add_row(f"(1) the engine's rows ({rows / args.n:.1f} per event, {calls} executemany), sqlite3",
                  f"{rows_run.seconds * per:,.0f}", f"{raw.seconds / rows_run.seconds:.3f}")
    table.add_row("(2) parse, translate, validate each body (Engine._decide)", f"{decode * per:,.0f}",
                  f"{raw.seconds / decode:.3f}")
    table.add_row("[bold](1) + (2): the floor[/bold]", f"[bold]{floor * per:,.0f}[/bold]",
                  f"[bold]{raw.seconds / floor:.3f}[/bold]")
    table.add_row("the goal: 0.15 of the raw driver", f"{budget * per:,.0f}", "0.150")
    console.print(table)
    console.print("each SQLite pass ends with a checkpoint of its WAL, counted in its time; "
                  "the floor leaves out all the engine's other Python")


if __name__ == "__main__":
    main()
