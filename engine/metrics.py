"""The merchant's figures: retention, repeat purchases, lifetime value, points
and their liability, per period and per channel, from the orders and the
ledger (the dashboard at ``/admin``, ``regulars metrics show``).

Definitions
-----------

A **period** is a calendar month or an ISO week (Monday to Sunday), in the
shop's time zone (``[engine] timezone``); *p⁻* is the period before *p*, and
*end(p)* the first moment after it.

A **paid order** is an order of a known customer that was paid (``orders.paid_at``,
the first time the shop reported it paid) and still has eligible spend
(``orders.eligible``: merchandise after discounts and refunds, without
shipping, tax, tips and gift cards; zero once cancelled or fully refunded). It
counts in the period of ``paid_at``. A cancelled or fully refunded order is no
purchase, and a refund lowers its spend, whenever they arrive: the figures of
past periods are restated, not patched in the period of the refund.

A customer is one person across channels: when two customers are merged, they
count as one from the start. **Per channel**, only that channel's paid orders
(and visits) count: a customer *bought in Shopify in March* when they have a
paid Shopify order in March.

- **buyers(p)**: customers with at least one paid order in *p*.
- **retention rate(p)** = customers with a paid order in *p⁻* and in *p* ÷
  buyers(*p⁻*). Undefined when nobody bought in *p⁻*.
- **churn rate(p)** = 1 − retention rate(*p*): the share of *p⁻*'s buyers who
  did not buy again in *p*.
- **repeat purchase rate(p)** = customers with at least 2 paid orders before
  end(*p*) ÷ customers with at least 1 (all time, up to the period's end).
- **purchase frequency(p)** = paid orders in *p* ÷ buyers(*p*).
- **average customer lifetime value(p)** = eligible spend of every paid order
  before end(*p*) ÷ customers with a paid order before end(*p*) (what a
  customer has spent so far, on average; money in the shop's currency).
- **active members(p)** = customers with a paid order or a visit (a counter
  visit, whether it earned a stamp or not) in the 90 days ending on the
  period's last day (today, for the current period). A trailing window rather
  than "in the period": it means the same for a month and for a week, and a
  customer who buys every six weeks stays active.
- **points issued(p)** = the points entries of *p* (by ``occurred_at``) that
  are not spending, expiry or a merge: points for orders net of their refunds
  and cancellations (a refund lowers the period it happens in), visits,
  referrals, memberships and adjustments.
- **points spent(p)** = points redeemed for rewards in *p*, less points given
  back when an unused reward expired (``refund_on_expiry``).
- **points expired(p)** = points taken by the expiry job in *p* (at each
  lot's expiry date).
- **reward redemption rate(p)** = points spent(*p*) ÷ points issued(*p*): the
  "burn / earn" ratio, in points rather than in rewards counted, because
  rewards differ in cost (and a stamp card's reward costs no points); points
  are what the liability is made of. Undefined when no points were issued.
- **points liability(p)** = outstanding points at end(*p*) × the money value of
  a point. Outstanding points are the sum of every points entry before
  end(*p*), i.e. issued − spent − expired to date (merges move points and sum
  to zero); for the current period it equals the sum of every balance
  (``regulars audit`` proves those are the ledger's sums). A negative balance
  after a refund lowers it. The value of a point is ``[engine] point_value``
  when set, else the best ``fixed_amount`` reward of the catalogue (value ÷
  cost, as ``regulars simulate`` values it); undefined without either.

Points **per channel**: an entry belongs to the channel of its source (an
order's, a visit's or a membership's channel), a redemption to the channel it
was redeemed for (none when redeemed for any channel), an expiry to the
channel of the entry that earned the lot. Entries of no channel (referrals,
merges, adjustments, redemptions for any channel) count in the overall figure
only. The liability is not split by channel: a customer has one balance,
spendable everywhere.

How it stays fast and exact
---------------------------

Nothing is computed from the ledger or the orders when the dashboard asks.
The pipeline keeps counters in the transaction that changes the data:

- ``Ledger.post`` appends each points entry's amount to ``metric_deltas`` as
  ``issued``, ``spent`` or ``expired`` for its day and channel (and ``*``);
- each customer has a **footprint** in ``metric_footprints``: their paid
  orders per day and channel (count and eligible spend) and their visit days,
  as counted. When a paid order changes (paid, refunded, cancelled, moved to
  another customer) the order's old and new state are taken out of and put
  into it; a visit adds its day (``visit_days`` keeps every visit day); when
  two customers merge both are read again from ``orders`` and ``visit_days``.
  The difference of what the new and the old footprint contribute is
  appended to ``metric_deltas`` and the new footprint is stored; its row is
  locked meanwhile, so two transactions for one customer take turns. For an
  order or a visit the difference is found around the days that changed
  (``contribution_delta``: the day's orders, its week's and month's buyers,
  the first two orders, the stretch of activity it touches), not by counting
  both footprints whole (``contributions``), which a regular's thousand days
  made cost milliseconds per order; a merge, or a footprint that drifted from
  the orders, is counted whole.

A footprint contributes, per channel and for ``*``: ``orders`` and
``revenue`` per day, ``first`` and ``second`` (the days of the customer's
first and second paid orders), ``buyers`` and ``retained`` per month and per
week, and ``active`` (+1 on the first day of each stretch of activity, −1 on
the day it lapses, 90 days after the stretch's last activity).

Deltas are only ever inserted, so no two transactions wait on a counter row;
``compact`` folds them into ``metric_counts`` (one row per measure, channel
and period) in one statement that deletes exactly what it adds. A series reads
a few hundred rows of those two tables, whatever the size of the ledger.
``rebuild`` recomputes everything from ``orders``, ``visit_days`` and the
ledger (after a bulk load, an upgrade from a database that had data, or a
change of time zone).
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import groupby
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Date,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import JSON

from engine.db import as_utc
from engine.db.models import (
    accounts,
    customers,
    ledger_entries,
    lots,
    metric_counts,
    metric_deltas,
    metric_footprints,
    metric_state,
    orders,
    rewards,
    visit_days,
)
from engine.fastsql import Fast, is_deferring
from engine.ledger import MOVED, typed_insert
from engine.rules_api import UNIT_POINTS

log = logging.getLogger("regulars.metrics")

#: the channel key of the figures over every channel
ALL = "*"
#: a member is active for this many days after a paid order or a visit
ACTIVE_DAYS = 90
#: a customer's footprint of fewer days than this is counted whole when an
#: order or a visit changes it (``contributions``, twice); a longer one only
#: around the days that changed (``contribution_delta``), whose fixed cost is
#: a few days' counting (measured: equal at about 4 days)
WHOLE_BELOW = 16
#: money is counted in ten-thousandths of the currency (exact on SQLite too)
MONEY_SCALE = 10_000
CENT = Decimal("0.01")
PERIODS = ("month", "week")

SPENT_REASONS = ("redeem", "reward-expired")
EXPIRED_REASONS = ("expiry",)
MOVED_REASONS = MOVED  # (a merge moves points between two records of one person)
#: ledger sources that name their channel second: "order:shopify:123"
CHANNEL_SOURCES = ("order", "visit", "subscription")


def N_(message: str) -> str:
    """Marks a message for the pages' catalogs; the page translates it."""
    return message


