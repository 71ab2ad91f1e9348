"""The ``regulars`` commands for the counter: terminals (the tills allowed to
use the API) and customers' card links. (engine/cli.py registers these.)"""

from __future__ import annotations

import os

import click
from rich.console import Console
from rich.table import Table

console = Console(markup=False)  # a message's [brackets] are its text, not styles


@click.group()
def pos() -> None:
    """The tills: their API keys."""


@pos.command("add-terminal")
@click.argument("location")
@click.option("--name", help="What the staff call this till.")
@click.pass_obj
def add_terminal(ctx, location: str, name: str | None) -> None:
    """Register a till at LOCATION and print its API key (shown this once:
    only its hash is kept). The till sends it as `Authorization: Bearer KEY`."""
    from engine.terminals import add_terminal as add

    terminal_id, key = add(ctx.engine.db, location, name)
    console.print(f"terminal {terminal_id} at {location}", highlight=False)
    click.echo(key)
    console.print("keep this key now: it is not shown again (revoke with `regulars pos revoke-terminal`)",
                  style="yellow", highlight=False)


@pos.command("terminals")
@click.pass_obj
def list_terminals(ctx) -> None:
    """List the tills, revoked ones included."""
    from engine.terminals import listing

    table = Table(highlight=False)
    for name in ("id", "location", "name", "key", "created", "revoked"):
        table.add_column(name)
    for t in listing(ctx.engine.db):
        table.add_row(str(t.id), t.location, t.name or "", t.key_prefix + "…", str(t.created_at)[:19],
                      str(t.revoked_at)[:19] if t.revoked_at else "")
    console.print(table)


@pos.command("revoke-terminal")
@click.argument("terminal_id", type=int)
@click.pass_obj
def revoke_terminal(ctx, terminal_id: int) -> None:
    """Revoke a till's key at once (its next request gets 401)."""
    from engine.terminals import revoke

    if not revoke(ctx.engine.db, terminal_id):
        raise click.ClickException(f"no live terminal with id {terminal_id}")
    console.print(f"terminal {terminal_id} revoked", highlight=False)


@click.group()
def card() -> None:
    """Customers' own cards: signed links, no password."""


@card.command("link")
@click.argument("key")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 3650))
@click.option("--base-url", envvar="REGULARS_PUBLIC_URL",
              help="Where customers reach this server (default: REGULARS_PUBLIC_URL, else this machine at "
                   "REGULARS_PORT, 8000 when unset).")
@click.pass_obj
def card_link(ctx, key: str, days: int, base_url: str | None) -> None:
    """A link to the card of the customer KEY finds (email, phone, card code),
    valid DAYS days; it shows their balance, stamps, tier and rewards."""
    from engine.links import make_link

    engine = ctx.engine
    with engine.db.connect() as conn:
        customer_id = engine.identity.find(conn, key)
    if customer_id is None:
        raise click.ClickException(f"no customer matches {key!r}")
    token = make_link(engine, customer_id, days)
    local = f"http://127.0.0.1:{os.environ.get('REGULARS_PORT') or 8000}"  # where scripts/demo serves
    click.echo(f"{(base_url or local).rstrip('/')}/card/{token}")


@card.command("revoke")
@click.argument("key")
@click.pass_obj
def card_revoke(ctx, key: str) -> None:
    """Revoke every link to the card of the customer KEY finds."""
    from engine.links import revoke

    engine = ctx.engine
    with engine.db.connect() as conn:
        customer_id = engine.identity.find(conn, key)
    if customer_id is None:
        raise click.ClickException(f"no customer matches {key!r}")
    console.print(f"{revoke(engine, customer_id)} link(s) revoked", highlight=False)


#: registered on the ``regulars`` group by engine/cli.py
pos_commands = (pos, card)
