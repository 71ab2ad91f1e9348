"""Every customer as CSV (engine/exports.py, ``regulars customer
export-all``, the dashboard's /admin/customers.csv): the columns, merged and
erased customers, stamp cards, formula-looking text, chunks, and a round trip
through ``import-points`` into another regulars."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.customers import customer_summary
from engine.exports import COLUMNS, csv_lines, guarded
from engine.imports import import_points
from engine.privacy import erase
from tests.conftest import DEFAULT_TABLES
from tests.streams import T0

TABLES = {
    **DEFAULT_TABLES,
    "connectors": {**DEFAULT_TABLES["connectors"], "pos": {}},
    "rules": {"points": {"per_unit": 1},
              "stamps": {"coffee": {"required": 10, "per": "item", "skus": ["COFFEE-*"], "reward": "free-coffee"}}},
    "rewards": {"free-coffee": {"kind": "free_product", "sku": "COFFEE-LATTE"}},
}


def enrol(engine, number: int, customer: dict) -> None:
    outcome = engine.ingest("pos", "enrol", json.dumps({
        "id": f"e{number}", "terminal": "t1", "occurred_at": (T0 + timedelta(hours=number)).isoformat(),
        "customer": customer}).encode())
    assert outcome.status == "applied", outcome.error


def sale(engine, number: int, customer: dict, price: str = "10.00", sku: str = "X", quantity: int = 1) -> None:
    outcome = engine.ingest("pos", "sale", json.dumps({
        "id": f"s{number}", "terminal": "t1", "occurred_at": (T0 + timedelta(hours=number)).isoformat(),
        "customer": customer, "lines": [{"sku": sku, "quantity": quantity, "unit_price": price}]}).encode())
    assert outcome.status == "applied", outcome.error


@pytest.fixture
def shop(make_engine):
    """Ana (points and coffee stamps), a phone-only customer merged into Ben,
    Cyril whose name looks like a formula, and Dora, erased."""
    engine = make_engine(TABLES)
    enrol(engine, 0, {"email": "ana@example.com", "first_name": "Aňa", "last_name": "Dvořák"})
    sale(engine, 1, {"email": "ana@example.com"}, "3.50", "COFFEE-1", 3)
    sale(engine, 2, {"phone": "+420601111111"}, "25.00")
    sale(engine, 3, {"email": "ben@example.com"}, "40.00")
    sale(engine, 4, {"email": "ben@example.com", "phone": "+420601111111"}, "5.00")  # joins the two: merged
    enrol(engine, 5, {"email": "cyril@example.com", "first_name": "=HYPERLINK(\"http://x\")", "last_name": "@sum"})
    enrol(engine, 6, {"email": "dora@example.com", "first_name": "Dora"})
    sale(engine, 7, {"email": "dora@example.com"}, "12.00")
    erase(engine, "dora@example.com", T0 + timedelta(days=1))
    return engine


def exported(engine, **kwargs) -> list[dict[str, str]]:
    text = "".join(csv_lines(engine, **kwargs))
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def test_each_customer_is_a_row_with_their_balances_and_merged_ones_are_not(shop):
    rows = exported(shop)
    assert list(rows[0]) == [*COLUMNS, "stamps_coffee"]
    by_email = {row["email"]: row for row in rows}
    assert len(rows) == 4  # the phone-only customer was merged into Ben: no row of their own
    ana = by_email["ana@example.com"]
    assert (ana["first_name"], ana["last_name"], ana["points"], ana["stamps_coffee"]) == ("Aňa", "Dvořák", "10", "3")
    assert ana["card_code"] == customer_summary(shop, "ana@example.com")["card_code"]
    ben = by_email["ben@example.com"]
    assert (ben["phone"], ben["points"]) == ("+420601111111", str(customer_summary(shop, "ben@example.com")["points"]))
    assert ben["points"] == "70"  # 25 + 40 + 5, the merged customer's points with his
    # text a spreadsheet would run as a formula is written as text
    cyril = by_email["cyril@example.com"]
    assert (cyril["first_name"], cyril["last_name"]) == ("'=HYPERLINK(\"http://x\")", "'@sum")
    # Dora was erased: her row keeps what the erasure left (the card, the points), no personal data
    (dora,) = [row for row in rows if row["email"] == ""]
    assert (dora["first_name"], dora["phone"], dora["points"]) == ("", "", "12")
    assert [int(row["id"]) for row in rows] == sorted(int(row["id"]) for row in rows)  # oldest first
    for row in rows:
        datetime.fromisoformat(row["created_at"])


def test_chunks_change_nothing_but_how_often_the_database_is_read(shop):
    whole = "".join(csv_lines(shop))
    assert "".join(csv_lines(shop, chunk=1)) == whole == "".join(csv_lines(shop, chunk=3))
    tally = [0]
    assert "".join(csv_lines(shop, chunk=2, tally=tally)) == whole and tally == [4]


def test_guarded_cells():
    assert [guarded(text) for text in ("=1+1", "+420", "-2", "@a", "\tx", "\rx", "Ana", "", None, "a=b")] == [
        "'=1+1", "'+420", "'-2", "'@a", "'\tx", "'\rx", "Ana", "", "", "a=b"]


def test_imported_into_another_regulars_the_balances_are_the_same(shop, make_engine, tmp_path):
    data = "".join(csv_lines(shop, bom=True)).encode("utf-8")
    other = make_engine(DEFAULT_TABLES, url=f"sqlite:///{tmp_path / 'other.sqlite3'}")
    report = import_points(other, data, "moved from the old regulars", "cli:test", replace=True,
                           at=datetime.now(UTC))
    # Cyril has no points (unchanged, but there); Dora's email and phone were
    # erased: only her card code is left, which this regulars never issued
    assert dict(report.rows) == {"adjusted": 2, "unchanged": 1, "refused": 1}
    assert report.refused[0][1].startswith("no customer has the card code")
    for email in ("ana@example.com", "ben@example.com", "cyril@example.com"):
        assert customer_summary(other, email)["points"] == customer_summary(shop, email)["points"], email
    assert customer_summary(other, "+420601111111")["points"] == 70  # Ben, found by his phone too
    assert customer_summary(other, "ana@example.com")["first_name"] == "Aňa"
    cyril = customer_summary(other, "cyril@example.com")  # the guard's ' is read back off
    assert (cyril["first_name"], cyril["last_name"]) == ("=HYPERLINK(\"http://x\")", "@sum")
    # and again: nothing changes
    again = import_points(other, data, "moved from the old regulars", "cli:test", replace=True,
                          at=datetime.now(UTC))
    assert dict(again.rows) == {"already imported": 2, "unchanged": 1, "refused": 1}


def test_the_command_writes_a_file_or_standard_output(shop, tmp_path, monkeypatch):
    monkeypatch.setattr("engine.cli.Context.engine", shop)
    runner = CliRunner()
    target = tmp_path / "customers.csv"
    done = runner.invoke(main, ["customer", "export-all", str(target)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert "4 customers written to" in done.stderr
    assert target.read_bytes().decode("utf-8") == "".join(csv_lines(shop))
    out = runner.invoke(main, ["customer", "export-all", "--excel"], catch_exceptions=False)
    assert out.exit_code == 0 and out.stdout_bytes.startswith(b"\xef\xbb\xbfid,email,")
    assert out.stdout_bytes.decode("utf-8-sig") == "".join(csv_lines(shop))
