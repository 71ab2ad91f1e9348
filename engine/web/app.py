"""The webhook receivers, on Starlette (served by uvicorn: `regulars serve`).

A delivery is verified over its raw bytes, stored in the inbox and answered
before any rule runs; an applier thread then applies it in the background (the
embedded default: no broker, no worker to run). Answers are JSON; errors have
one shape, ``{"error": {"code", "message"}}``, and never a stack trace:

- wrong or missing signature: 401, nothing stored;
- a body that is not JSON, truncated, or that its connector can't read: 400
  saying what is wrong, kept in the inbox as failed;
- an unknown topic: 200, kept as ignored;
- a body over the size limit: 413.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectors.base import header
from engine.web.signatures import secrets_from_env, verify

log = logging.getLogger("regulars.web")

#: Shopify caps webhook bodies well below this; anything larger is not a shop's
MAX_BODY = 5 * 1024 * 1024
_WOO_PING = re.compile(rb"^webhook_id=\d+$")
_SIGNATURE_HEADERS = {"shopify": "X-Shopify-Hmac-Sha256", "woocommerce": "X-WC-Webhook-Signature"}
_TOPIC_HEADERS = {"shopify": "X-Shopify-Topic", "woocommerce": "X-WC-Webhook-Topic"}


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class Applier:
    """Applies stored deliveries in the background, in-process: woken by each
    delivery, and every second in any case (for one stored before a restart)."""

    def __init__(self, engine, interval: float = 1.0):
        self.engine = engine
        self.interval = interval
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="regulars-applier", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                while self.engine.apply_received() and not self.stopping.is_set():
                    pass
            except Exception:  # a database outage: keep the thread, try again
                log.exception("applying stored deliveries failed; retrying in %s s", self.interval)


def create_app(engine, secrets: dict[str, list[str]] | None = None, background: bool = True) -> Starlette:
    """The HTTP app for an ``Engine``. ``secrets``: channel → valid webhook
    secrets (default: from the environment). ``background``: apply deliveries
    in-process (the embedded default)."""
    secrets = secrets if secrets is not None else secrets_from_env()
    applier = Applier(engine) if background else None

    async def receive(request: Request, channel: str) -> JSONResponse:
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
        if not secrets.get(channel):
            return error(401, "no_secret", f"no webhook secret is configured for {channel}")
        if not verify(body, signature, secrets[channel]):
            return error(401, "bad_signature", f"the {_SIGNATURE_HEADERS[channel]} signature does not match the body")
        topic = header(headers, _TOPIC_HEADERS[channel])
        if not topic:
            return error(400, "no_topic", f"the {_TOPIC_HEADERS[channel]} header is missing")
        try:
            outcome = await run_in_threadpool(engine.receive, channel, topic, body, headers)
        except Exception:
            log.exception("storing a %s delivery failed", channel)
            return error(503, "unavailable", "the delivery could not be stored; send it again")
        if outcome.status == "failed":
            return error(400, "bad_delivery", outcome.error or "the delivery can't be read")
        if outcome.status == "received" and applier is not None:
            applier.wake.set()
        return JSONResponse({"status": outcome.status, "delivery": outcome.inbox_id})

    async def shopify(request: Request) -> JSONResponse:
        return await receive(request, "shopify")

    async def woocommerce(request: Request) -> JSONResponse:
        return await receive(request, "woocommerce")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(engine.ensure_schema)
        if applier is not None:
            applier.start()
        yield
        if applier is not None:
            await run_in_threadpool(applier.stop)

    routes = [
        Route("/webhooks/shopify", shopify, methods=["POST"]),
        Route("/webhooks/woocommerce", woocommerce, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
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
    return app
