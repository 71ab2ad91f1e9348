"""Order state: what the engine knows of each order, merged from every delivery.

Deliveries come twice, late and out of order. Instead of applying each as a
change, the engine merges it into the order's state with a merge that is
commutative, associative and idempotent, then asks the rules what the order is
worth *now* and posts the difference against what it already earned:

- the snapshot (lines, currency, shipping address) and the status come from
  the newest delivery (by the channel's ``version``, then the event time, then the key, so that
  equal times still give one answer); an older snapshot changes nothing;
- refunds are a set keyed by refund id: a refund seen twice, or in a snapshot
  and in its own webhook, counts once; of two reports of one refund, the one
  read from its lines wins (``itemized``: WooCommerce's webhooks know only a
  refund's total, the reconciliation its lines), then the larger amount;
- a refund deleted in the shop (WooCommerce allows it) stops counting: the
  newest snapshot that lists every refund of the order (``refunds_complete``)
  leaves it out though it was made before that snapshot (its version, or
  ``refunds_listed_at``: when the reconciliation read it). It is kept apart
  (``refunds_deleted``), so an older snapshot that still lists it, delivered
  late, does not bring it back;
- ``paid`` is remembered once seen, so a refund or an update that arrives
  before the payment is kept and counted when the payment comes;
- a cancellation without a version (WooCommerce's ``order.deleted``) is final;
- when each refund happened (its own time when a delivery said it, else the
  earliest delivery that carried it) and when the order was first cancelled or
  refunded in full are kept, for what the order stood at in the past
  (``as_of``: the tiers' metric).

Hence any duplication or reordering of the same deliveries ends in the same
state, and so in the same balances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType

from engine.events import line_eligible

PAID_STATUSES = ("paid", "refunded")
#: a status that takes back all the order earned
REVERSAL_STATUSES = ("cancelled", "refunded")


def _stamp(event: dict) -> list[str]:
    """The order in which snapshots win: channel version, event time, key."""
    order = event["order"]
    version = order.get("version") or event["occurred_at"]
    return [_utc_iso(version), _utc_iso(event["occurred_at"]), event["idempotency_key"]]


def _utc_iso(moment: datetime) -> str:
    # ISO strings compare as times only in one zone.
    return moment.astimezone(UTC).isoformat()


def _jsonable_line(line: dict) -> dict:
    out = dict(line)
    for key in ("unit_price", "subtotal", "discount", "tax"):
        if out.get(key) is not None:
            out[key] = str(out[key])
    return out


def merge(state: dict | None, event: dict) -> dict:
    """The order's state after one canonical order event (a new dict; JSON-able)."""
    state = {
        "snapshot": None,
        "snapshot_stamp": None,
        "status": None,
        "status_stamp": None,
        "paid_seen": False,
        "final_cancel": False,
        "refunds": {},
        "paid_at": None,
        **(state or {}),
    }
    state["refunds"] = dict(state["refunds"])
    refund_at = state["refund_at"] = dict(state.get("refund_at") or {})
    made_at = dict(state.get("refund_made_at") or {})
    order = event["order"]
    stamp = _stamp(event)

    if order.get("lines") is not None and (state["snapshot_stamp"] is None or stamp > state["snapshot_stamp"]):
        state["snapshot"] = {
            "lines": [_jsonable_line(line) for line in order["lines"]],
            "currency": order.get("currency"),
            "discount_codes": list(order.get("discount_codes") or []),
            "attributes": dict(order.get("attributes") or {}),
            "test": bool(order.get("test")),
        }
        address = (event.get("customer") or {}).get("address")
        if address:  # (the referral guard reads it: engine.referrals)
            state["snapshot"]["address"] = address
        state["snapshot_stamp"] = stamp

    status = order.get("status")
    if status is not None:
        if status == "cancelled" and order.get("version") is None and event["type"] == "order.cancelled":
            state["final_cancel"] = True
        elif state["status_stamp"] is None or stamp > state["status_stamp"]:
            state["status"] = status
            state["status_stamp"] = stamp
        if status in REVERSAL_STATUSES:
            _earliest(state, "reversed_at", event["occurred_at"])
        if status in PAID_STATUSES:
            state["paid_seen"] = True
            paid_at = _utc_iso(event["occurred_at"])
            if state["paid_at"] is None or paid_at < state["paid_at"]:
                state["paid_at"] = paid_at

    every = {**(state.get("refunds_deleted") or {}), **state["refunds"]}  # (an id is in one of them)
    for refund in order.get("refunds") or ():
        rid = refund["id"]
        parts = (bool(refund.get("itemized")), refund["amount"], refund.get("tax") or Decimal(0))
        known = every.get(rid)
        if known is None or parts > _refund_parts(known):
            every[rid] = _stored_refund(*parts)
        moment = _utc_iso(refund.get("occurred_at") or event["occurred_at"])
        if rid not in refund_at or moment < refund_at[rid]:
            refund_at[rid] = moment
        if refund.get("occurred_at") is not None and (rid not in made_at or moment < made_at[rid]):
            made_at[rid] = moment
    if made_at:
        state["refund_made_at"] = made_at
    if order.get("refunds_complete") and order.get("lines") is not None:
        # A list holds from the order's version, or from when the shop's API
        # was read for it (a refund deleted there leaves the order's version as it was).
        listed_at = order.get("refunds_listed_at")
        held = [max(stamp[0], _utc_iso(listed_at)) if listed_at is not None else stamp[0], *stamp[1:]]
        listing = state.get("refund_list")
        if listing is None or held > listing["stamp"]:
            state["refund_list"] = {"stamp": held, "ids": sorted(refund["id"] for refund in order["refunds"])}
    gone = _deleted(every, refund_at, state.get("refund_list"))
    state["refunds"] = {rid: parts for rid, parts in every.items() if rid not in gone}
    if gone:
        state["refunds_deleted"] = {rid: every[rid] for rid in sorted(gone)}
    else:
        state.pop("refunds_deleted", None)
    return state


