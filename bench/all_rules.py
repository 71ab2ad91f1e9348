"""What the rules cost: rule evaluation alone, then ingest with every built-in rule on.

    python bench/all_rules.py [--n 2000] [--customers 1000] [--repeat 7] [--no-each] [--profile]

The workload is bench/ingest.py's: N Shopify ``orders/paid`` bodies made with
``engine.demo.shopify_order`` (the first order of each of ~1000 customers
creating them, then returning customers). Two configurations are compared:

- *points only*: ``[rules.points]``, bench/ingest.py's configuration;
- *all rules*: points, two stamp cards with SKU globs (one per item, one per
  order with a minimum spend), tiers, the expiry policy with pending points,
  referrals, the reward catalogue, and every built-in campaign plugin
  (double points, SKU multipliers, birthday bonus, first-order bonus) that this
  checkout has.

(a) Rule evaluation alone, in process, no database: each body is translated by
    the Shopify connector, loaded (``engine.events.load_event``), merged
    (``engine.orders.merge``) and viewed (``engine.orders.view``) beforehand;
    the timed loop then asks the decision hooks what the pipeline asks for a
    newly paid order, through the pipeline's own helpers (``plugins.collect``
    underneath): ``regulars_order_multipliers``, then ``regulars_order_awards``
    with the customer's other paid orders as ``history``, then, when a plugin
    takes ``history``, ``regulars_order_awards`` again for each of those other
    orders (``Pipeline._ask_again_about``). Each customer has a
    ``CustomerView`` with a tier (none, silver or gold) and a birthday, so the
    tier and birthday multipliers take part. Best of ``--repeat`` passes.
(b) Ingest with the rules: ``engine.ingest`` once per body (one transaction per
    event, bench/ingest.py's path (a), with its functions), on a fresh SQLite
    file for each configuration: points only, points with each other rule on
    its own (skip these with ``--no-each``), all rules. Each pass also counts
    the SQL statements it ran and the ledger entries it wrote, per event.

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import pstats
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

# The repository first, so that ``rules`` is its package of built-in rules and not
# this file; then bench/, for bench/ingest.py.
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from ingest import (  # noqa: E402  (bench/ingest.py)
    TABLES,
    TOPIC,
    Run,
    count_statements,
    engine_single,
    fresh_database,
    in_scratch,
    make_bodies,
)

from engine.app import Engine  # noqa: E402
from engine.config import config_from_tables  # noqa: E402
from engine.db.models import ledger_entries, rewards  # noqa: E402
from engine.events import load_event  # noqa: E402
from engine.identity import CustomerView  # noqa: E402
from engine.orders import OrderView, merge, view  # noqa: E402
from engine.plugins import BUILTINS  # noqa: E402

console = Console(width=max(Console().width, 120))

# -- the configurations -------------------------------------------------------------

RULES = {
    "points": {"per_unit": 1},
    "stamps": {
        # one stamp per bag of coffee (the demo's SKUs are KAVA-ETH-250, KAVA-BRA-1000, ...)
        "kava": {"required": 8, "per": "item", "skus": ["KAVA-*"], "reward": "free-bag"},
        # one stamp per order of brewing gear worth 20.00 or more
        "brew": {"required": 5, "per": "order", "skus": ["HARIO-*", "FILTRY-*", "MLYNEK-*"],
                 "min_spend": "20.00", "reward": "free-filters"},
    },
    "tiers": {"metric": "points_earned", "window_days": 365, "levels": [
        {"name": "silver", "threshold": 150, "multiplier": 1.25},
        {"name": "gold", "threshold": 400, "multiplier": 1.5},
    ]},
    "expiry": {"months": 12, "remind_days": 30, "pending_days": 14},
    "referrals": {"referrer_points": 200, "referee_points": 100, "min_order": "20.00"},
}
REWARDS = {
    "five-off": {"kind": "fixed_amount", "cost": 500, "value": "5.00", "expires_days": 90},
    "ten-percent": {"kind": "percentage", "cost": 800, "value": 10},
    "free-bag": {"kind": "free_product", "sku": "KAVA-ETH-250"},
    "free-filters": {"kind": "free_product", "sku": "FILTRY-V60"},
}
#: the campaign plugins, by table; only those a built-in plugin owns are turned on
CAMPAIGNS = {
    "double-points": {"timezone": "Europe/Prague", "weekdays": ["sat"],
                      # the workload's orders are paid from 5 to 15 January 2026
                      "days": [{"start": "2026-01-08", "end": "2026-01-09", "multiplier": 3}]},
    "sku-multipliers": {"rules": [{"skus": ["KAVA-*-250"], "multiplier": 2},
                                  {"skus": ["HARIO-*", "MLYNEK-*"], "multiplier": 1.5},
                                  {"categories": ["tea"], "multiplier": 1.5}]},
    "birthday-bonus": {"multiplier": 2, "timezone": "Europe/Prague"},
    "first-order-bonus": {"points": 100, "min_order": "20.00"},
}


def builtin_tables() -> set[str]:
    """The plugins.toml tables the built-in plugins of this checkout own."""
    owned = set()
    for spec in BUILTINS:
        module, _, attr = spec.partition(":")
        try:
            owned.add(getattr(getattr(importlib.import_module(module), attr), "table", None))
        except (ImportError, AttributeError):
            continue  # not in this checkout
    return owned


def rule_tables() -> dict[str, dict]:
    """Every rule and campaign table above that a built-in plugin owns, by name
    (``rules.stamps``, ``plugins.double-points``, ...), points excepted."""
    owned = builtin_tables()
    found = {f"rules.{name}": settings for name, settings in RULES.items() if name != "points"}
    found.update({f"plugins.{name}": settings for name, settings in CAMPAIGNS.items()})
    return {name: settings for name, settings in found.items() if name in owned}


def tables_with(*names: str) -> dict:
    """bench/ingest.py's tables (points, the Shopify connector) plus the rule
    tables named, and the reward catalogue (a stamp card issues one of its rewards)."""
    tables = {**TABLES, "rules": dict(TABLES["rules"]), "plugins": {}, "rewards": REWARDS}
    known = rule_tables()
    for name in names:
        group, _, table = name.partition(".")
        tables[group][table] = known[name]
    return tables


def make_engine(tables: dict, url: str, workdir: Path) -> Engine:
    return Engine(config_from_tables(tables, workdir / "plugins.toml", {"REGULARS_DATABASE_URL": url}))


# -- (a) rule evaluation alone ------------------------------------------------------


@dataclass
class Workload:
    """The orders as rules see them, prepared once; each order's customer and
    the customer's earlier orders (its ``history`` when it is ingested)."""

    orders: list[OrderView]
    #: each order's merged state (``engine.orders.merge``)
    states: list[dict]
    customers: list[CustomerView]
    earlier: list[list[int]]


