"""Plugins: loading (built-ins, entry points, plugins.toml tables), refusal at
start of anything wrong, isolation of a failing decision hook, and the hook API
documenting itself. The fixture plugins are in tests/plugins/."""

from __future__ import annotations

import inspect
import json
import re
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine import hookspecs, inbox
from engine.app import Engine
from engine.config import ConfigError, load_config
from engine.db.models import accounts, ledger_entries, orders
from engine.hookspecs import hookimpl
from engine.plugins import PluginLoadError
from engine.rules_api import UNIT_POINTS, Award, Multiplier
from engine.testing import balance, engine_for, paid_order
from tests.plugins.campaign import (
    BonusCampaign,
    CoffeeStampPerVisit,
    DoublePoints,
    ExplodingCampaign,
    MisspeltCampaign,
    SloppyCampaign,
)
from tests.plugins.counter import SecondShopify, TillPlugin

TESTS = Path(__file__).parent
DATA = TESTS / "plugins" / "data"
EMAIL = "jana@example.com"
HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("regulars_"))


def ledger_state(engine) -> tuple:
    """Everything an order event may write to: entries, balances, orders."""
    with engine.db.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one(),
            conn.execute(select(accounts.c.id, accounts.c.balance).order_by(accounts.c.id)).all(),
            conn.execute(
                select(orders.c.id, orders.c.revision, orders.c.awarded).order_by(orders.c.id)
            ).all(),
        )


# -- the helper for plugin authors (engine.testing) ----------------------------


def test_a_campaign_plugin_adds_its_award_to_every_paid_order(tmp_path):
    engine = engine_for(
        tmp_path, plugins=[("bonus", BonusCampaign)], tables={"plugins": {"bonus": {"points": 5}}}
    )
    assert engine.ingest(*paid_order(total="20.00")).status == "applied"
    assert engine.ingest(*paid_order("woocommerce", order_id=7, total="10.50")).status == "applied"
    assert balance(engine, EMAIL) == 20 + 5 + 10 + 5


def test_a_multiplier_plugin_multiplies_the_points_of_orders(tmp_path):
    engine = engine_for(tmp_path, plugins=[("double", DoublePoints())])
    engine.ingest(*paid_order(total="12.40"))
    assert balance(engine, EMAIL) == 24  # floor(12.40 x 1 x 2)


def test_a_plugin_is_off_when_its_table_is_absent(tmp_path):
    engine = engine_for(tmp_path, plugins=[("bonus", BonusCampaign)])
    assert "bonus" not in [p.name for p in engine.plugins.loaded]
    engine.ingest(*paid_order(total="20.00"))
    assert balance(engine, EMAIL) == 20


def test_a_third_party_connector_and_a_visit_rule_stamp_a_card_per_visit(tmp_path):
    engine = engine_for(
        tmp_path, plugins=[("till", TillPlugin()), ("coffee", CoffeeStampPerVisit())]
    )
    visit = {
        "type": "visit",
        "idempotency_key": "visit-1",
        "occurred_at": datetime(2026, 3, 1, 8, 0, tzinfo=UTC).isoformat(),
        "customer": {"email": EMAIL},
        "visit": {"id": "v1", "location": "Main Street"},
    }
    body = json.dumps(visit).encode()
    assert engine.ingest("counter", "visit", body).status == "applied"
    assert engine.ingest("counter", "visit", body).status == "duplicate"
    assert balance(engine, EMAIL, "stamps:coffee") == 1


# -- a failing decision hook ---------------------------------------------------


def test_a_plugin_that_raises_fails_the_delivery_by_name_and_leaves_the_ledger_untouched(
    make_engine,
):
    healthy = make_engine()
    assert healthy.ingest(*paid_order(order_id=1, total="10.00")).status == "applied"
    broken = make_engine(extra_plugins=(("exploding-campaign", ExplodingCampaign()),))
    before = ledger_state(broken)

    outcome = broken.ingest(*paid_order(order_id=2, total="30.00"))

    assert (outcome.status, outcome.plugin) == ("failed", "exploding-campaign")
    assert outcome.error == "RuntimeError: campaign service unreachable"
    with broken.db.connect() as conn:
        row = inbox.get(conn, outcome.inbox_id)
    assert (row.status, row.plugin, row.error) == ("failed", "exploding-campaign", outcome.error)
    assert ledger_state(broken) == before
    assert balance(broken, EMAIL) == 10

    # Without the plugin, the kept delivery replays and applies.
    replayed = healthy.replay(outcome.inbox_id)
    assert replayed.status == "applied"
    assert balance(healthy, EMAIL) == 40


