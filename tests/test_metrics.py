"""The dashboard's figures (engine.metrics) against an oracle: a plan of six
months of sales, refunds, cancellations, visits, a merge, a redemption and
expiry, fed through the engine's real paths (Shopify and WooCommerce webhook
bodies, the till's sales and visits, ``Engine.redeem``, the expiry job). The
test computes every figure itself, in plain Python, from its own plan (sets of
buyers, lots of points), never from the database, and compares each period of
``metrics.series`` with it: overall and per channel, by month and by week, on
SQLite and on PostgreSQL. ``rebuild`` then recomputes the counters from the
ledger and the orders and must find the same figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import pytest
from sqlalchemy import func, select

from engine import metrics
from engine.db.models import accounts, metric_deltas
from engine.jobs import expire_points
from engine.ledger import add_months
from tests.streams import Line, PlannedOrder, _shopify_order, _shopify_refund, _woo_order

TABLES = {
    "engine": {"currency": "EUR", "default_country": "CZ"},
    "rules": {"points": {"per_unit": 1}, "expiry": {"months": 2}},
    "rewards": {"five-off": {"kind": "fixed_amount", "cost": 50, "value": "5.00"}},
    "connectors": {"shopify": {"shop": "example.myshopify.com"}, "woocommerce": {"url": "https://shop.example"},
                   "pos": {}},
}
POINT_VALUE = Decimal("0.1")  # five-off: 5.00 for 50 points
CHANNELS = ("shopify", "woocommerce", "pos")
START, END = date(2025, 10, 1), date(2026, 3, 31)
EXPIRY_RUNS = [datetime(2025, 10, 31, 23, tzinfo=UTC), datetime(2025, 11, 30, 23, tzinfo=UTC),
               datetime(2025, 12, 31, 23, tzinfo=UTC), datetime(2026, 1, 31, 23, tzinfo=UTC),
               datetime(2026, 2, 28, 23, tzinfo=UTC), datetime(2026, 3, 31, 23, tzinfo=UTC)]


def at(day: str, hour: int = 10) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


@dataclass
class Sale:
    """A sale as planned: who really bought (a person, across their keys),
    where, when, for how much, and what happened to it after."""

    person: str
    channel: str
    paid: datetime
    amount: Decimal
    hints: dict
    refunds: list[tuple[datetime, Decimal]] = field(default_factory=list)
    cancelled: datetime | None = None
    number: int = 0

    @property
    def standing(self) -> Decimal:
        if self.cancelled:
            return Decimal(0)
        return max(Decimal(0), self.amount - sum((a for _, a in self.refunds), Decimal(0)))


SALES = [
    Sale("ana", "shopify", at("2025-10-05"), Decimal("40.00"), {"email": "ana@example.com"}),
    Sale("ana", "shopify", at("2025-11-12"), Decimal("25.00"), {"email": "ana@example.com"}),
    Sale("ana", "shopify", at("2026-01-20"), Decimal("60.00"), {"email": "ana@example.com"},
         refunds=[(at("2026-02-02"), Decimal("10.00"))]),
    Sale("ben", "woocommerce", at("2025-10-07"), Decimal("30.00"), {"email": "ben@example.com"}),
    Sale("ben", "woocommerce", at("2025-10-21"), Decimal("15.50"), {"email": "ben@example.com"}),
    Sale("ben", "woocommerce", at("2025-12-03"), Decimal("50.00"), {"email": "ben@example.com"},
         refunds=[(at("2025-12-10"), Decimal("20.00"))]),
    # paid in November, cancelled in December: no purchase at all, its points reversed in December
    Sale("cid", "shopify", at("2025-11-28"), Decimal("80.00"), {"email": "cid@example.com"},
         cancelled=at("2025-12-02")),
    # Eva: known by email in Shopify, by phone at the till; a WooCommerce order with both merges them
    Sale("eva", "shopify", at("2025-10-15"), Decimal("20.00"), {"email": "eva@example.com"}),
    Sale("eva", "pos", at("2025-11-18"), Decimal("12.00"), {"phone": "+420601111111"}),
    Sale("eva", "woocommerce", at("2026-01-08"), Decimal("35.00"),
         {"email": "eva@example.com", "phone": "+420601111111"}),
    Sale("dan", "pos", at("2026-03-05", 11), Decimal("9.50"), {"phone": "+420602222222"}),
    Sale("fay", "shopify", at("2026-02-14"), Decimal("100.00"), {"email": "fay@example.com"}),
    Sale("fay", "woocommerce", at("2026-03-02"), Decimal("10.00"), {"email": "fay@example.com"}),
]
VISITS = [  # (person, channel, when, hints)
    ("dan", "pos", at("2025-12-01"), {"phone": "+420602222222"}),
    ("dan", "pos", at("2026-03-05"), {"phone": "+420602222222"}),
    ("ben", "pos", at("2026-02-10"), {"email": "ben@example.com"}),
]
REDEMPTIONS = [("fay", "fay@example.com", "pos", at("2026-02-20"), 50)]


def points(amount: Decimal) -> int:
    return int(amount.to_integral_value(rounding=ROUND_FLOOR))


# -- feeding the plan through the engine -----------------------------------------------


def _planned(sale: Sale) -> PlannedOrder:
    return PlannedOrder(sale.channel, sale.number, sale.hints.get("email"), (Line(sale.amount, 1),),
                        phone=sale.hints.get("phone"), first_name=sale.person.title())


def _sale_actions(sale: Sale) -> list[tuple[datetime, str, str, bytes]]:
    """(when, channel, topic, body) of every delivery the sale's channel sends."""
    order = _planned(sale)
    out = []
    if sale.channel == "shopify":
        out.append((sale.paid, "shopify", "orders/paid", _shopify_order(order, "paid", sale.paid, [], False)))
        refunds = []
        for i, (when, amount) in enumerate(sale.refunds):
            refund = _shopify_refund(order, i, amount, when)
            refunds.append(refund)
            out.append((when, "shopify", "refunds/create", refund))
            out.append((when + timedelta(minutes=1), "shopify", "orders/updated",
                        _shopify_order(order, "partially_refunded", when + timedelta(minutes=1), list(refunds), False)))
        if sale.cancelled:
            out.append((sale.cancelled, "shopify", "orders/cancelled",
                        _shopify_order(order, "refunded", sale.cancelled, list(refunds), True)))
    elif sale.channel == "woocommerce":
        out.append((sale.paid, "woocommerce", "order.updated", _woo_order(order, "processing", sale.paid, [])))
        done: list[Decimal] = []
        for when, amount in sale.refunds:
            done.append(amount)
            out.append((when, "woocommerce", "order.updated", _woo_order(order, "completed", when, list(done))))
        if sale.cancelled:
            out.append((sale.cancelled, "woocommerce", "order.updated",
                        _woo_order(order, "cancelled", sale.cancelled, list(done))))
    else:
        body = {"id": f"s{sale.number}", "terminal": "t1", "location": "Main Street",
                "occurred_at": sale.paid.isoformat(), "customer": sale.hints,
                "lines": [{"sku": "BEANS", "name": "Beans", "quantity": 1, "unit_price": str(sale.amount)}]}
        out.append((sale.paid, "pos", "sale", body))
        assert not sale.refunds and not sale.cancelled
    return [(when, channel, topic, json.dumps(body).encode()) for when, channel, topic, body in out]


