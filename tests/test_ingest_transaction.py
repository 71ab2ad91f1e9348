"""``Engine.ingest`` and ``ingest_batch`` store a delivery and apply it in one
transaction: the inbox row is written once, already decided, and a delivery
whose applying fails is still kept, failed, with its reason. Run on SQLite and
(with REGULARS_TEST_DATABASE_URL) on PostgreSQL."""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from engine import inbox
from engine.db.models import inbox as inbox_table
from engine.db.models import ledger_entries
from engine.testing import balance, paid_order
from tests.plugins.campaign import ExplodingCampaign

EMAIL = "jana@example.com"


def row(engine, inbox_id: int):
    with engine.db.connect() as conn:
        return inbox.get(conn, inbox_id)


def entries(engine) -> int:
    with engine.db.connect() as conn:
        return conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()


def inbox_rows(engine) -> int:
    with engine.db.connect() as conn:
        return conn.execute(select(func.count()).select_from(inbox_table)).scalar_one()


def test_an_applied_delivery_is_stored_once_already_applied(engine):
    outcome = engine.ingest(*paid_order(total="20.00"))

    assert (outcome.status, outcome.entries) == ("applied", 1)
    stored = row(engine, outcome.inbox_id)
    assert (stored.status, stored.attempts, stored.error, stored.plugin) == ("applied", 1, None, None)
    assert stored.processed_at is not None and stored.received_at is not None
    assert balance(engine, EMAIL) == 20


def test_a_lone_delivery_whose_plugin_raises_is_kept_failed_and_nothing_else_is_written(make_engine):
    engine = make_engine(extra_plugins=(("exploding-campaign", ExplodingCampaign()),))

    outcome = engine.ingest(*paid_order(total="30.00"))

    assert (outcome.status, outcome.plugin) == ("failed", "exploding-campaign")
    stored = row(engine, outcome.inbox_id)
    assert (stored.status, stored.attempts, stored.plugin, stored.error) == (
        "failed", 1, "exploding-campaign", "RuntimeError: campaign service unreachable")
    assert entries(engine) == 0 and inbox_rows(engine) == 1
    # Sent again, it is the same delivery: a duplicate, not a second row.
    assert engine.ingest(*paid_order(total="30.00")).status == "duplicate"
    assert inbox_rows(engine) == 1


def test_a_bug_while_applying_keeps_the_delivery_failed_and_logs_it(engine, monkeypatch, caplog):
    def broken(conn, event):
        raise KeyError("a bug")

    monkeypatch.setattr(engine.pipeline, "apply", broken)
    with caplog.at_level(logging.ERROR, logger="regulars"):
        outcome = engine.ingest(*paid_order())

    assert outcome.status == "failed"
    assert outcome.error == "internal error: KeyError: 'a bug'"
    assert row(engine, outcome.inbox_id).status == "failed"
    assert "KeyError" in caplog.text
    monkeypatch.undo()
    assert engine.replay(outcome.inbox_id).status == "applied"
    assert balance(engine, EMAIL) == 20


def test_a_batch_keeps_going_past_a_failure_and_stores_each_delivery_once(engine, monkeypatch):
    real = engine.pipeline.apply

    def fails_on_order_2(conn, event):
        if event["order"]["id"] == "2":
            raise RuntimeError("order 2 is cursed")
        return real(conn, event)

    monkeypatch.setattr(engine.pipeline, "apply", fails_on_order_2)
    outcomes = engine.ingest_batch("shopify", [paid_order(order_id=n, total="10.00")[1:] for n in (1, 2, 3)])

    assert [o.status for o in outcomes] == ["applied", "failed", "applied"]
    assert outcomes[1].error == "internal error: RuntimeError: order 2 is cursed"
    assert [(row(engine, o.inbox_id).status, row(engine, o.inbox_id).attempts) for o in outcomes] == [
        ("applied", 1), ("failed", 1), ("applied", 1)]
    assert balance(engine, EMAIL) == 20 and entries(engine) == 2
    monkeypatch.undo()
    assert engine.replay(outcomes[1].inbox_id).status == "applied"
    assert balance(engine, EMAIL) == 30