def customer_view(number: int) -> CustomerView:
    """Customer ``number``: a quarter silver, a quarter gold, birthdays spread
    over the year (one in twelve in January, when the orders are paid)."""
    return CustomerView(
        id=number, email=f"customer{number}@example.com", phone=None, first_name="Jana",
        last_name="Nováková", card_code=f"CARD{number}", referral_code=f"REF{number}",
        created_at=datetime(2025, 1, 1, tzinfo=UTC), tier=(None, None, "silver", "gold")[number % 4],
        birthday=date(1990, 1 + number % 12, 1 + number % 28),
    )


def prepare(engine: Engine, bodies: Sequence[bytes], owners: Sequence[int]) -> Workload:
    connector = engine.connector("shopify")
    orders, states, customers, earlier = [], [], [], []
    seen: dict[int, list[int]] = defaultdict(list)
    for k, (body, owner) in enumerate(zip(bodies, owners, strict=True)):
        (event,) = [load_event(raw) for raw in connector.translate(TOPIC, json.loads(body), {})]
        state = merge(None, event)
        order = view(k + 1, event["channel"], event["order"]["id"], state, None)
        assert order.awardable, "every body is a paid order"
        orders.append(order)
        states.append(state)
        customers.append(customer_view(owner))
        earlier.append(list(seen[owner]))
        seen[owner].append(k)
    return Workload(orders, states, customers, earlier)


def evaluate(engine: Engine, work: Workload) -> tuple[list[OrderView], Counter]:
    """The hooks once, untimed: each order's view with its multipliers frozen
    (what its later awards and its siblings' history see), and a tally of what
    the rules gave."""
    pipeline, awarded, tally = engine.pipeline, [], Counter()
    for order, state, customer in zip(work.orders, work.states, work.customers, strict=True):
        multipliers = pipeline._multipliers(order, customer)
        awarded.append(view(order.id, order.channel, order.external_id, state, multipliers))
        tally["orders with 2+ multipliers"] += len(multipliers) >= 2
    for k, (order, customer) in enumerate(zip(awarded, work.customers, strict=True)):
        history = [awarded[j] for j in work.earlier[k]]
        for key, amount in pipeline._awards("regulars_order_awards", order=order, customer=customer,
                                            history=history).items():
            tally[key] += amount
    return awarded, tally


