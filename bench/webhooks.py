"""Webhook receipt over HTTP: N signed Shopify ``orders/paid`` deliveries sent
from a second process on loopback to ``regulars serve`` (uvicorn, a temporary
SQLite file), beside the same load against a bare endpoint on the same stack.

The load generator is a child process with asyncio: ``--concurrency`` keep-alive
connections to 127.0.0.1, each sending its next request as soon as the answer
to the last one is in. Every request is built before the clock starts: an
``engine.demo.shopify_order`` body (the bodies of ``bench/ingest.py``), its
X-Shopify-Hmac-Sha256 and a distinct X-Shopify-Webhook-Id. A latency is the
time from writing a request to reading its whole answer.

- **regulars serve**: the real command, with a plugins.toml holding the points
  rule and the Shopify connector, REGULARS_DATABASE_URL on a fresh SQLite file
  and REGULARS_SHOPIFY_WEBHOOK_SECRET. A 200 means verified, parsed, keyed and
  committed to the inbox (group commit: the requests waiting share one
  transaction); the applier thread translates and applies it in the background.
  After the last answer the script polls the inbox until no row is
  ``received`` (the applier's catch-up), then checks that every delivery is
  stored exactly once and applied. ``--workers N`` runs ``regulars serve
  --workers N``: N processes on one port, taking turns to write the SQLite
  file, one of them applying.
- **bare endpoint**: a Starlette app on the same uvicorn that reads the body,
  checks the HMAC, parses the JSON and answers 200. It stores nothing.

The load is bounded: N requests, and ``--timeout`` seconds per pass at most.
The table also gives the CPU the server used per request (all its threads and
workers) and the load process's share of a core.

``--profile`` adds two passes that find where the time goes: the app with the
applier off; and the bare endpoint plus one writer thread that group-commits the
inbox rows through the bare ``sqlite3`` module before answering (a floor for
durable receipt). It also samples the server's thread stacks during the first
pass and times each step of the receipt path in process. ``--threads`` caps the
server's thread pool (which the receipt path no longer uses). Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from ingest import PLUGINS_TOML  # noqa: E402  (bench/ingest.py: its TABLES as a plugins.toml)

from connectors.base import header  # noqa: E402
from engine.app import Engine, parse_body  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.web.signatures import secrets_from_env, sign, verify  # noqa: E402

SECRET = "bench-webhook-secret"
TOPIC = "orders/paid"
SHOP = "example.myshopify.com"
#: uvicorn's access log in the servers (off with --no-access-log; a server
#: process of this script reads it from its environment)
ACCESS_LOG = os.environ.get("BENCH_ACCESS_LOG", "1") == "1"
#: the issue's target for verified, durably stored deliveries on embedded SQLite
TARGET_RATE, TARGET_P99_MS = 2000, 50.0
console = Console(width=max(Console().width, 120))


# -- the workload (built in the load process) ----------------------------------------


def make_requests(n: int, customers: int, seed: int = 1) -> tuple[list[bytes], list[str], list[int]]:
    """Whole HTTP/1.1 requests, their webhook ids and their body sizes."""
    from ingest import make_bodies

    bodies, _ = make_bodies(n, customers, seed)
    rng = random.Random(seed)
    requests, ids = [], []
    for body in bodies:
        webhook_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        head = (
            "POST /webhooks/shopify HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n"
            "User-Agent: Shopify-Captain-Hook\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Shopify-Topic: {TOPIC}\r\n"
            f"X-Shopify-Hmac-Sha256: {sign(body, SECRET)}\r\n"
            f"X-Shopify-Shop-Domain: {SHOP}\r\n"
            "X-Shopify-API-Version: 2024-10\r\n"
            f"X-Shopify-Webhook-Id: {webhook_id}\r\n"
            "\r\n"
        )
        requests.append(head.encode() + body)
        ids.append(webhook_id)
    return requests, ids, [len(b) for b in bodies]


@dataclass
class Pass:
    label: str
    #: the requests sent, by their number in the workload
    indices: list[int] = field(default_factory=list)
    #: monotonic clock (system-wide), first write and last answer
    started: float = 0.0
    ended: float = 0.0
    #: seconds, of the 200 answers
    latencies: list[float] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    #: the ``status`` of each 200 answer's JSON
    answers: Counter = field(default_factory=Counter)
    #: inbox ids of the 200 answers (regulars serve names the delivery)
    deliveries: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    #: CPU seconds of the load process, and of the server (with its workers)
    client_cpu: float = 0.0
    server_cpu: float = float("nan")

    @property
    def sent(self) -> int:
        return len(self.indices)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> int:
        return self.codes.get(200, 0)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)] if ordered else float("nan")


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    code = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    return code, await reader.readexactly(length), close


async def _blast(port: int, requests: Sequence[bytes], concurrency: int, timeout: float, label: str) -> Pass:
    result = Pass(label)
    pending = iter(range(len(requests)))
    deadline = time.monotonic() + timeout

    async def client() -> None:
        reader = writer = None
        try:
            while (i := next(pending, None)) is not None:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                result.indices.append(i)
                t = time.perf_counter()
                writer.write(requests[i])
                code, body, close = await _answer(reader)
                latency = time.perf_counter() - t
                result.codes[code] += 1
                if code == 200:
                    result.latencies.append(latency)
                    answer = json.loads(body)
                    result.answers[answer.get("status")] += 1
                    if "delivery" in answer:
                        result.deliveries.append(answer["delivery"])
                elif len(result.errors) < 5:
                    result.errors.append(f"{code}: {body[:200].decode(errors='replace')}")
                if close:
                    writer.close()
                    reader = writer = None
                if time.monotonic() > deadline:
                    result.timed_out = True
                    return
        except (OSError, asyncio.IncompleteReadError) as exc:
            result.errors.append(f"connection: {type(exc).__name__}: {exc}")
        finally:
            if writer is not None:
                writer.close()

    result.started = time.monotonic()
    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout + 30)
    except TimeoutError:
        result.timed_out = True
    result.ended = time.monotonic()
    return result


def load_process(pipe, n: int, customers: int, concurrency: int, timeout: float) -> None:
    """The second process: builds the requests, then runs a pass per port it is
    sent, until it is sent None."""
    requests, ids, sizes = make_requests(n, customers)
    pipe.send((ids, sizes))
    while (order := pipe.recv()) is not None:
        port, label = order
        cpu = time.process_time()
        result = asyncio.run(_blast(port, requests, concurrency, timeout, label))
        result.client_cpu = time.process_time() - cpu
        pipe.send(result)


# -- the servers ------------------------------------------------------------------------


def limit_threads(app):
    """``app`` with anyio's thread pool capped at $BENCH_THREADS (``--threads``;
    Starlette's ``run_in_threadpool`` uses it, 40 threads by default)."""
    threads = int(os.environ.get("BENCH_THREADS") or 0)
    if not threads:
        return app

    async def capped(scope, receive, send):
        if scope["type"] == "lifespan":
            from anyio import to_thread

            to_thread.current_default_thread_limiter().total_tokens = threads
        await app(scope, receive, send)

    return capped


