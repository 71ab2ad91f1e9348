"""The dashboard at scale: a shop of 1,000,000 customers and 10,000,000 ledger
entries in PostgreSQL, and the time of each query the dashboard runs.

    .venv/bin/python bench/dashboard.py                                  # 1M customers, 10M entries
    .venv/bin/python bench/dashboard.py --customers 10000 --entries 100000   # a quick check
    .venv/bin/python bench/dashboard.py --keep                           # reuse the seeded database

1. **Seed.** A database of its own, ``regulars_bench_dashboard`` on
   127.0.0.1:5432 (user postgres), created when missing, migrated
   (``engine.db.upgrade``) and emptied (TRUNCATE). The real tables are filled
   with ``COPY ... FROM STDIN (FORMAT BINARY)``: customers (unique emails, phones, card and
   referral codes), their Shopify and WooCommerce links, 24 months of orders in
   shopify, woocommerce and pos (order state, awarded points and eligible
   spend as the pipeline writes them: paid, refunded, cancelled, unpaid,
   guests), the points accounts, the ledger (order awards, refunds and
   cancellations, redemptions with their issued rewards, expiries of 12-month
   lots) and lots with what is left of them, and the counter's visit days. One
   simulation runs every customer's ledger in time order, so balances are the
   sums of their entries, lots are consumed as ``Ledger.consume_lots`` does
   (a refund from its own order's lot first, then the soonest-expiring) and
   ids follow time, as in a shop that grew for two years. Most customers buy
   one to three times; a quarter are regulars who buy often until they stop.
   ``--entries`` is reached by calibrating the regulars' rate on a small pilot
   (within about 1 %).

   For speed the load drops the big tables' secondary indexes and unique
   constraints and builds them again afterwards with the same definitions
   (``pg_get_indexdef``/``pg_get_constraintdef``, kept in
   ``bench_dashboard_saved_ddl`` until rebuilt, so an interrupted load is
   repaired by the next run), and skips foreign-key triggers
   (``session_replication_role = replica``) on its own connections.

2. **Upgrade.** ``engine.metrics.rebuild`` (what an existing shop's upgrade
   costs), ``compact``, ``ANALYZE``; then consistency: ``Ledger.audit`` when it
   takes under a minute (else a sample), foreign keys, lots.

3. **Time the dashboard** as the page runs it, ``--runs`` times each (min,
   median, max ms; over 1 s is flagged and the slowest statement explained):
   every metric's ``series`` over the last 12 months, overall and per channel,
   and weekly over the last 12 weeks; ``compute`` of every metric at once as
   the overview calls it (12 months, or 26 weeks); the customer search and a
   customer's page (``engine.web.pages.admin.Admin._search`` / ``_customer``).
   Beside each monthly series, the same figures by one raw SQL over
   ``ledger_entries`` or ``orders`` (psycopg), timed, and compared value by value.

Never touches any database but its own.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
import unicodedata
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from heapq import heapify, heappop, heappush
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import metrics  # noqa: E402
from engine.app import Engine  # noqa: E402
from engine.config import config_from_tables  # noqa: E402
from engine.db import upgrade  # noqa: E402
from engine.db.models import Base  # noqa: E402
from engine.demo import PRODUCTS, SHOPIFY_ID_BASE  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432"
DATABASE = "regulars_bench_dashboard"
NEVER = {"test", "postgres", "regulars_bench_celery", "template0", "template1"}
ZONE_NAME = "Europe/Prague"
ZONE = ZoneInfo(ZONE_NAME)
CHANNELS = ("shopify", "woocommerce", "pos")
TABLES = {
    "engine": {"currency": "EUR", "default_country": "CZ", "timezone": ZONE_NAME},
    "rules": {"points": {"per_unit": 1}, "expiry": {"months": 12}},
    "rewards": {
        "five-off": {"kind": "fixed_amount", "cost": 500, "value": "5.00"},
        "points-off": {"kind": "fixed_amount", "cost": 100, "value": "1.00", "partial": True, "max_units": 50},
    },
    "connectors": {"shopify": {"shop": "example.myshopify.com"}, "woocommerce": {"url": "https://shop.example"},
                   "pos": {}},
}
#: the tables whose secondary indexes are dropped during the load and built again
BIG = ("customers", "customer_links", "accounts", "ledger_entries", "lots", "orders", "rewards")
DAY = 86400.0
WINDOW_DAYS = 730
TARGET_MS = 1000.0
#: days of activity before the first month that the raw active-members SQL reads
ACTIVE_SPAN = metrics.ACTIVE_DAYS + 1
console = Console(width=max(Console().width, 120))

# -- people and products ------------------------------------------------------------------

FIRST = ("Jiří Jan Petr Josef Pavel Martin Tomáš Jaroslav Miroslav Zdeněk Václav Michal František Jakub Lukáš "
         "Ondřej Marie Jana Eva Hana Anna Lenka Kateřina Lucie Věra Alena Petra Veronika Tereza Zuzana Ľubomír "
         "Mária Peter Zoë Łukasz Søren Aoife François Markéta Šárka").split()
LAST = ("Novák Svoboda Novotný Dvořák Černý Procházka Kučera Veselý Horák Němec Marek Pospíšil Pokorný Hájek "
        "Král Jelínek Růžička Beneš Fiala Sedláček Doležal Zeman Kolář Navrátil Čermák Vaněk Urban Blažek "
        "Kříž Kovář Bartoš Vlček Polák Musil Kopecký Šimek Konečný Malý Holub Štěpánek Kadlec Říha Šťastný "
        "Baláž Kováč Horváth Tóth Müller Wąsik Kjærgaard O'Brien Lefèvre Ďurica Skála Moravec").split()
CITIES = (("Praha", "11000"), ("Brno", "60200"), ("Ostrava", "70200"), ("Plzeň", "30100"), ("Olomouc", "77900"),
          ("Liberec", "46001"), ("Bratislava", "81101"), ("Košice", "04001"), ("Zlín", "76001"))
STREETS = ("Národní", "Husova", "Palackého", "Masarykova", "Nádražní", "Školní", "Komenského", "Zahradní")
DOMAINS = ("example.com", "example.net", "example.org", "example.cz")
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # engine.identity's and engine.rewards' codes
MULTIPLIERS = '[["points per unit of currency", "1"]]'
ZERO, FIVE = Decimal(0), Decimal(5)
PLAIN = str.maketrans({"Ł": "L", "ł": "l", "ø": "o", "æ": "ae", "'": ""})


def _ascii(word: str) -> str:
    return unicodedata.normalize("NFKD", word.translate(PLAIN)).encode("ascii", "ignore").decode().lower()


def code(n: int, length: int, multiplier: int, offset: int) -> str:
    """A code of ``length`` characters, different for every n below 30**length
    (an affine bijection, written in base 30)."""
    x = (n * multiplier + offset) % (30 ** length)
    out = []
    for _ in range(length):
        x, r = divmod(x, 30)
        out.append(ALPHABET[r])
    return "".join(out)


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def amount(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


class Product:
    def __init__(self, sku: str, name: str, price: str):
        self.sku, self.price = sku, int(Decimal(price) * 100)
        self.name = json.dumps(name)  # as SQLAlchemy's JSON type writes it (ASCII escapes)
        self.price_text = price


CATALOGUE = [Product(*p) for p in PRODUCTS]
BAGS = [p for p in CATALOGUE if p.sku.startswith(("KAVA-", "CAJ-"))]


# -- the load: sinks ------------------------------------------------------------------------


class Count:
    """A sink that only counts (the calibration pilot)."""

    def __init__(self):
        self.rows = 0

    def write_row(self, row) -> None:
        self.rows += 1


#: every table the load writes: its columns and their types for COPY (FORMAT BINARY). A JSON
#: column is sent as text (json's binary form is its text) with the JSON already written out.
COPIES = {
    "customers": ("id, email, phone, first_name, last_name, card_code, referral_code, accepts_marketing, address, "
                  "birthday, created_at, updated_at",
                  ["int8", "text", "text", "text", "text", "text", "text", "bool", "text", "timestamptz",
                   "timestamptz", "timestamptz"]),
    "customer_links": ("id, channel, external_id, customer_id", ["int8", "text", "text", "int8"]),
    "visit_days": ("customer_id, channel, day", ["int8", "text", "date"]),
    "accounts": ("id, customer_id, unit, balance", ["int8", "int8", "text", "int8"]),
    "ledger_entries": ("id, account_id, amount, reason, source, rule, key, occurred_at, created_at, detail",
                       ["int8", "int8", "int8", "text", "text", "text", "text", "timestamptz", "timestamptz", "text"]),
    "orders": ("id, channel, external_id, customer_id, state, status, eligible, multipliers, awarded, revision, "
               "paid_at, created_at, updated_at",
               ["int8", "text", "text", "int8", "text", "text", "numeric", "text", "text", "int4", "timestamptz",
                "timestamptz", "timestamptz"]),
    "lots": ("id, account_id, entry_id, amount, remaining, earned_at, expires_at, available_at, reminded_at",
             ["int8", "int8", "int8", "int8", "int8", "timestamptz", "timestamptz", "timestamptz", "timestamptz"]),
    "rewards": ("id, customer_id, reward, kind, code, status, cost, value, sku, channel, source, key, issued_at, "
                "expires_at, used_at, used_in, detail",
                ["int8", "int8", "text", "text", "text", "text", "int8", "numeric", "text", "text", "text", "text",
                 "timestamptz", "timestamptz", "timestamptz", "text", "text"]),
}


@contextmanager
def copy_into(cursor, table: str):
    """``COPY table (...) FROM STDIN (FORMAT BINARY)`` with its types set, for ``write_row``."""
    columns, types = COPIES[table]
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        yield copy


class Sinks:
    """One COPY per table, each on its own connection (so they stream side by side)."""

    STREAMED = ("ledger_entries", "orders", "lots", "rewards")

    def __init__(self, url: str | None):
        self.stack = ExitStack()
        self.sinks: dict[str, object] = {}
        for table in self.STREAMED:
            if url is None:
                self.sinks[table] = Count()
                continue
            conn = self.stack.enter_context(psycopg.connect(url))
            conn.execute("SET session_replication_role = replica")
            cursor = self.stack.enter_context(conn.cursor())
            self.sinks[table] = self.stack.enter_context(copy_into(cursor, table))

    def __getitem__(self, table: str):
        return self.sinks[table]

    def close(self) -> None:
        self.stack.close()  # ends each COPY, then commits each connection


# -- the shop's history --------------------------------------------------------------------


class Shop:
    """Customers, their planned orders, and the simulation that turns them
    into orders, ledger entries, lots and rewards in time order."""

    def __init__(self, customers: int, now: datetime, seed: int, scale: float):
        self.n = customers
        self.now = now
        self.now_ts = now.timestamp()
        self.base_ts = self.now_ts - WINDOW_DAYS * DAY
        self.seed = seed
        self.scale = scale
        self.stats = {"refund": 0, "cancel": 0, "unpaid": 0, "guest": 0, "redeem": 0, "expiry": 0}

    # -- planning ----------------------------------------------------------------

    def plan(self, visits_sink=None, progress=None) -> None:
        """Who signs up when, which channels they use and when they buy
        (order times, bucketed per day); visit days go straight to their sink."""
        rng = random.Random(self.seed)
        n, base, now_ts = self.n, self.base_ts, self.now_ts
        # Sign-ups grow over the two years: density 1 + 2x on [0, 1].
        signups = sorted(base + (math.sqrt(1 + 8 * rng.random()) - 1) / 2 * (now_ts - base - 3600) for _ in range(n))
        self.signup = [0.0, *signups]
        self.home = [0] * (n + 1)
        self.alt = [-1] * (n + 1)
        self.buckets: list[list] = [[] for _ in range(WINDOW_DAYS + 2)]
        self.planned = 0
        scale = self.scale
        expo, rnd, lognorm = rng.expovariate, rng.random, rng.lognormvariate
        log_rate = math.log(0.06)
        buckets = self.buckets
        for cid in range(1, n + 1):
            u = rnd()
            home = 0 if u < 0.40 else (1 if u < 0.65 else 2)
            self.home[cid] = home
            if rnd() < 0.15:
                self.alt[cid] = (home + 1 + (rnd() < 0.5)) % 3
            start = self.signup[cid]
            seg = rnd()
            t = start + rnd() * 600
            times = []
            if seg < 0.06:
                pass  # enrolled, never bought
            elif seg < 0.76:
                times.append(t)
                for _ in range(0 if seg < 0.46 else (1 if seg < 0.66 else 2)):
                    t += expo(1 / (50 * DAY))
                    if t >= now_ts:
                        break
                    times.append(t)
            else:  # a regular, until they stop
                rate = min(0.7, scale * lognorm(log_rate, 0.8) * (1.8 if home == 2 else 1.0)) / DAY
                end = min(start + 30 * DAY + expo(1 / (300 * DAY)), now_ts)
                times.append(t)
                while True:
                    t += expo(rate)
                    if t >= end:
                        break
                    times.append(t)
            for t in times:
                buckets[int((t - base) // DAY)].append((t, cid, 0, 0))
            self.planned += len(times)
            if visits_sink is not None and (home == 2 or self.alt[cid] == 2) and times:
                days = set()
                for t in times:
                    if rnd() < 0.45:
                        v = min(max(t + (rnd() - 0.5) * 40 * DAY, start), now_ts - 1)
                        days.add(datetime.fromtimestamp(v, ZONE).date())
                for d in sorted(days):
                    visits_sink.write_row((cid, "pos", d))
            if progress is not None and cid % 50_000 == 0:
                progress(cid)
        # Guests: 1 % more orders with no customer (no email or phone at checkout).
        guests = self.planned // 100
        for _ in range(guests):
            t = base + rnd() * (now_ts - base)
            buckets[int((t - base) // DAY)].append((t, 0, 0, 0))
        self.planned += guests

    # -- the simulation -----------------------------------------------------------------

    def run(self, sinks, progress=None) -> None:
        rng = random.Random(self.seed + 1)
        rnd, randint, uniform = rng.random, rng.randint, rng.uniform
        n, base, now_ts = self.n, self.base_ts, self.now_ts
        ledger, orders_sink, lots_sink, rewards_sink = (sinks["ledger_entries"], sinks["orders"], sinks["lots"],
                                                        sinks["rewards"])
        write_entry, write_order = ledger.write_row, orders_sink.write_row
        write_lot, write_reward = lots_sink.write_row, rewards_sink.write_row
        fromts = datetime.fromtimestamp
        balance = [0] * (n + 1)
        account = [0] * (n + 1)
        open_lots: list[list | None] = [None] * (n + 1)
        self.balance, self.account = balance, account
        home, alt = self.home, self.alt
        counters = {"entry": 0, "order": 0, "lot": 0, "account": 0, "reward": 0, "shopify": 0, "woocommerce": 0,
                    "pos": 0, "refund": 0}
        refunds: dict[int, tuple] = {}
        stats = self.stats
        buckets = self.buckets
        current: list = []
        today = [0]

        def schedule(ts, cid, kind, ref):
            d = int((ts - base) // DAY)
            if d == today[0]:
                heappush(current, (ts, cid, kind, ref))
            else:
                buckets[d].append((ts, cid, kind, ref))

        def post(cid, amount, reason, source, rule, key, at, detail):
            acct = account[cid]
            if not acct:
                counters["account"] += 1
                acct = account[cid] = counters["account"]
            balance[cid] += amount
            counters["entry"] += 1
            eid = counters["entry"]
            write_entry((eid, acct, amount, reason, source, rule, key, at, at, detail))
            return eid, acct

        def close_lot(lot):
            write_lot((lot[0], lot[8], lot[7], lot[4], lot[1], lot[5], lot[6], None, None))

        def consume(cid, amount, source):
            """Ledger.consume_lots: the source's own lot first, then the soonest-expiring."""
            held = open_lots[cid]
            if not held:
                return
            if source is not None:
                for lot in held:
                    if lot[3] == source and amount > 0:
                        take = min(lot[1], amount)
                        lot[1] -= take
                        amount -= take
            for lot in held:  # opened in time order, and every lot expires 12 months on
                if amount <= 0:
                    break
                take = min(lot[1], amount)
                lot[1] -= take
                amount -= take
            kept = []
            for lot in held:
                if lot[1] > 0:
                    kept.append(lot)
                else:
                    close_lot(lot)
            open_lots[cid] = kept

        tails: dict[tuple, tuple[str, int, int]] = {}

        def line(channel, p, q, off):
            """A line's JSON after its id, its eligible cents, one unit's refund (cached)."""
            found = tails.get((channel, p.sku, q, off))
            if found is None:
                gross = p.price * q
                cut = gross // 10 if off else 0
                if channel == "woocommerce":
                    disc, sub = (money(cut), f'"{money(gross)}"')
                else:
                    disc, sub = (money(cut) if cut else "0"), "null"
                found = tails[(channel, p.sku, q, off)] = (
                    f'", "sku": "{p.sku}", "name": {p.name}, "quantity": {q}, "unit_price": "{p.price_text}", '
                    f'"subtotal": {sub}, "discount": "{disc}", "tax": "0", "gift_card": false, "categories": []}}',
                    gross - cut, p.price - cut // q)
            return found

        n_bags, n_all = len(BAGS), len(CATALOGUE)
        online_q, pos_q, sizes = (1, 1, 1, 2, 2, 3), (1, 1, 1, 2), (1, 1, 2, 2, 3, 4)

        def lines_for(channel):
            """(JSON of the lines, eligible cents, a refundable line's cents)."""
            if channel == "pos":
                chosen = [BAGS[int(rnd() * n_bags)]]
                if rnd() < 0.3:
                    chosen.append(CATALOGUE[int(rnd() * n_all)])
                quantities = pos_q
            else:
                chosen = rng.sample(CATALOGUE, sizes[int(rnd() * 6)])
                quantities = online_q
            parts, eligible, refundable = [], 0, 0
            for i, p in enumerate(chosen):
                tail, cents, refundable = line(channel, p, quantities[int(rnd() * len(quantities))], rnd() < 0.2)
                parts.append(f'{{"id": "{{lid}}{i}{tail}')
                eligible += cents
            if channel != "pos" and rnd() < 0.03:
                parts.append('{"id": "{lid}g", "sku": "POUKAZ-50", "name": "D\\u00e1rkov\\u00fd poukaz 50 \\u20ac", '
                             '"quantity": 1, "unit_price": "50.00", "subtotal": null, "discount": "0", "tax": "0", '
                             '"gift_card": true, "categories": []}')
            return ", ".join(parts), eligible, refundable

        def order(ts, cid):
            at = fromts(ts, UTC)
            iso = at.isoformat()
            if cid == 0:
                channel = "shopify" if rnd() < 0.6 else "woocommerce"
                stats["guest"] += 1
            else:
                channel = CHANNELS[alt[cid] if alt[cid] >= 0 and rnd() < 0.15 else home[cid]]
            counters[channel] += 1
            k = counters[channel]
            if channel == "shopify":
                external = str(SHOPIFY_ID_BASE + k)
                key = f"orders/paid:{external}:{iso}"
                lid, currency, attributes = f"{SHOPIFY_ID_BASE + 2 * 10**17 + k * 8}", '"EUR"', "{}"
            elif channel == "woocommerce":
                external = str(20_000 + k)
                key = f"order:{external}:{iso[:19]}"
                lid, currency, attributes = f"{k * 4}", '"EUR"', "{}"
            else:
                terminal = str(1 + k % 6)
                external = f"{terminal}:{k}"
                key = f"sale:{external}"
                lid, currency, attributes = f"{external}:", "null", '{"location": "Praha"}'
            source = f"order:{channel}:{external}"
            counters["order"] += 1
            oid = counters["order"]
            bal = balance[cid] if cid else 0
            redeemed = None
            if cid and bal >= 100 and rnd() < (0.12 if bal >= 500 else 0.02):
                # The customer spends points just before this order (at the till, or a code for the checkout).
                if bal >= 500 and rnd() < 0.5:
                    name, cost, value = "five-off", 500, FIVE
                else:
                    units = randint(1, min(10, bal // 100))
                    name, cost, value = "points-off", 100 * units, Decimal(units)
                counters["reward"] += 1
                rid = counters["reward"]
                reward_code = code(rid, 14, 7919 * 1000003, 77_777_777)
                spend_in = channel if rnd() < 0.7 else None
                rat = fromts(ts - 120, UTC)
                post(cid, -cost, "redeem", f"reward:{reward_code}", None, f"redeem:{reward_code}", rat,
                     f'{{"channel": "{spend_in}"}}' if spend_in else "null")
                consume(cid, cost, None)
                used = rnd() < 0.9
                write_reward((rid, cid, name, "fixed_amount", reward_code, "used" if used else "issued", cost, value,
                              None, spend_in, "redeem", f"redeem:{reward_code}", rat, None, at if used else None,
                              source if used else None, None))
                stats["redeem"] += 1
                redeemed = reward_code if used else None
            lines, eligible, refundable = lines_for(channel)
            lines = lines.replace("{lid}", lid)
            codes = f'["{redeemed}"]' if redeemed else "[]"
            stamp = f'["{iso}", "{iso}", "{key}"]'
            if rnd() < 0.02:  # created, never paid (a bank transfer that never came)
                stats["unpaid"] += 1
                state = (f'{{"snapshot": {{"lines": [{lines}], "currency": {currency}, "discount_codes": {codes}, '
                         f'"attributes": {attributes}, "test": false}}, "snapshot_stamp": {stamp}, "status": "pending", '
                         f'"status_stamp": {stamp}, "paid_seen": false, "final_cancel": false, "refunds": {{}}, '
                         f'"paid_at": null}}')
                write_order((oid, channel, external, cid or None, state, "pending", ZERO, "null", "{}", 1, None, at, at))
                return
            points = eligible // 100
            # What happens to it later: a partial or full refund, a cancellation (a till's void).
            fate, later = None, None
            u = rnd()
            if u < 0.06:
                fate = "partial" if u < 0.035 else ("full" if u < 0.05 else "cancel")
                later = ts + (uniform(60, 2 * DAY) if channel == "pos" else uniform(DAY, 30 * DAY))
                if later >= now_ts:
                    fate = later = None
            if fate == "partial" and refundable >= eligible:
                fate = "full"
            final, status, refunds_json, revision = eligible, "paid", "{}", 1
            state_status, final_cancel, row_status = "paid", "false", "paid"
            updated = at
            if fate is not None:
                revision, updated = 2, fromts(later, UTC)
                counters["refund"] += 1
                refund_id = 900_000_000 + counters["refund"]
                if fate == "partial":
                    final = eligible - refundable
                    refunds_json = f'{{"{refund_id}": "{money(refundable)}"}}'
                elif fate == "full":
                    final, state_status, row_status = 0, "refunded", "refunded"
                    refunds_json = f'{{"{refund_id}": "{money(eligible)}"}}'
                else:
                    final, row_status = 0, "cancelled"
                    if channel == "pos":
                        final_cancel = "true"  # a void carries no version: final
                    else:
                        state_status = "cancelled"
            status = row_status
            state = (f'{{"snapshot": {{"lines": [{lines}], "currency": {currency}, "discount_codes": {codes}, '
                     f'"attributes": {attributes}, "test": false}}, "snapshot_stamp": {stamp}, '
                     f'"status": "{state_status}", "status_stamp": {stamp}, "paid_seen": true, '
                     f'"final_cancel": {final_cancel}, "refunds": {refunds_json}, "paid_at": "{iso}"}}')
            if cid == 0:
                write_order((oid, channel, external, None, state, status, amount(final), "null", "{}", revision, at, at,
                             updated))
                return
            final_points = final // 100
            awarded = f'{{"rules.points|points": {final_points}}}' if final_points else "{}"
            write_order((oid, channel, external, cid, state, status, amount(final), MULTIPLIERS, awarded, revision, at,
                         at, updated))
            if points > 0:
                eid, acct = post(cid, points, "order", source, "rules.points",
                                 f"order:{oid}:1:{cid}:rules.points|points", at,
                                 f'{{"eligible": "{money(eligible)}", "multipliers": {MULTIPLIERS}}}')
                covered = max(0, min(points, balance[cid]))  # a debt takes new points first
                if covered:
                    counters["lot"] += 1
                    try:  # add_months(at, 12): the same day a year on, 28 February for the 29th
                        expires = at.replace(year=at.year + 1)
                    except ValueError:
                        expires = at.replace(year=at.year + 1, day=28)
                    lot = [counters["lot"], covered, expires.timestamp(), source, covered, at, expires, eid, acct]
                    if open_lots[cid] is None:
                        open_lots[cid] = []
                    open_lots[cid].append(lot)
                    if lot[2] < now_ts:
                        schedule(lot[2], cid, 2, lot[0])
            if fate is not None and final_points != points:
                refunds[oid] = (source, final_points - points, money(final) if final else "0",
                                "cancel" if fate == "cancel" else "refund")
                schedule(later, cid, 1, oid)

        def refund(ts, cid, oid):
            source, diff, eligible, reason = refunds.pop(oid)
            post(cid, diff, reason, source, "rules.points", f"order:{oid}:2:{cid}:rules.points|points",
                 fromts(ts, UTC), f'{{"eligible": "{eligible}", "multipliers": {MULTIPLIERS}}}')
            consume(cid, -diff, source)
            stats["cancel" if reason == "cancel" else "refund"] += 1

        def expire(cid, lot_id):
            held = open_lots[cid] or []
            if held and held[0][0] == lot_id:  # the oldest lot, as a rule: lots expire in the order they opened
                lot = held.pop(0)
            else:
                lot = next((lot for lot in held if lot[0] == lot_id), None)
                if lot is None:
                    return  # spent or taken back before its date
                held.remove(lot)
            post(cid, -lot[1], "expiry", f"lot:{lot_id}", None, f"expiry:{lot_id}", lot[6], "null")
            lot[1] = 0
            close_lot(lot)
            stats["expiry"] += 1

        for d in range(len(buckets)):
            today[0] = d
            current[:] = buckets[d]
            buckets[d] = []
            heapify(current)
            while current:
                ts, cid, kind, ref = heappop(current)
                if kind == 0:
                    order(ts, cid)
                elif kind == 1:
                    refund(ts, cid, ref)
                else:
                    expire(cid, ref)
            if progress is not None:
                progress(d, counters["entry"])
        for held in open_lots:
            for lot in held or ():
                close_lot(lot)
        self.counters = counters


# -- the database ---------------------------------------------------------------------------


def database_url(driver: bool = False) -> str:
    url = f"{SERVER}/{DATABASE}"
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if driver else url


def create_database() -> None:
    assert DATABASE not in NEVER and not DATABASE.startswith("test_")
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
            console.print(f"created database {DATABASE}")


def restore_indexes(conn: psycopg.Connection) -> int:
    """Build again every index or unique constraint a load dropped (this one, or
    an interrupted earlier one)."""
    conn.execute("CREATE TABLE IF NOT EXISTS bench_dashboard_saved_ddl (name text PRIMARY KEY, tbl text, ddl text)")
    rows = conn.execute("SELECT name, tbl, ddl FROM bench_dashboard_saved_ddl ORDER BY tbl, name").fetchall()
    built = 0
    for name, tbl, ddl in rows:
        if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
            started = time.perf_counter()
            conn.execute(ddl)
            built += 1
            console.print(f"  {tbl}: {name} built in {time.perf_counter() - started:.1f} s")
        conn.execute("DELETE FROM bench_dashboard_saved_ddl WHERE name = %s", (name,))
    return built


def drop_indexes(conn: psycopg.Connection) -> int:
    """Drop the big tables' secondary indexes and unique constraints, keeping
    their definitions in bench_dashboard_saved_ddl (same transaction)."""
    found = conn.execute(
        """SELECT t.relname, i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname,
                  pg_get_constraintdef(c.oid)
           FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
           JOIN pg_namespace ns ON ns.oid = t.relnamespace AND ns.nspname = 'public'
           LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = t.oid AND c.contype = 'u'
           WHERE t.relname = ANY(%s) AND NOT i.indisprimary""", (list(BIG),)).fetchall()
    with conn.transaction():
        for tbl, index, indexdef, conname, condef in found:
            if conname:
                ddl = f'ALTER TABLE {tbl} ADD CONSTRAINT "{conname}" {condef}'
                conn.execute(f'ALTER TABLE {tbl} DROP CONSTRAINT "{conname}"')
            else:
                ddl = indexdef
                conn.execute(f"DROP INDEX {index}")
            conn.execute("INSERT INTO bench_dashboard_saved_ddl (name, tbl, ddl) VALUES (%s, %s, %s)",
                         (index, tbl, ddl))
    return len(found)


def engine_tables() -> list[str]:
    return [t.name for t in Base.metadata.sorted_tables]


def seed(args, now: datetime) -> dict:
    """Empty the database and fill it; returns the load's figures."""
    url = database_url()
    figures: dict = {}
    with psycopg.connect(url, autocommit=True) as conn:
        restore_indexes(conn)
        conn.execute(f"TRUNCATE {', '.join(engine_tables())} RESTART IDENTITY CASCADE")
        dropped = drop_indexes(conn)
    console.print(f"emptied the tables; dropped {dropped} secondary indexes for the load")

    scale = calibrate(args, now)
    figures["scale"] = scale
    shop = Shop(args.customers, now, args.seed, scale)
    started = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False) as progress, psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        with conn.cursor() as cur:
            with copy_into(cur, "visit_days") as visits:
                task = progress.add_task("plan orders and visits", total=args.customers, note="")
                shop.plan(visits, progress=lambda k: progress.update(task, completed=k))
                progress.update(task, completed=args.customers, note=f"{shop.planned:,} orders planned")
            task = progress.add_task("customers and links", total=args.customers, note="")
            write_customers(cur, shop, lambda k: progress.update(task, completed=k))
            progress.update(task, completed=args.customers)
        conn.commit()
        figures["plan_s"] = time.perf_counter() - started

        sinks = Sinks(url)
        task = progress.add_task("orders, ledger, lots, rewards (by day)", total=len(shop.buckets), note="")
        shop.run(sinks, progress=lambda d, e: progress.update(task, completed=d + 1, note=f"{e:,} entries"))
        sinks.close()
        with conn.cursor() as cur:
            with copy_into(cur, "accounts") as copy:
                for cid in range(1, shop.n + 1):
                    if shop.account[cid]:
                        copy.write_row((shop.account[cid], cid, "points", shop.balance[cid]))
        conn.commit()
    figures["load_s"] = time.perf_counter() - started
    figures["stats"] = dict(shop.stats)
    figures["counters"] = dict(shop.counters)
    console.print(f"loaded in {figures['load_s']:.0f} s; building the indexes again "
                  "(maintenance_work_mem = 1GB for this session)")
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        restore_indexes(conn)
        for table in Base.metadata.sorted_tables:
            if "id" in table.c and table.c.id.autoincrement is not False:
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                             f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)")
        conn.execute("ANALYZE")
    figures["index_s"] = time.perf_counter() - started
    return figures


def write_customers(cur, shop: Shop, progress) -> None:
    rng = random.Random(shop.seed + 2)
    rnd, randint = rng.random, rng.randint
    first_ascii = [_ascii(f) for f in FIRST]
    last_ascii = [_ascii(x) for x in LAST]
    links = []
    with copy_into(cur, "customers") as copy:
        for cid in range(1, shop.n + 1):
            f, la = randint(0, len(FIRST) - 1), randint(0, len(LAST) - 1)
            home, alt = shop.home[cid], shop.alt[cid]
            pos_only = home == 2 and alt < 0
            email = None if pos_only and rnd() < 0.25 else \
                f"{first_ascii[f]}.{last_ascii[la]}{cid}@{DOMAINS[cid % 4]}"
            phone = f"+42077{cid:07d}" if (rnd() < (0.8 if email is None else 0.4)) else None
            if email is None and phone is None:
                phone = f"+42077{cid:07d}"
            city, zipcode = CITIES[randint(0, len(CITIES) - 1)]
            address = None if pos_only else f"{_ascii(STREETS[cid % 8])} {1 + cid % 97} {zipcode} {_ascii(city)} cz"
            birthday = datetime(randint(1950, 2004), randint(1, 12), randint(1, 28), tzinfo=UTC) \
                if rnd() < 0.25 else None
            at = datetime.fromtimestamp(shop.signup[cid], UTC)
            copy.write_row((cid, email, phone, FIRST[f], LAST[la], code(cid, 12, 1000003 * 7919, 123_456_789),
                            code(cid, 8, 104_729 * 7, 31_337), None if pos_only else rnd() < 0.4, address, birthday,
                            at, at))
            if 0 in (home, alt):
                links.append(("shopify", str(SHOPIFY_ID_BASE + 10**17 + cid), cid))
            if 1 in (home, alt) and rnd() < 0.85:  # the rest check out as guests, known by email
                links.append(("woocommerce", str(100 + cid), cid))
            if cid % 50_000 == 0:
                progress(cid)
    with copy_into(cur, "customer_links") as copy:
        for i, (channel, external, cid) in enumerate(links, 1):
            copy.write_row((i, channel, external, cid))


def calibrate(args, now: datetime) -> float:
    """The regulars' rate that gives about --entries for --customers: two
    pilots on a sample, entries per customer being about linear in it."""
    sample = min(args.customers, 20_000)
    want = args.entries / args.customers
    found = []
    for scale in (1.0, 2.0):
        pilot = Shop(sample, now, args.seed + 100, scale)
        pilot.plan()
        sinks = Sinks(None)
        pilot.run(sinks)
        found.append(sinks["ledger_entries"].rows / sample)
    slope = found[1] - found[0]
    scale = max(0.05, 1.0 + (want - found[0]) / slope) if slope > 0 else 1.0
    console.print(f"calibration: {found[0]:.2f} entries per customer at rate ×1, {found[1]:.2f} at ×2; "
                  f"{want:.2f} wanted → regulars' rate ×{scale:.3f}")
    return scale


# -- what the database holds ---------------------------------------------------------------


def shape(cur) -> list[tuple[str, str]]:
    rows = []

    def one(sql, *params):
        return cur.execute(sql, params).fetchone()

    customers, merged = one("SELECT count(*), count(merged_into) FROM customers")
    rows.append(("customers", f"{customers:,}"))
    rows.append(("customer_links", ", ".join(f"{c} {n:,}" for c, n in cur.execute(
        "SELECT channel, count(*) FROM customer_links GROUP BY 1 ORDER BY 1"))))
    by = cur.execute("SELECT channel, count(*), count(*) FILTER (WHERE paid_at IS NOT NULL AND eligible > 0), "
                     "count(*) FILTER (WHERE customer_id IS NULL) FROM orders GROUP BY 1 ORDER BY 1").fetchall()
    rows.append(("orders", f"{sum(r[1] for r in by):,}: " + ", ".join(f"{c} {n:,}" for c, n, _, _ in by)))
    rows.append(("  paid, with eligible spend", f"{sum(r[2] for r in by):,}: " +
                 ", ".join(f"{c} {p:,}" for c, _, p, _ in by)))
    statuses = cur.execute("SELECT status, count(*) FROM orders GROUP BY 1 ORDER BY 2 DESC").fetchall()
    rows.append(("  by status", ", ".join(f"{s} {n:,}" for s, n in statuses)))
    rows.append(("  guests (no customer)", f"{sum(r[3] for r in by):,}"))
    lo, hi = one("SELECT min(paid_at), max(paid_at) FROM orders")
    rows.append(("  paid between", f"{lo:%Y-%m-%d} and {hi:%Y-%m-%d}"))
    buckets = cur.execute(
        """SELECT b, count(*) FROM (
             SELECT CASE WHEN n = 0 THEN '0' WHEN n <= 3 THEN n::text WHEN n <= 10 THEN '4-10'
                         WHEN n <= 50 THEN '11-50' ELSE '51+' END AS b
             FROM (SELECT c.id, count(o.id) AS n FROM customers c LEFT JOIN orders o
                   ON o.customer_id = c.id AND o.paid_at IS NOT NULL AND o.eligible > 0 GROUP BY c.id) x) y
           GROUP BY b ORDER BY min(CASE b WHEN '0' THEN 0 WHEN '1' THEN 1 WHEN '2' THEN 2 WHEN '3' THEN 3
                                         WHEN '4-10' THEN 4 WHEN '11-50' THEN 5 ELSE 6 END)""").fetchall()
    rows.append(("customers by paid orders", ", ".join(f"{b}: {n / customers:.0%}" for b, n in buckets)))
    lapsed, buyers, top = one(
        """SELECT count(*) FILTER (WHERE last < now() - interval '90 days'), count(*), max(n) FROM (
             SELECT customer_id, max(paid_at) AS last, count(*) AS n FROM orders
             WHERE customer_id IS NOT NULL AND paid_at IS NOT NULL AND eligible > 0 GROUP BY 1) x""")
    rows.append(("buyers with no order in 90 days", f"{lapsed:,} of {buyers:,} ({lapsed / max(buyers, 1):.0%}); "
                                                    f"the most orders by one customer: {top:,}"))
    entries = cur.execute("SELECT reason, count(*), sum(amount) FROM ledger_entries GROUP BY 1 ORDER BY 2 DESC") \
        .fetchall()
    rows.append(("ledger_entries", f"{sum(r[1] for r in entries):,}: " +
                 ", ".join(f"{r} {n:,}" for r, n, _ in entries)))
    rows.append(("  points", ", ".join(f"{r} {s:+,}" for r, _, s in entries)))
    accounts, total, negative = one("SELECT count(*), sum(balance), count(*) FILTER (WHERE balance < 0) "
                                    "FROM accounts")
    rows.append(("accounts", f"{accounts:,} (points), balances {total:,} in all, {negative:,} negative"))
    lots, open_lots, remaining = one("SELECT count(*), count(*) FILTER (WHERE remaining > 0), sum(remaining) "
                                     "FROM lots")
    rows.append(("lots", f"{lots:,}, {open_lots:,} open, {remaining:,} points left in them"))
    rewards = one("SELECT count(*), count(*) FILTER (WHERE status = 'used') FROM rewards")
    rows.append(("rewards (redeemed)", f"{rewards[0]:,}, {rewards[1]:,} used"))
    visits, visitors = one("SELECT count(*), count(DISTINCT customer_id) FROM visit_days")
    rows.append(("visit_days (pos)", f"{visits:,} days of {visitors:,} customers"))
    size = one("SELECT pg_size_pretty(pg_database_size(current_database()))")[0]
    rows.append(("database size", size))
    return rows


def consistency(engine: Engine) -> list[tuple[str, str, bool]]:
    """Cheap checks that the seed is what the engine would have written."""
    out = []
    with engine.db.connect() as conn:
        conn.exec_driver_sql("SET statement_timeout = '60s'")
        started = time.perf_counter()
        try:
            drift = engine.ledger.audit(conn)
            took = time.perf_counter() - started
            out.append(("Ledger.audit (every account)", f"{len(drift)} drifted accounts, {took:.1f} s", not drift))
        except Exception as exc:  # over a minute: a sample instead
            conn.rollback()
            conn.exec_driver_sql("SET statement_timeout = '60s'")
            bad = conn.exec_driver_sql(
                "SELECT count(*) FROM (SELECT a.id, a.balance, (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries e "
                "WHERE e.account_id = a.id) AS total FROM accounts a TABLESAMPLE SYSTEM (1)) x "
                "WHERE balance <> total").scalar()
            out.append(("balances = entries (1 % sample; audit > 60 s)", f"{bad} drifted ({type(exc).__name__})",
                        not bad))
        started = time.perf_counter()
        bad = conn.exec_driver_sql(
            "SELECT count(*) FROM (SELECT a.id, a.balance, COALESCE((SELECT SUM(remaining) FROM lots l "
            "WHERE l.account_id = a.id), 0) AS open FROM accounts a) x WHERE balance >= 0 AND balance <> open").scalar()
        out.append(("balance = points left in lots", f"{bad} accounts differ, {time.perf_counter() - started:.1f} s",
                    not bad))
        orphans = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM ledger_entries e WHERE NOT EXISTS "
            "        (SELECT 1 FROM accounts a WHERE a.id = e.account_id)) + "
            "       (SELECT count(*) FROM lots l WHERE NOT EXISTS "
            "        (SELECT 1 FROM ledger_entries e WHERE e.id = l.entry_id)) + "
            "       (SELECT count(*) FROM orders o WHERE o.customer_id IS NOT NULL AND NOT EXISTS "
            "        (SELECT 1 FROM customers c WHERE c.id = o.customer_id))").scalar()
        out.append(("foreign keys (entries, lots, orders)", f"{orphans} rows point nowhere", not orphans))
        awarded = conn.exec_driver_sql(
            "SELECT count(*) FROM orders o WHERE o.customer_id IS NOT NULL AND "
            "COALESCE((o.awarded::jsonb ->> 'rules.points|points')::bigint, 0) <> floor(o.eligible)").scalar()
        out.append(("orders' awarded points = floor(eligible)", f"{awarded} differ", not awarded))
    return out


