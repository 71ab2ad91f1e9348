"""Referrals: every customer has a code; a new customer who uses it earns the
referee reward and the referrer theirs, once the referee's first paid order (in
any channel) reaches the minimum.

A code is claimed with the first order (a discount code equal to it, or an
order attribute such as Shopify's ``ref`` note attribute or a WooCommerce meta
key) or explicitly (``regulars referral claim``). Every refusal is recorded with
its reason: an unknown code, a self-referral (same customer, normalized email,
phone or shipping address), a referee who already bought before, a first order
below the minimum, a referrer over the weekly limit. A rewarded referral is
reversed if that first order is fully refunded or cancelled.

A shipping address is a self-referral when the referee's first order ships
to an address any of the referrer's orders shipped to (or the referrer's
profile's): decided again with the rest after each of the referee's orders,
and after each order that gives the referrer an address they had not shipped
to, or a merge that gives them another's orders (``referrer_moved``). The
first order's address is the one its newest snapshot gives (a refund's
delivery changes none; a till sale has none, so it is not compared). Not the
referee's latest address: that would make the answer depend on which of
their deliveries came last.

The decision is a function of the referee's orders, not of the order their
deliveries came in (PRODUCT.md, invariant 2): after every order of the referee
(``decide``), the claim is decided again from the paid orders as they stand.
The first order is the one paid first; "already bought" means a paid order
paid before the claim (before the order that carried the code, or before the
moment of a claim made at the counter or with the CLI; the earliest of these
when the code was used more than once, whichever was delivered first). So a
paid order delivered late, paid before the one that was rewarded, moves the
referral onto it, or refuses it (bought before the code, or below the
minimum) and takes both rewards back; and a first order delivered after a
later one is judged as the first.

The weekly limit is decided the same way, across the referrer's referees
(``walk``): a referral whose referee side is met (its first order stands and
reaches the minimum) counts at the paid time of that first order, and the
referrer's such referrals are walked in that order (ties by the order's
reference): one is rewarded while fewer than ``weekly_limit`` rewarded ones
fall in the 7 days up to it, else refused at the limit. Whenever a referral
enters or leaves that set, or moves in it, the walk runs again, so a referral
refused at the limit is rewarded after all when an earlier one is taken back,
and a late first order paid earlier in the week takes the place of one paid
after it. A referral refused at the limit still holds the referee's claim: a
second code they use is refused as "already referred".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select, union_all, update
from sqlalchemy.engine import Connection

from engine.db import as_utc
from engine.db.models import customers, ledger_entries, orders, referrals
from engine.events import normalize_address
from engine.orders import view
from engine.rules_api import UNIT_POINTS, ReferralProgram

ACTIVE = ("claimed", "rewarded")
#: how a refusal at the weekly limit begins (the limit follows)
AT_LIMIT = "the referrer reached the limit of"
BOUGHT_BEFORE = "the customer had already bought (in some channel) before using the code"
REVERSED = "the first order was refunded in full or cancelled"
#: the referee's first order ships where the referrer's did (decided again with the orders)
SHIPS_TO_REFERRER = "self-referral: the first order ships to the referrer's address"
# Built once: looked up after every order of a referee. A claim whose outcome
# depends on the referee's orders: decided again after each.
_DECIDED_AGAIN = (
    referrals.c.status.in_((*ACTIVE, "reversed"))
    | ((referrals.c.status == "refused")
       & (referrals.c.reason.in_((BOUGHT_BEFORE, SHIPS_TO_REFERRER)) | referrals.c.reason.like("the first order (%")
          | referrals.c.reason.like(f"{AT_LIMIT}%")))
)
_OPEN_CLAIM = (
    select(referrals)
    .where(referrals.c.referee_id == bindparam("customer_id"), _DECIDED_AGAIN)
    .order_by(referrals.c.status.in_(ACTIVE).desc(), referrals.c.claimed_at, referrals.c.id)
    .limit(1)
)
_PAID_ORDERS = (
    select(orders.c.id, orders.c.channel, orders.c.external_id, orders.c.state, orders.c.multipliers, orders.c.paid_at)
    .where(orders.c.customer_id == bindparam("customer_id"), orders.c.paid_at.is_not(None))
    .order_by(orders.c.paid_at, orders.c.id)
)
# A referrer's referrals whose referee side is met: rewarded, or refused at the
# weekly limit; in the order the limit is decided (``Referrals.walk``).
_AT_STAKE = (
    select(referrals)
    .where(referrals.c.referrer_id == bindparam("referrer_id"),
           (referrals.c.status == "rewarded")
           | ((referrals.c.status == "refused") & referrals.c.reason.like(f"{AT_LIMIT}%")))
    .order_by(referrals.c.decided_at, referrals.c.order_ref, referrals.c.id)
)
_REFERRER = select(customers.c.id, customers.c.email, customers.c.phone, customers.c.address, customers.c.merged_into)
SELF_REFERRAL = "a customer can't refer themselves"


def already_referred(code: str) -> str:
    return f"this customer was already referred with code {code}"


def _holds(status, reason) -> bool:
    """Whether a referral holds its referee's claim: claimed, rewarded, or
    refused at the weekly limit (which a later walk may reward)."""
    return status in ACTIVE or (status == "refused" and (reason or "").startswith(AT_LIMIT))


_HOLDING = referrals.c.status.in_(ACTIVE) | ((referrals.c.status == "refused") & referrals.c.reason.like(f"{AT_LIMIT}%"))


def _order_of(via: str | None) -> tuple[str, str] | None:
    """(channel, external id) of a claim made with an order (``via``
    ``order:<channel>:<id>``); None for one made at the counter or the CLI."""
    if via and via.startswith("order:"):
        _, channel, external_id = via.split(":", 2)
        return channel, external_id
    return None


def merge_referrals(conn: Connection, keep: int, gone: int, at: datetime) -> None:
    """Customer ``gone`` was joined into ``keep`` (``Identity.merge``): their
    referrals follow, so that a referrer reward, a reversal and the weekly limit
    count on the survivor, and a claim ``gone`` made waits for (or is reversed
    by) the survivor's orders.

    A referral between the two, not yet rewarded, was a self-referral nobody
    could see: it is refused as ``claim`` refuses one. (A rewarded one stays
    rewarded, both sides the survivor now: its points were paid and moved with
    the balance.)

    A customer has one active claim as referee (``on_order`` reads one). When
    both had one, the survivor keeps the one that was rewarded, else the older:
    had the engine known them as one person, the later claim would have been
    refused, and so it is now, with the reason ``claim`` gives. When both were
    rewarded, neither can be undone without the operator: each stays where it
    is, the merged-away customer's out of sight (its points moved with the
    balance; only the survivor's can still be reversed by a refund)."""
    conn.execute(update(referrals).where(referrals.c.referrer_id == gone).values(referrer_id=keep))
    conn.execute(
        update(referrals)
        .where(referrals.c.referrer_id == keep, referrals.c.referee_id.in_([keep, gone]),
               referrals.c.status == "claimed")
        .values(status="refused", reason=SELF_REFERRAL, decided_at=at)
    )
    active = conn.execute(
        select(referrals.c.id, referrals.c.referee_id, referrals.c.code, referrals.c.status)
        .where(referrals.c.referee_id.in_([keep, gone]), _HOLDING)
        .order_by(referrals.c.status != "rewarded", referrals.c.claimed_at, referrals.c.id)
    ).all()
    stays = []
    if len(active) > 1:
        winner, loser = active[0], active[1]
        if loser.status != "rewarded":
            conn.execute(update(referrals).where(referrals.c.id == loser.id)
                         .values(status="refused", reason=already_referred(winner.code), decided_at=at))
        else:
            stays = [row.id for row in active if row.referee_id == gone]
    conn.execute(
        update(referrals).where(referrals.c.referee_id == gone, referrals.c.id.not_in(stays)).values(referee_id=keep)
    )