@dataclass(frozen=True)
class Metric:
    name: str
    #: English; the page translates it
    title: str
    #: "rate" | "money" | "count" | "points" | "number"
    unit: str
    #: how it is computed, shown on the dashboard and in the README
    formula: str
    #: a figure of the period alone (a flow: points issued in it, its buyers'
    #: retention), not one to date: a period not over yet shows only part of
    #: it, so the dashboard's headline is the last period that is over
    per_period: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("retention_rate", N_("Retention rate"), "rate",
           N_("Customers who bought in the previous period and again in this one ÷ customers who bought in the "
           "previous period."), per_period=True),
    Metric("churn_rate", N_("Churn rate"), "rate",
           N_("1 − retention rate: the share of the previous period's buyers who did not buy again in this one."),
           per_period=True),
    Metric("repeat_purchase_rate", N_("Repeat purchase rate"), "rate",
           N_("Customers with 2 or more paid orders up to the period's end ÷ customers with at least 1.")),
    Metric("purchase_frequency", N_("Purchase frequency"), "number",
           N_("Paid orders in the period ÷ customers who bought in the period."), per_period=True),
    Metric("average_clv", N_("Average customer lifetime value"), "money",
           N_("Eligible spend of every paid order up to the period's end (after refunds; no shipping, tax or gift "
           "cards) ÷ customers with a paid order up to then.")),
    Metric("redemption_rate", N_("Reward redemption rate"), "rate",
           N_("Points spent on rewards in the period ÷ points issued in the period."), per_period=True),
    Metric("active_members", N_("Active members"), "count",
           N_("Customers with a paid order or a visit in the 90 days up to the period's last day (today, for the "
           "current period).")),
    Metric("points_issued", N_("Points issued"), "points",
           N_("Points earned in the period (orders net of their refunds and cancellations, visits, referrals, "
           "memberships, adjustments)."), per_period=True),
    Metric("points_spent", N_("Points spent"), "points",
           N_("Points redeemed for rewards in the period, less points given back when an unused reward expired."),
           per_period=True),
    Metric("points_expired", N_("Points expired"), "points",
           N_("Points that expired in the period (what was left of each lot at its expiry date)."), per_period=True),
    Metric("points_liability", N_("Outstanding points liability"), "money",
           N_("Outstanding points at the period's end (issued − spent − expired, to date) × the value of a point "
           "(the best fixed-amount reward's value ÷ cost, or [engine] point_value). One balance across "
           "channels, so not split by channel.")),
)
BY_NAME = {m.name: m for m in METRICS}

#: the counters each metric reads: (measure, kind); kind "d" is per day
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "retention_rate": (("buyers", "p"), ("retained", "p")),
    "churn_rate": (("buyers", "p"), ("retained", "p")),
    "repeat_purchase_rate": (("first", "d"), ("second", "d")),
    "purchase_frequency": (("orders", "d"), ("buyers", "p")),
    "average_clv": (("revenue", "d"), ("first", "d")),
    "redemption_rate": (("issued", "d"), ("spent", "d")),
    "active_members": (("active", "d"),),
    "points_issued": (("issued", "d"),),
    "points_spent": (("spent", "d"),),
    "points_expired": (("expired", "d"),),
    "points_liability": (("issued", "d"), ("spent", "d"), ("expired", "d")),
}


# -- periods ---------------------------------------------------------------------


def period_start(day: date, period: str) -> date:
    """The first day of the month or ISO week holding ``day``."""
    if period == "month":
        return day.replace(day=1)
    return day - timedelta(days=day.weekday())


def next_period(start: date, period: str) -> date:
    if period == "month":
        return (start.replace(day=1) + timedelta(days=32)).replace(day=1)
    return start + timedelta(days=7)


def previous_period(start: date, period: str) -> date:
    if period == "month":
        return (start.replace(day=1) - timedelta(days=1)).replace(day=1)
    return start - timedelta(days=7)


def periods(start: date, end: date, period: str = "month") -> list[date]:
    """The first days of the periods from the one holding ``start`` to the one holding ``end``."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    found, at = [], period_start(start, period)
    while at <= end:
        found.append(at)
        at = next_period(at, period)
    return found


def _kind(period: str) -> str:
    return "m" if period == "month" else "w"


# -- footprints and what they contribute ----------------------------------------------


def money_units(amount) -> int:
    """Money as an integer count of ten-thousandths."""
    return int((Decimal(str(amount)) * MONEY_SCALE).to_integral_value(rounding=ROUND_HALF_EVEN))


_DATES: dict[int, date] = {}
_MONTHS: dict[int, int] = {}
_ORDINALS: dict[str, int] = {}
_ISO: dict[int, str] = {}


def _date(ordinal: int) -> date:
    found = _DATES.get(ordinal)
    if found is None:
        found = _DATES[ordinal] = date.fromordinal(ordinal)
    return found


def _month(ordinal: int) -> int:
    """The ordinal of the first day of the month holding a day's ordinal."""
    found = _MONTHS.get(ordinal)
    if found is None:
        found = _MONTHS[ordinal] = _date(ordinal).replace(day=1).toordinal()
    return found


def _ordinal(iso: str) -> int:
    found = _ORDINALS.get(iso)
    if found is None:
        found = _ORDINALS[iso] = date.fromisoformat(iso).toordinal()
    return found


Bought = dict[str, dict[int, list[int]]]  # channel → day ordinal → [paid orders, eligible ten-thousandths]
Came = dict[str, set[int]]  # channel → day ordinals


def _typed(purchases: Iterable[tuple[str, date, int]], visits: Iterable[tuple[str, date]]) -> tuple[Bought, Came]:
    bought: Bought = defaultdict(dict)
    for channel, day, units in purchases:
        slot = bought[channel].get(day.toordinal())
        if slot is None:
            bought[channel][day.toordinal()] = [1, units]
        else:
            slot[0] += 1
            slot[1] += units
    came: Came = defaultdict(set)
    for channel, day in visits:
        came[channel].add(day.toordinal())
    return bought, came


def _iso(ordinal: int) -> str:
    found = _ISO.get(ordinal)
    if found is None:
        found = _ISO[ordinal] = _date(ordinal).isoformat()
    return found


def _as_json(bought: Bought, came: Came) -> dict:
    """The canonical JSON form stored in ``metric_footprints`` (each day's
    ``[orders, spend]`` list is ``bought``'s own: nothing changes one in place)."""
    footprint: dict[str, Any] = {}
    iso = _iso
    paid = {ch: {iso(o): v for o, v in sorted(days.items())} for ch, days in sorted(bought.items()) if days}
    visited = {ch: [iso(o) for o in sorted(days)] for ch, days in sorted(came.items()) if days}
    if paid:
        footprint["p"] = paid
    if visited:
        footprint["v"] = visited
    return footprint


def build_footprint(purchases: Iterable[tuple[str, date, int]], visits: Iterable[tuple[str, date]]) -> dict:
    """A customer's footprint from their paid orders (channel, day, eligible
    spend in ten-thousandths) and visit days (channel, day), in the canonical
    JSON form stored in ``metric_footprints``."""
    return _as_json(*_typed(purchases, visits))


def _add(out: dict, key: tuple, value: int) -> None:
    out[key] = out.get(key, 0) + value