def test_a_long_batch_is_applied_in_runs_and_a_failure_spoils_none_of_its_run(engine, monkeypatch):
    """Runs of ``RUN`` deliveries share a savepoint; the run with a failure
    is applied again one delivery at a time, and only the failure is kept
    failed."""
    from engine.app import RUN

    real = engine.pipeline.apply
    cursed = RUN + RUN // 2

    def fails_on_one(conn, event):
        if event["order"]["id"] == str(cursed):
            raise RuntimeError("cursed")
        return real(conn, event)

    monkeypatch.setattr(engine.pipeline, "apply", fails_on_one)
    numbers = range(1, 2 * RUN + 11)
    outcomes = engine.ingest_batch("shopify", [paid_order(order_id=n, total="10.00")[1:] for n in numbers])

    assert [n for n, o in zip(numbers, outcomes, strict=True) if o.status != "applied"] == [cursed]
    assert {o.entries for o in outcomes if o.status == "applied"} == {1}
    assert balance(engine, EMAIL) == 10 * (len(numbers) - 1) and entries(engine) == len(numbers) - 1
    assert inbox_rows(engine) == len(numbers)


def test_a_transaction_that_keeps_losing_races_falls_back_to_storing_the_delivery_first(engine, monkeypatch):
    tries = []

    def always_loses(conn, event):
        tries.append(1)
        raise IntegrityError("INSERT ...", {}, Exception("duplicate key value violates unique constraint"))

    monkeypatch.setattr(engine.pipeline, "apply", always_loses)
    outcome = engine.ingest(*paid_order())

    assert outcome.status == "failed" and outcome.error.startswith("database: ")
    # tried in one transaction, then stored on its own and tried again: kept, failed, once
    assert len(tries) == 2 * 5
    stored = row(engine, outcome.inbox_id)
    assert stored.status == "failed" and inbox_rows(engine) == 1 and entries(engine) == 0
    monkeypatch.undo()
    assert engine.replay(outcome.inbox_id).status == "applied"


def test_bad_and_ignored_deliveries_are_stored_decided_in_the_same_transaction(engine):
    bad = engine.ingest("shopify", "orders/paid", b'{"id": 1, "line_items": [')
    ignored = engine.ingest("shopify", "products/create", b'{"id": 1}')

    assert bad.status == "failed" and "not valid JSON" in bad.error
    assert ignored.status == "ignored"
    assert [(row(engine, o.inbox_id).status, row(engine, o.inbox_id).attempts) for o in (bad, ignored)] == [
        ("failed", 1), ("ignored", 1)]


def test_the_same_delivery_sent_twice_at_once_is_applied_once(make_engine):
    import threading

    engines = [make_engine(), make_engine()]
    delivery = paid_order(total="25.00")
    start = threading.Barrier(2)
    outcomes = []

    def send(engine):
        start.wait()
        outcomes.append(engine.ingest(*delivery))

    threads = [threading.Thread(target=send, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(o.status for o in outcomes) == ["applied", "duplicate"]
    assert len({o.inbox_id for o in outcomes}) == 1
    assert balance(engines[0], EMAIL) == 25 and entries(engines[0]) == 1 and inbox_rows(engines[0]) == 1


def round_trips(engine, tmp_path, deliveries) -> list[int]:
    """Round trips (ReadyForQuery on the wire, libpq's trace) of each
    ``ingest``, on PostgreSQL: traced from check-out to check-in, when
    libpq's buffered trace is flushed."""
    import psycopg
    from sqlalchemy import event

    path = tmp_path / "libpq.trace"
    trace = open(path, "w")  # noqa: SIM115 - closed below

    def _on(dbapi_connection, record, proxy):  # noqa: ARG001
        dbapi_connection.pgconn.trace(trace.fileno())
        dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def _off(dbapi_connection, record):  # noqa: ARG001
        dbapi_connection.pgconn.untrace()

    event.listen(engine.db, "checkout", _on)
    event.listen(engine.db, "checkin", _off)
    counts = []
    try:
        for delivery in deliveries:
            before = path.read_text().count("\tReadyForQuery\t")
            assert engine.ingest(*delivery).status == "applied"
            counts.append(path.read_text().count("\tReadyForQuery\t") - before)
    finally:
        event.remove(engine.db, "checkout", _on)
        event.remove(engine.db, "checkin", _off)
        trace.close()
    return counts


def test_on_postgresql_an_order_takes_two_round_trips(postgres_url, make_engine, tmp_path):
    engine = make_engine(url=postgres_url)
    engine.ingest(*paid_order(email="warm@example.com", order_id=1))  # the pool's first connection
    # a new customer, then a returning one
    counts = round_trips(engine, tmp_path, [paid_order(order_id=2), paid_order(order_id=3)])
    assert counts == [2, 2]
    assert balance(engine, EMAIL) == 40
