"""Shared fixtures: the real payloads, the two passes (SQLite, then PostgreSQL), the databases and the engines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = Path(os.environ.get("REGULARS_CONTRACTS", ROOT.parent / "shared" / "contracts"))


def pytest_configure(config):
    """No run without the real payloads: the connectors' tests and the
    streams stand on them (a clone alone has no ../shared beside it)."""
    config.addinivalue_line(
        "markers",
        "same_in_both_passes: the test runs the same whatever the pass's database (it uses none, or "
        "its own SQLite file, or PostgreSQL in both passes): the PostgreSQL pass leaves it out",
    )
    if not CONTRACTS.is_dir():
        raise pytest.UsageError(
            f"the real Shopify and WooCommerce payloads are not at {CONTRACTS}: put the shared folder beside this "
            "checkout (../shared/contracts), or set REGULARS_CONTRACTS to where they are")


@pytest.fixture(scope="session")
def contracts_dir() -> Path:
    """The real Shopify and WooCommerce payloads in ../shared/contracts."""
    if not CONTRACTS.is_dir():
        pytest.fail(f"contract payloads not found at {CONTRACTS} (set REGULARS_CONTRACTS)")
    return CONTRACTS


def load_contract(relative: str):
    """One contract file, parsed (Python's json keeps Shopify's big ids exact)."""
    return json.loads((CONTRACTS / relative).read_text(encoding="utf-8"))


# -- the two passes ---------------------------------------------------------------
#
# scripts/test (and so .ci/run) runs the suite twice against the same code: on
# SQLite, then on PostgreSQL with REGULARS_TEST_PASS=postgres. The second pass
# is there for what the database changes, so:
#
# - A test marked ``same_in_both_passes`` runs in the first pass only: it uses
#   no database, or a SQLite file of its own, or PostgreSQL in both passes
#   (``postgres_url``). The second pass deselects it (pytest's summary counts
#   it as deselected, not skipped) unless it uses the pass's database after all
#   (the ``database_url`` fixture, and so ``engine`` or ``make_engine``): then
#   it runs in both passes, whatever the mark says.
# - The property tests run all their examples in the first pass. For the second
#   pass .ci/run sets REGULARS_POSTGRES_PASS_HYPOTHESIS=second-pass, which loads
#   the profile below: a third of the examples, at least 5, for what is
#   PostgreSQL's own (locks, types, round trips), without exploring again what
#   the first pass has explored. (With CI set, hypothesis loads its "ci"
#   profile, derandomized: both passes draw their examples the same way, the
#   second fewer of them.) A count given in a test's own @settings is not the
#   profile's to change, so such a test says ``max_examples=examples(n)``.

from hypothesis import settings as hypothesis_settings  # noqa: E402

SECOND_PASS = os.environ.get("REGULARS_TEST_PASS") == "postgres"
#: the share of its examples a property test runs under the second-pass profile
SECOND_PASS_SHARE = 1 / 3
# everything as in the active profile (hypothesis's "default", or its "ci"
# when CI is set) but the number of examples
hypothesis_settings.register_profile(
    "second-pass", parent=hypothesis_settings.default,
    max_examples=round(hypothesis_settings.default.max_examples * SECOND_PASS_SHARE))
#: the hypothesis profile of this pass, if not the active one (the second pass only)
PASS_PROFILE = os.environ.get("REGULARS_POSTGRES_PASS_HYPOTHESIS", "") if SECOND_PASS else ""
if PASS_PROFILE:
    hypothesis_settings.load_profile(PASS_PROFILE)


def examples(n: int) -> int:
    """The max_examples of a property test that gives its own count ``n``:
    ``n``, or under the second-pass profile a third of it, at least 5 (or
    ``n`` if that is fewer)."""
    if PASS_PROFILE != "second-pass":
        return n
    return max(min(n, 5), round(n * SECOND_PASS_SHARE))


_DESELECTED = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    """The second pass leaves out what ran the same in the first (see above)."""
    if not SECOND_PASS:
        return
    kept, once = [], []
    for item in items:
        uses_the_pass_database = "database_url" in getattr(item, "fixturenames", ())
        if item.get_closest_marker("same_in_both_passes") and not uses_the_pass_database:
            once.append(item)
        else:
            kept.append(item)
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = kept
        config.stash[_DESELECTED] = len(once)


def pytest_terminal_summary(terminalreporter, config):
    if config.stash.get(_DESELECTED, 0):
        terminalreporter.write_line(
            f"{config.stash[_DESELECTED]} tests marked same_in_both_passes deselected: "
            "they ran in the SQLite pass")


# -- databases ------------------------------------------------------------------
#
# The suite runs on SQLite by default and on PostgreSQL when
# REGULARS_TEST_DATABASE_URL names one (.ci/run does both). A test that needs a
# server it can't reach skips with the reason, unless REGULARS_REQUIRE_SERVICES=1
# (set by .ci/run), where it fails instead.

import shutil  # noqa: E402

from engine.app import Engine  # noqa: E402
from engine.config import config_from_tables  # noqa: E402
from engine.db import make_engine as make_sa_engine  # noqa: E402
from engine.db import upgrade  # noqa: E402

DEFAULT_TABLES = {
    "engine": {"currency": "EUR", "default_country": "CZ"},
    "rules": {"points": {"per_unit": 1}},
    "connectors": {
        "shopify": {"shop": "example.myshopify.com"},
        "woocommerce": {"url": "https://shop.example"},
    },
}
POSTGRES_URL = os.environ.get("REGULARS_TEST_DATABASE_URL", "")
POSTGRES_FALLBACK = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: the SQLite pass's own database for its PostgreSQL-only tests, created beside
#: ``test`` when the server allows: its schema is dropped at the start, so a
#: PostgreSQL pass running at the same time on ``test`` is left alone. Two
#: SQLite passes at once on one machine each need their own:
#: REGULARS_SQLITE_PASS_DATABASE names it.
SQLITE_PASS_DATABASE = os.environ.get("REGULARS_SQLITE_PASS_DATABASE", "regulars_sqlite_pass")


def _fallback_url() -> str:
    """The SQLite pass's PostgreSQL: SQLITE_PASS_DATABASE, else ``test``."""
    from sqlalchemy import create_engine, make_url, text

    url = make_url(POSTGRES_FALLBACK)
    try:
        server = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with server.connect() as conn:
                if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                {"name": SQLITE_PASS_DATABASE}).first() is None:
                    conn.execute(text(f"CREATE DATABASE {SQLITE_PASS_DATABASE}"))
        finally:
            server.dispose()
    except Exception:  # noqa: BLE001 - no server, no right to create: ``test`` it is
        return POSTGRES_FALLBACK
    return url.set(database=SQLITE_PASS_DATABASE).render_as_string(hide_password=False)