def feed(engine) -> None:
    """Everything the plan says, in the order it happened."""
    actions = []
    for number, sale in enumerate(SALES, start=1):
        sale.number = 7000 + number
        for when, channel, topic, body in _sale_actions(sale):
            actions.append((when, "deliver", (channel, topic, body)))
    for number, (_, _, when, hints) in enumerate(VISITS, start=1):
        body = {"id": f"v{number}", "terminal": "t1", "location": "Main Street",
                "occurred_at": when.isoformat(), "customer": hints}
        actions.append((when, "deliver", ("pos", "visit", json.dumps(body).encode())))
    for _, key, channel, when, _ in REDEMPTIONS:
        actions.append((when, "redeem", (key, channel, when)))
    for when in EXPIRY_RUNS:
        actions.append((when, "expire", (when,)))
    for _, kind, args in sorted(actions, key=lambda a: a[0]):
        if kind == "deliver":
            outcome = engine.ingest(*args)
            assert outcome.status == "applied", (args[:2], outcome)
        elif kind == "redeem":
            key, channel, when = args
            engine.redeem(key, "five-off", channel=channel, at=when)
        else:
            expire_points(engine, args[0])


# -- the oracle -------------------------------------------------------------------------------


def _points_plan() -> list[tuple[date, str, str, int]]:
    """(day, channel, measure, value) of every points movement the plan makes,
    with the lots model of the expiry rule (refunds take their own lot back,
    spending the soonest-expiring lot, the job expires what is left)."""
    moves: list[tuple[date, str, str, int]] = []
    lots: list[dict] = []  # person, channel, earned, remaining, sale
    for sale in SALES:
        earned = points(sale.amount)
        moves.append((sale.paid.date(), sale.channel, "issued", earned))
        lot = {"person": sale.person, "channel": sale.channel, "earned": sale.paid, "remaining": earned}
        lots.append(lot)
        target = earned
        refunded = Decimal(0)
        for when, amount in sale.refunds:
            refunded += amount
            now = points(max(Decimal(0), sale.amount - refunded))
            moves.append((when.date(), sale.channel, "issued", now - target))
            lot["remaining"] -= target - now
            target = now
        if sale.cancelled:
            moves.append((sale.cancelled.date(), sale.channel, "issued", -target))
            lot["remaining"] -= target
    for person, _, channel, when, cost in REDEMPTIONS:
        moves.append((when.date(), channel, "spent", cost))
        mine = sorted((lot for lot in lots if lot["person"] == person and lot["remaining"] > 0
                       and add_months(lot["earned"], 2) > when), key=lambda lot: add_months(lot["earned"], 2))
        for lot in mine:
            take = min(cost, lot["remaining"])
            lot["remaining"] -= take
            cost -= take
        assert cost == 0
    last_run = EXPIRY_RUNS[-1]
    for lot in lots:
        expires = add_months(lot["earned"], 2)
        if expires <= last_run and lot["remaining"] > 0:
            moves.append((expires.date(), lot["channel"], "expired", lot["remaining"]))
    return moves


