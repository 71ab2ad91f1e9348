"""Stamp cards: a full card issues its reward and starts again.

The open card is the balance of the ``stamps:<card>`` account. After stamps are
posted, ``settle`` completes full cards: it issues the card's reward and posts
``-required`` (``card-complete``), so extra stamps carry over to the next card.
When a refund takes stamps back below zero, the last reward the card issued is
voided if it is still unused and its stamps come back (``card-reopened``); a
reward already used stays used, and the card owes the stamps (a negative open
card) until new ones pay them back.

Whatever the order of sales and refunds, the customer ends with
``floor(stamps / required)`` rewards and ``stamps mod required`` on the open
card, as long as no reward was used in between.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from engine.config import ConfigError
from engine.db.models import accounts, rewards
from engine.ledger import CARD_BOOKKEEPING, STAMPS_PREFIX
from engine.rules_api import StampCard

PREFIX = STAMPS_PREFIX
#: the reasons of a card's own entries (engine.ledger.CARD_BOOKKEEPING)
COMPLETE, REOPENED = CARD_BOOKKEEPING
_BALANCE = select(accounts.c.balance).where(
    accounts.c.customer_id == bindparam("customer_id"), accounts.c.unit == bindparam("unit")
)


class Cards:
    def __init__(self, plugins, catalogue, rewards_service, ledger):
        self.cards: dict[str, StampCard] = {}
        providers: dict[str, str] = {}
        for plugin, result in plugins.collect("regulars_register_stamp_cards"):
            for card in result:
                if card.name in self.cards:
                    raise ConfigError(
                        f"plugins {providers[card.name]!r} and {plugin!r} both register the stamp card {card.name!r}"
                    )
                if card.reward not in catalogue.entries:
                    known = ", ".join(sorted(catalogue.entries)) or "none: add [rewards.<name>] tables"
                    raise ConfigError(
                        f"stamp card {card.name!r} ({plugin}) issues reward {card.reward!r}, which is not in "
                        f"the catalogue (rewards: {known})"
                    )
                self.cards[card.name], providers[card.name] = card, plugin
        self.rewards = rewards_service
        self.ledger = ledger

    def settle(self, conn: Connection, customer_id: int, unit: str, at: datetime) -> None:
        """Complete full cards and reopen emptied ones for one stamps unit."""
        card = self.cards.get(unit[len(PREFIX):]) if unit.startswith(PREFIX) else None
        if card is None:
            return
        source = f"card:{card.name}"
        balance = conn.execute(_BALANCE, {"customer_id": customer_id, "unit": unit}).scalar_one_or_none() or 0
        while balance >= card.required:
            number = conn.execute(
                select(func.count()).select_from(rewards).where(
                    rewards.c.customer_id == customer_id, rewards.c.source == source
                )
            ).scalar_one() + 1
            key = f"{source}:{customer_id}:{number}"
            issued = self.rewards.issue(conn, customer_id, card.reward, source, key, at)
            self.ledger.post(conn, customer_id, unit, -card.required, COMPLETE, source, None, key, at,
                             detail={"reward": issued.code if issued else None})
            balance -= card.required
        while balance < 0:
            last = conn.execute(
                select(rewards.c.id, rewards.c.code).where(
                    rewards.c.customer_id == customer_id, rewards.c.source == source, rewards.c.status == "issued"
                ).order_by(rewards.c.id.desc()).limit(1)
            ).one_or_none()
            if last is None:
                break  # its rewards were used: the card owes the stamps
            conn.execute(update(rewards).where(rewards.c.id == last.id).values(status="voided", used_at=at))
            self.ledger.post(conn, customer_id, unit, card.required, REOPENED, source, None,
                             f"{source}:{customer_id}:void:{last.id}", at, detail={"reward": last.code})
            balance += card.required
