"""The ledger: append-only entries per account, cached balances in the same
transaction, lots with expiry dates.

Nothing here updates or deletes an entry. A refund, a cancellation or a merge is
a new entry; ``key`` is unique, so a posting can never land twice.
"""

from __future__ import annotations

import calendar
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, bindparam, case, func, literal, null, select, text, update
from sqlalchemy.engine import Connection

from engine.db import as_utc, utcnow
from engine.db.models import accounts, ledger_entries, lots
from engine.fastsql import Fast
from engine.rules_api import UNIT_POINTS, PointsChange

#: the reasons of postings that move points between two records of one person
#: (a merge): not changes to their points
MOVED = ("merge",)
#: a stamp card's own entries: a full card emptied (its reward issued), a
#: card reopened (its unused reward voided); not stamps earned or taken
CARD_BOOKKEEPING = ("card-complete", "card-reopened")
#: the prefix of a stamp card's unit (engine.cards.PREFIX)
STAMPS_PREFIX = "stamps:"


@dataclass(frozen=True)
class Drift:
    account_id: int
    customer_id: int
    unit: str
    cached: int
    entries: int


def add_months(moment: datetime, months: int) -> datetime:
    """The same day ``months`` later, clamped to the month's last day."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


_INSERT_IGNORE_CACHE: dict[tuple, Any] = {}


def insert_ignore(conn: Connection, table, values: dict, conflict: list[str]) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, on SQLite and PostgreSQL
    alike (same syntax); the new row's id, or None when the row existed.

    The statement is built once per table and column set (the dialects'
    ``on_conflict_do_nothing`` constructs are never cached by SQLAlchemy, and
    compiling them per call cost more than the database work), and run on the
    DBAPI cursor (``engine.fastsql``)."""
    return insert_ignore_statement(table, tuple(values), conflict).scalar(conn, values)


def insert_ignore_statement(table, names: tuple[str, ...], conflict: list[str]) -> Fast:
    """The statement of ``insert_ignore``, built once per table and columns."""
    cache_key = (table.name, names, tuple(conflict))
    statement = _INSERT_IGNORE_CACHE.get(cache_key)
    if statement is None:
        sql = (
            f"INSERT INTO {table.name} ({', '.join(names)}) "
            f"VALUES ({', '.join(':' + n for n in names)}) "
            f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING RETURNING id"
        )
        statement = Fast(text(sql).bindparams(*(bindparam(n, type_=table.c[n].type) for n in names)))
        _INSERT_IGNORE_CACHE[cache_key] = statement
    return statement


def typed_insert(table, names, returning=()):
    """``INSERT INTO table (names) VALUES (:names)`` with each column's type
    (no defaults: every value is given), optionally RETURNING columns."""
    statement = table.insert().values({n: bindparam(n, type_=table.c[n].type) for n in names})
    if returning:
        statement = statement.returning(*(table.c[n] for n in returning))
    return statement


def typed_update(table, names, key="id", param="b_id"):
    """``UPDATE table SET names WHERE key = :param`` with each column's type."""
    return (
        table.update()
        .where(table.c[key] == bindparam(param, type_=table.c[key].type))
        .values({n: bindparam(n, type_=table.c[n].type) for n in names})
    )