def _month(day: date) -> date:
    return day.replace(day=1)


def _week(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _following(start: date, period: str) -> date:
    if period == "month":
        return date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start + timedelta(days=7)


def expected(period: str, channel: str | None, today: date) -> dict[str, list]:
    """Every metric, per period, from the plan alone."""
    starter = _month if period == "month" else _week
    purchases = [(s.person, s.paid.date(), s.standing) for s in SALES
                 if s.standing > 0 and channel in (None, s.channel)]
    visits = [(person, when.date()) for person, ch, when, _ in VISITS if channel in (None, ch)]
    moves = [(day, measure, value) for day, ch, measure, value in _points_plan() if channel in (None, ch)]

    def buyers(begin: date) -> set[str]:
        return {p for p, d, _ in purchases if starter(d) == begin}

    out: dict[str, list] = {m.name: [] for m in metrics.METRICS}
    begin = starter(START)
    while begin <= END:
        stop = _following(begin, period)
        previous = starter(begin - timedelta(days=1))
        before, now = buyers(previous), buyers(begin)
        retention = len(before & now) / len(before) if before else None
        out["retention_rate"].append(retention)
        out["churn_rate"].append(None if retention is None else 1 - retention)
        so_far: dict[str, int] = {}
        spend = Decimal(0)
        for person, day, amount in purchases:
            if day < stop:
                so_far[person] = so_far.get(person, 0) + 1
                spend += amount
        ever = len(so_far)
        out["repeat_purchase_rate"].append(sum(1 for n in so_far.values() if n >= 2) / ever if ever else None)
        in_period = [p for p, d, _ in purchases if begin <= d < stop]
        out["purchase_frequency"].append(len(in_period) / len(now) if now else None)
        out["average_clv"].append((spend / ever).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN) if ever else None)
        as_of = min(stop - timedelta(days=1), today)
        window = {p for p, d, _ in purchases if as_of - timedelta(days=89) <= d <= as_of}
        window |= {p for p, d in visits if as_of - timedelta(days=89) <= d <= as_of}
        out["active_members"].append(len(window) if as_of >= begin else None)
        sums = {m: sum(v for d, mm, v in moves if mm == m and begin <= d < stop) for m in ("issued", "spent", "expired")}
        out["points_issued"].append(sums["issued"])
        out["points_spent"].append(sums["spent"])
        out["points_expired"].append(sums["expired"])
        out["redemption_rate"].append(sums["spent"] / sums["issued"] if sums["issued"] > 0 else None)
        outstanding = sum(v if m == "issued" else -v for d, m, v in moves if d < stop)
        out["points_liability"].append(None if channel else (outstanding * POINT_VALUE).quantize(Decimal("0.01")))
        begin = stop
    return out


