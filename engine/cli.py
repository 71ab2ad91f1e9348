"""The ``regulars`` command line. Every command has ``--help``; errors are one
clear sentence on stderr and a non-zero exit code (1: the work found a problem,
such as a failed delivery or a drifting balance; 2: the command was wrong)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from engine.cli_admin import admin_commands
from engine.cli_pos import pos_commands
from engine.cli_programme import programme_commands
from engine.cli_shops import shop_commands
from engine.cli_work import work_commands
from engine.config import ConfigError, load_config
from engine.plugins import PluginLoadError
from engine.simulate import simulate_command

console = Console(markup=False)  # a message's [brackets] are its text, not styles
err = Console(stderr=True, soft_wrap=True, markup=False)


class Context:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._config = None
        self._engine = None

    @property
    def config(self):
        """plugins.toml and the environment, read once."""
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._config

    @property
    def engine(self):
        if self._engine is None:
            from engine.app import Engine
            from engine.db import SchemaOutdated, UnsuitableDatabase

            try:
                self._engine = Engine(self.config)
                self._engine.ensure_schema()
            except (ConfigError, PluginLoadError, SchemaOutdated, UnsuitableDatabase) as exc:
                raise click.ClickException(str(exc)) from None
        return self._engine


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="REGULARS_CONFIG", type=click.Path(dir_okay=False),
              help="plugins.toml to use (default: ./plugins.toml; env REGULARS_CONFIG).")
@click.version_option(package_name="regulars")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """regulars: one loyalty account per customer across your e-shop and your till."""
    ctx.obj = Context(config_path)


@main.command()
@click.argument("path", default="plugins.toml", type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: str, force: bool) -> None:
    """Write a commented starter plugins.toml at PATH (a directory, existing
    or written with a trailing slash, gets one inside; missing directories
    are made)."""
    target = Path(path)
    if target.is_dir() or path.endswith(("/", "\\")):
        target = target / "plugins.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; use --force to overwrite it")
    starter = (Path(__file__).parent / "starter.toml").read_text(encoding="utf-8")
    target.write_text(starter, encoding="utf-8")
    console.print(f"wrote {target}: edit it, then run `regulars db upgrade` and `regulars ingest`")


# -- ingest -------------------------------------------------------------------


def _deliveries(paths: tuple[str, ...], topic: str):
    """(topic, body bytes, headers) for each delivery in the files: a JSON file is
    one delivery; a .jsonl/.ndjson file is one per line. A recorded delivery
    wrapped as {"headers", "body"} keeps its headers."""
    for path in paths:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        lines = raw.splitlines() if path.endswith((".jsonl", ".ndjson")) else [raw]
        for line in lines:
            if not line.strip():
                continue
            yield _unwrap(topic, line)


def _unwrap(topic: str, body: bytes):
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # stored as it is, and failed, saying why
        return topic, body, {}
    if isinstance(data, dict) and set(data) <= {"headers", "body", "topic"} and "body" in data \
            and isinstance(data.get("headers", False), dict | None):
        return topic, json.dumps(data["body"]).encode(), data["headers"] or {}
    return topic, body, {}


@main.command()
@click.argument("channel")
@click.argument("topic")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--batch", type=click.IntRange(1, 10_000), default=1, show_default=True,
              help="Deliveries per transaction (larger is faster for backfills).")
@pass_ctx
def ingest(ctx: Context, channel: str, topic: str, files: tuple[str, ...], batch: int) -> None:
    """Feed recorded deliveries through the same path a webhook takes.

    CHANNEL is a connector (shopify, woocommerce); TOPIC its topic
    (orders/paid, order.updated, ...). FILES are JSON (one delivery) or JSON
    Lines (.jsonl, one per line). Exits 1 if any delivery failed; failed ones
    are kept: see `regulars events list --failed`.
    """
    from rich.progress import Progress

    from engine.app import UnknownChannel

    engine = ctx.engine
    try:
        engine.connector(channel)
    except UnknownChannel as exc:
        raise click.UsageError(str(exc)) from None
    deliveries = list(_deliveries(files, topic))
    counts = {"applied": 0, "duplicate": 0, "ignored": 0, "failed": 0}
    failures = []
    with Progress(console=err, transient=True, disable=len(deliveries) < 50) as progress:
        task = progress.add_task(f"ingesting {channel} {topic}", total=len(deliveries))
        for start in range(0, len(deliveries), batch):
            chunk = deliveries[start : start + batch]
            if batch == 1:
                outcomes = [engine.ingest(channel, *chunk[0])]
            else:
                outcomes = engine.ingest_batch(channel, chunk)
            for outcome in outcomes:
                counts[outcome.status] += 1
                if outcome.status == "failed":
                    failures.append(outcome)
            progress.advance(task, len(chunk))
    for outcome in failures[:20]:
        who = f" [{outcome.plugin}]" if outcome.plugin else ""
        err.print(f"[red]failed[/red] delivery {outcome.inbox_id}{escape(who)}: {escape(outcome.error or '')}",
                  markup=True, highlight=False)
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    console.print(f"{len(deliveries)} deliveries: {summary}", highlight=False)
    if counts["failed"]:
        sys.exit(1)


# -- customers ----------------------------------------------------------------


@main.group()
def customer() -> None:
    """Look customers up, adjust their balance, export or erase their data."""


@customer.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (points, stamps, tier, rewards, ...).")
@pass_ctx
def customer_show(ctx: Context, key: str, as_json: bool) -> None:
    """Show a customer by email, phone, card code, referral code, id or CHANNEL:ID."""
    from engine.customers import customer_summary

    summary = customer_summary(ctx.engine, key)
    if summary is None:
        raise click.ClickException(f"no customer matches {key!r}")
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    table = Table(show_header=False, box=None)
    name = " ".join(filter(None, [summary["first_name"], summary["last_name"]])) or "-"
    rows = [
        ("customer", f"{summary['id']}  {name}"),
        ("email", summary["email"] or "-"),
        ("phone", summary["phone"] or "-"),
        ("card", summary["card_code"]),
        *([("birthday", summary["birthday"] or "-")] if summary["birthday"] or summary["birthday_wanted"] else []),
        ("points", str(summary["points"])),
        *([("expiring", ", ".join(f"{e['points']} on {e['on']}" for e in summary["points_expiring"]))]
          if summary["points_expiring"] else []),
        ("stamps", ", ".join(f"{c}: {n}" for c, n in summary["stamps"].items()) or "-"),
        *([("other units", ", ".join(f"{u}: {n}" for u, n in summary["other_units"].items()))]
          if summary["other_units"] else []),
        ("tier", summary["tier"] or "-"),
        ("referral code", summary["referral_code"]),
        ("channels", ", ".join(f"{c}: {i}" for c, ids in summary["channels"].items() for i in ids) or "-"),
        ("orders", str(summary["orders"])),
        ("memberships", ", ".join(f"{m['plan']}: {m['status']}" for m in summary.get("memberships", ())) or "-"),
    ]
    for label, value in rows:
        table.add_row(Text(label, style="bold"), value)
    console.print(table)


def _who(via: str) -> str:
    """``cli:<login>``: who made an adjustment from this command line."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's anonymous uid)
        return via
    return f"{via}:{user}"


