"""The ``regulars`` commands for background work on Celery: ``worker``,
``beat``, ``sweep`` and ``queue`` (what waits, where). (engine/cli.py
registers these.)"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

console = Console(markup=False)  # a message's [brackets] are its text, not styles

NO_BROKER = ("no broker: set REGULARS_BROKER_URL (redis://... or amqp://...). On the embedded defaults "
             "no worker is needed: `regulars serve` does the background work in its own process")


def _celery(ctx):
    """The Celery app pointed at the configured broker and plugins.toml, once
    the engine (and its schema) is known to be good."""
    from engine.tasks import configure

    engine = ctx.engine  # a wrong plugins.toml or an outdated schema stops here
    if not engine.config.broker_url:
        raise click.ClickException(NO_BROKER)
    return configure(engine.config.broker_url, engine.config.path)


@click.command()
@click.option("--concurrency", "-c", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Processes applying tasks at once.")
@click.option("--queues", "-Q", default="regulars.inbox,regulars.outbox,regulars.jobs", show_default=True,
              help="Queues to take tasks from, comma-separated (give workers a kind of work each).")
@click.option("--name", "-n", default=None, help="Node name (default: regulars@HOSTNAME).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_obj
def worker(ctx, concurrency: int, queues: str, name: str | None, loglevel: str) -> None:
    """Run a Celery worker: applies received deliveries, delivers the outbox,
    runs the scheduled jobs. Start as many as needed, on as many machines,
    with the same REGULARS_DATABASE_URL and REGULARS_BROKER_URL."""
    app = _celery(ctx)
    argv = ["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}", f"--queues={queues}",
            "--without-gossip", "--without-mingle"]
    if name:
        argv.append(f"--hostname={name}")
    else:
        argv.append("--hostname=regulars@%h")
    app.worker_main(argv)


@click.command()
@click.option("--schedule-file", type=click.Path(dir_okay=False),
              help="Where beat remembers its last runs (default: celerybeat-schedule beside plugins.toml).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_obj
def beat(ctx, schedule_file: str | None, loglevel: str) -> None:
    """Run Celery beat: publishes the sweep (deliveries the broker lost), the
    outbox's delivery and the scheduled jobs (expiry, reminders, tier review,
    subscription check, reconciliation). Run exactly one."""
    app = _celery(ctx)
    path = schedule_file or str(Path(ctx.engine.config.base_dir) / "celerybeat-schedule")
    app.start(["beat", f"--loglevel={loglevel}", f"--schedule={path}"])


@click.command()
@click.option("--all", "everything", is_flag=True,
              help="Every delivery still received, however recent (not only those left behind).")
@click.pass_obj
def sweep(ctx, everything: bool) -> None:
    """Publish again the deliveries still waiting to be applied that the broker
    may have lost (beat does this every 30 s); after a broker outage, `sweep
    --all` hands every waiting delivery to the workers at once."""
    from datetime import timedelta

    from engine import inbox, work
    from engine.db import utcnow
    from engine.tasks import INBOX, publish, queue_depth

    _celery(ctx)
    if everything:
        with ctx.engine.db.connect() as conn:
            ids = inbox.left_behind(conn, utcnow() + timedelta(seconds=1), limit=1_000_000)
    else:
        ids = work.left_behind(ctx.engine, queue_drained=queue_depth(INBOX) == 0)
    try:
        publish(ids)
    except Exception as exc:
        raise click.ClickException(f"the broker can't be reached: {exc}") from None
    console.print(f"{len(ids)} deliveries published again", highlight=False)


@click.command("queue")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def queue_command(ctx, as_json: bool) -> None:
    """What waits: deliveries per status (received = not applied yet) and the
    oldest waiting, the outbox per status, and with a broker the messages in
    each queue. The figures to watch."""
    from sqlalchemy import func, select

    from engine import inbox
    from engine import outbox as ob
    from engine.db import as_utc, utcnow
    from engine.db.models import inbox as inbox_table

    engine = ctx.engine
    with engine.db.connect() as conn:
        deliveries = inbox.counts(conn)
        oldest = conn.execute(select(func.min(inbox_table.c.received_at))
                              .where(inbox_table.c.status == inbox.RECEIVED)).scalar()
        effects = ob.depth(conn)
    waiting = round((utcnow() - as_utc(oldest)).total_seconds(), 1) if oldest else 0
    broker = None
    if engine.config.broker_url:
        from engine.tasks import QUEUES, configure, queue_depth

        configure(engine.config.broker_url)
        broker = {name: queue_depth(name) for name in QUEUES}
    report = {"deliveries": deliveries, "oldest_waiting_seconds": waiting, "outbox": effects, "broker": broker}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console.print("deliveries: " + (", ".join(f"{n} {s}" for s, n in sorted(deliveries.items())) or "none"),
                  highlight=False)
    if deliveries.get(inbox.RECEIVED):
        console.print(f"  the oldest waiting was stored {waiting} s ago", highlight=False)
    console.print("outbox: " + (", ".join(f"{n} {s}" for s, n in sorted(effects.items())) or "empty"),
                  highlight=False)
    if broker is None:
        console.print("broker: none (embedded: `regulars serve` does the work)", highlight=False)
    else:
        console.print("broker: " + ", ".join(
            f"{name} {'unreachable' if n is None else n}" for name, n in broker.items()), highlight=False)


work_commands = (worker, beat, sweep, queue_command)