# -- the tests -----------------------------------------------------------------------------------


def _all_series(engine) -> dict:
    found = {}
    for period in ("month", "week"):
        for channel in (None, *CHANNELS):
            for metric in metrics.METRICS:
                found[period, channel, metric.name] = metrics.series(engine, metric.name, START, END, channel, period)
    return found


def _same(actual, wanted) -> bool:
    if wanted is None or actual is None:
        return actual is None and wanted is None
    if isinstance(wanted, float):
        return actual == pytest.approx(wanted, abs=1e-12)
    return actual == wanted and type(actual) is type(wanted)


@pytest.fixture(autouse=True, params=["around the changed days", "whole"])
def counting(request, monkeypatch):
    """Every test twice: each order's or visit's change to the counters found
    around the days it changes (``metrics.contribution_delta``, which the
    engine uses for a customer of many days), and by counting the customer's
    footprint whole (which it uses for a customer of few)."""
    monkeypatch.setattr(metrics, "WHOLE_BELOW", 0 if request.param == "around the changed days" else 10**9)
    return request.param


@pytest.fixture
def shop(make_engine):
    engine = make_engine(TABLES)
    engine.ensure_schema()
    metrics.ensure_built(engine)  # an empty database: counted by the pipeline from the first event
    feed(engine)
    return engine


def test_the_plan_went_through_the_engine(shop):
    with shop.db.connect() as conn:
        eva = shop.identity.find(conn, "eva@example.com")
        assert shop.identity.find(conn, "+420601111111") == eva  # merged
        outstanding = conn.execute(select(func.sum(accounts.c.balance)).where(accounts.c.unit == "points")).scalar()
    plan = sum(v if m == "issued" else -v for _, _, m, v in _points_plan())
    assert outstanding == plan


def test_every_figure_matches_the_oracle_and_survives_a_rebuild(shop):
    today = datetime.now(UTC).date()
    before = _all_series(shop)
    for (period, channel, name), values in before.items():
        wanted = expected(period, channel, today)[name]
        assert [d for d, _ in values] == _periods(period), (period, name)
        for (day, actual), value in zip(values, wanted, strict=True):
            assert _same(actual, value), (period, channel, name, day, actual, value)
    with shop.db.connect() as conn:  # the reads folded the pipeline's deltas into the counters
        assert conn.execute(select(func.count()).select_from(metric_deltas)).scalar() == 0
    metrics.rebuild(shop)
    assert _all_series(shop) == before


def _periods(period: str) -> list[date]:
    starter = _month if period == "month" else _week
    found, begin = [], starter(START)
    while begin <= END:
        found.append(begin)
        begin = _following(begin, period)
    return found


