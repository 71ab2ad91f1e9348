"""Points balances brought from another loyalty programme (Smile.io,
LoyaltyLion, a spreadsheet): ``regulars customer import-points FILE.csv``.

The file is the one Smile.io moves balances with (another app's export, once
its balance column is named ``points``): a header row naming an ``email``
column (or ``phone``, or ``card_code``) and a ``points`` column;
``first_name`` and ``last_name`` are read when present. Commas or semicolons
separate the columns (a spreadsheet in a Czech or German locale writes
semicolons), and a UTF-8 byte-order mark (Excel's) is skipped. A cell that
``regulars customer export-all`` wrote with a leading ``'`` (a name that
starts like a formula) is read without it.

- **Add** (the default): each row's points are given (or, negative, taken) as
  an adjustment (``engine.adjustments``) with the note.
- **Set** (``--set``): each customer's balance becomes the row's value; the
  difference is the adjustment, and a balance already there is left alone.
- A customer nobody knows yet is created from the row's email or phone (a
  shop's orders find them later by it); a card code must be one regulars
  issued.
- Each row is applied once: its adjustment's key is the file's SHA-256 and the
  row's line, so the same file imported again changes nothing (its rows are
  counted ``already imported``), whatever happened to the balances since.
- A row that can't be applied (no such card, a points value that isn't a
  whole number, a balance that would go below zero) is reported with its
  line and reason; the others are applied.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError, OperationalError

from engine.adjustments import REASON, AdjustmentRefused, adjust, locked_balance
from engine.db import utcnow
from engine.db.models import ledger_entries
from engine.exports import FORMULA
from engine.fastsql import Fast, deferring, savepoint_statements
from engine.identity import normalize_email
from engine.jsonio import unstorable
from engine.rules_api import UNIT_POINTS

#: the columns a row may name its customer by, tried in this order
KEYS = ("email", "phone", "card_code")
#: a cell an export wrote with a leading ' so that no spreadsheet runs it (engine.exports)
_GUARDED = tuple("'" + start for start in FORMULA)
#: the statuses a row ends in
STATUSES = ("adjusted", "unchanged", "already imported", "refused")


class ImportFileError(ValueError):
    """A file that can't be read as a points import at all (no header, no
    points column, not UTF-8): nothing was imported."""


@dataclass
class ImportReport:
    #: rows per status (``STATUSES``)
    rows: Counter = field(default_factory=Counter)
    #: points given and taken
    given: int = 0
    taken: int = 0
    #: customers created from a row
    created: int = 0
    #: (line, reason) of each refused row
    refused: list[tuple[int, str]] = field(default_factory=list)


def read_rows(data: bytes) -> list[tuple[int, dict[str, str]]]:
    """The file's rows as (line number, {column: value}), columns lower-cased."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"the file is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8") from None
    header = text.split("\n", 1)[0]
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    names = [name.strip().lower() for name in reader.fieldnames or []]
    if "points" not in names or not any(key in names for key in KEYS):
        raise ImportFileError(f"the first row must name a points column and an email, phone or card_code column "
                              f"(it names: {', '.join(names) or 'nothing'})")
    reader.fieldnames = names
    rows = []
    for row in reader:
        values = {name: _unguarded((value or "").strip()) for name, value in row.items() if name is not None}
        if any(values.values()):
            rows.append((reader.line_num, values))
    return rows


def _unguarded(text: str) -> str:
    """A cell as it was before an export guarded it against spreadsheets
    (``engine.exports.guarded``: ``'=...`` is ``=...``)."""
    return text[1:] if text.startswith(_GUARDED) else text


#: rows applied in one transaction (each in a savepoint of its own)
CHUNK = 500
_SAVE, _ROLLBACK_TO, _RELEASE = savepoint_statements("regulars_import_row")
_IMPORTED = Fast(select(ledger_entries.c.id).where(ledger_entries.c.key == bindparam("key")))


@dataclass
class _Done:
    """What one row did: its status, why it was refused, whether it created
    its customer, and the points it moved."""

    status: str
    reason: str | None = None
    created: bool = False
    amount: int = 0

    @property
    def writes(self) -> bool:
        """Whether it changed anything to keep (a refusal, or a row already
        imported, keeps nothing; an unchanged balance may keep its customer)."""
        return self.status in ("adjusted", "unchanged")