def test_a_plugin_that_raises_spoils_no_other_delivery_of_a_batch(make_engine):
    healthy = make_engine()
    engine = make_engine(extra_plugins=(("exploding-campaign", ExplodingCampaign()),))
    outcomes = engine.ingest_batch("shopify", [paid_order(order_id=n)[1:] for n in (1, 2)])
    assert [(o.status, o.plugin) for o in outcomes] == [("failed", "exploding-campaign")] * 2
    assert ledger_state(engine)[0] == 0
    assert [healthy.replay(o.inbox_id).status for o in outcomes] == ["applied", "applied"]


def test_a_plugin_returning_something_other_than_an_award_fails_the_delivery_naming_it(make_engine):
    engine = make_engine(extra_plugins=(("sloppy-campaign", SloppyCampaign()),))

    outcome = engine.ingest(*paid_order())

    assert (outcome.status, outcome.plugin) == ("failed", "sloppy-campaign")
    assert "expected Award, got 5" in outcome.error
    assert ledger_state(engine) == (0, [], [])


# -- plugins.toml: wrong keys, values and tables stop the start ----------------


def _start(tmp_path: Path, toml: str) -> Engine:
    path = tmp_path / "plugins.toml"
    path.write_text(
        '[engine]\ncurrency = "EUR"\n\n[connectors.shopify]\nshop = "example.myshopify.com"\n\n'
        + toml,
        encoding="utf-8",
    )
    config = load_config(
        path, env={"REGULARS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    )
    return Engine(config)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[rules.points]\nper_unt = 1\n", ["per_unt: unknown key", "expected one of: per_unit"]),
        ('[rules.points]\nper_unit = "x"\n', ["per_unit: Not a valid number"]),
        ("[rules.points]\nper_unit = -1\n", ["per_unit: Must be greater than 0"]),
    ],
    ids=["misspelt-key", "not-a-number", "negative"],
)
def test_a_wrong_key_or_value_names_the_file_the_table_the_key_and_what_was_expected(
    tmp_path, toml, expected
):
    with pytest.raises(ConfigError) as raised:
        _start(tmp_path, toml)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'plugins.toml'} [rules.points] ")
    for part in expected:
        assert part in message


