"""The ledger against a model: a hypothesis state machine posts entries and
merges customers on the real engine and on a dictionary, and compares them
after every step (TigerBeetle's auditor, in small)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import func, select

from engine.db.models import ledger_entries, lots
from tests.conftest import POSTGRES_URL, examples

AT = datetime(2026, 6, 1, tzinfo=UTC)
UNITS = ["points", "stamps:coffee"]


@pytest.fixture
def ledger_machine(make_engine, tmp_path, _sqlite_template, request):
    counter = [0]

    class LedgerMachine(RuleBasedStateMachine):
        @initialize()
        def fresh_database(self):
            counter[0] += 1
            if POSTGRES_URL:
                from tests.conftest import reset_postgres

                self.engine = make_engine()
                reset_postgres(self.engine.db)
            else:
                path = tmp_path / f"model-{counter[0]}.sqlite3"
                shutil.copy(_sqlite_template, path)
                self.engine = make_engine(url=f"sqlite:///{path}")
            self.model: dict[int, dict[str, int]] = {}
            self.alive: list[int] = []
            self.posted_total = 0
            self.keys = 0

        @rule(email=st.sampled_from(["a@example.com", "b@example.com", "c@example.com", None]),
              phone=st.sampled_from(["+420601000001", "+420601000002", None]))
        def a_customer_arrives(self, email, phone):
            with self.engine.db.begin() as conn:
                cid = self.engine.identity.resolve(conn, "pos", {"email": email, "phone": phone}, AT)
            if cid is None:
                return
            # A resolve may have merged someone: follow the model the same way.
            with self.engine.db.connect() as conn:
                for other in list(self.alive):
                    lead = self.engine.identity.follow(conn, other)
                    if lead != other:
                        for unit, amount in self.model.pop(other).items():
                            self.model.setdefault(lead, {}).setdefault(unit, 0)
                            self.model[lead][unit] += amount
                        self.alive.remove(other)
            if cid not in self.alive:
                self.alive.append(cid)
                self.model.setdefault(cid, {})

        @precondition(lambda self: self.alive)
        @rule(data=st.data(), unit=st.sampled_from(UNITS), amount=st.integers(-500, 500).filter(bool))
        def an_entry_is_posted(self, data, unit, amount):
            cid = data.draw(st.sampled_from(self.alive))
            self.keys += 1
            with self.engine.db.begin() as conn:
                self.engine.ledger.post(conn, cid, unit, amount, "adjust", "model", None, f"k{self.keys}", AT)
            self.model[cid][unit] = self.model[cid].get(unit, 0) + amount
            self.posted_total += amount

        @precondition(lambda self: len(self.alive) >= 2)
        @rule(data=st.data())
        def two_customers_are_merged(self, data):
            keep, gone = data.draw(st.permutations(self.alive))[:2]
            with self.engine.db.begin() as conn:
                self.engine.identity.merge(conn, keep=keep, gone=gone, at=AT)
            for unit, amount in self.model.pop(gone).items():
                self.model[keep][unit] = self.model[keep].get(unit, 0) + amount
            self.alive.remove(gone)

        @invariant()
        def balances_match_the_model_and_the_entries(self):
            if not hasattr(self, "engine"):
                return
            with self.engine.db.connect() as conn:
                assert self.engine.ledger.audit(conn) == []
                for cid in self.alive:
                    actual = {u: b for u, b in self.engine.ledger.balances(conn, cid).items() if b}
                    assert actual == {u: b for u, b in self.model[cid].items() if b}
                total = conn.execute(select(func.coalesce(func.sum(ledger_entries.c.amount), 0))).scalar_one()
                assert total == self.posted_total  # merges move points, never make or lose them
                open_points = conn.execute(select(func.coalesce(func.sum(lots.c.remaining), 0))).scalar_one()
                assert open_points >= 0

        def teardown(self):
            if hasattr(self, "engine"):
                self.engine.db.dispose()

    return LedgerMachine


def test_the_ledger_behaves_like_its_model(ledger_machine):
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(ledger_machine, settings=settings(max_examples=examples(25), stateful_step_count=15, deadline=None))