def import_points(engine, data: bytes, note: str, by: str, replace: bool = False, dry_run: bool = False,
                  at: datetime | None = None, progress=None) -> ImportReport:
    """Import a points CSV (see the module docstring). ``replace``: set the
    balances instead of adding; ``dry_run``: report what would happen and
    change nothing. ``progress(n)`` is told of each ``n`` rows done.

    Rows are applied ``CHUNK`` at a time in one transaction, each in a
    savepoint that a refused row rolls back. A chunk that loses a race (a
    shop's order creating the same customer meanwhile) is rolled back and
    applied again a row at a time, each row in a transaction of its own."""
    engine.ensure_schema()
    rows = read_rows(data)
    digest = hashlib.sha256(data).hexdigest()[:32]
    at = at or utcnow()
    report = ImportReport()
    with engine.announcing(), engine.db.connect() as conn:
        for start in range(0, len(rows), CHUNK):
            chunk = [(line, values, f"import:{digest}:{line}") for line, values in rows[start : start + CHUNK]]
            done = _chunk(engine, conn, chunk, note, by, replace, dry_run, at)
            if done is None:
                done = [_alone(engine, conn, values, key, note, by, replace, dry_run, at) for _, values, key in chunk]
            for (line, _, _), row in zip(chunk, done, strict=True):
                report.rows[row.status] += 1
                if row.status == "refused":
                    report.refused.append((line, row.reason))
                elif row.writes:
                    report.created += row.created
                    report.given += max(row.amount, 0)
                    report.taken += max(-row.amount, 0)
            if progress:
                progress(len(chunk))
    return report


def _chunk(engine, conn, chunk, note, by, replace, dry_run, at) -> list[_Done] | None:
    """Apply rows in one transaction, each in a savepoint; None when the
    transaction failed on the database (rolled back, nothing kept)."""
    posted = engine.ledger.posted.items()
    before = len(posted)
    tx = conn.begin()
    try:
        done = []
        # (on PostgreSQL a savepoint's statements share the round trips of the rows' own)
        with deferring(conn):
            for _, values, key in chunk:
                mark = len(posted)
                _SAVE.later(conn, {})
                row = _apply(engine, conn, values, key, note, by, replace, at)
                if not row.writes:
                    _ROLLBACK_TO.execute(conn, {})
                    del posted[mark:]  # what the rolled-back row posted never was
                _RELEASE.later(conn, {})
                done.append(row)
        (tx.rollback if dry_run else tx.commit)()
    except (IntegrityError, OperationalError):
        tx.rollback()
        del posted[before:]
        return None
    if dry_run:
        del posted[before:]  # nothing was: nobody hears of it
    return done


def _alone(engine, conn, values, key, note, by, replace, dry_run, at) -> _Done:
    """Apply one row in a transaction of its own, tried again after a lost race."""
    posted = engine.ledger.posted.items()
    for attempt in range(5):
        before = len(posted)
        tx = conn.begin()
        try:
            row = _apply(engine, conn, values, key, note, by, replace, at)
            (tx.commit if row.writes and not dry_run else tx.rollback)()
        except (IntegrityError, OperationalError):
            tx.rollback()
            del posted[before:]
            if attempt == 4:
                raise
            continue
        if dry_run or not row.writes:
            del posted[before:]
        return row
    raise AssertionError("unreachable")


def _apply(engine, conn, values, key, note, by, replace, at) -> _Done:
    """One row, in the caller's transaction; what it did (the caller keeps
    or rolls back its writes)."""
    raw = values.get("points", "")
    try:
        points = int(raw)
    except ValueError:
        return _Done("refused", f"points {raw!r} is not a whole number (write 52620, not 52,620)")
    # (on PostgreSQL, in a chunk, sent with the customer's look-up)
    imported = _IMPORTED.ahead(conn, {"key": f"{REASON}:{key}"})
    found = _customer(engine, conn, values, at)
    if isinstance(found, str):
        return _Done("refused", found)
    customer_id, created = found
    if imported.rows():
        return _Done("already imported")
    # (locked: an order applied meanwhile can't slip between this read and the adjustment)
    amount = points - locked_balance(conn, customer_id, UNIT_POINTS) if replace else points
    if amount == 0:
        return _Done("unchanged", created=created)
    try:
        adjust(conn, engine.ledger, engine.cards, customer_id, UNIT_POINTS, amount, note, by, at, key)
    except AdjustmentRefused as exc:
        return _Done("refused", str(exc))
    return _Done("adjusted", created=created, amount=amount)


def _customer(engine, conn, values, at) -> tuple[int, bool] | str:
    """(customer id, created) for a row, or why there is none."""
    for name in KEYS:
        key = values.get(name)
        if not key:
            continue
        if name == "email" and normalize_email(key) is None:
            return f"{key!r} is not an email address"
        found = engine.identity.find_by(conn, name, key)
        if found is not None:
            return found, False
        if name == "card_code":
            return f"no customer has the card code {key!r}"
        hints = {"email": values.get("email") or None, "phone": values.get("phone") or None,
                 "first_name": _name(values.get("first_name")), "last_name": _name(values.get("last_name"))}
        created = engine.identity.resolve(conn, "import", hints, at)
        if created is None:
            return f"{key!r} is neither an email address nor a phone number"
        return created, True
    return "the row names no customer (email, phone or card_code)"


def _name(value: str | None) -> str | None:
    """A name as a customer row keeps it (200 characters); None if unusable."""
    if not value or unstorable(value):
        return None
    return value[:200]