def engine_app(background: bool = True):
    """``regulars serve``'s app (a uvicorn factory, for workers)."""
    from engine.web import create_app

    return limit_threads(create_app(Engine(load_config()), background=background))


def engine_app_quiet():
    return engine_app(background=False)


def bare_app(store: bool = False):
    """The same stack with no storage: read, verify, parse, answer. With
    ``store`` (``--profile``), also a floor for durable receipt: one writer
    thread commits the inbox rows of every request waiting, in one
    transaction through the bare ``sqlite3`` module, before they are answered."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    secrets = secrets_from_env()["shopify"]
    commit = group_commit() if store else None

    async def shopify(request):
        body = await request.body()
        headers = dict(request.headers)
        if not verify(body, header(headers, "X-Shopify-Hmac-Sha256"), secrets):
            return JSONResponse({"error": {"code": "bad_signature"}}, status_code=401)
        try:
            parse_body(body)
        except ValueError as exc:
            return JSONResponse({"error": {"code": "bad_delivery", "message": str(exc)}}, status_code=400)
        if commit is None:
            return JSONResponse({"status": "ok"})
        key = f"webhook:{header(headers, 'X-Shopify-Topic')}:{header(headers, 'X-Shopify-Webhook-Id')}"
        return JSONResponse({"status": "received", "delivery": await commit(key, body, headers)})

    async def health(request):
        return JSONResponse({"status": "ok"})

    return limit_threads(Starlette(routes=[Route("/webhooks/shopify", shopify, methods=["POST"]),
                                           Route("/health", health, methods=["GET"])]))


def bare_store_app():
    return bare_app(store=True)


def group_commit():
    """An awaitable ``commit(key, body, headers) -> inbox id``: a writer thread
    takes every row waiting, inserts them with one ``executemany`` and one
    COMMIT (WAL, synchronous=NORMAL, the engine's pragmas), then answers each."""
    import hashlib
    import queue
    from datetime import UTC, datetime

    engine = Engine(load_config())
    engine.ensure_schema()  # the engine's schema, on this pass's own file
    path = engine.db.url.database
    engine.db.dispose()
    waiting: queue.SimpleQueue = queue.SimpleQueue()
    sql = ("INSERT INTO inbox (channel, topic, key, body, body_sha256, headers, status, attempts, received_at)"
           " VALUES ('shopify', ?, ?, ?, ?, ?, 'received', 0, ?) ON CONFLICT (channel, key) DO NOTHING"
           " RETURNING id")

    def writer() -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            conn.execute(f"PRAGMA {pragma}")
        while True:
            batch = [waiting.get()]
            while True:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            now = datetime.now(UTC).isoformat(" ")
            conn.execute("BEGIN IMMEDIATE")
            ids = []
            for row, _, _ in batch:  # RETURNING needs one execute per row
                ids.append(conn.execute(sql, (*row, now)).fetchone())
            conn.execute("COMMIT")
            for (_, future, loop), got in zip(batch, ids, strict=True):
                loop.call_soon_threadsafe(future.set_result, got[0] if got else None)

    threading.Thread(target=writer, name="bench-group-commit", daemon=True).start()

    async def commit(key: str, body: bytes, headers: dict) -> int:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        row = (header(headers, "X-Shopify-Topic"), key, body, hashlib.sha256(body).hexdigest(), json.dumps(headers))
        waiting.put((row, future, loop))
        return await future

    return commit


def sampler(out: Path, interval: float = 0.002) -> None:
    """A stack sampler inside the server (``--profile``): every ``interval``
    it records where each other thread is: the innermost frame, the library
    it is in, and the innermost frames of this project. The tally is written
    on exit."""
    import atexit

    tallies: dict[str, Counter] = {}
    stop = threading.Event()
    project = str(ROOT) + "/"
    idle = {"wait", "get", "select", "_worker", "run_forever", "_run_once", "sleep"}
    # Our frames that only block in C: the receipt writer's queue.get, the
    # applier's time.sleep while it gives way to receipts.
    blocking = {("receipts.py", "_run"), ("receipts.py", "wait_for_lull")}

    def where(frame) -> str:
        leaf = frame.f_code
        if leaf.co_name in idle and not leaf.co_filename.startswith(project):
            return "idle"
        if (Path(leaf.co_filename).name, leaf.co_name) in blocking:
            return "idle"
        ours, library = [], None
        while frame is not None:
            path = frame.f_code.co_filename
            if path.startswith(project) and "/.venv/" not in path and "/bench/" not in path:
                ours.append(f"{Path(path).parent.name}/{Path(path).stem}.{frame.f_code.co_name}")
            elif library is None and "site-packages/" in path:
                library = path.split("site-packages/", 1)[1].split("/", 1)[0]
            frame = frame.f_back
        inner = f"{Path(leaf.co_filename).stem}.{leaf.co_name}"
        return f"{' < '.join(ours[:2]) or library or 'stdlib'}  ({inner})"

    def run() -> None:
        me = threading.get_ident()
        while not stop.wait(interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                kind = names.get(ident, "?")
                kind = "threadpool" if kind.startswith(("AnyIO", "asyncio")) else kind
                tallies.setdefault(kind, Counter())[where(frame)] += 1

    def dump() -> None:
        stop.set()
        out.write_text(json.dumps({k: v.most_common(40) for k, v in tallies.items()}, indent=1))

    threading.Thread(target=run, name="bench-sampler", daemon=True).start()
    atexit.register(dump)


def serve(kind: str, port: int, workers: int, sample: Path | None) -> None:
    """The server process of a pass: uvicorn as ``regulars serve`` runs it
    (its defaults and log level ``info``, so the access log is on)."""
    import uvicorn

    if sample is not None:
        sampler(sample)
    factory = {"engine": "engine_app", "quiet": "engine_app_quiet", "bare": "bare_app",
               "floor": "bare_store_app"}[kind]
    if workers == 1:  # in this process, as `regulars serve`
        app = globals()[factory]()
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", access_log=ACCESS_LOG)
    else:
        # uvicorn's supervisor binds the socket with proto 0, so asyncio leaves
        # Nagle on for every connection it accepts (uvicorn issue 3149): each
        # answer after the first on a connection then waits ~40 ms for the
        # client's delayed ACK. Mark the socket TCP, as the one-worker path does.
        bind = uvicorn.Config.bind_socket

        def bind_tcp(config):
            sock = bind(config)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            return sock

        uvicorn.Config.bind_socket = bind_tcp
        uvicorn.run(f"webhooks:{factory}", factory=True, host="127.0.0.1", port=port, log_level="info",
                    access_log=ACCESS_LOG,
                    workers=workers)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server subprocess: ``regulars serve`` itself for the engine with one
    worker, otherwise this script's ``--serve``."""

    def __init__(self, kind: str, workdir: Path, workers: int, sample: Path | None = None, threads: int = 0):
        self.port = free_port()
        self.kind = kind
        self.workers = workers
        self.database = workdir / f"{kind}.sqlite3"
        config = workdir / "plugins.toml"
        config.write_text(PLUGINS_TOML)
        env = {**os.environ, "REGULARS_DATABASE_URL": f"sqlite:///{self.database}",
               "REGULARS_SHOPIFY_WEBHOOK_SECRET": SECRET, "REGULARS_CONFIG": str(config),
               "PYTHONUNBUFFERED": "1"}
        env.pop("REGULARS_BROKER_URL", None)
        if threads:
            env["BENCH_THREADS"] = str(threads)
        env["BENCH_ACCESS_LOG"] = "1" if ACCESS_LOG else "0"
        if kind == "engine" and sample is None and not threads:
            regulars = Path(sys.executable).with_name("regulars")
            command = [str(regulars), "--config", str(config), "serve", "--host", "127.0.0.1",
                       "--port", str(self.port), "--workers", str(workers)] + ([] if ACCESS_LOG else ["--no-access-log"])
        else:
            command = [sys.executable, __file__, "--serve", kind, "--port", str(self.port),
                       "--workers", str(workers)] + (["--sample", str(sample)] if sample else [])
        self.command = command
        self.log = workdir / f"{kind}.log"
        self.process = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("wb"), start_new_session=True)

    def wait_ready(self, seconds: float = 60) -> None:
        import http.client

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the {self.kind} server exited:\n{self.log.read_text()[-3000:]}")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/health")
                # every worker up: keep-alive connections opened while only the
                # first one listens would all stay with it for the whole pass
                if connection.getresponse().status == 200 and \
                        self.log.read_text(errors="replace").count("Application startup complete") >= self.workers:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the {self.kind} server did not start in {seconds} s")

    def cpu(self) -> float:
        """CPU seconds the server has used (user + system): its process and,
        with workers, the worker processes (found by their parent in /proc)."""
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:  # the fields after "(command)": state, ppid, ..., utime is the 12th
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        ticks, family = 0, {self.process.pid}
        for pid, (parent, used) in sorted(stats.items()):
            if pid in family or parent in family:
                family.add(pid)
                ticks += used
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the inbox ------------------------------------------------------------------------


