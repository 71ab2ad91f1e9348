"""Tiers: a customer's level by points earned (or spend) in a rolling window.

Upgrades happen at once, after the order that reaches the threshold is applied
(so that order earns at the tier it was paid in, and the next ones at the new
tier). Downgrades happen only at the review job (``regulars jobs run
tier-review``): one level at a time or straight to the level earned, after an
optional grace period. Spending points never lowers the metric: it counts points
*earned* by orders, net of their refunds.

The multiplier is the tier's that held when the order was paid (from the tier
history), so an order delivered late still earns at the tier of its paid time,
as far as the engine knew the history when the order was first awarded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.engine import Connection

from engine.db import as_utc
from engine.db.models import accounts, customers, ledger_entries, orders, tier_history
from engine.rules_api import UNIT_POINTS, TierProgram

ORDER_REASONS = ("order", "refund", "cancel", "unpaid", "reassign")


# Built once: SQLAlchemy reuses their compiled form (this runs after every order).
# A merge moves the merged-away customer's orders to the survivor: spend needs
# nothing more.
_SPEND = select(func.coalesce(func.sum(orders.c.eligible), 0)).where(
    orders.c.customer_id == bindparam("customer_id"),
    orders.c.paid_at > bindparam("since"),
    orders.c.paid_at <= bindparam("until"),
)
# The customer and everyone merged into them, however deep: a merge moves the
# balance with ``merge`` entries (not counted) and leaves the order entries on
# the merged-away customer's accounts. (UNION, not UNION ALL: each id once.)
_PEOPLE = select(customers.c.id).where(customers.c.id == bindparam("customer_id")).cte("people", recursive=True)
_PEOPLE = _PEOPLE.union(select(customers.c.id).where(customers.c.merged_into == _PEOPLE.c.id))
_POINTS_EARNED = (
    select(func.coalesce(func.sum(ledger_entries.c.amount), 0))
    .join(accounts, accounts.c.id == ledger_entries.c.account_id)
    .where(
        and_(
            accounts.c.customer_id.in_(select(_PEOPLE.c.id)),
            accounts.c.unit == UNIT_POINTS,
            ledger_entries.c.reason.in_(ORDER_REASONS),
            ledger_entries.c.occurred_at > bindparam("since"),
            ledger_entries.c.occurred_at <= bindparam("until"),
        )
    )
)


_CHANGES = (
    select(tier_history.c.at, tier_history.c.to_tier)
    .where(tier_history.c.customer_id == bindparam("customer_id"))
    .order_by(tier_history.c.at, tier_history.c.id)
)


class Tiers:
    def __init__(self, program: TierProgram | None):
        self.program = program
        self.ranks = {level.name: i for i, level in enumerate(program.levels)} if program else {}
        #: engine.outbox.Outbox: told of every tier change, to sync the shops
        self.outbox = None

    def metric(self, conn: Connection, customer_id: int, at: datetime) -> Decimal:
        """Points earned by orders (or their eligible spend) in the window up to ``at``."""
        since = at - timedelta(days=self.program.window_days)
        query = _SPEND if self.program.metric == "spend" else _POINTS_EARNED
        total = conn.execute(query, {"customer_id": customer_id, "since": since, "until": at}).scalar_one()
        return Decimal(str(total))

    def earned(self, metric: Decimal) -> str | None:
        """The highest level whose threshold the metric reaches."""
        reached = None
        for level in self.program.levels:
            if metric >= level.threshold:
                reached = level.name
        return reached

    def multiplier(self, tier: str | None) -> Decimal | None:
        if not self.program or tier not in self.ranks:
            return None
        return self.program.levels[self.ranks[tier]].multiplier

    def _rank(self, tier: str | None) -> int:
        return self.ranks.get(tier, -1)

    def _change(self, conn, customer_id, old, new, reason, metric, at, below_since=None) -> None:
        conn.execute(
            update(customers)
            .where(customers.c.id == customer_id)
            .values(tier=new, tier_since=at, tier_below_since=below_since)
        )
        conn.execute(
            tier_history.insert().values(
                customer_id=customer_id, from_tier=old, to_tier=new, reason=reason, metric=metric, at=at
            )
        )
        if self.outbox is not None:
            self.outbox.customer_changed(conn, customer_id)

    def settle(self, conn: Connection, customer_id: int, at: datetime, current: str | None = None) -> None:
        """Upgrade at once when the metric reached a higher level (``current``:
        the tier the caller already knows holds)."""
        if not self.program:
            return
        if current is None:
            current = conn.execute(select(customers.c.tier).where(customers.c.id == customer_id)).scalar_one()
        if current == self.program.levels[-1].name:
            return  # the top: nothing to upgrade to
        metric = self.metric(conn, customer_id, at)
        earned = self.earned(metric)
        if self._rank(earned) > self._rank(current):
            self._change(conn, customer_id, current, earned, "upgrade", metric, at)

    def review(self, conn: Connection, now: datetime) -> tuple[int, int]:
        """Downgrade those below their tier (after the grace period), one level
        or to the level earned. Returns (reviewed, downgraded)."""
        if not self.program:
            return 0, 0
        rows = conn.execute(
            select(customers.c.id, customers.c.tier, customers.c.tier_below_since).where(
                customers.c.tier.is_not(None), customers.c.merged_into.is_(None)
            )
        ).all()
        downgraded = 0
        for row in rows:
            metric = self.metric(conn, row.id, now)
            earned = self.earned(metric)
            if self._rank(earned) >= self._rank(row.tier):
                if row.tier_below_since is not None:
                    conn.execute(update(customers).where(customers.c.id == row.id).values(tier_below_since=None))
                continue
            below_since = as_utc(row.tier_below_since) or now
            if now - below_since < timedelta(days=self.program.grace_days):
                if row.tier_below_since is None:
                    conn.execute(update(customers).where(customers.c.id == row.id).values(tier_below_since=now))
                continue
            if self.program.downgrade == "to_earned":
                new = earned
            else:
                rank = self._rank(row.tier) - 1
                new = self.program.levels[rank].name if rank >= 0 else None
            # Still below the new tier? Keep counting the grace from now.
            still_below = now if self._rank(earned) < self._rank(new) else None
            self._change(conn, row.id, row.tier, new, "downgrade", metric, now, still_below)
            downgraded += 1
        return len(rows), downgraded

    def changes(self, conn: Connection, customer_id: int) -> tuple:
        """(when, tier from then on) for each change, oldest first."""
        rows = conn.execute(_CHANGES, {"customer_id": customer_id}).all()
        return tuple((as_utc(r.at), r.to_tier) for r in rows)

    def history(self, conn: Connection, customer_id: int) -> list[dict]:
        rows = conn.execute(
            select(tier_history).where(tier_history.c.customer_id == customer_id).order_by(tier_history.c.id)
        ).all()
        return [
            {"from": r.from_tier, "to": r.to_tier, "reason": r.reason, "metric": format(Decimal(str(r.metric)).normalize(), "f"),
             "at": as_utc(r.at).isoformat()}
            for r in rows
        ]
