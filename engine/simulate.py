"""``regulars simulate``: the programme as it would be under another configuration.

Every delivery in the inbox (applied, failed or ignored alike: everything that
was received) is fed again from its raw body and headers, in the order it was
received (inbox id), through ``Engine.ingest_batch`` of an engine built from the
other configuration on a *scratch* database: a temporary SQLite file, migrated
here and deleted afterwards. The real database is only read. ``figures(engine)``
measures both databases the same way (SQL aggregates).

Customers are carried over first, under their ids, card and referral codes
(``carry_customers``: no delivery holds regulars' own codes). Only deliveries
are replayed: redemptions (``regulars redeem``), adjustments by hand, the scheduled
jobs (points and reward expiry, the tier review) and anything else that is not
a delivery are not, so compare *points issued*. With ``--since`` only
deliveries received since then are replayed: scratch balances start from zero.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from engine.app import Engine
    from engine.cli import Context
    from engine.config import Config
    from engine.rewards import Catalogue

#: deliveries per transaction in the scratch database, and per page read
BATCH = 500
CENT = Decimal("0.01")
#: the ``tiers`` key of customers without a tier
NO_TIER = "none"
REPLAY_NOTE = (
    "simulate replays inbox deliveries only: redemptions, adjustments, expiry and tier reviews are not "
    "replayed, so compare points issued; outstanding points differ by whatever was redeemed, adjusted or expired"
)


def point_value(catalogue: Catalogue) -> tuple[str, Decimal] | None:
    """The money a point is worth: value / cost of the best (lowest cost per
    unit of value) ``fixed_amount`` reward that can be bought; None if none."""
    offers = [(name, Decimal(entry["value"]) / entry["cost"]) for name, entry in catalogue.entries.items()
              if entry["kind"] == "fixed_amount" and entry.get("cost")]
    return min(offers, key=lambda offer: (-offer[1], offer[0]), default=None)


def valued_point(engine: Engine) -> tuple[str | None, Decimal] | None:
    """What a point is worth, and the reward that says so: ``[engine]
    point_value`` (no reward), else ``point_value`` of the catalogue; None
    without either. The dashboard's value of a point too (``engine.metrics``)."""
    configured = engine.config.engine.get("point_value")
    if configured not in (None, ""):
        return None, Decimal(str(configured))
    return point_value(engine.catalogue)


def figures(engine: Engine) -> dict[str, Any]:
    """What a database holds, by SQL aggregates:

    - ``points_issued``: positive points entries from orders (source ``order:``);
    - ``points_net``: every points entry from orders (issued less refunds and
      cancellations);
    - ``points_redeemed``: points spent on rewards (``redeem`` entries);
    - ``points_outstanding``: the sum of every points balance;
    - ``liability``: outstanding × the value of a point: ``[engine]
      point_value``, else the best fixed_amount reward's (None: neither);
    - ``deliveries_failed``: inbox deliveries that failed (the other
      configuration's plugins may fail on some);
    - ``customers``, ``tiers`` (tier → customers; merged ones not counted),
      ``rewards`` (name → issued, voided ones not counted), ``cards`` (card →
      rewards its full cards issued), ``stamps`` (card → stamps on open cards).
    """
    from sqlalchemy import case, func, select

    from engine.customers import count_customers
    from engine.db.models import accounts, customers, ledger_entries, rewards
    from engine.inbox import failed_count
    from engine.rules_api import UNIT_POINTS

    amount, source = ledger_entries.c.amount, ledger_entries.c.source
    from_orders = source.like("order:%")
    alive, kept = customers.c.merged_into.is_(None), rewards.c.status != "voided"
    with engine.db.connect() as conn:
        issued, net, redeemed = conn.execute(
            select(
                func.coalesce(func.sum(case((from_orders & (amount > 0), amount), else_=0)), 0),
                func.coalesce(func.sum(case((from_orders, amount), else_=0)), 0),
                func.coalesce(func.sum(case((ledger_entries.c.reason == "redeem", -amount), else_=0)), 0),
            )
            .select_from(ledger_entries.join(accounts, accounts.c.id == ledger_entries.c.account_id))
            .where(accounts.c.unit == UNIT_POINTS)
        ).one()
        outstanding = conn.execute(
            select(func.coalesce(func.sum(accounts.c.balance), 0)).where(accounts.c.unit == UNIT_POINTS)
        ).scalar_one()
        people = count_customers(conn)
        failed = failed_count(conn)

        def grouped(column, measure, *where) -> list:
            return conn.execute(select(column, measure).where(*where).group_by(column).order_by(column)).all()

        tiers = grouped(customers.c.tier, func.count(), alive)
        issued_rewards = grouped(rewards.c.reward, func.count(), kept)
        cards = grouped(rewards.c.source, func.count(), kept, rewards.c.source.like("card:%"))
        open_stamps = grouped(accounts.c.unit, func.sum(accounts.c.balance), accounts.c.unit.like("stamps:%"))
    value = valued_point(engine)
    return {
        "currency": engine.config.currency,
        "customers": int(people),
        "deliveries_failed": int(failed),
        "points_issued": int(issued),
        "points_net": int(net),
        "points_redeemed": int(redeemed),
        "points_outstanding": int(outstanding),
        "point_value": value[1].normalize() if value else None,
        "point_value_reward": value[0] if value else None,
        "liability": (int(outstanding) * value[1]).quantize(CENT) if value else None,
        "tiers": {tier or NO_TIER: int(n) for tier, n in tiers},
        "rewards": {name: int(n) for name, n in issued_rewards},
        "cards": {src.split(":", 1)[1]: int(n) for src, n in cards},
        "stamps": {unit.split(":", 1)[1]: int(n) for unit, n in open_stamps},
    }


