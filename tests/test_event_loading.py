"""``load_event`` takes a lean path through the canonical schemas for valid
events and leaves everything else to marshmallow's ``Schema.load``: for any
input, valid or not, it must give exactly what ``Schema.load`` gives, or
raise the same ``ValidationError`` with the same messages."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from connectors.shopify import ShopifyConnector
from connectors.woocommerce import WooCommerceConnector
from engine.events import _event_schema, load_event
from tests.conftest import load_contract

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)


def seeds() -> list[dict]:
    """Canonical events translated from the shops' real payloads."""
    shopify = ShopifyConnector({"shop": "example.myshopify.com"})
    woo = WooCommerceConnector({"url": "https://shop.example"})
    found = []
    paid = load_contract("shopify/webhooks/orders_paid.delivery-2024-10.json")["body"]
    found += shopify.translate("orders/paid", paid, {})
    for name, topic in (("order_created", "order.created"), ("order_updated_with_refunds", "order.updated"),
                        ("customer_created", "customer.created")):
        found += woo.translate(topic, load_contract(f"woocommerce/webhooks/{name}.body.json"), {})
    # what the connectors give is JSON-able: keep only what JSON carries
    return [json.loads(json.dumps(event, default=str)) for event in found]


SEEDS = seeds()


@st.composite
def stamps(draw):
    """Datetimes shaped as the connectors write them (``YYYY-MM-DDTHH:MM:SS±HH:MM``,
    which ``load_event`` reads with ``datetime.fromisoformat``), now and then
    with one character changed."""
    moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    offset = timezone(timedelta(minutes=draw(st.integers(-1439, 1439))))
    text = moment.replace(tzinfo=offset).isoformat(timespec="seconds")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from("0123456789+-:T Z.٣x")) + text[at + 1:]
    return text


junk = (stamps() | st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False)
        | st.text(max_size=12) | st.sampled_from(["", "0", "-1", "1e9", "12.50", "2026-11-29T10:00:00Z", "EUR"])
        | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def paths(value, prefix=()):
    """Every place in a nested JSON value: (path to it, the value)."""
    yield prefix, value
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from paths(inner, (*prefix, index))


def break_one_place(draw, value, actions=("replace", "delete", "add")) -> None:
    """Change one place of a nested JSON value in place: its value replaced by
    ``junk``, deleted, or a key of junk added beside it (``actions``: what
    may be done, an action named twice drawn twice as often)."""
    places = [path for path, _ in paths(value) if path]
    if not places:
        return
    path = draw(st.sampled_from(places))
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    action = draw(st.sampled_from(actions))
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = draw(junk)
    else:
        parent[path[-1]] = draw(junk)


@st.composite
def mutated(draw):
    event = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        break_one_place(draw, event)
    return event


def outcome(load, event):
    try:
        loaded = load(copy.deepcopy(event))
        return "loaded", loaded, repr(loaded)  # (repr: a datetime's zone too, which == ignores)
    except ValidationError as exc:
        return "refused", exc.messages


def test_the_seeds_are_valid_events():
    for event in SEEDS:
        assert outcome(load_event, event)[0] == "loaded"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_any_event_loads_or_is_refused_exactly_as_marshmallow_does(event):
    assert outcome(load_event, event) == outcome(_event_schema.load, event)


@settings(max_examples=300)
@given(st.sampled_from(SEEDS), stamps())
@example(SEEDS[0], "2000-01-01T00:00.00+00:00")  # fromisoformat reads it (minutes with a fraction); marshmallow not
@example(SEEDS[0], "0001-01-01T00:00:00+05:00")  # no UTC moment: refused, not an OverflowError
@example(SEEDS[0], "9999-12-31T23:59:59-05:00")
def test_any_datetime_shaped_as_the_connectors_write_it_loads_as_marshmallow_loads_it(seed, stamp):
    event = {**copy.deepcopy(seed), "occurred_at": stamp}
    assert outcome(load_event, event) == outcome(_event_schema.load, event)
