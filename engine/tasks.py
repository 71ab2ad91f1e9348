"""The Celery app: the background work of ``engine.work`` as tasks, for
production (``REGULARS_BROKER_URL=redis://...`` or ``amqp://...``).

Run ``regulars worker`` on as many machines as needed (they share the
database and the broker) and one ``regulars beat`` for the schedule. The
webhook receivers store each delivery, then publish its ``regulars.apply``
task; beat publishes the sweep, the outbox's delivery and the jobs.

Queues, one per kind of work, so that each can be watched and given workers of
its own (``regulars worker --queues``):

- ``regulars.inbox``: ``regulars.apply`` (one stored delivery);
- ``regulars.outbox``: ``regulars.deliver`` (what is due for the shops);
- ``regulars.jobs``: ``regulars.job`` (a scheduled job) and ``regulars.sweep``.

Nothing is lost on the way:

- a task is acknowledged after it ran (``acks_late``) and given back to the
  broker when its worker dies (``reject_on_worker_lost``); a worker takes one
  task at a time per process (prefetch 1), so a killed one holds back little;
- a database outage makes the task retry with exponential backoff;
- the sweep (every ``REGULARS_SWEEP_EVERY`` s) publishes again every delivery
  still ``received`` that the broker may have lost: stored while it was down,
  or held by a worker that died. The outbox needs no sweep: its rows are
  leased, and a row whose deliverer died is due again when the lease ends;
- a task that runs twice changes nothing the second time
  (``engine.work``): a delivery is claimed in the transaction that applies it.

One customer's events are applied one at a time: the transaction that applies
an event locks the customer's row (PostgreSQL) after finding them, so a second
worker with the same customer's next event waits for that commit rather than
racing it. Order does not matter for the result (the engine converges whatever
order events arrive in), so the workers need no partitioning by customer.
"""

from __future__ import annotations

import logging
import os
import threading

from celery import Celery, signals
from kombu import Exchange, Queue
from kombu import pools as kombu_pools
from kombu.exceptions import ChannelError
from sqlalchemy.exc import DBAPIError

from engine import work

log = logging.getLogger("regulars.tasks")

INBOX, OUTBOX, JOBS = "regulars.inbox", "regulars.outbox", "regulars.jobs"
QUEUES = (INBOX, OUTBOX, JOBS)

app = Celery("regulars", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("REGULARS_BROKER_URL") or "memory://",
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # each queue bound to an exchange of its own name, by its own name
    task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
    task_default_queue=INBOX,
    task_routes={
        "regulars.apply": {"queue": INBOX},
        "regulars.deliver": {"queue": OUTBOX},
        "regulars.job": {"queue": JOBS},
        "regulars.sweep": {"queue": JOBS},
    },
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a worker waits out a broker outage
    broker_connection_timeout=3,
    # Redis: a task taken but not acknowledged (its worker died) goes back to
    # the queue after this long; the sweep finds its delivery sooner.
    broker_transport_options={"visibility_timeout": 3600, "socket_timeout": 5, "socket_connect_timeout": 3},
    worker_hijack_root_logger=False,
    enable_utc=True,
    timezone="UTC",
    beat_schedule={
        "sweep": {"task": "regulars.sweep", "schedule": work.SWEEP_EVERY},
        "outbox": {"task": "regulars.deliver", "schedule": work.OUTBOX_EVERY},
        **{f"job:{name}": {"task": "regulars.job", "schedule": when, "args": (name,)}
           for name, when in work.SCHEDULE.items()},
    },
)

_engine = None
_engine_pid = None
_engine_lock = threading.Lock()


def configure(broker_url: str | None, config_path: str | None = None) -> Celery:
    """Point the app at a broker (and the engine its tasks build at a
    plugins.toml); what ``regulars worker``, ``beat`` and ``serve`` call."""
    if broker_url and broker_url != app.conf.broker_url:
        app.conf.broker_url = broker_url
        # Forget the connections to the broker it pointed at before (kombu
        # keeps its pools in a registry of its own).
        kombu_pools.reset()
        app._pool = None
        app.amqp._producer_pool = None
    if config_path:
        os.environ["REGULARS_CONFIG"] = str(config_path)
    return app


def engine():
    """This process's ``Engine``, built on first use from plugins.toml and the
    environment (after a prefork worker's fork, never inherited)."""
    global _engine, _engine_pid
    with _engine_lock:
        if _engine is None or _engine_pid != os.getpid():
            from engine.app import Engine
            from engine.config import load_config

            _engine = Engine(load_config())
            _engine_pid = os.getpid()
        return _engine


@signals.worker_process_init.connect
def _forget_parent_engine(**_):
    """A forked pool process must not share its parent's database connections."""
    global _engine
    if _engine is not None:
        _engine.db.dispose(close=False)
        _engine = None


_RETRY = {"autoretry_for": (DBAPIError,), "retry_backoff": 2, "retry_backoff_max": 300,
          "retry_jitter": True, "max_retries": 30}


@app.task(name="regulars.apply", **_RETRY)
def apply(inbox_id: int) -> str:
    """Apply one stored delivery (``engine.work.apply_delivery``)."""
    outcome = work.apply_delivery(engine(), inbox_id)
    return outcome.status if outcome is not None else "already done"


@app.task(name="regulars.deliver", **_RETRY)
def deliver() -> str:
    """Deliver what is due in the outbox (``engine.work.deliver_outbox``)."""
    report = work.deliver_outbox(engine())
    return f"{report.delivered} delivered, {report.retrying} to retry, {report.failed} failed"


@app.task(name="regulars.job", **_RETRY)
def job(name: str) -> str:
    """Run one scheduled job (``engine.jobs``)."""
    return work.run_job(engine(), name)


@app.task(name="regulars.sweep", **_RETRY)
def sweep() -> int:
    """Publish again the deliveries left behind (``engine.work.left_behind``);
    how many."""
    drained = queue_depth(INBOX) == 0
    ids = work.left_behind(engine(), queue_drained=drained)
    publish(ids)
    if ids:
        log.warning("sweep: %d deliveries were left behind; published again", len(ids))
    return len(ids)


def publish(inbox_ids, connection=None) -> None:
    """Publish ``regulars.apply`` for each delivery, on one connection. Raises
    when the broker can't be reached (the deliveries stay stored; a sweep
    publishes them later)."""
    if not inbox_ids:
        return
    with app.producer_or_acquire(connection) as producer:
        for inbox_id in inbox_ids:
            apply.apply_async((inbox_id,), producer=producer, retry=False)


def queue_depth(name: str) -> int | None:
    """Messages waiting in a queue of the broker (not those a worker holds),
    or None when the broker can't say."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            return conn.default_channel.queue_declare(queue=name, passive=True).message_count
    except Exception as exc:
        if isinstance(exc, ChannelError) or getattr(exc, "code", None) == 404:
            return 0  # no such queue: nothing waits in it (Redis drops an empty one)
        log.debug("queue depth of %s unknown: %s", name, exc)
        return None