@customer.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("amount", type=int)
@click.option("--note", required=True, help="Why (kept with the entry, shown on the dashboard).")
@click.option("--card", help="Adjust the stamps on this card instead of points.")
@click.option("--key", "idempotency_key", help="A request key: retrying with it changes nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the adjustment as JSON.")
@pass_ctx
def customer_adjust(ctx: Context, key: str, amount: int, note: str, card: str | None,
                    idempotency_key: str | None, as_json: bool) -> None:
    """Give (AMOUNT > 0) or take (AMOUNT < 0) points, or stamps with --card,
    from the customer KEY finds: goodwill, a correction. The entry keeps the
    note and who made it (cli:<your login>). Taken points close the
    soonest-expiring lots; given ones expire as earned points do. Exit 1,
    saying why, when refused (it would leave the balance below zero, an
    unknown customer or card)."""
    from engine.adjustments import AdjustmentRefused

    try:
        made = ctx.engine.adjust(key, amount, note, _who("cli"), card, idempotency_key)
    except AdjustmentRefused as exc:
        err.print(f"refused: {exc}", highlight=False)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(made.as_json(), indent=2, ensure_ascii=False))
        return
    what = "points" if card is None else f"stamps on {card}"
    if made.duplicate:
        console.print(f"already done with key {idempotency_key}: {made.amount:+d} {what} ({made.note}); "
                      f"balance now {made.balance}", highlight=False, soft_wrap=True)
        return
    console.print(f"{key}: {made.amount:+d} {what} ({made.note}); balance now {made.balance}", highlight=False,
                  soft_wrap=True)


