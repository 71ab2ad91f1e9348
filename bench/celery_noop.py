"""The no-op Celery app of ``bench/on_celery.py``: Celery's own cost per task,
with nothing of regulars in the task.

Its settings are those of regulars' app (``engine.tasks.app``) where they bear
on the cost of a task: JSON, no result backend, ``acks_late``, prefetch 1,
``reject_on_worker_lost``, the same Redis transport options. The one task,
``bench.noop``, records in Redis when it ran (``HSET bench:noop:done <i>
<time>``), so that the benchmark counts the tasks done and reads each one's
latency; that is one Redis round trip per task, about what a counter's
``INCR`` would cost.

The benchmark starts its workers as
``python -m celery -A bench.celery_noop worker --concurrency 1 ...`` with
``BENCH_NOOP_BROKER_URL`` set.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from engine.tasks import app as regulars_app

QUEUE = "bench.noop"
DONE = "bench:noop:done"
#: regulars' settings that decide what a task costs, copied as they are
SHARED = ("task_serializer", "accept_content", "result_backend", "task_ignore_result", "task_acks_late",
          "task_reject_on_worker_lost", "worker_prefetch_multiplier", "broker_transport_options",
          "broker_connection_retry_on_startup", "worker_hijack_root_logger", "enable_utc", "timezone")

app = Celery("bench_noop", set_as_current=False)
app.conf.update({name: regulars_app.conf[name] for name in SHARED})
app.conf.update(broker_url=os.environ.get("BENCH_NOOP_BROKER_URL") or "memory://", task_default_queue=QUEUE)

_redis = None
_redis_pid = None


def _client():
    """This process's Redis client (after a prefork worker's fork, a new one)."""
    global _redis, _redis_pid
    if _redis is None or _redis_pid != os.getpid():
        import redis

        _redis = redis.Redis.from_url(app.conf.broker_url)
        _redis_pid = os.getpid()
    return _redis


@app.task(name="bench.noop")
def noop(number: int) -> None:
    """Nothing, but say when (for the count and the latency)."""
    _client().hset(DONE, str(number), repr(time.time()))