# -- timing -----------------------------------------------------------------------------------------


class Statements:
    """The SQL a call runs, with each statement's time (to explain a slow one)."""

    def __init__(self, sa_engine):
        self.rows: list[tuple[float, str, object]] = []
        self.on = False
        event.listen(sa_engine, "before_cursor_execute", self._before)
        event.listen(sa_engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        conn.info.setdefault("bench_t", []).append(time.perf_counter())

    def _after(self, conn, cursor, statement, parameters, context, executemany):
        started = conn.info["bench_t"].pop()
        if self.on:
            self.rows.append((time.perf_counter() - started, statement, parameters))


class Timer:
    def __init__(self, engine: Engine, runs: int):
        self.engine, self.runs = engine, runs
        self.statements = Statements(engine.db)
        self.results: list[dict] = []

    def time(self, group: str, label: str, call) -> dict:
        samples, value, per_call = [], None, 0
        slowest = None
        for _ in range(self.runs):
            self.statements.rows = []
            self.statements.on = True
            started = time.perf_counter()
            value = call()
            samples.append((time.perf_counter() - started) * 1000)
            self.statements.on = False
            per_call = len(self.statements.rows)
            top = max(self.statements.rows, default=None, key=lambda r: r[0])
            if top is not None and (slowest is None or top[0] > slowest[0]):
                slowest = top
        result = {"group": group, "label": label, "min": min(samples), "median": statistics.median(samples),
                  "max": max(samples), "sql": per_call, "value": value, "slowest": slowest}
        self.results.append(result)
        return result


def explain(engine: Engine, statement: str, parameters) -> str:
    with engine.db.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
    return "\n".join(r[0] for r in rows)


# -- the same figures by raw SQL ---------------------------------------------------------------------

PAID = "customer_id IS NOT NULL AND paid_at IS NOT NULL AND eligible > 0"
LOCAL = "(%(d)s::timestamp AT TIME ZONE %(z)s)"
POINTS = "JOIN accounts a ON a.id = e.account_id AND a.unit = 'points'"
SOURCE_CHANNEL = ("split_part(e.source, ':', 1) IN ('order', 'visit', 'subscription') "
                  "AND split_part(e.source, ':', 2) = %(ch)s")


def _at(name: str) -> str:
    return LOCAL.replace("%(d)s", f"%({name})s")


def raw_queries(channel: str | None) -> dict[str, str]:
    """One SQL per figure, straight from ledger_entries and orders."""
    ch_orders = " AND channel = %(ch)s" if channel else ""
    month = "date_trunc('month', timezone(%(z)s, e.occurred_at))::date"
    window = f"e.occurred_at >= {_at('lo')} AND e.occurred_at < {_at('hi')}"
    issued_ch = f" AND {SOURCE_CHANNEL}" if channel else ""
    spent_join = "JOIN rewards r ON r.code = substr(e.source, 8) AND r.channel = %(ch)s" if channel else ""
    expired_join = ("JOIN lots l ON l.id = substr(e.source, 5)::bigint JOIN ledger_entries s ON s.id = l.entry_id "
                    "AND split_part(s.source, ':', 1) IN ('order', 'visit', 'subscription') "
                    "AND split_part(s.source, ':', 2) = %(ch)s") if channel else ""
    queries = {
        "issued": f"SELECT {month}, SUM(e.amount) FROM ledger_entries e {POINTS} "
                  f"WHERE e.reason NOT IN ('redeem', 'reward-expired', 'expiry', 'merge') AND {window}{issued_ch} "
                  "GROUP BY 1",
        "spent": f"SELECT {month}, -SUM(e.amount) FROM ledger_entries e {POINTS} {spent_join} "
                 f"WHERE e.reason IN ('redeem', 'reward-expired') AND {window} GROUP BY 1",
        "expired": f"SELECT {month}, -SUM(e.amount) FROM ledger_entries e {POINTS} {expired_join} "
                   f"WHERE e.reason = 'expiry' AND {window} GROUP BY 1",
        "redemption": (
            f"SELECT {month}, SUM(-e.amount) FILTER (WHERE e.reason IN ('redeem', 'reward-expired'){' AND r.channel = %(ch)s' if channel else ''}), "
            f"SUM(e.amount) FILTER (WHERE e.reason NOT IN ('redeem', 'reward-expired', 'expiry', 'merge')"
            f"{issued_ch}) FROM ledger_entries e {POINTS} "
            f"{'LEFT JOIN rewards r ON r.code = substr(e.source, 8) AND e.source LIKE ' + chr(39) + 'reward:%%' + chr(39) if channel else ''} "
            f"WHERE {window} GROUP BY 1"),
        "buyers": (
            "WITH b AS (SELECT customer_id, date_trunc('month', timezone(%(z)s, paid_at))::date AS m, count(*) AS n "
            f"FROM orders WHERE {PAID}{ch_orders} AND paid_at >= {_at('before')} AND paid_at < {_at('hi')} "
            "GROUP BY 1, 2) "
            "SELECT cur.m, count(*), SUM(cur.n), count(prev.customer_id) FROM b cur LEFT JOIN b prev "
            "ON prev.customer_id = cur.customer_id AND prev.m = (cur.m - interval '1 month')::date GROUP BY cur.m"),
        "firsts": (
            "WITH p AS (SELECT timezone(%(z)s, paid_at)::date AS d, eligible, "
            "row_number() OVER (PARTITION BY customer_id ORDER BY paid_at, id) AS k "
            f"FROM orders WHERE {PAID}{ch_orders} AND paid_at < {_at('hi')}), "
            "m AS (SELECT date_trunc('month', d)::date AS m, count(*) FILTER (WHERE k = 1) AS firsts, "
            "count(*) FILTER (WHERE k = 2) AS seconds, SUM(eligible) AS revenue FROM p GROUP BY 1) "
            "SELECT m, SUM(firsts) OVER w, SUM(seconds) OVER w, SUM(revenue) OVER w FROM m WINDOW w AS (ORDER BY m)"),
        "active": (
            "WITH s AS (SELECT unnest(%(asof)s::date[]) AS asof), "
            f"a AS (SELECT customer_id, timezone(%(z)s, paid_at)::date AS d FROM orders WHERE {PAID}{ch_orders} "
            f"AND paid_at >= {_at('active_lo')} AND paid_at < {_at('hi')} "
            "UNION ALL SELECT customer_id, day FROM visit_days WHERE day >= %(active_lo)s AND day < %(hi)s"
            f"{ch_orders}) "
            "SELECT s.asof, count(DISTINCT a.customer_id) FROM s JOIN a ON a.d BETWEEN s.asof - 89 AND s.asof "
            "GROUP BY s.asof"),
    }
    if not channel:
        queries["liability"] = (
            f"SELECT m, SUM(t) OVER (ORDER BY m) FROM (SELECT {month} AS m, SUM(e.amount) AS t "
            f"FROM ledger_entries e {POINTS} WHERE e.reason <> 'merge' AND e.occurred_at < {_at('hi')} GROUP BY 1) x")
    return queries


#: which raw query gives each metric
RAW_OF = {"retention_rate": "buyers", "churn_rate": "buyers", "purchase_frequency": "buyers",
          "repeat_purchase_rate": "firsts", "average_clv": "firsts", "active_members": "active",
          "points_issued": "issued", "points_spent": "spent", "points_expired": "expired",
          "redemption_rate": "redemption", "points_liability": "liability"}


def raw_values(name: str, rows: list, starts: list[date], point: Decimal | None, asofs: list[date]) -> list:
    """A metric's values per month from its raw query's rows."""
    by = {r[0]: r[1:] for r in rows}
    if name == "active_members":  # keyed by the day each month is taken on
        by = {m: by.get(asof, (0,)) for m, asof in zip(starts, asofs, strict=True)}
    cent = Decimal("0.01")

    def ratio(a, b):
        return a / b if b else None

    def upto(m):  # the cumulative row of the latest month at or before m
        found = [k for k in by if k <= m]
        return by[max(found)] if found else None

    out = []
    for m in starts:
        prev = metrics.previous_period(m, "month")
        if name in ("retention_rate", "churn_rate"):
            rate = ratio(by.get(m, (0, 0, 0))[2], by.get(prev, (0, 0, 0))[0])
            out.append(rate if name == "retention_rate" or rate is None else 1 - rate)
        elif name == "purchase_frequency":
            b, o, _ = by.get(m, (0, 0, 0))
            out.append(ratio(int(o or 0), b))
        elif name in ("repeat_purchase_rate", "average_clv"):
            row = upto(m)
            if row is None:
                out.append(None)
            elif name == "repeat_purchase_rate":
                out.append(ratio(int(row[1]), int(row[0])))
            else:
                out.append((Decimal(row[2]) / int(row[0])).quantize(cent, rounding=ROUND_HALF_EVEN) if row[0] else None)
        elif name == "active_members":
            out.append(by.get(m, (None,))[0])
        elif name in ("points_issued", "points_spent", "points_expired"):
            out.append(int(by.get(m, (0,))[0] or 0))
        elif name == "redemption_rate":
            spent, issued = by.get(m, (0, 0))
            out.append(int(spent or 0) / int(issued) if issued and int(issued) > 0 else None)
        elif name == "points_liability":
            row = upto(m)
            out.append(None if point is None or row is None else
                       (int(row[0]) * point).quantize(cent, rounding=ROUND_HALF_EVEN))
    return out


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) < 1e-9
    return Decimal(str(a)) == Decimal(str(b))


