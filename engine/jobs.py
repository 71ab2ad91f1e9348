"""Scheduled jobs: run by hand with ``regulars jobs run NAME``, and on a
schedule by Celery beat in production. Each is safe to run twice."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

from engine.db import utcnow

log = logging.getLogger("regulars.jobs")

#: the shops the ``reconcile`` job fetches orders from, and how far back
RECONCILE_CHANNELS = ("shopify", "woocommerce")
RECONCILE_DAYS = 2


class JobFailed(RuntimeError):
    """A job that did none of its work (every shop it tried failed); the
    message is its summary, so a scheduler records the failure and why."""


def expire_points(engine, now: datetime) -> str:
    """Expire what is left of every lot past its date."""
    with engine.db.begin() as conn:
        done = engine.ledger.expire(conn, now)
    return f"{sum(p for _, p in done)} points expired in {len(done)} lots"


def remind_expiring(engine, now: datetime) -> str:
    """Tell plugins (``regulars_points_expiring``) whose points expire within
    the policy's ``remind_days``; each lot is announced once."""
    days = engine.policy.remind_days
    if not days:
        return "no reminders: [rules.expiry] remind_days is not set"
    with engine.db.begin() as conn:
        due = engine.ledger.expiring(conn, now, days)
        customers = {cid: engine.identity.view(conn, cid) for cid in due}
        for customer_id, (points, expires_at) in due.items():  # ([notify] hears it too, with the lots marked)
            engine.outbox.points_expiring(conn, customer_id, points, expires_at, now)
    caller = engine.plugins.pm.hook.regulars_points_expiring
    for customer_id, (points, expires_at) in due.items():
        for impl in reversed(caller.get_hookimpls()):
            try:
                impl.function(customer=customers[customer_id], points=points, expires_at=expires_at)
            except Exception:  # an observer must not stop the others or the job
                log.exception("plugin %s failed in regulars_points_expiring", impl.plugin_name)
    return f"{len(due)} customers reminded"


def expire_rewards(engine, now: datetime) -> str:
    """Expire unused rewards past their date, giving points back where the
    catalogue says so."""
    with engine.db.begin() as conn:
        expired = engine.rewards.expire(conn, now)
    return f"{len(expired)} rewards expired"


def review_tiers(engine, now: datetime) -> str:
    """Downgrade customers below their tier, as the programme says."""
    if not engine.tiers.program:
        return "no tiers: add a [rules.tiers] table"
    with engine.db.begin() as conn:
        reviewed, downgraded = engine.tiers.review(conn, now)
    return f"{reviewed} tiers reviewed, {downgraded} downgraded"


def check_subscriptions(engine, now: datetime) -> str:
    """Lapse the memberships of plans with ``grace_days`` whose paid period
    ended more than ``grace_days`` before ``now`` (engine.subscriptions); a
    lapsed one is not active, so its plan's multiplier stops."""
    with engine.db.begin() as conn:
        lapsed = engine.subscriptions.lapse(conn, now)
    if lapsed is None:
        return "no lapses: no [rules.subscriptions.<plan>] sets grace_days"
    return f"{lapsed} memberships lapsed"


#: a URL's query string (it may carry an API key and a signature)
_QUERY = re.compile(r"\?[^\s'\"()<>]*=[^\s'\"()<>]*")


def _first_line(exc: Exception, limit: int = 300) -> str:
    """An error's first line for a summary, without URLs' query strings."""
    text = str(exc).strip()
    line = _QUERY.sub("?...", text.splitlines()[0]) if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def reconcile_shops(engine, now: datetime) -> str:
    """Fetch the orders changed in the last ``RECONCILE_DAYS`` days from each
    configured shop with credentials and feed them through the webhook path
    (engine.reconcile): what missed webhooks should have brought; from
    WooCommerce also older orders whose refunds are still known only by their
    totals (``engine.reconcile.REVISIT_LIMIT`` a run), read again with them. A
    shop without credentials is skipped; one that fails (down, refusing) does
    not stop the others; if every shop tried failed, raises ``JobFailed``."""
    from engine.reconcile import STATUSES, reconcile

    since = now - timedelta(days=RECONCILE_DAYS)
    parts: list[str] = []
    configured = skipped = failures = 0
    for channel in RECONCILE_CHANNELS:
        if channel not in engine.connectors:
            continue
        configured += 1
        try:
            if engine.credentials.get(channel) is None:
                skipped += 1
                parts.append(f"{channel} skipped (no credentials)")
                continue
            counts, _failed = reconcile(engine, channel, since=since)
        except Exception as exc:  # a shop that is down must not stop the other
            failures += 1
            log.warning("reconcile %s failed", channel, exc_info=True)
            parts.append(f"{channel} failed: {_first_line(exc)}")
            continue
        found = ", ".join([f"{counts[s]} {s}" for s in STATUSES if counts[s]]
                          + ([f"{counts['revisited']} revisited for refund details"] if counts["revisited"] else [])
                          + ([f"{counts['undetailed']} without refund details"] if counts["undetailed"] else [])
                          + ([f"{counts['refunds_deleted']} refunds deleted in the shop"]
                             if counts["refunds_deleted"] else []))
        parts.append(f"{channel}: {sum(counts[s] for s in STATUSES)} orders" + (f" ({found})" if found else ""))
    if not parts:
        return "nothing to reconcile: no [connectors.shopify] or [connectors.woocommerce] table"
    summary = "; ".join(parts)
    if failures and failures == configured - skipped:
        raise JobFailed(f"reconcile failed: {summary}")
    return summary


def birthday_gifts(engine, now: datetime) -> str:
    """Give what the plugins say each birthday is worth (engine.birthdays)."""
    from engine.birthdays import give_gifts

    return give_gifts(engine, now)


JOBS: dict[str, Callable[..., str]] = {
    "tier-review": review_tiers,
    "expire": expire_points,
    "expiry-reminders": remind_expiring,
    "reward-expiry": expire_rewards,
    "subscription-check": check_subscriptions,
    "reconcile": reconcile_shops,
    "birthday-gifts": birthday_gifts,
}


def run(engine, name: str, now: datetime | None = None) -> str:
    """Run one job; the points it changed (expired, given back) are announced
    to observers once it is done (``regulars_points_changed``)."""
    engine.ensure_schema()
    with engine.announcing():
        return JOBS[name](engine, now or utcnow())
