"""End-to-end throughput of regulars on Celery (issue 6): PostgreSQL, Redis and
real worker processes, beside the raw driver's figure for the same writes and
Celery's own figure for a task that does nothing, in the same run.

    .venv/bin/python bench/on_celery.py [--events 2000] [--workers 2] [--concurrency 1] [--loglevel INFO]

Parts, all on 127.0.0.1:

- PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth), in a database of
  its own, ``regulars_bench_celery``: created if missing, migrated, and every
  table emptied (TRUNCATE) before each pass. No other database is touched.
- Redis: a private ``redis-server`` on a free port (no persistence), started
  by the script and stopped at the end; the machine's Redis is not used.
- Workers: ``--workers`` processes (default 2) of the real command,
  ``python -m engine.cli worker --concurrency 1``, each in a session of its
  own, started before any timing, waited for (``control.ping``, then warm-up
  tasks that each worker must have run) and killed at the end whatever
  happens.

Passes:

1. **regulars end to end.** N Shopify ``orders/paid`` bodies (those of
   ``bench/ingest.py``: the first 1000 each a new customer) are stored in the
   inbox (``inbox.receive_many``, keyed by the connector: not timed). Then
   ``engine.tasks.publish`` publishes one ``regulars.apply`` per delivery, 10
   ids per call, and the clock runs from the first publish until the last
   delivery is ``applied`` (the latest ``processed_at``; the inbox's status
   counts are polled every 50 ms). A latency is a delivery's ``processed_at``
   minus the time its publish call began. Then a paced pass: ``--paced``
   deliveries published one at a time, one every 20 ms, well below what the
   workers can take: the latency of one task with no queue ahead of it.
2. **in process.** ``Engine.apply_pending`` in this process on one
   connection, with no Celery, on deliveries of its own (half new customers,
   half returning): the task's body alone, and its round trips to PostgreSQL
   counted on the wire (libpq's trace, one ``ReadyForQuery`` each).
3. **no-op.** The same workers' shape running ``bench.noop``
   (``bench/celery_noop.py``: regulars' Celery settings, a task that only
   writes when it ran into a Redis hash), through the same Redis: N tasks,
   timed from the first publish until the hash holds them all, then paced.
4. **raw psycopg.** What applying one of these orders writes (the pipeline
   as of 29 November 2026 before its metrics writes: no ``metric_deltas`` or
   ``metric_footprints`` rows), on the bare driver, one transaction per
   event: for a new customer its row and its
   channel link, the order row, the balance upsert (the engine's statement),
   the ledger entry with its unique key, the points lot, and the inbox row's
   status. On one connection, then on as many connections as the workers have
   pool processes, in as many threads (events split by customer, so that they
   never wait on each other).

While passes 1 and 3 run, the CPU time of every process involved is read from
``/proc`` (worker main processes, their pool processes, PostgreSQL, Redis,
this script) and the machine's from ``/proc/stat``; the workers' logs give
each task's own time (``Task ... succeeded in Xs``).

Not part of the test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

import psycopg  # noqa: E402
from psycopg.types.json import Json  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import event  # noqa: E402

from bench.ingest import LEDGER, PLUGINS_TOML, TABLES, TOPIC, Run, console, make_bodies  # noqa: E402
from engine import inbox  # noqa: E402
from engine.app import Engine  # noqa: E402
from engine.config import config_from_tables  # noqa: E402
from engine.db import make_engine, upgrade  # noqa: E402
from engine.demo import SHOPIFY_ID_BASE, T0, make_customer, random_lines, shopify_order  # noqa: E402
from engine.events import load_event  # noqa: E402
from engine.orders import merge, view  # noqa: E402
from tests.serving import free_port, wait_until  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432"
DATABASE = "regulars_bench_celery"
#: never these: the test suites' databases and PostgreSQL's own
FORBIDDEN = {"test", "test_c", "postgres", "template0", "template1"}

PUBLISH_CHUNK = 10
POLL_EVERY = 0.05
PACE = 0.02
WARM_UP = 10  # tasks per worker process before any timing


# -- parts -------------------------------------------------------------------------


def _burst(items: list[int], publish) -> tuple[dict[int, float], float, float]:
    """Publish ``items`` as fast as it goes, PUBLISH_CHUNK at a time: when
    each was published, when the burst began, and how long publishing took."""
    stamps: dict[int, float] = {}
    t0 = time.time()
    for start in range(0, len(items), PUBLISH_CHUNK):
        chunk = items[start : start + PUBLISH_CHUNK]
        at = time.time()
        publish(chunk)
        stamps.update(dict.fromkeys(chunk, at))
    return stamps, t0, time.time() - t0


def _wait(predicate, seconds: float, what: str, every: float = 0.1):
    return wait_until(predicate, seconds, what, every, error=SystemExit)


class PrivateRedis:
    """A redis-server of the script's own on a free port, nothing on disk."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        self.client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            _wait(self._ping, 10, "redis-server to start")
            self.version = self.client.info("server")["redis_version"]
        except BaseException:
            self.close()
            raise

    def _ping(self) -> bool:
        try:
            return self.client.ping()
        except Exception:
            return False

    def close(self) -> None:
        _kill(self.process)


