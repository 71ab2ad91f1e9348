"""Shared fixtures. The database fixtures live in tests/fixtures_db.py."""

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
#: PostgreSQL pass running at the same time on ``test`` is left alone
SQLITE_PASS_DATABASE = "regulars_sqlite_pass"


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


def reset_postgres(engine) -> None:
    """Empty every table (fast, keeps the migrated schema)."""
    from sqlalchemy import text

    from engine.db.models import Base

    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


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
            {"REGULARS_DATABASE_URL": url or database_url},
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