def _deleted(refunds: dict, refund_at: dict, listing: dict | None) -> set[str]:
    """The refunds deleted in the shop: the newest snapshot that lists all of
    an order's refunds (``refunds_complete``: WooCommerce's) does not list
    them, though they were made (or first seen) before it."""
    if listing is None:
        return set()
    listed, version = set(listing["ids"]), listing["stamp"][0]
    return {rid for rid in refunds if rid not in listed and refund_at.get(rid, version) < version}


def undetailed_refunds(state: dict) -> list[str]:
    """The ids of the refunds an order's state knows only by a total: no
    delivery said when they were made (``refund_made_at``), as a WooCommerce
    webhook lists them. Its reconciliation, which reads them, says it, so
    ``engine.reconcile`` comes back for these (its query mirrors this)."""
    made = state.get("refund_made_at") or {}
    return [rid for rid in state.get("refunds") or {} if rid not in made]


def _earliest(state: dict, key: str, moment: datetime) -> None:
    value = _utc_iso(moment)
    if state.get(key) is None or value < state[key]:
        state[key] = value


#: the parts of a state ``as_of`` reads to tell whether anything in it happened
#: after a moment (the tiers' walk reads only these of most orders)
AS_OF_READS = ("refunds", "refund_at", "refund_made_at", "reversed_at")


def as_of(state: dict, moment: datetime) -> dict:
    """The order's state as it stood at ``moment``: the refunds made after it
    left out, and a cancellation or full refund made after it undone. (A
    refund kept before its time was, 30 November 2026, counts from the start.)"""
    at = _utc_iso(moment)
    # a refund's own time, when a delivery said it, over the delivery's
    times = {**(state.get("refund_at") or {}), **(state.get("refund_made_at") or {})}
    refunds = state.get("refunds") or {}
    kept = {key: value for key, value in refunds.items() if times.get(key, "") <= at}
    reversed_at = state.get("reversed_at")
    undone = reversed_at is not None and reversed_at > at
    if len(kept) == len(refunds) and not undone:
        return state
    past = {**state, "refunds": kept}
    if undone:
        past["final_cancel"] = False
        if past.get("status") in REVERSAL_STATUSES:
            past["status"] = "paid"
    return past


