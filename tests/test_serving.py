"""Several processes serving one database (``regulars serve --workers N``):
the write gate that makes them take turns on SQLite, the leadership that
lets one of them run the background work, and the real command with two
workers receiving signed deliveries, one of them killed on the way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from engine import inbox
from engine.db import make_engine
from engine.db.models import inbox as inbox_table
from engine.web.serving import Leadership, WriteGate, sqlite_file
from tests.serving import free_port
from tests.test_webhooks import order_delivery, post, wait_for

ROOT = Path(__file__).resolve().parents[1]


def holder(engine, kind: str) -> subprocess.Popen:
    """Another process that takes ``kind`` (gate or leadership) on the
    engine's database, says ``held``, and keeps it until its stdin closes."""
    url = engine.db.url.render_as_string(hide_password=False)
    code = textwrap.dedent(f"""
        import sys
        from engine.db import make_engine
        from engine.web.serving import Leadership, WriteGate
        db = make_engine({url!r})
        if {kind!r} == "gate":
            WriteGate(db).__enter__()
        else:
            assert Leadership(db).acquire()
        print("held", flush=True)
        sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout.readline().strip() == b"held", "the other process did not take the lock"
    return process


def release(process: subprocess.Popen) -> None:
    process.stdin.close()
    process.wait(10)


@pytest.mark.same_in_both_passes  # a SQLite file of its own (see tests/conftest.py)
def test_the_write_gate_makes_a_second_process_wait_on_sqlite(tmp_path):
    engine = SimpleNamespace(db=make_engine(f"sqlite:///{tmp_path / 'gate.sqlite3'}"))
    assert sqlite_file(engine.db) == tmp_path / "gate.sqlite3"
    other = holder(engine, "gate")
    entered = threading.Event()

    def enter():
        with WriteGate(engine.db):
            entered.set()

    thread = threading.Thread(target=enter, daemon=True)
    try:
        thread.start()
        assert not entered.wait(0.5), "the gate let a writer in while another process held it"
    finally:
        release(other)
    assert entered.wait(5), "the gate stayed shut after the other process let go"
    thread.join(5)


def test_on_postgresql_the_gate_is_this_process_s_only(engine):
    if sqlite_file(engine.db) is not None:
        return  # the test above is SQLite's
    gate = WriteGate(engine.db)
    assert gate._fd is None  # PostgreSQL's own locks order writers across processes
    with gate:
        assert gate._lock.locked()


def test_one_process_leads_a_database_and_another_takes_over_when_it_ends(engine):
    other = holder(engine, "leadership")
    mine = Leadership(engine.db)
    try:
        assert mine.acquire() is False
    finally:
        release(other)
    assert wait_for(mine.acquire, 5), "the leadership was not free after the leader ended"
    # within one process every app leads (tests serve several apps on one database)
    second = Leadership(engine.db)
    assert second.acquire()
    second.release()
    mine.release()
    third = holder(engine, "leadership")  # given up: another process can lead now
    release(third)


# -- the real command ------------------------------------------------------------------


CONFIG = """\
[engine]
currency = "EUR"

[rules.points]
per_unit = 1

[connectors.shopify]
shop = "example.myshopify.com"
"""


def applied(engine) -> int:
    with engine.db.connect() as conn:
        return sum(1 for row in conn.execute(select(inbox_table.c.status)) if row.status == inbox.APPLIED)


def test_serve_with_two_workers_stores_every_delivery_once_and_one_worker_applies_them(engine, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(CONFIG)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "REGULARS_DATABASE_URL": engine.db.url.render_as_string(hide_password=False),
           "REGULARS_SHOPIFY_WEBHOOK_SECRET": "new-secret", "PYTHONPATH": str(ROOT)}
    env.pop("REGULARS_BROKER_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "engine.cli", "--config", str(config), "serve",
                               "--port", str(port), "--workers", "2", "--no-access-log"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}/webhooks/shopify"
    try:
        def lines() -> str:
            assert server.poll() is None, f"regulars serve exited:\n{log.read_text(errors='replace')}"
            return log.read_text(errors="replace")

        assert wait_for(lambda: len(re.findall(r"process \d+ (runs|receives)", lines())) == 2, 60), lines()
        leaders = re.findall(r"process (\d+) runs the background work", lines())
        assert len(leaders) == 1, lines()

        deliveries = [order_delivery(n) for n in range(60)]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda d: post(url, *d), deliveries))
        assert [status for status, _ in answers] == [200] * 60
        assert len({answer["delivery"] for _, answer in answers}) == 60
        assert wait_for(lambda: applied(engine) == 60, 30), f"{applied(engine)} of 60 applied\n{lines()}"

        # the leader dies: the other worker takes the background work over
        os.kill(int(leaders[0]), signal.SIGKILL)
        assert wait_for(lambda: len(re.findall(r"process \d+ runs the background work", lines())) == 2, 30), \
            lines()
        # ... and uvicorn's supervisor starts a new worker in the dead one's place
        assert wait_for(lambda: lines().count("Application startup complete") == 3, 30), lines()
        assert f"Child process [{leaders[0]}] died" in lines()
        more = [order_delivery(n) for n in range(60, 70)]
        for body, headers in more:
            status, _ = post(url, body, headers)
            assert status == 200
        assert wait_for(lambda: applied(engine) == 70, 30), f"{applied(engine)} of 70 applied\n{lines()}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    assert "POST /webhooks/shopify" not in log.read_text(errors="replace")  # --no-access-log
    with engine.db.connect() as conn:
        keys = [row.key for row in conn.execute(select(inbox_table.c.key))]
        assert engine.ledger.audit(conn) == []
    assert len(keys) == len(set(keys)) == 70
