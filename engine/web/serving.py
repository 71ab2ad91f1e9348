"""``regulars serve``: uvicorn in one process, or in several worker processes
(``--workers``) that share one database.

Processes that serve one database agree on two things:

- **One writer at a time.** On SQLite, every receipt transaction and every
  transaction of the background work takes the ``WriteGate``: a lock within
  the process and, across processes, an ``flock`` on ``<database>.gate``
  beside the SQLite file. A writer so waits in the kernel and wakes the moment
  the lock is free, instead of sleeping in SQLite's busy handler (1 to 100 ms
  at a time), which is what made a second worker slower than one.
- **One process runs the background work** (the applier, the outbox, the
  scheduled jobs): the ``Leadership`` holder, an ``flock`` on
  ``<database>.leader`` for SQLite, a session advisory lock on PostgreSQL. The
  other workers only receive; each tries again every few seconds, so when the
  leader's process ends another one takes the work over.

Both locks are released by the kernel or the server when a process dies.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import zlib
from pathlib import Path

log = logging.getLogger("regulars.web")

try:  # POSIX; elsewhere one process serves (``--workers`` is refused)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

#: seconds between two marks of busy receipts in the gate file, at most
MARK_EVERY = 0.005
#: the factory each worker process imports (it reads REGULARS_CONFIG)
FACTORY = "engine.web.serving:app_from_environment"


def sqlite_file(db) -> Path | None:
    """The file of an SQLite database, None for PostgreSQL or ``:memory:``."""
    if db.dialect.name != "sqlite":
        return None
    name = db.url.database
    if not name or name == ":memory:" or name.startswith("file::memory:"):
        return None
    return Path(name).resolve()


class WriteGate:
    """Held around each write transaction of the receipts and the background
    work: one at a time in this process and, on an SQLite file, across the
    processes serving it."""

    def __init__(self, db=None):
        self._lock = threading.Lock()
        path = sqlite_file(db) if db is not None and fcntl is not None else None
        self._fd = os.open(f"{path}.gate", os.O_RDWR | os.O_CREAT, 0o600) if path else None
        self._marked = 0.0

    def __enter__(self) -> WriteGate:
        self._lock.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits without the GIL
            except BaseException:
                self._lock.release()
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

    # The gate file also carries, in its first 8 bytes, the last time
    # (CLOCK_MONOTONIC, the same in every process) that receipts were busy
    # in any process serving the database: the applier, which runs in one
    # process only, gives way to the others' receipts too.

    def mark_busy(self, now: float) -> None:
        if self._fd is not None and now - self._marked >= MARK_EVERY:
            self._marked = now
            os.pwrite(self._fd, struct.pack("<d", now), 0)

    def last_busy(self) -> float:
        """When receipts were last busy in any process (0.0: not known)."""
        if self._fd is None:
            return 0.0
        data = os.pread(self._fd, 8, 0)
        return struct.unpack("<d", data)[0] if len(data) == 8 else 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# A process that leads a database leads it for every app it serves (tests run
# several apps on one database in one process, each with its own threads).
_held: dict[str, list] = {}  # key → [handle, apps holding it]
_held_lock = threading.Lock()


class Leadership:
    """Whether this process runs the background work for its database:
    ``acquire()`` is True once it does (at once when no other process does),
    ``release()`` gives it up."""

    def __init__(self, db):
        self.db = db
        path = sqlite_file(db) if fcntl is not None else None
        if path is not None:
            self.key = f"file:{path}.leader"
        elif db.dialect.name == "postgresql":
            self.key = f"pg:{db.url.render_as_string(hide_password=True)}"
        else:  # an in-memory database: no other process can share it
            self.key = None
        self.held = False

    def acquire(self) -> bool:
        if self.held:
            return True
        if self.key is None:
            self.held = True
            return True
        with _held_lock:
            entry = _held.get(self.key)
            if entry is None:
                handle = self._take()
                if handle is None:
                    return False
                entry = _held[self.key] = [handle, 0]
            entry[1] += 1
        self.held = True
        return True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.key is None:
            return
        with _held_lock:
            entry = _held.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self.key]
                self._give_back(entry[0])

    def _take(self):
        if self.key.startswith("file:"):
            fd = os.open(self.key[len("file:"):], os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            return fd
        # PostgreSQL: a session advisory lock, on a connection kept for it
        from sqlalchemy import text

        conn = self.db.connect()
        try:
            won = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not won:
            conn.close()
            return None
        return conn

    @staticmethod
    def _give_back(handle) -> None:
        if isinstance(handle, int):
            os.close(handle)  # closing the file releases its flock
            return
        from sqlalchemy import text

        try:  # a pooled connection keeps its session, and so the lock: unlock
            handle.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            handle.commit()
        except Exception:  # the connection is gone, and the lock with it
            handle.invalidate()
        finally:
            handle.close()


#: the advisory lock's key: regulars' own, stable across versions
_LOCK_KEY = zlib.crc32(b"regulars serve: background work")


def log_config() -> dict:
    """uvicorn's logging, and regulars' own messages (``regulars.*``) beside
    its own, at INFO, in each worker process too."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["regulars"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def app_from_environment():
    """The app of one worker process: the engine of REGULARS_CONFIG (the
    parent's ``--config``), on the database the parent has already migrated."""
    from engine.app import Engine
    from engine.config import load_config
    from engine.web.app import create_app

    engine = Engine(load_config(os.environ.get("REGULARS_CONFIG") or None))
    return create_app(engine)


def serve(engine, host: str, port: int, workers: int = 1, config_path: str | None = None,
          access_log: bool = True) -> None:
    """Serve the app for ``engine``: in this process, or in ``workers``
    processes sharing one listening socket (uvicorn's supervisor;
    ``config_path`` names the plugins.toml they load). ``access_log``: a line
    per request."""
    import uvicorn

    from engine.web.app import create_app

    if workers == 1:
        uvicorn.run(create_app(engine), host=host, port=port, log_level="info", log_config=log_config(),
                    access_log=access_log)
        return
    from uvicorn.supervisors import Multiprocess

    if fcntl is None:  # pragma: no cover
        raise RuntimeError("--workers needs a POSIX system; serve with one worker here")
    if config_path is not None:
        os.environ["REGULARS_CONFIG"] = str(Path(config_path).resolve())
    config = uvicorn.Config(FACTORY, factory=True, host=host, port=port, workers=workers, log_level="info",
                            log_config=log_config(), access_log=access_log)
    sock = config.bind_socket()
    # uvicorn binds with protocol 0, so the event loop leaves Nagle's algorithm
    # on for each connection it accepts, and an answer after the first on a
    # keep-alive connection waits ~40 ms for the client's delayed ACK (uvicorn
    # issue 3149). The same socket, marked TCP, gets TCP_NODELAY.
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:  # pragma: no cover
        pass
