"""WooCommerce webhook bodies translated into canonical events.

A WooCommerce webhook body for an order or a customer is the REST API v3
resource itself, so a ``GET /wc/v3/orders/<id>`` response translates the same
way. Every function here is pure: the events are JSON-able dicts (money as
decimal strings, datetimes as ISO 8601 with an offset, ids as strings) that
``engine.events.load_event`` accepts. Keys this module doesn't know are ignored.

An order lists its refunds only as ``{"id", "reason", "total"}``, and the total
holds the tax and shipping refunded, so a webhook's refund is taken whole. The
reconciliation (``engine.reconcile``) reads each refund from
``GET orders/<id>/refunds`` and sends the order with its refund entries
carrying those details (``with_refund_details``): such a refund is itemized,
the merchandise of its lines without tax or shipping, at its own
``date_created_gmt``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from connectors.base import BadDelivery, address_line, read_decimal
from engine.events import MAX_MONEY, MAX_QUANTITY

CHANNEL = "woocommerce"

ORDER_TOPICS = ("order.created", "order.updated")
ORDER_DELETED = "order.deleted"
CUSTOMER_TOPICS = ("customer.created", "customer.updated")
TOPICS = (*ORDER_TOPICS, ORDER_DELETED, *CUSTOMER_TOPICS)

DEFAULT_ORDER_KEY_META = "_regulars_ref"
#: set by regulars on an order it read from the shop's API (``engine.reconcile``),
#: never by WooCommerce: the moment its list of refunds held for certain
LISTED_AT = "_regulars_listed_at"

PAID_STATUSES = frozenset({"processing", "completed"})
CANCELLED_STATUSES = frozenset({"cancelled", "failed", "trash"})
#: line-item meta keys that mark the line as the purchase of a gift card
GIFT_CARD_META_KEYS = frozenset({"_gift_card", "_wc_gc_giftcard"})

_CENT = Decimal("0.01")
_MAX_ID_LENGTH = 128

Event = dict[str, Any]


# -- Keys ------------------------------------------------------------------------


def resource_id(payload: Any) -> str:
    """The resource's id as a string; ``BadDelivery`` if the payload is not a
    JSON object or has no usable ``id``."""
    if not isinstance(payload, Mapping):
        raise BadDelivery(f"The WooCommerce payload is {_json_kind(payload)}, not an object.")
    value = payload.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_ID_LENGTH:
        return value
    raise BadDelivery(f"The WooCommerce payload has no usable 'id' (got {value!r}).")


def resource_key(topic: str, payload: Mapping[str, Any], digest: Callable[[], str]) -> str:
    """The idempotency key of one resource snapshot.

    WooCommerce reuses delivery ids, so the key is the resource id and its
    ``date_modified_gmt``: an order.created and an order.updated carrying the
    same snapshot are one delivery. An order whose refunds carry their details
    (``with_refund_details``) adds ``:refunds:`` and their SHA-256. Without a
    usable date, ``digest()`` (a SHA-256 of the delivery) stands in for it.
    """
    rid = resource_id(payload)
    if topic == ORDER_DELETED:
        return f"order.deleted:{rid}"
    prefix = "customer" if topic in CUSTOMER_TOPICS else "order"
    modified = payload.get("date_modified_gmt")
    if isinstance(modified, str) and _is_datetime(modified):
        details = refund_details_digest(payload) if prefix == "order" else None
        # A snapshot with its refunds' details read is a delivery of its own,
        # or the plain webhook of the same snapshot would swallow it (or it, that).
        return f"{prefix}:{rid}:{modified}" + (f":refunds:{details}" if details else "")
    return f"{prefix}:{rid}:sha256:{digest()}"


def refund_details_digest(payload: Mapping[str, Any]) -> str | None:
    """SHA-256 of the refund details an order body carries (see
    ``with_refund_details``), or None when it carries none (a webhook). Of
    an order read by the reconciliation (``LISTED_AT``), of every refund it
    lists and that moment: a refund deleted in the shop changes the list, not
    the order's ``date_modified_gmt``, and the order read again must be a
    delivery of its own (read again the same day, the same delivery)."""
    refunds = payload.get("refunds")
    listed = refunds if isinstance(refunds, list) else []
    if payload.get(LISTED_AT) is not None:
        return payload_digest({"listed_at": payload[LISTED_AT], "refunds": listed})
    detailed = [entry for entry in listed if _is_detailed(entry)]
    return payload_digest(detailed) if detailed else None


def payload_digest(payload: Any) -> str:
    """SHA-256 of the payload's canonical JSON (sorted keys), for when the
    delivery's bytes are not at hand."""
    canonical = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- Events ----------------------------------------------------------------------