def _contribute(out: dict, scope: str, purchases: dict[int, list[int]], visits: set[int]) -> None:
    """What one customer adds in one scope (a channel, or every channel)."""
    if purchases:
        days = sorted(purchases)
        for o in days:
            n, units = purchases[o]
            day = _date(o)
            _add(out, ("orders", scope, "d", day), n)
            _add(out, ("revenue", scope, "d", day), units)
        first = days[0]
        _add(out, ("first", scope, "d", _date(first)), 1)
        second = first if purchases[first][0] >= 2 else (days[1] if len(days) > 1 else None)
        if second is not None:
            _add(out, ("second", scope, "d", _date(second)), 1)
        months = {_month(o) for o in days}
        for m in months:
            _add(out, ("buyers", scope, "m", _date(m)), 1)
            if _month(m - 1) in months:
                _add(out, ("retained", scope, "m", _date(m)), 1)
        weeks = {o - (o - 1) % 7 for o in days}  # ordinal 1 is a Monday
        for w in weeks:
            _add(out, ("buyers", scope, "w", _date(w)), 1)
            if w - 7 in weeks:
                _add(out, ("retained", scope, "w", _date(w)), 1)
    active = sorted(purchases.keys() | visits) if visits else sorted(purchases)
    if active:
        begin = active[0]
        lapse = begin + ACTIVE_DAYS
        for o in active[1:]:
            if o >= lapse:
                _add(out, ("active", scope, "d", _date(begin)), 1)
                _add(out, ("active", scope, "d", _date(lapse)), -1)
                begin = o
            lapse = o + ACTIVE_DAYS
        _add(out, ("active", scope, "d", _date(begin)), 1)
        _add(out, ("active", scope, "d", _date(lapse)), -1)


def _contribute_all(out: dict, bought: Bought, came: Came) -> None:
    """What one customer adds: per channel, and over every channel."""
    channels = bought.keys() | came.keys()
    for channel in channels:
        _contribute(out, channel, bought.get(channel) or {}, came.get(channel) or set())
    if len(channels) == 1:
        (channel,) = channels
        _contribute(out, ALL, bought.get(channel) or {}, came.get(channel) or set())
        return
    everywhere: dict[int, list[int]] = {}
    for days in bought.values():
        for o, (n, units) in days.items():
            slot = everywhere.get(o)
            if slot is None:
                everywhere[o] = [n, units]
            else:
                everywhere[o] = [slot[0] + n, slot[1] + units]
    _contribute(out, ALL, everywhere, set().union(*came.values()) if came else set())


def _first_two(purchases: dict[int, list[int]]) -> tuple[int | None, int | None]:
    """The days of a scope's first and second paid orders (the same day when
    the first day had two)."""
    if not purchases:
        return None, None
    days = heapq.nsmallest(2, purchases)
    first = days[0]
    if purchases[first][0] >= 2:
        return first, first
    return first, days[1] if len(days) > 1 else None


def _stretches(purchases: dict[int, list[int]], visits: set[int]) -> list[tuple[int, int]]:
    """(first day, lapse day) of each stretch of activity, as ``_contribute``
    counts them."""
    active = sorted(purchases.keys() | visits) if visits else sorted(purchases)
    if not active:
        return []
    found = []
    begin = active[0]
    lapse = begin + ACTIVE_DAYS
    for o in active[1:]:
        if o >= lapse:
            found.append((begin, lapse))
            begin = o
        lapse = o + ACTIVE_DAYS
    found.append((begin, lapse))
    return found


def _bought_in(days: list[int], start: int, end: int) -> bool:
    """Whether sorted ``days`` hold one in [start, end)."""
    at = bisect.bisect_left(days, start)
    return at < len(days) and days[at] < end


def _scope_delta(out: Counter, scope: str, before: tuple[dict, set], after: tuple[dict, set], changed: set[int]) -> None:
    """What one scope's contribution changes by, when its purchases and visits
    differ only on the ``changed`` days: the same as ``_contribute`` of
    ``after`` less ``_contribute`` of ``before``, without walking the days
    nothing changed on per counter (a regular's thousand orders)."""
    (p0, v0), (p1, v1) = before, after
    for o in changed:
        was, now = p0.get(o), p1.get(o)
        n = (now[0] if now else 0) - (was[0] if was else 0)
        units = (now[1] if now else 0) - (was[1] if was else 0)
        if n:
            out[("orders", scope, "d", _date(o))] += n
        if units:
            out[("revenue", scope, "d", _date(o))] += units
    firsts = _first_two(p0), _first_two(p1)
    if firsts[0] != firsts[1]:
        for sign, (first, second) in zip((-1, 1), firsts, strict=True):
            if first is not None:
                out[("first", scope, "d", _date(first))] += sign
            if second is not None:
                out[("second", scope, "d", _date(second))] += sign
    sorted_days = sorted(p0), sorted(p1)
    months = set()
    for o in changed:
        month = _month(o)
        months.add(month)
        months.add(_month(month + 31))  # the next month's retention looks back at this one
    for month in months:
        following = _month(month + 31)
        previous = _month(month - 1)
        for sign, days in zip((-1, 1), sorted_days, strict=True):
            if _bought_in(days, month, following):
                out[("buyers", scope, "m", _date(month))] += sign
                if _bought_in(days, previous, month):
                    out[("retained", scope, "m", _date(month))] += sign
    weeks = set()
    for o in changed:
        week = o - (o - 1) % 7  # ordinal 1 is a Monday
        weeks.update((week, week + 7))
    for week in weeks:
        for sign, days in zip((-1, 1), sorted_days, strict=True):
            if _bought_in(days, week, week + 7):
                out[("buyers", scope, "w", _date(week))] += sign
                if _bought_in(days, week - 7, week):
                    out[("retained", scope, "w", _date(week))] += sign
    stretches = Counter(_stretches(p0, v0)), Counter(_stretches(p1, v1))
    if stretches[0] != stretches[1]:
        for sign, gone in ((-1, stretches[0] - stretches[1]), (1, stretches[1] - stretches[0])):
            for (begin, lapse), times in gone.items():
                out[("active", scope, "d", _date(begin))] += sign * times
                out[("active", scope, "d", _date(lapse))] -= sign * times


class _Together:
    """Several channels' paid orders as one scope's (day → [orders, spend]),
    summed only for the days asked about."""

    __slots__ = ("parts", "days")

    def __init__(self, parts: list[dict[int, list[int]]]):
        self.parts = parts
        self.days = set().union(*parts)

    def keys(self) -> set[int]:
        return self.days

    def __iter__(self):
        return iter(self.days)

    def __len__(self) -> int:
        return len(self.days)

    def get(self, day: int) -> list[int] | None:
        if day not in self.days:
            return None
        n = units = 0
        for part in self.parts:
            slot = part.get(day)
            if slot is not None:
                n += slot[0]
                units += slot[1]
        return [n, units]

    __getitem__ = get


def _everywhere(bought: Bought, came: Came, channels) -> tuple[Any, set]:
    """The ``*`` scope's purchases and visits: every channel's together."""
    if len(channels) == 1:
        (channel,) = channels
        return bought.get(channel) or {}, came.get(channel) or set()
    return _Together([days for days in bought.values() if days]), set().union(*came.values()) if came else set()


def contribution_delta(before: tuple[Bought, Came], after: tuple[Bought, Came], changed: dict[str, set[int]]) -> Counter:
    """``contributions`` of the footprint ``after`` less those of ``before``,
    when the two differ only on the ``changed`` days (channel → day
    ordinals) of a few channels: what one order or visit changes, in time that
    does not grow with the customer's orders per counter."""
    out: Counter = Counter()
    if not changed:
        return out
    (b0, c0), (b1, c1) = before, after
    for channel, days in changed.items():
        _scope_delta(out, channel, (b0.get(channel) or {}, c0.get(channel) or set()),
                     (b1.get(channel) or {}, c1.get(channel) or set()), days)
    channels0 = {ch for ch in b0.keys() | c0.keys() if b0.get(ch) or c0.get(ch)}
    channels1 = {ch for ch in b1.keys() | c1.keys() if b1.get(ch) or c1.get(ch)}
    _scope_delta(out, ALL, _everywhere(b0, c0, channels0), _everywhere(b1, c1, channels1), set().union(*changed.values()))
    return Counter({counter: value for counter, value in out.items() if value})


