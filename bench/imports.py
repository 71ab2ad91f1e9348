"""Points imports (``regulars customer import-points``), beside the raw
driver's figure for the same rows.

    python bench/imports.py [--n 3000] [--database-url postgresql://postgres@127.0.0.1:5432/test]

On a fresh migrated database, three passes:

(a) the engine imports a Smile.io-shaped file of N new customers (``email``,
    ``points``, ``first_name``): each row creates its customer and gives the
    points as an adjustment (``engine.imports.import_points``);
(b) the engine imports the same balances again with ``--set``: every
    customer is found and nothing changes (the "already there" path of a
    second run);
(c) the raw driver (``sqlite3`` or ``psycopg``) writes the least an import
    of N new customers must: per row a customer, a points account, a ledger
    entry with its unique key and a lot, ``executemany`` per statement and
    one commit per 500 rows, on another fresh database.

Not part of the test suite. WARNING: with --database-url the database's
``public`` schema is dropped and recreated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import TABLES, fresh_database, in_scratch, raw_connection  # noqa: E402

from engine.app import Engine  # noqa: E402
from engine.config import config_from_tables  # noqa: E402
from engine.imports import CHUNK, import_points  # noqa: E402


def smile_file(n: int) -> bytes:
    """N rows of a Smile.io balance export, one new customer each."""
    return ("email,points,first_name\n"
            + "".join(f"customer{i}@example.com,{100 + i % 500},Jana\n" for i in range(n))).encode()


def engine_passes(url: str, workdir: Path, data: bytes) -> tuple[float, float, dict, dict]:
    engine = Engine(config_from_tables(TABLES, workdir / "plugins.toml", {"REGULARS_DATABASE_URL": url}))
    try:
        started = time.perf_counter()
        first = import_points(engine, data, "moved from Smile.io", "bench")
        created = time.perf_counter() - started
        started = time.perf_counter()
        again = import_points(engine, data.replace(b"Jana", b"Eva"), "set again", "bench", replace=True)
        found = time.perf_counter() - started
    finally:
        engine.db.dispose()
    return created, found, dict(first.rows), dict(again.rows)


def raw_pass(url: str, n: int) -> float:
    """The least rows an import of N new customers writes, by the bare driver."""
    raw = raw_connection(url)
    conn, cur, m, stamp, begin, commit = raw.conn, raw.cur, raw.mark, raw.now, raw.begin, raw.commit
    started = time.perf_counter()
    for start in range(1, n + 1, CHUNK):
        ids = range(start, min(start + CHUNK, n + 1))
        begin()
        cur.executemany(f"INSERT INTO customers (id, email, first_name, card_code, referral_code, created_at, "
                        f"updated_at) VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m})",
                        [(i, f"customer{i}@example.com", "Jana", f"CARD{i}", f"REF{i}", stamp, stamp) for i in ids])
        cur.executemany(f"INSERT INTO accounts (id, customer_id, unit, balance) VALUES ({m}, {m}, 'points', {m})",
                        [(i, i, 100 + i % 500) for i in ids])
        cur.executemany(f"INSERT INTO ledger_entries (id, account_id, amount, reason, source, key, occurred_at, "
                        f"created_at) VALUES ({m}, {m}, {m}, 'adjust', {m}, {m}, {m}, {m})",
                        [(i, i, 100 + i % 500, f"adjust:import:{i}", f"adjust:import:{i}", stamp, stamp)
                         for i in ids])
        cur.executemany(f"INSERT INTO lots (account_id, entry_id, amount, remaining, earned_at, available_at) "
                        f"VALUES ({m}, {m}, {m}, {m}, {m}, {m})",
                        [(i, i, 100 + i % 500, 100 + i % 500, stamp, stamp) for i in ids])
        commit()
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def run(args: argparse.Namespace, workdir: Path) -> None:
    data = smile_file(args.n)
    created, found, first, again = engine_passes(fresh_database(args.database_url, workdir, "engine"), workdir, data)
    raw = raw_pass(fresh_database(args.database_url, workdir, "raw"), args.n)
    if first != {"adjusted": args.n} or again != {"unchanged": args.n}:
        raise SystemExit(f"unexpected outcomes: {first}, then {again}")
    table = Table(title=f"{args.n:,} rows, {'PostgreSQL' if args.database_url else 'SQLite'}")
    for column in ("pass", "seconds", "rows/s", "ms a row", "engine / raw"):
        table.add_column(column, justify="left" if column == "pass" else "right")
    for label, seconds in (("(a) import-points, new customers", created), ("(b) import-points --set, all found", found),
                           ("(c) raw driver, new customers", raw)):
        ratio = f"{seconds / raw:.1f}×" if label.startswith("(a)") else ""
        table.add_row(label, f"{seconds:.2f}", f"{args.n / seconds:,.0f}", f"{seconds / args.n * 1e3:.2f}", ratio)
    Console().print(table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="rows (default 3000)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary SQLite file); "
                        "its public schema is DROPPED")
    in_scratch(run, parser.parse_args(argv), "regulars-bench-imports-")


if __name__ == "__main__":
    main()