def order_events(topic: str, payload: Any, order_key_meta: str) -> list[Event]:
    """The canonical event of an order.created or order.updated body: its type
    and status follow the WooCommerce status (see ``order_state``)."""
    order_id = resource_id(payload)
    occurred_at = _gmt(payload, "date_modified_gmt", "date_created_gmt")
    if occurred_at is None:
        raise BadDelivery(
            f"Order {order_id} has neither a date_modified_gmt nor a date_created_gmt."
        )
    kind, status = order_state(payload.get("status"))
    lines = [_line(item, order_id) for item in _list(payload, "line_items", order_id)]
    by_id = {line["id"]: line for line in lines}
    order = {
        "id": order_id,
        "version": _gmt(payload, "date_modified_gmt"),
        "status": status,
        "currency": _text(payload.get("currency")),
        "lines": lines,
        "shipping": _money(payload.get("shipping_total"), f"Order {order_id}'s shipping_total"),
        "tax": _money(payload.get("total_tax"), f"Order {order_id}'s total_tax"),
        "total": _optional_money(payload.get("total"), f"Order {order_id}'s total"),
        "refunds": [_refund(entry, order_id, by_id) for entry in _list(payload, "refunds", order_id)],
        "refunds_complete": True,  # (a refund deleted in the shop leaves the list)
        "refunds_listed_at": _gmt(payload, LISTED_AT),  # (a reconciliation's body)
        "discount_codes": _discount_codes(payload, order_id),
        "attributes": _attributes(payload, order_key_meta, order_id),
    }
    key = resource_key(topic, payload, lambda: payload_digest(payload))
    return [_event(kind, key, occurred_at, customer=_order_customer(payload), order=order)]


def deleted_order_events(payload: Any) -> list[Event]:
    """The canonical event of an order.deleted body (WooCommerce sends only
    ``{"id": N}``): a cancellation without version or lines."""
    order_id = resource_id(payload)
    # The body has no date. The engine treats a version-less cancellation as
    # terminal, so its time does not change the outcome and the clock may stand in.
    occurred_at = _gmt(payload, "date_modified_gmt") or datetime.now(UTC).isoformat()
    order = {"id": order_id, "status": "cancelled"}
    key = resource_key(ORDER_DELETED, payload, lambda: payload_digest(payload))
    customer = _order_customer(payload)
    return [_event("order.cancelled", key, occurred_at, customer=customer, order=order)]


def customer_events(topic: str, payload: Any) -> list[Event]:
    """The customer.upserted event of a customer.created or customer.updated body."""
    customer_id = resource_id(payload)
    occurred_at = _gmt(payload, "date_modified_gmt", "date_created_gmt")
    if occurred_at is None:
        raise BadDelivery(
            f"Customer {customer_id} has neither a date_modified_gmt nor a date_created_gmt."
        )
    billing = _mapping(payload.get("billing"))
    customer = {
        "email": _text(payload.get("email")) or _text(billing.get("email")),
        "phone": _text(billing.get("phone")),
        "external_id": customer_id,
        "first_name": _text(payload.get("first_name")) or _text(billing.get("first_name")),
        "last_name": _text(payload.get("last_name")) or _text(billing.get("last_name")),
        "country": _text(billing.get("country")),
    }
    key = resource_key(topic, payload, lambda: payload_digest(payload))
    return [_event("customer.upserted", key, occurred_at, customer=customer)]


def order_state(status: Any) -> tuple[str, str]:
    """The canonical event type and order status for a WooCommerce order status."""
    if not isinstance(status, str):
        status = ""
    if status in PAID_STATUSES:
        return "order.paid", "paid"
    if status == "refunded":
        return "order.updated", "refunded"
    if status in CANCELLED_STATUSES:
        return "order.cancelled", "cancelled"
    # pending, on-hold, checkout-draft and statuses added by plugins: not paid yet
    return "order.updated", "pending"


def _event(kind: str, key: str, occurred_at: str, **payload: Any) -> Event:
    return {
        "type": kind,
        "channel": CHANNEL,
        "idempotency_key": key,
        "occurred_at": occurred_at,
        **payload,
    }