def contributions(footprint: dict) -> Counter:
    """What one customer's footprint adds to the counters:
    ``(measure, channel, kind, period) → value``."""
    out: Counter = Counter()
    if not footprint:
        return out
    _contribute_all(out, *_parsed(footprint))
    return out


def points_measure(reason: str) -> tuple[str, int] | None:
    """(measure, sign) of a points entry's reason; None for a merge."""
    if reason in MOVED_REASONS:
        return None
    if reason in SPENT_REASONS:
        return "spent", -1
    if reason in EXPIRED_REASONS:
        return "expired", -1
    return "issued", 1


def points_channel(reason: str, source: str, reward_channel: str | None, lot_source: str | None) -> str | None:
    """The channel a points entry belongs to (see the module docstring)."""
    kind, _, rest = (source or "").partition(":")
    if kind in CHANNEL_SOURCES:
        return rest.split(":", 1)[0] or None
    if reason in SPENT_REASONS:
        return reward_channel or None
    if reason in EXPIRED_REASONS and kind == "lot" and lot_source:
        lot_kind, _, lot_rest = lot_source.partition(":")
        if lot_kind in CHANNEL_SOURCES:
            return lot_rest.split(":", 1)[0] or None
    return None


# -- the pipeline's side ----------------------------------------------------------------

_PURCHASES = select(orders.c.channel, orders.c.paid_at, orders.c.eligible).where(
    orders.c.customer_id == bindparam("customer_id"), orders.c.paid_at.is_not(None), orders.c.eligible > 0)
_VISITS = select(visit_days.c.channel, visit_days.c.day).where(visit_days.c.customer_id == bindparam("customer_id"))
# Finds or creates the customer's footprint row and locks it, in one statement
# (the no-op update takes the row lock, on PostgreSQL; SQLite's write lock is
# the transaction's).
_LOCK_FOOTPRINT = Fast(text(
    "INSERT INTO metric_footprints (customer_id, footprint) VALUES (:customer_id, :empty) "
    "ON CONFLICT (customer_id) DO UPDATE SET footprint = metric_footprints.footprint RETURNING footprint"
).bindparams(bindparam("empty", type_=JSON)).columns(footprint=JSON))
_SET_FOOTPRINT = Fast(update(metric_footprints).where(
    metric_footprints.c.customer_id == bindparam("b_customer", type_=metric_footprints.c.customer_id.type)
).values(footprint=bindparam("footprint", type_=JSON)))
# A footprint of a customer created in this transaction: nobody else can have
# written one (the customer's row is not committed, and the foreign key
# forbids a footprint without its customer). Should one exist all the same,
# nothing is inserted and the footprint is counted again the careful way.
_NEW_FOOTPRINT = Fast(text(
    "INSERT INTO metric_footprints (customer_id, footprint) VALUES (:customer_id, :footprint) "
    "ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id"
).bindparams(bindparam("footprint", type_=JSON)))
_INSERT_FOOTPRINT = Fast(typed_insert(metric_footprints, ("customer_id", "footprint")))
_NEW_VISIT = text(
    "INSERT INTO visit_days (customer_id, channel, day) VALUES (:customer_id, :channel, :day) "
    "ON CONFLICT (customer_id, channel, day) DO NOTHING RETURNING customer_id"
).bindparams(bindparam("day", type_=Date))
_MOVE_VISITS = text(
    "INSERT INTO visit_days (customer_id, channel, day) "
    "SELECT :keep, channel, day FROM visit_days WHERE customer_id = :gone "
    "ON CONFLICT (customer_id, channel, day) DO NOTHING"
)
_INSERT_DELTAS = Fast(text(
    "INSERT INTO metric_deltas (measure, channel, kind, period, value) "
    "VALUES (:measure, :channel, :kind, :period, :value)"
).bindparams(bindparam("period", type_=Date), bindparam("value", type_=metric_deltas.c.value.type)))
_REWARD_CHANNEL = select(rewards.c.channel).where(rewards.c.code == bindparam("code"))
_LOT_SOURCE = (select(ledger_entries.c.source).select_from(lots.join(ledger_entries, ledger_entries.c.id == lots.c.entry_id))
               .where(lots.c.id == bindparam("lot_id")))


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except Exception:  # an unknown zone: UTC, as the pages do
        return ZoneInfo("UTC")