def inbox_statuses(database: Path) -> Counter:
    with sqlite3.connect(database, timeout=30) as conn:
        return Counter(dict(conn.execute("SELECT status, count(*) FROM inbox GROUP BY status").fetchall()))


@dataclass
class CatchUp:
    backlog: int
    seconds: float
    done: bool
    statuses: Counter


def catch_up(database: Path, last_answer: float, limit: float) -> CatchUp:
    """Poll until no delivery is ``received``; seconds since the last answer."""
    first = inbox_statuses(database)
    statuses = first
    deadline = time.monotonic() + limit
    while statuses.get("received", 0) and time.monotonic() < deadline:
        time.sleep(0.02)
        statuses = inbox_statuses(database)
    return CatchUp(first.get("received", 0), time.monotonic() - last_answer,
                   not statuses.get("received", 0), statuses)


def exactly_once(database: Path, ids: Sequence[str], run: Pass, orders: bool = True) -> list[str]:
    """What is wrong with the stored deliveries, if anything: one inbox row per
    delivery sent, with the key of its webhook id, and one 200 per delivery."""
    with sqlite3.connect(database, timeout=30) as conn:
        rows, keys = conn.execute(
            "SELECT count(*), count(DISTINCT key) FROM inbox WHERE channel = 'shopify'").fetchone()
        stored = {key for (key,) in conn.execute("SELECT key FROM inbox WHERE channel = 'shopify'")}
        made = conn.execute("SELECT count(*) FROM orders").fetchone()[0] if orders else None
    expected = {f"webhook:{TOPIC}:{ids[i]}" for i in run.indices}
    problems = []
    if rows != len(expected) or keys != rows:
        problems.append(f"{rows} inbox rows with {keys} distinct keys for {len(expected)} deliveries")
    if stored != expected:
        problems.append(f"{len(expected - stored)} deliveries missing, {len(stored - expected)} unexpected keys")
    if run.ok != len(expected) or len(set(run.deliveries)) != run.ok:
        problems.append(f"{run.ok} answers 200 naming {len(set(run.deliveries))} distinct deliveries")
    if orders and made != len(expected):
        problems.append(f"{made} orders for {len(expected)} deliveries")
    return problems


