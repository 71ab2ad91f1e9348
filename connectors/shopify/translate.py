"""Shopify webhook payloads translated into canonical events.

An ``orders/*`` webhook body is the REST order resource, a ``refunds/create``
body the refund resource and a ``customers/*`` body the customer resource, so a
REST response translates the same way. Every function here is pure: the events
are JSON-able dicts (money as decimal strings, datetimes as ISO 8601 with an
offset, ids as ``str(int)`` so ids above 2^53 stay exact) that
``engine.events.load_event`` accepts. Keys this module doesn't know are ignored:
Shopify adds fields with every API version.

Money is read in the shop's currency: ``<field>_set.shop_money.amount`` when
the payload has it, else the plain field.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from connectors.base import BadDelivery, address_line
from connectors.shopify.values import (
    ZERO,
    as_mapping,
    as_object,
    first_moment,
    money_str,
    read_id,
    read_money,
    read_money_or_zero,
    read_objects,
    read_quantity,
    read_text,
    read_timestamp,
    required_moment,
    sum_money,
)

CHANNEL = "shopify"

ORDER_EVENT_TYPES = {
    "orders/create": "order.updated",
    "orders/updated": "order.updated",
    "orders/paid": "order.paid",
    "orders/cancelled": "order.cancelled",
}
REFUND_TOPIC = "refunds/create"
CUSTOMER_TOPICS = ("customers/create", "customers/update")
#: Shopify's mandatory privacy webhooks (every app must take them)
PRIVACY_EVENT_TYPES = {
    "customers/data_request": "privacy.data_request",
    "customers/redact": "privacy.redact",
    "shop/redact": "privacy.shop_redact",
}
TOPICS = (*ORDER_EVENT_TYPES, REFUND_TOPIC, *CUSTOMER_TOPICS, *PRIVACY_EVENT_TYPES)

ORDER_MOMENTS = ("updated_at", "processed_at", "created_at")
CUSTOMER_MOMENTS = ("updated_at", "created_at")
REFUND_MOMENTS = ("processed_at", "created_at")
PAID_FINANCIAL_STATUSES = frozenset({"paid", "partially_refunded"})

Event = dict[str, Any]


# -- Orders ------------------------------------------------------------------------


def order_status(order: Mapping[str, Any]) -> str:
    """The canonical status of a Shopify order: cancelled when ``cancelled_at``
    is set, else read from ``financial_status`` (unknown values are pending)."""
    if order.get("cancelled_at"):
        return "cancelled"
    financial = read_text(order.get("financial_status"))  # (not a string: unknown, so pending)
    if financial in PAID_FINANCIAL_STATUSES:
        return "paid"
    if financial == "refunded":
        return "refunded"
    if financial == "voided":
        return "cancelled"
    return "pending"


def _line(item: Mapping[str, Any], what: str, taxes_included: bool) -> dict[str, Any]:
    unit_price = read_money(item, "price", f"{what}.price")
    if unit_price is None:
        raise BadDelivery(f"The {what} has no price.")
    if "discount_allocations" in item:
        allocations = read_objects(item["discount_allocations"], f"{what}.discount_allocations")
        discount = sum_money(allocations, "amount", f"{what}.discount_allocations")
    else:
        # total_discount is legacy (it misses order-level discounts): a fallback only.
        discount = read_money_or_zero(item, "total_discount", f"{what}.total_discount")
    tax = ZERO
    if taxes_included:
        tax_lines = read_objects(item.get("tax_lines"), f"{what}.tax_lines")
        tax = sum_money(tax_lines, "price", f"{what}.tax_lines")
    return {
        "id": read_id(item.get("id"), f"{what}.id"),
        "sku": read_text(item.get("sku")),
        "name": read_text(item.get("name")) or read_text(item.get("title")),
        "quantity": read_quantity(item.get("quantity"), f"{what}.quantity"),
        "unit_price": money_str(unit_price),
        "discount": money_str(discount),
        "tax": money_str(tax),
        "gift_card": item.get("gift_card") is True,
    }


def _shipping(order: Mapping[str, Any]) -> Decimal:
    total = read_money(order, "total_shipping_price", "order total_shipping_price")
    if total is not None:
        return total
    shipping_lines = read_objects(order.get("shipping_lines"), "order shipping_lines")
    return sum_money(shipping_lines, "price", "order shipping_lines")


def _attributes(order: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for attribute in read_objects(order.get("note_attributes"), "order note_attributes"):
        name = attribute.get("name")
        if isinstance(name, str) and name:
            attributes[name] = attribute.get("value")
    note = read_text(order.get("note"))
    if note is not None:
        attributes["note"] = note
    return attributes


def _consent(customer: Mapping[str, Any]) -> bool | None:
    consent = customer.get("email_marketing_consent")
    if isinstance(consent, Mapping) and isinstance(consent.get("state"), str):
        return consent["state"] == "subscribed"
    return None


def _first_text(*values: Any) -> str | None:
    return next((text for text in map(read_text, values) if text is not None), None)


def order_customer_hints(order: Mapping[str, Any]) -> dict[str, Any]:
    """Identity hints of the person who placed an order (None when unknown)."""
    customer = as_mapping(order.get("customer"))
    billing = as_mapping(order.get("billing_address"))
    shipping = as_mapping(order.get("shipping_address"))
    # Names come as a pair, so a customer's first name never meets a billing last name.
    has_name = _first_text(customer.get("first_name"), customer.get("last_name"))
    names = customer if has_name else billing
    customer_id = customer.get("id")
    return {
        "email": _first_text(order.get("email"), order.get("contact_email"),
                             customer.get("email")),
        "phone": _first_text(order.get("phone"), customer.get("phone"), billing.get("phone")),
        "external_id": None if customer_id is None else read_id(customer_id, "order customer id"),
        "first_name": read_text(names.get("first_name")),
        "last_name": read_text(names.get("last_name")),
        "country": _first_text(billing.get("country_code"), shipping.get("country_code")),
        "accepts_marketing": _consent(customer) if customer else None,
        "address": address_line(shipping.get("address1"), shipping.get("zip"), shipping.get("country_code")),
    }


def translate_order(topic: str, payload: Any) -> Event:
    """The canonical event of an ``orders/*`` webhook body: the full snapshot of
    the order at its ``updated_at``."""
    order = as_object(payload, "Shopify order payload")
    order_id = read_id(order.get("id"), "order id")
    line_items = order.get("line_items")
    if not isinstance(line_items, list):
        raise BadDelivery(f"Order {order_id} has no line_items list.")
    taxes_included = order.get("taxes_included") is True
    lines = [
        _line(item, f"order line_items[{index}]", taxes_included)
        for index, item in enumerate(read_objects(line_items, "order line_items"))
    ]
    refunds = [
        translate_refund(refund, f"order refunds[{index}]")
        for index, refund in enumerate(read_objects(order.get("refunds"), "order refunds"))
    ]
    codes = [
        code for code in (
            read_text(entry.get("code"))
            for entry in read_objects(order.get("discount_codes"), "order discount_codes")
        ) if code
    ]
    version = read_timestamp(order.get("updated_at"), "order updated_at")
    occurred_at = required_moment(order, ORDER_MOMENTS, "order")
    total = read_money(order, "total_price", "order total_price")
    return {
        "type": ORDER_EVENT_TYPES[topic],
        "channel": CHANNEL,
        "idempotency_key": f"{topic}:{order_id}:{occurred_at}",
        "occurred_at": occurred_at,
        "customer": order_customer_hints(order),
        "order": {
            "id": order_id,
            "version": version,
            "status": order_status(order),
            "currency": read_text(order.get("currency")),
            "lines": lines,
            "shipping": money_str(_shipping(order)),
            "tax": money_str(read_money_or_zero(order, "total_tax", "order total_tax")),
            "tip": money_str(read_money_or_zero(order, "total_tip_received", "order total_tip_received")),
            "total": None if total is None else money_str(total),
            "refunds": refunds,
            "discount_codes": codes,
            "attributes": _attributes(order),
            "test": order.get("test") is True,
        },
    }


# -- Refunds -----------------------------------------------------------------------


def _refund_line_tax(refund_line: Mapping[str, Any], line_item: Mapping[str, Any], quantity: int,
                     what: str) -> Decimal:
    """The tax on what one refund line gives back: Shopify's ``total_tax``; old
    REST refunds lack it, so it is the line item's tax prorated to the
    refunded quantity."""
    total_tax = read_money(refund_line, "total_tax", f"{what}.total_tax")
    if total_tax is not None:
        return total_tax
    tax = sum_money(read_objects(line_item.get("tax_lines"), f"{what}.line_item.tax_lines"), "price",
                    f"{what}.line_item.tax_lines")
    sold = line_item.get("quantity")
    if tax and isinstance(sold, int) and not isinstance(sold, bool) and sold > 0 and quantity != sold:
        tax = (tax * quantity / sold).quantize(tax, rounding=ROUND_HALF_EVEN)
    return tax


def _refund_line_amount(refund_line: Mapping[str, Any], line_item: Mapping[str, Any],
                        quantity: int, what: str) -> Decimal:
    """What one refund line gives back: Shopify's ``subtotal`` (after discounts);
    old REST refunds lack it, so it is rebuilt from the line item's price and
    its discount prorated to the refunded quantity."""
    subtotal = read_money(refund_line, "subtotal", f"{what}.subtotal")
    if subtotal is not None:
        return subtotal
    price = read_money(line_item, "price", f"{what}.line_item.price")
    if price is None:
        raise BadDelivery(f"The {what} has neither a subtotal nor a line_item price.")
    if "discount_allocations" in line_item:
        allocations = read_objects(line_item["discount_allocations"],
                               f"{what}.line_item.discount_allocations")
        discount = sum_money(allocations, "amount", f"{what}.line_item.discount_allocations")
    else:
        discount = read_money_or_zero(line_item, "total_discount",
                                  f"{what}.line_item.total_discount")
    sold = line_item.get("quantity")
    if discount and isinstance(sold, int) and not isinstance(sold, bool) and sold > 0:
        discount = (discount * quantity / sold).quantize(price, rounding=ROUND_HALF_EVEN)
    return max(ZERO, price * quantity - discount)


def translate_refund(payload: Any, what: str = "refund") -> dict[str, Any]:
    """One Shopify refund as a canonical refund: ``amount`` is the merchandise
    refunded (refund line subtotals, gift-card lines skipped), ``tax`` the tax
    on those lines (their ``total_tax``). Shipping and order adjustments are
    left out. The refund alone doesn't say whether prices include tax (then
    ``amount`` contains ``tax``): the order does, and the engine takes the tax
    out of what is refunded when its lines carry tax (``engine.orders.view``)."""
    refund = as_object(payload, what)
    refund_id = read_id(refund.get("id"), f"{what} id")
    amount = tax = ZERO
    lines = []
    refund_lines = read_objects(refund.get("refund_line_items"), f"{what} refund_line_items")
    for index, refund_line in enumerate(refund_lines):
        line_what = f"{what} refund_line_items[{index}]"
        line_item = as_mapping(refund_line.get("line_item"))
        if line_item.get("gift_card") is True:
            continue
        quantity = read_quantity(refund_line.get("quantity"), f"{line_what}.quantity")
        line_amount = _refund_line_amount(refund_line, line_item, quantity, line_what)
        amount += line_amount
        tax += _refund_line_tax(refund_line, line_item, quantity, line_what)
        line_id = refund_line.get("line_item_id")
        if line_id is None:
            line_id = line_item.get("id")
        lines.append({
            "line_id": read_id(line_id, f"{line_what}.line_item_id"),
            "sku": read_text(line_item.get("sku")),
            "quantity": quantity,
            "amount": money_str(line_amount),
        })
    return {
        "id": refund_id,
        "amount": money_str(amount),
        "tax": money_str(tax),
        "occurred_at": first_moment(refund, REFUND_MOMENTS, what),
        "lines": lines,
    }


def translate_refund_event(payload: Any) -> Event:
    """The canonical ``order.refunded`` event of a ``refunds/create`` body."""
    refund_payload = as_object(payload, "Shopify refund payload")
    order_id = read_id(refund_payload.get("order_id"), "refund order_id")
    refund = translate_refund(refund_payload)
    if refund["occurred_at"] is None:
        raise BadDelivery(f"Refund {refund['id']} has neither processed_at nor created_at.")
    return {
        "type": "order.refunded",
        "channel": CHANNEL,
        "idempotency_key": f"{REFUND_TOPIC}:{refund['id']}",
        "occurred_at": refund["occurred_at"],
        "order": {"id": order_id, "refunds": [refund]},
    }


# -- Customers ---------------------------------------------------------------------


def translate_customer(topic: str, payload: Any) -> Event:
    """The canonical ``customer.upserted`` event of a ``customers/*`` body."""
    customer = as_object(payload, "Shopify customer payload")
    customer_id = read_id(customer.get("id"), "customer id")
    occurred_at = required_moment(customer, CUSTOMER_MOMENTS, "customer")
    default_address = as_mapping(customer.get("default_address"))
    return {
        "type": "customer.upserted",
        "channel": CHANNEL,
        "idempotency_key": f"{topic}:{customer_id}:{occurred_at}",
        "occurred_at": occurred_at,
        "customer": {
            "email": read_text(customer.get("email")),
            "phone": read_text(customer.get("phone")),
            "external_id": customer_id,
            "first_name": read_text(customer.get("first_name")),
            "last_name": read_text(customer.get("last_name")),
            "country": read_text(default_address.get("country_code")),
            "accepts_marketing": _consent(customer),
        },
    }


# -- Privacy -----------------------------------------------------------------------


def translate_privacy(topic: str, payload: Any, triggered_at: str | None = None) -> Event:
    """The canonical ``privacy.*`` event of a mandatory privacy webhook:
    ``customers/data_request`` ({shop_id, shop_domain, customer {id, email,
    phone}, orders_requested, data_request {id}}), ``customers/redact``
    (the same with ``orders_to_redact``) or ``shop/redact`` ({shop_id,
    shop_domain}). Their bodies carry no time: ``triggered_at`` is the
    delivery's ``X-Shopify-Triggered-At`` header."""
    body = as_object(payload, f"Shopify {topic} payload")
    shop_id = read_id(body.get("shop_id"), f"{topic} shop_id")
    shop = read_text(body.get("shop_domain"))
    kind = PRIVACY_EVENT_TYPES[topic]
    occurred_at = read_timestamp(triggered_at, "X-Shopify-Triggered-At") if triggered_at else None
    if kind == "privacy.shop_redact":
        return {
            "type": kind, "channel": CHANNEL, "idempotency_key": f"{topic}:{shop_id}",
            "occurred_at": occurred_at or _now(), "privacy": {"shop": shop},
        }
    person = as_object(body.get("customer"), f"{topic} customer")
    customer_id = read_id(person.get("id"), f"{topic} customer id")
    orders_field = "orders_requested" if kind == "privacy.data_request" else "orders_to_redact"
    listed = body.get(orders_field)
    if listed is not None and not isinstance(listed, list):
        raise BadDelivery(f"The {topic} {orders_field} must be a list, got a JSON {type(listed).__name__}.")
    orders = [read_id(o, f"{topic} {orders_field}") for o in (listed or [])]
    request_id = None
    if kind == "privacy.data_request":
        request_id = read_id(as_object(body.get("data_request"), f"{topic} data_request").get("id"),
                             f"{topic} data_request id")
    reference = request_id or customer_id
    return {
        "type": kind, "channel": CHANNEL, "idempotency_key": f"{topic}:{shop_id}:{reference}",
        "occurred_at": occurred_at or _now(),
        "customer": {"email": read_text(person.get("email")), "phone": read_text(person.get("phone")),
                     "external_id": customer_id},
        "privacy": {"request_id": request_id, "shop": shop, "orders": orders},
    }


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


# -- Dispatch ----------------------------------------------------------------------


def translate_payload(topic: str, payload: Any) -> list[Event]:
    """The canonical events of one Shopify webhook body (unvalidated dicts)."""
    if topic in ORDER_EVENT_TYPES:
        return [translate_order(topic, payload)]
    if topic == REFUND_TOPIC:
        return [translate_refund_event(payload)]
    if topic in CUSTOMER_TOPICS:
        return [translate_customer(topic, payload)]
    if topic in PRIVACY_EVENT_TYPES:
        return [translate_privacy(topic, payload)]
    raise BadDelivery(f"The Shopify connector does not handle the topic {topic!r}.")


def content_key(topic: str, payload: Any) -> str:
    """The idempotency key of a delivery read from its content: the resource id
    and its ``updated_at`` (a refund never changes, so its id alone). It is the
    ``idempotency_key`` of the event the delivery translates to."""
    resource = as_object(payload, f"Shopify {topic} payload")
    if topic == REFUND_TOPIC:
        return f"{REFUND_TOPIC}:{read_id(resource.get('id'), 'refund id')}"
    moments = CUSTOMER_MOMENTS if topic in CUSTOMER_TOPICS else ORDER_MOMENTS
    resource_id = read_id(resource.get("id"), f"{topic} id")
    return f"{topic}:{resource_id}:{required_moment(resource, moments, topic)}"
