"""A background loop in a thread: the embedded default's way of doing work
after the answer (applying stored deliveries, delivering the outbox) with no
broker and no worker process."""

from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger("regulars")


class BackgroundLoop:
    """Runs ``step()`` every ``interval`` seconds, or at once when ``wake`` is
    set, again and again while it reports work done (a truthy result). An
    exception (a database outage) is logged and the loop goes on."""

    def __init__(self, name: str, interval: float = 1.0, join_timeout: float = 10.0):
        self.name = name
        self.interval = interval
        self.join_timeout = join_timeout
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"regulars-{name}", daemon=True)

    def step(self):
        raise NotImplementedError

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=self.join_timeout)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                while self.step() and not self.stopping.is_set():
                    pass
            except Exception:
                log.exception("%s failed; trying again in %s s", self.name, self.interval)


def drain(waiting: queue.SimpleQueue, limit: int | None = None) -> tuple[list, bool]:
    """Wait for one item of ``waiting``, then take whatever else waits there
    (``limit`` items at most): the items, and whether the stop sentinel
    (``None``) was among them. A writer thread's way to batch its work."""
    items: list = []
    stopping = False
    item = waiting.get()
    while True:
        if item is None:
            stopping = True
        else:
            items.append(item)
        if limit is not None and len(items) >= limit:
            break
        try:
            item = waiting.get_nowait()
        except queue.Empty:
            break
    return items, stopping