# -- profile -----------------------------------------------------------------------------


def receipt_breakdown(workdir: Path, n: int, customers: int, batch: int) -> list[tuple[str, float]]:
    """Each step of the receipt path in process, µs per delivery, over ``n``
    bodies on fresh SQLite files (what the app does before it answers, the
    group commit taking ``batch`` deliveries at a time), beside what it no
    longer does: a transaction per delivery, and translation (the applier's)."""
    import tomllib

    from engine import inbox
    from engine.config import config_from_tables
    from engine.web.receipts import ReceiptWriter, prepare

    requests, ids, _ = make_requests(n, customers)
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in requests]
    heads = [dict(line.split(": ", 1) for line in r.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:])
             for r in requests]
    heads = [{k.lower(): v for k, v in h.items()} for h in heads]
    steps: list[tuple[str, float]] = []

    def fresh(name: str) -> Engine:
        env = {"REGULARS_DATABASE_URL": f"sqlite:///{workdir / name}"}
        engine = Engine(config_from_tables(tomllib.loads(PLUGINS_TOML), workdir / "plugins.toml", env))
        engine.ensure_schema()
        return engine

    def timed(label, fn, items, deliveries=None):
        """µs per delivery: per item, or over ``deliveries`` for batches."""
        items = list(items)
        t = time.perf_counter()
        out = [fn(*item) for item in items]
        steps.append((label, (time.perf_counter() - t) / (deliveries or len(items)) * 1e6))
        return out

    batches = [(start,) for start in range(0, n, batch)]
    engine = fresh("profile.sqlite3")
    connector = engine.connector("shopify")
    timed("verify the HMAC", lambda b, h: verify(b, h["x-shopify-hmac-sha256"], [SECRET]), zip(bodies, heads, strict=True))
    payloads = timed("parse the JSON (parse_body)", lambda b: parse_body(b), [(b,) for b in bodies])
    keys = timed("delivery key", lambda p, h, b: connector.delivery_key(TOPIC, p, h, b), zip(payloads, heads, bodies, strict=True))
    rows = [("shopify", TOPIC, k, b, h) for k, b, h in zip(keys, bodies, heads, strict=True)]

    def group(start):
        with engine.db.begin() as conn:
            return [r.inbox_id for r in inbox.receive_many(conn, rows[start:start + batch])]

    stored = [i for got in timed(f"inbox rows, {batch} per transaction (receive_many + COMMIT)", group, batches, n)
              for i in got]
    engine.db.dispose()

    engine = fresh("profile-whole.sqlite3")
    writer = ReceiptWriter(engine)
    prepared = timed("receipt, whole: prepare (parse, key)", lambda b, h: prepare(engine, "shopify", TOPIC, b, h),
                     zip(bodies, heads, strict=True))
    timed(f"receipt, whole: ReceiptWriter.write, {batch} per transaction",
          lambda start: writer.write(prepared[start:start + batch]), batches, n)
    engine.db.dispose()

    engine = fresh("profile-one.sqlite3")

    def alone(key, body, headers):
        with engine.db.begin() as conn:
            return inbox.receive(conn, "shopify", TOPIC, key, body, headers).inbox_id

    timed("(no longer at receipt) inbox INSERT + COMMIT, one per transaction", alone,
          zip(keys, bodies, heads, strict=True))
    timed("(no longer at receipt: the applier's) translate + validate (connector, load_event)",
          lambda i, b, h, p: engine._translate(i, "shopify", TOPIC, b, h, p), zip(stored, bodies, heads, payloads, strict=True))
    engine.db.dispose()
    return steps


