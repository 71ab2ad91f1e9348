"""Background work on Celery, against real parts: PostgreSQL, a real broker
(Redis, and RabbitMQ), real ``regulars worker`` and ``regulars beat``
processes (not eager mode), and the webhook receivers over HTTP.

- a worker killed with SIGKILL in the middle of a batch: another takes over,
  and the sweep publishes again what the dead one held;
- the broker stopped and started while deliveries arrive: every delivery is
  answered 200 and stored, and applied once the broker is back.

Afterwards every accepted delivery is applied exactly once (each ``applied``
after one attempt, each order's points posted once), the balances are what
the orders earn, and the audit is clean.

The Redis tests run a Redis server of their own on a free port (so that they
can stop it); the RabbitMQ tests use the machine's server at 127.0.0.1:5672
in a virtual host of their own, and stop and start its application
(``rabbitmqctl stop_app``/``start_app``). These tests run in the suite's
first pass (their database is PostgreSQL whatever the pass); the PostgreSQL
pass (``REGULARS_TEST_PASS=postgres``, set by scripts/test) skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine import inbox
from engine.db.models import inbox as inbox_table
from engine.db.models import ledger_entries
from engine.web.signatures import sign
from tests.conftest import unreachable
from tests.serving import free_port, serve_app, wait_until
from tests.streams import Line, PlannedOrder, deliveries, expected_by_email

pytestmark = pytest.mark.skipif(os.environ.get("REGULARS_TEST_PASS") == "postgres",
                                reason="runs once, in the suite's first pass (on PostgreSQL all the same)")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
[engine]
currency = "EUR"
default_country = "CZ"

[rules.points]
per_unit = 1

[connectors.shopify]
shop = "example.myshopify.com"

[connectors.woocommerce]
url = "https://shop.example"
"""
SECRET = "celery-test-secret"


# -- brokers ---------------------------------------------------------------------


class RedisBroker:
    """A Redis server of the test's own, on a free port, that the test stops and
    starts (it keeps nothing on disk: a restart loses every message, as an
    outage of an unpersisted Redis does)."""

    name = "redis"

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            unreachable("redis-server is not installed")
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _ping(client), 10, "redis-server to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        self.stop()


def _ping(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


class RabbitBroker:
    """The machine's RabbitMQ, in a virtual host of the test's own; ``stop``
    and ``start`` stop and start the node's application."""

    name = "rabbitmq"

    def __init__(self, workdir: Path):
        self.ctl = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if Path("/usr/sbin/rabbitmqctl").exists() else None)
        if self.ctl is None:
            unreachable("rabbitmqctl is not installed (RabbitMQ)")
        if not _port_open(5672):
            unreachable("RabbitMQ is not running at 127.0.0.1:5672")
        self.vhost = f"regulars-test-{uuid.uuid4().hex[:8]}"
        self.url = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
        for args in (["add_vhost", self.vhost], ["set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"]):
            done = self._ctl(*args)
            if done.returncode != 0:
                unreachable(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[:200]}")

    def _ctl(self, *args):
        return subprocess.run([self.ctl, *args], capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        self._ctl("start_app")
        wait_until(lambda: _port_open(5672), 30, "RabbitMQ to start")

    def stop(self) -> None:
        self._ctl("stop_app")

    def close(self) -> None:
        self.start()
        self._ctl("delete_vhost", self.vhost)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request, tmp_path):
    made = (RedisBroker if request.param == "redis" else RabbitBroker)(tmp_path)
    if request.param == "redis":
        made.start()
    try:
        yield made
    finally:
        made.close()


# -- the processes -------------------------------------------------------------------


