"""The background work's shared code (``engine.work``), in both modes: a stored
delivery applied exactly once however many workers are handed it, in any
order, at once (a property, on SQLite and on PostgreSQL); the sweep's choice;
the embedded scheduler; the publisher that hands deliveries to a broker
(a real Redis), and what it does when the broker is down; the CLI commands
without and with a broker."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from celery.schedules import schedule
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from engine import inbox, jobs, work
from engine.cli import main
from engine.customers import customer_summary
from engine.db.models import inbox as inbox_table
from engine.web.app import Publisher, Scheduler
from tests.conftest import empty_database, examples, unreachable
from tests.streams import Line, PlannedOrder, deliveries, expected_by_email

ORDERS = [
    PlannedOrder("shopify" if n % 2 else "woocommerce", n, f"c{n % 3}@example.com",
                 (Line(Decimal(n * 7 % 40 + 5) + Decimal("0.25"), 1 + n % 2),),
                 refunds=(Decimal("2.00"),) if n % 4 == 0 else ())
    for n in range(1, 13)
]
STREAM = [d for order in ORDERS for d in deliveries(order)]


def _store(engine) -> list[int]:
    outcomes = [engine.receive(channel, topic, body) for channel, topic, body in STREAM]
    assert {o.status for o in outcomes} == {"received"}
    return [o.inbox_id for o in outcomes]


def _check_applied_once(engine, ids: list[int]) -> None:
    with engine.db.connect() as conn:
        rows = conn.execute(select(inbox_table.c.id, inbox_table.c.status, inbox_table.c.attempts)
                            .where(inbox_table.c.id.in_(ids))).all()
        assert engine.ledger.audit(conn) == []
    assert {(r.status, r.attempts) for r in rows} == {(inbox.APPLIED, 1)}
    for email, points in expected_by_email(ORDERS).items():
        assert customer_summary(engine, email)["points"] == points


# -- applied exactly once ------------------------------------------------------


def test_a_delivery_is_applied_once_and_then_left_alone(engine):
    [first, *_] = ids = _store(engine)
    outcome = work.apply_delivery(engine, first)
    assert outcome.status == "applied"
    assert work.apply_delivery(engine, first) is None  # a redelivered task: nothing to do
    assert work.apply_delivery(engine, 10**9) is None  # no such delivery
    for inbox_id in ids[1:]:
        work.apply_delivery(engine, inbox_id)
    _check_applied_once(engine, ids)


def test_a_delivery_that_fails_is_marked_once_and_not_retried_by_the_workers(engine):
    # stored as the receivers store it: checked as JSON, translated by the worker
    with engine.db.begin() as conn:
        [receipt] = inbox.receive_many(conn, [("shopify", "orders/paid", "bad-1",
                                                b'{"id": 1, "line_items": [{"quantity": -3}]}', {})])
    failed = work.apply_delivery(engine, receipt.inbox_id)
    assert failed.status == "failed" and failed.error
    assert work.apply_delivery(engine, receipt.inbox_id) is None
    with engine.db.connect() as conn:
        row = inbox.get(conn, receipt.inbox_id)
    assert (row.status, row.attempts) == (inbox.FAILED, 1)


@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), workers=st.integers(2, 6), copies=st.integers(1, 3))
def test_workers_handed_the_same_deliveries_in_any_order_apply_each_once(engine, seed, workers, copies):
    """What a broker may do: hand a delivery to several workers (a redelivery
    after a crash, a sweep), in any order, at the same time."""
    empty_database(engine)
    ids = _store(engine)
    rng = random.Random(seed)
    handed = [i for i in ids for _ in range(copies)]
    rng.shuffle(handed)
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda i: work.apply_delivery(engine, i), handed))
    applied = [o.inbox_id for o in outcomes if o is not None]
    assert sorted(applied) == sorted(ids)  # each applied by exactly one worker
    _check_applied_once(engine, ids)


def test_a_database_outage_leaves_the_delivery_received(engine, monkeypatch):
    """Not the delivery's fault: the task raises (Celery retries it) and the
    delivery stays ``received`` for a later try or a sweep."""
    from sqlalchemy.exc import OperationalError

    [inbox_id, *_] = _store(engine)

    def down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused: the server is down"))

    monkeypatch.setattr(engine.pipeline, "apply", down)
    with pytest.raises(OperationalError):
        work.apply_delivery(engine, inbox_id)
    monkeypatch.undo()
    with engine.db.connect() as conn:
        assert inbox.get(conn, inbox_id).status == inbox.RECEIVED
    assert work.apply_delivery(engine, inbox_id).status == "applied"


_CRASHING_APPLIER = """
import os, sys
from pathlib import Path

import engine.app
from engine.app import Engine
from engine.config import config_from_tables
from engine.hookspecs import hookimpl

engine.app.MAX_TRIES = 2


class Crash:
    @hookimpl
    def regulars_order_awards(self, order, customer):
        os._exit(3)  # what a segfault or the OOM killer does: no exception, no rollback