# Built once: SQLAlchemy compiles them once per dialect; run on the DBAPI cursor.
_ADD_TO_BALANCE = Fast(text(
    "INSERT INTO accounts (customer_id, unit, balance) VALUES (:customer_id, :unit, :amount) "
    "ON CONFLICT (customer_id, unit) DO UPDATE SET balance = accounts.balance + excluded.balance "
    "RETURNING id, balance"
))
_ENTRY_COLUMNS = ("account_id", "amount", "reason", "source", "rule", "key", "occurred_at", "created_at", "detail")
_INSERT_ENTRY = Fast(typed_insert(ledger_entries, _ENTRY_COLUMNS, returning=("id",)))
_INSERT_LOT = Fast(typed_insert(
    lots, ("account_id", "entry_id", "amount", "remaining", "earned_at", "expires_at", "available_at")
))
# PostgreSQL: the account's upsert, the entry and its lot in one statement
# (one round trip instead of three). Data-modifying CTEs run exactly once; the
# lot's CTE sees the balance after this posting, as ``post`` does on SQLite.
_POST_PG = Fast(
    text(
        "WITH account AS ("
        " INSERT INTO accounts (customer_id, unit, balance) VALUES (:customer_id, :unit, :amount)"
        " ON CONFLICT (customer_id, unit) DO UPDATE SET balance = accounts.balance + excluded.balance"
        " RETURNING id, balance"
        "), entry AS ("
        " INSERT INTO ledger_entries (account_id, amount, reason, source, rule, key, occurred_at, created_at, detail)"
        " SELECT id, :amount, :reason, :source, :rule, :key, :occurred_at, :created_at, :detail FROM account"
        " RETURNING id"
        "), lot AS ("
        " INSERT INTO lots (account_id, entry_id, amount, remaining, earned_at, expires_at, available_at)"
        " SELECT account.id, entry.id, LEAST(:amount, account.balance), LEAST(:amount, account.balance),"
        " :earned_at, :expires_at, :available_at FROM account, entry"
        " WHERE :open_lot AND LEAST(:amount, account.balance) > 0"
        " RETURNING id"
        ") SELECT account.id, account.balance, entry.id FROM account, entry"
    ).bindparams(
        bindparam("amount", type_=ledger_entries.c.amount.type),
        bindparam("occurred_at", type_=ledger_entries.c.occurred_at.type),
        bindparam("created_at", type_=ledger_entries.c.created_at.type),
        bindparam("detail", type_=ledger_entries.c.detail.type),
        bindparam("earned_at", type_=lots.c.earned_at.type),
        bindparam("expires_at", type_=lots.c.expires_at.type),
        bindparam("available_at", type_=lots.c.available_at.type),
        bindparam("open_lot", type_=Boolean()),
    )
)
_SELECT_ACCOUNT = select(accounts.c.id).where(
    accounts.c.customer_id == bindparam("customer_id"), accounts.c.unit == bindparam("unit")
)


class PerTransaction:
    """What the current thread's open transaction did (points posted, rewards
    issued), kept to be announced to observers once it commits: ``items()``
    to add to it (or cut what a rolled-back savepoint did), ``take()`` when
    it committed, or to forget what a rolled-back one did."""

    def __init__(self):
        self._local = threading.local()

    def items(self) -> list:
        found = getattr(self._local, "items", None)
        if found is None:
            found = self._local.items = []
        return found

    def take(self) -> list:
        found, self._local.items = self.items(), []
        return found