def _kill(process: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM the process (a worker's warm shutdown), then SIGKILL its whole
    process group (its session: pool processes included)."""
    if process.poll() is None:
        try:
            process.terminate()
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass


class Workers:
    """Worker processes of one kind, each in a session of its own, logging to
    a file of its own."""

    def __init__(self, kind: str, app, workdir: Path, count: int, concurrency: int, env: dict[str, str],
                 loglevel: str = "INFO"):
        self.kind, self.app, self.workdir, self.loglevel = kind, app, workdir, loglevel.upper()
        self.names, self.logs, self.processes = [], [], []
        host = socket.gethostname()
        try:
            for number in range(1, count + 1):
                name = f"{kind}{number}"
                if kind == "regulars":
                    command = [sys.executable, "-m", "engine.cli", "worker", "--concurrency", str(concurrency),
                               "--name", f"{name}@%h", "--loglevel", loglevel]
                else:  # the flags regulars' worker passes to Celery (engine/cli_work.py), on the no-op app
                    command = [sys.executable, "-m", "celery", "-A", "bench.celery_noop", "worker",
                               f"--loglevel={loglevel}", f"--concurrency={concurrency}", "--queues=bench.noop",
                               "--without-gossip", "--without-mingle", f"--hostname={name}@%h"]
                log = workdir / f"{name}.log"
                with open(log, "ab") as out:
                    process = subprocess.Popen(command, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                                               cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True)
                self.processes.append(process)
                self.names.append(f"{name}@{host}")
                self.logs.append(log)
            _wait(self._all_answer, 90, f"{kind} workers to answer a ping", every=0.2)
        except BaseException:
            self.close()
            raise

    def _all_answer(self) -> bool:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise SystemExit(f"a {self.kind} worker exited ({process.returncode}):\n"
                                 + log.read_text(errors="replace")[-3000:])
        answers = self.app.control.ping(destination=self.names, timeout=1.0)
        return {name for answer in answers for name in answer} >= set(self.names)

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.processes}

    def log_sizes(self) -> list[int]:
        return [log.stat().st_size for log in self.logs]

    def task_lines(self, since: list[int] | None = None) -> list[list[tuple[datetime, str, float | None]]]:
        """Per worker: (time, "received" or "succeeded", seconds) of each task
        logged after ``since`` (byte offsets)."""
        found = []
        for number, log in enumerate(self.logs):
            with open(log, "rb") as f:
                f.seek(since[number] if since else 0)
                text = f.read().decode(errors="replace")
            lines = []
            for m in TASK_LINE.finditer(text):
                at = datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S,%f")
                lines.append((at, "received" if m["what"] == "received" else "succeeded",
                              float(m["seconds"]) if m["seconds"] else None))
            found.append(lines)
        return found

    def tail(self) -> str:
        return "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:] for log in self.logs)

    def close(self) -> None:
        for process in self.processes:
            _kill(process)


TASK_LINE = re.compile(r"\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+): INFO/[\w-]+\] Task [\w.]+\[[0-9a-f-]+\] "
                       r"(?P<what>received|succeeded in (?P<seconds>[0-9.e-]+)s)")


# -- CPU accounting ----------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid → (command, parent pid, user + system ticks), every process. A
    PostgreSQL process's command is its title ("postgres: 15/main: postgres
    DATABASE 127.0.0.1(port) idle", "postgres: 15/main: walwriter")."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            if comm == "postgres":
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    comm = f.read().replace(b"\0", b" ").decode(errors="replace").strip() or comm
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry)] = (comm, int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def _machine() -> tuple[int, int]:
    """(busy, total) ticks of every CPU since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


@dataclass
class Cpu:
    """CPU seconds per kind of process over a window of wall time."""

    wall: float
    seconds: dict[str, float]
    machine_busy: float
    machine_total: float

    @staticmethod
    def measure(before, after, wall: float, workers: set[int], redis_pid: int, database: str) -> Cpu:
        (procs0, machine0), (procs1, machine1) = before, after
        seconds: dict[str, float] = {}
        for pid, (comm, ppid, ticks) in procs1.items():
            spent = (ticks - procs0.get(pid, (comm, ppid, 0))[2]) / TICK
            if pid in workers:
                kind = KINDS[0]
            elif ppid in workers:
                kind = KINDS[1]
            elif comm.startswith("postgres:") and f" {database} " in comm:
                kind = KINDS[2]
            elif comm.startswith("postgres:") and not re.search(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]", comm):
                kind = KINDS[3]
            elif pid == redis_pid:
                kind = KINDS[4]
            elif pid == os.getpid():
                kind = KINDS[5]
            else:
                continue
            seconds[kind] = seconds.get(kind, 0.0) + spent
        return Cpu(wall, seconds, (machine1[0] - machine0[0]) / TICK, (machine1[1] - machine0[1]) / TICK)

    @property
    def ours(self) -> float:
        return sum(self.seconds.values())


KINDS = ("worker main processes (consume, ack, log)", "worker pool processes (the tasks)",
         "PostgreSQL backends of the benchmark's database",
         "PostgreSQL's own processes (WAL writer, checkpointer, ...)", "redis-server", "this script (publish, poll)")


def cpu_now():
    return _processes(), _machine()


# -- database --------------------------------------------------------------------------


def database(server: str, name: str) -> tuple[str, str]:
    """The benchmark's database, created if missing and migrated: (psycopg URL,
    SQLAlchemy URL)."""
    if name in FORBIDDEN or name.startswith("template"):
        raise SystemExit(f"refusing to use the database {name!r}")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{server}/{name}"
    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    sa = make_engine(sa_url)
    upgrade(sa)
    sa.dispose()
    return url, sa_url


def empty_tables(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
        conn.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")


def store(engine: Engine, bodies: Sequence[bytes]) -> list[int]:
    """Store the deliveries in the inbox, keyed by the Shopify connector as
    ``Engine.receive`` keys them, in one transaction: their ids, in order."""
    connector = engine.connector("shopify")
    rows = [("shopify", TOPIC, connector.delivery_key(TOPIC, json.loads(body), {}, body), body, None)
            for body in bodies]
    with engine.db.begin() as conn:
        receipts = inbox.receive_many(conn, rows)
    if {r.status for r in receipts} != {"new"}:
        raise SystemExit("a delivery was not stored as new: is the database empty?")
    return [r.inbox_id for r in receipts]


def other_bodies(count: int, first_customer: int, first_order: int, new_customers: int, seed: int) -> list[bytes]:
    """Orders outside the workload (warm-up, in-process pass): ``new_customers``
    customers' first orders, then orders from the same customers again."""
    rng = random.Random(seed)
    people = [make_customer(first_customer + n, rng) for n in range(max(1, new_customers))]
    bodies = []
    for k in range(count):
        person = people[k] if k < new_customers else people[k % len(people)]
        order_id = SHOPIFY_ID_BASE + first_order + k
        body = shopify_order(order_id, person, random_lines(rng), updated_at=T0 + timedelta(minutes=k))
        bodies.append(json.dumps(body, ensure_ascii=False).encode())
    return bodies


def status_counts(conn, first: int, last: int) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM inbox WHERE id BETWEEN %s AND %s GROUP BY status",
                             (first, last)).fetchall())


def wait_applied(conn, ids: Sequence[int], seconds: float, workers: Workers) -> None:
    first, last = min(ids), max(ids)
    deadline = time.monotonic() + seconds
    while True:
        counts = status_counts(conn, first, last)
        if counts.get(inbox.APPLIED, 0) == len(ids):
            return
        bad = {s: n for s, n in counts.items() if s not in (inbox.APPLIED, inbox.RECEIVED)}
        if bad:
            errors = conn.execute("SELECT id, status, error FROM inbox WHERE id BETWEEN %s AND %s AND status "
                                  "NOT IN ('applied', 'received') LIMIT 3", (first, last)).fetchall()
            raise SystemExit(f"deliveries not applied: {bad}, e.g. {errors}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {seconds} s: {counts}\n{workers.tail()}")
        time.sleep(POLL_EVERY)


def processed_at(conn, ids: Sequence[int]) -> dict[int, float]:
    return {i: at.timestamp() for i, at in conn.execute(
        "SELECT id, processed_at FROM inbox WHERE id BETWEEN %s AND %s", (min(ids), max(ids)))}


# -- results ---------------------------------------------------------------------------------


@dataclass
class Pass:
    label: str
    events: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    paced: list[float] = field(default_factory=list)
    publish_seconds: float | None = None
    cpu: Cpu | None = None
    bodies: list[list[float]] = field(default_factory=list)  # per worker: "succeeded in" seconds
    commits: list[float] = field(default_factory=list)  # raw: seconds in COMMIT

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def pct(samples: Sequence[float], p: float) -> float:
    return Run("", len(samples), 1.0, list(samples)).pct(p)


def task_seconds(workers: Workers, since: list[int]) -> list[list[float]]:
    return [[s for _, what, s in lines if what == "succeeded"] for lines in workers.task_lines(since)]


def warm_up(workers: Workers, publish_some, done, count: int) -> None:
    """Tasks until every worker has run some: an engine built, connections made."""
    since = workers.log_sizes()
    for _ in range(5):
        publish_some(count)
        _wait(done, 60, "the warm-up tasks", every=0.05)
        ran = [len(s) for s in task_seconds(workers, since)]
        if min(ran) >= 2 or workers.loglevel != "INFO":  # without INFO lines, trust the count
            return
    raise SystemExit(f"warm-up: a worker ran no task ({ran})")


# -- pass 1: regulars end to end -------------------------------------------------------------


def regulars_pass(args, engine: Engine, pg_url: str, broker: PrivateRedis, workdir: Path,
                  bodies: list[bytes]) -> tuple[Pass, Workers]:
    from engine.tasks import configure, publish

    app = configure(broker.url)
    empty_tables(pg_url)
    n_workers = args.workers * args.concurrency
    warm = other_bodies(WARM_UP * n_workers * 5, 5_000_000, 900_000_000, WARM_UP * n_workers * 5, seed=7)
    paced_bodies = other_bodies(args.paced, 6_000_000, 910_000_000, args.paced // 2, seed=8)
    warm_ids = iter(store(engine, warm))
    t = time.perf_counter()
    ids = store(engine, bodies)
    stored = time.perf_counter() - t
    paced_ids = store(engine, paced_bodies)
    console.print(f"stored {len(ids)} deliveries in the inbox in {stored:.2f} s (not timed)")

    env = {"REGULARS_CONFIG": str(workdir / "plugins.toml"), "REGULARS_DATABASE_URL": pg_url,
           "REGULARS_BROKER_URL": broker.url}
    t = time.perf_counter()
    workers = Workers("regulars", app, workdir, args.workers, args.concurrency, env, args.loglevel)
    console.print(f"{args.workers} regulars worker(s) × concurrency {args.concurrency} answering "
                  f"after {time.perf_counter() - t:.1f} s")
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            warmed: list[int] = []

            def publish_warm(count):
                batch = [next(warm_ids) for _ in range(count)]
                warmed.extend(batch)
                publish(batch)

            warm_up(workers, publish_warm, lambda: status_counts(conn, min(warmed), max(warmed)).get(
                inbox.APPLIED, 0) == len(warmed), WARM_UP * n_workers)

            # the burst
            since = workers.log_sizes()
            before = cpu_now()
            stamps, t0, published = _burst(ids, publish)
            wait_applied(conn, ids, args.timeout, workers)
            cpu = Cpu.measure(before, cpu_now(), time.time() - t0, workers.pids, broker.process.pid, args.database)
            done = processed_at(conn, ids)
            seconds = max(done.values()) - t0
            result = Pass("regulars, end to end", len(ids), seconds,
                          [done[i] - stamps[i] for i in ids], publish_seconds=published, cpu=cpu,
                          bodies=task_seconds(workers, since))

            # paced: one task at a time
            stamps = {}
            t0 = time.time()
            for number, inbox_id in enumerate(paced_ids):
                _sleep_until(t0, number)
                stamps[inbox_id] = time.time()
                publish([inbox_id])
            wait_applied(conn, paced_ids, 60, workers)
            done = processed_at(conn, paced_ids)
            result.paced = [done[i] - stamps[i] for i in paced_ids]
        return result, workers
    except BaseException:
        workers.close()
        raise


def _sleep_until(t0: float, number: int) -> None:
    delay = t0 + number * PACE - time.time()
    if delay > 0:
        time.sleep(delay)


# -- pass 2: in process ------------------------------------------------------------------------


def in_process_pass(args, engine: Engine, sa_url: str, workdir: Path) -> dict[str, float]:
    """apply_pending on one connection, no Celery: ms per delivery, and round
    trips per delivery on the wire (a second engine, traced)."""
    count = args.in_process
    timed_bodies = other_bodies(count, 7_000_000, 920_000_000, count // 2, seed=9)
    traced_bodies = other_bodies(40, 8_000_000, 930_000_000, 20, seed=10)
    timed, traced = store(engine, timed_bodies), store(engine, traced_bodies)
    engine.apply_pending(timed[0])  # a warm connection
    samples = []
    for inbox_id in timed[1:]:
        t = time.perf_counter()
        outcome = engine.apply_pending(inbox_id)
        samples.append(time.perf_counter() - t)
        if outcome is None or outcome.status != "applied":
            raise SystemExit(f"in process: {outcome}")

    traced_engine = Engine(config_from_tables(TABLES, workdir / "plugins.toml", {"REGULARS_DATABASE_URL": sa_url}))
    trace_path = workdir / "libpq.trace"
    trace = open(trace_path, "w")  # noqa: SIM115 - closed below

    @event.listens_for(traced_engine.db, "connect")
    def _trace(dbapi_connection, record):  # noqa: ARG001
        dbapi_connection.pgconn.trace(trace.fileno())
        dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    traced_engine.apply_pending(traced[0])
    half = len(traced) // 2
    trips = []
    for group in (traced[1:half], traced[half:]):
        trace.flush()
        before = trace_path.read_text().count("\tReadyForQuery\t")
        for inbox_id in group:
            traced_engine.apply_pending(inbox_id)
        trace.flush()
        trips.append((trace_path.read_text().count("\tReadyForQuery\t") - before) / len(group))
    traced_engine.db.dispose()
    trace.close()
    new = count // 2 - 1  # samples[i] is timed[i + 1]; the first count // 2 are new customers
    return {"ms": statistics.mean(samples) * 1000, "p50": pct(samples, 0.5) * 1000,
            "new ms": statistics.mean(samples[:new]) * 1000,
            "returning ms": statistics.mean(samples[new:]) * 1000,
            "trips new": trips[0], "trips returning": trips[1]}


# -- pass 3: no-op ---------------------------------------------------------------------------------


def noop_pass(args, broker: PrivateRedis, workdir: Path) -> tuple[Pass, Workers]:
    os.environ["BENCH_NOOP_BROKER_URL"] = broker.url
    from bench import celery_noop

    celery_noop.app.conf.broker_url = broker.url
    noop, app, r = celery_noop.noop, celery_noop.app, broker.client
    r.flushall()
    warmed: list[int] = []

    def publish(numbers):
        with app.producer_or_acquire() as producer:  # as engine.tasks.publish does
            for number in numbers:
                noop.apply_async((number,), producer=producer, retry=False)

    def done_count() -> int:
        return r.hlen(celery_noop.DONE)

    t = time.perf_counter()
    workers = Workers("noop", app, workdir, args.workers, args.concurrency,
                      {"BENCH_NOOP_BROKER_URL": broker.url}, args.loglevel)
    console.print(f"{args.workers} no-op worker(s) answering after {time.perf_counter() - t:.1f} s")
    try:
        def publish_warm(count):
            batch = list(range(len(warmed), len(warmed) + count))
            warmed.extend(batch)
            publish(batch)

        warm_up(workers, publish_warm, lambda: done_count() == len(warmed), WARM_UP * args.workers * args.concurrency)
        r.delete(celery_noop.DONE)

        numbers = list(range(args.events))
        since = workers.log_sizes()
        before = cpu_now()
        stamps, t0, published = _burst(numbers, publish)
        _wait(lambda: done_count() >= len(numbers), args.timeout, "the no-op tasks", every=POLL_EVERY)
        cpu = Cpu.measure(before, cpu_now(), time.time() - t0, workers.pids, broker.process.pid, args.database)
        done = {int(k): float(v) for k, v in r.hgetall(celery_noop.DONE).items()}
        result = Pass("Celery no-op task", len(numbers), max(done.values()) - t0,
                      [done[i] - stamps[i] for i in numbers], publish_seconds=published, cpu=cpu,
                      bodies=task_seconds(workers, since))

        r.delete(celery_noop.DONE)
        stamps = {}
        t0 = time.time()
        for number in range(args.paced):
            _sleep_until(t0, number)
            stamps[number] = time.time()
            publish([number])
        _wait(lambda: done_count() >= args.paced, 60, "the paced no-op tasks", every=POLL_EVERY)
        done = {int(k): float(v) for k, v in r.hgetall(celery_noop.DONE).items()}
        result.paced = [done[i] - stamps[i] for i in range(args.paced)]
        return result, workers
    except BaseException:
        workers.close()
        raise


# -- pass 4: raw psycopg -----------------------------------------------------------------------------

RAW_CUSTOMER = ("INSERT INTO customers (email, phone, first_name, last_name, card_code, referral_code,"
                " accepts_marketing, address, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id")
RAW_LINK = "INSERT INTO customer_links (channel, external_id, customer_id) VALUES ('shopify', %s, %s)"
RAW_ORDER = ("INSERT INTO orders (channel, external_id, customer_id, state, status, eligible, multipliers,"
             " awarded, revision, paid_at, created_at, updated_at)"
             " VALUES ('shopify', %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s)")
#: the engine's own statement (engine/ledger.py)
RAW_BALANCE = ("INSERT INTO accounts (customer_id, unit, balance) VALUES (%s, 'points', %s)"
               " ON CONFLICT (customer_id, unit) DO UPDATE SET balance = accounts.balance + excluded.balance"
               " RETURNING id, balance")
#: bench/ingest.py's ledger row (reason 'order', rule 'points'), with the id back for the lot
RAW_LEDGER = LEDGER.format("%s") + " RETURNING id"
RAW_LOT = ("INSERT INTO lots (account_id, entry_id, amount, remaining, earned_at)"
           " VALUES (%s, %s, %s, %s, %s)")
RAW_INBOX = "UPDATE inbox SET status = 'applied', attempts = attempts + 1, processed_at = %s WHERE id = %s"


@dataclass
class RawEvent:
    inbox_id: int
    owner: str  # the customer's Shopify id
    customer: dict
    order_id: str
    state: dict
    status: str
    eligible: object
    points: int
    paid_at: datetime


def raw_events(engine: Engine, ids: Sequence[int], bodies: Sequence[bytes]) -> list[RawEvent]:
    """What the engine would write for each order, worked out beforehand (not
    timed): its merged state, its status, eligible amount and points."""
    connector = engine.connector("shopify")
    made = []
    for inbox_id, body in zip(ids, bodies, strict=True):
        loaded = load_event(connector.translate(TOPIC, json.loads(body), {})[0])
        state = merge(None, loaded)
        order = view(0, "shopify", loaded["order"]["id"], state, [])
        made.append(RawEvent(inbox_id, loaded["customer"]["external_id"], loaded["customer"],
                             loaded["order"]["id"], state, order.status, order.eligible, int(order.eligible),
                             order.paid_at))
    return made


def raw_apply(url: str, events: Sequence[RawEvent], samples: list[float], commits: list[float],
              barrier: threading.Barrier) -> None:
    """One connection's share; ``barrier`` is passed three times: at the
    start, at the end, and once the CPU times are read (the connection's
    backend must still be alive then)."""
    try:
        with psycopg.connect(url) as conn:
            barrier.wait()
            _raw_apply(conn, events, samples, commits)
            barrier.wait()
            barrier.wait()
    except BaseException:
        barrier.abort()
        raise


def _raw_apply(conn, events: Sequence[RawEvent], samples: list[float], commits: list[float]) -> None:
    customers: dict[str, int] = {}
    detail = Json({"eligible": "0", "multipliers": []})
    cur = conn.cursor()
    for e in events:
        t = time.perf_counter()
        now = datetime.now(UTC)
        customer_id = customers.get(e.owner)
        if customer_id is None:
            c = e.customer
            cur.execute(RAW_CUSTOMER, (c["email"], c["phone"], c["first_name"], c["last_name"],
                                       f"C{e.owner}", f"R{e.owner}", c["accepts_marketing"], c["address"],
                                       now, now))
            customer_id = customers[e.owner] = cur.fetchone()[0]
            cur.execute(RAW_LINK, (e.owner, customer_id))
        cur.execute(RAW_ORDER, (e.order_id, customer_id, Json(e.state), e.status, e.eligible, Json([]),
                                Json({"points|points": e.points}), e.paid_at, now, now))
        account_id, balance = cur.execute(RAW_BALANCE, (customer_id, e.points)).fetchone()
        entry_id = cur.execute(RAW_LEDGER, (account_id, e.points, f"order:shopify:{e.order_id}",
                                            f"order:{e.inbox_id}:1:{customer_id}:points|points",
                                            e.paid_at, now, detail)).fetchone()[0]
        cur.execute(RAW_LOT, (account_id, entry_id, e.points, e.points, e.paid_at))
        cur.execute(RAW_INBOX, (now, e.inbox_id))
        committing = time.perf_counter()
        conn.commit()
        done = time.perf_counter()
        samples.append(done - t)
        commits.append(done - committing)


def raw_pass(engine: Engine, pg_url: str, database: str, bodies: list[bytes], connections: int) -> Pass:
    empty_tables(pg_url)
    ids = store(engine, bodies)
    events = raw_events(engine, ids, bodies)
    # split by customer: one customer's events on one connection, in order
    shares = [[e for e in events if int(e.owner) % connections == k] for k in range(connections)]
    samples: list[list[float]] = [[] for _ in shares]
    commits: list[float] = []
    barrier = threading.Barrier(connections + 1, timeout=300)
    threads = [threading.Thread(target=raw_apply, args=(pg_url, share, out, commits, barrier))
               for share, out in zip(shares, samples, strict=True)]
    for thread in threads:
        thread.start()
    try:
        before = cpu_now()
        barrier.wait()
        t0 = time.perf_counter()
        barrier.wait()
        seconds = time.perf_counter() - t0
        cpu = Cpu.measure(before, cpu_now(), seconds, set(), -1, database)
        barrier.wait()
    except threading.BrokenBarrierError:
        raise SystemExit("raw pass: a connection failed") from None
    finally:
        for thread in threads:
            thread.join()
    flat = [s for out in samples for s in out]
    if len(flat) != len(events):
        raise SystemExit("raw pass: a thread failed")
    with psycopg.connect(pg_url) as conn:
        counts = status_counts(conn, min(ids), max(ids))
    if counts != {inbox.APPLIED: len(ids)}:
        raise SystemExit(f"raw pass: {counts}")
    label = f"raw psycopg, 1 tx/event, {connections} connection{'s' if connections > 1 else ''}"
    return Pass(label, len(events), seconds, flat, cpu=cpu, commits=commits)


# -- report ------------------------------------------------------------------------------------------


def report(args, e2e: Pass, noop: Pass, raws: list[Pass], in_process: dict[str, float]) -> None:
    rates = Table(title=f"{args.events} Shopify orders/paid, {args.workers} worker process(es) × concurrency "
                        f"{args.concurrency}, PostgreSQL + Redis on 127.0.0.1")
    for column in ("pass", "events/s", "seconds", "regulars ÷ this"):
        rates.add_column(column, justify="left" if column == "pass" else "right")
    rows = [e2e, *raws, noop]
    for p in rows:
        ratio = "" if p is e2e else f"{e2e.rate / p.rate:.3f}"
        rates.add_row(p.label, f"{p.rate:,.0f}", f"{p.seconds:.2f}", ratio)
    console.print(rates)
    console.print("regulars ÷ raw: " + ", ".join(
        f"{e2e.rate / r.rate:.3f} ({r.label.split(', ')[-1]})" for r in raws)
        + f"; regulars ÷ no-op: {e2e.rate / noop.rate:.3f}")

    lat = Table(title="latency, ms (end to end: publish call → applied; raw: one transaction)")
    for column in ("pass", "burst p50", "burst p99", "paced p50", "paced p99", "publish s"):
        lat.add_column(column, justify="left" if column == "pass" else "right")
    for p in rows:
        paced = (f"{pct(p.paced, 0.5) * 1000:.1f}", f"{pct(p.paced, 0.99) * 1000:.1f}") if p.paced else ("", "")
        lat.add_row(p.label, f"{pct(p.latencies, 0.5) * 1000:,.1f}", f"{pct(p.latencies, 0.99) * 1000:,.1f}",
                    *paced, f"{p.publish_seconds:.2f}" if p.publish_seconds is not None else "")
    console.print(lat)
    console.print(f"paced: {args.paced} tasks, one every {PACE * 1000:.0f} ms; burst: all N published at once, "
                  f"{PUBLISH_CHUNK} per publish call, so its latency is mostly the queue")

    work = Table(title="where a task's time goes (burst passes)")
    work.add_column("per event", justify="left")
    for p in (e2e, noop):
        work.add_column(p.label, justify="right")
    slots = args.workers * args.concurrency
    body = [[s for w in p.bodies for s in w] for p in (e2e, noop)]
    work.add_row("wall ms per task per worker process (seconds × processes ÷ N)",
                 *(f"{p.seconds * slots / p.events * 1000:.2f}" for p in (e2e, noop)))
    if all(body):
        work.add_row("tasks run per worker process",
                     *(" / ".join(str(len(w)) for w in p.bodies) for p in (e2e, noop)))
        work.add_row("task body ms, mean (worker log: succeeded in)",
                     *(f"{statistics.mean(b) * 1000:.2f}" for b in body))
        work.add_row("task body ms, p50 / p99",
                     *(f"{pct(b, 0.5) * 1000:.2f} / {pct(b, 0.99) * 1000:.2f}" for b in body))
        work.add_row("around the body (wall per task − body)",
                     *(f"{(p.seconds * slots / p.events - statistics.mean(b)) * 1000:.2f}"
                       for p, b in zip((e2e, noop), body, strict=True)))
    for kind in KINDS:
        work.add_row(f"CPU ms: {kind}", *(f"{p.cpu.seconds.get(kind, 0) / p.events * 1000:.2f}" for p in (e2e, noop)))
    work.add_row("CPU ms: the benchmark's, all of the above", *(f"{p.cpu.ours / p.events * 1000:.2f}" for p in (e2e, noop)))
    work.add_row("CPU ms: everything else on the machine (other jobs, kernel)",
                 *(f"{(p.cpu.machine_busy - p.cpu.ours) / p.events * 1000:.2f}" for p in (e2e, noop)))
    work.add_row("machine busy over the pass", *(f"{p.cpu.machine_busy / p.cpu.machine_total:.0%} of "
                                                 f"{os.cpu_count()} cores" for p in (e2e, noop)))
    console.print(work)
    for p in (e2e, noop):
        other = p.cpu.machine_busy - p.cpu.ours
        if other > 0.1 * p.cpu.machine_busy:
            console.print(f"[yellow]{p.label}: other processes took {other / p.cpu.machine_busy:.0%} of the "
                          "machine's busy time during the pass; its figures are low. Run again on a quiet "
                          "machine.[/yellow]")
    for raw in raws:
        console.print(f"{raw.label}: COMMIT {statistics.mean(raw.commits) * 1000:.2f} ms mean "
                      f"(p50 {pct(raw.commits, 0.5) * 1000:.2f}); CPU per event: PostgreSQL backends "
                      f"{raw.cpu.seconds.get(KINDS[2], 0) / raw.events * 1000:.2f} ms, PostgreSQL's own processes "
                      f"{raw.cpu.seconds.get(KINDS[3], 0) / raw.events * 1000:.2f} ms, this script "
                      f"{raw.cpu.seconds.get(KINDS[5], 0) / raw.events * 1000:.2f} ms")
    console.print(f"in process (apply_pending, 1 connection, no Celery, workers stopped): {in_process['ms']:.2f} ms "
                  f"mean per delivery (p50 {in_process['p50']:.2f}; new customer {in_process['new ms']:.2f}, "
                  f"returning {in_process['returning ms']:.2f}); round trips on the wire: "
                  f"{in_process['trips new']:.1f} (new customer), {in_process['trips returning']:.1f} (returning)")


# -- main --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per pass (default 2000)")
    parser.add_argument("--customers", type=int, default=1000, help="distinct customers (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=1, help="pool processes per worker (default 1)")
    parser.add_argument("--paced", type=int, default=100, help="tasks of the paced passes (default 100)")
    parser.add_argument("--in-process", type=int, default=100, help="deliveries of the in-process pass")
    parser.add_argument("--server", default=SERVER, help=f"PostgreSQL server (default {SERVER})")
    parser.add_argument("--database", default=DATABASE, help=f"database name (default {DATABASE})")
    parser.add_argument("--loglevel", default="INFO", help="the workers' log level (default INFO, as `regulars "
                        "worker` has it; the task times are read from the INFO lines)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a pass may take (default 120)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the workers are killed on the way out

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="regulars-bench-celery-"))
    (workdir / "plugins.toml").write_text(PLUGINS_TOML, encoding="utf-8")
    broker = workers = None
    try:
        pg_url, sa_url = database(args.server, args.database)
        engine = Engine(config_from_tables(TABLES, workdir / "plugins.toml", {"REGULARS_DATABASE_URL": sa_url}))
        engine.ensure_schema()
        broker = PrivateRedis(workdir)
        bodies, _ = make_bodies(args.events, args.customers)
        with psycopg.connect(pg_url) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
        console.print(f"{args.events} Shopify orders/paid bodies ({sum(map(len, bodies)) / len(bodies) / 1024:.1f} "
                      f"KiB each), {min(args.events, args.customers)} customers; PostgreSQL {pg_version} "
                      f"(database {args.database}), private redis-server {broker.version} on port {broker.port}")

        e2e, workers = regulars_pass(args, engine, pg_url, broker, workdir, bodies)
        workers.close()
        workers = None
        in_process = in_process_pass(args, engine, sa_url, workdir)
        noop, workers = noop_pass(args, broker, workdir)
        workers.close()
        workers = None
        raws = [raw_pass(engine, pg_url, args.database, bodies, 1)]
        if args.workers * args.concurrency > 1:
            raws.append(raw_pass(engine, pg_url, args.database, bodies, args.workers * args.concurrency))
        engine.db.dispose()
        report(args, e2e, noop, raws, in_process)
        console.print(f"whole run: {time.perf_counter() - started:.0f} s")
    finally:
        if workers is not None:
            workers.close()
        if broker is not None:
            broker.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
