"""``regulars db backup``: a copy of the embedded SQLite database taken while
the engine writes is one consistent moment (every balance agrees with its
ledger in the copy), is a single checked file, opens as a regulars database
with the same customers, and never leaves a half-written file under the
target's name."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from click.testing import CliRunner

from engine.app import Engine
from engine.cli import main
from engine.config import config_from_tables
from engine.customers import customer_summary
from engine.db.backup import BackupFailed, backup_sqlite
from tests.conftest import DEFAULT_TABLES

pytestmark = pytest.mark.same_in_both_passes  # SQLite files of its own in both passes

TILL = {**DEFAULT_TABLES, "connectors": {"pos": {}}}
#: TILL as a plugins.toml
TILL_TOML = '[engine]\ncurrency = "EUR"\ndefault_country = "CZ"\n\n[rules.points]\nper_unit = 1\n\n[connectors.pos]\n'


def shop(tmp_path, name: str = "shop") -> Engine:
    url = f"sqlite:///{tmp_path / f'{name}.sqlite3'}"
    engine = Engine(config_from_tables(TILL, tmp_path / "plugins.toml", {"REGULARS_DATABASE_URL": url}))
    engine.ensure_schema()
    return engine


def sale(number: int, euros: str = "12.00") -> bytes:
    """A till's sale for one of seven customers."""
    return json.dumps({"id": f"s{number}", "terminal": "t1", "occurred_at": "2026-11-20T09:00:00+00:00",
                       "customer": {"email": f"c{number % 7}@example.com"},
                       "lines": [{"quantity": 1, "unit_price": euros}]}).encode()


def test_a_copy_taken_while_sales_go_in_is_one_consistent_moment(tmp_path):
    engine = shop(tmp_path)
    for n in range(20):
        assert engine.ingest("pos", "sale", sale(n)).status == "applied"
    stop, written = threading.Event(), []

    def keep_selling():
        n = 20
        while not stop.is_set():
            written.append(engine.ingest("pos", "sale", sale(n)).status)
            n += 1

    seller = threading.Thread(target=keep_selling)
    seller.start()
    try:
        copies = [backup_sqlite(engine.config.database_url, tmp_path / f"copy{i}.sqlite3", engine.ledger.audit)
                  for i in range(5)]
    finally:
        stop.set()
        seller.join()
    assert written and set(written) == {"applied"}
    for copied in copies:
        assert copied.drifts == []  # every balance agrees with the entries the copy holds
        assert copied.counts["ledger_entries"] >= 20 and copied.counts["customers"] == 7
        with sqlite3.connect(copied.target) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert not copied.target.with_name(copied.target.name + "-wal").exists()
    assert not list(tmp_path.glob(".*.partial"))


def test_the_copy_opens_as_the_shop_it_was(tmp_path):
    engine = shop(tmp_path)
    for n in range(10):
        assert engine.ingest("pos", "sale", sale(n, "30.00")).status == "applied"
    copied = backup_sqlite(engine.config.database_url, tmp_path / "backups" / "copy.sqlite3", engine.ledger.audit)
    restored = Engine(config_from_tables(TILL, tmp_path / "plugins.toml",
                                         {"REGULARS_DATABASE_URL": f"sqlite:///{copied.target}"}))
    restored.ensure_schema()  # at the code's migrations: nothing to upgrade
    for n in range(7):
        assert customer_summary(restored, f"c{n}@example.com") == customer_summary(engine, f"c{n}@example.com")
    restored.db.dispose()
    engine.db.dispose()


def test_a_failed_copy_leaves_nothing_under_the_targets_name(tmp_path, monkeypatch):
    engine = shop(tmp_path)
    assert engine.ingest("pos", "sale", sale(1)).status == "applied"

    def broken(path, audit):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr("engine.db.backup._checked", broken)
    with pytest.raises(BackupFailed, match="malformed"):
        backup_sqlite(engine.config.database_url, tmp_path / "copy.sqlite3", engine.ledger.audit)
    assert not (tmp_path / "copy.sqlite3").exists() and not list(tmp_path.glob(".*.partial"))
    with pytest.raises(BackupFailed, match="no database"):
        backup_sqlite(f"sqlite:///{tmp_path / 'none.sqlite3'}", tmp_path / "copy.sqlite3", engine.ledger.audit)


def test_the_command_says_what_it_copied_refuses_to_overwrite_and_points_postgresql_to_pg_dump(tmp_path,
                                                                                               monkeypatch):
    config = tmp_path / "plugins.toml"
    config.write_text(TILL_TOML, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("REGULARS_DATABASE_URL", url)
    engine = Engine(config_from_tables(TILL, config, {"REGULARS_DATABASE_URL": url}))
    engine.ensure_schema()
    assert engine.ingest("pos", "sale", sale(3)).status == "applied"
    target = tmp_path / "nightly.sqlite3"
    import engine.cli as cli

    reads = []
    monkeypatch.setattr(cli, "load_config", lambda path, real=cli.load_config: reads.append(path) or real(path))
    made = CliRunner().invoke(main, ["--config", str(config), "db", "backup", str(target)])
    assert made.exit_code == 0, made.output
    assert len(reads) == 1  # plugins.toml read once, for the database's URL and the engine
    assert "1 customers, 1 ledger entries, 1 deliveries" in " ".join(made.output.split())
    assert "integrity ok; audit clean" in made.output
    again = CliRunner().invoke(main, ["--config", str(config), "db", "backup", str(target)])
    assert again.exit_code == 1 and "exists; use --force" in again.output
    assert CliRunner().invoke(main, ["--config", str(config), "db", "backup", str(target), "--force"]).exit_code == 0
    monkeypatch.setenv("REGULARS_DATABASE_URL", "postgresql+psycopg://shop:secret@db.example/loyalty")
    pg = CliRunner().invoke(main, ["--config", str(config), "db", "backup", str(tmp_path / "pg.dump")])
    assert pg.exit_code == 1 and "pg_dump --format=custom" in pg.output
    assert "secret" not in pg.output and "postgresql://shop:***@db.example/loyalty" in pg.output
    engine.db.dispose()
