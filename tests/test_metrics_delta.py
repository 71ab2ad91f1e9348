"""``metrics.contribution_delta``: what one order or visit changes in a
customer's contribution to the dashboard's counters, computed around the days
that changed, must be exactly the full recount's difference
(``contributions`` of the footprint after, less before), whatever the
customer's history: first and second orders, months and weeks bought in and
retained, stretches of activity joined or split, several channels."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.metrics import ACTIVE_DAYS, _as_json, contribution_delta, contributions

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

CHANNELS = ("pos", "shopify", "woocommerce")
#: 1 January 2026 (a Thursday): days around it cross weeks, months and a year
START = 739617
#: days far enough apart to start and end stretches of activity, near enough to share weeks and months
days = st.integers(START, START + 3 * ACTIVE_DAYS)


@st.composite
def histories(draw):
    """(bought, came): paid orders per channel and day, visit days per channel."""
    bought = {}
    for channel in draw(st.sets(st.sampled_from(CHANNELS), max_size=3)):
        slots = draw(st.dictionaries(days, st.tuples(st.integers(1, 3), st.integers(1, 10**6)), max_size=12))
        bought[channel] = {day: [n, n * units] for day, (n, units) in slots.items()}
    came = {channel: visited for channel in draw(st.sets(st.sampled_from(CHANNELS), max_size=2))
            if (visited := draw(st.sets(days, max_size=6)))}
    return bought, came


def full_delta(before, after) -> Counter:
    change = contributions(_as_json(*after))
    change.subtract(contributions(_as_json(*before)))
    return Counter({counter: value for counter, value in change.items() if value})


@settings(max_examples=600, deadline=None)
@given(histories(), st.data())
@example(({"pos": {START: [1, 100]}}, {}), None)  # the only order taken back: nothing left
def test_an_order_taken_out_put_in_or_moved_changes_the_counters_as_a_full_recount_does(history, data):
    """As ``Recorder._recount`` changes a footprint for an order: its old
    (channel, day, spend) taken out, its new one put in (paid, refunded,
    re-dated, moved to another channel's customer)."""
    bought, came = history
    after = copy.deepcopy(bought)
    changed: dict[str, set[int]] = {}
    held = [(channel, day) for channel, slots in bought.items() for day in slots]
    if data is None:  # the explicit example: take its one order out
        old, new = ("pos", START, 100), None
    else:
        old = None
        if held and data.draw(st.booleans()):
            channel, day = data.draw(st.sampled_from(held))
            slot = bought[channel][day]
            old = (channel, day, data.draw(st.integers(0, slot[1] // slot[0])))
        new = data.draw(st.none() | st.tuples(st.sampled_from(CHANNELS), days, st.integers(0, 10**6)))
    if old is not None:
        slot = after[old[0]][old[1]]
        slot[0] -= 1
        slot[1] -= old[2]
        if not slot[0]:
            del after[old[0]][old[1]]
        changed.setdefault(old[0], set()).add(old[1])
    if new is not None:
        slot = after.setdefault(new[0], {}).setdefault(new[1], [0, 0])
        slot[0] += 1
        slot[1] += new[2]
        changed.setdefault(new[0], set()).add(new[1])

    assert contribution_delta((bought, came), (after, came), changed) == full_delta((bought, came), (after, came))


@settings(max_examples=300, deadline=None)
@given(histories(), st.sampled_from(CHANNELS), days)
def test_a_visit_changes_the_counters_as_a_full_recount_does(history, channel, day):
    bought, came = history
    after = {**came, channel: came.get(channel, set()) | {day}}
    changed = {channel: {day}}
    assert contribution_delta((bought, came), (bought, after), changed) == full_delta((bought, came), (bought, after))


def test_a_regular_s_next_order_is_counted_without_recounting_the_others():
    """A coffee drinker's thousand days: the delta names only what the new
    day touches (its orders and revenue, its week's and month's buyers, the
    stretch of activity it lengthens), as the full recount finds."""
    bought = {"pos": {START + n: [1, 35_000] for n in range(1000)}}
    after = copy.deepcopy(bought)
    after["pos"][START + 1000] = [1, 35_000]
    delta = contribution_delta((bought, {}), (after, {}), {"pos": {START + 1000}})
    assert delta == full_delta((bought, {}), (after, {}))
    assert len(delta) == 2 * 4  # per scope: orders, revenue, and the stretch's lapse moved by a day (-1, +1)
