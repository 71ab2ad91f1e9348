"""Hot statements run on the DBAPI cursor: the ingest path's few statements,
compiled once per dialect by SQLAlchemy and then executed without its
per-call machinery (about 40 µs of Python per statement, against a few µs on
the bare cursor).

What stays SQLAlchemy's: the SQL (compiled from Core or ``text()`` for the
dialect in use, with its paramstyle: ``?`` for sqlite3, ``%(name)s`` for
psycopg), the values' conversions both ways (each column type's own bind and
result processors, so a datetime, a JSON document or a Numeric is stored and
read back exactly as a Core execution would), the connection's events
(``before_cursor_execute`` and ``after_cursor_execute`` see every statement)
and the error handling (a driver's error is raised as SQLAlchemy's
``IntegrityError``, ``OperationalError``, ..., with disconnects invalidating
the connection). What is skipped: the statement cache look-up, the execution
context, the result object and ``echo`` logging. Rows come back as plain named
tuples.

Only for statements whose parameters are all given at each call (no column
defaults, no expanding ``IN``). A connection not in a transaction begins one,
as a Core execution's autobegin would.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection


class _Plan:
    """A statement compiled for one dialect, with its values' conversions."""

    __slots__ = ("sql", "names", "pairs", "plain", "positional", "constants", "row", "types", "results")

    def __init__(self, statement, dialect):
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names = tuple(compiled.positiontup) if self.positional else tuple(compiled.binds)
        #: values the statement carries itself (``literal()``, a bindparam with a value)
        self.constants = {
            name: compiled.binds[name].effective_value for name in self.names if not compiled.binds[name].required
        }
        binds = compiled._bind_processors
        #: (name, bind processor or None), in the order the driver takes them
        self.pairs = tuple((name, binds.get(name)) for name in self.names)
        #: no value needs converting
        self.plain = not any(proc for _, proc in self.pairs)
        entries = compiled._result_columns or []
        columns = tuple(entry[0] for entry in entries)
        self.row = namedtuple("Row", columns, rename=True) if columns else None
        self.types = tuple(entry[3] for entry in entries)
        #: result processors, filled from the first cursor description
        #: (psycopg's type codes decide some of them)
        self.results = None

    def result_processors(self, dialect, description) -> tuple:
        found = [
            type_._cached_result_processor(dialect, description[position][1])
            for position, type_ in enumerate(self.types)
        ]
        self.results = tuple(found) if any(found) else ()
        return self.results


