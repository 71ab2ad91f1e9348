"""The webhook receivers, on Starlette (served by uvicorn: `regulars serve`).

A delivery is verified over its raw bytes, stored in the inbox and answered
before any rule runs: the requests waiting share one transaction, and each is
answered once it is committed (``engine.web.receipts``). An applier thread
then translates and applies it in the background (the embedded default: no
broker, no worker to run). Answers are JSON; errors have one shape,
``{"error": {"code", "message"}}``, and never a stack trace:

- wrong or missing signature: 401, nothing stored;
- a body that is not JSON, truncated, or not UTF-8: 400 saying what is wrong,
  kept in the inbox as failed;
- an unknown topic: 200, kept as ignored;
- a JSON body its connector can't read (a missing id, a negative quantity):
  200 ``received``, then kept as failed by the applier with what is wrong;
- the database unavailable: 503, send it again;
- a body over the size limit: 413.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from contextlib import asynccontextmanager, nullcontext

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectors.base import header
from engine import inbox
from engine.background import BackgroundLoop, drain
from engine.web.receipts import ReceiptWriter
from engine.web.serving import Leadership
from engine.web.signatures import secrets_from_env, verify
from engine.work import Due, apply_delivery, run_job

log = logging.getLogger("regulars.web")

#: Shopify caps webhook bodies well below this; anything larger is not a shop's
MAX_BODY = 5 * 1024 * 1024
#: seconds between a follower process's tries to lead the background work
LEAD_RETRY = 5.0
_WOO_PING = re.compile(rb"^webhook_id=\d+$")
_SIGNATURE_HEADERS = {"shopify": "X-Shopify-Hmac-Sha256", "woocommerce": "X-WC-Webhook-Signature"}
_TOPIC_HEADERS = {"shopify": "X-Shopify-Topic", "woocommerce": "X-WC-Webhook-Topic"}


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class Applier(BackgroundLoop):
    """Applies stored deliveries in the background, in-process: woken by each
    commit of received deliveries, and every second in any case (for one
    stored before a restart).

    Receipts come first. It reads the pending deliveries ``batch`` at a time,
    and applies each in a transaction of its own inside the receipt writer's
    gate, so a receipt waits at most one delivery's transaction for the lock.
    Before each, it waits for a lull: ``lull`` seconds without webhook
    requests overlapping, for up to ``patience`` seconds
    (``ReceiptWriter.wait_for_lull``). During a burst it so applies about one
    delivery every ``patience`` seconds and the backlog waits, safely stored;
    between bursts and under a light load it goes at full speed."""

    def __init__(self, engine, receipts: ReceiptWriter | None = None, interval: float = 1.0, batch: int = 20,
                 lull: float = 0.02, patience: float = 0.2):
        super().__init__("applier", interval)
        self.engine = engine
        self.receipts = receipts
        self.batch = batch
        self.lull = lull
        self.patience = patience

    def step(self) -> int:
        return self.apply_some()

    def apply_some(self) -> int:
        """Apply up to ``batch`` stored deliveries, oldest first, giving way to
        receipts before each; how many were pending."""
        gate = self.receipts.gate if self.receipts is not None else nullcontext()
        with gate, self.engine.db.connect() as conn:
            ids = [row.id for row in inbox.pending(conn, self.batch)]
        for inbox_id in ids:
            if self.stopping.is_set():
                break
            if self.receipts is not None:
                self.receipts.wait_for_lull(self.lull, self.patience)
            with gate:
                apply_delivery(self.engine, inbox_id)
        return len(ids)


class Scheduler(BackgroundLoop):
    """Runs the scheduled jobs (``engine.work.SCHEDULE``) in-process, the
    embedded default's Celery beat: looks every ``interval`` seconds, and runs
    each due job inside the receipt writer's gate. A failing job is logged,
    and tried again at its next time."""

    def __init__(self, engine, receipts: ReceiptWriter | None = None, interval: float = 30.0, due: Due | None = None):
        super().__init__("scheduler", interval, join_timeout=30)
        self.engine = engine
        self.receipts = receipts
        self.due = due or Due()

    def step(self) -> bool:
        gate = self.receipts.gate if self.receipts is not None else nullcontext()
        for name in self.due.due():
            try:
                with gate:
                    run_job(self.engine, name)
            except Exception:
                log.exception("scheduled job %s failed", name)
        return False


class Publisher:
    """Hands received deliveries to Celery workers (a broker is configured):
    a thread publishes their ``regulars.apply`` tasks, so that a slow or
    unreachable broker never holds up an answer. A delivery it can't publish
    stays stored as ``received``; the workers' sweep publishes it later."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="regulars-publisher", daemon=True)
        self._failing = False

    def submit(self, inbox_ids: list[int]) -> None:
        self._queue.put(list(inbox_ids))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from engine.tasks import publish

        stopping = False
        while not stopping:
            batches, stopping = drain(self._queue)
            ids = [inbox_id for batch in batches for inbox_id in batch]
            if not ids:
                continue
            try:
                publish(ids)
            except Exception as exc:
                if not self._failing:
                    log.error("the broker can't be reached (%s): deliveries stay stored, and the sweep "
                              "publishes them when it is back", exc)
                self._failing = True
            else:
                if self._failing:
                    log.warning("the broker is back")
                self._failing = False