def _ships_to(conn: Connection, referrer_id: int, address: str | None) -> bool:
    """Whether ``address`` is one the referrer's orders shipped to, or their
    profile's (normalized as ``customers.address`` is)."""
    address = normalize_address(address)
    if address is None or referrer_id is None:
        return False
    theirs = union_all(
        select(customers.c.address).where(customers.c.id == referrer_id),
        select(orders.c.state[("snapshot", "address")].as_string()).where(orders.c.customer_id == referrer_id),
    ).subquery()
    return any(normalize_address(known) == address for known in conn.execute(select(theirs)).scalars())


def _stands(order) -> bool:
    """Paid, not cancelled, and not refunded in full (its status says so, or
    its refunds took all its eligible spend)."""
    return order.awardable and order.status != "refunded" and not (order.refunded and order.eligible <= 0)


class ReferralRefused(Exception):
    """A claim refused; the message says why."""


class Referrals:
    def __init__(self, program: ReferralProgram | None, ledger):
        self.program = program
        self.ledger = ledger

    def claim(self, conn: Connection, referee_id: int, code: str, at: datetime, via: str) -> tuple[int, str | None]:
        """Record a claim of ``code`` by ``referee_id`` and decide it against
        the orders already paid. Returns the referral's id and, when it was
        refused, why (the refusal is recorded too)."""
        code = code.strip().upper()
        known = conn.execute(_OPEN_CLAIM, {"customer_id": referee_id}).one_or_none()
        if known is not None and known.code == code:  # the same code again (an order delivered twice): as decided
            return known.id, self._used_again(conn, known, referee_id, via, at, known.reason)
        active = conn.execute(
            select(referrals.c.id, referrals.c.code, referrals.c.via, referrals.c.claimed_at)
            .where(referrals.c.referee_id == referee_id, _HOLDING)
        ).first()
        if active is not None and active.code == code:  # claimed again with the same code: nothing new
            return active.id, self._used_again(conn, active, referee_id, via, at, None)
        referrer = conn.execute(_REFERRER.where(customers.c.referral_code == code)).one_or_none()
        seen = set()
        while referrer is not None and referrer.merged_into is not None and referrer.id not in seen:
            # The code of a customer merged into another stays valid: the
            # referrer is the one they joined (whose keys are the ones to compare).
            seen.add(referrer.id)
            referrer = conn.execute(_REFERRER.where(customers.c.id == referrer.merged_into)).one()
        referee = conn.execute(select(customers.c.email, customers.c.phone).where(customers.c.id == referee_id)).one()
        reason = None
        if active is not None:
            reason = already_referred(active.code)
        elif referrer is None:
            reason = f"no customer has the referral code {code}"
        elif referrer.id == referee_id:
            reason = SELF_REFERRAL
        elif any(a and a == b for a, b in ((referrer.email, referee.email), (referrer.phone, referee.phone))):
            reason = "self-referral: the referrer has the same email or phone"  # (addresses: ``decide``)
        row_id = conn.execute(
            referrals.insert().returning(referrals.c.id),
            {"referrer_id": referrer.id if referrer else None, "referee_id": referee_id, "code": code,
             "status": "refused" if reason else "claimed", "reason": reason, "via": via, "claimed_at": at,
             "decided_at": at if reason else None},
        ).scalar_one()
        if reason is None:  # decided at once against the orders already paid
            reason = self._decided(conn, referee_id, row_id, at)
        return row_id, reason

    def _decided(self, conn: Connection, referee_id: int, referral_id: int, at: datetime) -> str | None:
        """Decide the referee's claim against their paid orders (``decide``);
        why this referral is refused, if it is."""
        self.decide(conn, referee_id, at)
        row = conn.execute(select(referrals.c.status, referrals.c.reason).where(referrals.c.id == referral_id)).one()
        return row.reason if row.status == "refused" else None

    def _used_again(self, conn: Connection, claim, referee_id: int, via: str, at: datetime,
                    reason: str | None) -> str | None:
        """The claim's code used again (with another order, or at the
        counter): the claim goes by the earliest use, whichever was delivered
        first, as ``_claimed_when`` reads it (an order's paid time, a counter
        claim's moment), and is decided again when that moved. Returns why it
        is refused, if it is."""
        if not self._go_by_earlier_use(conn, claim, via, at):
            return reason
        return self._decided(conn, referee_id, claim.id, at)

    @staticmethod
    def _go_by_earlier_use(conn: Connection, claim, via: str, at: datetime) -> bool:
        """When ``via`` at ``at`` is an earlier use of the claim's code than
        the one it goes by, make the claim go by it; whether it did."""
        def moment(ref: str | None, claimed_at: datetime) -> datetime:
            order = _order_of(ref)
            if order is not None:
                paid_at = conn.execute(select(orders.c.paid_at).where(
                    orders.c.channel == order[0], orders.c.external_id == order[1])).scalar()
                if paid_at is not None:
                    return as_utc(paid_at)
            return as_utc(claimed_at)

        new, old = (moment(via, at), via), (moment(claim.via, claim.claimed_at), claim.via or "")
        if new < old:
            values = {"via": via}
            if not via.startswith("order:"):
                values["claimed_at"] = at  # (a claim at the counter is when it was made)
            conn.execute(update(referrals).where(referrals.c.id == claim.id).values(**values))
            return True
        return False

    def codes_in(self, order) -> list[str]:
        """Referral codes an order may carry."""
        found = [str(order.attributes[k]) for k in self.program.attribute_keys if order.attributes.get(k)]
        return found + list(order.discount_codes)

    def on_order(self, conn: Connection, order, customer_id: int, at: datetime) -> int:
        """Claim a code the order carries, then decide the referee's claim
        again (``decide``). Returns entries posted."""
        if not self.program:
            return 0
        source = f"order:{order.channel}:{order.external_id}"
        if order.paid:
            for code in self.codes_in(order):
                if conn.execute(select(customers.c.id).where(customers.c.referral_code == code.strip().upper())).first():
                    self.claim(conn, customer_id, code, at, via=source)  # refusals are recorded
                    break
        return self.decide(conn, customer_id, at)

    def referrer_moved(self, conn: Connection, customer_id: int, at: datetime) -> int:
        """An order of ``customer_id`` gave a shipping address it did not
        have, their profile (``customer.upserted``) came with an address, or a
        merge gave them another's orders: the claims of their referees still
        open are decided again (one of them may have shipped there). Returns
        entries posted."""
        referees = conn.execute(
            select(referrals.c.referee_id).distinct()
            .where(referrals.c.referrer_id == customer_id, referrals.c.referee_id != customer_id,
                   _DECIDED_AGAIN)
        ).scalars().all()
        return sum(self.decide(conn, referee_id, at) for referee_id in referees)

    def decide(self, conn: Connection, customer_id: int, at: datetime) -> int:
        """The referee's claim decided from their paid orders as they stand
        (the module's docstring says how); both rewards posted or taken back
        when the outcome changed. Returns entries posted."""
        claim = conn.execute(_OPEN_CLAIM, {"customer_id": customer_id}).one_or_none()
        if claim is None:
            return 0
        paid = conn.execute(_PAID_ORDERS, {"customer_id": customer_id}).all()
        status, reason, ref, paid_at = "claimed", None, None, None
        if paid:
            first = paid[0]
            ref, paid_at = f"order:{first.channel}:{first.external_id}", as_utc(first.paid_at)
            first_view = view(first.id, first.channel, first.external_id, first.state, first.multipliers)
            if _ships_to(conn, claim.referrer_id, first_view.address):
                status, reason = "refused", SHIPS_TO_REFERRER
            elif paid_at < self._claimed_when(claim, paid):
                status, reason = "refused", BOUGHT_BEFORE
            elif not _stands(first_view):
                status, reason = "reversed", REVERSED
            elif first_view.eligible < self.program.min_order:
                status, reason = "refused", (f"the first order ({first_view.eligible}) is below the minimum "
                                             f"({self.program.min_order})")
            else:
                status = "rewarded"
        at_stake = claim.status == "rewarded" or (claim.reason or "").startswith(AT_LIMIT)
        posted = 0
        if status == "rewarded":
            # The referee's side is met; whether the referrer's limit allows it
            # is the walk's to decide, at the first order's paid time. (One
            # rewarded already stays so, for the order that was in fact the first.)
            if (claim.order_ref, as_utc(claim.decided_at)) == (ref, paid_at) and at_stake:
                return 0
            if claim.status == "rewarded":
                self._decide(conn, claim.id, "rewarded", None, paid_at, ref)
                for customer in (claim.referee_id, claim.referrer_id):  # its points count from that order
                    self.ledger.redate_lots(conn, customer, f"referral:{claim.id}", paid_at)
            else:
                self._decide(conn, claim.id, "refused", self._limit_reason(), paid_at, ref)
            return self.walk(conn, claim.referrer_id, at)
        if claim.status == "rewarded":
            posted += self._post_both(conn, claim, -1, at, claim.order_ref)
        if (status, reason, ref) != (claim.status, claim.reason, claim.order_ref):
            self._decide(conn, claim.id, status, reason, at, ref)
        if at_stake:  # it left the referrer's week: another may take its place
            posted += self.walk(conn, claim.referrer_id, at)
        return posted

    def _limit_reason(self) -> str:
        return f"{AT_LIMIT} {self.program.weekly_limit} referrals a week"

    def walk(self, conn: Connection, referrer_id: int, at: datetime) -> int:
        """The weekly limit decided again over the referrer's referrals whose
        referee side is met, in the paid-time order of their first orders
        (the module's docstring); a referral that changes side has both
        rewards posted or taken back. Returns entries posted."""
        if conn.dialect.name == "postgresql":  # one walk of a referrer at a time
            conn.execute(select(customers.c.id).where(customers.c.id == referrer_id).with_for_update())
        window, limit = timedelta(days=7), self.program.weekly_limit
        rewarded: list[datetime] = []
        posted = 0
        for row in conn.execute(_AT_STAKE, {"referrer_id": referrer_id}).all():
            moment = as_utc(row.decided_at)
            allowed = sum(1 for t in rewarded if moment - window < t <= moment) < limit
            if allowed:
                rewarded.append(moment)
                if row.status != "rewarded":
                    posted += self._post_both(conn, row, 1, at, row.order_ref, earned_at=moment)
                    self._decide(conn, row.id, "rewarded", None, moment, row.order_ref)
            elif row.status == "rewarded":
                posted += self._post_both(conn, row, -1, at, row.order_ref)
                self._decide(conn, row.id, "refused", self._limit_reason(), moment, row.order_ref)
        return posted

    @staticmethod
    def _claimed_when(claim, paid) -> datetime:
        """The moment the code was used: the paid time of the order that
        carried it, else when the claim was made."""
        order = _order_of(claim.via)
        if order is not None:
            for row in paid:
                if (row.channel, row.external_id) == order:
                    return as_utc(row.paid_at)
        return as_utc(claim.claimed_at)

    def _decide(self, conn, referral_id, status, reason, at, order_ref=None) -> None:
        values = {"status": status, "reason": reason, "decided_at": at, "order_ref": order_ref}
        conn.execute(update(referrals).where(referrals.c.id == referral_id).values(**values))

    def _post_both(self, conn, claim, sign: int, at: datetime, order_ref: str | None,
                   earned_at: datetime | None = None) -> int:
        """Both rewards posted (``sign`` 1) or taken back (-1); points gained
        are dated ``earned_at``: the first order's payment."""
        kind = "reward" if sign > 0 else "reverse"
        # A referral may be rewarded, taken back and rewarded again for the same
        # order (the weekly limit walked again): each posting its own key.
        done = conn.execute(select(func.count()).select_from(ledger_entries)
                            .where(ledger_entries.c.source == f"referral:{claim.id}")).scalar_one()
        again = f":{done}" if done else ""
        posted = 0
        for who, customer_id, points in (("referee", claim.referee_id, self.program.referee_points),
                                         ("referrer", claim.referrer_id, self.program.referrer_points)):
            if points:
                # Keyed by the order rewarded: a referral taken back may be
                # rewarded again for an earlier first order delivered later.
                self.ledger.post(conn, customer_id, UNIT_POINTS, sign * points, "referral", f"referral:{claim.id}",
                                 None, f"referral:{claim.id}:{who}:{kind}:{order_ref}{again}", at,
                                 earned_at=earned_at)
                posted += 1
        return posted

    def listing(self, conn: Connection, customer_id: int) -> list[dict]:
        rows = conn.execute(
            select(referrals).where((referrals.c.referee_id == customer_id) | (referrals.c.referrer_id == customer_id))
            .order_by(referrals.c.id)
        ).all()
        return [{"role": "referee" if r.referee_id == customer_id else "referrer", "code": r.code,
                 "status": r.status, "reason": r.reason, "via": r.via, "order": r.order_ref} for r in rows]