class Fast:
    """A Core statement (or ``text()``) executed on the DBAPI cursor."""

    __slots__ = ("statement", "_plans", "_last", "__weakref__")

    def __init__(self, statement):
        self.statement = statement
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._last: tuple[Any, _Plan] | None = None

    def plan(self, dialect) -> _Plan:
        last = self._last
        if last is not None and last[0] is dialect:
            return last[1]
        found = self._plans.get(dialect)
        if found is None:
            found = self._plans[dialect] = _Plan(self.statement, dialect)
        self._last = (dialect, found)
        return found

    @staticmethod
    def _parameters(plan: _Plan, params: dict) -> Any:
        if plan.constants:
            params = {**plan.constants, **params}
        if plan.positional:
            if plan.plain:
                return tuple([params[name] for name in plan.names])
            return tuple([params[name] if proc is None else proc(params[name]) for name, proc in plan.pairs])
        if plan.plain:
            return {name: params[name] for name in plan.names}
        return {name: params[name] if proc is None else proc(params[name]) for name, proc in plan.pairs}

    def _prepare(self, conn: Connection, params, many: bool):
        """The plan, the SQL and the driver's parameters, and a cursor, in a
        transaction (begun as SQLAlchemy's autobegin would)."""
        plan = self.plan(conn.dialect)
        if many:
            parameters = [self._parameters(plan, p) for p in params]
        else:
            parameters = self._parameters(plan, params)
        sql = plan.sql
        transaction = conn._transaction
        if transaction is None:
            conn._autobegin()
        elif not transaction.is_active or (conn._nested_transaction and not conn._nested_transaction.is_active):
            conn._invalid_transaction()
        cursor = conn.connection.dbapi_connection.cursor()
        # (An engine with any listener, such as engine.db's "begin" for SQLite, has
        # events; only the cursor ones matter here.)
        dispatch = conn.dispatch if conn._has_events or conn.engine._has_events else None
        if dispatch is not None and dispatch.before_cursor_execute:
            for fn in dispatch.before_cursor_execute:
                sql, parameters = fn(conn, cursor, sql, parameters, None, many)
        return plan, sql, parameters, cursor, dispatch

    def _run(self, conn: Connection, params, many: bool):
        dialect = conn.dialect
        if dialect.name == "postgresql" and _pipelines():
            queue = _DEFERRED.get(id(conn))
            if queue:  # what was deferred goes first, in the same round trip
                return _pipelined(conn, queue, (self, params, many))
        plan, sql, parameters, cursor, dispatch = self._prepare(conn, params, many)
        try:
            if many:
                cursor.executemany(sql, parameters)
            else:
                cursor.execute(sql, parameters)
        except BaseException as exc:
            conn._handle_dbapi_exception(exc, sql, parameters, cursor, None)
        if dispatch is not None and dispatch.after_cursor_execute:
            dispatch.after_cursor_execute(conn, cursor, sql, parameters, None, many)
        return self._result(dialect, plan, cursor, many)

    @staticmethod
    def _result(dialect, plan: _Plan, cursor, many: bool):
        """The rows of an executed statement (named tuples), or its row count."""
        if many or cursor.description is None:
            count = cursor.rowcount
            cursor.close()
            return count
        rows = cursor.fetchall()
        if rows:
            results = plan.results
            if results is None:
                results = plan.result_processors(dialect, cursor.description)
            if results:
                rows = [
                    tuple(value if proc is None else proc(value) for proc, value in zip(results, row, strict=True))
                    for row in rows
                ]
        cursor.close()
        make = plan.row
        return [make(*row) for row in rows] if make is not None else rows

    def rows(self, conn: Connection, params: dict) -> list:
        """Every row the statement returns (named tuples)."""
        return self._run(conn, params, False)

    def first(self, conn: Connection, params: dict):
        """The first row the statement returns, or None."""
        rows = self._run(conn, params, False)
        return rows[0] if rows else None

    def scalar(self, conn: Connection, params: dict):
        """The first column of the first row, or None."""
        rows = self._run(conn, params, False)
        return rows[0][0] if rows else None

    def execute(self, conn: Connection, params: dict) -> int:
        """Run a statement that returns no rows; its row count."""
        return self._run(conn, params, False)

    def executemany(self, conn: Connection, params: list[dict]) -> None:
        """Run a statement that returns no rows once per parameter set."""
        if params:
            self._run(conn, params, True)

    def ahead(self, conn: Connection, params: dict) -> Ahead:
        """Run a statement whose rows are wanted later: inside ``deferring``
        on PostgreSQL, sent with the next statement (a read that shares the
        round trip of a write, say), else now. ``Ahead.rows()`` gives them."""
        holder = Ahead(conn)
        queue = _DEFERRED.get(id(conn))
        if queue is None:
            holder.done, holder.found = True, self._run(conn, params, False)
        else:
            queue.append((self, params, False, holder))
        return holder

    def later(self, conn: Connection, params, many: bool = False) -> None:
        """Run a statement whose result nobody reads: inside ``deferring`` on
        PostgreSQL, sent with the others at its end, else now."""
        queue = _DEFERRED.get(id(conn))
        if queue is None:
            if not many:
                self._run(conn, params, False)
            elif params:
                self._run(conn, params, True)
        elif params or not many:
            queue.append((self, params, many))


_BEGIN = Fast(text("BEGIN"))


def savepoint_statements(name: str) -> tuple[Fast, Fast, Fast]:
    """SAVEPOINT, ROLLBACK TO and RELEASE of one name, on the cursor
    (SQLAlchemy's ``begin_nested`` costs two Core executions)."""
    return (Fast(text(f"SAVEPOINT {name}")), Fast(text(f"ROLLBACK TO SAVEPOINT {name}")),
            Fast(text(f"RELEASE SAVEPOINT {name}")))


class Ahead:
    """The rows of a statement run with ``Fast.ahead``, once it has run."""

    __slots__ = ("conn", "done", "found")

    def __init__(self, conn: Connection):
        self.conn = conn
        self.done = False
        self.found: list = []

    def rows(self) -> list:
        """Its rows; sends what is deferred now if it has not gone yet."""
        if not self.done:
            flush(self.conn)
        if not self.done:
            raise RuntimeError("the statement run ahead was dropped: its transaction failed")
        return self.found


#: libpq's PQTRANS_IDLE: no transaction open on the server
_IDLE = 0


#: id(connection) -> the statements deferred on it (inside ``deferring``)
_DEFERRED: dict[int, list] = {}


