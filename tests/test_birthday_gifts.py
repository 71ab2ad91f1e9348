"""Birthday gifts: the ``birthday-gifts`` job gives what the plugins say a
birthday is worth (``[plugins.birthday-bonus] gift``, or a plugin's
``regulars_birthday_awards``), once a year, on the day in the shop's calendar
or up to two days late (engine/birthdays.py)."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.birthdays import falls_on
from engine.customers import customer_summary
from engine.db.models import ledger_entries
from engine.hookspecs import hookimpl
from engine.jobs import JOBS, JobFailed, run
from engine.rules_api import Award
from engine.work import SCHEDULE
from tests.conftest import DEFAULT_TABLES, examples
from tests.plugins.till import CanonicalTill, till_customer
from tests.plugins_builtin.shop import send

EMAIL = "jana@example.com"
KNOWN_SINCE = datetime(2025, 1, 10, 10, 0, tzinfo=UTC)


def tables(gift: int = 100, zone: str | None = None, **more) -> dict:
    found = copy.deepcopy(DEFAULT_TABLES)
    found["plugins"] = {"birthday-bonus": {"multiplier": 1, "gift": gift}}
    if zone:
        found["engine"]["timezone"] = zone
    found.update(more)
    return found


def shop(make_engine, *plugins, born: str = "1990-05-12", **settings):
    engine = make_engine(tables(**settings), extra_plugins=(("till", CanonicalTill()), *plugins))
    send(engine, *till_customer(EMAIL, KNOWN_SINCE, birthday=born))
    return engine


def points(engine, key: str = EMAIL) -> int:
    return customer_summary(engine, key)["points"]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_birthday_falls_on_its_day_and_29_february_on_28_february_in_other_years():
    assert falls_on(date(1990, 5, 12), 2026) == date(2026, 5, 12)
    assert falls_on(date(2000, 2, 29), 2027) == date(2027, 2, 28)
    assert falls_on(date(2000, 2, 29), 2028) == date(2028, 2, 29)


def test_the_job_is_scheduled_hourly():
    assert JOBS["birthday-gifts"].__name__ == "birthday_gifts"
    assert SCHEDULE["birthday-gifts"].hour == set(range(24))


def test_the_gift_is_given_on_the_birthday_once_and_again_the_next_year(make_engine):
    engine = shop(make_engine)
    assert run(engine, "birthday-gifts", at("2026-05-11T23:00:00+00:00")) == "0 birthdays, 0 gifts given"
    assert points(engine) == 0
    assert run(engine, "birthday-gifts", at("2026-05-12T00:10:00+00:00")) == "1 birthdays, 1 gifts given"
    for later in ("2026-05-12T01:10:00+00:00", "2026-05-13T00:10:00+00:00", "2026-05-14T23:10:00+00:00"):
        assert run(engine, "birthday-gifts", at(later)) == "1 birthdays, 0 gifts given"  # asked, posted once
    assert run(engine, "birthday-gifts", at("2026-05-15T00:10:00+00:00")) == "0 birthdays, 0 gifts given"
    assert points(engine) == 100
    run(engine, "birthday-gifts", at("2027-05-12T00:10:00+00:00"))
    assert points(engine) == 200
    with engine.db.connect() as conn:
        entries = conn.execute(select(ledger_entries.c.reason, ledger_entries.c.source, ledger_entries.c.amount)
                               .order_by(ledger_entries.c.id)).all()
        assert engine.ledger.audit(conn) == []
    assert [tuple(e) for e in entries] == [("birthday", "birthday:2026-05-12", 100), ("birthday", "birthday:2027-05-12", 100)]


@pytest.mark.parametrize(("days_late", "given"), [(1, True), (2, True), (3, False)])
def test_a_job_that_could_not_run_on_the_day_catches_up_two_days(make_engine, days_late, given):
    engine = shop(make_engine)
    run(engine, "birthday-gifts", datetime(2026, 5, 12, 9, tzinfo=UTC) + timedelta(days=days_late))
    assert points(engine) == (100 if given else 0)


def test_the_day_is_the_shop_s_day_in_its_time_zone(make_engine):
    # 13:00 UTC on 11 May is 01:00 on 12 May in Auckland
    engine = shop(make_engine, zone="Pacific/Auckland")
    run(engine, "birthday-gifts", at("2026-05-11T13:00:00+00:00"))
    assert points(engine) == 100


def test_29_february_is_celebrated_on_28_february_in_other_years(make_engine):
    engine = shop(make_engine, born="2000-02-29")
    run(engine, "birthday-gifts", at("2027-02-28T10:00:00+00:00"))
    assert points(engine) == 100
    run(engine, "birthday-gifts", at("2027-03-01T10:00:00+00:00"))  # (28 February's catch-up, not a second day)
    assert points(engine) == 100


def test_a_birthday_learnt_on_the_day_gets_its_first_gift_the_next_year(make_engine):
    engine = make_engine(tables(), extra_plugins=(("till", CanonicalTill()),))
    send(engine, *till_customer(EMAIL, KNOWN_SINCE))
    customer_id = customer_summary(engine, EMAIL)["id"]
    with engine.db.begin() as conn:  # given on the card that morning
        assert engine.identity.set_birthday(conn, customer_id, date(1990, 5, 12), at("2026-05-12T08:00:00+00:00"))
    run(engine, "birthday-gifts", at("2026-05-12T09:10:00+00:00"))
    assert points(engine) == 0
    run(engine, "birthday-gifts", at("2027-05-12T00:10:00+00:00"))
    assert points(engine) == 100


def test_a_birthday_given_with_a_snapshot_is_known_from_that_snapshot(make_engine):
    """A till's profile that adds the birthday to a known customer: the day
    before the birthday, so the gift comes on the day."""
    engine = make_engine(tables(), extra_plugins=(("till", CanonicalTill()),))
    send(engine, *till_customer(EMAIL, KNOWN_SINCE))
    send(engine, *till_customer(EMAIL, at("2026-05-11T10:00:00+00:00"), birthday="1990-05-12"))
    run(engine, "birthday-gifts", at("2026-05-12T09:10:00+00:00"))
    assert points(engine) == 100


@pytest.mark.parametrize("campaigns", [{}, {"birthday-bonus": {"multiplier": 2}}], ids=["no-bonus", "multiplier-only"])
def test_without_a_gift_nobody_is_asked_and_the_job_says_so(make_engine, campaigns):
    engine = make_engine({**DEFAULT_TABLES, "plugins": campaigns}, extra_plugins=(("till", CanonicalTill()),))
    send(engine, *till_customer(EMAIL, KNOWN_SINCE, birthday="1990-05-12"))
    assert run(engine, "birthday-gifts", at("2026-05-12T09:10:00+00:00")).startswith("no birthday gifts")
    assert points(engine) == 0


class StampOnBirthday:
    """A plugin's birthday gift: a coffee stamp (the tenth fills the card)."""

    @hookimpl
    def regulars_birthday_awards(self, customer, day):
        assert customer.birthday == date(1990, 5, 12) and day == date(2026, 5, 12)
        return [Award("stamps:coffee", 1, "birthday stamp"), Award("points", 5, "and five points")]