class Recorder:
    """Keeps the counters exact, in the pipeline's transaction: the ledger
    calls ``posted``, the pipeline ``order_changed`` and ``visited``, identity
    ``merged`` (each through ``Ledger.metrics``)."""

    def __init__(self, timezone: str | None = "UTC"):
        self.zone = _zone(timezone)
        self.timezone = self.zone.key
        #: id(connection) -> what its open ``collecting`` block holds
        self._collecting: dict[int, _Pending] = {}

    def day(self, moment: datetime) -> date:
        """The shop's calendar day of a moment (a naive one is UTC)."""
        return as_utc(moment).astimezone(self.zone).date()

    # -- what one transaction changes ----------------------------------------------

    @contextmanager
    def collecting(self, conn: Connection) -> Iterator[None]:
        """Keep the counters' changes made on ``conn`` in memory and write
        them when the block ends without an exception: one multi-row INSERT
        of the deltas (summed per counter) and one write per footprint
        changed, instead of statements at every posting and order change.
        An exception discards them (its transaction or savepoint is rolled
        back). Blocks nest: the outermost writes."""
        key = id(conn)
        if key in self._collecting:
            yield
            return
        pending = self._collecting[key] = _Pending()
        try:
            yield
            self._write(conn, pending)
        finally:
            del self._collecting[key]

    @contextmanager
    def savepoint(self, conn: Connection) -> Iterator[None]:
        """A layer of the open ``collecting`` block on ``conn`` for work done
        in a savepoint (a delivery of a batch): what it changes joins the
        block's when it ends without an exception, and is dropped when it
        raises (its savepoint is rolled back). The block then writes the
        whole batch's counters at once: one INSERT of the deltas, and one
        write per customer however many of their orders the batch held.
        Without an open block, this is one."""
        key = id(conn)
        parent = self._collecting.get(key)
        if parent is None:
            with self.collecting(conn):
                yield
            return
        layer = self._collecting[key] = _Pending(parent)
        try:
            yield
            deltas = parent.deltas
            for counter, value in layer.deltas.items():
                deltas[counter] = deltas.get(counter, 0) + value
            parent.footprints.update(layer.footprints)
            parent.ahead.update(layer.ahead)
        finally:
            self._collecting[key] = parent

    def _pending(self, conn: Connection) -> _Pending | None:
        return self._collecting.get(id(conn))

    @staticmethod
    def _holder(pending: _Pending | None, customer_id: int) -> _Pending | None:
        """The layer, this one or one it belongs to, that holds the
        customer's footprint (or has it read ahead); None if none does."""
        while pending is not None:
            if customer_id in pending.footprints or customer_id in pending.ahead:
                return pending
            pending = pending.parent
        return None

    def _holds(self, pending: _Pending, customer_id: int) -> bool:
        return self._holder(pending, customer_id) is not None

    def created(self, conn: Connection, customer_id: int) -> None:
        """A customer was created in this transaction: their footprint is
        empty and has no row yet (none is read or locked)."""
        pending = self._pending(conn)
        if pending is not None and not self._holds(pending, customer_id):
            pending.footprints[customer_id] = _Footprint(None, {}, Counter())

    def _write(self, conn: Connection, pending: _Pending) -> None:
        deltas = pending.deltas
        changed = []
        for customer_id in sorted(pending.footprints):
            held = pending.footprints[customer_id]
            if held.current == held.stored:
                continue
            if held.stored is None:
                if held.current == {}:
                    continue
                if is_deferring(conn):
                    # Sent with the transaction's last writes; a row that exists
                    # after all (see _NEW_FOOTPRINT) fails the transaction loudly.
                    _INSERT_FOOTPRINT.later(conn, {"customer_id": customer_id, "footprint": held.current})
                elif _NEW_FOOTPRINT.scalar(conn, {"customer_id": customer_id, "footprint": held.current}) is None:
                    # A row we did not expect: lock it and count again from the orders and visit days.
                    held.stored = _LOCK_FOOTPRINT.scalar(conn, {"customer_id": customer_id, "empty": {}}) or {}
                    held.current, held.delta = self.footprint(conn, customer_id), None
                    if held.current == held.stored:
                        continue
                    _SET_FOOTPRINT.execute(conn, {"b_customer": customer_id, "footprint": held.current})
            else:
                changed.append({"b_customer": customer_id, "footprint": held.current})
            if held.delta is not None:
                change = held.delta
            else:
                change = contributions(held.current)
                change.subtract(contributions(held.stored or {}))
            for counter, value in change.items():
                if value:
                    deltas[counter] = deltas.get(counter, 0) + value
        rows = [{"measure": m, "channel": c, "kind": k, "period": p, "value": v}
                for (m, c, k, p), v in sorted(deltas.items()) if v]
        _SET_FOOTPRINT.later(conn, changed, many=True)
        _INSERT_DELTAS.later(conn, rows, many=True)

    # -- the ledger -------------------------------------------------------------

    def posted(self, conn: Connection, customer_id: int, unit: str, amount: int, reason: str, source: str,
               occurred_at: datetime, detail: dict | None = None) -> None:
        """A ledger entry was posted: count its points."""
        if unit != UNIT_POINTS or not amount:
            return
        measured = points_measure(reason)
        if measured is None:
            return
        measure, sign = measured
        reward_channel = lot_source = None
        kind, _, rest = (source or "").partition(":")
        if reason == "redeem":
            # A redemption names its channel in the entry (its reward's row comes after it).
            reward_channel = (detail or {}).get("channel")
        elif reason in SPENT_REASONS and kind == "reward":
            reward_channel = conn.execute(_REWARD_CHANNEL, {"code": rest}).scalar_one_or_none()
        elif reason in EXPIRED_REASONS and kind == "lot" and rest.isdigit():
            lot_source = conn.execute(_LOT_SOURCE, {"lot_id": int(rest)}).scalar_one_or_none()
        channel = points_channel(reason, source, reward_channel, lot_source)
        day, value = self.day(occurred_at), sign * amount
        with self.collecting(conn):
            deltas = self._pending(conn).deltas
            for where in (ALL, channel) if channel else (ALL,):
                counter = (measure, where, "d", day)
                deltas[counter] = deltas.get(counter, 0) + value

    # -- orders, visits, merges ----------------------------------------------------

    def _purchase(self, customer_id, channel, paid_at, eligible):
        if customer_id is None or paid_at is None or eligible is None or Decimal(str(eligible)) <= 0:
            return None
        return customer_id, channel, self.day(paid_at), money_units(eligible)

    def order_changed(self, conn: Connection, row, customer_id: int | None, paid_at: datetime | None,
                      eligible) -> None:
        """An order's row was rewritten (``row``: as it was) with this
        customer, payment time and eligible spend."""
        old = self._purchase(row.customer_id, row.channel, row.paid_at, row.eligible)
        new = self._purchase(customer_id, row.channel, paid_at, eligible)
        if old == new:
            return
        with self.collecting(conn):
            for affected in sorted({p[0] for p in (old, new) if p is not None}):
                self._recount(conn, affected, purchase=(old if old and old[0] == affected else None,
                                                        new if new and new[0] == affected else None))

    def visited(self, conn: Connection, customer_id: int, channel: str, at: datetime) -> None:
        """A customer visited (in ``channel``, at ``at``)."""
        day = self.day(at)
        if conn.execute(_NEW_VISIT, {"customer_id": customer_id, "channel": channel, "day": day}).first() is not None:
            with self.collecting(conn):
                self._recount(conn, customer_id, visit=(channel, day))

    def merged(self, conn: Connection, keep: int, gone: int) -> None:
        """Customer ``gone`` was joined into ``keep`` (orders already moved)."""
        conn.execute(_MOVE_VISITS, {"keep": keep, "gone": gone})
        conn.execute(delete(visit_days).where(visit_days.c.customer_id == gone))
        self.refresh(conn, [keep, gone])

    def footprint(self, conn: Connection, customer_id: int) -> dict:
        """A customer's footprint as the database holds it now."""
        purchases = [(ch, self.day(paid_at), money_units(eligible))
                     for ch, paid_at, eligible in conn.execute(_PURCHASES, {"customer_id": customer_id})]
        visits = conn.execute(_VISITS, {"customer_id": customer_id}).all()
        return build_footprint(purchases, visits)

    def refresh(self, conn: Connection, customer_ids: Iterable[int]) -> None:
        """Count again what these customers contribute, from their orders and
        visit days, in the caller's transaction: the difference goes to
        ``metric_deltas``."""
        with self.collecting(conn):
            for customer_id in sorted(set(customer_ids)):
                self._recount(conn, customer_id)

    def prefetch(self, conn: Connection, customer_id: int, known: dict[int, dict] | None = None) -> None:
        """The pipeline is about to change an existing customer's order: on
        PostgreSQL, inside ``fastsql.deferring``, their footprint is read and
        locked with the next statement, not in a round trip of its own
        (elsewhere, nothing happens until it is needed). ``known``: footprints
        already read and locked in this transaction (``Identity.prepare``)."""
        pending = self._pending(conn)
        if pending is None or self._holds(pending, customer_id):
            return
        if known is not None and customer_id in known:
            stored = known[customer_id] or {}
            pending.footprints[customer_id] = _Footprint(stored, stored, Counter())
        elif is_deferring(conn):
            pending.ahead[customer_id] = _LOCK_FOOTPRINT.ahead(conn, {"customer_id": customer_id, "empty": {}})

    def _held(self, conn: Connection, customer_id: int) -> _Footprint:
        """The customer's footprint in this transaction: read (and its row
        locked, created empty if missing) the first time."""
        pending = self._pending(conn)
        holder = self._holder(pending, customer_id)
        if holder is None or holder is pending:
            return self._read(conn, pending, customer_id)
        # Held by the block this layer belongs to (``savepoint``): a copy, which
        # replaces the block's if the layer ends well.
        base = self._read(conn, holder, customer_id)
        held = pending.footprints[customer_id] = base.copy()
        return held

    @staticmethod
    def _read(conn: Connection, pending: _Pending, customer_id: int) -> _Footprint:
        """The customer's footprint held by ``pending``, read (and its row
        locked) if it holds none yet."""
        held = pending.footprints.get(customer_id)
        if held is None:
            ahead = pending.ahead.pop(customer_id, None)
            if ahead is not None:
                rows = ahead.rows()
                stored = (rows[0][0] if rows else None) or {}
            else:
                stored = _LOCK_FOOTPRINT.scalar(conn, {"customer_id": customer_id, "empty": {}}) or {}
            held = pending.footprints[customer_id] = _Footprint(stored, stored, Counter())
        return held

    def _recount(self, conn: Connection, customer_id: int, purchase: tuple | None = None,
                 visit: tuple[str, date] | None = None) -> None:
        """Replace the customer's footprint (locked, inside ``collecting``):
        with one paid order taken out and/or put in (``purchase``: (old, new),
        each (customer, channel, day, spend) or None), with one more visit
        day, or else read again from their orders and visit days. (Orders and
        visit days only change through the recorder's hooks, so the stored
        footprint is what they held; if it is not, it is read again.)"""
        held = self._held(conn, customer_id)
        current = delta = None
        if purchase is not None or visit is not None:
            bought, came = _parsed(held.current)
            # A short footprint is counted whole when written: quicker than the delta.
            small = sum(map(len, bought.values())) + sum(map(len, came.values())) < WHOLE_BELOW
            if visit is not None:
                channel, day = visit[0], visit[1].toordinal()
                before = None if small else (bought, {ch: set(days) if ch == channel else days
                                                      for ch, days in came.items()})
                came.setdefault(channel, set()).add(day)
                changed = {channel: {day}}
            else:
                old, new = purchase
                changed = {}
                before = None if small else ({ch: dict(days) for ch, days in bought.items()}, came)
                for change in (old, new):  # a copy of each slot it changes: the stored footprint's stays as it was
                    if change is not None:
                        day = change[2].toordinal()
                        changed.setdefault(change[1], set()).add(day)
                        if (slot := bought.get(change[1], {}).get(day)) is not None:
                            bought[change[1]][day] = list(slot)
                if old is not None:
                    slot = bought.get(old[1], {}).get(old[2].toordinal())
                    if slot is not None and slot[0] >= 1 and slot[1] >= old[3]:
                        slot[0] -= 1
                        slot[1] -= old[3]
                        if not slot[0]:
                            del bought[old[1]][old[2].toordinal()]
                    else:
                        old = "drifted"
                if new is not None:
                    slot = bought.setdefault(new[1], {}).setdefault(new[2].toordinal(), [0, 0])
                    slot[0] += 1
                    slot[1] += new[3]
                if old == "drifted":
                    changed = None
            if changed is not None:
                current = _as_json(bought, came)
                delta = None if small else contribution_delta(before, (bought, came), changed)
        if current is None:
            current = self.footprint(conn, customer_id)
        held.current = current
        if delta is None:
            held.delta = None  # counted in full when written
        elif held.delta is not None:
            held.delta.update(delta)