def time_hooks(engine: Engine, work: Workload, awarded: list[OrderView], repeat: int) -> float:
    """Seconds for one pass over the orders (the best of ``repeat``): what the
    pipeline asks the decision hooks about a newly paid order."""
    pipeline = engine.pipeline
    collect_awards, collect_multipliers = pipeline._awards, pipeline._multipliers
    history_plugins = pipeline.history_plugins or None
    items = [(base, order, customer, [awarded[j] for j in earlier])
             for base, order, customer, earlier in zip(work.orders, awarded, work.customers, work.earlier,
                                                       strict=True)]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for base, order, customer, history in items:
            collect_multipliers(base, customer)
            collect_awards("regulars_order_awards", order=order, customer=customer, history=history)
            if history_plugins:  # Pipeline._ask_again_about: each sibling, seen beside the changed order
                for sibling in history:
                    others = [order, *(o for o in history if o is not sibling)]
                    collect_awards("regulars_order_awards", only=history_plugins, order=sibling,
                                   customer=customer, history=others)
        best = min(best, time.perf_counter() - started)
    return best


def time_each_plugin(engine: Engine, work: Workload, awarded: list[OrderView], repeat: int) -> list:
    """(plugin, hook, µs per order) for every decision hook implementation on
    its own, through ``plugins.collect(..., only={plugin})``."""
    plugins, rows = engine.plugins, []
    for hook in ("regulars_order_multipliers", "regulars_order_awards"):
        for impl in reversed(getattr(plugins.pm.hook, hook).get_hookimpls()):
            only = {impl.plugin_name}
            orders = work.orders if hook == "regulars_order_multipliers" else awarded
            items = [(order, customer, [awarded[j] for j in earlier])
                     for order, customer, earlier in zip(orders, work.customers, work.earlier, strict=True)]
            best = float("inf")
            for _ in range(repeat):
                started = time.perf_counter()
                for order, customer, history in items:
                    plugins.collect(hook, only=only, order=order, customer=customer, history=history)
                best = min(best, time.perf_counter() - started)
            rows.append((impl.plugin_name, hook.removeprefix("regulars_"), best / len(items) * 1e6))
    return rows


# -- (b) ingest ---------------------------------------------------------------------


def ingest_pass(tables: dict, label: str, bodies: Sequence[bytes], workdir: Path,
                profiler: cProfile.Profile | None = None) -> tuple[Run, dict[str, float]]:
    """``engine.ingest`` once per body on a fresh SQLite file (bench/ingest.py's
    path (a)); the SQL statements it ran and what it wrote, per event."""
    slug = "".join(c if c.isalnum() else "-" for c in label)
    engine = make_engine(tables, fresh_database(None, workdir, slug), workdir)
    engine.ensure_schema()
    counted = count_statements(engine)
    if profiler:
        profiler.enable()
    run = engine_single(engine, bodies)
    if profiler:
        profiler.disable()
    statements = counted()
    with engine.db.connect() as conn:
        entries = conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()
        issued = conn.execute(select(func.count()).select_from(rewards)).scalar_one()
    engine.db.dispose()
    run.label = label
    sql = sum(n for kind, n in statements.items() if kind not in ("BEGIN", "COMMIT"))
    return run, {"statements": sql / len(bodies), "entries": entries / len(bodies), "rewards": issued}


# -- main ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="orders (default 2000)")
    parser.add_argument("--customers", type=int, default=1000, help="distinct customers (default 1000)")
    parser.add_argument("--repeat", type=int, default=7, help="passes of (a); the best counts (default 7)")
    parser.add_argument("--no-each", dest="each", action="store_false",
                        help="in (b), skip the passes with points and one other rule")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the all-rules hooks of (a) and the all-rules ingest of (b)")
    in_scratch(run, parser.parse_args(argv), "regulars-bench-rules-")