tables = {"engine": {"currency": "EUR"}, "rules": {"points": {"per_unit": 1}},
          "connectors": {"shopify": {"shop": "example.myshopify.com"}}}
config = config_from_tables(tables, Path(sys.argv[1]), {"REGULARS_DATABASE_URL": sys.argv[2]})
outcome = Engine(config, extra_plugins=(("crash", Crash()),)).apply_pending(int(sys.argv[3]))
print(outcome.status if outcome else "nothing", outcome.error if outcome else "")
"""


def test_a_delivery_that_kills_its_process_is_given_up_after_a_few_tries(engine, tmp_path, database_url):
    """A poison delivery: each try kills the process applying it (here
    ``os._exit`` in a plugin, in a real child process). The tries are counted
    before they start, so after MAX_TRIES (2 here) the next try sets it failed,
    saying why, and the ledger is untouched; a replay, the cause mended,
    applies it."""
    import subprocess
    import sys

    [first, *_] = _store(engine)
    script = tmp_path / "crashing_applier.py"
    script.write_text(_CRASHING_APPLIER)
    runs = [subprocess.run([sys.executable, str(script), str(tmp_path / "plugins.toml"), database_url, str(first)],
                           capture_output=True, text=True, timeout=120) for _ in range(3)]

    assert [r.returncode for r in runs] == [3, 3, 0], [r.stderr[-2000:] for r in runs]
    assert runs[2].stdout.startswith("failed gave up after 2 tries that never ended")
    with engine.db.connect() as conn:
        row = inbox.get(conn, first)
        assert engine.ledger.audit(conn) == []
    assert (row.status, row.tries, row.attempts) == (inbox.FAILED, 3, 1)
    assert "the process applying it died each time" in row.error
    assert customer_summary(engine, ORDERS[0].email) is None  # nothing of it was written
    assert engine.replay(first).status == "applied"
    assert customer_summary(engine, ORDERS[0].email) is not None


def test_each_background_try_is_counted_once(engine):
    ids = _store(engine)
    for inbox_id in ids:
        work.apply_delivery(engine, inbox_id)
    work.apply_delivery(engine, ids[0])  # handed over again: not received, not counted
    with engine.db.connect() as conn:
        tries = conn.execute(select(inbox_table.c.tries).where(inbox_table.c.id.in_(ids))).scalars().all()
    assert set(tries) == {1}


# -- the sweep ----------------------------------------------------------------------


def test_the_sweep_takes_what_waited_past_the_grace_or_long_past_when_busy(engine):
    ids = _store(engine)
    now = datetime.now(UTC)
    old, stale = ids[:2], ids[2:4]
    with engine.db.begin() as conn:
        conn.execute(update(inbox_table).where(inbox_table.c.id.in_(old))
                     .values(received_at=now - work.SWEEP_GRACE - timedelta(seconds=5)))
        conn.execute(update(inbox_table).where(inbox_table.c.id.in_(stale))
                     .values(received_at=now - work.SWEEP_STALE - timedelta(seconds=5)))
    assert sorted(work.left_behind(engine, queue_drained=True, now=now)) == sorted(old + stale)
    assert work.left_behind(engine, queue_drained=False, now=now) == sorted(stale)
    work.apply_delivery(engine, stale[0])
    assert work.left_behind(engine, queue_drained=False, now=now) == [stale[1]]


# -- the embedded scheduler -------------------------------------------------------------


@pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)
def test_due_follows_the_schedule_from_its_start():
    start = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    due = work.Due(start=start)
    seen = []
    moment = start
    while moment < start + timedelta(days=1):
        moment += timedelta(seconds=30)
        seen += [(moment.strftime("%H:%M"), name) for name in due.due(moment)]
    names = [name for _, name in seen]
    assert ("02:05", "expire") in seen and ("09:00", "expiry-reminders") in seen
    assert names.count("expire") == names.count("tier-review") == names.count("reward-expiry") == 1
    assert names.count("subscription-check") == 24 and names.count("reconcile") == 4
    assert set(work.SCHEDULE) <= set(jobs.JOBS)  # every scheduled job exists


def test_the_scheduler_runs_each_due_job_and_a_failing_one_stops_nothing(engine, monkeypatch, caplog):
    ran = []
    monkeypatch.setitem(jobs.JOBS, "boom", lambda engine, now: 1 / 0)
    monkeypatch.setitem(jobs.JOBS, "count", lambda engine, now: ran.append(now) or "counted")
    every = schedule(timedelta(seconds=0.05))
    scheduler = Scheduler(engine, interval=0.02,
                          due=work.Due({"boom": every, "count": every}, start=datetime.now(UTC)))
    scheduler.start()
    try:
        deadline = time.monotonic() + 5
        while len(ran) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    assert len(ran) >= 3
    assert "scheduled job boom failed" in caplog.text and "ZeroDivisionError" in caplog.text


# -- the publisher and a broker -------------------------------------------------------------

REDIS_TEST_DB = 13


@pytest.fixture
def redis_broker():
    """The machine's Redis, in a database of this test's own, emptied."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_TEST_DB, socket_connect_timeout=1)
    try:
        client.flushdb()
    except Exception as exc:
        unreachable(f"Redis is not reachable at 127.0.0.1:6379: {exc}")
    from engine.tasks import configure

    url = f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
    configure(url)
    yield url
    client.flushdb()