@contextmanager
def deferring(conn: Connection, commit: bool = False) -> Iterator[None]:
    """On PostgreSQL, statements run with ``Fast.later`` inside this block go
    to the server with the next statement, in one pipeline (one round trip):
    the next ``Fast`` statement, the next Core statement (the engine listens
    with ``flush_before_cursor_execute``), or the block's end. An exception
    drops them (its transaction or savepoint is rolled back). The server runs
    every statement in the order it was issued, so nothing reads a stale row;
    only the results of deferred statements are never read (writes, locks).
    Elsewhere, and on SQLite (no round trips to save), ``later`` runs at once.

    ``commit``: the block is its transaction's end, and its whole when no
    statement of the transaction has run yet. The COMMIT goes in the round
    trip of the last writes, and the BEGIN in that of the first statement
    (psycopg waits for the answer to its own BEGIN even in pipeline mode, so
    the driver is put in autocommit mode for the block and the block sends
    BEGIN itself). An exception rolls the transaction back. The driver's
    commit and rollback, which SQLAlchemy calls when its transaction block
    ends, then find nothing to do."""
    key = id(conn)
    if conn.dialect.name != "postgresql" or key in _DEFERRED or not _pipelines():
        yield
        return
    queue: list = []
    raw = conn.connection.dbapi_connection if commit else None
    begins = raw is not None and not raw.autocommit and raw.pgconn.transaction_status == _IDLE
    if begins:
        raw.autocommit = True  # no BEGIN of the driver's own: ours goes with the first statement
        queue.append((_BEGIN, {}, False))
    _DEFERRED[key] = queue
    try:
        yield
        queue = _DEFERRED.get(key)
        if commit:
            _pipelined(conn, queue, commit=True)
        elif queue:
            _pipelined(conn, queue)
    except BaseException:
        if begins:
            with contextlib.suppress(Exception):  # a broken connection: SQLAlchemy invalidates it
                raw.rollback()
        raise
    finally:
        _DEFERRED.pop(key, None)
        if begins:
            with contextlib.suppress(Exception):
                raw.autocommit = False


def is_deferring(conn: Connection) -> bool:
    """Whether ``later`` defers on ``conn`` now."""
    return id(conn) in _DEFERRED


@functools.cache
def _pipelines() -> bool:
    """Whether psycopg's libpq has pipeline mode; asked on PostgreSQL only, so
    that an SQLite process never imports psycopg."""
    try:
        import psycopg
    except ImportError:
        return False
    return psycopg.Pipeline.is_supported()


def _pipelined(conn: Connection, queue: list | None, last: tuple | None = None, commit: bool = False):
    """Run what ``queue`` holds and then ``last`` (a statement, its parameters,
    many) in one psycopg pipeline: one round trip. Returns ``last``'s result.
    ``commit``: and then COMMIT, in the same round trip."""
    items = list(queue) if queue else []
    if queue:
        queue.clear()
    if last is not None:
        items.append(last)
    if not items and not commit:
        return None
    raw = conn.connection.dbapi_connection
    sent = []
    sql = parameters = cursor = None
    try:
        with raw.pipeline():
            for fast, params, many, *holder in items:
                plan, sql, parameters, cursor, dispatch = fast._prepare(conn, params, many)
                if many:
                    cursor.executemany(sql, parameters)
                else:
                    cursor.execute(sql, parameters)
                sent.append((plan, sql, parameters, cursor, dispatch, many, holder[0] if holder else None))
            if commit:  # a plain statement: the driver's commit() would add a round trip of its own
                sql, parameters, cursor = "COMMIT", None, raw.cursor()
                cursor.execute(sql)
                cursor.close()
    except BaseException as exc:
        conn._handle_dbapi_exception(exc, sql, parameters, cursor, None)
    for _, sql, parameters, cursor, dispatch, many, _ in sent:
        if dispatch is not None and dispatch.after_cursor_execute:
            dispatch.after_cursor_execute(conn, cursor, sql, parameters, None, many)
    for plan, _, _, cursor, _, many, holder in sent[:-1] if last is not None else sent:
        if holder is not None:
            holder.found, holder.done = Fast._result(conn.dialect, plan, cursor, many), True
        else:
            cursor.close()
    if last is None:
        return None
    plan, _, _, cursor, _, many, _ = sent[-1]
    return Fast._result(conn.dialect, plan, cursor, many)


def flush(conn: Connection) -> None:
    """Send what ``later`` deferred on ``conn``, in one pipeline."""
    queue = _DEFERRED.get(id(conn))
    if queue:
        _pipelined(conn, queue)


def flush_before_cursor_execute(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
    """A ``before_cursor_execute`` listener: a Core statement on a connection
    with deferred writes sends them first, so it reads what they wrote."""
    if _DEFERRED.get(id(conn)):
        flush(conn)


__all__ = ["Ahead", "Fast", "deferring", "flush", "flush_before_cursor_execute", "is_deferring", "savepoint_statements"]
