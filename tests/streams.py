"""Multi-channel delivery streams built from the real contract payloads, and a
tiny model of what they should earn (the oracle of the invariant tests).

Each order is described by a ``PlannedOrder``; ``deliveries`` turns it into the
webhooks its channel would send, in the channel's own order, as real Shopify or
WooCommerce bodies (a contract body with its ids, lines, status and refunds
replaced). ``expected_points`` is what the ordered stream must end in.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from hypothesis import strategies as st

from tests.conftest import load_contract

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
EMAIL_FOR_TESTS = "jana@example.com"
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Line:
    price: Decimal
    quantity: int
    discount: Decimal = Decimal(0)
    gift_card: bool = False

    @property
    def eligible(self) -> Decimal:
        if self.gift_card:
            return Decimal(0)
        return max(Decimal(0), self.price * self.quantity - self.discount)


@dataclass(frozen=True)
class PlannedOrder:
    channel: str  # "shopify" | "woocommerce"
    number: int
    email: str
    lines: tuple[Line, ...]
    paid: bool = True
    refunds: tuple[Decimal, ...] = ()
    #: WooCommerce: the refund (its index in ``refunds``) deleted in the shop after them all
    deleted: int | None = None
    cancelled: bool = False
    first_name: str = "Jana"
    phone: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def gross(self) -> Decimal:
        return sum((line.eligible for line in self.lines), Decimal(0))

    @property
    def standing_refunds(self) -> tuple[Decimal, ...]:
        return tuple(a for i, a in enumerate(self.refunds) if i != self.deleted)

    def expected_points(self, per_unit: Decimal = Decimal(1)) -> int:
        if not self.paid or self.cancelled:
            return 0
        standing = max(Decimal(0), self.gross - sum(self.standing_refunds, Decimal(0)))
        return int((standing * per_unit).to_integral_value(rounding=ROUND_FLOOR))


def _money(amount: Decimal) -> str:
    return str(amount.quantize(CENT))


def _set(amount: Decimal, currency: str = "EUR") -> dict:
    value = _money(amount)
    return {
        "shop_money": {"amount": value, "currency_code": currency},
        "presentment_money": {"amount": value, "currency_code": currency},
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat()


# -- Shopify ------------------------------------------------------------------

SHOPIFY_BASE = 5_000_000_000_000_000_000  # ids above 2^53, as Shopify's are


def _shopify_order(order: PlannedOrder, status: str, at: datetime, refunds: list[dict], cancelled: bool) -> dict:
    body = copy.deepcopy(load_contract("shopify/webhooks/orders_paid.docs-2026-04.json"))
    template = body["line_items"][0]
    order_id = SHOPIFY_BASE + order.number
    body.update(
        id=order_id,
        admin_graphql_api_id=f"gid://shopify/Order/{order_id}",
        email=order.email,
        contact_email=order.email,
        phone=order.phone,
        currency="EUR",
        financial_status=status,
        cancelled_at=_iso(at) if cancelled else None,
        cancel_reason="customer" if cancelled else None,
        updated_at=_iso(at),
        created_at=_iso(T0),
        processed_at=_iso(T0),
        test=False,
        taxes_included=False,
        refunds=refunds,
        discount_codes=[],
        note_attributes=[],
    )
    body["customer"] = {
        **body["customer"],
        "id": shopify_customer_id(order.email),
        "email": order.email,
        "phone": order.phone,
        "first_name": order.first_name,
        "last_name": "Nováková",
    }
    lines = []
    for index, line in enumerate(order.lines):
        item = copy.deepcopy(template)
        item.update(
            id=SHOPIFY_BASE + order.number * 100 + index,
            sku=f"SKU-{index}",
            price=_money(line.price),
            price_set=_set(line.price),
            quantity=line.quantity,
            gift_card=line.gift_card,
            total_discount="0.00",
            tax_lines=[],
            discount_allocations=[
                {"amount": _money(line.discount), "amount_set": _set(line.discount), "discount_application_index": 0}
            ]
            if line.discount
            else [],
        )
        lines.append(item)
    body["line_items"] = lines
    return body


def _shopify_refund(order: PlannedOrder, index: int, amount: Decimal, at: datetime) -> dict:
    body = copy.deepcopy(load_contract("shopify/webhooks/refunds_create.docs-2026-04.json"))
    refund_id = SHOPIFY_BASE + order.number * 100 + 50 + index
    line = body["refund_line_items"][0]
    line.update(
        line_item_id=SHOPIFY_BASE + order.number * 100,
        quantity=1,
        subtotal=float(amount),  # Shopify sends this one as a number
        subtotal_set=_set(amount),
    )
    line["line_item"] = {**line["line_item"], "id": SHOPIFY_BASE + order.number * 100, "gift_card": False}
    body.update(
        id=refund_id,
        admin_graphql_api_id=f"gid://shopify/Refund/{refund_id}",
        order_id=SHOPIFY_BASE + order.number,
        created_at=_iso(at),
        processed_at=_iso(at),
        refund_line_items=[line],
        transactions=[],
    )
    return body


def _shopify_deliveries(order: PlannedOrder) -> list[tuple[str, str, dict]]:
    out = [("shopify", "orders/create", _shopify_order(order, "pending", T0, [], False))]
    refunds: list[dict] = []
    if order.paid:
        out.append(("shopify", "orders/paid", _shopify_order(order, "paid", T0 + timedelta(hours=1), [], False)))
        for i, amount in enumerate(order.refunds):
            at = T0 + timedelta(days=1 + i)
            refund = _shopify_refund(order, i, amount, at)
            refunds.append(refund)
            out.append(("shopify", "refunds/create", refund))
            out.append(("shopify", "orders/updated", _shopify_order(order, "partially_refunded", at + timedelta(minutes=1), list(refunds), False)))
    if order.cancelled:
        status = "refunded" if order.paid else "voided"
        out.append(("shopify", "orders/cancelled", _shopify_order(order, status, T0 + timedelta(days=9), list(refunds), True)))
    return out


# -- WooCommerce --------------------------------------------------------------


def _woo_order(order: PlannedOrder, status: str, at: datetime, refunds: list[Decimal],
               deleted: int | None = None) -> dict:
    body = copy.deepcopy(load_contract("woocommerce/webhooks/order_updated_with_refunds.body.json"))
    template = body["line_items"][0]
    lines = []
    for index, line in enumerate(order.lines):
        item = copy.deepcopy(template)
        subtotal = line.price * line.quantity
        item.update(
            id=order.number * 100 + index,
            sku=f"SKU-{index}",
            quantity=line.quantity,
            subtotal=_money(subtotal),
            total=_money(max(Decimal(0), subtotal - line.discount)),
            price=float(line.price),
            meta_data=[{"id": 1, "key": "_gift_card", "value": "yes"}] if line.gift_card else [],
        )
        lines.append(item)
    gmt = at.astimezone(UTC).replace(tzinfo=None).isoformat()
    body.update(
        id=order.number,
        number=str(order.number),
        status=status,
        currency="EUR",
        date_created_gmt=T0.replace(tzinfo=None).isoformat(),
        date_modified_gmt=gmt,
        date_modified=gmt,
        customer_id=0,
        line_items=lines,
        refunds=[{"id": order.number * 10 + i, "reason": "", "total": f"-{_money(a)}"}
                 for i, a in enumerate(refunds) if i != deleted],
    )
    body["billing"] = {**body["billing"], "email": order.email, "phone": order.phone or "", "first_name": order.first_name}
    return body


def _woo_deliveries(order: PlannedOrder) -> list[tuple[str, str, dict]]:
    out = [("woocommerce", "order.created", _woo_order(order, "pending", T0, []))]
    refunds: list[Decimal] = []
    if order.paid:
        out.append(("woocommerce", "order.updated", _woo_order(order, "processing", T0 + timedelta(hours=1), [])))
        for i, amount in enumerate(order.refunds):
            refunds.append(amount)
            out.append(("woocommerce", "order.updated", _woo_order(order, "completed", T0 + timedelta(days=1 + i), list(refunds))))
        if order.deleted is not None:  # the order's next snapshot no longer lists it
            out.append(("woocommerce", "order.updated",
                        _woo_order(order, "completed", T0 + timedelta(days=8), list(refunds), order.deleted)))
    if order.cancelled:
        out.append(("woocommerce", "order.updated",
                    _woo_order(order, "cancelled", T0 + timedelta(days=9), list(refunds), order.deleted)))
    return out


def shopify_customer_id(email: str) -> int:
    """The Shopify customer id of an email, the same in every run. (It was
    ``hash(email) % 100_000``: Python salts ``hash`` per process, so in about
    one run in 25 two of a stream's customers shared an id, and the engine
    rightly took them for one: the Celery tests then failed, all four.)"""
    return SHOPIFY_BASE + int.from_bytes(hashlib.sha256(email.encode()).digest()[:6], "big")


def deliveries(order: PlannedOrder) -> list[tuple[str, str, bytes]]:
    """The channel's deliveries for one order, in the order the channel sends them."""
    made = _shopify_deliveries(order) if order.channel == "shopify" else _woo_deliveries(order)
    return [(channel, topic, json.dumps(body).encode()) for channel, topic, body in made]


def expected_by_email(orders: list[PlannedOrder], per_unit: Decimal = Decimal(1)) -> dict[str, int]:
    totals: dict[str, int] = {}
    for order in orders:
        totals[order.email] = totals.get(order.email, 0) + order.expected_points(per_unit)
    return totals


def ingest_all(engine, stream) -> list:
    return [engine.ingest(channel, topic, body) for channel, topic, body in stream]


def shuffled_with_resends(draw, ordered: list, resends: int) -> list:
    """For a ``st.composite`` strategy: the deliveries in any order, with up to
    ``resends`` of them sent again anywhere."""
    shuffled = list(draw(st.permutations(ordered)))
    for delivery in draw(st.lists(st.sampled_from(ordered), max_size=resends)):
        shuffled.insert(draw(st.integers(0, len(shuffled))), delivery)
    return shuffled