# -- the run ----------------------------------------------------------------------------------------


def fmt_ms(ms: float) -> str:
    text = f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"
    return f"[bold red]{text}[/]" if ms > TARGET_MS else text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10_000_000, help="ledger entries, about (calibrated)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5, help="runs of each dashboard query (default 5)")
    parser.add_argument("--keep", action="store_true", help="don't seed when the database is already seeded")
    parser.add_argument("--skip-rebuild", action="store_true", help="with --keep: don't rebuild the counters again")
    parser.add_argument("--no-raw-channels", action="store_true", help="raw SQL for the overall figures only")
    parser.add_argument("--raw-runs", type=int, default=1, help="runs of each raw SQL; the best counts (default 1)")
    args = parser.parse_args()

    # The admin page's queries are timed last: import it first, so a broken import fails before the seeding.
    from engine.web.pages.admin import Admin

    now = datetime.now(UTC).replace(microsecond=0)
    create_database()
    sa_url = database_url(driver=True)
    workdir = Path(tempfile.mkdtemp(prefix="regulars-bench-dashboard-"))
    atexit.register(shutil.rmtree, workdir, True)
    engine = Engine(config_from_tables(TABLES, workdir / "plugins.toml", {"REGULARS_DATABASE_URL": sa_url}))
    upgrade(engine.db)
    engine.ensure_schema()

    with psycopg.connect(database_url(), autocommit=True) as conn:
        restore_indexes(conn)
        customers = conn.execute("SELECT count(*) FROM customers").fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    seeded = customers == args.customers and abs(entries - args.entries) <= 0.03 * args.entries
    figures: dict = {}
    if args.keep and seeded:
        console.print(f"--keep: {customers:,} customers and {entries:,} ledger entries already there")
    else:
        if args.keep:
            console.print(f"--keep, but the database holds {customers:,} customers and {entries:,} entries: seeding")
        figures = seed(args, now)

    # -- the upgrade: counters from the ledger and the orders
    rebuilt = None
    if not (args.keep and seeded and args.skip_rebuild):
        console.print("rebuilding the dashboard's counters (engine.metrics.rebuild) ...")
        started = time.perf_counter()
        metrics.rebuild(engine)
        rebuilt = time.perf_counter() - started
        started = time.perf_counter()
        folded = metrics.compact(engine)
        compacted = time.perf_counter() - started
        with psycopg.connect(database_url(), autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute("ANALYZE")
            analyzed = time.perf_counter() - started
        console.print(f"rebuild {rebuilt:.1f} s, compact {compacted * 1000:.0f} ms ({folded} deltas), "
                      f"ANALYZE {analyzed:.1f} s")

    with psycopg.connect(database_url()) as conn, conn.cursor() as cur:
        table = Table(title="The seed", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for k, v in shape(cur):
            table.add_row(k, v)
        counts = cur.execute("SELECT (SELECT count(*) FROM metric_counts), (SELECT count(*) FROM metric_footprints), "
                             "(SELECT pg_size_pretty(pg_total_relation_size('metric_footprints')))").fetchone()
        table.add_row("metric_counts / footprints", f"{counts[0]:,} counters; {counts[1]:,} footprints ({counts[2]})")
        if figures:
            table.add_row("load", f"calibrated rate ×{figures['scale']:.3f}; plan + customers {figures['plan_s']:.0f} s, "
                                  f"everything {figures['load_s']:.0f} s, indexes + ANALYZE {figures['index_s']:.0f} s")
        if rebuilt is not None:
            table.add_row("metrics.rebuild", f"[bold]{rebuilt:.1f} s[/]")
        console.print(table)

    checks = Table(title="Consistency")
    for col in ("check", "result", "ok"):
        checks.add_column(col)
    for what, result, ok in consistency(engine):
        checks.add_row(what, result, "✓" if ok else "[bold red]✗[/]")
    console.print(checks)

    timer = Timer(engine, args.runs)
    today = datetime.now(UTC).astimezone(ZONE).date()
    end = today
    m_start = metrics.period_start(end, "month")
    for _ in range(11):
        m_start = metrics.previous_period(m_start, "month")
    w_start = metrics.period_start(end, "week") - timedelta(weeks=11)
    w26 = metrics.period_start(end, "week") - timedelta(weeks=25)
    metrics.series(engine, "points_issued", m_start, end)  # warm: the schema check, the pool
    names = [m.name for m in metrics.METRICS]
    scopes = [None, *CHANNELS]

    for name in names:
        for ch in scopes:
            timer.time("series, 12 months", f"{name} · {ch or 'all'}",
                       lambda name=name, ch=ch: metrics.series(engine, name, m_start, end, ch))
    for name in names:
        for ch in scopes:
            timer.time("series, 12 weeks", f"{name} · {ch or 'all'}",
                       lambda name=name, ch=ch: metrics.series(engine, name, w_start, end, ch, period="week"))
    for ch in scopes:
        timer.time("overview: compute(every metric)", f"12 months · {ch or 'all'}",
                   lambda ch=ch: metrics.compute(engine, names, m_start, end, ch, "month", today))
        timer.time("overview: compute(every metric)", f"26 weeks · {ch or 'all'}",
                   lambda ch=ch: metrics.compute(engine, names, w26, end, ch, "week", today))
    timer.time("overview: compute(every metric)", "point_value", lambda: metrics.point_value(engine))

    admin = Admin(engine, None)
    with psycopg.connect(database_url()) as conn:
        typical = conn.execute(
            "SELECT c.id, c.email, c.card_code, c.last_name FROM customers c JOIN orders o ON o.customer_id = c.id "
            "WHERE c.email IS NOT NULL AND c.id > (SELECT max(id) / 2 FROM customers) "
            "GROUP BY c.id HAVING count(*) = 3 ORDER BY c.id LIMIT 1").fetchone()
        heavy = conn.execute("SELECT a.customer_id, count(*) FROM ledger_entries e JOIN accounts a "
                             "ON a.id = e.account_id GROUP BY 1 ORDER BY 2 DESC LIMIT 1").fetchone()
    cid, email, card, last = typical
    searches = [("", "no query: the newest 50"), (email, "an email (found exactly)"),
                (card, "a card code (found exactly)"), (last.lower(), f"a last name, {last.lower()!r}"),
                (email.split("@")[0][:-2], "part of an email"), ("+42077123", "part of a phone"),
                ("nobody-zzqx", "matches no one")]
    for query, what in searches:
        timer.time("customers: search", what, lambda query=query: admin._search(query))
    pages = max(1, -(-heavy[1] // 50))
    timer.time("customers: a customer's page", f"3 orders, page 1 (customer {cid})", lambda: admin._customer(cid, 0))
    timer.time("customers: a customer's page", f"{heavy[1]} entries, page 1 (customer {heavy[0]})",
               lambda: admin._customer(heavy[0], 0))
    timer.time("customers: a customer's page", f"{heavy[1]} entries, page {pages}",
               lambda: admin._customer(heavy[0], pages - 1))

    # -- the table of times
    table = Table(title=f"The dashboard's queries, {args.runs} runs each (ms)")
    for col, just in (("query", "left"), ("", "left"), ("min", "right"), ("median", "right"), ("max", "right"),
                      ("SQL/call", "right")):
        table.add_column(col, justify=just)
    group = None
    for r in timer.results:
        if r["group"] != group:
            group = r["group"]
            table.add_row(f"[bold]{group}[/]", "", "", "", "", "")
        table.add_row("", r["label"], fmt_ms(r["min"]), fmt_ms(r["median"]), fmt_ms(r["max"]), str(r["sql"]))
    console.print(table)
    slow = [r for r in timer.results if r["median"] > TARGET_MS]
    summary = {}
    for r in timer.results:
        g = summary.setdefault(r["group"], [])
        g.append(r["median"])
    for g, medians in summary.items():
        console.print(f"{g}: medians {min(medians):.1f} to {max(medians):.1f} ms")
    if slow:
        console.print(f"[bold red]{len(slow)} queries over {TARGET_MS:.0f} ms (median):[/]")
        explained = set()
        for r in slow:
            seconds, statement, parameters = r["slowest"]
            console.print(f"{r['group']}: {r['label']}: median {r['median']:.0f} ms; slowest statement "
                          f"{seconds * 1000:.0f} ms:\n{statement}\n{parameters}", markup=False, highlight=False)
            if statement not in explained:
                explained.add(statement)
                console.print(explain(engine, statement, parameters), markup=False, highlight=False)
    else:
        console.print(f"[bold green]every query under {TARGET_MS:.0f} ms (median)[/]")

    # -- the same figures by raw SQL
    starts = metrics.periods(m_start, end, "month")
    stop = metrics.next_period(starts[-1], "month")
    asofs = [min(metrics.next_period(m, "month") - timedelta(days=1), today) for m in starts]
    params = {"z": ZONE_NAME, "lo": starts[0], "hi": stop, "before": metrics.previous_period(starts[0], "month"),
              "active_lo": starts[0] - timedelta(days=ACTIVE_SPAN), "asof": asofs}
    point = metrics.point_value(engine)
    series_ms = {(r["label"]): r for r in timer.results if r["group"] == "series, 12 months"}
    raw_table = Table(title="Each monthly series beside the same figures by one raw SQL over ledger_entries / orders "
                            "(12 months; raw: best of --raw-runs, default work_mem)")
    for col, just in (("metric", "left"), ("scope", "left"), ("series ms", "right"), ("raw SQL ms", "right"),
                      ("raw ÷ series", "right"), ("values", "left")):
        raw_table.add_column(col, justify=just)
    mismatches = []
    with psycopg.connect(database_url()) as conn:
        done: dict[tuple, tuple[float, list]] = {}
        for ch in (scopes if not args.no_raw_channels else [None]):
            queries = raw_queries(ch)
            for name in names:
                key = RAW_OF[name]
                if key not in queries:
                    continue
                if (key, ch) not in done:
                    sql = queries[key]
                    took = []
                    for _ in range(args.raw_runs):
                        started = time.perf_counter()
                        rows = conn.execute(sql, {**params, "ch": ch}).fetchall()
                        took.append((time.perf_counter() - started) * 1000)
                    done[(key, ch)] = (min(took), rows)
                raw_ms, rows = done[(key, ch)]
                expected = raw_values(name, rows, starts, point, asofs)
                r = series_ms[f"{name} · {ch or 'all'}"]
                got = [v for _, v in r["value"]]
                equal = len(got) == len(expected) and all(same(a, b) for a, b in zip(got, expected, strict=True))
                if not equal:
                    mismatches.append((name, ch, got, expected))
                raw_table.add_row(name, ch or "all", f"{r['median']:.1f}", f"{raw_ms:,.0f}",
                                  f"{raw_ms / r['median']:,.0f}×", "equal" if equal else "[bold red]differ[/]")
    console.print(raw_table)
    for name, ch, got, expected in mismatches:
        console.print(f"DIFFERS: {name} · {ch or 'all'}\n  series: {got}\n  raw:    {expected}", markup=False)
    console.print(f"machine: {psycopg.connect(database_url()).execute('SELECT version()').fetchone()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
