"""`regulars simulate` (issue 3, part 8, "What-if"): the stored deliveries
replayed under another configuration into a scratch database, compared with
today. Under the same configuration the replay reproduces every balance."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from engine.cli import Context
from engine.config import ConfigError, config_from_tables
from engine.db.models import accounts, customers
from engine.simulate import figures, replay_into, scratch_engine, simulate, simulate_command
from tests.conftest import DEFAULT_TABLES
from tests.streams import Line, PlannedOrder, deliveries, expected_by_email, ingest_all

TABLES = {
    **DEFAULT_TABLES,
    "rules": {
        "points": {"per_unit": 1},
        "stamps": {"coffee": {"required": 3, "reward": "free-coffee"}},
        "tiers": {"levels": [{"name": "silver", "threshold": 150, "multiplier": 1.5},
                             {"name": "gold", "threshold": 400, "multiplier": 2}]},
    },
    "rewards": {
        "five-off": {"kind": "fixed_amount", "cost": 500, "value": "5.00"},
        "ten-off": {"kind": "fixed_amount", "cost": 800, "value": "10.00"},  # the better rate: 1.25 cents a point
        "free-coffee": {"kind": "free_product", "sku": "COFFEE-LATTE"},
    },
}
EMAILS = [f"regular{i}@example.com" for i in range(6)]


def planned(seed: int = 3, n: int = 24, refunds: bool = True) -> list[PlannedOrder]:
    """A multi-channel stream: the same customers buy in both shops; some
    orders are refunded in part, cancelled or never paid."""
    rng = random.Random(seed)
    orders = []
    for number in range(1, n + 1):
        lines = tuple(Line(Decimal(rng.randrange(5, 120)) + (Decimal("0.50") if refunds else 0), rng.randint(1, 3))
                      for _ in range(rng.randint(1, 3)))
        fate = rng.random() if refunds else 1.0
        orders.append(PlannedOrder(
            rng.choice(("shopify", "woocommerce")), 100 + number, rng.choice(EMAILS), lines,
            paid=fate > 0.08, cancelled=0.08 < fate < 0.18,
            refunds=(Decimal("3.00"),) if 0.18 < fate < 0.35 else (),
        ))
    return orders


def stream(orders: list[PlannedOrder]) -> list:
    return [d for order in orders for d in deliveries(order)]


def state(engine) -> dict[str, tuple]:
    """Every live customer's balances (by unit) and tier, by email."""
    with engine.db.connect() as conn:
        people = conn.execute(select(customers.c.id, customers.c.email, customers.c.tier)
                              .where(customers.c.merged_into.is_(None))).all()
        balances = conn.execute(select(accounts.c.customer_id, accounts.c.unit, accounts.c.balance)).all()
    by_id: dict[int, dict[str, int]] = {}
    for customer_id, unit, balance in balances:
        by_id.setdefault(customer_id, {})[unit] = balance
    return {email: (by_id.get(cid, {}), tier) for cid, email, tier in people}


def other(tables: dict, tmp_path: Path):
    return config_from_tables(tables, tmp_path / "other.toml", {})


def test_replaying_under_the_same_configuration_reproduces_every_balance_exactly(make_engine, tmp_path):
    today = make_engine(tables=TABLES)
    outcomes = ingest_all(today, stream(planned()))
    assert {o.status for o in outcomes} <= {"applied", "ignored"}
    real = state(today)
    assert len(real) == len(EMAILS)
    assert any(tier for _, tier in real.values()), "the stream should reach a tier"
    assert any(b.get("stamps:coffee") for b, _ in real.values())
    now = figures(today)
    assert now["points_issued"] > now["points_net"] > 0 and now["cards"]["coffee"] > 0

    with scratch_engine(other(TABLES, tmp_path)) as scratch:
        assert scratch.db.url != today.db.url
        replayed = replay_into(today, scratch, batch=7)  # small batches: runs cross channels and pages
        assert state(scratch) == real
        assert figures(scratch) == now
    assert sum(replayed.values()) == len(outcomes)
    assert replayed == Counter(o.status for o in outcomes)

    result = simulate(today, other(TABLES, tmp_path))
    assert result["today"] == result["simulated"] == now
    assert all(v in (0, None) for k, v in result["difference"].items() if not isinstance(v, dict))
    assert all(v == 0 for group in ("tiers", "rewards", "cards", "stamps") for v in result["difference"][group].values())
    assert state(today) == real  # the real database was not touched


