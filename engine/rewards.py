"""Rewards: the catalogue, redemption for points, issuing, use and expiry.

Redeeming debits the points and issues the reward, with an unguessable code,
in one transaction. The customer's points account is locked for it (a row lock
on PostgreSQL, the write lock on SQLite), so two channels redeeming the same
points at the same moment get one reward and one clear refusal.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from marshmallow import ValidationError, fields, validate
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from engine.config import ConfigError, StrictSchema, format_errors
from engine.db import as_utc
from engine.db.models import accounts, rewards
from engine.ledger import PerTransaction
from engine.rules_api import UNIT_POINTS, RewardKind

_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 14  # about 69 bits: not guessable, short enough to type at a till


class RedemptionRefused(Exception):
    """A redemption that can't be done; the message says why (in English, for
    the CLI and the API), ``reason`` names the case and ``values`` hold its
    numbers, for a page that says it in the customer's language."""

    def __init__(self, message: str, reason: str = "refused", **values: int):
        super().__init__(message)
        self.reason = reason
        self.values = values


class _Common(StrictSchema):
    kind = fields.String(required=True)
    cost = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1))
    partial = fields.Boolean(load_default=False)
    max_units = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1))
    expires_days = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1))
    refund_on_expiry = fields.Boolean(load_default=False)
    channels = fields.List(fields.String(), load_default=None, allow_none=True)


COMMON_KEYS = set(_Common._declared_fields)


@dataclass(frozen=True)
class Issued:
    id: int
    code: str
    reward: str
    kind: str
    status: str
    cost: int
    value: Decimal | None
    sku: str | None
    channel: str | None
    source: str
    issued_at: datetime
    expires_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "reward": self.reward,
            "kind": self.kind,
            "status": self.status,
            "cost": self.cost,
            "value": None if self.value is None else str(self.value),
            "sku": self.sku,
            "channel": self.channel,
            "source": self.source,
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def _issued(row) -> Issued:
    return Issued(
        id=row.id,
        code=row.code,
        reward=row.reward,
        kind=row.kind,
        status=row.status,
        cost=row.cost,
        value=None if row.value is None else Decimal(str(row.value)).normalize(),
        sku=row.sku,
        channel=row.channel,
        source=row.source,
        issued_at=as_utc(row.issued_at),
        expires_at=as_utc(row.expires_at),
    )


class Catalogue:
    """The validated ``[rewards.*]`` entries: name → dict."""

    def __init__(self, entries: dict[str, dict], kinds: dict[str, RewardKind]):
        self.entries = entries
        self.kinds = kinds

    @classmethod
    def build(cls, config, plugins, channels: set[str] | None = None) -> Catalogue:
        """The catalogue of plugins.toml; with ``channels`` (the configured
        connectors'), an entry's ``channels`` must name only those."""
        kinds: dict[str, RewardKind] = {}
        providers: dict[str, str] = {}
        for plugin, result in plugins.collect("regulars_register_reward_kinds"):
            for kind in result:
                if kind.name in kinds:
                    raise ConfigError(
                        f"plugins {providers[kind.name]!r} and {plugin!r} both register the reward kind {kind.name!r}"
                    )
                kinds[kind.name], providers[kind.name] = kind, plugin
        filename = str(config.path or "plugins.toml")
        entries = {}
        for name, raw in (config.table("rewards") or {}).items():
            table = f"rewards.{name}"
            if not isinstance(raw, dict):
                raise ConfigError(f"{filename} [{table}]: must be a table")
            common = {k: v for k, v in raw.items() if k in COMMON_KEYS}
            own = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
            try:
                entry = _Common().load(common)
            except ValidationError as exc:
                raise ConfigError(format_errors(filename, table, exc.messages)) from None
            kind = kinds.get(entry["kind"])
            if kind is None:
                known = ", ".join(sorted(kinds)) or "none"
                raise ConfigError(f"{filename} [{table}] kind: unknown kind {entry['kind']!r} (known: {known})")
            try:
                entry.update(kind.settings_schema().load(own))
            except ValidationError as exc:
                raise ConfigError(format_errors(filename, table, exc.messages)) from None
            if entry["partial"] and entry["cost"] is None:
                raise ConfigError(f"{filename} [{table}] partial: needs a cost (points per unit)")
            unknown = sorted(set(entry.get("channels") or ()) - channels) if channels is not None else []
            if unknown:
                raise ConfigError(f"{filename} [{table}] channels: no connector for {', '.join(map(repr, unknown))} "
                                  f"(channels: {', '.join(sorted(channels)) or 'none'}): it could be spent nowhere")
            entries[name] = entry
        return cls(entries, kinds)

    def entry(self, name: str) -> dict:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise RedemptionRefused(f"there is no reward {name!r} in the catalogue (rewards: {known})",
                                    "unknown_reward") from None


