"""The ``regulars`` command line, as PRODUCT.md's CLI contract states it.

The main path runs the installed console script as a real subprocess on a
temporary SQLite database and a plugins.toml written by ``regulars init``; the
rest uses click's CliRunner in-process (the same code, without the start-up
cost). Exit codes: 0 done, 1 the work found a problem, 2 the command was wrong.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.config import load_config
from engine.db import head_revision
from engine.plugins import Plugins
from tests.conftest import load_contract

pytestmark = pytest.mark.same_in_both_passes  # SQLite files of its own (see tests/conftest.py)

BIN = Path(sys.executable).parent
REGULARS = shutil.which("regulars", path=str(BIN)) or shutil.which("regulars")
SHOPIFY_DELIVERY = "shopify/webhooks/orders_paid.delivery-2024-10.json"
EMAIL = "jon@example.com"
SHOPIFY_CUSTOMER = "shopify:115310627314723950"  # the contract's (rounded) customer id


def paid_body(order_id: int | None = None, email: str = EMAIL) -> dict:
    """Shopify's sample orders/paid body as a real paid order."""
    body = copy.deepcopy(load_contract(SHOPIFY_DELIVERY)["body"])
    body.update(financial_status="paid", cancelled_at=None, cancel_reason=None, test=False)
    if order_id is not None:
        body.update(id=order_id, email=email, contact_email=email)
        body["customer"] = {**body["customer"], "id": order_id + 1, "email": email}
    return body