def print_samples(path: Path, title: str) -> None:
    from rich.markup import escape

    if not path.exists():
        console.print(f"[yellow]no samples from {title}[/yellow]")
        return
    for thread, rows in json.loads(path.read_text()).items():
        total = sum(n for _, n in rows)
        busy = sum(n for where, n in rows if where != "idle")
        table = Table(title=f"{title}: {thread} ({busy / max(total, 1):.0%} of {total} samples not idle)")
        table.add_column("of not idle", justify="right")
        table.add_column("where: this project's innermost frames, else the library (innermost frame)")
        for where, n in [row for row in rows if row[0] != "idle"][:10]:
            table.add_row(f"{n / max(busy, 1):.0%}", escape(where))
        console.print(table)


# -- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="deliveries per pass (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections in flight (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (regulars serve --workers; default 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="cap the server's thread pool (default: anyio's 40, as regulars serve)")
    parser.add_argument("--customers", type=int, default=1000, help="distinct customers (default 1000)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds a pass may take at most (default 60)")
    parser.add_argument("--applier-timeout", type=float, default=60,
                        help="seconds to wait for the applier after the last answer (default 60)")
    parser.add_argument("--profile", action="store_true",
                        help="add passes that find where the time goes, a stack sampler in the server "
                        "and a step-by-step timing of the receipt path")
    parser.add_argument("--no-access-log", action="store_true",
                        help="both servers without uvicorn's access log (regulars serve --no-access-log)")
    parser.add_argument("--serve", choices=["engine", "quiet", "bare", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global ACCESS_LOG
    ACCESS_LOG = not args.no_access_log
    if args.serve:
        serve(args.serve, args.port, args.workers, args.sample)
        return
    if not (1 <= args.n <= 100_000 and 1 <= args.concurrency <= 256 and 1 <= args.workers <= 8):
        parser.error("--n is 1..100000, --concurrency 1..256, --workers 1..8")

    workdir = Path(tempfile.mkdtemp(prefix="regulars-bench-webhooks-"))
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    loader = context.Process(target=load_process, args=(theirs, args.n, args.customers, args.concurrency,
                                                         args.timeout), name="regulars-bench-load")
    loader.start()
    try:
        run(args, workdir, ours)
    finally:
        ours.send(None)
        loader.join(timeout=10)
        if loader.is_alive():
            loader.terminate()
        shutil.rmtree(workdir, ignore_errors=True)


def one_pass(kind: str, label: str, args, workdir: Path, pipe, sample: Path | None = None):
    server = Server(kind, workdir, args.workers, sample, args.threads)
    try:
        server.wait_ready()
        cpu = server.cpu()
        pipe.send((server.port, label))
        result: Pass = pipe.recv()
        result.server_cpu = server.cpu() - cpu
        caught = None
        if kind == "engine":
            caught = catch_up(server.database, result.ended, args.applier_timeout)
    finally:
        server.stop()
    return server, result, caught


def run(args: argparse.Namespace, workdir: Path, pipe) -> None:
    started = time.monotonic()
    ids, sizes = pipe.recv()
    console.print(f"{args.n} signed Shopify orders/paid deliveries (bodies {min(sizes) / 1024:.1f} to "
                  f"{max(sizes) / 1024:.1f} KiB, mean {sum(sizes) / len(sizes) / 1024:.1f} KiB), "
                  f"{args.concurrency} connections from a second process, uvicorn with {args.workers} "
                  f"worker(s)" + (f", thread pool capped at {args.threads}" if args.threads else "")
                  + ", SQLite (temporary file, WAL)" + ("" if ACCESS_LOG else ", no access log"))

    sample = workdir / "samples.json" if args.profile else None
    server, engine_run, caught = one_pass("engine", "regulars serve", args, workdir,
                                          pipe, sample)
    problems = exactly_once(server.database, ids, engine_run) if caught and caught.done else []
    quiet = floor = None
    if args.profile:
        _, quiet, _ = one_pass("quiet", "regulars app, applier off", args, workdir, pipe)
        floor_server, floor, _ = one_pass("floor", "bare + sqlite3 group commit", args, workdir, pipe)
        floor_problems = exactly_once(floor_server.database, ids, floor, orders=False)
    _, bare_run, _ = one_pass("bare", "bare endpoint", args, workdir, pipe)

    table = Table(title=f"webhook receipt over HTTP on loopback, {args.n} deliveries, "
                        f"{args.concurrency} connections")
    for column in ("endpoint", "deliveries/s", "p50 ms", "p99 ms", "max ms", "seconds", "not 200",
                   "server CPU", "load CPU", "× bare"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    for r in (engine_run, quiet, floor, bare_run):
        if r is None:
            continue
        ratio = "" if r is bare_run or not r.rate else f"{bare_run.rate / r.rate:.1f}×"
        table.add_row(r.label, f"{r.rate:,.0f}", f"{r.pct(0.5) * 1000:.1f}", f"{r.pct(0.99) * 1000:.1f}",
                      f"{max(r.latencies, default=0) * 1000:.0f}", f"{r.seconds:.2f}",
                      f"{r.sent - r.ok}" + (f" ({args.n - r.sent} unsent)" if r.sent < args.n else ""),
                      f"{r.server_cpu / max(r.sent, 1) * 1e6:,.0f} µs", f"{r.client_cpu / r.seconds:.0%}", ratio)
    table.add_row("[dim]target (issue 4)[/dim]", f"[dim]≥ {TARGET_RATE:,}[/dim]", "",
                  f"[dim]< {TARGET_P99_MS:.0f}[/dim]", "", "", "", "", "", "")
    console.print(table)
    console.print("server CPU: user + system time of the server per request (all its threads: the event "
                  "loop, the receipt writer, the applier; and its workers); load CPU: the load process's CPU over the pass's "
                  "wall time; × bare: the bare endpoint's rate over the pass's")
    if args.profile:
        console.print("[yellow]the regulars serve row ran with the stack sampler in the server: slower than "
                      "without[/yellow]")
    for r in (engine_run, quiet, floor, bare_run):
        if r is not None and r.errors:
            console.print(f"[red]{r.label}: {len(r.errors)} errors, e.g.[/red] {r.errors[:3]}")

    met = engine_run.rate >= TARGET_RATE and engine_run.pct(0.99) * 1000 < TARGET_P99_MS \
        and engine_run.ok == args.n
    verdict = "[green]met[/green]" if met else "[red]not met[/red]"
    console.print(f"target ≥ {TARGET_RATE:,} verified, stored deliveries/s with p99 < {TARGET_P99_MS:.0f} ms: "
                  f"{verdict} ({engine_run.rate:,.0f}/s, p99 {engine_run.pct(0.99) * 1000:.1f} ms; "
                  f"{engine_run.rate / TARGET_RATE:.2f} of the rate)")
    console.print(f"answers of regulars serve: {dict(engine_run.answers)}")

    if caught is not None:
        applied_in = engine_run.seconds + caught.seconds
        state = "all applied" if caught.done else "[red]not finished[/red]"
        console.print(f"applier: {caught.backlog} deliveries still to apply at the last answer; "
                      f"{state} {caught.seconds:.2f} s after it ({engine_run.ok / applied_in:,.0f} applied/s "
                      f"from the first request); inbox {dict(caught.statuses)}")
        if not caught.done:
            console.print("[red]exactly once: not checked, the applier did not finish[/red]")
        elif problems:
            console.print(f"[red]exactly once: FAILED: {'; '.join(problems)}[/red]")
        else:
            n = engine_run.sent
            console.print(f"exactly once: {n} inbox rows, {n} distinct webhook keys, {n} orders, "
                          "one 200 per delivery")

    if floor is not None:
        console.print("bare + sqlite3 group commit, exactly once: "
                      + ("; ".join(floor_problems) if floor_problems else f"{floor.sent} inbox rows, one 200 each"))
    if args.profile:
        print_samples(sample, "regulars app during its pass")
        steps = receipt_breakdown(workdir, min(args.n, 1000), args.customers, args.concurrency)
        breakdown = Table(title="the receipt path in process, µs per delivery (one thread, no HTTP)")
        breakdown.add_column("step")
        breakdown.add_column("µs", justify="right")
        for label, us in steps:
            breakdown.add_row(label, f"{us:.0f}")
        breakdown.add_row("[dim]one request of the bare endpoint (1 / its rate)[/dim]",
                          f"[dim]{1e6 / bare_run.rate:.0f}[/dim]")
        console.print(breakdown)
    console.print(f"whole run: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