# -- Parts of an order -----------------------------------------------------------


def _line(item: Any, order_id: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise BadDelivery(f"Order {order_id} has a line item that is not an object.")
    line_id = item.get("id")
    if isinstance(line_id, bool) or not isinstance(line_id, int | str) or line_id == "":
        raise BadDelivery(f"Order {order_id} has a line item without an id.")
    where = f"Order {order_id}'s line {line_id}"
    quantity = _quantity(item.get("quantity"), f"{where} quantity")
    if item.get("subtotal") in (None, ""):
        raise BadDelivery(f"{where} has no subtotal.")
    # WooCommerce stores line subtotal (before discounts) and total (after them)
    # without tax, whether or not the shop's prices include tax.
    subtotal = _bounded(_number(item["subtotal"], f"{where} subtotal"), f"{where} subtotal")
    raw_total = item.get("total")
    total = subtotal if raw_total in (None, "") else _number(raw_total, f"{where} total")
    unit_price = (subtotal / quantity).quantize(_CENT, ROUND_HALF_UP) if quantity else Decimal(0)
    return {
        "id": str(line_id),
        "sku": _text(item.get("sku")),
        "name": _text(item.get("name")),
        "quantity": quantity,
        "unit_price": _format(unit_price),
        "subtotal": _format(subtotal),
        "discount": _format(max(subtotal - total, Decimal(0))),
        "tax": "0",
        "gift_card": _is_gift_card(item),
    }


def _refund(entry: Any, order_id: str, lines: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    # An order lists its refunds as {"id", "reason" (or "refund"), "total"} with
    # a negative total; which lines were refunded is not in the order.
    if not isinstance(entry, Mapping) or entry.get("id") in (None, ""):
        raise BadDelivery(f"Order {order_id} has a refund without an id.")
    if _is_detailed(entry):
        return _detailed_refund(entry, order_id, lines)
    where = f"Order {order_id}'s refund {entry['id']} total"
    amount = abs(_number(entry.get("total"), where))
    return {"id": str(entry["id"]), "amount": _format(_bounded(amount, where))}


def _detailed_refund(entry: Mapping[str, Any], order_id: str, lines: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A refund entry carrying its refund resource (``GET orders/<id>/refunds``).

    With lines that moved money, it is itemized: its merchandise is the sum of
    its line items' totals (negative, after discounts, without tax), gift-card
    lines left out; its shipping, fee and tax lines take nothing off eligible
    spend. Without them (an amount refunded, no line said) it is its amount,
    as a webhook's refund is. Either way it counts from ``date_created_gmt``.

    ``BadDelivery`` for a resource that can't be one WooCommerce wrote: no
    ``date_created_gmt``, a negative ``amount``, a line that takes money in
    (a positive total), or one that gives back more of an order line than the
    order has of it (more of its quantity, or more than its subtotal).
    """
    where = f"Order {order_id}'s refund {entry['id']}"
    occurred_at = _gmt(entry, "date_created_gmt")
    if occurred_at is None:
        raise BadDelivery(f"{where} has no date_created_gmt.")
    raw = entry.get("amount")
    stated = None if raw in (None, "") else _number(raw, f"{where} amount")
    if stated is not None and stated < 0:
        raise BadDelivery(f"{where} amount is negative: {raw!r} (WooCommerce writes a refund's amount positive).")
    merchandise = tax = Decimal(0)
    moved = False
    refunded_lines = []
    for item in _list(entry, "line_items", where):
        if not isinstance(item, Mapping):
            raise BadDelivery(f"{where} has a line item that is not an object.")
        item_where = f"{where}'s line {item.get('id')}"
        total = _given_back(item.get("total"), f"{item_where} total")
        item_tax = _given_back(item.get("total_tax"), f"{item_where} total_tax")
        quantity = _quantity(_unsigned(item.get("quantity")), f"{item_where} quantity")
        moved = moved or bool(total or item_tax)
        refunded_id = _refunded_item_id(item)
        line = lines.get(refunded_id) if refunded_id else None
        if line is not None:
            _within_line(line, total, quantity, item_where)
            if line["gift_card"]:
                continue
        merchandise += total
        tax += item_tax
        refunded_lines.append({
            "line_id": refunded_id or str(item.get("id")),
            "sku": _text(item.get("sku")),
            "quantity": quantity,
            "amount": _format(total),
        })
    for key in ("shipping_lines", "fee_lines"):
        for item in _list(entry, key, where):
            if not isinstance(item, Mapping):
                raise BadDelivery(f"{where} has an entry of {key} that is not an object.")
            for k in ("total", "total_tax"):
                moved = bool(_given_back(item.get(k), f"{where}'s {key} {k}")) or moved
    if not moved:
        # (a quantity-only line, e.g. restocked, says nothing of the money)
        amount = stated if stated is not None else abs(_number(entry.get("total"), where))
        amount = _bounded(amount, f"{where} amount")
        return {"id": str(entry["id"]), "amount": _format(amount), "occurred_at": occurred_at}
    return {
        "id": str(entry["id"]),
        "amount": _format(_bounded(merchandise, f"{where} merchandise")),
        "tax": _format(_bounded(tax, f"{where} tax")),
        "occurred_at": occurred_at,
        "lines": refunded_lines,
        "itemized": True,
    }


def _given_back(value: Any, where: str) -> Decimal:
    """What a refund line gives back, from its total (negative in WooCommerce;
    missing means zero)."""
    amount = _number(_or_zero(value), where)
    if amount > 0:
        raise BadDelivery(f"{where} is positive: {value!r} (a refund's lines are negative in WooCommerce).")
    return _bounded(-amount, where)


def _within_line(line: Mapping[str, Any], total: Decimal, quantity: int, where: str) -> None:
    """A refund line gives back no more of an order line than the order has."""
    if quantity > line["quantity"]:
        raise BadDelivery(f"{where} gives back {quantity} of line {line['id']}, which has {line['quantity']}.")
    if total > Decimal(line["subtotal"]) + _CENT:  # (a cent for the shares' rounding)
        raise BadDelivery(f"{where} gives back {total} of line {line['id']}, which came to {line['subtotal']}.")


def with_refund_details(order: Mapping[str, Any], refunds: Any) -> dict[str, Any]:
    """The order with each refund it lists carrying that refund's resource
    from ``GET orders/<id>/refunds`` (its ``line_items``, ``shipping_lines``,
    ``amount``, ``date_created_gmt``; not its ``_links``), matched by id. A
    refund the order lists but ``refunds`` lacks stays as the order has it
    (its total, no time of its own); one the order does not list yet is left
    for a newer snapshot.

    ``BadDelivery`` when ``refunds`` is not what that endpoint answers: not a
    list, a refund that is not an object or has no id, or a refund the order
    lists without its ``line_items`` list. (The values in them are checked when
    the order is translated: ``_detailed_refund``.)"""
    if not isinstance(refunds, list):
        raise BadDelivery(f"The refunds are {_json_kind(refunds)}, not a list.")
    details = {}
    for number, refund in enumerate(refunds, 1):
        if not isinstance(refund, Mapping):
            raise BadDelivery(f"Refund {number} of {len(refunds)} is {_json_kind(refund)}, not an object.")
        rid = refund.get("id")
        if isinstance(rid, bool) or not (isinstance(rid, int) and rid > 0 or isinstance(rid, str) and rid.strip()):
            raise BadDelivery(f"Refund {number} of {len(refunds)} has no usable id (got {rid!r}).")
        details[str(rid)] = {k: v for k, v in refund.items() if k != "_links"}
    listed = order.get("refunds")
    if not isinstance(listed, list):
        return dict(order)
    entries = []
    for entry in listed:
        found = details.get(str(entry.get("id"))) if isinstance(entry, Mapping) else None
        if found is None:
            entries.append(entry)
            continue
        if not isinstance(found.get("line_items"), list):
            raise BadDelivery(f"Refund {entry['id']}'s line_items is {_json_kind(found.get('line_items'))}, "
                              "not a list.")
        entries.append({**entry, **found})
    return {**order, "refunds": entries}


def _is_detailed(entry: Any) -> bool:
    """A refund entry that carries its refund resource (``line_items`` is
    always in one, never in an order's own listing)."""
    return isinstance(entry, Mapping) and isinstance(entry.get("line_items"), list)


def _refunded_item_id(item: Mapping[str, Any]) -> str | None:
    """The order line a refund line gives back (its ``_refunded_item_id`` meta)."""
    meta = item.get("meta_data")
    for entry in meta if isinstance(meta, list) else ():
        if isinstance(entry, Mapping) and entry.get("key") == "_refunded_item_id":
            value = _text(entry.get("value"))
            return value.strip() if value else None
    return None


def _unsigned(value: Any) -> Any:
    """A refund line's quantity (negative in WooCommerce) without its sign."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    if isinstance(value, str):
        return value.strip().removeprefix("-")
    return value


def _or_zero(value: Any) -> Any:
    return "0" if value is None or value == "" else value


def _discount_codes(payload: Mapping[str, Any], order_id: str) -> list[str]:
    codes = []
    for entry in _list(payload, "coupon_lines", order_id):
        code = _text(entry.get("code")) if isinstance(entry, Mapping) else None
        if code is not None:
            codes.append(code)
    return codes


def _attributes(payload: Mapping[str, Any], order_key_meta: str, order_id: str) -> dict[str, Any]:
    """Public meta data (keys not starting with "_") and the referral meta key."""
    attributes: dict[str, Any] = {}
    for entry in _list(payload, "meta_data", order_id):
        key = entry.get("key") if isinstance(entry, Mapping) else None
        if isinstance(key, str) and key and (not key.startswith("_") or key == order_key_meta):
            attributes[key] = entry.get("value")
    return attributes


def _order_customer(payload: Mapping[str, Any]) -> dict[str, str | None]:
    billing = _mapping(payload.get("billing"))
    shipping = _mapping(payload.get("shipping"))
    customer_id = payload.get("customer_id")
    guest = customer_id in (None, 0, "0", "") or isinstance(customer_id, bool)
    return {
        "email": _text(billing.get("email")),
        "phone": _text(billing.get("phone")),
        "external_id": None if guest else str(customer_id),
        "first_name": _text(billing.get("first_name")),
        "last_name": _text(billing.get("last_name")),
        "country": _text(billing.get("country")),
        "address": address_line(shipping.get("address_1"), shipping.get("postcode"), shipping.get("country")),
    }


def _is_gift_card(item: Mapping[str, Any]) -> bool:
    meta = item.get("meta_data")
    if not isinstance(meta, list):
        return False
    keys = (m.get("key") for m in meta if isinstance(m, Mapping))
    return any(isinstance(key, str) and key in GIFT_CARD_META_KEYS for key in keys)


# -- Values ----------------------------------------------------------------------


def _number(value: Any, where: str) -> Decimal:
    """A money value as Decimal; WooCommerce sends strings, numbers go through ``str``."""
    return read_decimal(str(value) if isinstance(value, Decimal) else value, where)


def _bounded(amount: Decimal, where: str) -> Decimal:
    if amount < 0:
        raise BadDelivery(f"{where} is negative: {amount}.")
    if amount > MAX_MONEY:
        raise BadDelivery(f"{where} exceeds the largest accepted amount: {amount}.")
    return amount


def _money(value: Any, where: str) -> str:
    """A non-negative amount as a decimal string; missing means zero."""
    if value is None or value == "":
        return "0"
    return _format(_bounded(_number(value, where), where))


def _optional_money(value: Any, where: str) -> str | None:
    return None if value is None or value == "" else _money(value, where)


def _format(amount: Decimal) -> str:
    return format(amount, "f")


def _quantity(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise BadDelivery(f"{where} is not a whole number: {value!r}.")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise BadDelivery(f"{where} is not a whole number: {value!r}.") from None
    if not number.is_finite() or number != number.to_integral_value():
        raise BadDelivery(f"{where} is not a whole number: {value!r}.")
    if not 0 <= number <= MAX_QUANTITY:
        raise BadDelivery(f"{where} is out of range: {value!r}.")
    return int(number)


def _gmt(payload: Mapping[str, Any], *names: str) -> str | None:
    """The first present of the named ``*_gmt`` fields as ISO 8601 with an
    offset; WooCommerce writes them without a zone, and they are UTC."""
    for name in names:
        value = payload.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not _is_datetime(value):
            raise BadDelivery(f"{name} is not an ISO 8601 date: {value!r}.")
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.isoformat()
    return None


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str | None:
    """A string field, None when empty (WooCommerce sends "" for unset fields)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _mapping(value: Any) -> Mapping[str, Any]:
    # PHP encodes an empty array as [], so an empty billing address may be a list.
    return value if isinstance(value, Mapping) else {}


def _list(payload: Mapping[str, Any], key: str, owner: str) -> list[Any]:
    value = payload.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadDelivery(f"{key} of resource {owner} is {_json_kind(value)}, not a list.")
    return value
