"""The typed values decision hooks return, and observers hear (see
``engine.hookspecs``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

UNIT_POINTS = "points"
#: the most one award may be, either way: far above any real award, far below
#: what a 64-bit balance holds (SQLite turns an integer that overflows into a float)
MAX_AMOUNT = 10**12
#: the most one multiplier may multiply by
MAX_FACTOR = Decimal(1000)


@dataclass(frozen=True)
class Award:
    """What a rule says a subject (an order, a visit) is worth in one unit.

    :param unit: ``"points"`` or ``"stamps:<card>"``; any short name works
        (``regulars customer show`` lists every unit a customer holds).
    :param amount: an integer (points and stamps are never fractional): what
        the subject is worth *in total* now, not a change. Negative is allowed
        (a penalty); at most ``MAX_AMOUNT`` (10**12) either way.
    :param reason: a few words for the ledger (``"1 point per EUR"``).
    """

    unit: str
    amount: int
    reason: str = ""

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``TypeError`` or ``ValueError`` for a wrong amount or unit (on
        construction, and again by the engine: the object may have been changed since)."""
        amount, unit = self.amount, self.unit
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"Award.amount must be an int, got {amount!r}")
        if abs(amount) > MAX_AMOUNT:
            raise ValueError(f"Award.amount must be at most {MAX_AMOUNT:,} either way, got {amount:,}")
        if not isinstance(unit, str) or not unit or len(unit) > 64:
            raise ValueError(f"Award.unit must be 1 to 64 characters, got {unit!r}")