def test_a_plugin_s_gift_of_a_stamp_fills_the_card(make_engine):
    cards = {"rules": {**DEFAULT_TABLES["rules"], "stamps": {"coffee": {"required": 1, "reward": "free-coffee"}}},
             "rewards": {"free-coffee": {"kind": "free_product", "sku": "COFFEE"}}}
    engine = shop(make_engine, ("stamp-on-birthday", StampOnBirthday()), **cards)
    run(engine, "birthday-gifts", at("2026-05-12T09:10:00+00:00"))
    summary = customer_summary(engine, EMAIL)
    assert summary["points"] == 105
    assert [r["kind"] for r in summary["rewards"]] == ["free_product"]


class BrokenGift:
    def __init__(self):
        self.broken = True

    @hookimpl
    def regulars_birthday_awards(self, customer):  # noqa: ARG002
        if self.broken:
            raise RuntimeError("the gift shop is closed")
        return None


def test_a_plugin_that_raises_is_named_and_the_customer_gets_the_gift_in_a_later_run(make_engine):
    broken = BrokenGift()
    engine = shop(make_engine, ("broken-gift", broken))
    with pytest.raises(JobFailed, match="broken-gift.*the gift shop is closed"):
        run(engine, "birthday-gifts", at("2026-05-12T00:10:00+00:00"))
    assert points(engine) == 0  # nothing from the other plugins either: all or nothing
    broken.broken = False
    run(engine, "birthday-gifts", at("2026-05-12T01:10:00+00:00"))
    assert points(engine) == 100


class Heard:
    def __init__(self):
        self.changes = []

    @hookimpl
    def regulars_points_changed(self, customer, changes, balance):
        self.changes.append((customer.email, [(c.amount, c.reason) for c in changes], balance))


