"""Birthday gifts: the ``birthday-gifts`` job finds whose birthday it is and
asks the plugins what it is worth (``regulars_birthday_awards``); the
pipeline posts it once (``Pipeline.apply_birthday``).

Whose birthday it is, in the shop's calendar (``[engine] timezone``):

- a customer (not merged into another) whose birthday falls on today or on
  one of the ``CATCH_UP_DAYS - 1`` days before it, so that a job that could
  not run on the day (the server was down) catches up; each birthday is
  posted once whatever the number of runs (its entries' keys hold the year);
- a 29 February birthday falls on 28 February in other years;
- the birthday must have been known before its day began: learnt on the day
  or later (given on the card just then, say), it is celebrated from the next
  year on. When it was learnt is ``customers.fields_at["birthday"]``,
  stamped since 1 December 2026; before that, the customer's creation.

The built-in ``[plugins.birthday-bonus]`` gives ``gift`` points; any plugin
may give more (``engine.hookspecs.regulars_birthday_awards``).
"""

from __future__ import annotations

import calendar
import logging
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import extract, func, select
from sqlalchemy.engine import Connection

from engine.db import as_utc
from engine.db.models import customers
from engine.jobs import JobFailed
from engine.plugins import PluginFailed

log = logging.getLogger("regulars.jobs")

#: the birthday itself and the days after it on which a run still gives its gift
CATCH_UP_DAYS = 3
#: customers' ids read in one statement
_IDS_PER_STATEMENT = 10_000


def bonus(engine):
    """The ``[plugins.birthday-bonus]`` plugin, or None when it is off."""
    return next((p.obj for p in engine.plugins.loaded if p.table == "plugins.birthday-bonus"), None)


def birthday_wanted(engine) -> bool:
    """Whether knowing a customer's birthday brings them something: the
    birthday bonus is on with a multiplier or a gift, or another plugin gives
    birthday gifts (the card and the till then ask for it)."""
    plugin = bonus(engine)
    return (plugin is not None and plugin.factor != 1) or gives_gifts(engine)


def gives_gifts(engine) -> bool:
    """Whether a plugin gives birthday gifts: the birthday bonus with a
    ``gift``, or another plugin's ``regulars_birthday_awards``."""
    plugin = bonus(engine)
    if plugin is not None and plugin.gift:
        return True
    return any(impl.plugin is not plugin for impl in engine.plugins.pm.hook.regulars_birthday_awards.get_hookimpls())


def falls_on(birthday: date, year: int) -> date:
    """The day a birthday falls on in ``year`` (29 February: 28 February in
    a year without one)."""
    if (birthday.month, birthday.day) == (2, 29) and not calendar.isleap(year):
        return date(year, 2, 28)
    return birthday.replace(year=year)


def _month_day(conn: Connection):
    """A stored birthday's month × 100 + day, in SQL. Birthdays are stored as
    midnight UTC: PostgreSQL reads them in UTC (not the session's time zone);
    SQLite keeps the UTC text."""
    column = customers.c.birthday
    if conn.dialect.name == "postgresql":
        column = func.timezone("UTC", column)
    return extract("month", column) * 100 + extract("day", column)


def due(conn: Connection, today: date, zone: ZoneInfo) -> list[tuple[int, date]]:
    """``(customer id, day)`` of the birthdays to celebrate on ``today``:
    on it or the ``CATCH_UP_DAYS - 1`` days before, known before their day
    began. Oldest day first."""
    days = [today - timedelta(days=n) for n in range(CATCH_UP_DAYS - 1, -1, -1)]
    # Only the birthdays on those days' month and day are read (29 February
    # too, on a 28 February of a year without one), not every birthday known.
    wanted = {day.month * 100 + day.day for day in days}
    if any((day.month, day.day) == (2, 28) and not calendar.isleap(day.year) for day in days):
        wanted.add(229)
    born = conn.execute(select(customers.c.id, customers.c.birthday)
                        .where(customers.c.birthday.is_not(None), customers.c.merged_into.is_(None),
                               _month_day(conn).in_(sorted(wanted)))).all()
    found = {}
    for row in born:
        birthday = as_utc(row.birthday).date()  # (stored as midnight UTC: engine.identity)
        for day in days:
            if falls_on(birthday, day.year) == day:
                found[row.id] = day
    if not found:
        return []
    learnt = {}
    ids = sorted(found)
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        for row in conn.execute(select(customers.c.id, customers.c.fields_at, customers.c.created_at)
                                .where(customers.c.id.in_(ids[start:start + _IDS_PER_STATEMENT]))):
            stamp = (row.fields_at or {}).get("birthday")
            learnt[row.id] = datetime.fromisoformat(stamp) if stamp else as_utc(row.created_at)
    return sorted(((cid, day) for cid, day in found.items()
                   if learnt[cid] < datetime.combine(day, time.min, zone)), key=lambda pair: (pair[1], pair[0]))


def give_gifts(engine, now: datetime) -> str:
    """The ``birthday-gifts`` job: each customer whose birthday it is (``due``)
    gets what the plugins say it is worth, once; one transaction each."""
    if not gives_gifts(engine):  # (nobody's birthdays read for nothing, every hour)
        return "no birthday gifts: no plugin gives one (set gift in [plugins.birthday-bonus])"
    zone = ZoneInfo(engine.config.engine.get("timezone") or "UTC")
    with engine.db.connect() as conn:
        birthdays = due(conn, as_utc(now).astimezone(zone).date(), zone)
    given, failed = 0, []
    for customer_id, day in birthdays:
        try:
            with engine.db.begin() as conn:
                engine.identity.lock(conn, [customer_id])  # as an order for them would (PostgreSQL)
                given += bool(engine.pipeline.apply_birthday(conn, customer_id, day, now))
        except PluginFailed as exc:  # rolled back: asked again in the next run
            log.error("birthday gift for customer %s: %s", customer_id, exc)
            failed.append(f"customer {customer_id}: {exc}")
    summary = f"{len(birthdays)} birthdays, {given} gifts given"
    if failed:
        summary += f"; {len(failed)} failed ({failed[0]}{', …' if len(failed) > 1 else ''})"
        if len(failed) == len(birthdays):
            raise JobFailed(summary)
    return summary