def _published(url: str) -> list[int]:
    """The inbox ids of the apply tasks waiting in the queue (kombu's Redis
    message: JSON, its body base64 JSON of ``[args, kwargs, embed]``)."""
    import base64

    import redis

    ids = []
    for raw in redis.Redis.from_url(url).lrange("regulars.inbox", 0, -1):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(args[0])
    return sorted(ids)


@pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)
def test_the_publisher_hands_received_deliveries_to_the_broker(redis_broker):
    publisher = Publisher()
    publisher.start()
    publisher.submit([3, 1])
    publisher.submit([2])
    publisher.stop()
    assert _published(redis_broker) == [1, 2, 3]


@pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)
def test_a_broker_that_is_down_holds_up_nothing_and_is_said(caplog):
    from engine.tasks import configure

    configure("redis://127.0.0.1:1/0")  # nothing listens there
    publisher = Publisher()
    publisher.start()
    started = time.monotonic()
    publisher.submit([1, 2])
    publisher.stop()
    assert time.monotonic() - started < 10
    assert "the broker can't be reached" in caplog.text


def test_serve_with_a_broker_publishes_instead_of_applying(engine, redis_broker):
    """With REGULARS_BROKER_URL, the receivers store and publish; nothing in
    the process applies (the workers do)."""
    import urllib.request

    from engine.web import create_app
    from engine.web.signatures import sign
    from tests.serving import serve_app

    engine.config.broker_url = redis_broker
    app = create_app(engine, secrets={"shopify": ["s"], "woocommerce": ["s"]})
    assert app.state.applier is None and app.state.scheduler is None and app.state.publisher is not None
    channel, topic, body = next(d for d in STREAM if d[0] == "shopify")
    with serve_app(app) as url:
        request = urllib.request.Request(f"{url}/webhooks/shopify", data=body, method="POST", headers={
            "x-shopify-topic": topic, "x-shopify-hmac-sha256": sign(body, "s"), "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        deadline = time.monotonic() + 5
        while not _published(redis_broker) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _published(redis_broker) == [answer["delivery"]]
    with engine.db.connect() as conn:
        assert inbox.get(conn, answer["delivery"]).status == inbox.RECEIVED  # for a worker


# -- the commands ---------------------------------------------------------------------------


def _cli(engine, *args, broker: str | None = None):
    env = {"REGULARS_DATABASE_URL": engine.config.database_url, "COLUMNS": "200"}
    if broker:
        env["REGULARS_BROKER_URL"] = broker
    (engine.config.base_dir / "plugins.toml").write_text(
        '[engine]\ncurrency = "EUR"\n\n[rules.points]\nper_unit = 1\n\n[connectors.shopify]\n'
        'shop = "example.myshopify.com"\n\n[connectors.woocommerce]\nurl = "https://shop.example"\n')
    return CliRunner(env=env).invoke(main, ["--config", str(engine.config.base_dir / "plugins.toml"), *args])


def test_worker_beat_and_sweep_want_a_broker(engine):
    for command in ("worker", "beat", "sweep"):
        result = _cli(engine, command)
        assert result.exit_code == 1, result.output
        assert "no broker: set REGULARS_BROKER_URL" in result.output


def test_queue_says_what_waits(engine):
    ids = _store(engine)
    work.apply_delivery(engine, ids[0])
    result = _cli(engine, "queue", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["deliveries"] == {"applied": 1, "received": len(ids) - 1}
    assert report["broker"] is None and report["oldest_waiting_seconds"] >= 0
    assert "broker: none" in _cli(engine, "queue").output


def test_sweep_all_publishes_every_waiting_delivery(engine, redis_broker):
    ids = _store(engine)
    work.apply_delivery(engine, ids[0])
    result = _cli(engine, "sweep", "--all", broker=redis_broker)
    assert result.exit_code == 0, result.output
    assert f"{len(ids) - 1} deliveries published again" in result.output
    assert _published(redis_broker) == sorted(ids[1:])
    report = json.loads(_cli(engine, "queue", "--json", broker=redis_broker).output)
    assert report["broker"]["regulars.inbox"] == len(ids) - 1


def test_the_sweep_task_republishes_what_the_broker_lost(engine, redis_broker, monkeypatch):
    """The task beat runs: the queue has drained, so deliveries older than the
    grace go back to it."""
    from engine import tasks

    ids = _store(engine)
    with engine.db.begin() as conn:
        conn.execute(update(inbox_table).values(received_at=datetime.now(UTC) - timedelta(minutes=5)))
    monkeypatch.setattr(tasks, "engine", lambda: engine)
    assert tasks.sweep() == len(ids)
    assert _published(redis_broker) == sorted(ids)
    # The queue is busy now: only deliveries past SWEEP_STALE would go again (none).
    assert tasks.sweep() == 0
    assert _published(redis_broker) == sorted(ids)