@customer.command("import-points")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--set", "replace", is_flag=True,
              help="Make each balance the file's value (default: add the file's points to it).")
@click.option("--note", help="Why, kept with each adjustment (default: imported from FILE).")
@click.option("--dry-run", is_flag=True, help="Say what would change, and change nothing.")
@pass_ctx
def customer_import_points(ctx: Context, file: str, replace: bool, note: str | None, dry_run: bool) -> None:
    """Import points balances from a CSV file (Smile.io's format): a header
    row with an email (or phone, or card_code) column and a points column.
    A customer not known yet is created from the email or phone. Each row is
    applied once, however often the file is imported. Exit 1 when a row was
    refused (each is named with its line)."""
    from rich.progress import Progress

    from engine.imports import ImportFileError, import_points, read_rows

    data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    name = "stdin" if file == "-" else Path(file).name
    try:
        total = len(read_rows(data))
    except ImportFileError as exc:
        raise click.ClickException(f"{name}: {exc}") from None
    with Progress(console=err, transient=True, disable=total < 200) as bar:
        task = bar.add_task("importing", total=total)
        report = import_points(ctx.engine, data, note or f"imported from {name}", _who("cli"), replace, dry_run,
                               progress=lambda n: bar.advance(task, n))
    for line, reason in report.refused:
        err.print(f"line {line}: refused: {reason}", highlight=False)
    counts = ", ".join(f"{report.rows[s]} {s}" for s in ("adjusted", "unchanged", "already imported", "refused")
                       if report.rows[s])
    prefix = "dry run, nothing changed: " if dry_run else ""
    console.print(f"{prefix}{sum(report.rows.values())} rows: {counts or 'none'}; +{report.given} and "
                  f"-{report.taken} points; {report.created} customer{'' if report.created == 1 else 's'} created",
                  highlight=False, soft_wrap=True)
    if report.refused:
        sys.exit(1)


@customer.command("export-all")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, allow_dash=True), default="-")
@click.option("--excel", is_flag=True, help="Begin with a UTF-8 byte-order mark, which Excel needs for accents.")
@pass_ctx
def customer_export_all(ctx: Context, file: str, excel: bool) -> None:
    """Write every customer as CSV to FILE (default: standard output): id,
    email, phone, names, card code, points, tier, marketing consent, birthday,
    since when, and each stamp card's stamps. `import-points` reads the file
    as it is (another regulars, or back here)."""
    from rich.progress import Progress

    from engine.customers import count_customers
    from engine.exports import csv_lines

    engine = ctx.engine
    engine.ensure_schema()
    with engine.db.connect() as conn:
        total = count_customers(conn)
    written = [0]
    with (Progress(console=err, transient=True, disable=total < 10_000) as bar,
          click.open_file(file, "wb", atomic=file != "-") as out):  # (bytes: the CSV's own line ends)
        task = bar.add_task("exporting", total=total)
        for piece in csv_lines(engine, bom=excel, tally=written):
            out.write(piece.encode("utf-8"))
            bar.update(task, completed=written[0])
    if file != "-":
        err.print(f"{written[0]} customer{'' if written[0] == 1 else 's'} written to {file}", highlight=False)


