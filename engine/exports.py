"""Every customer as a CSV file: ``regulars customer export-all`` and the
dashboard's "Download CSV" (``/admin/customers.csv``).

For the merchant's own use: a mailing, a spreadsheet, a move to another
programme. The columns ``email``, ``phone``, ``card_code``, ``first_name``,
``last_name`` and ``points`` are the ones ``regulars customer import-points``
reads (``engine.imports``), so a file exported here is imported elsewhere as
it is: ``import-points --set`` makes each balance the exported one.

- One row per customer, oldest first; a customer merged into another is not a
  row of their own (their points are on the other's). An erased customer is a
  row without the personal data (what the erasure left).
- ``points`` is the points balance (it may be below zero after a refund);
  ``stamps_<card>`` the open card's stamps of each configured card.
- Read in chunks of ``CHUNK`` customers, each in a connection of its own:
  a million customers never sit in memory, nor hold a connection for the
  whole file.
- A text a customer chose (a name, an email) that a spreadsheet would take
  for a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return) is written with a leading ``'``, as OWASP advises against CSV
  injection; ``import-points`` reads such a cell without it. Phones are
  written as regulars keeps them (E.164, ``+420...``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from sqlalchemy import and_, select

from engine.cards import PREFIX as STAMPS
from engine.db import as_utc
from engine.db.models import accounts, customers
from engine.rules_api import UNIT_POINTS

#: customers read per statement
CHUNK = 2000
#: the columns before the stamp cards'
COLUMNS = ("id", "email", "phone", "first_name", "last_name", "card_code", "points", "tier", "accepts_marketing",
           "birthday", "created_at")
#: what a spreadsheet takes for the start of a formula (engine.imports reads
#: a cell so guarded back)
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def columns(cards) -> tuple[str, ...]:
    """The header: ``COLUMNS`` and one ``stamps_<card>`` per configured card."""
    return (*COLUMNS, *(f"stamps_{card}" for card in sorted(cards)))


def guarded(text: str | None) -> str:
    """A customer's text as a cell no spreadsheet runs as a formula."""
    if not text:
        return ""
    return "'" + text if text.startswith(FORMULA) else text


def rows(engine, chunk: int = CHUNK) -> Iterator[tuple]:
    """Each customer's row (``columns``), oldest first."""
    cards = sorted(engine.cards.cards)
    units = [UNIT_POINTS, *(STAMPS + card for card in cards)]
    after = 0
    while True:
        with engine.db.connect() as conn:
            found = conn.execute(
                select(customers.c.id, customers.c.email, customers.c.phone, customers.c.first_name,
                       customers.c.last_name, customers.c.card_code, customers.c.tier,
                       customers.c.accepts_marketing, customers.c.birthday, customers.c.created_at)
                .where(customers.c.id > after, customers.c.merged_into.is_(None))
                .order_by(customers.c.id).limit(chunk)
            ).all()
            if not found:
                return
            balances: dict[tuple[int, str], int] = {}
            for account in conn.execute(
                    select(accounts.c.customer_id, accounts.c.unit, accounts.c.balance)
                    .where(and_(accounts.c.customer_id >= found[0].id, accounts.c.customer_id <= found[-1].id,
                                accounts.c.unit.in_(units)))):
                balances[(account.customer_id, account.unit)] = account.balance
        for row in found:
            marketing = "" if row.accepts_marketing is None else ("true" if row.accepts_marketing else "false")
            yield (row.id, guarded(row.email), row.phone or "", guarded(row.first_name), guarded(row.last_name),
                   row.card_code, balances.get((row.id, UNIT_POINTS), 0), row.tier or "", marketing,
                   as_utc(row.birthday).date().isoformat() if row.birthday else "",
                   as_utc(row.created_at).isoformat(timespec="seconds"),
                   *(balances.get((row.id, STAMPS + card), 0) for card in cards))
        after = found[-1].id


def csv_lines(engine, bom: bool = False, chunk: int = CHUNK, tally: list[int] | None = None) -> Iterator[str]:
    """The CSV file, a piece at a time: the header, then one piece per chunk
    of customers. ``bom``: begin with a UTF-8 byte-order mark, which Excel
    needs to read the names' accents (``import-points`` skips it).
    ``tally``: a list whose first item counts the customers written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns(engine.cards.cards))
    yield ("\ufeff" if bom else "") + buffer.getvalue()
    pending = 0
    for row in rows(engine, chunk):
        if pending == 0:
            buffer.seek(0)
            buffer.truncate()
        writer.writerow(row)
        pending += 1
        if tally is not None:
            tally[0] += 1
        if pending == chunk:
            yield buffer.getvalue()
            pending = 0
    if pending:
        yield buffer.getvalue()