def run(args: argparse.Namespace, workdir: Path) -> None:
    bodies, owners = make_bodies(args.n, args.customers)
    size = sum(map(len, bodies)) / len(bodies)
    extra = list(rule_tables())
    configs = {"points only": TABLES, "all rules": tables_with(*extra)}
    console.print(f"{args.n} Shopify orders/paid bodies ({size / 1024:.1f} KiB each), "
                  f"{min(args.n, args.customers)} customers")
    console.print(f"all rules: rules.points, {', '.join(extra)}, rewards (4 entries)")

    # (a) the decision hooks alone
    url = f"sqlite:///{workdir / 'unused.sqlite3'}"  # never opened: the engines are built for their plugins
    engines = {label: make_engine(tables, url, workdir) for label, tables in configs.items()}
    work = prepare(engines["points only"], bodies, owners)
    seconds, tallies, awarded_by = {}, {}, {}
    for label, engine in engines.items():
        awarded, tallies[label] = evaluate(engine, work)
        awarded_by[label] = awarded
        seconds[label] = time_hooks(engine, work, awarded, args.repeat)
    table = Table(title=f"(a) rule evaluation alone: decision hooks for {args.n} paid orders, "
                        f"in process, best of {args.repeat}")
    for column in ("rules", "orders/s", "µs/order", "hook calls/order", "× points only"):
        table.add_column(column, justify="left" if column == "rules" else "right")
    for label, engine in engines.items():
        calls = _calls_per_order(engine, work)
        table.add_row(label, f"{args.n / seconds[label]:,.0f}", f"{seconds[label] / args.n * 1e6:.1f}",
                      f"{calls:.2f}", f"{seconds[label] / seconds['points only']:.1f}×")
    console.print(table)

    each = Table(title="(a) each decision hook on its own (all rules), plugins.collect(only={plugin})")
    for column in ("plugin", "hook", "µs/order"):
        each.add_column(column, justify="right" if column == "µs/order" else "left")
    for plugin, hook, micros in time_each_plugin(engines["all rules"], work, awarded_by["all rules"],
                                                 args.repeat):
        each.add_row(plugin, hook, f"{micros:.1f}")
    console.print(each)
    fired = tallies["all rules"]
    console.print("what the rules gave, all rules: " + ", ".join(
        f"{key.replace('|', ': ')} {value:,}" for key, value in sorted(fired.items())))
    if args.profile:
        _profile_hooks(engines["all rules"], work, awarded_by["all rules"])

    # (b) ingest, one transaction per event
    passes = [("points only", TABLES)]
    if args.each:
        passes += [(f"+ {name.split('.', 1)[1]}", tables_with(name)) for name in extra]
    passes.append(("all rules", configs["all rules"]))
    profiler = cProfile.Profile() if args.profile else None
    runs = [ingest_pass(tables, label, bodies, workdir, profiler if label == "all rules" else None)
            for label, tables in passes]
    base = runs[0][0]
    table = Table(title=f"(b) engine.ingest, 1 tx/event, {args.n} events on SQLite (temporary file, WAL)")
    for column in ("rules", "events/s", "p50 ms", "p99 ms", "seconds", "× points only", "SQL/event",
                   "entries/event", "rewards"):
        table.add_column(column, justify="left" if column == "rules" else "right", no_wrap=column == "rules")
    for r, counts in runs:
        table.add_row(r.label, f"{r.rate:,.0f}", f"{r.pct(0.5) * 1000:.2f}", f"{r.pct(0.99) * 1000:.2f}",
                      f"{r.seconds:.2f}", f"{r.seconds / base.seconds:.2f}×", f"{counts['statements']:.2f}",
                      f"{counts['entries']:.2f}", f"{counts['rewards']:,}")
    console.print(table)
    console.print("SQL/event: statements SQLAlchemy executed, without BEGIN and COMMIT (2 of each per event); "
                  "entries/event: ledger rows written; rewards: issued by full stamp cards")
    if profiler:
        console.print("[yellow]the all-rules ingest ran under cProfile: about twice as slow as without[/yellow]")
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats(50)


def _calls_per_order(engine: Engine, work: Workload) -> float:
    """Hook implementations called per order in the timed loop."""
    hook = engine.plugins.pm.hook
    multipliers = len(hook.regulars_order_multipliers.get_hookimpls())
    awards = len(hook.regulars_order_awards.get_hookimpls())
    again = len(engine.pipeline.history_plugins) * sum(map(len, work.earlier))
    return multipliers + awards + again / len(work.orders)


def _profile_hooks(engine: Engine, work: Workload, awarded: list[OrderView]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    time_hooks(engine, work, awarded, 1)
    profiler.disable()
    console.print("[bold]cProfile of (a), all rules, one pass[/bold]")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
