"""The pipeline: one canonical event, applied in the caller's transaction.

connector → canonical event → inbox → **pipeline** → rules → ledger → outbox.

For an order event: resolve the customer, lock the order's row, merge the event
into the order's state (``engine.orders``), ask the rule plugins what the order
is worth now, and post the difference against what it already earned. The
ledger rows, the cached balances and the order's new state are written in that
one transaction, so an exception anywhere (a plugin's included) leaves nothing
behind.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import bindparam, case, func, null, select, text
from sqlalchemy.engine import Connection

from engine.cards import Cards
from engine.db import as_utc, utcnow
from engine.db.models import ledger_entries, orders, subscriptions
from engine.events import normalize_address
from engine.fastsql import Fast, is_deferring
from engine.identity import Identity
from engine.ledger import Ledger, typed_update
from engine.orders import AS_OF_READS, as_of, merge, view
from engine.plugins import PluginFailed, Plugins
from engine.referrals import Referrals
from engine.rewards import Rewards
from engine.rules_api import Award, Multiplier
from engine.subscriptions import SubscriptionRefused, Subscriptions
from engine.tiers import Tiers, points_of

_ORDER_COLUMNS = [c.name for c in orders.c]
# Finds or creates the order's row, locked, in one statement: the no-op
# update of an existing row takes its row lock on PostgreSQL (as SELECT ...
# FOR UPDATE did) and waits for a concurrent first delivery of the same order;
# SQLite's write lock is the transaction's.
_LOCK_ORDER = Fast(
    text(
        "INSERT INTO orders (channel, external_id, state, awarded, revision, eligible, created_at, updated_at) "
        "VALUES (:channel, :external_id, :state, :awarded, 0, 0, :now, :now) "
        "ON CONFLICT (channel, external_id) DO UPDATE SET channel = orders.channel "
        f"RETURNING {', '.join(_ORDER_COLUMNS)}"
    )
    .bindparams(
        bindparam("state", type_=orders.c.state.type),
        bindparam("awarded", type_=orders.c.awarded.type),
        bindparam("now", type_=orders.c.created_at.type),
    )
    .columns(*orders.c)
)
_ORDER_WRITE = ("state", "customer_id", "status", "eligible", "multipliers", "awarded", "revision", "paid_at",
                "updated_at")
_UPDATE_ORDER = Fast(typed_update(orders, _ORDER_WRITE))
_UPDATE_AWARDED = Fast(typed_update(orders, ("awarded", "revision", "updated_at")))
_UPDATE_TIERED = Fast(typed_update(orders, ("multipliers", "awarded", "revision", "updated_at")))
_SIBLINGS = (
    select(orders)
    .where(orders.c.customer_id == bindparam("customer_id"), orders.c.id != bindparam("order_id"),
           orders.c.paid_at.is_not(None))
    .order_by(orders.c.id)
)
_SIBLINGS_FOR_UPDATE = _SIBLINGS.with_for_update()
# The customer's orders paid from a moment on, oldest payment first (memberships asked again).
_PAID_FROM = (
    select(orders)
    .where(orders.c.customer_id == bindparam("customer_id"), orders.c.paid_at >= bindparam("since"))
    .order_by(orders.c.paid_at, orders.c.id)
)
# The customer's orders paid in the tiers' window before the walk's first order,
# oldest payment first: whole, or light: the points they earned as they stand
# now and the parts of their state ``as_of`` reads; the state itself is read
# only for one that changed after a moment the metric asks about
# (engine.orders.AS_OF_READS).
_WINDOW = (orders.c.customer_id == bindparam("customer_id"), orders.c.paid_at > bindparam("after"),
           orders.c.paid_at < bindparam("before"))
_EARLIER = select(orders).where(*_WINDOW).order_by(orders.c.paid_at, orders.c.id)
# Most orders were never refunded nor cancelled: nothing in them happened after
# their payment, and their parts are not even decoded (they read as NULL).
_PLAIN = (orders.c.state["reversed_at"].as_string().is_(None)
          & (func.coalesce(orders.c.state["refunds"].as_string(), "{}") == "{}"))
_EARLIER_LIGHT = (
    select(orders.c.id, orders.c.paid_at, orders.c.awarded, _PLAIN.label("plain"),
           *(case((_PLAIN, null()), else_=orders.c.state[part]).label(part) for part in AS_OF_READS))
    .where(*_WINDOW)
    .order_by(orders.c.paid_at, orders.c.id)
)
_ORDER = select(orders).where(orders.c.id == bindparam("order_id"))


def _returned(plugin: str, hook: str, result, kind: type) -> list:
    """A decision hook's result as the list of ``kind`` it must be; anything
    else (one ``Award`` bare, a number, a dict, an item of another type, an
    ``Award`` changed after it was made) fails naming the plugin."""
    if isinstance(result, kind | str | bytes | dict) or not isinstance(result, Iterable):
        raise PluginFailed(plugin, hook, TypeError(
            f"expected a list of {kind.__name__}, got {_short(result)}"))
    try:
        items = list(result)  # (a generator runs the plugin's code here)
        for item in items:
            if not isinstance(item, kind):
                raise TypeError(f"expected {kind.__name__}, got {_short(item)}")
            item.check()
    except (Exception, SystemExit) as exc:
        raise PluginFailed(plugin, hook, exc) from exc
    return items


def _under(customer, changes: list):
    """The customer as the decision hooks see them under these tier changes."""
    return replace(customer, tier_changes=tuple(changes), tier=changes[-1][1] if changes else None)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


class EventRefused(ValueError):
    """An event that is well-formed but can't be applied (a visit by nobody)."""


