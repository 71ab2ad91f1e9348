"""The ``regulars`` commands that run the programme by hand: redeem a reward,
claim a referral code, start or renew a membership, run a scheduled job.
(engine/cli.py holds the rest and registers these.)"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from engine.jobs import JOBS

console = Console(markup=False)  # a message's [brackets] are its text, not styles
err = Console(stderr=True, soft_wrap=True, markup=False)


@click.command()
@click.argument("key")
@click.argument("reward")
@click.option("--channel", help="Where the customer will spend it (shopify, woocommerce, ...).")
@click.option("--units", default=1, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Multiples of a partial reward (so many times its cost for so many times its value).")
@click.option("--key", "idempotency_key", help="A request key: retrying with it returns the same reward.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def redeem(ctx, key: str, reward: str, channel: str | None, units: int,
           idempotency_key: str | None, as_json: bool) -> None:
    """Redeem REWARD from the catalogue for the customer KEY finds: the points
    are debited and the reward issued with its code. Exit 1, saying why, when
    it is refused (balance short or negative, unknown reward or channel)."""
    from engine.rewards import RedemptionRefused

    try:
        issued = ctx.engine.redeem(key, reward, channel, units, idempotency_key)
    except RedemptionRefused as exc:
        err.print(f"refused: {exc}", highlight=False)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(ctx.engine.rewards.as_json(issued), indent=2))
        return
    console.print(f"issued {issued.reward} ({issued.kind}) for {issued.cost} points: code {issued.code}", highlight=False)


@click.group()
def referral() -> None:
    """Referral codes."""


@referral.command("claim")
@click.argument("key")
@click.argument("code")
@click.pass_obj
def referral_claim(ctx, key: str, code: str) -> None:
    """The customer KEY finds claims the referral CODE (exit 1, saying why, when
    refused: the refusal is recorded all the same)."""
    from engine.referrals import ReferralRefused

    try:
        ctx.engine.claim_referral(key, code)
    except ReferralRefused as exc:
        err.print(f"refused: {exc}", highlight=False)
        sys.exit(1)
    console.print(f"{key} claimed referral code {code.upper()}: both rewards come with their first paid order",
                  highlight=False)


@click.group()
def subscription() -> None:
    """Memberships by hand: start, renew, pause, resume or cancel a customer's plan."""


_MOMENT = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"])
_SUBSCRIPTION_HELP = {
    "start": "Start the customer's membership in PLAN: the plan's start points.",
    "renew": "Renew the customer's membership in PLAN: its renewal points, once per --period-end (or --key).",
    "pause": "Pause the customer's membership in PLAN: its multiplier stops for orders awarded after.",
    "resume": "Resume the customer's paused membership in PLAN.",
    "cancel": "Cancel the customer's membership in PLAN: points earned stay, the multiplier stops.",
}


def _subscription_command(action: str) -> None:
    @subscription.command(action, help=_SUBSCRIPTION_HELP[action] + " KEY is an email, phone, card code or id. "
                          "Exit 1, saying why, for an unknown customer or plan.")
    @click.argument("key")
    @click.argument("plan")
    @click.option("--id", "external_id", help="The subscription's id (default: one per customer and plan).")
    @click.option("--channel", default="cli", show_default=True, help="Where the subscription lives.")
    @click.option("--at", "at", type=_MOMENT, help="When it happened (UTC unless an offset is given; default now).")
    @click.option("--period-end", type=_MOMENT, help="The end of the period paid for.")
    @click.option("--key", "idempotency_key", help="A request key: retrying with it changes nothing.")
    @click.option("--json", "as_json", is_flag=True, help="Print the subscription as JSON.")
    @click.pass_obj
    def command(ctx, key, plan, external_id, channel, at, period_end, idempotency_key, as_json) -> None:
        from datetime import UTC

        from engine.subscriptions import SubscriptionRefused

        def aware(moment):
            return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)

        try:
            state = ctx.engine.subscription(action, key, plan, external_id, channel, aware(at), aware(period_end),
                                            idempotency_key)
        except SubscriptionRefused as exc:
            err.print(f"refused: {exc}", highlight=False)
            sys.exit(1)
        if as_json:
            click.echo(json.dumps(state, indent=2))
            return
        end = f", period ends {state['period_end']}" if state["period_end"] else ""
        console.print(f"{key}: {state['plan']} {state['status']} (member since {state['since']}{end}; "
                      f"subscription {state['channel']}:{state['id']})", highlight=False)


for _action in ("start", "renew", "pause", "resume", "cancel"):
    _subscription_command(_action)


@click.group()
def jobs() -> None:
    """Scheduled work, run by hand (Celery beat runs it in production)."""


@jobs.command("run")
@click.argument("job", type=click.Choice(sorted(JOBS)), metavar="JOB")
@click.option("--at", "at", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Run as of this UTC time instead of now (to catch up, or to rehearse).")
@click.pass_obj
def jobs_run(ctx, job: str, at) -> None:
    """Run one job now.

    \b
    expire              expire what is left of points past their date
    expiry-reminders    tell plugins whose points expire within remind_days
    reward-expiry       expire unused rewards (points back where the catalogue says)
    tier-review         downgrade customers below their tier (after the grace period)
    subscription-check  lapse memberships past their period plus the plan's grace_days
    reconcile           fetch the last 2 days of orders from each shop with credentials,
                        and older WooCommerce orders whose refunds lack their details
    birthday-gifts      give the birthday gifts due ([plugins.birthday-bonus] gift),
                        once a year each
    """
    from datetime import UTC

    from engine.jobs import JobFailed, run

    try:
        console.print(run(ctx.engine, job, at.replace(tzinfo=UTC) if at else None), highlight=False)
    except JobFailed as exc:
        raise click.ClickException(str(exc)) from None


#: registered on the ``regulars`` group by engine/cli.py
programme_commands = (redeem, referral, subscription, jobs)