def test_observers_hear_of_the_gift(make_engine):
    heard = Heard()
    engine = shop(make_engine, ("heard", heard))
    run(engine, "birthday-gifts", at("2026-05-12T09:10:00+00:00"))
    assert heard.changes == [(EMAIL, [(100, "birthday")], 100)]


def test_a_merged_customer_s_birthday_is_the_survivor_s(make_engine):
    """Two records of one person: only the one they were merged into is asked."""
    engine = shop(make_engine)
    send(engine, *till_customer("jana.other@example.com", KNOWN_SINCE, birthday="1990-05-12"))
    keep, gone = customer_summary(engine, EMAIL)["id"], customer_summary(engine, "jana.other@example.com")["id"]
    with engine.db.begin() as conn:
        engine.identity.merge(conn, keep=keep, gone=gone, at=KNOWN_SINCE + timedelta(days=1))
    assert run(engine, "birthday-gifts", at("2026-05-12T09:10:00+00:00")) == "1 birthdays, 1 gifts given"


#: birthdays around the days a month-and-day filter could get wrong
TRICKY = [date(1990, 1, 1), date(1985, 12, 31), date(2000, 2, 29), date(1999, 2, 28), date(1999, 3, 1),
          date(1970, 3, 2), date(1991, 4, 30), date(1991, 5, 1), date(1992, 5, 12), date(1980, 10, 9),
          date(1980, 11, 1), date(1996, 2, 29), date(1993, 2, 27), date(1988, 6, 15), date(1988, 12, 30)]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(today=st.dates(min_value=date(2026, 1, 1), max_value=date(2033, 12, 31)) | st.sampled_from(
    [date(2027, 2, 28), date(2027, 3, 1), date(2027, 3, 2), date(2028, 2, 28), date(2028, 2, 29), date(2028, 3, 1),
     date(2027, 1, 1), date(2027, 1, 2), date(2026, 12, 31)]))
def test_the_birthdays_read_are_those_of_the_days_and_no_more(birthday_shop, today):
    """``due`` reads only the birthdays whose month and day are the days' (in
    SQL): it finds what reading every birthday and asking ``falls_on`` finds."""
    from engine.birthdays import CATCH_UP_DAYS, due

    engine, born = birthday_shop
    days = [today - timedelta(days=n) for n in range(CATCH_UP_DAYS - 1, -1, -1)]
    wanted = {}
    for customer_id, birthday in born.items():
        for day in days:
            if falls_on(birthday, day.year) == day:
                wanted[customer_id] = day
    with engine.db.connect() as conn:
        if conn.dialect.name == "postgresql":  # a session's own time zone changes nothing (stored as UTC)
            conn.exec_driver_sql("SET TIME ZONE 'America/New_York'")
        found = due(conn, today, ZoneInfo("UTC"))
    assert found == sorted(wanted.items(), key=lambda pair: (pair[1], pair[0]))


@pytest.fixture
def birthday_shop(make_engine):
    """A shop whose customers (known since 2024) have the ``TRICKY`` birthdays."""
    engine = make_engine(tables())
    engine.ensure_schema()
    since = datetime(2024, 1, 1, tzinfo=UTC)
    born = {}
    with engine.db.begin() as conn:
        for number, birthday in enumerate(TRICKY):
            customer_id = engine.identity.resolve(conn, "cli", {"email": f"c{number}@example.com"}, since)
            assert engine.identity.set_birthday(conn, customer_id, birthday, since)
            born[customer_id] = birthday
    return engine, born


@pytest.mark.postgres
def test_a_postgresql_server_in_another_time_zone_changes_no_day(make_engine, postgres_url, monkeypatch):
    """A server whose TimeZone is New York's (initdb takes the machine's)
    hands timestamps back in it unless told otherwise: a birthday stored as
    midnight UTC would be the evening before, the gift given a day early and
    the card showing the wrong day. regulars sets its sessions to UTC."""
    monkeypatch.setenv("PGTZ", "America/New_York")  # (libpq's: the session's TimeZone at connect)
    engine = make_engine(tables(), url=postgres_url, extra_plugins=(("till", CanonicalTill()),))
    send(engine, *till_customer(EMAIL, KNOWN_SINCE, birthday="1990-05-12"))
    with engine.db.connect() as conn:
        assert conn.exec_driver_sql("SHOW TIME ZONE").scalar() == "UTC"
    assert customer_summary(engine, EMAIL)["birthday"] == "1990-05-12"
    run(engine, "birthday-gifts", at("2026-05-11T12:00:00+00:00"))
    assert points(engine) == 0
    run(engine, "birthday-gifts", at("2026-05-12T12:00:00+00:00"))
    assert points(engine) == 100