class Pipeline:
    def __init__(self, plugins: Plugins, identity: Identity, ledger: Ledger, rewards: Rewards, cards: Cards, tiers: Tiers,
                 referrals: Referrals, subscriptions: Subscriptions | None = None):
        self.plugins = plugins
        self.identity = identity
        self.ledger = ledger
        self.rewards = rewards
        self.cards = cards
        self.tiers = tiers
        self.referrals = referrals
        self.subscriptions = subscriptions
        # The stamp cards an event touched, settled at its end: per thread, since
        # one engine applies events on several threads at once (the webhook
        # applier, the till's requests), each its own transaction.
        self._event = threading.local()
        # Plugins whose awards depend on the customer's other orders: they get
        # ``history`` and are asked again about those orders when one changes.
        self.history_plugins = {
            impl.plugin_name
            for impl in plugins.pm.hook.regulars_order_awards.get_hookimpls()
            if "history" in impl.argnames
        }
        #: the plugins that give the tier programme: their multiplier is asked
        #: again when an upgrade is found in an order's past (``_retier``)
        self.tier_plugins = {impl.plugin_name for impl in plugins.pm.hook.regulars_register_tier_program.get_hookimpls()}
        if tiers.program:
            identity.retier = self._retier_merged
        #: the plugins that give membership plans: their multiplier is asked
        #: again when a subscription event changes which plans were active when
        self.membership_plugins = {
            impl.plugin_name for impl in plugins.pm.hook.regulars_register_subscription_plans.get_hookimpls()}
        if subscriptions is not None and subscriptions.plans:
            subscriptions.reprice = self.reprice_memberships
            identity.reprice = self._reprice_merged

    def apply(self, conn: Connection, event: dict) -> int:
        """Apply one loaded canonical event; returns how many entries it posted."""
        metrics = self.ledger.metrics
        if metrics is None:
            return self._apply(conn, event)
        # The dashboard's counters change in memory and are written once, at the end.
        with metrics.collecting(conn):
            return self._apply(conn, event)

    def _apply(self, conn: Connection, event: dict) -> int:
        kind = event["type"]
        self._event.cards = set()  # (this thread's event starts)
        if kind.startswith("order."):
            posted = self.apply_order(conn, event)
        elif kind == "visit":
            posted = self.apply_visit(conn, event)
        elif kind.startswith("subscription."):
            posted = self.apply_subscription(conn, event)
        elif kind == "coupon.used":
            return self.apply_coupon(conn, event)
        elif kind.startswith("privacy."):
            from engine.privacy import apply_request

            apply_request(conn, self.identity, event)
            return 0
        else:
            customer_id = self.identity.resolve(conn, event["channel"], event["customer"], event["occurred_at"])
            if customer_id is not None and self.referrals.program and normalize_address(event["customer"].get("address")):
                # an address they may not have shipped to: as a referrer
                return self.referrals.referrer_moved(conn, customer_id, event["occurred_at"])
            return 0
        for customer_id, unit in sorted(self.cards_to_settle):
            self.cards.settle(conn, customer_id, unit, event["occurred_at"])
        return posted

    @property
    def cards_to_settle(self) -> set[tuple[int, str]]:
        """``(customer id, unit)`` of the stamp cards the event being applied on
        this thread posted to."""
        cards = getattr(self._event, "cards", None)
        if cards is None:
            cards = self._event.cards = set()
        return cards

    # -- orders -------------------------------------------------------------

    def _lock_order(self, conn: Connection, channel: str, external_id: str, ahead: bool = False):
        now = utcnow()
        params = {"channel": channel, "external_id": external_id, "state": {}, "awarded": {}, "now": now}
        return _LOCK_ORDER.ahead(conn, params) if ahead else _LOCK_ORDER.first(conn, params)

    def apply_order(self, conn: Connection, event: dict) -> int:
        channel, external_id = event["channel"], event["order"]["id"]
        at = event["occurred_at"]
        # On PostgreSQL (inside fastsql.deferring) the order's row is found or
        # created and locked in the round trip of the customer's look-up. Not
        # when history plugins are on: they lock the customer's other orders
        # after the customer, so this order must be locked after the customer too.
        # The customers the hints find are locked, their counters read, or a
        # new one's id taken, in that round trip too (Identity.prepare).
        order_ahead = prepared = None
        if is_deferring(conn) and not self.history_plugins:
            order_ahead = self._lock_order(conn, channel, external_id, ahead=True)
            prepared = self.identity.prepare(conn, channel, event["customer"], at)
        resolved = self.identity.resolve_view(conn, channel, event["customer"], at, prepared)
        if resolved is not None and self.ledger.metrics is not None:
            self.ledger.metrics.prefetch(conn, resolved.id, prepared.footprints if prepared is not None else None)
        row = order_ahead.rows()[0] if order_ahead is not None else self._lock_order(conn, channel, external_id)
        state = merge(row.state or None, event)
        previous = row.customer_id
        if previous is not None and (resolved is None or resolved.id != previous):
            previous = self.identity.follow(conn, previous)  # merged since?
        customer_id = resolved.id if resolved is not None else previous
        unlocked = sorted({c for c in (previous, customer_id) if c is not None} - {resolved.id if resolved else None})
        if unlocked:  # a customer this event writes for that resolving did not lock (hints gone, a move)
            self.identity.lock(conn, unlocked)
        awarded = dict(row.awarded or {})
        multipliers = row.multipliers
        if state == row.state and customer_id == row.customer_id:
            return 0  # nothing new: a duplicate in all but its key

        posted = 0
        if previous is not None and customer_id != previous and awarded:
            # The channel moved the order to another customer: take back what it
            # earned the first one; the new one earns it below.
            posted += self._post_differences(conn, row, previous, {}, awarded, "reassign", at, None, "")
            awarded = {}

        order = view(row.id, channel, external_id, state, multipliers)
        if customer_id is not None:
            customer = resolved if resolved is not None else self.identity.view(conn, customer_id)
            customer = self._with_plans(conn, customer, order.paid_at or at)
            # Multipliers are asked once, when the order is first awardable, and
            # kept; again only if an earlier payment turns up late (paid_at moved),
            # since a multiplier may depend on when the order was paid: then even
            # if it is no longer awardable (cancelled since), as the tiers count
            # it as it stood when paid with them (_tier_metric).
            paid_at_moved = row.paid_at is not None and order.paid_at != as_utc(row.paid_at)
            if paid_at_moved and awarded:  # the points it earned count from its payment
                self.ledger.redate_lots(conn, customer_id, f"order:{channel}:{external_id}", order.paid_at)
            if (order.awardable and multipliers is None) or (multipliers is not None and paid_at_moved):
                if self.tiers.program:
                    customer = replace(customer, tier_changes=self.tiers.changes(conn, customer_id))
                multipliers = self._multipliers(order, customer)
                order = replace(order, multipliers=tuple(tuple(m) for m in multipliers))
            siblings = self._siblings(conn, customer_id, row.id) if self.history_plugins else []
            history = [sibling_view for _, sibling_view in siblings]
            targets = self._awards("regulars_order_awards", order=order, customer=customer, history=history)
            reason = "order" if order.awardable else ("cancel" if order.cancelled else "unpaid")
            posted += self._post_differences(
                conn, row, customer_id, targets, awarded, reason, at, multipliers, str(order.eligible), order.paid_at
            )
            awarded = {k: v for k, v in targets.items() if v}
            if order.awardable and order.discount_codes and self.rewards.catalogue.entries:
                # coupon.used: a paid order that carries a reward's code spends it
                self.rewards.mark_used(conn, customer_id, order.discount_codes, f"order:{channel}:{external_id}", at)

        _UPDATE_ORDER.later(  # on PostgreSQL, with the next statement (engine.fastsql.deferring)
            conn,
            {
                "b_id": row.id,
                "state": state,
                "customer_id": customer_id,
                "status": order.status,
                "eligible": order.eligible,
                "multipliers": multipliers,
                "awarded": awarded,
                "revision": row.revision + 1,
                "paid_at": order.paid_at,
                "updated_at": utcnow(),
            },
        )
        if self.ledger.metrics is not None:
            self.ledger.metrics.order_changed(conn, row, customer_id, order.paid_at, order.eligible)
        if customer_id is not None and self.history_plugins:
            posted += self._ask_again_about(conn, siblings, order, customer, at)
        if self.referrals.program and customer_id is not None:
            posted += self.referrals.on_order(conn, order, customer_id, at)
            if order.address and (customer_id != row.customer_id
                                  or order.address != ((row.state or {}).get("snapshot") or {}).get("address")):
                # an address this customer may not have shipped to: as a referrer
                posted += self.referrals.referrer_moved(conn, customer_id, at)
        if self.tiers.program:  # upgrades decided again from the order's paid time on (engine.tiers)
            if customer_id is not None and order.paid_at is not None:
                posted += self._retier(conn, customer_id, order.paid_at, at)
            if previous is not None and previous != customer_id and row.paid_at is not None:
                posted += self._retier(conn, previous, as_utc(row.paid_at), at)  # the order left them
        return posted

    def _siblings(self, conn: Connection, customer_id: int, order_id: int) -> list:
        """The customer's other paid orders, locked, with their views."""
        query = _SIBLINGS_FOR_UPDATE if conn.dialect.name == "postgresql" else _SIBLINGS
        rows = conn.execute(query, {"customer_id": customer_id, "order_id": order_id})
        return [(r, view(r.id, r.channel, r.external_id, r.state, r.multipliers)) for r in rows]

    def _ask_again_about(self, conn: Connection, siblings: list, changed, customer, at: datetime) -> int:
        """Let history plugins re-decide the customer's other orders now that
        one of them changed (a first order cancelled, an earlier one arrived)."""
        posted = 0
        for sibling, sibling_view in siblings:
            history = [changed, *(v for r, v in siblings if r.id != sibling.id)]
            targets = self._awards("regulars_order_awards", only=self.history_plugins,
                                   order=sibling_view, customer=customer, history=history)
            awarded = dict(sibling.awarded or {})
            mine = {k: v for k, v in awarded.items() if k.split("|", 1)[0] in self.history_plugins}
            if {k: v for k, v in targets.items() if v} == mine:
                continue
            reason = "order" if sibling_view.awardable else ("cancel" if sibling_view.cancelled else "unpaid")
            posted += self._post_differences(conn, sibling, customer.id, targets, mine, reason, at,
                                             sibling.multipliers, str(sibling_view.eligible), sibling_view.paid_at)
            kept = {k: v for k, v in awarded.items() if k not in mine}
            kept.update({k: v for k, v in targets.items() if v})
            _UPDATE_AWARDED.execute(conn, {"b_id": sibling.id, "awarded": kept, "revision": sibling.revision + 1,
                                           "updated_at": utcnow()})
        return posted

    def _retier(self, conn: Connection, customer_id: int, since: datetime, at: datetime) -> int:
        """Decide the customer's upgrades again from ``since`` on: walk their
        orders paid since then in paid-time order; ask each what the tier
        plugin's multiplier is under the upgrades found so far (repost the
        difference when it changed), then upgrade at its paid time when the
        metric there reaches a higher level. The metric counts each order in
        the window as it stood at that moment (``engine.orders.as_of``), so the
        result is the same whatever order the deliveries came in."""
        tiers = self.tiers
        window = timedelta(days=tiers.program.window_days)
        before = list(tiers.changes(conn, customer_id))
        changes = tiers.rewind(conn, customer_id, since)
        rows = conn.execute(_PAID_FROM, {"customer_id": customer_id, "since": since}).all()
        if not rows and before == changes:
            return 0
        customer = self._with_plans(conn, self.identity.view(conn, customer_id))
        orders_in = _Window(conn)
        earlier = {"customer_id": customer_id, "after": since - window, "before": since}
        if self.history_plugins or tiers.program.metric == "spend":
            # (history plugins see every order; spend is read from the state, exact
            # to the last digit, where the orders table keeps four)
            orders_in.add_whole(conn.execute(_EARLIER, earlier).all())
        else:
            orders_in.add_light(conn.execute(_EARLIER_LIGHT, earlier).all())
        orders_in.add_whole(rows)
        views, awarded = orders_in.views, orders_in.awarded
        posted = 0
        for r in rows:
            paid_at = views[r.id].paid_at
            if r.multipliers is not None and self.tier_plugins:
                posted += self._ask_tier_again(conn, r, views, awarded, customer_id, _under(customer, before),
                                               _under(customer, changes), at)
            held = tiers.held(changes, paid_at)
            if held == tiers.program.levels[-1].name:
                continue
            who = _under(customer, changes)
            metric = self._tier_metric(conn, orders_in, paid_at, window, who)
            earned = tiers.earned(metric)
            if tiers.rank(earned) > tiers.rank(held):
                tiers.upgrade(conn, customer_id, held, earned, metric, paid_at)
                changes = sorted([*changes, (paid_at, earned)], key=lambda change: change[0])
        tiers.settled(conn, customer_id, changes)
        return posted

    def _retier_merged(self, conn: Connection, customer_id: int, at: datetime) -> None:
        """After a merge: the survivor's upgrades again, from their first paid order."""
        first = conn.execute(select(func.min(orders.c.paid_at)).where(orders.c.customer_id == customer_id)).scalar()
        if first is not None:
            self._retier(conn, customer_id, as_utc(first), at)

    def _ask_tier_again(self, conn, row, views, awarded, customer_id, before, now, at: datetime) -> int:
        """The tier plugin's multiplier of an order again (one whose multipliers
        were asked), under the upgrades as they now stand; when it changed, the
        order's points are asked again with it (its other multipliers as they
        were) and the difference posted."""
        order = views[row.id]
        old = self._multipliers(order, before, self.tier_plugins)
        new = self._multipliers(order, now, self.tier_plugins)
        if old == new:
            return 0
        return self._swap_multipliers(conn, row, views, awarded, customer_id, old, new, now, at)

    def _swap_multipliers(self, conn, row, views, awarded, customer_id, old, new, customer, at: datetime) -> int:
        """An order's multipliers with ``old`` replaced by ``new``; its points
        asked again with them and the difference posted."""
        order = views[row.id]
        multipliers = [list(m) for m in row.multipliers or ()]
        for item in old:
            if item in multipliers:
                multipliers.remove(item)
        multipliers.extend(new)
        order = views[row.id] = replace(order, multipliers=tuple(tuple(m) for m in multipliers))
        history = [v for _, v in self._siblings(conn, customer_id, row.id)] if self.history_plugins else []
        targets = self._awards("regulars_order_awards", order=order, customer=customer, history=history)
        posted = self._post_differences(conn, row, customer_id, targets, awarded[row.id], "order", at, multipliers,
                                        str(order.eligible), order.paid_at)
        awarded[row.id] = {k: v for k, v in targets.items() if v}
        _UPDATE_TIERED.execute(conn, {"b_id": row.id, "multipliers": multipliers, "awarded": awarded[row.id],
                                      "revision": row.revision + 1, "updated_at": utcnow()})
        return posted

    def reprice_memberships(self, conn: Connection, customer_id: int, since: datetime, at: datetime) -> int:
        """After a subscription event (or a merge) changed which memberships
        were active when: the customer's awarded orders paid from ``since`` on
        are asked again for the membership plugins' multipliers under the plans
        active at their ``paid_at``; an order whose multipliers changed is
        asked again for its points (its other multipliers as they were) and
        the difference posted. Then the tier upgrades are decided again from
        the first order that changed, as its points count for them (or from
        the first one never awarded, which they count as it would have been)."""
        self.identity.lock(conn, [customer_id])
        rows = conn.execute(_PAID_FROM, {"customer_id": customer_id, "since": since}).all()
        if not rows:
            return 0
        customer = self.identity.view(conn, customer_id)
        histories = self.subscriptions.histories(conn, customer_id)
        everything = replace(customer, plans=tuple(sorted(self.subscriptions.plans)))
        views = {r.id: view(r.id, r.channel, r.external_id, r.state, r.multipliers) for r in rows}
        awarded = {r.id: dict(r.awarded or {}) for r in rows}
        posted, first = 0, None
        for r in rows:
            order = views[r.id]
            if order.paid_at is None:
                continue
            if r.multipliers is None:
                # never awarded (cancelled before its payment arrived): nothing to
                # post, but the tiers count it as it stood when paid, under the
                # memberships active then (``_tier_metric``), which may have changed
                first = first if first is not None else order.paid_at
                continue
            then = replace(customer, plans=self.subscriptions.plans_among(histories, order.paid_at))
            new = self._multipliers(order, then, self.membership_plugins)
            # what the order holds from these plugins: any item they can give
            # (asked with every plan), whichever customer's memberships it was
            # awarded under (a merge brings orders awarded under another's)
            names = {name for name, _ in self._multipliers(order, everything, self.membership_plugins)}
            names.update(name for name, _ in new)
            old = [list(m) for m in r.multipliers if m[0] in names]
            if sorted(old) == sorted(new):
                continue
            posted += self._swap_multipliers(conn, r, views, awarded, customer_id, old, new, then, at)
            first = first if first is not None else order.paid_at
        if first is not None and self.tiers.program:
            posted += self._retier(conn, customer_id, first, at)
        return posted

    def _reprice_merged(self, conn: Connection, customer_id: int, at: datetime) -> None:
        """After a merge: the survivor's orders paid since their first
        membership began, under every membership now theirs."""
        first = conn.execute(select(func.min(subscriptions.c.started_at))
                             .where(subscriptions.c.customer_id == customer_id)).scalar()
        if first is not None:
            self.reprice_memberships(conn, customer_id, as_utc(first), at)

    def _tier_metric(self, conn, orders_in: _Window, moment: datetime, window: timedelta, customer) -> Decimal:
        """Points earned (or eligible spend) by the orders paid in the window up
        to ``moment``, each as it stood then."""
        spend = self.tiers.program.metric == "spend"
        views, awarded = orders_in.views, orders_in.awarded
        total = Decimal(0)
        for order_id, paid_at, eligible, timing in orders_in.entries:
            if not moment - window < paid_at <= moment:
                continue
            if not timing or as_of(timing, moment) is timing:  # nothing in it happened after the moment
                total += eligible if spend else points_of(awarded[order_id])
                continue
            r = orders_in.whole(order_id)
            past = as_of(r.state, moment)
            if r.multipliers is not None:
                multipliers = views[r.id].multipliers  # (the tier's as the walk asked it again)
            else:  # never awarded yet (cancelled before its payment arrived): as it would have been
                then = self._with_plans(conn, customer, paid_at)
                multipliers = self._multipliers(view(r.id, r.channel, r.external_id, past, None), then)
            then = view(r.id, r.channel, r.external_id, past, multipliers)
            if spend:
                total += then.eligible
            else:
                history = [v for other, v in views.items() if other != r.id] if self.history_plugins else []
                total += points_of(self._awards("regulars_order_awards", order=then, customer=customer,
                                                history=history))
        return total

    def _multipliers(self, order, customer, only: set[str] | None = None) -> list[list[str]]:
        frozen = []
        hook = "regulars_order_multipliers"
        for plugin, result in self.plugins.collect(hook, only=only, order=order, customer=customer):
            for item in _returned(plugin, hook, result, Multiplier):
                frozen.append([item.name, str(item.factor)])
        return frozen

    def _awards(self, hook: str, only: set[str] | None = None, **kwargs) -> dict[str, int]:
        """``{"plugin|unit": amount}`` summed over every plugin's awards (or
        only those of the plugins named)."""
        totals: dict[str, int] = defaultdict(int)
        for plugin, result in self.plugins.collect(hook, only=only, **kwargs):
            for award in _returned(plugin, hook, result, Award):
                totals[f"{plugin}|{award.unit}"] += award.amount
        return dict(totals)

    def _post_differences(
        self, conn, row, customer_id, targets, awarded, reason, at: datetime, multipliers, eligible,
        paid_at: datetime | None = None,
    ) -> int:
        """Post what the order earns now (``targets``) less what it earned
        (``awarded``); points gained are dated from its payment (``paid_at``)."""
        posted = 0
        source = f"order:{row.channel}:{row.external_id}"
        for key in sorted(set(targets) | set(awarded)):
            diff = targets.get(key, 0) - awarded.get(key, 0)
            if not diff:
                continue
            plugin, unit = key.split("|", 1)
            entry_reason = reason if reason != "order" else ("order" if diff > 0 else "refund")
            self.cards_to_settle.add((customer_id, unit))
            self.ledger.post(
                conn,
                customer_id,
                unit,
                diff,
                entry_reason,
                source,
                plugin,
                f"order:{row.id}:{row.revision + 1}:{customer_id}:{key}",
                at,
                detail={"eligible": eligible, "multipliers": multipliers},
                pending=entry_reason == "order",
                earned_at=paid_at,
            )
            posted += 1
        return posted

    def apply_coupon(self, conn: Connection, event: dict) -> int:
        """``coupon.used``: the reward with this code is spent (once; a code is
        unguessable, so it is found by itself)."""
        coupon = event["coupon"]
        where = f"order:{event['channel']}:{coupon['order_id']}" if coupon.get("order_id") else event["channel"]
        self.rewards.mark_used(conn, None, [coupon["code"]], where, event["occurred_at"])
        return 0

    # -- visits -------------------------------------------------------------

    def apply_visit(self, conn: Connection, event: dict) -> int:
        at = event["occurred_at"]
        customer_id = self.identity.resolve(conn, event["channel"], event["customer"], at)
        if customer_id is None:
            raise EventRefused("a visit needs a customer: give an email, phone, card code or channel id")
        if self.ledger.metrics is not None:
            self.ledger.metrics.visited(conn, customer_id, event["channel"], at)
        visit = {**event["visit"], "occurred_at": at, "channel": event["channel"]}
        customer = self._with_plans(conn, self.identity.view(conn, customer_id), at)
        source = f"visit:{event['channel']}:{visit['id']}"
        awards = self._awards("regulars_visit_awards", visit=visit, customer=customer)
        units = self._post_once(conn, customer_id, awards, "visit", source, source, at)
        self.cards_to_settle.update((customer_id, unit) for unit in units)
        return len(units)

    def _post_once(self, conn: Connection, customer_id: int, awards: dict[str, int], reason: str, source: str,
                   keyed: str, at: datetime, gifts_only: bool = False) -> list[str]:
        """Post each of ``awards`` (``{"plugin|unit": amount}``) once: its
        entry's key is ``keyed:plugin|unit``, and one posted before (a retry)
        is not posted again; nothing for 0 (or, ``gifts_only``, less). The
        units posted."""
        units = []
        for key, amount in sorted(awards.items()):
            entry_key = f"{keyed}:{key}"
            if not amount or (gifts_only and amount < 0):
                continue
            if conn.execute(select(ledger_entries.c.id).where(ledger_entries.c.key == entry_key)).first():
                continue
            plugin, unit = key.split("|", 1)
            self.ledger.post(conn, customer_id, unit, amount, reason, source, plugin, entry_key, at)
            units.append(unit)
        return units

    # -- birthdays ------------------------------------------------------------

    def apply_birthday(self, conn: Connection, customer_id: int, day: date, at: datetime) -> int:
        """Post what the plugins say a customer's birthday ``day`` is worth
        (``regulars_birthday_awards``), once per birthday, plugin and unit;
        how many entries were posted. Called by the ``birthday-gifts`` job
        (engine.birthdays), which picks the customers."""
        customer = self._with_plans(conn, self.identity.view(conn, customer_id), at)
        awards = self._awards("regulars_birthday_awards", customer=customer, day=day)
        units = self._post_once(conn, customer_id, awards, "birthday", f"birthday:{day.isoformat()}",
                                f"birthday:{customer_id}:{day.year}", at, gifts_only=True)
        for unit in units:
            self.cards.settle(conn, customer_id, unit, at)  # a stamp card it fills issues its reward
        return len(units)

    # -- subscriptions --------------------------------------------------------

    def apply_subscription(self, conn: Connection, event: dict) -> int:
        if self.subscriptions is None:
            raise EventRefused(f"{event['type']}: this engine keeps no subscriptions")
        customer_id = self.identity.resolve(conn, event["channel"], event["customer"], event["occurred_at"])
        try:
            return self.subscriptions.apply(conn, event, customer_id)
        except SubscriptionRefused as exc:
            raise EventRefused(str(exc)) from None

    def _with_plans(self, conn: Connection, customer, at: datetime | None = None):
        """The customer with their membership plans active at ``at`` (by the
        memberships' events; without ``at``: active now, by their status), for
        the decision hooks; no query at all when no plans are configured."""
        if self.subscriptions is None or not self.subscriptions.plans:
            return customer
        if at is None:
            return replace(customer, plans=self.subscriptions.active_plans(conn, customer.id))
        return replace(customer, plans=self.subscriptions.plans_at(conn, customer.id, at))


