"""Balances adjusted by hand: goodwill points, a correction, stamps owed.

A merchant gives or takes points (or stamps on a card) with a note saying why.
An adjustment is one ledger entry (reason ``adjust``) like any other, so the
balance stays the sum of the ledger and the shops are told of the new balance
(the outbox). Its ``detail`` keeps the note and who made it (``cli:<user>``,
``admin:<username>``).

- Points given open a lot dated now: they expire ``[rules.expiry] months``
  from now, and are spendable at once (no return window). Points taken close
  lots as a redemption does, the soonest-expiring first.
- Stamps given may fill the card: it issues its reward and starts again, as
  stamps from a purchase would.
- An adjustment never takes a balance below zero, and is refused, saying why,
  when it would: a balance below zero is a refund's debt, not a correction.
- Adjustments count in the dashboard's points issued (a taking lowers it), in
  no channel's figure, and not towards a tier: a tier counts what orders
  earned (``engine.tiers``).
- ``key`` makes a retry change nothing: the same key returns the adjustment it
  made (``duplicate``), and is refused for a different one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from engine.cards import PREFIX as STAMPS
from engine.db import as_utc
from engine.db.models import accounts, ledger_entries
from engine.fastsql import Fast
from engine.jsonio import unstorable
from engine.rules_api import UNIT_POINTS

REASON = "adjust"
#: the most one adjustment may give or take: more is a typing slip
LIMIT = 1_000_000
#: the longest note kept (the ledger's detail is no place for a letter)
NOTE_LIMIT = 500
#: the longest request key (it is kept in the entry's key)
KEY_LIMIT = 200

_ACCOUNT = select(accounts.c.id, accounts.c.balance).where(
    accounts.c.customer_id == bindparam("customer_id"), accounts.c.unit == bindparam("unit"))
_BALANCE = Fast(_ACCOUNT)
#: (SQLite renders no FOR UPDATE: its transaction holds the write lock)
_LOCKED_BALANCE = Fast(_ACCOUNT.with_for_update())
_DONE = Fast(
    select(ledger_entries.c.amount, ledger_entries.c.occurred_at, ledger_entries.c.detail,
           accounts.c.customer_id, accounts.c.unit, accounts.c.balance)
    .join(accounts, accounts.c.id == ledger_entries.c.account_id)
    .where(ledger_entries.c.key == bindparam("key"))
)


class AdjustmentRefused(Exception):
    """An adjustment that can't be made; ``reason`` is a stable code
    (``unknown_customer``, ``amount``, ``note``, ``unknown_card``,
    ``below_zero``, ``key``, ``key_reused``) and ``values`` the figures it names."""

    def __init__(self, message: str, reason: str, **values):
        super().__init__(message)
        self.reason = reason
        self.values = values


@dataclass(frozen=True)
class Adjustment:
    customer_id: int
    #: ``points`` or ``stamps:<card>``
    unit: str
    amount: int
    #: the account's balance once it was made (for a duplicate: now)
    balance: int
    note: str
    by: str
    key: str
    at: datetime
    #: True when ``key`` had already made it: nothing changed this time
    duplicate: bool = False

    def as_json(self) -> dict:
        return {"customer_id": self.customer_id, "unit": self.unit, "amount": self.amount, "balance": self.balance,
                "note": self.note, "by": self.by, "key": self.key, "at": self.at.isoformat(),
                "duplicate": self.duplicate}


def clean_note(note: str | None) -> str:
    """The note as kept: trimmed, on one line; refused when empty or too long."""
    text = " ".join((note or "").split())
    if unstorable(text):
        raise AdjustmentRefused("the note holds a NUL character or a lone surrogate, which can't be stored", "note")
    if not text:
        raise AdjustmentRefused("say why in a note: it is kept with the entry", "note")
    if len(text) > NOTE_LIMIT:
        raise AdjustmentRefused(f"the note has {len(text)} characters; at most {NOTE_LIMIT} are kept", "note",
                                limit=NOTE_LIMIT)
    return text


def unit_of(card: str | None, cards: dict) -> str:
    """The account an adjustment moves: points, or the stamps of a configured card."""
    if card is None:
        return UNIT_POINTS
    if card not in cards:
        known = ", ".join(sorted(cards)) or "none configured"
        raise AdjustmentRefused(f"there is no stamp card {card!r} (cards: {known})", "unknown_card", card=card)
    return STAMPS + card


def locked_balance(conn: Connection, customer_id: int, unit: str) -> int:
    """The balance of a customer's account, locked for the rest of the
    transaction (a row lock on PostgreSQL; SQLite's write lock is the
    transaction's): nothing posts to it until the adjustment is made."""
    account = _LOCKED_BALANCE.first(conn, {"customer_id": customer_id, "unit": unit})
    return account.balance if account else 0


def adjust(conn: Connection, ledger, cards, customer_id: int, unit: str, amount: int, note: str, by: str,
           at: datetime, key: str | None = None) -> Adjustment:
    """Give (``amount`` > 0) or take points or stamps from a customer, in the
    caller's transaction. Raises ``AdjustmentRefused`` saying why."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0 or abs(amount) > LIMIT:
        raise AdjustmentRefused(f"the amount must be a whole number from -{LIMIT:,} to {LIMIT:,}, not 0 "
                                f"(got {amount!r})", "amount", limit=LIMIT)
    note = clean_note(note)
    if key is not None and (not 0 < len(key) <= KEY_LIMIT or unstorable(key)):
        raise AdjustmentRefused(f"a key has 1 to {KEY_LIMIT} characters (no NUL, no lone surrogate)", "key",
                                limit=KEY_LIMIT)
    entry_key = f"{REASON}:{key or uuid.uuid4().hex}"
    done = _DONE.first(conn, {"key": entry_key})
    if done is not None:
        detail = done.detail or {}
        if (done.customer_id, done.unit, done.amount) != (customer_id, unit, amount):
            raise AdjustmentRefused(f"the key {key!r} was already used for another adjustment", "key_reused")
        return Adjustment(customer_id, unit, amount, done.balance, detail.get("note", ""), detail.get("by", ""),
                          entry_key, as_utc(done.occurred_at), duplicate=True)
    balance = locked_balance(conn, customer_id, unit)
    if balance + amount < 0:
        what = "points" if unit == UNIT_POINTS else f"stamps on the {unit[len(STAMPS):]} card"
        raise AdjustmentRefused(f"the balance is {balance} {what}: taking {-amount} would leave it below zero",
                                "below_zero", balance=balance)
    # Its own source: taking points closes the soonest-expiring lots, not an
    # earlier adjustment's first (a refund takes its own order's first).
    ledger.post(conn, customer_id, unit, amount, REASON, entry_key, None, entry_key, at,
                detail={"note": note, "by": by})
    if unit != UNIT_POINTS:
        cards.settle(conn, customer_id, unit, at)  # a full card issues its reward
    after = _BALANCE.first(conn, {"customer_id": customer_id, "unit": unit})
    return Adjustment(customer_id, unit, amount, after.balance, note, by, entry_key, at)