_LOCK_POINTS = (
    select(accounts.c.id, accounts.c.balance)
    .where(accounts.c.customer_id == bindparam("customer_id"), accounts.c.unit == UNIT_POINTS)
)


class Rewards:
    def __init__(self, catalogue: Catalogue, ledger, channels: set[str]):
        self.catalogue = catalogue
        self.ledger = ledger
        self.channels = channels
        #: rewards issued by the current thread's open transaction, (customer id,
        #: Issued), announced to observers once it commits (engine.app)
        self.issued = PerTransaction()
        #: engine.outbox.Outbox: makes issued rewards coupons in the shops
        self.outbox = None

    def redeem(
        self,
        conn: Connection,
        customer_id: int,
        name: str,
        at: datetime,
        channel: str | None = None,
        units: int = 1,
        key: str | None = None,
    ) -> Issued:
        """Debit the points and issue the reward, in the caller's transaction.
        ``units`` multiples of a ``partial`` reward; ``key`` makes a retried
        request return the reward the first one issued."""
        if key is not None:
            done = conn.execute(select(rewards).where(rewards.c.key == f"redeem:{key}")).one_or_none()
            if done is not None:
                if done.customer_id != customer_id or done.reward != name:
                    raise RedemptionRefused(f"the key {key!r} was already used for another redemption", "key_reused")
                return _issued(done)
        entry = self.catalogue.entry(name)
        if entry["cost"] is None:
            raise RedemptionRefused(f"{name!r} can't be bought with points; it is earned (a full stamp card)",
                                    "earned_only")
        if units < 1 or (units > 1 and not entry["partial"]):
            raise RedemptionRefused(f"{name!r} is redeemed one at a time", "one_at_a_time")
        if entry["max_units"] and units > entry["max_units"]:
            raise RedemptionRefused(f"{name!r} allows at most {entry['max_units']} at once", "max_units",
                                    max=entry["max_units"])
        self._check_channel(name, entry, channel)
        cost = entry["cost"] * units
        query = _LOCK_POINTS.with_for_update() if conn.dialect.name == "postgresql" else _LOCK_POINTS
        account = conn.execute(query, {"customer_id": customer_id}).one_or_none()
        balance = account.balance if account else 0
        if balance < 0:
            raise RedemptionRefused(
                f"the balance is {balance} points after a refund; redemption waits until it is positive again",
                "negative_balance", balance=balance,
            )
        if balance < cost:
            raise RedemptionRefused(f"{name!r} costs {cost} points and the balance is {balance}", "insufficient",
                                    cost=cost, balance=balance)
        pending = self.ledger.pending(conn, customer_id, at) if self.ledger.pending_days else 0
        if balance - pending < cost:
            raise RedemptionRefused(
                f"{name!r} costs {cost} points and only {balance - pending} of the {balance} are spendable; "
                f"{pending} are pending until their orders' return window closes",
                "pending", cost=cost, spendable=balance - pending, pending=pending,
            )
        code = new_reward_code()
        self.ledger.post(conn, customer_id, UNIT_POINTS, -cost, "redeem", f"reward:{code}", None, f"redeem:{code}", at,
                         detail={"channel": channel} if channel else None)
        value = entry.get("value")
        if value is not None and entry["kind"] != "percentage":
            value = value * units
        return self._insert(conn, customer_id, name, entry, code, cost, value, channel, "redeem", f"redeem:{key or code}", at)

    def issue(self, conn: Connection, customer_id: int, name: str, source: str, key: str, at: datetime) -> Issued | None:
        """Issue a reward without charging points (a full stamp card); the same
        ``key`` issues it once. None if that key was issued already."""
        if conn.execute(select(rewards.c.id).where(rewards.c.key == key)).first():
            return None
        entry = self.catalogue.entry(name)
        return self._insert(conn, customer_id, name, entry, new_reward_code(), 0, entry.get("value"), None, source, key, at)

    def _insert(self, conn, customer_id, name, entry, code, cost, value, channel, source, key, at) -> Issued:
        expires = at + timedelta(days=entry["expires_days"]) if entry["expires_days"] else None
        row_id = conn.execute(
            rewards.insert().returning(rewards.c.id),
            {
                "customer_id": customer_id,
                "reward": name,
                "kind": entry["kind"],
                "code": code,
                "status": "issued",
                "cost": cost,
                "value": value,
                "sku": entry.get("sku"),
                "channel": channel,
                "source": source,
                "key": key,
                "issued_at": at,
                "expires_at": expires,
            },
        ).scalar_one()
        issued = _issued(conn.execute(select(rewards).where(rewards.c.id == row_id)).one())
        self.issued.items().append((customer_id, issued))
        if self.outbox is not None:
            self.outbox.reward_issued(conn, customer_id, code, entry["kind"], channel, entry["channels"])
        return issued

    def _check_channel(self, name: str, entry: dict, channel: str | None) -> None:
        if channel is None:
            return
        if channel not in self.channels:
            raise RedemptionRefused(f"there is no channel {channel!r} (channels: {', '.join(sorted(self.channels))})",
                                    "unknown_channel")
        if entry["channels"] and channel not in entry["channels"]:
            raise RedemptionRefused(f"{name!r} can be spent in {', '.join(entry['channels'])}, not in {channel}",
                                    "wrong_channel")

    def mark_used(self, conn: Connection, customer_id: int | None, codes: list[str], used_in: str,
                  at: datetime) -> int:
        """Rewards whose codes were spent (an order's discount codes, a
        ``coupon.used`` event) are used; with ``customer_id``, only that
        customer's. A reward whose catalogue entry lists ``channels`` is used
        only by a channel listed: elsewhere its code stays issued. Returns how
        many rewards it marked."""
        wanted = [c.strip().upper() for c in codes if c and c.strip()]
        if not wanted:
            return 0
        condition = rewards.c.code.in_(wanted) & (rewards.c.status == "issued")
        if customer_id is not None:
            condition &= rewards.c.customer_id == customer_id
        channel = spent_in(used_in)
        elsewhere = self.not_spendable_in(channel)
        if elsewhere:
            condition &= rewards.c.reward.not_in(elsewhere)
        if self.outbox is None:
            return conn.execute(update(rewards).where(condition).values(status="used", used_at=at, used_in=used_in)).rowcount
        spent = [r.code for r in conn.execute(
            update(rewards).where(condition).values(status="used", used_at=at, used_in=used_in)
            .returning(rewards.c.code))]
        # The coupons made for it in the other shops go (the one spent is used up).
        self.outbox.reward_closed(conn, spent, spent_in=channel)
        return len(spent)

    def used_by(self, conn: Connection, customer_id: int | None, codes: list[str], used_in: str) -> list[dict]:
        """What ``mark_used`` made of the codes an order carried: for each code,
        once, ``{"code", "used", "reason"}``, ``used`` if this order (``used_in``)
        used it, else the ``reason`` (one of ``NOT_USED``). Read from the rewards
        as they are, so an order resent, whose codes mark_used leaves alone, is
        answered exactly as it was the first time: a used reward keeps its order."""
        sent: dict[str, str] = {}
        for code in codes:
            sent.setdefault((code or "").strip().upper(), code)
        wanted = [code for code in sent if code]
        rows = {row.code: row for row in conn.execute(
            select(rewards.c.code, rewards.c.reward, rewards.c.customer_id, rewards.c.status, rewards.c.used_in)
            .where(rewards.c.code.in_(wanted)))} if wanted else {}
        elsewhere = set(self.not_spendable_in(spent_in(used_in)))
        answer = []
        for code, as_sent in sent.items():
            reason = _not_used(rows.get(code), customer_id, used_in, elsewhere)
            answer.append({"code": as_sent, "used": reason is None, "reason": reason})
        return answer

    def spendable_in(self, reward: str) -> list[str]:
        """The channels where a reward of the catalogue entry ``reward`` can be
        spent: its ``channels``, or every configured one (also for an entry
        no longer in the catalogue, as ``mark_used`` takes it)."""
        entry = self.catalogue.entries.get(reward) or {}
        return list(entry.get("channels") or sorted(self.channels))

    def as_json(self, issued: Issued) -> dict[str, Any]:
        """An issued reward as the customer's JSON and the API give it: with
        where it can be spent (``spendable_in``)."""
        return {**issued.as_json(), "spendable_in": self.spendable_in(issued.reward)}

    def not_spendable_in(self, channel: str) -> list[str]:
        """The catalogue rewards whose ``channels`` leave ``channel`` out."""
        return sorted(name for name, entry in self.catalogue.entries.items()
                      if entry.get("channels") and channel not in entry["channels"])

    def unused(self, conn: Connection, customer_id: int) -> list[Issued]:
        rows = conn.execute(
            select(rewards)
            .where(rewards.c.customer_id == customer_id, rewards.c.status == "issued")
            .order_by(rewards.c.id)
        ).all()
        return [_issued(r) for r in rows]

    def expire(self, conn: Connection, now: datetime) -> list[Issued]:
        """Expire unused rewards past their date; give their points back when
        the catalogue says so. Safe to run twice."""
        due = conn.execute(
            select(rewards).where(rewards.c.status == "issued", rewards.c.expires_at <= now).order_by(rewards.c.id)
        ).all()
        expired = []
        for row in due:
            entry = self.catalogue.entries.get(row.reward, {})
            conn.execute(update(rewards).where(rewards.c.id == row.id).values(status="expired"))
            if row.cost and entry.get("refund_on_expiry"):
                self.ledger.post(
                    conn, row.customer_id, UNIT_POINTS, row.cost, "reward-expired", f"reward:{row.code}", None,
                    f"reward-expired:{row.code}", now,
                )
            expired.append(_issued(row))
        if self.outbox is not None:
            self.outbox.reward_closed(conn, [row.code for row in expired])
        return expired


#: Why an order's code was not used (``Rewards.used_by``): no reward has it;
#: another customer's; used (by another order); expired, or voided (a full
#: stamp card's reward taken back with its stamps); kept for other channels
#: (its ``channels``); or still issued, spendable, yet this order didn't spend it
#: (not applied yet: kept after a plugin failed on it, to be replayed).
NOT_USED = ("unknown", "not_this_customers", "already_used", "expired", "voided", "not_spendable_here",
            "still_issued")


def _not_used(row, customer_id: int | None, used_in: str, elsewhere: set[str]) -> str | None:
    """mark_used's conditions, one at a time: None when ``used_in`` used it."""
    if row is None:
        return "unknown"
    if row.status == "used" and row.used_in == used_in:
        return None
    if customer_id is not None and row.customer_id != customer_id:
        return "not_this_customers"
    if row.status != "issued":
        return "already_used" if row.status == "used" else row.status  # expired, voided
    if row.reward in elsewhere:
        return "not_spendable_here"
    return "still_issued"


def spent_in(used_in: str) -> str:
    """The channel of a ``used_in``: ``order:<channel>:<id>``, or a bare channel."""
    return used_in.split(":")[1] if used_in.startswith("order:") else used_in


def new_reward_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(CODE_LENGTH))
