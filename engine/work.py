"""The background work, one function per kind of work. The embedded default
(``regulars serve`` with no broker) runs them in threads of its own process;
with ``REGULARS_BROKER_URL`` set, Celery workers run them as tasks
(``engine.tasks``). The same code runs in both modes.

- ``apply_delivery``: apply one stored delivery, if it is still ``received``;
- ``deliver_outbox``: deliver what is due in the outbox to the shops;
- ``run_job``: one scheduled job (``engine.jobs``), on ``SCHEDULE``;
- ``left_behind``: what a sweep hands to the workers again.

Every one of them is safe to run twice, and at once in several processes: a
delivery is claimed in the transaction that applies it, an outbox row is
leased by the deliverer that takes it, and the jobs are idempotent.
"""

from __future__ import annotations

import copy
import logging
import os
from datetime import datetime, timedelta

from celery.schedules import crontab, schedule

from engine.db import utcnow

log = logging.getLogger("regulars.work")

#: when each scheduled job runs (UTC), in both modes: Celery beat's schedule,
#: and the embedded scheduler's
SCHEDULE = {
    "expire": crontab(minute=5, hour=2),
    "reward-expiry": crontab(minute=15, hour=2),
    "tier-review": crontab(minute=30, hour=2),
    "subscription-check": crontab(minute=45),
    "expiry-reminders": crontab(minute=0, hour=9),
    "reconcile": crontab(minute=20, hour="*/6"),
    # hourly: a gift comes within the first hour of the day in any time zone
    "birthday-gifts": crontab(minute=10),
}


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


#: a delivery still ``received`` this long after it was stored is swept back
#: to the workers when the queue has drained (REGULARS_SWEEP_GRACE)
SWEEP_GRACE = timedelta(seconds=_seconds("REGULARS_SWEEP_GRACE", 30))
#: ... and even while the queue is busy, after this long (REGULARS_SWEEP_STALE)
SWEEP_STALE = timedelta(seconds=_seconds("REGULARS_SWEEP_STALE", 900))
#: how often beat sweeps, and asks for the outbox to be delivered
SWEEP_EVERY = schedule(timedelta(seconds=_seconds("REGULARS_SWEEP_EVERY", 30)))
OUTBOX_EVERY = schedule(timedelta(seconds=_seconds("REGULARS_OUTBOX_EVERY", 5)))


def apply_delivery(engine, inbox_id: int):
    """Apply a stored delivery if nobody has: the ``Outcome``, or None when
    it was not ``received`` any more. A database outage raises (the delivery
    stays ``received`` for a retry or a sweep)."""
    return engine.apply_pending(inbox_id)


def deliver_outbox(engine, limit: int = 50, rounds: int = 20):
    """Deliver the outbox rows that are due, ``limit`` at a time, until none
    is due or ``rounds`` passes are done; the ``Report``s summed."""
    from engine.outbox import Deliverer, Report

    deliverer = Deliverer(engine)
    total = Report()
    for _ in range(rounds):
        report = deliverer.deliver_due(limit)
        total.delivered += report.delivered
        total.retrying += report.retrying
        total.failed += report.failed
        total.errors += report.errors
        if report.delivered + report.retrying + report.failed < limit:
            break
    return total


def run_job(engine, name: str, now: datetime | None = None) -> str:
    """One scheduled job by name; its one-line summary."""
    from engine.jobs import run

    summary = run(engine, name, now)
    log.info("job %s: %s", name, summary)
    return summary


def left_behind(engine, queue_drained: bool, now: datetime | None = None, limit: int = 5000) -> list[int]:
    """The deliveries a sweep hands to the workers again: those still
    ``received`` ``SWEEP_GRACE`` after they were stored when the queue has
    drained (the broker lost their task, or it was down when they came),
    and those older than ``SWEEP_STALE`` in any case. Handing one over twice
    is harmless: ``apply_delivery`` applies it once."""
    from engine import inbox

    engine.ensure_schema()
    now = now or utcnow()
    before = now - (SWEEP_GRACE if queue_drained else SWEEP_STALE)
    with engine.db.connect() as conn:
        return inbox.left_behind(conn, before, limit)


class Due:
    """Which scheduled jobs are due, by ``SCHEDULE`` (Celery's own schedule
    objects), for the embedded scheduler. A job first becomes due at its next
    time after ``start``, as with a fresh Celery beat."""

    def __init__(self, jobs: dict | None = None, start: datetime | None = None):
        # copies: the shared ones are beat's, and each copy's clock is set below
        self.jobs = {name: copy.copy(when) for name, when in (SCHEDULE if jobs is None else jobs).items()}
        start = start or utcnow()
        self.last_run = {name: start for name in self.jobs}

    def due(self, now: datetime | None = None) -> list[str]:
        now = now or utcnow()
        found = []
        for name, when in self.jobs.items():
            when.nowfun = lambda now=now: now
            if when.is_due(self.last_run[name]).is_due:
                found.append(name)
                self.last_run[name] = now
        return found
