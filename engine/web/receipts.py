"""Group commit at receipt: the webhook requests waiting to be stored share one
transaction.

A verified delivery is checked (its body must be JSON), keyed by its
connector, and handed to the ``ReceiptWriter``; its request waits. One writer
thread takes every delivery waiting, stores them all in one transaction
(``inbox.receive_many``: duplicates and conflicting bodies found as
``Engine.receive`` finds them), commits, and only then answers each request
with its outcome. Nothing is answered before its row is committed. While one
transaction commits, the next requests queue up for the next one, so under load
each commit carries many deliveries and requests never wait for SQLite's write
lock among themselves.

If the shared transaction fails, each of its deliveries is stored again in a
transaction of its own, so one bad row fails only itself. A database outage
(unreachable, locked, full) fails them all at once.

Translation (the connector's ``translate`` and the canonical events' validation)
is left to the applier, which records a delivery it can't read as ``failed``
with the reason. What receipt decides is cheap: a body that is not JSON is
``failed`` (the request gets a 400), a topic the connector doesn't use is
``ignored``.

The in-process applier takes the same ``gate`` around its transactions and
waits for a lull in the webhook requests before each delivery
(``wait_for_lull``, see ``engine.web.app.Applier``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from connectors.base import body_key
from engine import inbox
from engine.app import Outcome, parse_body
from engine.background import drain
from engine.web.serving import WriteGate

log = logging.getLogger("regulars.web")

#: the most deliveries one transaction takes
MAX_BATCH = 500
#: webhook requests in flight at once that mean the receipts are under load
#: (one at a time is a light load, whatever its pace)
BUSY = 2


@dataclass
class Delivery:
    """One verified delivery, keyed, waiting for its transaction."""

    channel: str
    topic: str
    body: bytes
    headers: dict[str, Any]
    key: str
    #: decided at receipt: ``failed`` (not JSON) or ``ignored`` (a topic the
    #: connector does not use); None: stored ``received``, for the applier
    verdict: Outcome | None = None
    future: asyncio.Future | None = field(default=None, repr=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)


def prepare(engine, channel: str, topic: str, body: bytes, headers: Mapping[str, str]) -> Delivery:
    """Parse and key a delivery as ``Engine.receive`` does, without touching
    the database: the key is the connector's ``delivery_key``, or the body's
    hash for a body too broken to key."""
    headers = dict(headers or {})
    connector = engine.connector(channel)
    try:
        payload = parse_body(body)
    except ValueError as exc:
        return Delivery(channel, topic, body, headers, body_key(topic, body), Outcome(0, "failed", str(exc)))
    try:
        key = connector.delivery_key(topic, payload, headers, body)
    except Exception:  # a payload too broken to key: its hash keys it
        key = None
    delivery = Delivery(channel, topic, body, headers, key or body_key(topic, body))
    if topic not in connector.topics:  # the engine's verdict, from its first check (no translation)
        delivery.verdict = engine._translate(0, channel, topic, body, headers, payload).outcome
    return delivery


def store(conn, batch: list[Delivery]) -> list[Outcome]:
    """The deliveries' inbox rows, in the caller's transaction: each
    ``received``, ``duplicate``, or decided at receipt (``failed``,
    ``ignored``) and marked so, as ``Engine.receive`` records it."""
    receipts = inbox.receive_many(conn, [(d.channel, d.topic, d.key, d.body, d.headers) for d in batch])
    outcomes = []
    for delivery, receipt in zip(batch, receipts, strict=True):
        verdict = delivery.verdict
        if receipt.status == "duplicate":
            outcome = Outcome(receipt.inbox_id, "duplicate")
        elif receipt.status == "conflict":  # kept under a derived key, already marked failed
            outcome = Outcome(receipt.inbox_id, "failed", receipt.error)
        elif verdict is None:
            outcome = Outcome(receipt.inbox_id, "received")
        else:
            status = inbox.FAILED if verdict.status == "failed" else inbox.IGNORED
            inbox.mark(conn, receipt.inbox_id, status, verdict.error, verdict.plugin)
            outcome = Outcome(receipt.inbox_id, verdict.status, verdict.error, verdict.plugin)
        outcomes.append(outcome)
    return outcomes


class ReceiptWriter:
    """The writer thread. ``await writer.submit(...)`` is the delivery's
    ``Outcome`` once its row is committed; it raises what kept the delivery
    from being stored (the request answers 503)."""

    def __init__(self, engine, on_received=None, max_batch: int = MAX_BATCH):
        self.engine = engine
        #: called in the writer thread after a commit that stored deliveries to
        #: apply, with their inbox ids
        self.on_received = on_received
        self.max_batch = max_batch
        #: held around each write transaction of the receipts and the background
        #: work: of this process and, on an SQLite file, of the other processes
        #: serving it (``engine.web.serving.WriteGate``)
        self.gate = WriteGate(engine.db)
        #: webhook requests in flight, and the monotonic time when ``BUSY`` or
        #: more were last (written on the event loop, read by the applier)
        self._in_flight = 0
        self._last_busy = 0.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._stopped = False

    # -- the request side (on the event loop) -----------------------------------------

    def enter(self) -> None:
        """A webhook request came in (see ``wait_for_lull``)."""
        self._in_flight += 1
        if self._in_flight >= BUSY:
            self._busy()

    def leave(self) -> None:
        if self._in_flight >= BUSY:
            self._busy()
        self._in_flight -= 1

    def _busy(self) -> None:
        self._last_busy = now = time.monotonic()
        self.gate.mark_busy(now)  # for the applier of another process (regulars serve --workers)

    def wait_for_lull(self, lull: float, patience: float) -> None:
        """Wait until webhook requests have not overlapped (``BUSY`` in
        flight) for ``lull`` seconds, looking every ``lull`` seconds, for
        ``patience`` seconds at most: the applier's way of giving way to
        receipts under load. A group commit answers many requests at once, so
        one moment with few in flight is no pause in the load; requests one at
        a time are a light load, and don't hold the applier back. The requests
        of the other processes serving an SQLite file count too (the gate
        file says when they last overlapped)."""
        deadline = time.monotonic() + patience
        while True:
            now = time.monotonic()
            calm = now - max(self._last_busy, self.gate.last_busy()) if self._in_flight < BUSY else 0.0
            if calm >= lull or now >= deadline:
                return
            time.sleep(min(lull - calm, deadline - now))

    async def submit(self, channel: str, topic: str, body: bytes, headers: Mapping[str, str]) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            delivery = prepare(self.engine, channel, topic, body, headers)
        except Exception:  # no connector for the channel, say
            log.exception("storing a %s delivery failed", channel)
            raise
        delivery.future, delivery.loop = loop.create_future(), loop
        if self._stopped:
            raise RuntimeError("the receipt writer has stopped")
        if self._thread is None:
            self.start()
        self._queue.put(delivery)
        return await delivery.future

    @property
    def queued(self) -> int:
        """Deliveries waiting for the writer to take them (approximately)."""
        return self._queue.qsize()

    # -- the thread --------------------------------------------------------------------

    def start(self) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="regulars-receipts", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Store what is queued, then stop."""
        self._stopped = True
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=60)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = drain(self._queue, self.max_batch)
            if not batch:
                continue
            try:
                results = self.write(batch)
            except Exception as exc:  # a bug: answer the requests all the same
                log.exception("storing %d webhook deliveries failed", len(batch))
                results = [exc] * len(batch)
            _answer(batch, results)
            received = [r.inbox_id for r in results if isinstance(r, Outcome) and r.status == "received"]
            if self.on_received is not None and received:
                try:
                    self.on_received(received)
                except Exception:
                    log.exception("handing received deliveries on failed")

    def write(self, batch: list[Delivery]) -> list[Outcome | Exception]:
        """Store a batch in one transaction; if that fails, each delivery in a
        transaction of its own. A result is an ``Outcome``, or the exception
        that kept that delivery from being stored."""
        try:
            self.engine.ensure_schema()
            with self.gate, self.engine.db.begin() as conn:
                return store(conn, batch)
        except Exception as exc:
            if len(batch) == 1 or _outage(exc):  # no row of its own caused it: every one would fail alike
                log.error("storing %d webhook deliveries failed", len(batch), exc_info=exc)
                return [exc] * len(batch)
            log.warning("storing %d webhook deliveries together failed (%s); storing them one by one",
                        len(batch), _first_line(exc))
        results: list[Outcome | Exception] = []
        for number, delivery in enumerate(batch):
            try:
                with self.gate, self.engine.db.begin() as conn:
                    results.extend(store(conn, [delivery]))
            except Exception as exc:
                log.error("storing a %s delivery failed", delivery.channel, exc_info=exc)
                if _outage(exc):
                    results.extend([exc] * (len(batch) - number))
                    break
                results.append(exc)
        return results


def _outage(exc: Exception) -> bool:
    """A database that can't be reached, is locked or is full: no row's fault."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _answer(batch: list[Delivery], results: list[Outcome | Exception]) -> None:
    """Resolve the requests' futures: one hand-off to each event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for delivery, result in zip(batch, results, strict=True):
        by_loop.setdefault(delivery.loop, []).append((delivery.future, result))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, pairs)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve(pairs) -> None:
    for future, result in pairs:
        if future.done():  # the request went away
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)