@customer.command("birthday")
@click.argument("key")
@click.argument("day", metavar="YYYY-MM-DD|none")
@pass_ctx
def customer_birthday(ctx: Context, key: str, day: str) -> None:
    """Correct the birthday of the customer KEY finds (a card, a till or a
    connector only ever fills in a missing one); "none" forgets it, and the
    card then asks again."""
    from datetime import date

    from engine.db import utcnow
    from engine.identity import possible_birthday

    if day.lower() == "none":
        born = None
    else:
        try:
            born = date.fromisoformat(day)
        except ValueError:
            raise click.BadParameter(f"{day!r} is not a date (YYYY-MM-DD) or none", param_hint="DAY") from None
        if not possible_birthday(born):
            raise click.BadParameter("a birthday is between 1900-01-01 and today", param_hint="DAY")
    engine = ctx.engine
    with engine.db.begin() as conn:
        customer_id = engine.identity.find(conn, key)
        if customer_id is None:
            raise click.ClickException(f"no customer matches {key!r}")
        engine.identity.correct_birthday(conn, customer_id, born, utcnow())
    console.print(f"{key}: birthday {'forgotten' if born is None else born.isoformat()}", highlight=False)


@customer.command("export")
@click.argument("key")
@pass_ctx
def customer_export(ctx: Context, key: str) -> None:
    """Print everything regulars holds about a customer, as JSON (a GDPR data
    request): the customer, channels, ledger, orders, rewards, referrals, tier
    history and the raw deliveries that mention them."""
    from engine.privacy import UnknownCustomer, dumps, export

    try:
        click.echo(dumps(export(ctx.engine, key)))
    except UnknownCustomer as exc:
        raise click.ClickException(str(exc)) from None


@customer.command("erase")
@click.argument("key")
@click.option("--yes", is_flag=True, help="Do it (without this, nothing is erased).")
@pass_ctx
def customer_erase(ctx: Context, key: str, yes: bool) -> None:
    """Erase a customer's personal data (email, phone, names, address, birthday,
    order notes, adjustment notes and the raw deliveries that mention them),
    keeping the ledger's sums exact. Needs --yes."""
    from engine.db import utcnow
    from engine.privacy import UnknownCustomer, erase

    if not yes:
        raise click.UsageError("erasing can't be undone: add --yes")
    try:
        done = erase(ctx.engine, key, utcnow())
    except UnknownCustomer as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"erased: {done['customers']} customer record(s), {done['deliveries']} raw deliveries, "
                  f"notes of {done['orders_with_notes']} orders and {done['adjustment_notes']} adjustments; "
                  "balances unchanged", highlight=False)


# -- audit, plugins, events, db ------------------------------------------------


@main.command()
@pass_ctx
def audit(ctx: Context) -> None:
    """Recompute every balance from the ledger; exit 1 on any drift."""
    engine = ctx.engine
    with engine.db.connect() as conn:
        drifts = engine.ledger.audit(conn)
        from sqlalchemy import func, select

        from engine.db.models import accounts, ledger_entries

        n_accounts = conn.execute(select(func.count()).select_from(accounts)).scalar_one()
        n_entries = conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()
    if not drifts:
        console.print(f"audit clean: {n_accounts} accounts agree with their {n_entries} ledger entries")
        return
    for d in drifts:
        err.print(f"drift: customer {d.customer_id} {d.unit}: cached {d.cached}, ledger says {d.entries}")
    err.print(f"{len(drifts)} of {n_accounts} accounts drift from the ledger")
    sys.exit(1)