def test_some_figures_spelled_out(shop):
    """A reader's check of the oracle itself, on a few figures worked by hand."""
    months = dict(metrics.series(shop, "retention_rate", START, END))
    # November's buyers: ana (Shopify), eva (at the till); October's: ana, ben, eva -> 2 of 3 came back
    assert months[date(2025, 11, 1)] == pytest.approx(2 / 3)
    pos = dict(metrics.series(shop, "retention_rate", START, END, channel="pos"))
    assert pos[date(2025, 11, 1)] is None  # nobody bought at the till in October
    clv = dict(metrics.series(shop, "average_clv", START, END))
    # October: ana 40 + ben 30 + 15.50 + eva 20 over 3 customers
    assert clv[date(2025, 10, 1)] == Decimal("35.17")
    expired = dict(metrics.series(shop, "points_expired", START, END, channel="pos"))
    assert expired[date(2026, 1, 1)] == 12  # Eva's till points, expired after she was merged
    assert dict(metrics.series(shop, "points_spent", START, END, channel="pos"))[date(2026, 2, 1)] == 50
    assert dict(metrics.series(shop, "points_liability", START, END, channel="shopify"))[date(2026, 2, 1)] is None


def test_rebuild_is_exact_for_a_database_filled_before_the_dashboard(make_engine):
    """An upgraded database (data, no counters, no visit days): the first read
    builds them, visits from the ledger's visit entries (here a stamp card
    that counts counter visits), a merged customer's on the one they joined."""
    tables = {**TABLES, "rules": {**TABLES["rules"], "stamps": {"coffee": {"required": 10, "per": "order",
                                                                           "reward": "free-coffee"}}},
              "rewards": {**TABLES["rewards"], "free-coffee": {"kind": "free_product", "sku": "COFFEE"}}}
    engine = make_engine(tables)
    engine.ensure_schema()
    metrics.ensure_built(engine)
    visit = json.dumps({"id": "v-eva", "terminal": "t1", "occurred_at": "2025-11-20T10:00:00+00:00",
                        "customer": {"phone": "+420601111111"}}).encode()
    assert engine.ingest("pos", "visit", visit).status == "applied"  # Eva at the till, before her merge
    feed(engine)
    counted = _all_series(engine)
    from sqlalchemy import delete

    from engine.db.models import metric_counts, metric_footprints, metric_state, visit_days

    with engine.db.begin() as conn:
        for table in (metric_deltas, metric_counts, metric_footprints, metric_state, visit_days):
            conn.execute(delete(table))
    assert _all_series(engine) == counted
    today = datetime.now(UTC).date()
    for name in ("retention_rate", "points_liability", "average_clv"):
        assert [v for _, v in counted["month", None, name]] == expected("month", None, today)[name]


def test_bad_arguments_say_what_is_wrong(engine):
    with pytest.raises(ValueError, match="unknown metric 'retention'"):
        metrics.series(engine, "retention", START, END)
    with pytest.raises(ValueError, match="period must be one of month, week"):
        metrics.series(engine, "retention_rate", START, END, period="year")


def test_days_are_the_shops_days(make_engine):
    """An order paid at 23:30 UTC on 31 October is November's in Prague."""
    tables = {**TABLES, "engine": {**TABLES["engine"], "timezone": "Europe/Prague"}}
    engine = make_engine(tables)
    engine.ensure_schema()
    metrics.ensure_built(engine)
    late = Sale("ana", "shopify", datetime(2025, 10, 31, 23, 30, tzinfo=UTC), Decimal("10.00"),
                {"email": "ana@example.com"}, number=9001)
    for _, channel, topic, body in _sale_actions(late):
        assert engine.ingest(channel, topic, body).status == "applied"
    orders = dict(metrics.series(engine, "points_issued", START, date(2025, 11, 30)))
    assert orders == {date(2025, 10, 1): 0, date(2025, 11, 1): 10}
    assert dict(metrics.series(engine, "purchase_frequency", START, date(2025, 11, 30)))[date(2025, 11, 1)] == 1.0


def test_a_big_unbuilt_database_asks_for_a_rebuild(shop, monkeypatch):
    from sqlalchemy import delete

    from engine.db.models import metric_state

    with shop.db.begin() as conn:
        conn.execute(delete(metric_state))
    monkeypatch.setattr(metrics, "AUTO_REBUILD_LIMIT", 10)
    with pytest.raises(metrics.NotBuilt, match="regulars metrics rebuild"):
        metrics.series(shop, "retention_rate", START, END)
    metrics.rebuild(shop)
    today = datetime.now(UTC).date()
    assert [v for _, v in metrics.series(shop, "active_members", START, END)] == expected("month", None, today)[
        "active_members"]


