"""Subscriptions and memberships: a plan grants a multiplier on orders paid while
the membership is active, points when it starts and points on every renewal.

A channel (or ``regulars subscription ...``) sends ``subscription.started``,
``.renewed``, ``.paused``, ``.resumed`` and ``.cancelled`` events; the engine
keeps one row per subscription (``channel`` + the channel's id) and merges each
event into it so that duplicates and reordered deliveries converge:

- the status (and the plan, and the customer) come from the newest event by
  event time (``occurred_at``), then the kind of event (a cancellation beats a
  start at the same instant), then its key: a stale ``started`` that arrives
  after the ``cancelled`` changes nothing;
- ``started_at`` is the earliest event seen, ``current_period_end`` the latest
  ``period_end`` seen;
- points are posted once per fact, whatever the order: the start points once
  per subscription, the renewal points once per renewal, keyed by the period
  it renews (its ``period_end``) or, without one, by the event's idempotency
  key. A stale renewal still earns its points (the renewal happened).

A membership is active from a start, renewal or resumption until a newer pause
or cancellation. Every event is kept (``history``), so whether a membership was
active at a moment is decided from the events at or before it, whatever order
they arrived in (``active_plan``): the newest of them must be a start, renewal
or resumption and, for a plan with ``grace_days``, the moment no later than the
latest ``period_end`` among them plus the grace. The multiplier applies to an
order by the memberships active at its ``paid_at`` (``plans_at``); an event
that changes that for orders already awarded has them asked again
(``Pipeline.reprice_memberships``, through ``reprice``).

``status`` is the membership as it stands now. ``period_end`` is reported, not
enforced there, unless the plan sets ``grace_days``:

- the ``subscription-check`` job (``Subscriptions.lapse``) marks an active
  membership of such a plan ``lapsed`` once its ``current_period_end`` plus
  ``grace_days`` is before the job's time; ``status_at`` becomes that time.
  A lapsed membership is not active (no plan in ``customer.plans``);
- the lapse is not an event: it leaves ``status_stamp`` naming the newest event
  (always a start, renewal or resumption, as only active memberships lapse), so
  events keep their order among themselves. A newer pause or cancellation wins
  as usual. Any other event that is newer, or that brings a later
  ``period_end``, is merged and the lapse judged again as the job would have
  judged it at the lapse's time with what is known now: it stands while the
  latest period plus the grace (of the plan now named) still ended before
  then, else the membership is active again, even when the event is older than
  the lapse (the lapse went by a period that was not the latest). A stale
  renewal of a period already known changes nothing. So whether a late event
  arrives before or after the job ran, the membership ends in the same state.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from engine.config import ConfigError
from engine.db import as_utc, utcnow
from engine.db.models import ledger_entries, subscriptions
from engine.ledger import insert_ignore
from engine.rules_api import UNIT_POINTS, SubscriptionPlan

#: what each event sets the status to, and its rank among events at the same instant
STATUS = {"started": "active", "renewed": "active", "resumed": "active", "paused": "paused",
          "cancelled": "cancelled"}
_RANK = {"started": 0, "renewed": 1, "resumed": 2, "paused": 3, "cancelled": 4}
ACTIVE = "active"
#: set by the ``subscription-check`` job, never by an event (see the module docstring)
LAPSED = "lapsed"
#: ``regulars subscription ACTION``: the event each action stands for
ACTIONS = {"start": "subscription.started", "renew": "subscription.renewed", "pause": "subscription.paused",
           "resume": "subscription.resumed", "cancel": "subscription.cancelled"}

_SELECT = select(subscriptions).where(
    subscriptions.c.channel == bindparam("channel"), subscriptions.c.external_id == bindparam("external_id")
)
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
_ACTIVE_PLANS = (
    select(subscriptions.c.plan)
    .where(subscriptions.c.customer_id == bindparam("customer_id"), subscriptions.c.status == ACTIVE)
    .distinct()
)
_HISTORIES = select(subscriptions.c.history).where(subscriptions.c.customer_id == bindparam("customer_id"))
#: the kinds of event that make a membership active
_ACTIVATING = frozenset(rank for kind, rank in _RANK.items() if STATUS[kind] == ACTIVE)


class SubscriptionRefused(ValueError):
    """A subscription event that can't be applied (an unknown plan, no customer);
    the message says why."""


#: how stamps and history entries write a time (UTC)
_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


def _stamp(kind: str, at: datetime, key: str) -> str:
    """The order in which events win the status: time, kind, key."""
    return f"{_moment(at)}|{_RANK[kind]}|{key}"


def _stamp_time(stamp: str) -> datetime:
    """The event time a stamp starts with."""
    return _parse(stamp.split("|", 1)[0])


def _moment(at: datetime | None) -> str | None:
    """A time as stamps and history entries write it."""
    return None if at is None else f"{at.astimezone(UTC):{_FORMAT}}"


def _parse(moment: str) -> datetime:
    return datetime.strptime(moment, _FORMAT).replace(tzinfo=UTC)


def _entry(stamp: str, plan: str, period_end: datetime | None) -> list:
    """One event in a subscription's ``history``."""
    return [stamp, plan, _moment(period_end)]