@dataclass(frozen=True)
class Multiplier:
    """A factor on an order's points (a tier, a membership, a campaign).

    :param name: what it is, shown in the ledger's detail (``"gold tier"``).
    :param factor: a non-negative ``Decimal`` (``Decimal("1.5")``), at most
        ``MAX_FACTOR`` (1000).
    """

    name: str
    factor: Decimal

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``TypeError`` or ``ValueError`` for a wrong factor (on
        construction, and again by the engine: the object may have been changed since)."""
        factor = self.factor
        if not isinstance(factor, Decimal) or not factor.is_finite():
            raise TypeError(f"Multiplier.factor must be a finite Decimal, got {factor!r}")
        if factor < 0:
            raise ValueError(f"Multiplier.factor must not be negative, got {factor}")
        if factor > MAX_FACTOR:
            raise ValueError(f"Multiplier.factor must be at most {MAX_FACTOR}, got {factor}")


@dataclass(frozen=True)
class RewardKind:
    """A kind of reward the catalogue in plugins.toml may use.

    :param name: what ``kind = "..."`` says in ``[rewards.<name>]``.
    :param settings_schema: a marshmallow Schema class for the keys this kind
        adds to a catalogue entry (``value``, ``sku``, ...); the common keys
        (``kind``, ``cost``, ``partial``, ``expires_days``, ``refund_on_expiry``,
        ``channels``) are the engine's.
    :param describe: optional; a function of the validated entry returning a
        short text for people (``"5.00 off"``).
    """

    name: str
    settings_schema: type
    describe: object = None


@dataclass(frozen=True)
class StampCard:
    """A stamp card a rule keeps in the ``stamps:<name>`` unit.

    :param name: the card's name (``coffee``); its balance is the open card.
    :param required: stamps that fill the card.
    :param reward: the catalogue reward a full card issues.
    """

    name: str
    required: int
    reward: str


@dataclass(frozen=True)
class PointsPolicy:
    """How points age (the ``regulars_points_policy`` hook).

    :param expiry_months: earned points expire so many months later (None: never).
    :param pending_days: an order's points become spendable so many days after
        it was paid (its return window); 0: at once.
    :param remind_days: tell the customer (``regulars_points_expiring``) so many
        days before points expire; None: never.
    """

    expiry_months: int | None = None
    pending_days: int = 0
    remind_days: int | None = None


@dataclass(frozen=True)
class TierLevel:
    name: str
    threshold: Decimal
    multiplier: Decimal


@dataclass(frozen=True)
class TierProgram:
    """Tiers the engine keeps (the ``regulars_register_tier_program`` hook).

    :param metric: ``"points_earned"`` (points from orders, net of refunds; spending
        never lowers it) or ``"spend"`` (eligible spend of paid orders).
    :param window_days: the rolling window the metric is summed over.
    :param levels: ``TierLevel`` from the lowest threshold up.
    :param downgrade: ``"one_level"`` or ``"to_earned"``, at the review job.
    :param grace_days: a customer below their tier keeps it so many days
        (counted from the first review that found them below).
    """

    metric: str
    window_days: int
    levels: tuple[TierLevel, ...]
    downgrade: str = "one_level"
    grace_days: int = 0


@dataclass(frozen=True)
class ReferralProgram:
    """Referrals the engine keeps (the ``regulars_register_referral_program`` hook).

    :param referrer_points: points for the referrer when the referee's first
        paid order reaches ``min_order``.
    :param referee_points: points for the referee for the same order.
    :param min_order: eligible spend the first order must reach.
    :param weekly_limit: rewarded referrals per referrer in any 7 days.
    :param attribute_keys: order attributes (Shopify note/cart attributes,
        WooCommerce meta keys) that may carry a referral code; a discount code
        equal to a referral code counts too.
    """

    referrer_points: int
    referee_points: int
    min_order: Decimal = Decimal(0)
    weekly_limit: int = 10
    attribute_keys: tuple[str, ...] = ("ref", "referral", "_regulars_ref")


@dataclass(frozen=True)
class SubscriptionPlan:
    """A membership plan (the ``regulars_register_subscription_plans`` hook).

    :param name: the plan ``subscription.*`` events name (``"vip"``).
    :param multiplier: the factor on orders paid while the membership is
        active (at its ``paid_at``, by the membership's events). The engine
        fills ``customer.plans``; the plugin that registers
        the plan gives the factor through ``regulars_order_multipliers`` (the
        built-in ``[rules.subscriptions]`` does).
    :param renewal_points: points on each renewal.
    :param start_points: points when the subscription starts; None: as many as
        ``renewal_points``.
    :param grace_days: None (the default): the paid period is reported, not
        enforced. A number: the ``subscription-check`` job marks a membership
        ``lapsed`` (not active: no multiplier) once so many days have passed
        since the end of the latest period its events gave (``period_end``).
    """

    name: str
    multiplier: Decimal = Decimal(1)
    renewal_points: int = 0
    start_points: int | None = None
    grace_days: int | None = None

    def __post_init__(self):
        if not self.name or len(self.name) > 64:
            raise ValueError(f"SubscriptionPlan.name must be 1 to 64 characters, got {self.name!r}")
        if not isinstance(self.multiplier, Decimal) or not self.multiplier.is_finite() or self.multiplier < 0:
            raise TypeError(f"SubscriptionPlan.multiplier must be a non-negative Decimal, got {self.multiplier!r}")
        for name in ("renewal_points", "start_points", "grace_days"):
            value = getattr(self, name)
            if value is None and name != "renewal_points":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TypeError(f"SubscriptionPlan.{name} must be a non-negative int, got {value!r}")

    @property
    def points_at_start(self) -> int:
        return self.renewal_points if self.start_points is None else self.start_points


@dataclass(frozen=True)
class PointsChange:
    """One posting to a customer's points, as ``regulars_points_changed`` hears it.

    :param amount: points given (positive) or taken (negative).
    :param reason: the ledger's reason: ``order``, ``refund``, ``cancel``,
        ``visit``, ``redeem``, ``reward-expired``, ``expiry``, ``referral``,
        ``subscription``, ``adjust``, or a plugin's own.
    :param source: what caused it (``order:shopify:820982911946154508``,
        ``reward:<code>``, ``lot:<id>``, ...).
    :param occurred_at: when it happened (an order's time, not the delivery's).
    """

    amount: int
    reason: str
    source: str
    occurred_at: datetime