#: the mark of a refund kept as read from its lines: ``["amount", "tax", ITEMIZED]``
ITEMIZED = "itemized"


def _refund_parts(stored) -> tuple[bool, Decimal, Decimal]:
    """A refund kept in an order's state, as (itemized, amount, tax), which is
    also the order in which reports of one refund win: ``"amount"``, or
    ``["amount", "tax"]`` since refunds carry their tax (30 November 2026), or
    ``["amount", "tax", "itemized"]`` for a refund read from its lines."""
    if isinstance(stored, list):
        return len(stored) > 2 and stored[2] == ITEMIZED, Decimal(stored[0]), Decimal(stored[1])
    return False, Decimal(stored), Decimal(0)


def _stored_refund(itemized: bool, amount: Decimal, tax: Decimal):
    """The JSON form ``_refund_parts`` reads back (the older forms while they suffice)."""
    if itemized:
        return [str(amount), str(tax), ITEMIZED]
    return [str(amount), str(tax)] if tax else str(amount)


@dataclass(frozen=True)
class OrderView:
    """What rules see of an order (the ``order`` of the decision hooks)."""

    id: int
    channel: str
    external_id: str
    #: eligible spend standing now: after refunds, zero unless paid and not cancelled
    eligible: Decimal
    #: eligible spend of the lines before refunds
    gross_eligible: Decimal
    refunded: Decimal
    status: str | None
    paid: bool
    cancelled: bool
    #: read-only: each plugin sees the same lines, so none may change another's
    lines: tuple[Mapping, ...] = ()
    currency: str | None = None
    discount_codes: tuple[str, ...] = ()
    attributes: Mapping = field(default_factory=lambda: MappingProxyType({}))
    test: bool = False
    paid_at: datetime | None = None
    #: [(name, factor)] frozen when the order was first awarded
    multipliers: tuple = ()
    #: the shipping address as one line, as the newest snapshot gave it (None: none)
    address: str | None = None

    @property
    def multiplier(self) -> Decimal:
        product = Decimal(1)
        for _name, factor in self.multipliers:
            product *= Decimal(factor)
        return product

    @property
    def awardable(self) -> bool:
        return self.paid and not self.cancelled


def view(order_id: int, channel: str, external_id: str, state: dict, multipliers) -> OrderView:
    """Derive the numbers rules need from a merged state."""
    snapshot = state.get("snapshot") or {}
    lines = tuple(
        MappingProxyType({
            **line,
            **{k: Decimal(line[k]) for k in ("unit_price", "discount", "tax") if line.get(k) is not None},
            "subtotal": Decimal(line["subtotal"]) if line.get("subtotal") is not None else None,
        })
        for line in snapshot.get("lines", ())
    )
    gross = sum((line_eligible(line) for line in lines), Decimal(0))
    # Tax-inclusive prices (the lines carry the tax they contain): a refund's
    # amount contains its tax too, which is no eligible spend.
    taxed = any(line.get("tax") for line in lines)
    refunded = Decimal(0)
    for stored in state.get("refunds", {}).values():
        _itemized, amount, tax = _refund_parts(stored)
        refunded += max(Decimal(0), amount - tax) if taxed else amount
    status = state.get("status")
    cancelled = bool(state.get("final_cancel")) or status == "cancelled"
    paid = bool(state.get("paid_seen")) and bool(snapshot)
    standing = Decimal(0) if status == "refunded" else max(Decimal(0), gross - refunded)
    return OrderView(
        id=order_id,
        channel=channel,
        external_id=external_id,
        eligible=standing if paid and not cancelled else Decimal(0),
        gross_eligible=gross,
        refunded=min(refunded, gross),
        status="cancelled" if cancelled else status,
        paid=paid,
        cancelled=cancelled,
        lines=lines,
        currency=snapshot.get("currency"),
        discount_codes=tuple(snapshot.get("discount_codes", ())),
        attributes=MappingProxyType(dict(snapshot.get("attributes", {}))),
        test=snapshot.get("test", False),
        paid_at=datetime.fromisoformat(state["paid_at"]) if state.get("paid_at") else None,
        multipliers=tuple(tuple(m) for m in (multipliers or ())),
        address=snapshot.get("address"),
    )