class _Footprint:
    """A customer's footprint in a transaction: as stored (None: no row, a
    customer created in it) and as it is now, with what the change adds to the
    counters when it is known without recounting (``delta``: the orders and
    visits changed one at a time); None when it must be counted in full."""

    __slots__ = ("stored", "current", "delta")

    def __init__(self, stored: dict | None, current: dict, delta: Counter | None):
        self.stored = stored
        self.current = current
        self.delta = delta

    def copy(self) -> _Footprint:
        return _Footprint(self.stored, self.current, None if self.delta is None else Counter(self.delta))


class _Pending:
    """The counters' changes of one transaction, not written yet (or of a
    savepoint in it: ``parent`` is then the transaction's)."""

    __slots__ = ("deltas", "footprints", "ahead", "parent")

    def __init__(self, parent: _Pending | None = None):
        self.parent = parent
        #: (measure, channel, kind, period) -> value
        self.deltas: dict[tuple, int] = {}
        self.footprints: dict[int, _Footprint] = {}
        #: customer -> their footprint's row, read and locked ahead (``prefetch``)
        self.ahead: dict[int, Any] = {}


def _parsed(footprint: dict) -> tuple[Bought, Came]:
    """A stored footprint as day ordinals: new dicts and sets, but each
    day's ``[orders, spend]`` is the footprint's own list (copy one before
    changing it)."""
    ordinal = _ordinal
    bought = {ch: {ordinal(d): v for d, v in days.items()} for ch, days in (footprint.get("p") or {}).items()}
    came = {ch: {ordinal(d) for d in days} for ch, days in (footprint.get("v") or {}).items()}
    return bought, came


def recorder(engine) -> Recorder:
    """The engine's recorder (or one for its configured zone)."""
    found = getattr(engine.ledger, "metrics", None)
    if found is not None:
        return found
    return Recorder(engine.config.engine.get("timezone"))


# -- reading ---------------------------------------------------------------------------------


def point_value(engine) -> Decimal | None:
    """The money one point is worth: ``[engine] point_value``, else the best
    ``fixed_amount`` reward of the catalogue (value ÷ cost); None without either."""
    from engine.simulate import valued_point

    found = valued_point(engine)
    return found[1] if found else None


def compact(engine) -> int:
    """Fold ``metric_deltas`` into ``metric_counts``; how many deltas it took.
    Exact under concurrent writers: on PostgreSQL one statement deletes the
    deltas it sees and adds exactly those; on SQLite the write lock does it."""
    with engine.db.connect() as conn:
        if conn.execute(select(metric_deltas.c.id).limit(1)).first() is None:
            return 0
    with engine.db.begin() as conn:
        if conn.dialect.name == "postgresql":
            return conn.execute(text(
                "WITH moved AS (DELETE FROM metric_deltas RETURNING measure, channel, kind, period, value), "
                "folded AS (INSERT INTO metric_counts (measure, channel, kind, period, value) "
                "SELECT measure, channel, kind, period, SUM(value) FROM moved "
                "GROUP BY measure, channel, kind, period "
                "ON CONFLICT (measure, channel, kind, period) DO UPDATE SET value = metric_counts.value + EXCLUDED.value "
                "RETURNING 1) "
                "SELECT COUNT(*) FROM moved"
            )).scalar_one()
        top = conn.execute(select(func.max(metric_deltas.c.id))).scalar_one()
        if top is None:
            return 0
        conn.execute(text(
            "INSERT INTO metric_counts (measure, channel, kind, period, value) "
            "SELECT measure, channel, kind, period, SUM(value) FROM metric_deltas WHERE id <= :top "
            "GROUP BY measure, channel, kind, period "
            "ON CONFLICT (measure, channel, kind, period) DO UPDATE SET value = metric_counts.value + excluded.value"
        ), {"top": top})
        return conn.execute(delete(metric_deltas).where(metric_deltas.c.id <= top)).rowcount


#: a database with more ledger entries than this is not rebuilt on a page
#: view, but by `regulars metrics rebuild` (minutes for millions of entries)
AUTO_REBUILD_LIMIT = 200_000


class NotBuilt(RuntimeError):
    """The counters need ``regulars metrics rebuild`` first; the message says why."""


def _state(conn: Connection, name: str = "built") -> str | None:
    return conn.execute(select(metric_state.c.value).where(metric_state.c.name == name)).scalar_one_or_none()


def _set_state(conn: Connection, value: str, name: str = "built") -> None:
    conn.execute(delete(metric_state).where(metric_state.c.name == name))
    conn.execute(metric_state.insert().values(name=name, value=value))


def ensure_built(engine) -> None:
    """Build the counters if they never were (an upgraded database that had
    data) or were built in another time zone; mark an empty database built.
    A big database is left to ``regulars metrics rebuild``: ``NotBuilt``."""
    engine.ensure_schema()
    zone = recorder(engine).timezone
    with engine.db.connect() as conn:
        state = _state(conn)
        if state == zone:
            return
        empty = state is None and conn.execute(select(
            ~select(orders.c.id).exists() & ~select(ledger_entries.c.id).exists())).scalar()
        size = conn.execute(select(func.max(ledger_entries.c.id))).scalar() or 0
    if state == "*" or empty:
        with engine.db.begin() as conn:
            _set_state(conn, zone)
        return
    why = "they were never built" if state is None else f"they were built in {state}, and the shop is in {zone}"
    if size > AUTO_REBUILD_LIMIT:
        raise NotBuilt(f"the dashboard's counters need `regulars metrics rebuild`: {why}")
    log.warning("building the dashboard's counters from the ledger and the orders: %s", why)
    rebuild(engine)