@contextmanager
def scratch_engine(config: Config, extra_plugins: tuple = ()) -> Iterator[Engine]:
    """An Engine for ``config`` on a fresh, migrated, temporary SQLite file
    (whatever database ``config`` names is never opened); deleted on exit.
    Its observer hooks are not called. A wrong configuration raises
    ConfigError (or PluginLoadError) here."""
    from engine.app import Engine
    from engine.db import upgrade

    with tempfile.TemporaryDirectory(prefix="regulars-simulate-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'scratch.sqlite3'}"
        engine = Engine(dataclasses.replace(config, database_url=url), extra_plugins=extra_plugins)
        engine.observers = False  # nobody is told of what a rehearsal earns (a plugin that mails customers)
        try:
            upgrade(engine.db)
            yield engine
        finally:
            engine.db.dispose()


def stored_deliveries(engine: Engine, since: datetime | None = None, page: int = BATCH) -> Iterator[Any]:
    """The inbox rows, in the order they were received, read a page at a time."""
    from sqlalchemy import select

    from engine.db.models import inbox

    columns = (inbox.c.id, inbox.c.channel, inbox.c.topic, inbox.c.body, inbox.c.headers)
    last = 0
    while True:
        query = select(*columns).where(inbox.c.id > last).order_by(inbox.c.id).limit(page)
        if since is not None:
            query = query.where(inbox.c.received_at >= since)
        with engine.db.connect() as conn:
            rows = conn.execute(query).all()
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1].id


#: who a customer is, carried into the scratch database (what they earned is not: the replay decides it)
_WHO = ("id", "email", "phone", "first_name", "last_name", "card_code", "referral_code", "accepts_marketing",
        "address", "birthday", "created_at", "updated_at")


def carry_customers(source: Engine, target: Engine, page: int = BATCH) -> int:
    """Copy ``source``'s customers (those not merged into another) with their
    ids, card and referral codes and their channels' ids into ``target``'s
    empty database, before the replay. The codes are regulars' own, in no
    delivery: without them a till's sale or visit naming a card code, or an
    order carrying a referral code, would find nobody in the scratch database
    (a nameless customer per delivery; no referral). Balances, tiers and
    everything else earned are left to the replay. Returns how many."""
    from sqlalchemy import insert, select

    from engine.db.models import customer_links, customers

    carried, last = 0, 0
    while True:
        with source.db.connect() as conn:
            people = conn.execute(select(*(customers.c[name] for name in _WHO))
                                  .where(customers.c.merged_into.is_(None), customers.c.id > last)
                                  .order_by(customers.c.id).limit(page)).all()
            links = conn.execute(select(customer_links.c.channel, customer_links.c.external_id,
                                        customer_links.c.customer_id)
                                 .where(customer_links.c.customer_id.in_([p.id for p in people]))).all()
        if not people:
            return carried
        with target.db.begin() as conn:
            conn.execute(insert(customers), [dict(p._mapping) for p in people])
            if links:
                conn.execute(insert(customer_links), [dict(link._mapping) for link in links])
        carried += len(people)
        last = people[-1].id


def replay_into(source: Engine, target: Engine, since: datetime | None = None, batch: int = BATCH) -> Counter:
    """Feed ``source``'s stored deliveries through ``target.ingest_batch``, runs
    of consecutive deliveries of one channel at a time (so the order holds
    across channels), after carrying its customers over (``carry_customers``).
    Returns outcome → count; ``skipped`` counts deliveries of a channel
    ``target`` has no connector for."""
    carry_customers(source, target)
    counts: Counter = Counter()
    channel: str | None = None
    run: list[tuple[str, bytes, dict]] = []

    def flush() -> None:
        if run:
            counts.update(outcome.status for outcome in target.ingest_batch(channel, run))
            run.clear()

    for row in stored_deliveries(source, since, batch):
        if row.channel not in target.connectors:
            counts[f"skipped ({row.channel}: no connector)"] += 1
            continue
        if row.channel != channel or len(run) >= batch:
            flush()
            channel = row.channel
        run.append((row.topic, bytes(row.body), row.headers or {}))
    flush()
    return counts