#: the state parts of an order read light that was never refunded nor cancelled (never changed)
_NOTHING_LATER: dict = {}


class _Window:
    """The orders of a tiers' walk (``Pipeline._retier``), oldest payment
    first: ``entries`` ``(id, paid_at, eligible spend or None when read
    light, the parts of its state as_of reads)``; ``awarded`` by id; and
    ``views`` by id of the orders read whole (the walked ones, and any the
    metric needed whole: ``whole``)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.views: dict = {}
        self.awarded: dict = {}
        self.entries: list[tuple] = []
        self.rows: dict = {}

    def add_whole(self, rows) -> None:
        for r in rows:
            self._keep(r)
            order = self.views[r.id]
            self.entries.append((r.id, order.paid_at, order.eligible, r.state))

    def add_light(self, rows) -> None:
        for r in rows:
            self.awarded[r.id] = dict(r.awarded or {})
            if r.plain:  # nothing in it happened after its payment
                timing = _NOTHING_LATER
            else:
                timing = {part: getattr(r, part) for part in AS_OF_READS if getattr(r, part) is not None}
            self.entries.append((r.id, as_utc(r.paid_at), None, timing))

    def whole(self, order_id: int):
        """The order's row (read now if it was read light), with its view."""
        if order_id not in self.rows:
            self._keep(self.conn.execute(_ORDER, {"order_id": order_id}).one())
        return self.rows[order_id]

    def _keep(self, r) -> None:
        self.rows[r.id] = r
        self.views.setdefault(r.id, view(r.id, r.channel, r.external_id, r.state, r.multipliers))
        self.awarded.setdefault(r.id, dict(r.awarded or {}))


__all__ = ["EventRefused", "Pipeline"]
