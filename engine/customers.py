"""What we tell about a customer: the JSON of `regulars customer show --json`
and, later, of the customer API."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from engine.birthdays import birthday_wanted
from engine.db import as_utc, utcnow
from engine.db.models import customer_links, customers, orders
from engine.ledger import STAMPS_PREFIX
from engine.rules_api import UNIT_POINTS

#: how far ahead ``points_expiring`` looks when ``[rules.expiry] remind_days`` is not set
EXPIRING_DAYS = 30


def expiring_soon(engine, conn, customer_id: int, now: datetime) -> list[dict]:
    """The customer's points that expire within ``remind_days`` (or
    ``EXPIRING_DAYS``), summed per day in the shop's time zone: ``[{"on":
    "2027-01-15", "points": 50}, ...]``, soonest first; points past their date
    that the expiry job has not taken yet count on their day. Empty when points
    don't expire."""
    return _expiring_by(engine, conn, customer_id,
                        now + timedelta(days=engine.policy.remind_days or EXPIRING_DAYS))


def next_expiry(engine, conn, customer_id: int) -> dict | None:
    """The first day some of the customer's points expire, however far off:
    ``{"on": "2027-01-15", "points": 50}``, or None. It changes only with the
    customer's lots (a posting, the expiry job, a lot dated again), which is
    when the shops are told."""
    found = _expiring_by(engine, conn, customer_id, None)
    return found[0] if found else None


def _expiring_by(engine, conn, customer_id: int, until: datetime | None) -> list[dict]:
    if not engine.ledger.expiry_months:
        return []
    per_day: dict[str, int] = {}
    for expires_at, points in engine.ledger.expiring_by(conn, customer_id, until):
        day = engine.ledger.metrics.day(expires_at).isoformat()  # the shop's day, as the dashboard counts it
        if until is None and per_day and day not in per_day:
            break  # the first day is all that was asked
        per_day[day] = per_day.get(day, 0) + points
    return [{"on": day, "points": points} for day, points in per_day.items()]


def count_customers(conn) -> int:
    """How many customers there are: those not merged into another."""
    return conn.execute(select(func.count()).select_from(customers)
                        .where(customers.c.merged_into.is_(None))).scalar_one()


def customer_summary(engine, key: str | int) -> dict | None:
    """The customer a key leads to (email, phone, card code, referral code, id,
    ``id:N``, or CHANNEL:ID), with balances; None when nobody matches. An
    ``int`` is the customer's id and nothing else (digits may be a phone)."""
    with engine.db.connect() as conn:
        customer_id = engine.identity.find(conn, f"id:{key}" if isinstance(key, int) else key)
        if customer_id is None:
            return None
        row = conn.execute(select(customers).where(customers.c.id == customer_id)).one()
        balances = engine.ledger.balances(conn, customer_id)
        links = conn.execute(
            select(customer_links.c.channel, customer_links.c.external_id)
            .where(customer_links.c.customer_id == customer_id)
            .order_by(customer_links.c.channel, customer_links.c.external_id)
        ).all()
        unused = engine.rewards.unused(conn, customer_id)
        tier_history = engine.tiers.history(conn, customer_id) if engine.tiers.program else []
        referrals = engine.referrals.listing(conn, customer_id) if engine.referrals.program else []
        memberships = engine.subscriptions.listing(conn, customer_id)
        now = utcnow()
        pending = engine.ledger.pending(conn, customer_id, now) if engine.ledger.pending_days else 0
        expiring = expiring_soon(engine, conn, customer_id, now)
        n_orders = conn.execute(
            select(func.count()).select_from(orders).where(orders.c.customer_id == customer_id)
        ).scalar_one()
    channels: dict[str, list[str]] = {}
    for channel, external_id in links:
        channels.setdefault(channel, []).append(external_id)
    return {
        "id": row.id,
        "email": row.email,
        "phone": row.phone,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "card_code": row.card_code,
        "referral_code": row.referral_code,
        "referrals": referrals,
        "points": balances.get(UNIT_POINTS, 0),
        #: of which not yet spendable (inside an order's return window)
        "points_pending": pending,
        #: of which expire within [rules.expiry] remind_days (default 30): per
        #: day in the shop's time zone, soonest first
        "points_expiring": expiring,
        # every configured card, an empty one as 0, and any other stamps held
        "stamps": dict(sorted({
            **dict.fromkeys(engine.cards.cards, 0),
            **{u[len(STAMPS_PREFIX):]: n for u, n in balances.items() if u.startswith(STAMPS_PREFIX)},
        }.items())),
        #: units of plugins' own (``Award("beans", ...)``): neither points nor stamps
        "other_units": {u: n for u, n in sorted(balances.items())
                        if u != UNIT_POINTS and not u.startswith(STAMPS_PREFIX)},
        "tier": row.tier,
        "tier_history": tier_history,
        #: issued and unused; ``channel``: where it was issued, ``spendable_in``: where it can be spent
        "rewards": [engine.rewards.as_json(r) for r in unused],
        #: plan, status (active, paused, cancelled), since, period_end, status_since, channel, id
        "memberships": memberships,
        "channels": channels,
        "orders": n_orders,
        "birthday": as_utc(row.birthday).date().isoformat() if row.birthday else None,
        #: a birthday gift or bonus is on and theirs is not known (the till may ask)
        "birthday_wanted": row.birthday is None and birthday_wanted(engine),
    }