def test_an_unknown_engine_timezone_stops_the_start_naming_it(tmp_path):
    """``[engine] timezone`` decides the dashboard's periods: a misspelt zone
    stops the start like any wrong value (it was read as UTC, silently)."""
    path = tmp_path / "plugins.toml"
    path.write_text('[engine]\ncurrency = "EUR"\ntimezone = "Europe/Prag"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={"REGULARS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    assert str(raised.value).startswith(f"{path} [engine] timezone: unknown time zone 'Europe/Prag'"), raised.value
    path.write_text('[engine]\ncurrency = "EUR"\ntimezone = "Europe/Prague"\n', encoding="utf-8")
    config = load_config(path, env={"REGULARS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    assert config.engine["timezone"] == "Europe/Prague"


def test_a_table_no_plugin_owns_is_refused_by_name(tmp_path):
    with pytest.raises(
        ConfigError, match=r"plugins\.toml \[rules\.pointz\]: no plugin owns this table"
    ) as raised:
        _start(tmp_path, "[rules.pointz]\nper_unit = 1\n")
    assert "rules.points" in str(raised.value)  # the tables that do exist


def test_two_plugins_claiming_one_table_are_refused_naming_both(make_engine):
    class PointsTwin(BonusCampaign):
        table = "rules.points"

    with pytest.raises(
        PluginLoadError, match=r"'rules\.points' and 'points-twin' both claim \[rules\.points\]"
    ):
        make_engine(extra_plugins=(("points-twin", PointsTwin),))


def test_two_connectors_for_one_channel_are_refused_naming_both(make_engine):
    with pytest.raises(PluginLoadError) as raised:
        make_engine(extra_plugins=(("second-shopify", SecondShopify()),))
    message = str(raised.value)
    assert "'second-shopify'" in message and "'connectors.shopify'" in message
    assert "channel 'shopify'" in message


def test_a_misspelt_hook_is_refused_at_start_naming_the_plugin_and_the_hook(make_engine):
    with pytest.raises(PluginLoadError) as raised:
        make_engine(extra_plugins=(("misspelt-campaign", MisspeltCampaign()),))
    message = str(raised.value)
    assert "'misspelt-campaign'" in message and "'regulars_order_award'" in message
    assert "did you mean 'regulars_order_awards'" in message
    assert "object at 0x" not in message


# -- entry points ----------------------------------------------------------------


def _install(fake: str, tmp_path: Path, monkeypatch) -> None:
    """Put a fake installed distribution from tests/plugins/data on sys.path."""
    site = tmp_path / "site-packages"
    shutil.copytree(DATA / fake, site)
    monkeypatch.syspath_prepend(str(site))


def test_a_plugin_whose_entry_point_fails_to_load_stops_the_start(
    make_engine, tmp_path, monkeypatch
):
    _install("broken", tmp_path, monkeypatch)

    with pytest.raises(PluginLoadError) as raised:
        make_engine()

    message = str(raised.value)
    assert "'broken-campaign'" in message and "regulars-broken" in message
    assert "regulars_broken_campaign:Campaign" in message
    assert "ImportError: No module named 'campaign_sdk'" in message


def test_a_plugin_installed_with_an_entry_point_is_loaded_like_a_built_in(
    make_engine, tmp_path, monkeypatch
):
    _install("working", tmp_path, monkeypatch)
    tables = {
        "engine": {"currency": "EUR"},
        "rules": {"points": {}},
        "plugins": {"bonus": {"points": 7}},
        "connectors": {"shopify": {"shop": "example.myshopify.com"}},
    }

    engine = make_engine(tables=tables)

    loaded = {p.name: p for p in engine.plugins.loaded}
    assert (
        loaded["bonus"].source
        == "entry point tests.plugins.campaign:BonusCampaign (regulars-bonus)"
    )
    assert (loaded["bonus"].table, loaded["bonus"].hooks) == (
        "plugins.bonus",
        ["regulars_order_awards"],
    )
    assert loaded["rules.points"].source == "built-in"
    engine.ingest(*paid_order(total="20.00"))
    assert balance(engine, EMAIL) == 27


# -- the hook API documents itself and is tested ---------------------------------


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_spec_says_what_it_returns_and_how_results_combine(name):
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec) or ""
    assert ":return:" in doc, f"{name} has no ':return:' line"
    returns = doc.split(":return:", 1)[1]
    assert re.search(r"\b(collected|first)\b", returns), f"{name}: say how results combine"
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc, f"{name} does not document its argument {param!r}"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_spec_is_implemented_by_a_test_plugin(name):
    implemented = [
        path
        for path in TESTS.rglob("*.py")
        if re.search(rf"def {name}\(", path.read_text(encoding="utf-8"))
    ]
    assert implemented, (
        f"no test implements {name}: add one to tests/plugins/ and a test of its own"
    )


# -- what a careless plugin does ----------------------------------------------------


class Careless:
    """A campaign that returns, or does, whatever the test says (for the
    orders whose ids it is given, else nothing)."""

    def __init__(self, behave, orders=("1",)):
        self.behave, self.orders = behave, orders

    @hookimpl
    def regulars_order_awards(self, order, customer):
        return self.behave() if order.external_id in self.orders else []


class CarelessMultiplier:
    def __init__(self, behave):
        self.behave = behave

    @hookimpl
    def regulars_order_multipliers(self, order, customer):
        return self.behave()


def _exits():
    raise SystemExit("bye from the plugin")


def _raises_while_iterated():
    yield Award(UNIT_POINTS, 1)
    raise RuntimeError("half-way through")


def _changed_after():
    award = Award(UNIT_POINTS, 5)
    object.__setattr__(award, "amount", 2.5)
    return [award]


@pytest.mark.parametrize(("behave", "said"), [
    (_exits, "SystemExit: bye from the plugin"),
    (lambda: Award(UNIT_POINTS, 5), "expected a list of Award, got Award("),
    (lambda: 5, "expected a list of Award, got 5"),
    (lambda: Decimal("5"), "expected a list of Award, got Decimal('5')"),
    (lambda: {"points": 5}, "expected a list of Award, got {'points': 5}"),
    (lambda: [Multiplier("x", Decimal(2))], "expected Award, got Multiplier("),
    (_raises_while_iterated, "RuntimeError: half-way through"),
    (lambda: [Award(UNIT_POINTS, 2**62)], "Award.amount must be at most 1,000,000,000,000"),
    (_changed_after, "Award.amount must be an int, got 2.5"),
], ids=["sys.exit", "a-bare-award", "an-int", "a-decimal", "a-dict", "a-multiplier", "a-generator-that-raises",
        "an-absurd-amount", "an-award-changed-after"])
def test_whatever_a_careless_award_hook_does_fails_its_delivery_naming_it_and_others_go_on(
        make_engine, behave, said):
    """A plugin's own mistake is the plugin's: its delivery is kept failed with
    its name and the reason, the ledger untouched, the batch's other deliveries
    applied (sys.exit() in a hook stopped ``regulars ingest`` and killed the
    server's applier thread; a bare Award or an int was an "internal error"; an
    amount of 2**62 was stored as a float in SQLite)."""
    flaky = Careless(behave)
    engine = make_engine(extra_plugins=(("careless", flaky),))
    outcome = engine.ingest(*paid_order(order_id=1))
    assert (outcome.status, outcome.plugin) == ("failed", "careless"), outcome
    assert said in outcome.error
    assert ledger_state(engine) == (0, [], [])
    flaky.orders = ("2",)
    outcomes = engine.ingest_batch("shopify", [paid_order(order_id=n)[1:] for n in (2, 3, 4)])
    assert [(o.status, o.plugin) for o in outcomes] == [("failed", "careless"), ("applied", None), ("applied", None)]
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


@pytest.mark.parametrize(("behave", "said"), [
    (lambda: Multiplier("x", Decimal(2)), "expected a list of Multiplier, got Multiplier("),
    (lambda: [Decimal(2)], "expected Multiplier, got Decimal('2')"),
    (lambda: [Multiplier("x", Decimal(10**6))], "Multiplier.factor must be at most 1000"),
], ids=["a-bare-multiplier", "a-decimal", "a-million-fold"])
def test_a_careless_multiplier_hook_fails_its_delivery_naming_it(make_engine, behave, said):
    engine = make_engine(extra_plugins=(("careless", CarelessMultiplier(behave)),))
    outcome = engine.ingest(*paid_order())
    assert (outcome.status, outcome.plugin) == ("failed", "careless"), outcome
    assert said in outcome.error
    assert ledger_state(engine) == (0, [], [])


def _fake_distribution(tmp_path: Path, monkeypatch, name: str, entry_points: str) -> None:
    site = tmp_path / f"site-{name}"
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[regulars]\n{entry_points}\n")
    monkeypatch.syspath_prepend(str(site))


def test_an_installed_plugin_without_a_table_stops_the_start_saying_what_it_needs(make_engine, tmp_path, monkeypatch):
    """Installing a plugin doesn't turn it on: one with no table could only
    be always on, so it is refused (it was loaded, and on)."""
    _fake_distribution(tmp_path, monkeypatch, "regulars-tableless", "tableless = tests.plugins.campaign:DoublePoints")
    with pytest.raises(PluginLoadError) as raised:
        make_engine()
    message = str(raised.value)
    assert "'tableless'" in message and "regulars-tableless" in message and "has no table" in message


def test_two_installed_plugins_of_one_name_stop_the_start_naming_both(make_engine, tmp_path, monkeypatch):
    _fake_distribution(tmp_path, monkeypatch, "regulars-bonus-a", "bonus = tests.plugins.campaign:BonusCampaign")
    _fake_distribution(tmp_path, monkeypatch, "regulars-bonus-b", "bonus = tests.plugins.campaign:BonusCampaign")
    with pytest.raises(PluginLoadError) as raised:
        make_engine()
    message = str(raised.value)
    assert "two plugins are named 'bonus'" in message
    assert "regulars-bonus-a" in message and "regulars-bonus-b" in message and "object at 0x" not in message


def test_a_settings_schema_that_is_no_schema_stops_the_start_naming_the_plugin(make_engine):
    class Odd:
        table = "plugins.odd"
        settings_schema = {"x": int}

        def __init__(self, settings):
            pass

    tables = {"engine": {"currency": "EUR"}, "rules": {"points": {}}, "plugins": {"odd": {"x": 1}},
              "connectors": {"shopify": {"shop": "example.myshopify.com"}}}
    with pytest.raises(PluginLoadError) as raised:
        make_engine(tables=tables, extra_plugins=(("odd", Odd),))
    assert "plugin 'odd': settings_schema must be a marshmallow Schema class" in str(raised.value)


def test_a_plugin_can_t_change_what_another_plugin_sees_of_the_order(make_engine):
    """Every plugin is handed the same order: changing a line (a SKU, say) made
    the built-in SKU multipliers miss it, silently. Its lines, attributes and
    discount codes are read-only: the meddler's delivery fails naming it."""
    class Meddler:
        @hookimpl
        def regulars_order_awards(self, order, customer):
            order.lines[0]["sku"] = "MUTATED"
            return []

    engine = make_engine(extra_plugins=(("meddler", Meddler()),))
    outcome = engine.ingest(*paid_order())
    assert (outcome.status, outcome.plugin) == ("failed", "meddler"), outcome
    assert "does not support item assignment" in outcome.error


def test_a_plugin_s_own_unit_is_shown_with_the_customer(make_engine):
    from engine.customers import customer_summary

    class Beans:
        @hookimpl
        def regulars_order_awards(self, order, customer):
            return [Award("beans", 5 if order.awardable else 0)]

    engine = make_engine(extra_plugins=(("beans", Beans()),))
    assert engine.ingest(*paid_order()).status == "applied"
    summary = customer_summary(engine, EMAIL)
    assert summary["other_units"] == {"beans": 5}
    assert "beans" not in summary["stamps"] and summary["points"] > 0
