"""Tiers: a customer's level by points earned (or spend) in a rolling window.

Upgrades happen at once, after the order that reaches the threshold is paid
(so that order earns at the tier it was paid in, and the next ones at the new
tier). Downgrades happen only at the review job (``regulars jobs run
tier-review``): one level at a time or straight to the level earned, after an
optional grace period. Spending points never lowers the metric: it counts the
points orders earned (or their eligible spend) as they stood at each moment,
so a refund lowers it from the refund's time on, never before.

The upgrades are a function of the customer's orders, not of the order their
deliveries came in (PRODUCT.md, invariant 2): whenever an order changes, the
pipeline (``Pipeline._retier``) walks the customer's paid orders from its paid
time on, in paid-time order, and decides the upgrades again, each at the paid
time of the order that reached it; an order paid after an upgrade found that
way is asked again for the tier's multiplier. Upgrades found before that time
stand, and so do the review's downgrades (the job decided them at its time).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from engine.db import as_utc
from engine.db.models import customers, orders, tier_history
from engine.rules_api import UNIT_POINTS, TierProgram

# Built once: SQLAlchemy reuses their compiled form. A merge moves the
# merged-away customer's orders to the survivor, so both count the orders of
# everyone merged in.
_SPEND = select(func.coalesce(func.sum(orders.c.eligible), 0)).where(
    orders.c.customer_id == bindparam("customer_id"),
    orders.c.paid_at > bindparam("since"),
    orders.c.paid_at <= bindparam("until"),
)
_AWARDED = select(orders.c.awarded).where(
    orders.c.customer_id == bindparam("customer_id"),
    orders.c.paid_at > bindparam("since"),
    orders.c.paid_at <= bindparam("until"),
)


def points_of(awarded: dict | None) -> int:
    """The points an order's awards (``{"plugin|unit": amount}``) come to."""
    return sum(amount for key, amount in (awarded or {}).items() if key.split("|", 1)[1] == UNIT_POINTS)


_CHANGES = (
    select(tier_history.c.at, tier_history.c.to_tier)
    .where(tier_history.c.customer_id == bindparam("customer_id"))
    .order_by(tier_history.c.at, tier_history.c.id)
)
_REWOUND = tier_history.delete().where(
    tier_history.c.customer_id == bindparam("customer_id"),
    tier_history.c.reason == "upgrade",
    tier_history.c.at >= bindparam("since"),
)


class Tiers:
    def __init__(self, program: TierProgram | None):
        self.program = program
        self.ranks = {level.name: i for i, level in enumerate(program.levels)} if program else {}
        #: engine.outbox.Outbox: told of every tier change, to sync the shops
        self.outbox = None

    def metric(self, conn: Connection, customer_id: int, at: datetime) -> Decimal:
        """Points earned (net of refunds) by the orders paid in the window up to
        ``at``, or their eligible spend, as the orders stand now (the review's
        and the card page's figure, at the present)."""
        params = {"customer_id": customer_id, "since": at - timedelta(days=self.program.window_days), "until": at}
        if self.program.metric == "spend":
            return Decimal(str(conn.execute(_SPEND, params).scalar_one()))
        return Decimal(sum(points_of(row.awarded) for row in conn.execute(_AWARDED, params)))

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

    def rank(self, tier: str | None) -> int:
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
            self.outbox.tier_changed(conn, customer_id, old, new, at)

    def rewind(self, conn: Connection, customer_id: int, since: datetime) -> list[tuple[datetime, str | None]]:
        """Forget the customer's upgrades from ``since`` on (to be decided
        again); the changes that stand, ``(when, tier from then on)``, oldest first."""
        conn.execute(_REWOUND, {"customer_id": customer_id, "since": since})
        return list(self.changes(conn, customer_id))

    @staticmethod
    def held(changes: list[tuple[datetime, str | None]], moment: datetime) -> str | None:
        """The tier after the changes up to ``moment``, that one included."""
        tier = None
        for when, to in changes:
            if when > moment:
                break
            tier = to
        return tier

    def upgrade(self, conn: Connection, customer_id: int, old: str | None, new: str, metric: Decimal,
                at: datetime) -> None:
        """Record an upgrade in the history (``settled`` then says which tier holds now)."""
        conn.execute(tier_history.insert().values(
            customer_id=customer_id, from_tier=old, to_tier=new, reason="upgrade", metric=metric, at=at))

    def settled(self, conn: Connection, customer_id: int, changes: list[tuple[datetime, str | None]]) -> None:
        """The customer's tier now, from the history's last change (the shops told when it changed)."""
        tier, since = (changes[-1][1], changes[-1][0]) if changes else (None, None)
        row = conn.execute(select(customers.c.tier, customers.c.tier_since).where(customers.c.id == customer_id)).one()
        if row.tier == tier and as_utc(row.tier_since) == since:
            return
        conn.execute(update(customers).where(customers.c.id == customer_id).values(tier=tier, tier_since=since))
        if self.outbox is not None and row.tier != tier:
            self.outbox.customer_changed(conn, customer_id)
            self.outbox.tier_changed(conn, customer_id, row.tier, tier, since)

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
            if self.rank(earned) >= self.rank(row.tier):
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
                rank = self.rank(row.tier) - 1
                new = self.program.levels[rank].name if rank >= 0 else None
            # Still below the new tier? Keep counting the grace from now.
            still_below = now if self.rank(earned) < self.rank(new) else None
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