def test_concurrent_deliveries_for_the_same_customers_keep_the_counters_exact(make_engine):
    """Deliveries for the same few customers applied at once (on PostgreSQL in
    parallel transactions) end in the counters a rebuild from scratch finds:
    each customer counted once, whatever interleaving (a customer's
    footprint row is locked while it is counted again)."""
    from concurrent.futures import ThreadPoolExecutor

    engine = make_engine(TABLES)
    engine.ensure_schema()
    metrics.ensure_built(engine)
    sales = []
    for number in range(24):
        person = ("zoe", "yan", "xia")[number % 3]
        paid = datetime(2025, 10 + (number // 3) % 3, 1 + number % 27, 9, tzinfo=UTC)
        # under 1 EUR, so no points: no balance row lock serializes the customer's transactions
        sales.append(Sale(person, ("shopify", "woocommerce")[number % 2], paid, Decimal("0.50") + number / Decimal(100),
                          {"email": f"{person}@example.com"}, number=8000 + number))
    first = [(c, t, b) for sale in sales[:3] for _, c, t, b in _sale_actions(sale)]
    assert all(engine.ingest(*d).status == "applied" for d in first)  # the customers exist
    deliveries = [(c, t, b) for sale in sales[3:] for _, c, t, b in _sale_actions(sale)]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda d: engine.ingest(*d), deliveries))
    assert all(o.status in ("applied", "duplicate") for o in outcomes), outcomes
    names = [m.name for m in metrics.METRICS]
    counted = {ch: metrics.compute(engine, names, START, END, ch) for ch in (None, "shopify", "woocommerce")}
    metrics.rebuild(engine)
    assert {ch: metrics.compute(engine, names, START, END, ch) for ch in (None, "shopify", "woocommerce")} == counted
    buyers = dict(metrics.series(engine, "purchase_frequency", START, END))
    october = [s for s in sales if s.paid.month == 10]
    assert buyers[date(2025, 10, 1)] == len(october) / len({s.person for s in october}) == 3.0


def test_a_batch_writes_its_counters_once_and_leaves_out_a_delivery_that_failed(make_engine, monkeypatch):
    """``ingest_batch`` keeps the counters of the whole batch in memory and
    writes them at its end; a delivery that fails after changing them (rolled
    back to its savepoint) takes its changes with it. The counters then
    equal a rebuild from scratch."""
    from engine.testing import paid_order

    engine = make_engine(TABLES)
    engine.ensure_schema()
    metrics.ensure_built(engine)
    recorder = engine.ledger.metrics
    real = recorder.order_changed

    def fails_after_counting_order_2(conn, row, *args):
        real(conn, row, *args)
        if row.external_id == "2":
            raise RuntimeError("order 2 is cursed")

    monkeypatch.setattr(recorder, "order_changed", fails_after_counting_order_2)
    days = {1: 3, 2: 10, 3: 10, 4: 20}
    batch = [paid_order(order_id=n, email=("ada@example.com" if n != 4 else "bob@example.com"), total="10.00",
                        paid_at=datetime(2025, 10, day, 9, tzinfo=UTC))[1:] for n, day in days.items()]
    outcomes = engine.ingest_batch("shopify", batch)
    assert [o.status for o in outcomes] == ["applied", "failed", "applied", "applied"]

    with engine.db.connect() as conn:  # one INSERT of the batch's deltas (the counters computing reads fold them)
        assert conn.execute(select(func.count()).select_from(metric_deltas)).scalar_one() > 0
    names = [m.name for m in metrics.METRICS]
    counted = {ch: metrics.compute(engine, names, START, END, ch) for ch in (None, "shopify")}
    metrics.rebuild(engine)
    assert {ch: metrics.compute(engine, names, START, END, ch) for ch in (None, "shopify")} == counted
    assert dict(metrics.series(engine, "purchase_frequency", START, END))[date(2025, 10, 1)] == 1.5  # 3 orders, 2 buyers
