"""The ``regulars`` commands that talk to the shops: the outbox (what is owed
to them), reconciliation (what their webhooks missed) and privacy requests.
(engine/cli.py registers these.)"""

from __future__ import annotations

import json
import sys
from datetime import UTC

import click
from rich.console import Console
from rich.table import Table

from engine.notify import EVENTS

console = Console(markup=False)  # a message's [brackets] are its text, not styles
err = Console(stderr=True, soft_wrap=True, markup=False)


def _table(*headers: str) -> Table:
    table = Table(show_lines=False, highlight=False)
    for name in headers:
        table.add_column(name, overflow="fold")
    return table


@click.group()
def outbox() -> None:
    """Effects owed to the shops (balances, tiers and stamps written into
    customers, rewards made coupons) and notifications owed to your [notify]
    URL. `regulars serve` delivers them in the background; these commands
    look and nudge."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["pending", "done", "failed"]))
@click.option("--failed", is_flag=True, help="Only the ones given up on (same as --status failed).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def outbox_list(ctx, status: str | None, failed: bool, limit: int, as_json: bool) -> None:
    """List outbox rows, newest first, and how many wait in each status."""
    from engine import outbox as ob

    with ctx.engine.db.connect() as conn:
        rows = ob.listing(conn, "failed" if failed else status, limit)
        depth = ob.depth(conn)
    if as_json:
        click.echo(json.dumps({"depth": depth, "rows": [
            {**r._asdict(), **{k: str(getattr(r, k)) if getattr(r, k) else None
                               for k in ("due_at", "created_at", "updated_at", "done_at")}} for r in rows]}, indent=2))
        return
    table = _table("id", "kind", "channel", "subject", "status", "tries", "due", "result / last error")
    for r in rows:
        table.add_row(str(r.id), r.kind, r.channel, r.subject, r.status, str(r.attempts),
                      r.due_at.strftime("%Y-%m-%d %H:%M:%S") if r.status == "pending" else "",
                      r.last_error or r.result or "")
    console.print(table)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(depth.items())) or "the outbox is empty", highlight=False)


@outbox.command("deliver")
@click.option("--limit", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.pass_obj
def outbox_deliver(ctx, limit: int) -> None:
    """Deliver what is due now (what `regulars serve` does every second).
    Exits 1 if something was given up on."""
    from engine.outbox import Deliverer

    report = Deliverer(ctx.engine).deliver_due(limit)
    for line in report.errors[:20]:
        err.print(line, highlight=False, markup=False)
    console.print(f"{report.delivered} delivered, {report.retrying} to retry later, {report.failed} failed",
                  highlight=False)
    if report.failed:
        sys.exit(1)


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--failed", "all_failed", is_flag=True, help="Every failed row.")
@click.pass_obj
def outbox_retry(ctx, ids: tuple[int, ...], all_failed: bool) -> None:
    """Make rows due again now, their attempts reset (after fixing the cause)."""
    from engine import outbox as ob

    if not ids and not all_failed:
        raise click.UsageError("name the rows to retry, or use --failed")
    with ctx.engine.db.begin() as conn:
        n = ob.retry(conn, list(ids) or None)
    console.print(f"{n} row(s) due again", highlight=False)


@click.command()
@click.argument("channel", type=click.Choice(["shopify", "woocommerce"]))
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Only orders changed since this UTC time (default: all).")
@click.pass_obj
def reconcile(ctx, channel: str, since) -> None:
    """Fetch the shop's orders and refunds through its API and feed them
    through the same idempotent path as webhooks: what a missed webhook should
    have brought is applied, nothing is counted twice. WooCommerce orders go
    in with their refunds' lines, read from the shop; older orders whose
    refunds are still known only by their totals are read again too (50 a
    run). Exits 1 if a delivery failed (kept: `regulars events list --failed`)
    or an order's refunds could not be read (it went in as its webhook would)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.app import UnknownChannel
    from engine.outbox import Unreachable
    from engine.reconcile import STATUSES, Undetailed
    from engine.reconcile import reconcile as run

    engine = ctx.engine
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(f"reconciling {channel}", total=None)
        try:
            counts, failed = run(engine, channel, since.replace(tzinfo=UTC) if since else None,
                                 lambda n: progress.advance(task, n))
        except (UnknownChannel, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        except Unreachable as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # the shop's API: one sentence, not a traceback
            if getattr(exc, "retryable", None) is None:
                raise
            raise click.ClickException(f"{channel}: {exc}") from None
    for outcome in failed[:20]:
        if isinstance(outcome, Undetailed):
            err.print(f"order {outcome.order_id}: refunds counted by their totals until a reconcile reads them: "
                      f"{outcome.error}", highlight=False, markup=False)
        else:
            err.print(f"failed delivery {outcome.inbox_id}: {outcome.error}", highlight=False, markup=False)
    total = sum(counts[s] for s in STATUSES)
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    if counts["revisited"]:
        summary += f"; {counts['revisited']} read again for their refunds' details"
    if counts["undetailed"]:
        summary += f"; {counts['undetailed']} without their refunds' details"
    if counts["refunds_deleted"]:
        summary += f"; {counts['refunds_deleted']} refunds deleted in the shop no longer count"
    console.print(f"{total} order{'' if total == 1 else 's'} from {channel}" + (f": {summary}" if summary else ""),
                  highlight=False)
    if counts["failed"] or counts["undetailed"]:
        sys.exit(1)


@click.group()
def privacy() -> None:
    """Privacy requests received from the shops (Shopify's customers/data_request,
    customers/redact, shop/redact). For a customer by hand, use
    `regulars customer export` and `regulars customer erase`."""


@privacy.command("list")
@click.pass_obj
def privacy_list(ctx) -> None:
    """List privacy requests, newest first."""
    from engine.privacy import requests

    with ctx.engine.db.connect() as conn:
        rows = requests(conn)
    table = _table("id", "channel", "kind", "customer", "status", "received")
    for r in rows:
        table.add_row(str(r.id), r.channel, r.kind, str(r.customer_id or ""), r.status, str(r.received_at)[:19])
    console.print(table)


@privacy.command("show")
@click.argument("request_id", type=int)
@click.pass_obj
def privacy_show(ctx, request_id: int) -> None:
    """Print a request's record as JSON: for a data request, the customer's
    data to send to the shop's owner."""
    from sqlalchemy import select

    from engine.db.models import privacy_requests
    from engine.privacy import dumps

    with ctx.engine.db.connect() as conn:
        row = conn.execute(select(privacy_requests).where(privacy_requests.c.id == request_id)).one_or_none()
    if row is None:
        raise click.ClickException(f"no privacy request with id {request_id}")
    click.echo(dumps({"id": row.id, "channel": row.channel, "kind": row.kind, "status": row.status,
                      "customer_id": row.customer_id, "received_at": row.received_at, "data": row.data}))


#: registered on the ``regulars`` group by engine/cli.py
@click.group()
def notify() -> None:
    """Notifications to your [notify] URL (see the README, Notifications)."""


@notify.command("test")
@click.option("--event", type=click.Choice(EVENTS), multiple=True, help="Which (default: each of [notify] events).")
@click.pass_obj
def notify_test(ctx, event: tuple[str, ...]) -> None:
    """Send a sample of each notification, about a made-up customer, with
    "test": true, signed as the real ones: to check your receiver (and to
    show a tool such as Zapier the fields). Nothing is stored. Exits 1 if
    the receiver did not take one."""
    from engine.db import utcnow
    from engine.notify import Notifier, sample
    from engine.outbox import Unreachable

    settings = ctx.engine.config.notify
    if settings is None:
        raise click.ClickException("there is no [notify] table in plugins.toml: add one with its url")
    notifier, failed = Notifier(settings["url"], settings["secret"]), 0
    for name in event or settings["events"]:
        try:
            answer = notifier.send(sample(name, utcnow()))
        except Unreachable as exc:
            failed += 1
            err.print(f"{name}: {exc}", highlight=False)
        else:
            console.print(f"{name}: {answer}", highlight=False)
    if failed:
        sys.exit(1)


shop_commands = (outbox, reconcile, privacy, notify)
