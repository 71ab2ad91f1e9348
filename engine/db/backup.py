"""A copy of the embedded SQLite database, taken while regulars runs
(``regulars db backup``).

SQLite's online backup API (``sqlite3.Connection.backup``) copies the
database in one step, inside one read transaction: the copy is the database
as one moment saw it, and in WAL mode the engine's writers go on meanwhile.
The copy is written beside the target under a temporary name, made a single
self-contained file (rollback journal, no ``-wal``), checked (SQLite's
``integrity_check``, then every cached balance against its ledger entries,
as ``regulars audit`` does) and only then renamed to the target, so a file
with the target's name is always a whole, checked copy.

PostgreSQL is backed up with its own tools (``pg_dump``), not here.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from engine.db.models import accounts, customers, inbox, ledger_entries


class BackupFailed(Exception):
    """The copy could not be made, or is not sound (it is not kept)."""


@dataclass(frozen=True)
class Copied:
    """A backup made: where, how big, how long it took, what it holds."""

    source: Path
    target: Path
    size: int
    seconds: float
    #: customers (not merged into another), accounts, ledger_entries, deliveries
    counts: dict[str, int] = field(default_factory=dict)
    #: accounts whose cached balance differs from their entries (``engine.ledger.Drift``)
    drifts: list = field(default_factory=list)


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL; None for any other database."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def backup_sqlite(url: str, target: Path, audit) -> Copied:
    """Copy the SQLite database of ``url`` to ``target`` (see the module).
    ``audit``: ``engine.ledger.Ledger.audit``, run on the copy."""
    source = sqlite_file(url)
    if source is None:
        raise BackupFailed(f"{make_url(url).render_as_string(hide_password=True)} is not an SQLite file")
    if not source.is_file():
        raise BackupFailed(f"there is no database at {source} yet")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # one step: one read transaction, one moment
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                (integrity,) = dst.execute("PRAGMA integrity_check").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
        if integrity != "ok":
            raise BackupFailed(f"the copy fails SQLite's integrity check: {integrity}")
        counts, drifts = _checked(partial, audit)
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise BackupFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return Copied(source, target, target.stat().st_size, time.perf_counter() - started, counts, drifts)


def _checked(path: Path, audit) -> tuple[dict[str, int], list]:
    """What the copy holds, and its balances audited against its ledger."""
    # A plain engine: the engine's own (engine.db.make_engine) would turn the copy back to WAL.
    copy = create_engine(f"sqlite:///{path}")
    try:
        with copy.connect() as conn:
            def count(table, *where) -> int:
                return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

            counts = {"customers": count(customers, customers.c.merged_into.is_(None)), "accounts": count(accounts),
                      "ledger_entries": count(ledger_entries), "deliveries": count(inbox)}
            return counts, audit(conn)
    finally:
        copy.dispose()