def create_app(engine, secrets: dict[str, list[str]] | None = None, background: bool = True,
               install=None) -> Starlette:
    """The HTTP app for an ``Engine``. ``secrets``: channel → valid webhook
    secrets (default: from the environment; an install's secrets are valid
    too). ``background``: apply deliveries and deliver the outbox in-process
    (the embedded default). ``install``: the install routes
    (``engine.web.install.Install``; default: configured from the environment)."""
    from engine.outbox import Deliverer, OutboxWorker
    from engine.web.api import Api
    from engine.web.install import Install, installed_webhook_secrets
    from engine.web.pages import Pages

    secrets = secrets if secrets is not None else secrets_from_env()
    install = install if install is not None else Install(engine)
    receipts = ReceiptWriter(engine)
    embedded = background and not engine.config.broker_url
    outbox_worker = OutboxWorker(Deliverer(engine, gate=receipts.gate)) if embedded else None
    applier = Applier(engine, receipts) if embedded else None
    scheduler = Scheduler(engine, receipts) if embedded else None
    publisher = Publisher() if background and not embedded else None
    if applier is not None:
        receipts.on_received = lambda ids: applier.wake.set()
    if publisher is not None:
        from engine.tasks import configure

        configure(engine.config.broker_url)
        receipts.on_received = publisher.submit

    async def receive(request: Request, channel: str) -> JSONResponse:
        receipts.enter()
        try:
            return await _receive(request, channel)
        finally:
            receipts.leave()

    async def _receive(request: Request, channel: str) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY:
            return error(413, "too_large", f"a webhook body is at most {MAX_BODY} bytes")
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, "too_large", f"a webhook body is at most {MAX_BODY} bytes")
        headers = dict(request.headers)
        signature = header(headers, _SIGNATURE_HEADERS[channel])
        if channel == "woocommerce" and signature is None and _WOO_PING.match(body.strip()):
            return JSONResponse({"status": "ok", "ping": True})  # the unsigned ping of a new webhook
        if not verify(body, signature, secrets.get(channel) or []):
            # The secrets an install brought (the Shopify app's, WooCommerce's
            # webhooks'): looked up only when the configured ones don't match.
            installed = (await run_in_threadpool(installed_webhook_secrets, engine)).get(channel) or []
            if not secrets.get(channel) and not installed:
                return error(401, "no_secret", f"no webhook secret is configured for {channel}")
            if not verify(body, signature, installed):
                return error(401, "bad_signature",
                             f"the {_SIGNATURE_HEADERS[channel]} signature does not match the body")
        topic = header(headers, _TOPIC_HEADERS[channel])
        if not topic:
            return error(400, "no_topic", f"the {_TOPIC_HEADERS[channel]} header is missing")
        try:
            outcome = await receipts.submit(channel, topic, body, headers)
        except Exception:  # logged where it failed
            return error(503, "unavailable", "the delivery could not be stored; send it again")
        if outcome.status == "failed":
            return error(400, "bad_delivery", outcome.error or "the delivery can't be read")
        return JSONResponse({"status": outcome.status, "delivery": outcome.inbox_id})

    async def shopify(request: Request) -> JSONResponse:
        return await receive(request, "shopify")

    async def woocommerce(request: Request) -> JSONResponse:
        return await receive(request, "woocommerce")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    # The publisher runs in every process; the applier, the outbox and the
    # scheduler in the one process that leads the database (engine.web.serving).
    background_threads = [t for t in (applier, outbox_worker, scheduler) if t is not None]
    leadership = Leadership(engine.db)
    leading = threading.Event()
    done = threading.Event()

    def lead() -> None:
        """Start the background work once this process leads its database."""
        while not done.is_set():
            try:
                if leadership.acquire():
                    break
            except Exception as exc:
                log.warning("can't tell whether this process leads the background work: %s", exc)
            done.wait(LEAD_RETRY)
        else:
            return
        for thread in background_threads:
            thread.start()
        leading.set()
        log.info("process %d runs the background work (applier, outbox, scheduled jobs)", os.getpid())

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(engine.ensure_schema)
        receipts.start()
        if publisher is not None:
            publisher.start()
        follower = None
        if background_threads:
            if not await run_in_threadpool(leadership.acquire):
                log.info("process %d receives; another process runs the background work", os.getpid())
                follower = threading.Thread(target=lead, name="regulars-leader", daemon=True)
                follower.start()
            else:
                lead()
        yield
        done.set()
        if follower is not None:
            await run_in_threadpool(follower.join, 10)
        if leading.is_set():
            if outbox_worker is not None:
                await run_in_threadpool(outbox_worker.stop)
            if scheduler is not None:
                await run_in_threadpool(scheduler.stop)
        await run_in_threadpool(receipts.stop)
        if leading.is_set() and applier is not None:
            await run_in_threadpool(applier.stop)
        if publisher is not None:
            await run_in_threadpool(publisher.stop)
        leadership.release()
        receipts.gate.close()

    routes = [
        Route("/webhooks/shopify", shopify, methods=["POST"]),
        Route("/webhooks/woocommerce", woocommerce, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        *install.routes(),
        *Api(engine).routes(),
        *Pages(engine).routes(),
    ]
    async def not_found(request: Request, exc) -> JSONResponse:
        return error(404, "not_found", f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc) -> JSONResponse:
        return error(405, "method_not_allowed", f"{request.url.path} does not take {request.method}")

    async def internal(request: Request, exc) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal", "something went wrong on our side; the delivery was not lost if it was stored")

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_allowed, 500: internal})
    app.state.applier = applier
    app.state.publisher = publisher
    app.state.scheduler = scheduler
    app.state.receipts = receipts
    return app
