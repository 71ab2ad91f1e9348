"""The plugin API of regulars: every hook a plugin can implement.

This module is what plugin authors read. A plugin is any object (a module, a
class instance) with functions named like the specs below and marked with
``@hookimpl``; the built-in rules, connectors and campaigns are plugins exactly
like third-party ones. Hooks take keyword arguments only, so a spec can gain an
argument later and an implementation may accept just the ones it needs.

A plugin declares its settings with two attributes:

- ``table``: the ``plugins.toml`` table it owns, e.g. ``"rules.points"``; the
  plugin is on when that table is present;
- ``settings_schema``: a marshmallow ``Schema`` class for that table. A wrong key
  or value stops the start with the file, the table, the key and what was
  expected. The plugin's factory receives only its own validated table.

There are two kinds of hook:

*Registration* hooks are called once, when the engine starts. They return typed
objects, and the engine refuses two providers of the same name, naming both.

*Decision* hooks run inside the ledger transaction of the event being applied.
They must be pure functions of what they receive: no I/O, no clock (use the
``occurred_at`` they are given). They run with no timeout, and on SQLite their
transaction holds the database's only write lock: a slow hook stalls every
other write. What they receive is shared by every plugin and read-only (an
order's ``lines`` and ``attributes`` are read-only mappings). If one raises
(``sys.exit()`` included), returns anything but a list of the typed values its
spec names, or an amount out of range (``engine.rules_api.MAX_AMOUNT``,
``MAX_FACTOR``), the whole event is rolled back, recorded as failed with the
plugin's name and the error, and can be replayed once the plugin is fixed;
other events go on.

A plugin installed with an entry point must have a ``table``, and a name (the
entry point's) no other plugin has; either mistake stops the start.
"""

from __future__ import annotations

import pluggy

PROJECT = "regulars"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- Registration --------------------------------------------------------------


@hookspec
def regulars_register_connectors():
    """Register sales-channel connectors.

    Called once at start.

    :return: a list of ``connectors.base.Connector`` instances. All results are
        collected; two connectors for the same ``channel`` stop the start,
        naming both plugins.
    """


@hookspec
def regulars_register_reward_kinds():
    """Register kinds of reward for the catalogue (``[rewards.*]`` in plugins.toml).

    Called once at start, before the catalogue is validated.

    :return: a list of ``engine.rules_api.RewardKind``. All results are
        collected; two kinds with the same name stop the start, naming both
        plugins.
    """


@hookspec
def regulars_register_stamp_cards():
    """Register stamp cards.

    Called once at start. The engine keeps each card: when awards bring the
    ``stamps:<name>`` balance to ``required``, it issues the card's reward and
    starts the card again, extra stamps carried over; when a refund takes stamps
    back from a completed card, the reward is voided if still unused.

    :return: a list of ``engine.rules_api.StampCard``. All results are
        collected; two cards with the same name stop the start, naming both
        plugins, and a card whose reward is not in the catalogue stops it too.
    """


@hookspec(firstresult=True)
def regulars_points_policy():
    """Say how points age: expiry, pending days, reminders.

    Called once at start.

    :return: an ``engine.rules_api.PointsPolicy``, or None. The first non-None
        result wins (the built-in ``[rules.expiry]`` plugin gives one).
    """


@hookspec(firstresult=True)
def regulars_register_tier_program():
    """Give the tiers the engine keeps: upgrades as soon as a customer's metric
    reaches a threshold, downgrades at the review job, a history per customer.

    Called once at start. The plugin that gives the programme is the one whose
    ``regulars_order_multipliers`` the engine asks again when an upgrade turns
    up in an order's past (an earlier order delivered late): its multiplier must
    depend on the tier (``customer.tier_at(order.paid_at)``) and nothing else
    that changes.

    :return: an ``engine.rules_api.TierProgram``, or None. The first non-None
        result wins (the built-in ``[rules.tiers]`` plugin gives one).
    """


@hookspec(firstresult=True)
def regulars_register_referral_program():
    """Give the referral programme the engine keeps: claims of codes, the
    guards, and both rewards on the referee's first paid order.

    Called once at start.

    :return: an ``engine.rules_api.ReferralProgram``, or None. The first
        non-None result wins (the built-in ``[rules.referrals]`` gives one).
    """


@hookspec
def regulars_register_subscription_plans():
    """Register membership plans. The engine keeps each customer's
    subscriptions from ``subscription.*`` events (newest event by event time
    wins the status), posts a plan's start points once per subscription and its
    renewal points once per renewal, and fills ``customer.plans`` with the
    plans of the customer's memberships active when the order was paid (or
    the visit made) for the decision hooks (a plan's multiplier is its
    plugin's to give in ``regulars_order_multipliers``). When a late event
    changes which plans were active at an order's payment, the plugins that
    register plans are asked again for that order's multipliers with the plans
    as they now stand, and the difference in points is posted: their
    multiplier must depend on the order and ``customer.plans`` only, and each
    plan's item must keep its name whatever other plans are active.

    Called once at start. An event naming a plan nobody registered fails,
    naming the plan, and can be replayed once it is configured.

    :return: a list of ``engine.rules_api.SubscriptionPlan``. All results are
        collected; two plans with the same name stop the start, naming both
        plugins.
    """


# -- Decisions (inside the ledger transaction) ----------------------------------