class Ledger:
    def __init__(self, expiry_months: int | None = None, pending_days: int = 0):
        #: months after which earned points expire (None: never); from the points policy
        self.expiry_months = expiry_months
        #: days an order's points stay pending (its return window)
        self.pending_days = pending_days
        #: engine.outbox.Outbox: told of every balance change, to sync the shops
        self.outbox = None
        #: engine.metrics.Recorder: keeps the dashboard's counters (also used by
        #: the pipeline and identity through this attribute)
        self.metrics = None
        #: points posted by the current thread's open transaction, (customer id,
        #: PointsChange), announced once it commits (engine.app, regulars_points_changed)
        self.posted = PerTransaction()

    def account(self, conn: Connection, customer_id: int, unit: str) -> int:
        """The id of a customer's account in ``unit``, created at zero if new."""
        params = {"customer_id": customer_id, "unit": unit}
        found = conn.execute(_SELECT_ACCOUNT, params).scalar_one_or_none()
        if found is not None:
            return found
        created = insert_ignore(conn, accounts, {**params, "balance": 0}, ["customer_id", "unit"])
        return created if created is not None else conn.execute(_SELECT_ACCOUNT, params).scalar_one()

    def post(
        self,
        conn: Connection,
        customer_id: int,
        unit: str,
        amount: int,
        reason: str,
        source: str,
        rule: str | None,
        key: str,
        occurred_at: datetime,
        detail: dict | None = None,
        lots: bool = True,
        pending: bool = False,
        earned_at: datetime | None = None,
    ) -> None:
        """Append one entry to the customer's account in ``unit`` (created if
        new) and move its cached balance by ``amount``, in the caller's
        transaction.

        Points keep lots: positive points open one (``pending`` ones only become
        spendable after the return window), negative points close lots: the same
        source's first (a refund takes back its own order's points), then the
        spendable ones soonest-expiring first. A lot is dated ``earned_at``
        (its expiry and its return window count from it; default
        ``occurred_at``): an order's points from its payment, whenever the
        delivery that posts them comes."""
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"ledger amounts are integers, got {amount!r}")
        keeps_lots = lots and unit == UNIT_POINTS
        dated = earned_at or occurred_at
        if conn.dialect.name == "postgresql":
            # A debt (a negative balance) takes new points first: the lot holds
            # what the new balance covers (LEAST(amount, balance) > 0).
            params = {
                "customer_id": customer_id, "unit": unit, "amount": amount, "reason": reason, "source": source,
                "rule": rule, "key": key, "occurred_at": occurred_at, "created_at": utcnow(), "detail": detail,
                "open_lot": keeps_lots and amount > 0, "earned_at": dated, **self._lot_dates(dated, pending),
            }
            if keeps_lots and amount < 0:
                account_id, balance, entry_id = _POST_PG.first(conn, params)  # the lots to close are the account's
            else:
                # Nothing here reads the result: inside fastsql.deferring it goes
                # with the next statement (one round trip fewer).
                _POST_PG.later(conn, params)
                account_id = balance = entry_id = None
            lot_done = True
        else:
            # One statement finds or creates the account and moves its balance; the
            # row lock it takes orders concurrent postings to the same account.
            account_id, balance = _ADD_TO_BALANCE.first(
                conn, {"customer_id": customer_id, "unit": unit, "amount": amount}
            )
            entry_id = _INSERT_ENTRY.scalar(
                conn,
                {
                    "account_id": account_id,
                    "amount": amount,
                    "reason": reason,
                    "source": source,
                    "rule": rule,
                    "key": key,
                    "occurred_at": occurred_at,
                    "created_at": utcnow(),
                    "detail": detail,
                },
            )
            lot_done = False
        if self.outbox is not None:
            self.outbox.customer_changed(conn, customer_id)
            if unit == UNIT_POINTS and reason not in MOVED:
                self.outbox.points_posted(conn, customer_id, key)
            elif unit.startswith(STAMPS_PREFIX) and reason not in MOVED and reason not in CARD_BOOKKEEPING:
                self.outbox.stamps_posted(conn, customer_id, key)
        if self.metrics is not None:
            self.metrics.posted(conn, customer_id, unit, amount, reason, source, occurred_at, detail)
        if unit == UNIT_POINTS and reason not in MOVED:
            self.posted.items().append((customer_id, PointsChange(amount, reason, source, occurred_at)))
        if keeps_lots:
            if amount > 0 and not lot_done:
                # A debt (a negative balance) takes new points first.
                covered = max(0, min(amount, balance))
                if covered:
                    self._open_lot(conn, account_id, entry_id, covered, dated, pending)
            elif amount < 0:
                self.consume_lots(conn, account_id, -amount, occurred_at, source)

    def _lot_dates(self, earned_at: datetime, pending: bool) -> dict:
        """When a lot earned at ``earned_at`` expires, and when it becomes spendable."""
        return {
            "expires_at": add_months(earned_at, self.expiry_months) if self.expiry_months else None,
            "available_at": earned_at + timedelta(days=self.pending_days) if pending and self.pending_days else None,
        }

    def redate_lots(self, conn: Connection, customer_id: int, source: str, earned_at: datetime) -> None:
        """Date again the points lots ``source``'s entries opened for the
        customer (an order whose earlier payment arrived late, a referral
        that now counts from an earlier first order): their expiry and return
        window count from ``earned_at``, as if it had been known when they
        were posted."""
        entries = select(ledger_entries.c.id).join(accounts, accounts.c.id == ledger_entries.c.account_id).where(
            accounts.c.customer_id == customer_id, accounts.c.unit == UNIT_POINTS, ledger_entries.c.source == source)
        dates = self._lot_dates(earned_at, pending=True)
        values = {"earned_at": earned_at, "expires_at": dates["expires_at"]}
        if dates["available_at"] is not None:  # (a lot that was never pending stays so)
            values["available_at"] = case((lots.c.available_at.is_(None), null()),
                                          else_=literal(dates["available_at"], lots.c.available_at.type))
        moved = conn.execute(update(lots).where(lots.c.entry_id.in_(entries), lots.c.earned_at != earned_at)
                             .values(values)).rowcount
        if moved and self.outbox is not None:
            self.outbox.customer_changed(conn, customer_id)  # (the shops show when points expire next)

    def _open_lot(self, conn, account_id, entry_id, amount, earned_at, pending) -> None:
        _INSERT_LOT.execute(
            conn,
            {
                "account_id": account_id,
                "entry_id": entry_id,
                "amount": amount,
                "remaining": amount,
                "earned_at": earned_at,
                **self._lot_dates(earned_at, pending),
            },
        )

    def consume_lots(self, conn: Connection, account_id: int, amount: int, at: datetime, source: str | None = None) -> int:
        """Take ``amount`` from the account's open lots: ``source``'s own first,
        then spendable ones soonest-expiring first (never-expiring last), pending
        ones last. Returns what could not be taken."""
        rows = conn.execute(
            select(lots.c.id, lots.c.remaining, lots.c.expires_at, lots.c.available_at, ledger_entries.c.source)
            .join(ledger_entries, ledger_entries.c.id == lots.c.entry_id)
            .where(lots.c.account_id == account_id, lots.c.remaining > 0)
        ).all()

        def order(row):
            pending = row.available_at is not None and as_utc(row.available_at) > at
            expires = as_utc(row.expires_at)
            return (row.source != source, pending, expires is None, expires or at, row.id)

        for row in sorted(rows, key=order):
            if amount <= 0:
                break
            take = min(row.remaining, amount)
            conn.execute(update(lots).where(lots.c.id == row.id).values(remaining=row.remaining - take))
            amount -= take
        return amount

    def pending(self, conn: Connection, customer_id: int, at: datetime) -> int:
        """Points earned but not yet spendable (inside an order's return window)."""
        return conn.execute(
            select(func.coalesce(func.sum(lots.c.remaining), 0))
            .join(accounts, accounts.c.id == lots.c.account_id)
            .where(accounts.c.customer_id == customer_id, accounts.c.unit == UNIT_POINTS,
                   lots.c.remaining > 0, lots.c.available_at > at)
        ).scalar_one()

    def expire(self, conn: Connection, now: datetime) -> list[tuple[int, int]]:
        """Expire what is left of every lot past its date: one ``expiry`` entry
        per lot, for its remaining points only (spent points are not in a lot
        any more). Safe to run twice. Returns (customer id, points) pairs."""
        due = conn.execute(
            select(lots.c.id, lots.c.remaining, lots.c.expires_at, accounts.c.customer_id)
            .join(accounts, accounts.c.id == lots.c.account_id)
            .where(lots.c.remaining > 0, lots.c.expires_at <= now)
            .order_by(lots.c.id)
        ).all()
        done = []
        for lot in due:
            conn.execute(update(lots).where(lots.c.id == lot.id).values(remaining=0))
            self.post(conn, lot.customer_id, UNIT_POINTS, -lot.remaining, "expiry", f"lot:{lot.id}", None,
                      f"expiry:{lot.id}", as_utc(lot.expires_at), lots=False)
            done.append((lot.customer_id, lot.remaining))
        return done

    def expiring(self, conn: Connection, now: datetime, within_days: int) -> dict[int, tuple[int, datetime]]:
        """Lots expiring within ``within_days`` that nobody was told about yet,
        marked as told: customer id → (points, soonest expiry)."""
        rows = conn.execute(
            select(lots.c.id, lots.c.remaining, lots.c.expires_at, accounts.c.customer_id)
            .join(accounts, accounts.c.id == lots.c.account_id)
            .where(lots.c.remaining > 0, lots.c.reminded_at.is_(None), lots.c.expires_at > now,
                   lots.c.expires_at <= now + timedelta(days=within_days))
        ).all()
        found: dict[int, tuple[int, datetime]] = {}
        for row in rows:
            points, soonest = found.get(row.customer_id, (0, as_utc(row.expires_at)))
            found[row.customer_id] = (points + row.remaining, min(soonest, as_utc(row.expires_at)))
            conn.execute(update(lots).where(lots.c.id == row.id).values(reminded_at=now))
        return found

    def expiring_by(self, conn: Connection, customer_id: int, until: datetime | None) -> list[tuple[datetime, int]]:
        """The customer's points still in lots that expire by ``until`` (None:
        ever; one past its date that the expiry job has not taken yet
        included): (expiry, points) per lot, soonest first."""
        query = (
            select(lots.c.expires_at, lots.c.remaining)
            .join(accounts, accounts.c.id == lots.c.account_id)
            .where(accounts.c.customer_id == customer_id, accounts.c.unit == UNIT_POINTS, lots.c.remaining > 0,
                   lots.c.expires_at.is_not(None))
            .order_by(lots.c.expires_at, lots.c.id)
        )
        rows = conn.execute(query if until is None else query.where(lots.c.expires_at <= until)).all()
        return [(as_utc(row.expires_at), row.remaining) for row in rows]

    def balances(self, conn: Connection, customer_id: int) -> dict[str, int]:
        rows = conn.execute(
            select(accounts.c.unit, accounts.c.balance).where(accounts.c.customer_id == customer_id)
        ).all()
        return {unit: balance for unit, balance in rows}

    def audit(self, conn: Connection) -> list[Drift]:
        """Every account whose cached balance differs from the sum of its entries."""
        sums = (
            select(ledger_entries.c.account_id, func.sum(ledger_entries.c.amount).label("total"))
            .group_by(ledger_entries.c.account_id)
            .subquery()
        )
        total = func.coalesce(sums.c.total, 0)
        rows = conn.execute(
            select(accounts.c.id, accounts.c.customer_id, accounts.c.unit, accounts.c.balance, total)
            .select_from(accounts.outerjoin(sums, sums.c.account_id == accounts.c.id))
            .where(accounts.c.balance != total)
        ).all()
        return [Drift(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]
