"""The example plugin package (examples/regulars-happy-hour), run from its
source by the main suite, so it is covered whether or not it is installed. Its
own tests, which need it installed, are in examples/regulars-happy-hour/tests."""

from __future__ import annotations

import importlib.util
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import engine.plugins
from tests.plugins_builtin.shop import moment, planned, points, programme, send
from tests.streams import _shopify_order, _shopify_refund, _woo_order

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regulars-happy-hour"
HAPPY_HOUR = {"start": "16:00", "end": "18:00", "multiplier": 2, "timezone": "Europe/Prague"}


def load_source():
    """The example's module, imported from its source file under a name of its own."""
    path = EXAMPLE / "src" / "regulars_happy_hour" / "__init__.py"
    spec = importlib.util.spec_from_file_location("regulars_happy_hour_from_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def happy_hour_engine(make_engine, monkeypatch):
    """An engine with the example's HappyHour from source. An installed copy
    (pip install -e examples/regulars-happy-hour) would claim the same table
    through its entry point, so it is hidden: this tests the source."""
    real = engine.plugins.entry_points

    def without_the_installed_copy(**kwargs):
        return [ep for ep in real(**kwargs) if ep.name != "happy-hour"]

    monkeypatch.setattr(engine.plugins, "entry_points", without_the_installed_copy)
    return make_engine(
        programme(**{"happy-hour": HAPPY_HOUR}),
        extra_plugins=(("happy-hour", load_source().HappyHour),),
    )


def test_the_packages_entry_point_names_the_plugin_class_in_its_source():
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "regulars-happy-hour"
    assert "regulars" in project["project"]["dependencies"]
    target = project["project"]["entry-points"]["regulars"]["happy-hour"]
    assert target == "regulars_happy_hour:HappyHour"
    assert load_source().HappyHour.table == "plugins.happy-hour"


def test_a_shopify_order_paid_in_happy_hour_earns_double_and_its_refund_is_reversed_at_that_rate(
    happy_hour_engine,
):
    order = planned("shopify")
    paid = moment("2026-03-02T16:15+01:00")  # 16:15 in Prague
    send(
        happy_hour_engine, "shopify", "orders/paid", _shopify_order(order, "paid", paid, [], False)
    )
    assert points(happy_hour_engine) == 96  # 48.00 x 2

    refund = _shopify_refund(order, 0, Decimal("8.00"), paid + timedelta(days=1, hours=3))
    send(happy_hour_engine, "shopify", "refunds/create", refund)
    assert points(happy_hour_engine) == 80  # (48 - 8) x 2, the next morning


def test_a_woocommerce_order_paid_after_happy_hour_earns_the_ordinary_points(happy_hour_engine):
    paid = moment("2026-03-02T17:00+00:00")  # 18:00 in Prague: the end is not included
    send(
        happy_hour_engine,
        "woocommerce",
        "order.updated",
        _woo_order(planned("woocommerce"), "processing", paid, []),
    )
    assert points(happy_hour_engine) == 48
