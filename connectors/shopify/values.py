"""Readers of Shopify JSON values: ids, money, quantities, datetimes, lists.

Each reader raises ``BadDelivery`` with a sentence naming the field (``what``)
when a value can't be what Shopify documents, and reads an absent (null) value
as absent wherever Shopify may omit it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from connectors.base import BadDelivery, read_decimal

ZERO = Decimal(0)


def as_object(value: Any, what: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else ``BadDelivery``."""
    if not isinstance(value, Mapping):
        raise BadDelivery(f"The {what} is a JSON {type(value).__name__}, not an object.")
    return value


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (an optional object)."""
    return value if isinstance(value, Mapping) else {}


def read_id(value: Any, what: str) -> str:
    """A Shopify id as a string; ``BadDelivery`` when missing or not an id."""
    # str(int) keeps ids above 2^53 exact; a float id has already lost digits.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None:
        raise BadDelivery(f"The {what} is missing.")
    raise BadDelivery(f"The {what} must be an integer, got {value!r}.")


def read_text(value: Any) -> str | None:
    """A non-blank string, stripped; None for anything else."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def read_amount(value: Any, what: str) -> Decimal:
    """A money value (a JSON number or a decimal string) as an exact Decimal."""
    return read_decimal(value, f"The {what}")


def read_money(obj: Mapping[str, Any], key: str, what: str) -> Decimal | None:
    """``obj[key]`` in shop money, preferring ``obj[key + "_set"].shop_money``;
    None when the payload has neither."""
    money_set = obj.get(f"{key}_set")
    if isinstance(money_set, Mapping):
        shop_money = money_set.get("shop_money")
        if isinstance(shop_money, Mapping) and shop_money.get("amount") is not None:
            return read_amount(shop_money["amount"], f"{what}_set.shop_money.amount")
    value = obj.get(key)
    return None if value is None else read_amount(value, what)


def read_money_or_zero(obj: Mapping[str, Any], key: str, what: str) -> Decimal:
    """``read_money``, with zero for an absent value."""
    result = read_money(obj, key, what)
    return ZERO if result is None else result


def sum_money(items: list[Mapping[str, Any]], key: str, what: str) -> Decimal:
    """The sum of ``item[key]`` (shop money) over ``items``."""
    total = ZERO
    for index, item in enumerate(items):
        total += read_money_or_zero(item, key, f"{what}[{index}].{key}")
    return total


def money_str(value: Decimal) -> str:
    """A Decimal as a plain decimal string (never an exponent)."""
    return format(value, "f")


def read_quantity(value: Any, what: str) -> int:
    """A non-negative integer quantity."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadDelivery(f"The {what} must be an integer, got {value!r}.")
    if value < 0:
        raise BadDelivery(f"The {what} must not be negative, got {value}.")
    return value


def read_timestamp(value: Any, what: str) -> str | None:
    """An ISO 8601 datetime with its UTC offset, normalised; None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadDelivery(f"The {what} must be an ISO 8601 string, got {value!r}.")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadDelivery(f"The {what} is not an ISO 8601 datetime: {value!r}.") from None
    if parsed.tzinfo is None:
        raise BadDelivery(f"The {what} has no UTC offset: {value!r}.")
    return parsed.isoformat()


def first_moment(obj: Mapping[str, Any], keys: tuple[str, ...], what: str) -> str | None:
    """The first of ``keys`` that holds a datetime; None when none does."""
    for key in keys:
        found = read_timestamp(obj.get(key), f"{what} {key}")
        if found is not None:
            return found
    return None


def required_moment(obj: Mapping[str, Any], keys: tuple[str, ...], what: str) -> str:
    """``first_moment``, or ``BadDelivery`` when none of ``keys`` is set."""
    found = first_moment(obj, keys, what)
    if found is None:
        raise BadDelivery(f"The {what} has none of {', '.join(keys)}.")
    return found


def read_objects(value: Any, what: str) -> list[Mapping[str, Any]]:
    """A list of JSON objects; an absent (null) list is empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadDelivery(f"The {what} must be a list, got a JSON {type(value).__name__}.")
    return [as_object(item, f"{what}[{index}]") for index, item in enumerate(value)]
