"""The ``regulars`` commands for the dashboard: its users (``admin``) and its
figures (``metrics``). (engine/cli.py registers these.)"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

console = Console(markup=False)  # a message's [brackets] are its text, not styles


def _password(confirm: bool, from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)


@click.group()
def admin() -> None:
    """The people allowed into the dashboard (/admin)."""


@admin.command("add")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.pass_obj
def admin_add(ctx, username: str, password_stdin: bool) -> None:
    """Add USERNAME; the password is asked twice (or read from stdin) and kept
    as an argon2 hash only."""
    from engine.web.pages.admin import AdminError, add_user

    try:
        add_user(ctx.engine, username, _password(True, password_stdin))
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"admin user {username} added: sign in at /admin", highlight=False)


@admin.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def admin_list(ctx, as_json: bool) -> None:
    """List the admin users and when each last signed in."""
    from engine.web.pages.admin import list_users

    users = list_users(ctx.engine)
    if as_json:
        click.echo(json.dumps([{"username": u.username, "created_at": u.created_at.isoformat(),
                                "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None}
                               for u in users], indent=2))
        return
    table = Table(highlight=False)
    for name in ("username", "added", "last signed in"):
        table.add_column(name)
    for u in users:
        table.add_row(u.username, str(u.created_at)[:19], str(u.last_login_at)[:19] if u.last_login_at else "never")
    console.print(table)


@admin.command("remove")
@click.argument("username")
@click.pass_obj
def admin_remove(ctx, username: str) -> None:
    """Remove USERNAME (their sessions end at their next request)."""
    from engine.web.pages.admin import AdminError, remove_user

    try:
        remove_user(ctx.engine, username)
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"admin user {username} removed", highlight=False)


@admin.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from the first line of stdin.")
@click.pass_obj
def admin_passwd(ctx, username: str, password_stdin: bool) -> None:
    """Set USERNAME's password (asked twice); their open sessions end."""
    from engine.web.pages.admin import AdminError, set_password

    try:
        set_password(ctx.engine, username, _password(True, password_stdin))
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"password of {username} changed", highlight=False)


def _width(table: Table) -> int:
    """The columns a table takes unsqueezed (rich measures within the terminal's width)."""
    return Measurement.get(console, console.options.update(max_width=10_000), table).maximum


@click.group("metrics")
def metrics_group() -> None:
    """The dashboard's figures: retention, lifetime value, points and liability."""


@metrics_group.command("show")
@click.option("--channel", help="Only this channel's orders, visits and points (default: all).")
@click.option("--period", type=click.Choice(["month", "week"]), default="month", show_default=True)
@click.option("--periods", "count", type=click.IntRange(1, 120), default=12, show_default=True,
              help="How many periods, up to the one holding --to.")
@click.option("--to", "end", help="The last period: YYYY-MM or YYYY-MM-DD (default: today).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def metrics_show(ctx, channel: str | None, period: str, count: int, end: str | None, as_json: bool) -> None:
    """Print every figure per period (the formulas: `regulars metrics show --json` or the README)."""
    from engine import metrics

    engine = ctx.engine
    if channel and channel not in engine.connectors:
        raise click.ClickException(f"no channel {channel!r} (channels: {', '.join(sorted(engine.connectors))})")
    last: date = datetime.now(UTC).astimezone(metrics.recorder(engine).zone).date()
    if end:
        try:
            last = (metrics.next_period(date.fromisoformat(end + "-01"), "month") - timedelta(days=1)
                    if len(end) == 7 else date.fromisoformat(end))
        except ValueError:
            raise click.BadParameter(f"{end!r} is not YYYY-MM or YYYY-MM-DD", param_hint="--to") from None
    first = metrics.period_start(last, period)
    for _ in range(count - 1):
        first = metrics.previous_period(first, period)
    found = metrics.compute(engine, [m.name for m in metrics.METRICS], first, last, channel, period)
    if as_json:
        click.echo(json.dumps({
            "channel": channel, "period": period,
            "metrics": [{"name": m.name, "title": m.title, "unit": m.unit, "formula": m.formula,
                         "values": [{"period": d.isoformat(), "value": None if v is None else
                                     (str(v) if m.unit == "money" else v)} for d, v in found[m.name]]}
                        for m in metrics.METRICS],
        }, indent=2))
        return
    title = f"{channel or 'all channels'}, per {period}"
    starts = [d for d, _ in found[metrics.METRICS[0].name]]
    labels = [start.strftime("%Y-%m" if period == "month" else "%Y-%m-%d") for start in starts]
    table = Table(highlight=False, title=title)
    table.add_column(period)
    for m in metrics.METRICS:
        table.add_column(SHORT[m.name], justify="right")
    for row, label in enumerate(labels):
        table.add_row(label, *(_shown(m.unit, found[m.name][row][1]) for m in metrics.METRICS))
    left_out = 0
    if _width(table) > console.width:
        # Too wide for this terminal: a figure per row, and as many of the latest periods as fit.
        for shown in range(len(labels), 0, -1):
            table = Table(highlight=False, title=title)
            table.add_column("figure")
            for label in labels[-shown:]:
                table.add_column(label, justify="right")
            for m in metrics.METRICS:
                table.add_row(SHORT[m.name], *(_shown(m.unit, v) for _, v in found[m.name][-shown:]))
            left_out = len(labels) - shown
            if _width(table) <= console.width:
                break
    console.print(table)
    if left_out:
        console.print(f"{left_out} earlier {period}s left out: a wider terminal shows them, or --periods, --json",
                      style="dim", highlight=False)
    console.print("formulas: regulars metrics show --json, or the dashboard", style="dim", highlight=False)


SHORT = {"retention_rate": "retention", "churn_rate": "churn", "repeat_purchase_rate": "repeat",
         "purchase_frequency": "frequency", "average_clv": "avg CLV", "redemption_rate": "redemption",
         "active_members": "active", "points_issued": "issued", "points_spent": "spent",
         "points_expired": "expired", "points_liability": "liability"}


def _shown(unit: str, value) -> str:
    if value is None:
        return "–"
    if unit == "rate":
        return f"{value * 100:.1f} %"
    if unit == "number":
        return f"{value:.2f}"
    if unit == "money":
        return f"{value:,.2f}"
    return f"{value:,}"


@metrics_group.command("rebuild")
@click.pass_obj
def metrics_rebuild(ctx) -> None:
    """Recompute the dashboard's counters from the ledger and the orders (after
    a bulk load, or after changing [engine] timezone). The pipeline keeps them
    exact otherwise; its writes wait while this runs."""
    import time

    from engine import metrics

    began = time.monotonic()
    metrics.rebuild(ctx.engine)
    console.print(f"counters rebuilt in {time.monotonic() - began:.1f} s", highlight=False)


admin_commands = (admin, metrics_group)