def _table(*headers: str) -> Table:
    """A table whose cells fold instead of ending in "…": names and errors must
    survive a narrow terminal or a pipe (rich assumes 80 columns there)."""
    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def plugins(ctx: Context, as_json: bool) -> None:
    """List the loaded plugins, where they come from and the hooks they implement."""
    loaded = ctx.engine.plugins.loaded
    data = [{"name": p.name, "source": p.source, "table": p.table, "hooks": p.hooks} for p in loaded]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = _table("plugin", "from", "table", "hooks")
    for p in data:
        table.add_row(p["name"], p["source"], f"[{p['table']}]" if p["table"] else "-", "\n".join(p["hooks"]))
    console.print(table)


@main.group()
def events() -> None:
    """The inbox: every delivery received, with its status."""


@events.command("list")
@click.option("--failed", is_flag=True, help="Only failed deliveries.")
@click.option("--status", type=click.Choice(["received", "applied", "ignored", "failed"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def events_list(ctx: Context, failed: bool, status: str | None, limit: int, as_json: bool) -> None:
    """List deliveries, newest first."""
    from engine import inbox

    with ctx.engine.db.connect() as conn:
        rows = inbox.listing(conn, "failed" if failed else status, limit)
    if as_json:
        click.echo(json.dumps([{**r._asdict(), "received_at": str(r.received_at), "processed_at": str(r.processed_at)} for r in rows], indent=2))
        return
    table = _table("id", "channel", "topic", "status", "error")
    for r in rows:
        error = (f"[{r.plugin}] " if r.plugin else "") + (r.error or "")
        table.add_row(str(r.id), r.channel, r.topic, r.status, error)
    console.print(table)


@events.command("replay")
@click.argument("ids", nargs=-1, type=int)
@click.option("--failed", "all_failed", is_flag=True, help="Replay every failed delivery.")
@pass_ctx
def events_replay(ctx: Context, ids: tuple[int, ...], all_failed: bool) -> None:
    """Apply stored deliveries again from their raw bodies (exit 1 if one fails)."""
    from engine import inbox

    engine = ctx.engine
    if all_failed:
        with engine.db.connect() as conn:
            ids = tuple(r.id for r in inbox.listing(conn, "failed", 100_000))
    if not ids:
        raise click.UsageError("name the deliveries to replay, or use --failed")
    failed = 0
    for inbox_id in ids:
        try:
            outcome = engine.replay(inbox_id)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
        who = f" [{outcome.plugin}]" if outcome.plugin else ""
        console.print(f"delivery {inbox_id}: {outcome.status}{who} {outcome.error or ''}".rstrip(), highlight=False)
        failed += outcome.status == "failed"
    if failed:
        sys.exit(1)


@main.group()
def db() -> None:
    """The database: its schema (Alembic migrations) and its backup."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(obj: Context, revision: str) -> None:
    """Migrate the database (REGULARS_DATABASE_URL, default the SQLite file) to REVISION."""
    from engine.db import UnsuitableDatabase, make_engine, upgrade
    from engine.plugins import Plugins

    try:
        config = load_config(obj.config_path)
        Plugins(config)  # a wrong plugins.toml stops here too, before the schema changes
    except (ConfigError, PluginLoadError) as exc:
        raise click.ClickException(str(exc)) from None
    engine = make_engine(config.database_url)
    try:
        upgrade(engine, revision)
    except UnsuitableDatabase as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"database at {engine.url.render_as_string(hide_password=True)} is at {revision}")


@db.command("backup")
@click.argument("target", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_ctx
def db_backup(ctx: Context, target: str, force: bool) -> None:
    """Copy the embedded SQLite database to TARGET, safely while regulars
    runs: one consistent moment, checked (SQLite's integrity check and the
    ledger's audit) before it takes TARGET's name. Exit 1 if the audit finds
    drift (the copy is kept: the drift is the database's). PostgreSQL is
    backed up with pg_dump."""
    from sqlalchemy.engine import make_url

    from engine.db.backup import BackupFailed, backup_sqlite, sqlite_file

    url = ctx.config.database_url
    if sqlite_file(url) is None:
        shown = make_url(url).set(drivername=make_url(url).get_backend_name()).render_as_string(hide_password=True)
        raise click.ClickException(f"{shown} is backed up with its own tools, not here: "
                                   f"pg_dump --format=custom --file regulars.dump '{shown}'")
    engine = ctx.engine
    path = Path(target)
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; use --force to overwrite it")
    try:
        copied = backup_sqlite(url, path, engine.ledger.audit)
    except BackupFailed as exc:
        raise click.ClickException(f"backup failed, nothing written to {path}: {exc}") from None
    n = copied.counts
    console.print(f"backed up {copied.source} to {copied.target}: {copied.size / 2**20:.1f} MiB in "
                  f"{copied.seconds:.1f} s; {n['customers']} customers, {n['ledger_entries']} ledger entries, "
                  f"{n['deliveries']} deliveries", highlight=False)
    if not copied.drifts:
        console.print(f"integrity ok; audit clean: {n['accounts']} accounts agree with their ledger entries",
                      highlight=False)
        return
    err.print(f"integrity ok, but {len(copied.drifts)} of {n['accounts']} accounts drift from the ledger "
              "(the copy is kept; `regulars audit` names them)", highlight=False)
    sys.exit(1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes that answer requests (about one per core); one of them runs the background work.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="A log line per request (it costs about a tenth of the webhook rate under load).")
@pass_ctx
def serve(ctx: Context, host: str, port: int, workers: int, access_log: bool) -> None:
    """Serve the webhook receivers (POST /webhooks/shopify, /webhooks/woocommerce)
    and the install links (/install/shopify, /install/woocommerce).

    Deliveries are verified, stored and answered at once; on the embedded
    defaults they are applied in the background in this process, the outbox
    (balances and coupons for the shops) is delivered from it too, and the
    scheduled jobs run in it. With REGULARS_BROKER_URL set, that work goes
    to Celery workers instead (`regulars worker`, `regulars beat`).
    Secrets come from REGULARS_SHOPIFY_WEBHOOK_SECRET and
    REGULARS_WOOCOMMERCE_WEBHOOK_SECRET (comma-separated while rotating), and
    from an install.

    With --workers N, N processes share the port: each receives, and one at a
    time runs the background work; on SQLite they take turns to write."""
    from engine.web.serving import serve as serve_app

    serve_app(ctx.engine, host, port, workers, ctx.config_path, access_log)


@main.command()
@click.option("--customers", default=300, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seed", default=7, show_default=True, help="Random seed (the same seed, the same shop).")
@pass_ctx
def demo(ctx: Context, customers: int, seed: int) -> None:
    """Fill the shop with demo customers and orders across channels, through the
    same ingest path as real deliveries, then print a summary."""
    from engine.demo import run_demo

    run_demo(ctx.engine, customers, seed, console)


for command in (simulate_command, *programme_commands, *shop_commands, *pos_commands, *work_commands, *admin_commands):
    main.add_command(command)


def run() -> None:
    """The console script: the CLI, with a database that can't be reached (or
    refuses a statement, or has no driver installed) reported in one sentence
    instead of a traceback."""
    from sqlalchemy.exc import DBAPIError

    try:
        main(standalone_mode=True)
    except DBAPIError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
        err.print(f"Error: database: {first}", highlight=False)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        if exc.name != "psycopg":
            raise
        err.print("Error: database: PostgreSQL needs psycopg: install regulars with its postgres extra "
                  "(pip install 'regulars[postgres]', or pip install -e '.[postgres]' in a checkout)", highlight=False)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