def test_failed_and_ignored_deliveries_are_replayed_too(engine, tmp_path):
    orders = planned(n=4)
    ingest_all(engine, stream(orders))
    assert engine.ingest("shopify", "orders/paid", b"{not json").status == "failed"
    assert engine.ingest("shopify", "products/create", b"{}").status == "ignored"
    with scratch_engine(other(DEFAULT_TABLES, tmp_path)) as scratch:
        replayed = replay_into(engine, scratch)
    assert replayed["failed"] == 1 and replayed["ignored"] >= 1


def test_double_points_doubles_points_issued_and_reports_the_difference(engine, tmp_path):
    orders = planned(seed=5, refunds=False)
    ingest_all(engine, stream(orders))
    doubled = {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 2}}}
    result = simulate(engine, other(doubled, tmp_path))
    today, sim = result["today"]["points_issued"], result["simulated"]["points_issued"]
    assert today == sum(expected_by_email(orders).values()) > 0
    assert sim == 2 * today == sum(expected_by_email(orders, Decimal(2)).values())
    assert result["difference"]["points_issued"] == today
    assert result["difference"]["points_outstanding"] == today
    assert result["today"]["liability"] is None  # no catalogue: points only, and why
    assert any("no fixed_amount reward" in note for note in result["notes"])


def test_liability_takes_the_configured_value_of_a_point_as_the_dashboard_does(make_engine, tmp_path):
    """``[engine] point_value`` wins over the catalogue's best rate, on both sides."""
    today = make_engine(tables={**TABLES, "engine": {**TABLES["engine"], "point_value": "0.02"}})
    ingest_all(today, stream(planned()))
    now = figures(today)
    assert (now["point_value"], now["point_value_reward"]) == (Decimal("0.02"), None)
    assert now["liability"] == (now["points_outstanding"] * Decimal("0.02")).quantize(Decimal("0.01")) > 0


def test_liability_is_outstanding_points_at_the_best_fixed_amount_rate(make_engine, tmp_path):
    today = make_engine(tables=TABLES)
    ingest_all(today, stream(planned()))
    now = figures(today)
    assert now["point_value_reward"] == "ten-off" and now["point_value"] == Decimal("0.0125")
    assert now["liability"] == (now["points_outstanding"] * Decimal("0.0125")).quantize(Decimal("0.01"))
    richest = max(state(today).items(), key=lambda item: item[1][0]["points"])[0]
    today.redeem(richest, "five-off")
    spent = figures(today)
    assert spent["points_redeemed"] == 500 and spent["points_outstanding"] == now["points_outstanding"] - 500
    assert spent["points_issued"] == now["points_issued"]
    assert spent["rewards"]["five-off"] == now["rewards"].get("five-off", 0) + 1


def test_since_replays_only_later_deliveries(engine, tmp_path):
    ingest_all(engine, stream(planned(n=4)))
    later = simulate(engine, other(DEFAULT_TABLES, tmp_path), since=datetime(2999, 1, 1, tzinfo=UTC))
    assert later["replayed"] == {} and later["simulated"]["points_issued"] == 0
    assert later["difference"]["points_issued"] == -later["today"]["points_issued"]
    assert any("start from zero" in note for note in later["notes"])
    earlier = simulate(engine, other(DEFAULT_TABLES, tmp_path), since=datetime(2000, 1, 1, tzinfo=UTC))
    assert earlier["simulated"] == earlier["today"]


# -- the command ------------------------------------------------------------------

TODAY_TOML = """
[engine]
currency = "EUR"
default_country = "CZ"

[rules.points]
per_unit = {per_unit}

[rewards.five-off]
kind = "fixed_amount"
cost = 500
value = "5.00"

[connectors.shopify]
shop = "example.myshopify.com"

[connectors.woocommerce]
url = "https://shop.example"
"""