def _lapses(plan: SubscriptionPlan | None, period_end: datetime | None, now: datetime) -> bool:
    """Whether a membership of the plan, active by its events, has lapsed at ``now``."""
    if plan is None or plan.grace_days is None or period_end is None:
        return False
    return period_end + timedelta(days=plan.grace_days) < now


def _entry_key(*parts: str) -> str:
    key = ":".join(parts)
    if len(key) <= 255:
        return key
    return f"subscription:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


class Subscriptions:
    """The plans plugins register, and each customer's subscriptions."""

    def __init__(self, plugins, ledger):
        self.plans: dict[str, SubscriptionPlan] = {}
        #: plan name → the plugin that registered it (the ledger's ``rule``)
        self.providers: dict[str, str] = {}
        for plugin, result in plugins.collect("regulars_register_subscription_plans"):
            for plan in result:
                if not isinstance(plan, SubscriptionPlan):
                    raise ConfigError(
                        f"plugin {plugin!r} registered {plan!r} as a subscription plan: expected "
                        "engine.rules_api.SubscriptionPlan"
                    )
                if plan.name in self.plans:
                    raise ConfigError(
                        f"plugins {self.providers[plan.name]!r} and {plugin!r} both register the "
                        f"subscription plan {plan.name!r}"
                    )
                self.plans[plan.name], self.providers[plan.name] = plan, plugin
        self.ledger = ledger
        #: ``(conn, customer_id, since, at) -> entries posted``: asks the
        #: customer's orders paid from ``since`` on again for their memberships'
        #: multipliers after an event changed which were active when (set by
        #: the Pipeline)
        self.reprice = None

    def plan(self, name: str) -> SubscriptionPlan:
        found = self.plans.get(name)
        if found is None:
            known = ", ".join(sorted(self.plans)) or "none"
            raise SubscriptionRefused(
                f"unknown subscription plan {name!r} (configured plans: {known}); "
                f"add a [rules.subscriptions.{name}] table to plugins.toml, then replay"
            )
        return found

    def active_plans(self, conn: Connection, customer_id: int) -> tuple[str, ...]:
        """The plans of the customer's memberships active now (by their status), sorted."""
        return tuple(sorted(conn.execute(_ACTIVE_PLANS, {"customer_id": customer_id}).scalars()))

    def plans_at(self, conn: Connection, customer_id: int, at: datetime) -> tuple[str, ...]:
        """The plans of the customer's memberships active at ``at`` by their
        events (``active_plan``), sorted: the same whatever order the events
        arrived in, and whether or not the ``subscription-check`` job ran."""
        return self.plans_among(self.histories(conn, customer_id), at)

    def histories(self, conn: Connection, customer_id: int) -> list[list]:
        """The events of each of the customer's memberships (``history``)."""
        return [h or [] for h in conn.execute(_HISTORIES, {"customer_id": customer_id}).scalars()]

    def plans_among(self, histories: list[list], at: datetime) -> tuple[str, ...]:
        """The plans of these memberships (their ``histories``) active at ``at``, sorted."""
        return tuple(sorted({p for p in (self.active_plan(h, at) for h in histories) if p is not None}))

    def active_plan(self, history: list, at: datetime) -> str | None:
        """The plan of a membership with these events if it was active at
        ``at``, else None: the newest event at or before ``at`` started,
        renewed or resumed it, and, for a plan with ``grace_days``, ``at`` is
        no later than the latest ``period_end`` of those events plus the grace."""
        moment = _moment(at)
        newest, period_end = None, None
        for stamp, plan, end in history:  # (oldest first)
            if stamp.split("|", 1)[0] > moment:
                break
            newest = (stamp, plan)
            if end is not None and (period_end is None or end > period_end):
                period_end = end
        if newest is None or int(newest[0].split("|", 2)[1]) not in _ACTIVATING:
            return None
        name = newest[1]
        return None if _lapses(self.plans.get(name), period_end and _parse(period_end), at) else name

    def lapse(self, conn: Connection, now: datetime) -> int | None:
        """Mark ``lapsed`` the active memberships of plans with ``grace_days``
        whose latest period ended more than ``grace_days`` before ``now``.
        Returns how many; None when no plan sets ``grace_days``."""
        plans = [plan for plan in self.plans.values() if plan.grace_days is not None]
        if not plans:
            return None
        now = now.astimezone(UTC)
        lapsed = 0
        for plan in sorted(plans, key=lambda p: p.name):
            # one statement: a concurrent event that renewed or paused the
            # membership first leaves it out (the condition is checked again)
            result = conn.execute(
                update(subscriptions)
                .where(subscriptions.c.plan == plan.name, subscriptions.c.status == ACTIVE,
                       subscriptions.c.current_period_end.is_not(None),
                       subscriptions.c.current_period_end < now - timedelta(days=plan.grace_days))
                .values(status=LAPSED, status_at=now, updated_at=utcnow())
            )
            lapsed += result.rowcount
        return lapsed

    def _lock(self, conn: Connection, channel: str, external_id: str):
        query = _SELECT_FOR_UPDATE if conn.dialect.name == "postgresql" else _SELECT
        return conn.execute(query, {"channel": channel, "external_id": external_id}).one_or_none()

    def apply(self, conn: Connection, event: dict, customer_id: int | None) -> int:
        """Merge one loaded ``subscription.*`` event into its subscription and
        post its points, in the caller's transaction. ``customer_id`` is who the
        event's hints found (None: the subscription's customer). Returns the
        entries posted; raises ``SubscriptionRefused`` saying why it can't."""
        kind = event["type"].split(".", 1)[1]
        sub = event["subscription"]
        channel, external_id, at = event["channel"], sub["id"], event["occurred_at"].astimezone(UTC)
        plan = self.plan(sub["plan"])
        period_end = sub.get("period_end")
        if period_end is not None:  # kept in UTC (SQLite keeps the wall time, not the offset)
            period_end = period_end.astimezone(UTC)
        stamp = _stamp(kind, at, event["idempotency_key"])

        row = self._lock(conn, channel, external_id)
        if row is None:
            if customer_id is None:
                raise SubscriptionRefused(
                    f"{event['type']} {external_id!r}: unknown subscription and no customer: give an email, "
                    "phone, card code or channel customer id"
                )
            now = utcnow()
            created = insert_ignore(
                conn,
                subscriptions,
                {"customer_id": customer_id, "channel": channel, "external_id": external_id, "plan": plan.name,
                 "status": STATUS[kind], "status_at": at, "status_stamp": stamp, "started_at": at,
                 "current_period_end": period_end, "history": [_entry(stamp, plan.name, period_end)],
                 "created_at": now, "updated_at": now},
                ["channel", "external_id"],
            )
            if created is None:  # a concurrent first event of the same subscription
                row = self._lock(conn, channel, external_id)
        since = at
        if row is not None:
            owner, customer_id = row.customer_id, self._merge(conn, row, kind, plan, at, period_end, stamp,
                                                              customer_id)
            if owner != customer_id:  # moved: every order of both, from the membership's start
                since = min(at, as_utc(row.started_at))
                customer_ids = sorted({owner, customer_id})
            else:
                customer_ids = [customer_id]
            if not any(entry[0] == stamp for entry in row.history or ()):
                posted = self._reprice(conn, customer_ids, since, at)
            else:
                posted = 0  # an event seen before: no moment's memberships changed
        else:
            posted = self._reprice(conn, [customer_id], since, at)
        return posted + self._post_points(conn, kind, plan, channel, external_id, customer_id, at, period_end,
                                          event["idempotency_key"])

    def _reprice(self, conn: Connection, customer_ids: list[int], since: datetime, at: datetime) -> int:
        """Orders paid from ``since`` on are asked again for their memberships'
        multipliers (``reprice``, set by the Pipeline)."""
        if self.reprice is None:
            return 0
        return sum(self.reprice(conn, customer_id, since, at) for customer_id in customer_ids)

    def _merge(self, conn, row, kind, plan, at, period_end, stamp, customer_id) -> int:
        """Fold one event into an existing subscription; returns whose it is."""
        values: dict = {}
        newer = stamp > row.status_stamp
        if newer:
            values.update(plan=plan.name, status=STATUS[kind], status_at=at, status_stamp=stamp)
            if customer_id is not None and customer_id != row.customer_id:
                values["customer_id"] = customer_id  # the channel gave it to someone else
        if at < as_utc(row.started_at):
            values["started_at"] = at
        history = [list(entry) for entry in row.history or ()]
        if not any(entry[0] == stamp for entry in history):
            values["history"] = sorted([*history, _entry(stamp, plan.name, period_end)])
        current_end = latest_end = as_utc(row.current_period_end)
        if period_end is not None and (current_end is None or period_end > current_end):
            values["current_period_end"] = latest_end = period_end
        if row.status == LAPSED and values.get("status", ACTIVE) == ACTIVE and (newer or latest_end != current_end):
            # judge the lapse again, at its time, with what is known now
            lapsed_at = as_utc(row.status_at)
            if _lapses(plan if newer else self.plans.get(row.plan), latest_end, lapsed_at):
                values.update(status=LAPSED, status_at=lapsed_at)
            else:  # the newest event's status, active, stands
                values.update(status=ACTIVE, status_at=at if newer else _stamp_time(row.status_stamp))
        if values:
            values["updated_at"] = utcnow()
            conn.execute(update(subscriptions).where(subscriptions.c.id == row.id).values(**values))
        return customer_id if customer_id is not None else row.customer_id

    def _post_points(self, conn, kind, plan, channel, external_id, customer_id, at, period_end, event_key) -> int:
        source = f"subscription:{channel}:{external_id}"
        if kind == "started":
            amount, key = plan.points_at_start, _entry_key(source, "started")
        elif kind == "renewed":
            period = period_end.astimezone(UTC).isoformat() if period_end is not None else event_key
            amount, key = plan.renewal_points, _entry_key(source, "renewed", period)
        else:
            return 0
        if not amount or conn.execute(select(ledger_entries.c.id).where(ledger_entries.c.key == key)).first():
            return 0
        detail = {"plan": plan.name, "event": kind,
                  "period_end": period_end.isoformat() if period_end is not None else None}
        self.ledger.post(conn, customer_id, UNIT_POINTS, amount, "subscription", source,
                         self.providers.get(plan.name), key, at, detail=detail)
        return 1

    def listing(self, conn: Connection, customer_id: int) -> list[dict]:
        """The customer's memberships, for ``customer show``: plan, status, since
        (when it started), period_end, and where it comes from."""
        rows = conn.execute(
            select(subscriptions).where(subscriptions.c.customer_id == customer_id)
            .order_by(subscriptions.c.started_at, subscriptions.c.id)
        ).all()
        return [_as_json(r) for r in rows]

    def state(self, conn: Connection, channel: str, external_id: str) -> dict | None:
        row = conn.execute(_SELECT, {"channel": channel, "external_id": external_id}).one_or_none()
        return _as_json(row) if row is not None else None


def _as_json(row) -> dict:
    period_end = as_utc(row.current_period_end)
    return {"plan": row.plan, "status": row.status, "since": as_utc(row.started_at).isoformat(),
            "period_end": period_end.isoformat() if period_end else None,
            "status_since": as_utc(row.status_at).isoformat(), "channel": row.channel, "id": row.external_id}


__all__ = ["ACTIONS", "ACTIVE", "LAPSED", "STATUS", "SubscriptionRefused", "Subscriptions"]
