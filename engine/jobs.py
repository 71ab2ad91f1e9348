"""Scheduled jobs: run by hand with ``regulars jobs run NAME``, and on a
schedule by Celery beat in production. Each is safe to run twice."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from engine.db import utcnow

log = logging.getLogger("regulars.jobs")


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


JOBS: dict[str, Callable[..., str]] = {
    "tier-review": review_tiers,
    "expire": expire_points,
    "expiry-reminders": remind_expiring,
    "reward-expiry": expire_rewards,
}


def run(engine, name: str, now: datetime | None = None) -> str:
    engine.ensure_schema()
    return JOBS[name](engine, now or utcnow())