@pytest.fixture
def run(engine, database_url, tmp_path):
    """Invoke `simulate` as `regulars --config today.toml simulate ...` would."""
    today = tmp_path / "today.toml"
    today.write_text(TODAY_TOML.replace("{per_unit}", "1"), encoding="utf-8")
    ingest_all(engine, stream(planned(seed=5, n=8, refunds=False)))

    def invoke(*args: str):
        ctx = Context(str(today))
        result = CliRunner().invoke(simulate_command, list(args), obj=ctx,
                                    env={"REGULARS_DATABASE_URL": database_url, "COLUMNS": "200"})
        if ctx._engine is not None:
            ctx._engine.db.dispose()
        return result

    return invoke


def test_the_command_prints_json_with_the_difference(run, tmp_path):
    doubled = tmp_path / "doubled.toml"
    doubled.write_text(TODAY_TOML.replace("{per_unit}", "2"), encoding="utf-8")
    result = run("--config", str(doubled), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["simulated"]["points_issued"] == 2 * data["today"]["points_issued"] > 0
    assert data["difference"]["points_issued"] == data["today"]["points_issued"]
    assert Decimal(data["difference"]["liability"]) == Decimal(data["today"]["liability"])
    assert data["replayed"]["applied"] > 0


def test_the_command_prints_a_table(run, tmp_path):
    same = tmp_path / "same.toml"
    same.write_text(TODAY_TOML.replace("{per_unit}", "1"), encoding="utf-8")
    result = run("--config", str(same))
    assert result.exit_code == 0, result.output
    for words in ("measure", "today", "simulated", "difference", "points issued (orders)", "liability (EUR)",
                  "replayed:", "redemptions"):
        assert words in result.output


def test_a_wrong_key_in_the_other_configuration_fails_with_where_it_is(run, tmp_path):
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(TODAY_TOML.replace("per_unit = {per_unit}", "per_unt = 2"), encoding="utf-8")
    result = run("--config", str(wrong))
    assert result.exit_code == 1
    assert f"{wrong} [rules.points] per_unt: unknown key" in result.output
    with pytest.raises(ConfigError, match=r"\[rules.points\] per_unt"):
        with scratch_engine(other({**DEFAULT_TABLES, "rules": {"points": {"per_unt": 2}}}, tmp_path)):
            pass


def test_a_till_s_card_code_and_a_referral_code_find_their_customers_in_the_replay(make_engine, tmp_path):
    """regulars' own codes are in no delivery: the replay carries the
    customers over with them, so a till's visit by card code and an order
    carrying a referral code do what they did (no nameless customer, the
    referral rewarded)."""
    from tests.streams import T0, _shopify_order

    tables = {**TABLES, "connectors": {**TABLES["connectors"], "pos": {}},
              "rules": {**TABLES["rules"], "referrals": {"referrer_points": 200, "referee_points": 100,
                                                        "min_order": "20.00", "weekly_limit": 5}}}
    today = make_engine(tables=tables)
    ingest_all(today, stream(planned(n=6, refunds=False)))
    with today.db.connect() as conn:
        first = conn.execute(select(customers.c.card_code, customers.c.referral_code).order_by(customers.c.id)).first()
    visit = {"id": "v1", "terminal": "t1", "occurred_at": "2026-03-02T09:30:00+00:00",
             "customer": {"card_code": first.card_code}}
    assert today.ingest("pos", "visit", json.dumps(visit).encode()).status == "applied"
    body = _shopify_order(PlannedOrder("shopify", 999, "newcomer@example.com", (Line(Decimal("30.00"), 1),)),
                          "paid", T0, [], False)
    body["discount_codes"] = [{"code": first.referral_code, "amount": "0.00", "type": "fixed_amount"}]
    # (a street of their own: every contract body ships to one, which the referrer's orders shipped to)
    body["shipping_address"] = {**body["shipping_address"], "address1": "9 Newcomer Lane"}
    assert today.ingest("shopify", "orders/paid", json.dumps(body).encode()).status == "applied"
    real = state(today)
    assert real["newcomer@example.com"][0]["points"] == 130  # 30 and the referee's 100

    result = simulate(today, other(tables, tmp_path))
    assert result["simulated"] == result["today"], result["difference"]
    with scratch_engine(other(tables, tmp_path)) as scratch:
        replay_into(today, scratch)
        assert state(scratch) == real