class Shop:
    """A shop set up through the console script: config, database, deliveries."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "plugins.toml"
        self.database = root / "regulars.sqlite3"
        self.env = self.env_for(self.database)

    def env_for(self, database: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGULARS_")}
        return {**env, "REGULARS_DATABASE_URL": f"sqlite:///{database}", "COLUMNS": "200"}

    def run(self, *args: str, database: Path | None = None) -> subprocess.CompletedProcess:
        """The real ``regulars`` console script, with --config."""
        env = self.env if database is None else self.env_for(database)
        return subprocess.run(
            [REGULARS, "--config", str(self.config), *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def invoke(self, *args: str, config: Path | None = None) -> click.testing.Result:
        """The same command in-process (CliRunner)."""
        runner = CliRunner(
            env={"REGULARS_DATABASE_URL": self.env["REGULARS_DATABASE_URL"], "COLUMNS": "200"}
        )
        return runner.invoke(main, ["--config", str(config or self.config), *args])


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Shop:
    """init, db upgrade, then one JSON delivery and a JSON Lines file of five."""
    assert REGULARS, f"the regulars console script is not installed beside {sys.executable}"
    shop = Shop(tmp_path_factory.mktemp("shop"))
    init = subprocess.run(
        [REGULARS, "init", str(shop.config)],
        cwd=shop.root,
        env=shop.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    shop.upgrade = shop.run("db", "upgrade")

    (shop.root / "paid.json").write_text(json.dumps(paid_body()), encoding="utf-8")
    shop.ingest_one = shop.run("ingest", "shopify", "orders/paid", "paid.json")

    recorded = load_contract(SHOPIFY_DELIVERY)  # a recorded delivery keeps its headers
    lines = [
        json.dumps(paid_body(1001, "anna@example.com")),
        json.dumps({"headers": recorded["headers"], "body": paid_body(1002, "petr@example.com")}),
        json.dumps(paid_body()),  # paid.json again: a duplicate
        '{"id": 1003, "line_items": [',  # cut off: fails
        "",
    ]
    (shop.root / "backfill.jsonl").write_text("\n".join(lines), encoding="utf-8")
    shop.ingest_many = shop.run("ingest", "shopify", "orders/paid", "backfill.jsonl")
    return shop


# -- every command has --help -----------------------------------------------------


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    yield path
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


@pytest.mark.parametrize("path", list(_commands(main)), ids=lambda p: " ".join(p) or "regulars")
def test_every_command_and_subcommand_has_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('main', *path))}")


# -- init and db upgrade ------------------------------------------------------------


def test_init_writes_a_plugins_toml_that_loads(shop):
    plugins = Plugins(load_config(shop.config, env=shop.env))
    assert {p.name for p in plugins.loaded} >= {
        "rules.points",
        "connectors.shopify",
        "connectors.woocommerce",
    }


def test_init_refuses_to_overwrite_without_force(tmp_path):
    target = tmp_path / "plugins.toml"
    target.write_text("# mine\n", encoding="utf-8")
    refused = CliRunner().invoke(main, ["init", str(target)])
    assert refused.exit_code == 1
    assert "exists; use --force" in refused.output and target.read_text() == "# mine\n"
    forced = CliRunner().invoke(main, ["init", str(target), "--force"])
    assert forced.exit_code == 0 and "[rules.points]" in target.read_text()


def test_init_into_a_directory_writes_plugins_toml_inside_it(tmp_path):
    """A PATH that names a directory, existing or not yet (a trailing slash),
    gets plugins.toml inside it, not a file named like the directory."""
    made = CliRunner().invoke(main, ["init", f"{tmp_path / 'shop'}/"])
    assert made.exit_code == 0, made.output
    assert "[rules.points]" in (tmp_path / "shop" / "plugins.toml").read_text()
    (tmp_path / "there").mkdir()
    assert CliRunner().invoke(main, ["init", str(tmp_path / "there")]).exit_code == 0
    assert (tmp_path / "there" / "plugins.toml").is_file()


def test_db_upgrade_migrates_a_fresh_sqlite_to_the_latest_schema(shop):
    assert shop.upgrade.returncode == 0, shop.upgrade.stderr
    assert "is at head" in shop.upgrade.stdout
    with sqlite3.connect(shop.database) as conn:
        (revision,) = conn.execute("select version_num from alembic_version").fetchone()
        tables = {
            name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")
        }
    assert revision == head_revision(shop.env["REGULARS_DATABASE_URL"])
    assert {"customers", "accounts", "ledger_entries", "orders", "inbox"} <= tables


# -- ingest --------------------------------------------------------------------------


def test_ingest_of_a_json_file_prints_the_summary_and_exits_0(shop):
    assert shop.ingest_one.returncode == 0, shop.ingest_one.stderr
    assert "1 deliveries: 1 applied, 0 duplicate, 0 ignored, 0 failed" in shop.ingest_one.stdout


def test_ingest_of_json_lines_exits_1_when_a_delivery_failed_and_lists_it(shop):
    result = shop.ingest_many
    assert result.returncode == 1, result.stderr
    assert "4 deliveries: 2 applied, 1 duplicate, 0 ignored, 1 failed" in result.stdout
    assert "body is not valid JSON" in result.stderr and "Traceback" not in result.stderr

    listed = shop.run("events", "list", "--failed", "--json")
    assert listed.returncode == 0, listed.stderr
    [failed] = json.loads(listed.stdout)
    assert failed["status"] == "failed" and failed["error"].startswith("body is not valid JSON")


def test_ingest_keeps_the_headers_of_a_recorded_delivery(shop):
    result = shop.invoke("events", "list", "--status", "applied", "--json")
    keys = [row["key"] for row in json.loads(result.output)]
    webhook_id = load_contract(SHOPIFY_DELIVERY)["headers"]["x-shopify-webhook-id"]
    assert f"webhook:orders/paid:{webhook_id}" in keys


def test_ingest_mends_recorded_headers_no_database_stores_and_reads_odd_wrappers_as_bodies(shop, tmp_path):
    database = tmp_path / "odd.sqlite3"  # (not the shop's: the other tests count its deliveries)
    recorded = load_contract(SHOPIFY_DELIVERY)
    headers = {**recorded["headers"], "x-shopify-webhook-id": "b\ud800d\x00"}
    path = shop.root / "odd.jsonl"
    path.write_text("\n".join([json.dumps({"headers": headers, "body": paid_body(1101, "odd@example.com")}),
                               json.dumps({"headers": ["not", "a", "dict"], "body": paid_body(1102)})]),
                    encoding="utf-8")
    result = shop.run("ingest", "shopify", "orders/paid", str(path), database=database)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "2 deliveries: 1 applied, 0 duplicate, 0 ignored, 1 failed" in result.stdout
    keys = [row["key"] for row in json.loads(shop.run("events", "list", "--json", database=database).stdout)]
    assert "webhook:orders/paid:b\ufffdd" in keys


def test_ingest_of_an_unused_topic_counts_it_as_ignored_and_exits_0(shop):
    result = shop.invoke("ingest", "shopify", "carts/update", str(shop.root / "paid.json"))
    assert result.exit_code == 0, result.output
    assert "1 deliveries: 0 applied, 0 duplicate, 1 ignored, 0 failed" in result.output


def test_ingest_for_an_unknown_channel_is_a_usage_error(shop):
    result = shop.invoke("ingest", "shopifx", "orders/paid", str(shop.root / "paid.json"))
    assert result.exit_code == 2
    assert (
        "no connector for channel 'shopifx'" in result.output
        and "shopify, woocommerce" in result.output
    )


# -- customer show -------------------------------------------------------------------


def test_customer_show_json_has_the_contract_keys(shop):
    result = shop.run("customer", "show", EMAIL, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert isinstance(summary["points"], int) and summary["points"] > 0
    assert isinstance(summary["stamps"], dict)
    assert summary["tier"] is None or isinstance(summary["tier"], str)
    assert isinstance(summary["rewards"], list)
    assert isinstance(summary["referral_code"], str) and summary["referral_code"]
    assert summary["channels"] == {"shopify": [SHOPIFY_CUSTOMER.split(":")[1]]}


def test_customer_show_finds_the_customer_by_email_card_code_and_channel_id(shop):
    by_email = json.loads(shop.invoke("customer", "show", EMAIL, "--json").output)
    for key in (
        by_email["card_code"],
        by_email["card_code"].lower(),
        SHOPIFY_CUSTOMER,
        f"  {EMAIL.upper()} ",
    ):
        result = shop.invoke("customer", "show", key, "--json")
        assert result.exit_code == 0, (key, result.output)
        assert json.loads(result.output)["id"] == by_email["id"], key
    human = shop.invoke("customer", "show", EMAIL)
    assert human.exit_code == 0 and by_email["card_code"] in human.output


def test_customer_show_of_an_unknown_key_exits_non_zero_saying_so(shop):
    result = shop.invoke("customer", "show", "nobody@example.com", "--json")
    assert result.exit_code == 1
    assert "no customer matches 'nobody@example.com'" in result.output


# -- audit ---------------------------------------------------------------------------


def test_audit_exits_0_when_every_balance_agrees_with_the_ledger(shop):
    result = shop.run("audit")
    assert result.returncode == 0, result.stderr
    assert "audit clean: 3 accounts agree with their 3 ledger entries" in result.stdout


def test_audit_exits_1_naming_a_cached_balance_that_drifts(shop, tmp_path):
    corrupt = tmp_path / "corrupt.sqlite3"
    with sqlite3.connect(shop.database) as source, sqlite3.connect(corrupt) as copy_:
        source.backup(copy_)
        (customer_id, balance) = copy_.execute(
            "select customer_id, balance from accounts order by id"
        ).fetchone()
        copy_.execute(
            "update accounts set balance = balance + 7 where customer_id = ?", (customer_id,)
        )

    result = shop.run("audit", database=corrupt)

    assert result.returncode == 1
    assert (
        f"drift: customer {customer_id} points: cached {balance + 7}, ledger says {balance}"
        in result.stderr
    )
    assert "1 of 3 accounts drift from the ledger" in result.stderr


# -- plugins, events -----------------------------------------------------------------


def test_plugins_lists_the_built_in_rule_and_both_connectors_with_their_hooks(shop):
    listed = {p["name"]: p for p in json.loads(shop.invoke("plugins", "--json").output)}
    assert listed["rules.points"]["hooks"] == [
        "regulars_order_awards",
        "regulars_order_multipliers",
    ]
    for name in ("connectors.shopify", "connectors.woocommerce"):
        assert (listed[name]["source"], listed[name]["hooks"]) == (
            "built-in",
            ["regulars_register_connectors"],
        )
    table = shop.invoke("plugins").output
    for name in (
        "rules.points",
        "connectors.shopify",
        "connectors.woocommerce",
        "regulars_order_multipliers",
    ):
        assert name in table
    # the table column shows the table as plugins.toml writes it (no markup escape: the console takes none)
    assert "[rules.points]" in table and "\\[" not in table, table


def test_events_replay_applies_a_stored_delivery_again_without_changing_anything(shop):
    result = shop.run("events", "replay", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "delivery 1: applied"
    failed = json.loads(shop.invoke("events", "list", "--failed", "--json").output)[0]["id"]
    again = shop.invoke("events", "replay", str(failed))
    assert (
        again.exit_code == 1 and f"delivery {failed}: failed body is not valid JSON" in again.output
    )
    assert shop.invoke("audit").exit_code == 0


# -- a wrong plugins.toml stops every command ----------------------------------------

COMMANDS_READING_THE_CONFIG = [
    ("ingest", "shopify", "orders/paid", "{paid}"),
    ("customer", "show", EMAIL),
    ("audit",),
    ("plugins",),
    ("events", "list"),
    ("events", "replay", "1"),
    ("db", "upgrade"),
    ("demo", "--customers", "1"),
]


@pytest.fixture
def bad_config(shop, tmp_path) -> Path:
    path = tmp_path / "plugins.toml"
    path.write_text(
        shop.config.read_text().replace("per_unit = 1", "per_unt = 1"), encoding="utf-8"
    )
    return path


@pytest.mark.parametrize("args", COMMANDS_READING_THE_CONFIG, ids=" ".join)
def test_a_wrong_key_in_plugins_toml_stops_every_command_with_where_and_what(
    shop, bad_config, args
):
    args = [a.format(paid=shop.root / "paid.json") for a in args]
    result = shop.invoke(*args, config=bad_config)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not an uncaught exception
    assert (
        f"{bad_config} [rules.points] per_unt: unknown key (expected one of: per_unit)"
        in result.output
    )


def test_a_wrong_key_in_plugins_toml_gives_no_traceback_from_the_console_script(shop, bad_config):
    result = subprocess.run(
        [REGULARS, "--config", str(bad_config), "audit"],
        env=shop.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        result.stderr.startswith("Error: ")
        and "[rules.points] per_unt: unknown key" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_one_clear_sentence_not_a_traceback(shop):
    env = {**shop.env, "REGULARS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    result = subprocess.run(
        [REGULARS, "--config", str(shop.config), "audit"],
        cwd=shop.root, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: database: ")
    assert "Traceback" not in result.stderr


def test_postgresql_without_its_driver_says_which_extra_to_install(shop):
    """A plain ``pip install regulars`` has no psycopg: a PostgreSQL URL then
    says to install the ``postgres`` extra, in one sentence, exit 1."""
    env = {**shop.env, "REGULARS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    script = ("import sys; sys.modules['psycopg'] = None; from engine.cli import run; "
              f"sys.argv = ['regulars', '--config', {str(shop.config)!r}, 'audit']; run()")
    result = subprocess.run([sys.executable, "-c", script], cwd=shop.root, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: database: PostgreSQL needs psycopg"), result.stderr
    assert "regulars[postgres]" in result.stderr


def test_a_message_s_brackets_are_printed_as_they_are(shop, tmp_path):
    """rich reads ``[...]`` as styles: a refusal naming the table to add,
    ``[rules.subscriptions.vip]``, lost it (the CLI's consoles take no markup)."""
    env = {"REGULARS_DATABASE_URL": f"sqlite:///{tmp_path / 'brackets.sqlite3'}", "COLUMNS": "200"}
    runner = CliRunner(env=env)
    config = ["--config", str(shop.config)]
    assert runner.invoke(main, [*config, "ingest", "shopify", "orders/paid", str(shop.root / "paid.json")]).exit_code == 0
    email = json.loads(shop.root.joinpath("paid.json").read_text())["email"]
    result = runner.invoke(main, [*config, "subscription", "start", email, "vip"])
    assert result.exit_code == 1, result.output
    assert "add a [rules.subscriptions.vip] table to plugins.toml" in " ".join(result.output.split()), result.output


def test_a_card_link_points_at_the_public_url_else_at_this_machine_s_port(shop, tmp_path, monkeypatch):
    env = {"REGULARS_DATABASE_URL": f"sqlite:///{tmp_path / 'links.sqlite3'}", "COLUMNS": "200"}
    config = ["--config", str(shop.config)]
    monkeypatch.delenv("REGULARS_PUBLIC_URL", raising=False)
    monkeypatch.delenv("REGULARS_PORT", raising=False)
    assert CliRunner(env=env).invoke(main, [*config, "ingest", "shopify", "orders/paid",
                                            str(shop.root / "paid.json")]).exit_code == 0
    email = json.loads(shop.root.joinpath("paid.json").read_text())["email"]

    def link(**more) -> str:
        result = CliRunner(env={**env, **more}).invoke(main, [*config, "card", "link", email])
        assert result.exit_code == 0, result.output
        return result.output.strip()

    assert link().startswith("http://127.0.0.1:8000/card/")
    assert link(REGULARS_PORT="8771").startswith("http://127.0.0.1:8771/card/")
    assert link(REGULARS_PORT="8771", REGULARS_PUBLIC_URL="https://loyalty.example.com/").startswith(
        "https://loyalty.example.com/card/")
