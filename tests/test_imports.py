"""Points balances imported from another programme's CSV (engine/imports.py,
``regulars customer import-points``): Smile.io's email/points file, a
spreadsheet's semicolons and byte-order mark, adding or setting balances,
customers created, rows refused with their line, a file imported twice."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

import engine.imports as imports
from engine.cli import main
from engine.customers import customer_summary
from engine.db.models import customers, ledger_entries
from engine.imports import ImportFileError, import_points, read_rows
from tests.conftest import DEFAULT_TABLES
from tests.plugins.notifier import PointsNotifier
from tests.streams import T0, Line, PlannedOrder, _shopify_order

TABLES = {**DEFAULT_TABLES, "rules": {"points": {"per_unit": 1}, "expiry": {"months": 12}}}


@pytest.fixture
def shop(make_engine):
    engine = make_engine(tables=TABLES)
    order = PlannedOrder("shopify", 1, "jana@example.com", (Line(Decimal("40.00"), 1),))
    body = _shopify_order(order, "paid", T0, [], False)
    assert engine.ingest("shopify", "orders/paid", json.dumps(body).encode()).status == "applied"
    return engine


def points(engine, key: str) -> int | None:
    summary = customer_summary(engine, key)
    return None if summary is None else summary["points"]


def counts(engine) -> tuple[int, int]:
    with engine.db.connect() as conn:
        return (conn.execute(select(func.count()).select_from(customers)).scalar_one(),
                conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one())


SMILE = b"email,points\njana@example.com,500\nPetr@Example.cz,120\n\nnot-an-email,5\nx@example.com,\"1,000\"\n"


def test_a_smile_export_adds_points_creates_who_is_new_and_names_each_refused_row(shop):
    report = import_points(shop, SMILE, "moved from Smile.io", "cli:ana")
    assert (dict(report.rows), report.given, report.taken, report.created) == (
        {"adjusted": 2, "refused": 2}, 620, 0, 1)
    assert report.refused == [(5, "'not-an-email' is not an email address"),
                              (6, "points '1,000' is not a whole number (write 52620, not 52,620)")]
    assert points(shop, "jana@example.com") == 540 and points(shop, "petr@example.cz") == 120
    with shop.db.connect() as conn:
        details = conn.execute(select(ledger_entries.c.reason, ledger_entries.c.detail)
                               .where(ledger_entries.c.reason == "adjust")).all()
    assert details == [("adjust", {"note": "moved from Smile.io", "by": "cli:ana"})] * 2
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


def test_the_same_file_imported_again_changes_nothing_whatever_happened_since(shop):
    import_points(shop, SMILE, "moved", "cli:ana")
    shop.adjust("jana@example.com", -40, "spent elsewhere", "cli:ana")
    before = counts(shop)
    again = import_points(shop, SMILE, "moved", "cli:ana")
    assert dict(again.rows) == {"already imported": 2, "refused": 2}
    assert counts(shop) == before and points(shop, "jana@example.com") == 500
    # the same rows in another file are another import
    assert dict(import_points(shop, SMILE + b"\n", "moved", "cli:ana").rows)["adjusted"] == 2


def test_set_makes_each_balance_the_file_s_value(shop):
    data = b"email,points\njana@example.com,15\nnew@example.com,0\nroman@example.com,-5\n"
    report = import_points(shop, data, "reset", "cli:ana", replace=True)
    assert dict(report.rows) == {"adjusted": 1, "unchanged": 1, "refused": 1}
    assert (report.given, report.taken, report.created) == (0, 25, 1)
    assert report.refused[0][0] == 4 and "below zero" in report.refused[0][1]
    assert points(shop, "jana@example.com") == 15 and points(shop, "new@example.com") == 0
    assert points(shop, "roman@example.com") is None  # refused: not created either


def test_a_spreadsheet_s_semicolons_bom_and_other_keys(shop):
    card = customer_summary(shop, "jana@example.com")["card_code"]
    data = ("\ufeffPhone;Card_Code;Points;First_Name;Last_Name\n"
            "+420 601 123 456;;70;Eva;Nováková\n"
            f";{card.lower()};5;;\n"
            ";NOSUCHCARD;5;;\n").encode()
    report = import_points(shop, data, "from the till's old system", "cli:ana")
    assert dict(report.rows) == {"adjusted": 2, "refused": 1}
    assert report.refused == [(4, "no customer has the card code 'NOSUCHCARD'")]
    eva = customer_summary(shop, "+420601123456")
    assert (eva["phone"], eva["first_name"], eva["last_name"], eva["points"]) == (
        "+420601123456", "Eva", "Nováková", 70)
    assert points(shop, "jana@example.com") == 45


def test_a_dry_run_says_what_would_change_and_changes_nothing(shop):
    before = counts(shop)
    report = import_points(shop, SMILE, "moved", "cli:ana", dry_run=True)
    assert (dict(report.rows), report.given, report.created) == ({"adjusted": 2, "refused": 2}, 620, 1)
    assert counts(shop) == before and points(shop, "petr@example.cz") is None
    assert dict(import_points(shop, SMILE, "moved", "cli:ana").rows)["adjusted"] == 2  # nothing was used up


def test_imported_points_expire_as_given_points_do(shop):
    import_points(shop, b"email,points\njana@example.com,60\n", "moved", "cli:ana", at=T0 + timedelta(days=30))
    with shop.db.connect() as conn:
        expiring = shop.ledger.expiring_by(conn, customer_summary(shop, "jana@example.com")["id"], None)
    assert [points for _, points in expiring] == [40, 60]
    assert expiring[1][0] - expiring[0][0] >= timedelta(days=29)


@pytest.mark.parametrize("data,message", [
    (b"name,amount\nJana,5\n", "must name a points column and an email, phone or card_code column (it names: name, amount)"),
    (b"", "it names: nothing"),
    ("email,points\njana@example.com,5\n".encode("utf-16"), "not UTF-8"),
])
def test_a_file_that_is_no_points_import_is_refused_whole(shop, data, message):
    with pytest.raises(ImportFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_rows(data)


def test_the_import_points_command(shop, tmp_path, monkeypatch):
    monkeypatch.setattr("engine.cli.Context.engine", shop)
    monkeypatch.setattr("getpass.getuser", lambda: "ana")
    path = tmp_path / "smile.csv"
    path.write_bytes(SMILE)
    runner = CliRunner()
    out = runner.invoke(main, ["customer", "import-points", str(path), "--dry-run"])
    assert out.exit_code == 1
    assert "line 5: refused: 'not-an-email' is not an email address" in out.output
    assert ("dry run, nothing changed: 4 rows: 2 adjusted, 2 refused; +620 and -0 points; 1 customer created"
            in out.output)
    path.write_bytes(b"email,points\njana@example.com,5\n")
    out = runner.invoke(main, ["customer", "import-points", str(path)])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "1 rows: 1 adjusted; +5 and -0 points; 0 customers created"
    with shop.db.connect() as conn:
        detail = conn.execute(select(ledger_entries.c.detail).where(ledger_entries.c.reason == "adjust")).scalar_one()
    assert detail == {"note": "imported from smile.csv", "by": "cli:ana"}
    path.write_bytes(b"who,amount\n")
    out = runner.invoke(main, ["customer", "import-points", str(path)])
    assert out.exit_code == 1 and "smile.csv: the first row must name a points column" in out.output


def test_a_file_of_many_chunks_applies_each_row_once_and_refused_rows_keep_nothing(shop, monkeypatch):
    monkeypatch.setattr("engine.imports.CHUNK", 3)  # rows go 3 to a transaction, each in a savepoint
    lines = ["email,points"] + [f"c{n}@example.com,{-5 if n % 4 == 3 else 10 + n}" for n in range(10)]
    report = import_points(shop, "\n".join(lines).encode(), "moved", "cli:ana")
    refused = [n for n in range(10) if n % 4 == 3]  # a new customer's balance can't start below zero
    assert dict(report.rows) == {"adjusted": 10 - len(refused), "refused": len(refused)}
    assert [line for line, _ in report.refused] == [n + 2 for n in refused]
    assert report.created == 10 - len(refused)
    for n in range(10):
        assert points(shop, f"c{n}@example.com") == (None if n in refused else 10 + n)
    with shop.db.connect() as conn:
        assert shop.ledger.audit(conn) == []


def test_a_chunk_that_loses_a_race_is_applied_again_a_row_at_a_time(make_engine, monkeypatch):
    notifier = PointsNotifier()
    shop = make_engine(tables=TABLES, extra_plugins=(("notifier", notifier),))
    monkeypatch.setattr(imports, "CHUNK", 4)
    real, calls = imports._apply, []

    def racing(engine, conn, values, *args):
        calls.append(values["email"])
        if len(calls) == 3:  # the chunk's third row meets a customer created meanwhile
            raise IntegrityError("INSERT INTO customers", {}, Exception("UNIQUE constraint failed: customers.email"))
        return real(engine, conn, values, *args)

    monkeypatch.setattr(imports, "_apply", racing)
    data = b"email,points\n" + b"".join(b"r%d@example.com,%d\n" % (n, n + 1) for n in range(6))
    report = import_points(shop, data, "moved", "cli:ana")
    assert (dict(report.rows), report.given, report.created) == ({"adjusted": 6}, 21, 6)
    assert calls[:2] == calls[3:5] == ["r0@example.com", "r1@example.com"]  # the first chunk again, alone
    # observers hear each row once: not what the rolled-back chunk had posted
    assert notifier.heard == [(f"r{n}@example.com", [(n + 1, "adjust")], n + 1) for n in range(6)]
    for n in range(6):
        assert points(shop, f"r{n}@example.com") == n + 1
    with shop.db.connect() as conn:
        assert conn.execute(select(func.count()).where(ledger_entries.c.reason == "adjust")).scalar_one() == 6
        assert shop.ledger.audit(conn) == []


def test_rows_that_name_nobody_usable_are_refused_saying_why(shop):
    data = (b"phone,email,points\n"
            b"12,,5\n"  # no phone number, and no email
            b",,5\n"  # nothing at all but the points
            b"+420 601\x00 123 456,,5\n")  # a NUL no database keeps
    report = import_points(shop, data, "moved", "cli:ana")
    assert report.refused == [(2, "'12' is neither an email address nor a phone number"),
                              (3, "the row names no customer (email, phone or card_code)"),
                              (4, "'+420 601\\x00 123 456' is neither an email address nor a phone number")]
    assert dict(report.rows) == {"refused": 3} and report.created == 0


def test_a_dry_run_that_loses_a_race_still_changes_nothing(make_engine, monkeypatch):
    notifier = PointsNotifier()
    shop = make_engine(tables=TABLES, extra_plugins=(("notifier", notifier),))
    real, calls = imports._apply, []

    def racing(engine, conn, values, *args):
        calls.append(values["email"])
        if len(calls) in (2, 4):  # the chunk loses a race, and then the row alone once more
            raise IntegrityError("INSERT INTO customers", {}, Exception("UNIQUE constraint failed: customers.email"))
        return real(engine, conn, values, *args)

    monkeypatch.setattr(imports, "_apply", racing)
    before = counts(shop)
    report = import_points(shop, b"email,points\nr0@example.com,1\nr1@example.com,2\n", "moved", "cli:ana",
                           dry_run=True)
    assert (dict(report.rows), report.given, report.created) == ({"adjusted": 2}, 3, 2)
    assert calls == ["r0@example.com", "r1@example.com", "r0@example.com", "r1@example.com", "r1@example.com"]
    assert counts(shop) == before and notifier.heard == []