@hookspec
def regulars_order_multipliers(order, customer):
    """Say which multipliers apply to an order's points.

    Called the first time an order becomes awardable (paid and not cancelled),
    and again only if an earlier payment of it arrives late (its ``paid_at``
    moves). The result is stored with the order and reused for every later
    change to it (a refund is recomputed with the multipliers the order was
    awarded with). The tier programme's plugin alone is also asked again when
    the customer's upgrades before the order's payment change (see
    ``regulars_register_tier_program``); its part of the stored result is then
    replaced.

    :param order: the ``engine.orders.OrderView`` being awarded.
    :param customer: the ``engine.identity.CustomerView`` who placed it.
    :return: a list of ``engine.rules_api.Multiplier`` (name, factor), or None.
        All results are collected; the factors multiply.
    """


@hookspec
def regulars_order_awards(order, customer, history):
    """Say what an order is worth, as it stands now.

    Called every time an order's merged state changes (paid, updated, refunded,
    cancelled). Return the *total* the order should have earned in each unit,
    not a difference: the engine posts the difference against what the order
    already earned, so duplicates and reordered deliveries converge.

    :param order: the ``engine.orders.OrderView``; ``order.eligible`` is the
        eligible spend still standing after refunds (zero when cancelled,
        fully refunded or not paid), ``order.multiplier`` the product of the
        stored multipliers.
    :param customer: the ``engine.identity.CustomerView`` who placed it.
    :param history: the customer's other paid orders (``OrderView``, as they
        stand now, cancelled and refunded ones included). Only implementations
        that take ``history`` get it, and only they are asked again, in the same
        transaction, about each of those orders whenever one of the customer's
        orders changes: a decision that depends on other orders ("the first
        order") then stays the same whatever order deliveries came in.
    :return: a list of ``engine.rules_api.Award`` (unit, amount, reason), or
        None. All results are collected; awards for the same unit add up.
    """


@hookspec
def regulars_visit_awards(visit, customer):
    """Say what a counter visit (a ``visit`` event, no purchase) is worth.

    Called once per visit event.

    :param visit: the loaded ``visit`` event dict (``id``, ``location``,
        ``occurred_at``, ``channel``).
    :param customer: the ``engine.identity.CustomerView`` who visited.
    :return: a list of ``engine.rules_api.Award``, or None. All results are
        collected.
    """


@hookspec
def regulars_birthday_awards(customer, day):
    """Say what a customer's birthday is worth: a gift of points, or stamps.

    Called by the ``birthday-gifts`` job (hourly in ``regulars serve`` and
    Celery beat), once per customer whose birthday it is in the shop's
    calendar (``[engine] timezone``), and again on the next two days: a job
    that could not run on the day catches up. A 29 February birthday falls on
    28 February in other years. A birthday the engine learnt on the day
    itself or later is celebrated from the next year on (a birthday given
    just to get the gift gets none now).

    What is returned is posted once per birthday, plugin and unit (its key
    holds the year): asking again about the same birthday posts nothing
    more, and an amount of zero or less posts nothing. A plugin that raises
    is named in the job's summary and log; that customer gets nothing from
    any plugin in that run, and is asked again in the next one.

    :param customer: the ``engine.identity.CustomerView`` (``birthday`` set).
    :param day: the ``datetime.date`` of the birthday being celebrated (this
        year's, or a day or two ago).
    :return: a list of ``engine.rules_api.Award``, or None. All results are
        collected; awards for the same unit add up.
    """


# -- Observers (after commit) ----------------------------------------------------


@hookspec
def regulars_points_expiring(customer, points, expires_at):
    """Hear that a customer's points will expire soon, to tell them.

    Called after commit by the ``expiry-reminders`` job, once per customer and
    batch of lots (a lot is announced once). An exception is logged with the
    plugin's name and does not stop the job or other plugins.

    :param customer: the ``engine.identity.CustomerView``.
    :param points: how many points expire.
    :param expires_at: when the soonest of them expire (aware datetime).
    :return: None; every implementation is called (nothing is collected).
    """


@hookspec
def regulars_points_changed(customer, changes, balance):
    """Hear that a customer's points changed, to tell them ("you earned 35
    points"), or to mirror the balance elsewhere.

    Called after commit, once per customer and committed transaction whose
    postings changed their points: a delivery applied (an order paid,
    refunded or cancelled, a visit, a membership event), a redemption, an
    adjustment by hand or an import, a referral claim, a membership changed by
    hand, a scheduled job (points expired, an unused reward's points given
    back). A merge's postings (points moved between two records of the same
    person) are not changes. Nothing is called for a transaction that rolled
    back. An exception is logged with the plugin's name and stops neither the
    other plugins nor the engine; the points stay as they are.

    :param customer: the ``engine.identity.CustomerView`` (as after the commit).
    :param changes: the postings, in order: ``engine.rules_api.PointsChange``
        (amount, reason, source, occurred_at); they may add up to 0 (points
        given and taken back in one transaction).
    :param balance: the customer's points balance after the commit.
    :return: None; every implementation is called (nothing is collected).
    """


@hookspec
def regulars_reward_issued(reward, customer):
    """Hear that a reward was issued (redeemed, or earned by a full stamp card),
    to make it real in a channel: a Shopify discount code, a WooCommerce coupon,
    a message with the code.

    Called after the transaction that issued it commits, once per reward. An
    exception is logged with the plugin's name and does not undo the reward or
    stop other plugins. (Until the outbox delivers these with retries, a
    failure here is not retried: the reward's code stays valid at the till.)

    :param reward: the ``engine.rewards.Issued`` (code, kind, value, sku,
        channel, ...).
    :param customer: the ``engine.identity.CustomerView`` it was issued to.
    :return: None; every implementation is called (nothing is collected).
    """