def require_services() -> bool:
    return os.environ.get("REGULARS_REQUIRE_SERVICES") == "1"


def unreachable(reason: str):
    """Skip on a laptop, fail on CI."""
    if require_services():
        pytest.fail(f"{reason} (REGULARS_REQUIRE_SERVICES=1, so this fails instead of skipping)")
    pytest.skip(reason)


def _postgres_ready(url: str):
    from sqlalchemy import text

    engine = make_sa_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        engine.dispose()
        return None, f"PostgreSQL at {url} is not reachable: {str(exc).splitlines()[0]}"
    return engine, None


#: every how many resets reset_postgres truncates instead of deleting
TRUNCATE_EVERY = 100
_resets = [0]


def reset_postgres(engine) -> None:
    """Empty every table and restart every sequence (keeps the migrated schema):
    what ``TRUNCATE ... RESTART IDENTITY`` leaves. It deletes the rows instead,
    children first, and sets each sequence back to its start, in one round
    trip: about 3 ms where TRUNCATE, which makes new files for each of the two
    dozen tables and their indexes, takes about 100 ms; and the PostgreSQL pass
    resets before nearly every test and between the examples of the property
    tests. Deleted rows stay until a vacuum and CI's server has no autovacuum,
    so every TRUNCATE_EVERY-th reset truncates, which gives their space back."""
    from sqlalchemy import text

    from engine.db.models import Base

    tables = Base.metadata.sorted_tables
    _resets[0] += 1
    if _resets[0] % TRUNCATE_EVERY == 0:
        names = ", ".join(t.name for t in tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        return
    statements = [f'DELETE FROM "{t.name}"' for t in reversed(tables)]
    statements.append("SELECT setval(quote_ident(schemaname) || '.' || quote_ident(sequencename), start_value, false) "
                      "FROM pg_sequences WHERE schemaname = current_schema()")
    with engine.begin() as conn:
        conn.exec_driver_sql("; ".join(statements))


def empty_database(engine) -> None:
    """Empty every table of an engine's database (between hypothesis examples,
    which share one test's database)."""
    from engine.db.models import Base

    if engine.db.dialect.name == "postgresql":
        reset_postgres(engine.db)
        return
    with engine.db.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(scope="session")
def _postgres_schema():
    """A migrated PostgreSQL database, or the reason there is none."""
    url = POSTGRES_URL or _fallback_url()
    from engine.config import resolve_database_url

    url = resolve_database_url(Path("."), {"REGULARS_DATABASE_URL": url})
    engine, reason = _postgres_ready(url)
    if engine is None:
        yield None, reason
        return
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade(engine)
    yield url, None
    engine.dispose()


@pytest.fixture
def postgres_url(_postgres_schema):
    """A clean, migrated PostgreSQL database URL (skips or fails if none)."""
    url, reason = _postgres_schema
    if url is None:
        unreachable(reason)
    engine = make_sa_engine(url)
    reset_postgres(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "regulars.sqlite3"
    engine = make_sa_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def database_url(request, tmp_path, _sqlite_template):
    """The suite's database for this test: PostgreSQL when
    REGULARS_TEST_DATABASE_URL is set, else a fresh SQLite file."""
    if POSTGRES_URL:
        return request.getfixturevalue("postgres_url")
    path = tmp_path / "regulars.sqlite3"
    shutil.copy(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def make_engine(database_url, tmp_path):
    """Build an Engine on the test database: make_engine(tables=..., extra_plugins=...)."""
    built = []

    def build(tables: dict | None = None, extra_plugins: tuple = (), url: str | None = None) -> Engine:
        config = config_from_tables(
            tables if tables is not None else DEFAULT_TABLES,
            tmp_path / "plugins.toml",
            {"REGULARS_DATABASE_URL": url or database_url,
             **{k: v for k, v in os.environ.items() if k == "REGULARS_NOTIFY_SECRET"}},  # (tests/test_notify.py)
        )
        engine = Engine(config, extra_plugins=extra_plugins)
        built.append(engine)
        return engine

    yield build
    for engine in built:
        engine.db.dispose()


@pytest.fixture
def engine(make_engine) -> Engine:
    """An Engine with the default test programme (1 point per EUR, both shops)."""
    return make_engine()


# -- a real browser ---------------------------------------------------------------
#
# Debian's chromium, driven headless by Playwright (no browser is downloaded:
# Playwright is pointed at /usr/bin/chromium). Pages are screenshotted into
# docs/screenshots/ (the README shows them).

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium (Playwright's ``Browser``); skips, or fails on CI,
    without one."""
    path = os.environ.get("REGULARS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        unreachable("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unreachable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=path, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium):
    """A fresh page in a context of its own (its own cookies and storage), on a
    phone-sized screen; ``page.context.set_offline(True)`` cuts the network."""
    context = chromium.new_context(viewport={"width": 412, "height": 915}, device_scale_factor=1,
                                   locale="en-GB")
    page = context.new_page()
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    """Keep a screenshot of the page as docs/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