def difference(today: Any, simulated: Any) -> Any:
    """simulated − today, key by key (a missing key counts 0); None where a
    side has no number."""
    if isinstance(today, dict) or isinstance(simulated, dict):
        a, b = today or {}, simulated or {}
        return {k: difference(a.get(k, 0), b.get(k, 0)) for k in sorted(set(a) | set(b))}
    if isinstance(today, (int, Decimal)) and isinstance(simulated, (int, Decimal)):
        return simulated - today
    return None


MEASURES = {
    "customers": "customers", "deliveries_failed": "deliveries failed", "points_issued": "points issued (orders)",
    "points_net": "points net of refunds (orders)", "points_redeemed": "points redeemed (not replayed)",
    "points_outstanding": "points outstanding", "liability": "liability ({currency})",
    "point_value": "value of a point ({currency})",
}
GROUPS = {"tiers": "tier {}: customers", "rewards": "reward {}: issued", "cards": "card {}: rewards",
          "stamps": "card {}: open stamps"}


def simulate(today: Engine, other: Config, since: datetime | None = None, batch: int = BATCH) -> dict[str, Any]:
    """Replay today's deliveries under ``other`` into a scratch database; the
    figures of both sides, their difference, the replay's outcomes and notes."""
    now = figures(today)
    with scratch_engine(other) as scratch:
        replayed = replay_into(today, scratch, since, batch)
        simulated = figures(scratch)
    notes = [REPLAY_NOTE]
    if since is not None:
        notes.append(f"only deliveries received since {since.isoformat()} were replayed: simulated balances "
                     "start from zero then, today's figures cover everything")
    for side, figs in (("today", now), ("simulated", simulated)):
        if figs["liability"] is None:
            notes.append(f"no liability in money {side}: no [engine] point_value and no fixed_amount reward "
                         "with a cost in the catalogue, so a point has no money value")
    if any(status.startswith("skipped") for status in replayed):
        notes.append("deliveries of channels the other configuration has no connector for were skipped")
    return {
        "since": since.isoformat() if since else None,
        "replayed": dict(replayed),
        "today": now,
        "simulated": simulated,
        "difference": {k: difference(now[k], simulated[k]) for k in (*MEASURES, *GROUPS)},
        "notes": notes,
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, today, simulated, difference) as the table shows them."""
    today, sim, diff = result["today"], result["simulated"], result["difference"]
    out = [(label.format(currency=today["currency"]), today[k], sim[k], diff[k]) for k, label in MEASURES.items()]
    for k, label in GROUPS.items():
        out += [(label.format("(no tier)" if k == "tiers" and name == NO_TIER else name),
                 today[k].get(name, 0), sim[k].get(name, 0), d) for name, d in diff[k].items()]
    return [(measure, _cell(a), _cell(b), _cell(d, signed=True)) for measure, a, b, d in out]


def _cell(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+}" if signed and value else str(value)


@click.command("simulate")
@click.option("--config", "other_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The other plugins.toml to replay the stored deliveries under.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Replay only deliveries received at or after this UTC time (balances then start from zero).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def simulate_command(ctx: Context, other_path: str, since: datetime | None, as_json: bool) -> None:
    """What if the programme had been configured as OTHER.toml? Replays every
    stored delivery under it into a scratch SQLite database (the real one is only
    read) and prints points issued, outstanding points and their liability,
    customers per tier, rewards and stamp cards: today, simulated, difference.
    Redemptions, expiry and tier reviews are not deliveries and are not replayed."""
    from rich.console import Console
    from rich.table import Table

    from engine.config import ConfigError, load_config
    from engine.plugins import PluginLoadError

    try:
        result = simulate(ctx.engine, load_config(other_path), since.replace(tzinfo=UTC) if since else None)
    except (ConfigError, PluginLoadError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    console = Console(markup=False)  # a message's [brackets] are its text, not styles
    table = Table(title=f"simulate {other_path}")
    for header in ("measure", "today", "simulated", "difference"):
        table.add_column(header, overflow="fold", justify="left" if header == "measure" else "right")
    for row in rows(result):
        table.add_row(*row)
    console.print(table)
    console.print("replayed: " + (", ".join(f"{n} {s}" for s, n in result["replayed"].items()) or "nothing"),
                  highlight=False)
    for note in result["notes"]:
        console.print(f"note: {note}", highlight=False)