class Parts:
    """``regulars worker`` and ``regulars beat`` processes on the test's
    database and broker, each in a session of its own (killed whole)."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str):
        self.tmp_path = tmp_path
        self.config = tmp_path / "plugins.toml"
        self.config.write_text(CONFIG, encoding="utf-8")
        self.env = {**os.environ, "REGULARS_CONFIG": str(self.config), "REGULARS_DATABASE_URL": database_url,
                    "REGULARS_BROKER_URL": broker_url, "REGULARS_SWEEP_GRACE": "2", "REGULARS_SWEEP_EVERY": "1",
                    "REGULARS_OUTBOX_EVERY": "2", "PYTHONPATH": str(ROOT)}
        self.processes: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process's life
        process = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], env=self.env, cwd=self.tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process.name = name
        self.processes.append(process)
        return process

    def worker(self, name: str, concurrency: int = 2) -> subprocess.Popen:
        return self._start(name, "worker", "--concurrency", str(concurrency), "--name", f"{name}@%h",
                           "--loglevel", "INFO")

    def beat(self) -> subprocess.Popen:
        return self._start("beat", "beat", "--schedule-file", str(self.tmp_path / "beat-schedule"),
                           "--loglevel", "INFO")

    def kill(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(15)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}.log\n" + (self.tmp_path / f"{p.name}.log").read_text(errors="replace")[-4000:]
                         for p in self.processes)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process, signal.SIGTERM if process.name == "beat" else signal.SIGKILL)


@pytest.fixture
def parts(tmp_path, postgres_url, broker):
    made = Parts(tmp_path, postgres_url, broker.url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def pg_engine(make_engine, postgres_url, broker):
    """An Engine on the same PostgreSQL database, pointed at the broker."""
    built = make_engine(url=postgres_url)
    built.config.broker_url = broker.url
    from engine.tasks import configure

    configure(broker.url)
    return built


# -- the work ------------------------------------------------------------------------


def planned_orders(count: int) -> list[PlannedOrder]:
    """Orders across both shops; a few customers place many (one customer's
    events then reach several worker processes at once)."""
    made = []
    for number in range(1, count + 1):
        email = f"regular{number % 7}@example.com" if number % 3 else f"once{number}@example.com"
        lines = (Line(Decimal(10 + number % 23) + Decimal("0.49"), 1 + number % 3),)
        made.append(PlannedOrder("shopify" if number % 2 else "woocommerce", number, email, lines))
    return made


def stream(orders: list[PlannedOrder]) -> list[tuple[str, str, bytes]]:
    return [d for order in orders for d in deliveries(order)]


def status_counts(engine) -> dict[str, int]:
    with engine.db.connect() as conn:
        return inbox.counts(conn)


def assert_applied_exactly_once(engine, orders: list[PlannedOrder], accepted: int) -> None:
    with engine.db.connect() as conn:
        rows = conn.execute(select(inbox_table.c.status, inbox_table.c.attempts, inbox_table.c.error)).all()
        duplicates = conn.execute(
            select(ledger_entries.c.key, func.count()).group_by(ledger_entries.c.key).having(func.count() > 1)
        ).all()
        drift = engine.ledger.audit(conn)
    assert len(rows) == accepted, f"{len(rows)} deliveries stored, {accepted} accepted"
    not_applied = [r for r in rows if r.status != inbox.APPLIED]
    assert not not_applied, f"not applied: {not_applied[:5]}"
    assert {r.attempts for r in rows} == {1}, "a delivery was applied more than once"
    assert not duplicates
    assert drift == []
    from engine.customers import customer_summary

    for email, points in expected_by_email(orders).items():
        summary = customer_summary(engine, email)
        assert summary is not None and summary["points"] == points, (email, summary and summary["points"], points)


# -- the tests -------------------------------------------------------------------------


def test_a_worker_killed_in_the_middle_of_a_batch_loses_nothing(pg_engine, parts, broker):
    """SIGKILL a worker (its whole process group, pool included) while it
    applies a batch; a second worker and the sweep finish the work."""
    from engine.tasks import publish

    orders = planned_orders(240)
    items = stream(orders)
    received = [pg_engine.receive(channel, topic, body) for channel, topic, body in items]
    assert {o.status for o in received} == {"received"}
    first = parts.worker("first")
    publish([o.inbox_id for o in received])

    applied_at_kill = wait_until(lambda: (status_counts(pg_engine).get(inbox.APPLIED, 0) >= 40)
                            and status_counts(pg_engine).get(inbox.APPLIED, 0), 90,
                            "the first worker to apply some deliveries", every=0.02)
    parts.kill(first)
    assert applied_at_kill < len(items), "the worker finished before it could be killed"

    parts.worker("second")
    parts.beat()  # sweeps every second: what the dead worker held comes back
    try:
        wait_until(lambda: status_counts(pg_engine).get(inbox.APPLIED, 0) == len(items), 120,
              "every delivery to be applied")
    except AssertionError:
        raise AssertionError(f"{status_counts(pg_engine)}\n{parts.logs()}") from None
    assert_applied_exactly_once(pg_engine, orders, len(items))


def _signed(channel: str, topic: str, body: bytes) -> dict[str, str]:
    if channel == "shopify":
        return {"content-type": "application/json", "x-shopify-topic": topic,
                "x-shopify-hmac-sha256": sign(body, SECRET), "x-shopify-event-id": str(uuid.uuid4()),
                "x-shopify-shop-domain": "example.myshopify.com"}
    return {"content-type": "application/json", "x-wc-webhook-topic": topic,
            "x-wc-webhook-signature": sign(body, SECRET), "x-wc-webhook-delivery-id": "1",
            "x-wc-webhook-source": "https://shop.example/"}


def _post(url: str, channel: str, topic: str, body: bytes) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/webhooks/{channel}", data=body, method="POST",
                                     headers=_signed(channel, topic, body))
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            answer = json.loads(response.read())
            assert answer["status"] == "received", answer
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_broker_stopped_and_started_while_deliveries_arrive(pg_engine, parts, broker, caplog):
    """Deliveries keep coming over HTTP while the broker is down: each is
    answered 200 and stored; once the broker is back, the sweep hands the ones
    whose task was never published (or lost) to the workers."""
    from engine.web import create_app

    orders = planned_orders(150)
    items = stream(orders)
    parts.worker("worker", concurrency=2)
    parts.beat()
    app = create_app(pg_engine, secrets={"shopify": [SECRET], "woocommerce": [SECRET]})
    third = len(items) // 3
    statuses = []
    with serve_app(app) as url, ThreadPoolExecutor(4) as pool:
        statuses += list(pool.map(lambda item: _post(url, *item), items[:third]))
        broker.stop()
        statuses += list(pool.map(lambda item: _post(url, *item), items[third:2 * third]))
        # stored while the broker was down, and the publisher said it could not hand them on
        assert sum(status_counts(pg_engine).values()) == 2 * third
        assert wait_until(lambda: "the broker can't be reached" in caplog.text, 20, "the publisher to give up")
        broker.start()
        statuses += list(pool.map(lambda item: _post(url, *item), items[2 * third:]))
        try:
            wait_until(lambda: status_counts(pg_engine).get(inbox.APPLIED, 0) == len(items), 150,
                  "every delivery to be applied")
        except AssertionError:
            raise AssertionError(f"{status_counts(pg_engine)}\n{parts.logs()}") from None
    assert statuses == [200] * len(items)
    assert_applied_exactly_once(pg_engine, orders, len(items))
