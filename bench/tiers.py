"""What a regular's next order costs with tiers on, as their orders pile up.

    python bench/tiers.py [--orders 1000] [--every 200] [--metric points_earned|spend]

One customer buys every 8 hours (three orders a day, all inside a 365-day
window), each order a Shopify ``orders/paid`` body from ``engine.demo``,
ingested one transaction per event on a fresh SQLite file, with
``[rules.points]`` and a tier programme whose thresholds are never reached (so
the walk computes the window's metric for every order, its worst case). Every
``--every`` orders it prints the mean time per event over the last block,
beside the same engine with tiers off: the difference is the tiers' walk,
which reads the orders paid in the window before the new one.

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from ingest import TABLES, fresh_database  # noqa: E402  (bench/ingest.py)

from engine.app import Engine  # noqa: E402
from engine.config import config_from_tables  # noqa: E402
from engine.demo import SHOPIFY_ID_BASE, T0, make_customer, random_lines, shopify_order  # noqa: E402


def tables(metric: str | None) -> dict:
    if metric is None:
        return TABLES
    levels = [{"name": "silver", "threshold": 10**9, "multiplier": 1.25}]
    return {**TABLES, "rules": {**TABLES["rules"], "tiers": {"metric": metric, "window_days": 365, "levels": levels}}}


def blocks(metric: str | None, orders: int, every: int, workdir: Path) -> list[float]:
    """Mean seconds per event over each block of ``every`` orders."""
    url = fresh_database(None, workdir, f"tiers-{metric}")
    engine = Engine(config_from_tables(tables(metric), workdir / "plugins.toml", {"REGULARS_DATABASE_URL": url}))
    engine.ensure_schema()
    rng = random.Random(1)
    customer = make_customer(1, rng)
    bodies = [json.dumps(shopify_order(SHOPIFY_ID_BASE + n, customer, random_lines(rng),
                                       updated_at=T0 + timedelta(hours=8 * n))).encode()
              for n in range(1, orders + 1)]
    means, spent = [], 0.0
    for n, body in enumerate(bodies, 1):
        started = time.perf_counter()
        outcome = engine.ingest("shopify", "orders/paid", body, {})
        spent += time.perf_counter() - started
        if outcome.status != "applied":
            raise SystemExit(f"order {n}: {outcome.status} {outcome.error}")
        if n % every == 0:
            means.append(spent / every)
            spent = 0.0
    engine.db.dispose()
    return means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000, help="orders of the one customer (default 1000)")
    parser.add_argument("--every", type=int, default=200, help="orders per block (default 200)")
    parser.add_argument("--metric", choices=["points_earned", "spend"], default="points_earned")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tiered = blocks(args.metric, args.orders, args.every, Path(tmp))
        plain = blocks(None, args.orders, args.every, Path(tmp))
    table = Table(title=f"one customer's orders, tiers by {args.metric}, on SQLite (ms per event)")
    for column in ("orders so far", "tiers on", "tiers off", "the walk"):
        table.add_column(column, justify="right")
    for block, (on, off) in enumerate(zip(tiered, plain, strict=True), 1):
        table.add_row(f"{block * args.every:,}", f"{on * 1000:.2f}", f"{off * 1000:.2f}", f"{(on - off) * 1000:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
