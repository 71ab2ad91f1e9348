"""The till's API under a bounded loopback load: sales/s through
``POST /api/v1/sales`` and balance look-ups (``GET /api/v1/customers?key=``)
with p50/p99, from this process against ``regulars serve``'s app in another
(uvicorn, a temporary SQLite file), beside the raw ``sqlite3`` figure for the
same database work (a sale's inbox row, order, ledger entry and balance in one
transaction; a look-up by card code).

    .venv/bin/python bench/pos.py [--sales N] [--lookups N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from webhooks import _blast, free_port  # noqa: E402 - the same load generator as the webhook benchmark

CONFIG = """[engine]
currency = "EUR"
[rules.points]
per_unit = 1
[connectors.pos]
"""


def setup(workdir: Path, customers: int) -> tuple[str, list[str]]:
    """A shop with ``customers`` enrolled customers and a terminal; returns its key and the card codes."""
    from engine import terminals
    from engine.app import Engine
    from engine.config import load_config

    engine = Engine(load_config(str(workdir / "plugins.toml"), {"REGULARS_DATABASE_URL": f"sqlite:///{workdir / 'pos.sqlite3'}"}))
    engine.ensure_schema()
    _, key = terminals.add_terminal(engine.db, "bench", "till")
    cards = []
    with engine.db.begin() as conn:
        for n in range(customers):
            view = engine.identity.resolve_view(conn, "pos", {"email": f"c{n}@example.cz"}, _now())
            cards.append(view.card_code)
    engine.db.dispose()
    return key, cards


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def serve(workdir: str, port: int) -> None:
    import logging

    import uvicorn

    from engine.app import Engine
    from engine.config import load_config
    from engine.web import create_app

    logging.disable(logging.WARNING)
    engine = Engine(load_config(f"{workdir}/plugins.toml", {"REGULARS_DATABASE_URL": f"sqlite:///{workdir}/pos.sqlite3"}))
    uvicorn.run(create_app(engine, secrets={}), host="127.0.0.1", port=port, log_level="error", access_log=False)


def request(method: str, path: str, key: str, body: bytes = b"", idem: str | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}",
            f"Content-Length: {len(body)}", "Content-Type: application/json"]
    if idem:
        head.append(f"Idempotency-Key: {idem}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def sales(n: int, key: str, cards: list[str], seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        body = {"id": f"s{i}", "customer": {"card_code": rnd.choice(cards)},
                "lines": [{"sku": f"SKU-{rnd.randrange(40)}", "quantity": rnd.randint(1, 3),
                           "unit_price": f"{rnd.randint(100, 5000) / 100:.2f}"} for _ in range(rnd.randint(1, 4))]}
        out.append(request("POST", "/api/v1/sales", key, json.dumps(body).encode(), f"bench-{i}"))
    return out


def raw_sales(database: Path, n: int, cards: list[str]) -> float:
    """The same writes on the bare sqlite3 driver, one transaction per sale."""
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript("""CREATE TABLE r_inbox (id INTEGER PRIMARY KEY, key TEXT UNIQUE, body BLOB);
        CREATE TABLE r_orders (id INTEGER PRIMARY KEY, ext TEXT UNIQUE, customer TEXT, total TEXT);
        CREATE TABLE r_ledger (id INTEGER PRIMARY KEY, customer TEXT, amount INTEGER, key TEXT UNIQUE);
        CREATE TABLE r_balance (customer TEXT PRIMARY KEY, balance INTEGER);""")
    rnd = random.Random(2)
    started = time.perf_counter()
    for i in range(n):
        card, amount = rnd.choice(cards), rnd.randint(1, 100)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO r_inbox (key, body) VALUES (?, ?)", (f"sale:{i}", b"x" * 300))
        conn.execute("INSERT INTO r_orders (ext, customer, total) VALUES (?, ?, ?)", (f"1:{i}", card, str(amount)))
        conn.execute("INSERT INTO r_ledger (customer, amount, key) VALUES (?, ?, ?)", (card, amount, f"o:{i}"))
        conn.execute("INSERT INTO r_balance VALUES (?, ?) ON CONFLICT (customer) DO UPDATE SET balance = balance + ?",
                     (card, amount, amount))
        conn.execute("COMMIT")
    return n / (time.perf_counter() - started)


def raw_lookups(database: Path, n: int, cards: list[str]) -> float:
    conn = sqlite3.connect(database)
    rnd = random.Random(3)
    started = time.perf_counter()
    for _ in range(n):
        conn.execute("SELECT c.id, a.unit, a.balance FROM customers c LEFT JOIN accounts a ON a.customer_id = c.id "
                     "WHERE c.card_code = ?", (rnd.choice(cards),)).fetchall()
    return n / (time.perf_counter() - started)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=2000)
    parser.add_argument("--lookups", type=int, default=4000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "plugins.toml").write_text(CONFIG)
        key, cards = setup(workdir, args.customers)
        port = free_port()
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(str(workdir), port), daemon=True)
        server.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                asyncio.run(asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1))
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        rnd = random.Random(4)
        lookups = [request("GET", f"/api/v1/customers?key={rnd.choice(cards)}", key) for _ in range(args.lookups)]
        sale_pass = asyncio.run(_blast(port, sales(args.sales, key, cards), args.concurrency, 120, "sales"))
        lookup_pass = asyncio.run(_blast(port, lookups, args.concurrency, 120, "look-ups"))
        server.terminate()
        server.join(10)
        raw_sale_rate = raw_sales(workdir / "raw.sqlite3", args.sales, cards)
        raw_lookup_rate = raw_lookups(workdir / "pos.sqlite3", args.lookups, cards)
    table = Table(title=f"the till's API over HTTP on loopback, {args.concurrency} connections, SQLite")
    for column in ("work", "requests/s", "p50 ms", "p99 ms", "not 200", "raw sqlite3/s", "ratio"):
        table.add_column(column, justify="right")
    for run, raw in ((sale_pass, raw_sale_rate), (lookup_pass, raw_lookup_rate)):
        not_ok = run.sent - run.ok
        table.add_row(run.label, f"{run.rate:,.0f}", f"{run.pct(0.5) * 1000:.1f}", f"{run.pct(0.99) * 1000:.1f}",
                      str(not_ok), f"{raw:,.0f}", f"{run.rate / raw:.3f}")
    console.print(table)
    for run in (sale_pass, lookup_pass):
        for line in run.errors[:3]:
            console.print(f"{run.label}: {line}", highlight=False)
    console.print("raw: the same database work with the bare sqlite3 driver in this process (no HTTP, no rules); "
                  "ratio: the API's rate over the raw rate", highlight=False)


if __name__ == "__main__":
    main()