def _read(engine, needs: set[tuple[str, str]], scope: str, kind: str, first: date, stop: date):
    """Sums per (measure, kind, period) of the counters for ``scope`` before
    ``stop``; every day before ``first`` summed into the day before it."""
    measures = sorted({m for m, _ in needs})
    kinds = sorted({"d" if k == "d" else kind for _, k in needs})
    before = first - timedelta(days=1)
    parts = [
        select(t.c.measure, t.c.kind, case((t.c.period < first, literal(before, Date)), else_=t.c.period).label("bucket"),
               t.c.value)
        .where(t.c.measure.in_(measures), t.c.channel == scope, t.c.kind.in_(kinds), t.c.period < stop)
        for t in (metric_counts, metric_deltas)
    ]
    rows = union_all(*parts).subquery()
    query = select(rows.c.measure, rows.c.kind, rows.c.bucket, func.sum(rows.c.value)).group_by(
        rows.c.measure, rows.c.kind, rows.c.bucket)
    with engine.db.connect() as conn:
        found = conn.execute(query).all()
    daily: dict[str, list[tuple[date, int]]] = defaultdict(list)
    level: dict[str, dict[date, int]] = defaultdict(dict)
    for measure, row_kind, bucket, value in found:
        if isinstance(bucket, str):  # SQLite hands a CASE of dates back as text
            bucket = date.fromisoformat(bucket)
        if row_kind == "d":
            daily[measure].append((bucket, int(value)))
        else:
            level[measure][bucket] = int(value)
    return _Sums(daily), level


class _Sums:
    """Prefix sums of daily counters."""

    def __init__(self, daily: dict[str, list[tuple[date, int]]]):
        self.days: dict[str, list[date]] = {}
        self.prefix: dict[str, list[int]] = {}
        for measure, rows in daily.items():
            rows.sort()
            self.days[measure] = [d for d, _ in rows]
            running, sums = 0, [0]
            for _, value in rows:
                running += value
                sums.append(running)
            self.prefix[measure] = sums

    def upto(self, measure: str, stop: date) -> int:
        """The sum over days before ``stop``."""
        days = self.days.get(measure)
        if not days:
            return 0
        return self.prefix[measure][bisect.bisect_left(days, stop)]

    def between(self, measure: str, start: date, stop: date) -> int:
        return self.upto(measure, stop) - self.upto(measure, start)


def _ratio(numerator, denominator) -> float | None:
    return numerator / denominator if denominator else None


def _money(units: int | Decimal) -> Decimal:
    return (Decimal(units) / MONEY_SCALE).quantize(CENT, rounding=ROUND_HALF_EVEN)


def compute(engine, names: Iterable[str], start: date, end: date, channel: str | None = None,
            period: str = "month", today: date | None = None) -> dict[str, list[tuple[date, Any]]]:
    """Several metrics' series at once, from one read of the counters."""
    names = list(names)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r} (metrics: {', '.join(BY_NAME)})")
    starts = periods(start, end, period)
    if not starts:
        return {name: [] for name in names}
    ensure_built(engine)
    compact(engine)
    rec = recorder(engine)
    today = today or datetime.now(UTC).astimezone(rec.zone).date()
    kind = _kind(period)
    stops = [*starts[1:], next_period(starts[-1], period)]
    needs = {need for name in names for need in NEEDS[name]}
    sums, level = _read(engine, needs, channel or ALL, kind, previous_period(starts[0], period), stops[-1])
    value = point_value(engine) if "points_liability" in names and not channel else None
    out: dict[str, list[tuple[date, Any]]] = {}
    for name in names:
        values = []
        for begin, stop in zip(starts, stops, strict=True):
            values.append((begin, _value(name, sums, level, begin, stop, period, today, channel, value)))
        out[name] = values
    return out


def _value(name, sums: _Sums, level, begin: date, stop: date, period: str, today: date, channel, point) -> Any:
    if name in ("retention_rate", "churn_rate"):
        before = level["buyers"].get(previous_period(begin, period), 0)
        rate = _ratio(level["retained"].get(begin, 0), before)
        if name == "retention_rate" or rate is None:
            return rate
        return 1 - rate
    if name == "repeat_purchase_rate":
        return _ratio(sums.upto("second", stop), sums.upto("first", stop))
    if name == "purchase_frequency":
        return _ratio(sums.between("orders", begin, stop), level["buyers"].get(begin, 0))
    if name == "average_clv":
        customers_so_far = sums.upto("first", stop)
        return _money(Decimal(sums.upto("revenue", stop)) / customers_so_far) if customers_so_far else None
    if name == "redemption_rate":
        issued = sums.between("issued", begin, stop)
        return sums.between("spent", begin, stop) / issued if issued > 0 else None
    if name == "active_members":
        as_of = min(stop - timedelta(days=1), today)
        return sums.upto("active", as_of + timedelta(days=1)) if as_of >= begin else None
    if name in ("points_issued", "points_spent", "points_expired"):
        return sums.between(name.removeprefix("points_"), begin, stop)
    if name == "points_liability":
        if channel or point is None:
            return None
        outstanding = sums.upto("issued", stop) - sums.upto("spent", stop) - sums.upto("expired", stop)
        return (outstanding * point).quantize(CENT, rounding=ROUND_HALF_EVEN)
    raise AssertionError(name)


def series(engine, name: str, start: date, end: date, channel: str | None = None,
           period: str = "month") -> list[tuple[date, Any]]:
    """One value per period (month, or week) from start to end, each keyed by
    its first day; None where undefined (no customers to divide by).

    Rates are floats between 0 and 1, ``purchase_frequency`` a float, money a
    ``Decimal`` in the shop's currency (to the cent), counts and points ints.
    ``channel``: only that channel's orders, visits and points (None: all)."""
    return compute(engine, [name], start, end, channel, period)[name]


# -- rebuilding ---------------------------------------------------------------------------------


def _split_part(value, delimiter, index):
    if value is None:
        return None
    parts = str(value).split(delimiter)
    return parts[index - 1] if 0 < index <= len(parts) else ""


def _sqlite_functions(conn: Connection, zone: ZoneInfo) -> None:
    """PostgreSQL's split_part, and the shop's day of a stored UTC timestamp."""
    raw = conn.connection.driver_connection

    def day(value, _zone_name):
        if value is None:
            return None
        moment = datetime.fromisoformat(str(value))
        return as_utc(moment).astimezone(zone).date().isoformat()

    raw.create_function("split_part", 3, _split_part, deterministic=True)
    raw.create_function("regulars_day", 2, day, deterministic=True)


def _day_sql(conn: Connection, column, zone: ZoneInfo):
    if conn.dialect.name == "postgresql":
        return cast(func.timezone(zone.key, column), Date)
    return func.regulars_day(column, zone.key)


def _as_date(value) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _points_totals(conn: Connection, rec: Recorder, totals: dict) -> None:
    """The points counters from the ledger, in one grouped query."""
    e, src = ledger_entries, ledger_entries.alias("earned")
    lot_id = cast(case((and_(e.c.reason.in_(EXPIRED_REASONS), e.c.source.like("lot:%")), func.substr(e.c.source, 5)),
                       else_=None), BigInteger)
    entries = (
        select(_day_sql(conn, e.c.occurred_at, rec.zone).label("day"), e.c.reason.label("reason"),
               func.split_part(e.c.source, ":", 1).label("kind"), func.split_part(e.c.source, ":", 2).label("channel"),
               rewards.c.channel.label("reward_channel"), src.c.source.label("lot_source"),
               e.c.amount.label("amount"))
        .select_from(
            e.join(accounts, and_(accounts.c.id == e.c.account_id, accounts.c.unit == UNIT_POINTS))
            .outerjoin(rewards, and_(e.c.reason.in_(SPENT_REASONS), e.c.source.like("reward:%"),
                                     rewards.c.code == func.substr(e.c.source, 8)))
            .outerjoin(lots, lots.c.id == lot_id)
            .outerjoin(src, src.c.id == lots.c.entry_id)
        )
        .where(e.c.reason.not_in(MOVED_REASONS))
        .subquery()
    )
    lot_kind = func.split_part(entries.c.lot_source, ":", 1)
    lot_channel = func.split_part(entries.c.lot_source, ":", 2)
    grouped = select(entries.c.day, entries.c.reason, entries.c.kind, entries.c.channel, entries.c.reward_channel,
                     lot_kind.label("lot_kind"), lot_channel.label("lot_channel"),
                     func.sum(entries.c.amount)).group_by(
        entries.c.day, entries.c.reason, entries.c.kind, entries.c.channel, entries.c.reward_channel,
        "lot_kind", "lot_channel")
    for day, reason, kind, channel, reward_channel, l_kind, l_channel, amount in conn.execute(grouped):
        measure, sign = points_measure(reason)
        source = f"{kind}:{channel}" if kind in CHANNEL_SOURCES else f"{kind}:"
        lot_source = f"{l_kind}:{l_channel}" if l_kind else None
        where = points_channel(reason, source, reward_channel, lot_source)
        day, value = _as_date(day), sign * int(amount)
        _add(totals, (measure, ALL, "d", day), value)
        if where:
            _add(totals, (measure, where, "d", day), value)


def _insert_ignore(conn: Connection, table, conflict: list[str]):
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table), conflict


def _seed_visit_days(conn: Connection, rec: Recorder) -> None:
    """Visit days from the ledger's visit entries (those that earned
    something), for visits recorded before the dashboard or bulk-loaded; then
    every merged customer's days moved to the customer they joined."""
    e = ledger_entries
    found = (
        select(accounts.c.customer_id, func.split_part(e.c.source, ":", 2),
               _day_sql(conn, e.c.occurred_at, rec.zone))
        .select_from(e.join(accounts, accounts.c.id == e.c.account_id))
        .where(e.c.reason == "visit", e.c.source.like("visit:%"))
        .distinct()
    )
    # Only entries since the last rebuild: the pipeline records every visit
    # itself; this is for visits from before the dashboard, or bulk-loaded.
    seen = int(_state(conn, "visits_seeded") or 0)
    top = conn.execute(select(func.max(e.c.id))).scalar() or 0
    statement, keys = _insert_ignore(conn, visit_days, ["customer_id", "channel", "day"])
    if top > seen:
        conn.execute(statement.from_select(["customer_id", "channel", "day"], found.where(e.c.id > seen))
                     .on_conflict_do_nothing(index_elements=keys))
        _set_state(conn, str(top), "visits_seeded")
    merged = customers.alias("merged")
    for _ in range(100):  # a chain of merges: one step each time round
        moved = conn.execute(statement.from_select(
            ["customer_id", "channel", "day"],
            select(merged.c.merged_into, visit_days.c.channel, visit_days.c.day)
            .join(merged, merged.c.id == visit_days.c.customer_id)
            .where(merged.c.merged_into.is_not(None)),
        ).on_conflict_do_nothing(index_elements=keys)).rowcount
        gone = conn.execute(delete(visit_days).where(visit_days.c.customer_id.in_(
            select(customers.c.id).where(customers.c.merged_into.is_not(None))))).rowcount
        if not moved and not gone:
            break


def _grouped(rows: Iterable, key=itemgetter(0)) -> Iterator[tuple[int, list]]:
    for customer_id, group in groupby(rows, key=key):
        yield customer_id, list(group)


def _store_footprints(conn: Connection, batch: list[tuple[int, dict]]) -> None:
    if conn.dialect.name == "postgresql":
        import json

        with conn.connection.driver_connection.cursor() as cursor:
            with cursor.copy("COPY metric_footprints (customer_id, footprint) FROM STDIN") as copy:
                for customer_id, footprint in batch:
                    copy.write_row((customer_id, json.dumps(footprint, separators=(",", ":"))))
        return
    conn.execute(metric_footprints.insert(), [{"customer_id": c, "footprint": f} for c, f in batch])


def _customer_totals(conn: Connection, rec: Recorder, totals: dict) -> int:
    """Every customer's footprint, from two streams ordered by customer;
    stored, and added to the totals. Returns how many customers."""
    bought_rows = conn.execute(
        select(orders.c.customer_id, orders.c.channel, orders.c.paid_at, orders.c.eligible)
        .where(orders.c.customer_id.is_not(None), orders.c.paid_at.is_not(None), orders.c.eligible > 0)
        .order_by(orders.c.customer_id).execution_options(yield_per=20_000)
    )
    came_rows = conn.execute(
        select(visit_days.c.customer_id, visit_days.c.channel, visit_days.c.day).order_by(visit_days.c.customer_id)
        .execution_options(yield_per=20_000)
    )
    purchases, visits = _grouped(bought_rows), _grouped(came_rows)
    next_p, next_v = next(purchases, None), next(visits, None)
    batch: list[tuple[int, dict]] = []
    counted = 0
    day, units = rec.day, money_units
    while next_p is not None or next_v is not None:
        customer_id = min(x[0] for x in (next_p, next_v) if x is not None)
        bought: Bought = {}
        came: Came = {}
        if next_p is not None and next_p[0] == customer_id:
            for _, channel, paid_at, eligible in next_p[1]:
                days = bought.setdefault(channel, {})
                o = day(paid_at).toordinal()
                slot = days.get(o)
                if slot is None:
                    days[o] = [1, units(eligible)]
                else:
                    slot[0] += 1
                    slot[1] += units(eligible)
            next_p = next(purchases, None)
        if next_v is not None and next_v[0] == customer_id:
            for _, channel, visited in next_v[1]:
                came.setdefault(channel, set()).add(_as_date(visited).toordinal())
            next_v = next(visits, None)
        _contribute_all(totals, bought, came)
        batch.append((customer_id, _as_json(bought, came)))
        counted += 1
        if len(batch) >= 20_000:
            _store_footprints(conn, batch)
            batch = []
    if batch:
        _store_footprints(conn, batch)
    return counted


def rebuild(engine) -> None:
    """Rebuild any summary table from the ledger and orders (after a bulk load
    or on upgrade); a no-op if there are none.

    Everything is recomputed in one transaction: on PostgreSQL it locks the
    counters' tables (the pipeline's writes to them wait; deliveries are
    still received) and reads one snapshot, so changes committed after it
    land as deltas on top, exactly once."""
    engine.ensure_schema()
    rec = recorder(engine)
    with engine.db.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # Before the first query: the snapshot then sees every writer that held them.
                conn.execute(text("LOCK TABLE metric_footprints, metric_deltas, metric_counts, metric_state, "
                                  "visit_days IN SHARE ROW EXCLUSIVE MODE"))
            else:
                _sqlite_functions(conn, rec.zone)
            for table in (metric_deltas, metric_counts, metric_footprints):
                conn.execute(delete(table))
            _seed_visit_days(conn, rec)
            totals: dict = {}
            _points_totals(conn, rec, totals)
            counted = _customer_totals(conn, rec, totals)
            rows = [{"measure": m, "channel": c, "kind": k, "period": p, "value": v}
                    for (m, c, k, p), v in sorted(totals.items()) if v]
            for at in range(0, len(rows), 5000):
                conn.execute(metric_counts.insert(), rows[at:at + 5000])
            _set_state(conn, rec.timezone)
    log.info("dashboard counters rebuilt: %d customers, %d counters", counted, len(rows))
