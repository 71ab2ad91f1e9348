"""The merchant's dashboard (/admin) over real HTTP on loopback, and in a real
browser: signing in and out, sessions, CSRF, the figures of a seeded shop
(computed by the test's own oracle, tests/test_metrics.py), customer search and
the customer's page, replaying a failed delivery, the programme, and the
``regulars admin`` / ``regulars metrics`` commands."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, time, timedelta

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select

from engine.cli import Context
from engine.cli_admin import admin_commands
from engine.customers import customer_summary
from engine.db.models import customers
from engine.hookspecs import hookimpl
from engine.web import create_app
from engine.web.pages.admin import _label, add_user, format_value
from engine.web.pages.render import Formats
from tests import test_metrics as plan
from tests.conftest import screenshot
from tests.serving import serve_app
from tests.streams import Line, PlannedOrder, _shopify_order

PASSWORD = "correct horse battery"


class Flaky:
    """A campaign whose service is down until the test says otherwise."""

    broken = True

    @hookimpl
    def regulars_order_awards(self, order, customer):
        if Flaky.broken:
            raise RuntimeError("the bonus service is down")
        return []


@pytest.fixture
def shop(make_engine, monkeypatch, tmp_path):
    """(engine, base URL): the seeded shop of tests/test_metrics.py, served,
    with an admin user ``owner``."""
    monkeypatch.setenv("REGULARS_SECRET_KEY", "admin test key")
    monkeypatch.delenv("REGULARS_PUBLIC_URL", raising=False)
    Flaky.broken = False
    engine = make_engine(plan.TABLES, extra_plugins=(("flaky-bonus", Flaky()),))
    engine.ensure_schema()
    from engine import metrics

    metrics.ensure_built(engine)
    plan.feed(engine)
    add_user(engine, "owner", PASSWORD)
    with serve_app(create_app(engine, secrets={}, background=False)) as base:
        yield engine, base


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def signed_in(base: str, username: str = "owner", password: str = PASSWORD) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/admin/sign-in")
    answer = session.post(f"{base}/admin/sign-in", data={"username": username, "password": password,
                                                         "csrf": _csrf(page.text), "next": "/admin/"},
                          allow_redirects=False)
    assert answer.status_code == 303, answer.text
    session.signed_in_answer = answer
    return session


# -- HTTP -----------------------------------------------------------------------------------------


def test_without_a_session_every_page_sends_you_to_sign_in(shop):
    _, base = shop
    for path in ("/admin/", "/admin/customers", "/admin/customers/1", "/admin/deliveries", "/admin/outbox",
                 "/admin/programme"):
        answer = requests.get(base + path, allow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/admin/sign-in?next=/admin/")
    answer = requests.post(f"{base}/admin/deliveries/1/replay", data={"csrf": "x"}, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/admin/sign-in")
    assert requests.get(f"{base}/admin", allow_redirects=True).url.startswith(f"{base}/admin/sign-in")


def test_a_wrong_password_or_an_unknown_user_is_refused(shop):
    _, base = shop
    for username, password in (("owner", "wrong password"), ("nobody", PASSWORD), ("owner", "")):
        session = requests.Session()
        page = session.get(f"{base}/admin/sign-in")
        answer = session.post(f"{base}/admin/sign-in", data={"username": username, "password": password,
                                                             "csrf": _csrf(page.text)}, allow_redirects=False)
        assert answer.status_code == 401
        assert "Wrong username or password." in answer.text
        assert session.get(f"{base}/admin/", allow_redirects=False).status_code == 303


def _try(base: str, username: str, password: str, lang: str | None = None) -> requests.Response:
    session = requests.Session()
    page = session.get(f"{base}/admin/sign-in" + (f"?lang={lang}" if lang else ""))
    return session.post(f"{base}/admin/sign-in", data={"username": username, "password": password,
                                                       "csrf": _csrf(page.text)}, allow_redirects=False)


def test_too_many_refused_sign_ins_make_the_address_wait(shop, monkeypatch):
    """Five refusals for one username from one address close the door to it
    for the window (not even a right password is checked), in the visitor's
    language; other usernames still go in until twenty refusals; the window's
    end opens it again."""
    from engine.web.pages import admin

    engine, base = shop
    add_user(engine, "clerk", PASSWORD)
    for _ in range(admin.SIGN_IN_MAX_PER_USERNAME):
        assert _try(base, "Owner", "guess").status_code == 401  # usernames count whatever their case
    shut = _try(base, "owner", PASSWORD)
    assert shut.status_code == 429
    assert 14 * 60 <= int(shut.headers["Retry-After"]) <= 15 * 60
    assert "Too many refused sign-ins from here. Try again in 15 minutes." in shut.text
    assert "Zkuste to znovu za 15 minut." in _try(base, "owner", PASSWORD, lang="cs").text
    assert "Wrong username or password." not in shut.text
    signed_in(base, "clerk")  # another username from here: still let in, and its refusals forgotten

    for _ in range(admin.SIGN_IN_MAX_PER_ADDRESS - admin.SIGN_IN_MAX_PER_USERNAME):
        _try(base, f"someone-{_}", "guess")
    assert _try(base, "clerk", PASSWORD).status_code == 429  # twenty in all: the whole address waits

    later = admin.utcnow() + admin.SIGN_IN_WINDOW + admin.timedelta(seconds=1)
    monkeypatch.setattr(admin, "utcnow", lambda: later)
    signed_in(base)  # the window has passed
    assert admin.sign_in_wait(engine, "owner", "127.0.0.1", now=later) == 0


def test_signing_in_needs_the_forms_csrf_token(shop):
    _, base = shop
    session = requests.Session()
    page = session.get(f"{base}/admin/sign-in")
    for token in (None, "forged-token", _csrf(page.text)[:-1] + "x"):
        data = {"username": "owner", "password": PASSWORD}
        if token is not None:
            data["csrf"] = token
        assert session.post(f"{base}/admin/sign-in", data=data, allow_redirects=False).status_code == 403
    # a token from another browser's session is no good either
    other = requests.Session()
    other_token = _csrf(other.get(f"{base}/admin/sign-in").text)
    answer = session.post(f"{base}/admin/sign-in", data={"username": "owner", "password": PASSWORD,
                                                         "csrf": other_token}, allow_redirects=False)
    assert answer.status_code == 403


def test_the_session_cookie_and_the_headers(shop):
    _, base = shop
    session = signed_in(base)
    cookie = next(c for c in session.cookies if c.name == "regulars_admin")
    assert cookie.path == "/admin" and not cookie.secure
    set_cookie = session.signed_in_answer.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "max-age=28800" in set_cookie
    page = session.get(f"{base}/admin/")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "path=/admin" in set_cookie  # the rest of the app never sees it


def test_posts_without_the_right_csrf_token_are_forbidden(shop):
    engine, base = shop
    session = signed_in(base)
    token = _csrf(session.get(f"{base}/admin/deliveries").text)
    for data in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": token + "x"}):
        answer = session.post(f"{base}/admin/sign-out", data=data, allow_redirects=False)
        assert answer.status_code == 403
        assert "did not come from this page" in answer.text
        answer = session.post(f"{base}/admin/deliveries/1/replay", data=data, allow_redirects=False)
        assert answer.status_code == 403
    assert session.get(f"{base}/admin/", allow_redirects=False).status_code == 200  # still signed in
    answer = session.post(f"{base}/admin/sign-out", data={"csrf": token}, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/sign-in"
    assert session.get(f"{base}/admin/", allow_redirects=False).status_code == 303


def test_the_replay_button_applies_a_failed_delivery_once_fixed(shop):
    engine, base = shop
    Flaky.broken = True
    order = PlannedOrder("shopify", 9100, "late@example.com", (Line(plan.Decimal("42.00"), 1),))
    body = json.dumps(_shopify_order(order, "paid", datetime(2026, 3, 20, 10, tzinfo=UTC), [], False)).encode()
    outcome = engine.ingest("shopify", "orders/paid", body)
    assert outcome.status == "failed" and "the bonus service is down" in outcome.error
    session = signed_in(base)
    assert '<a href="/admin/deliveries">1 delivery could not be applied.</a>' in session.get(f"{base}/admin/").text
    page = session.get(f"{base}/admin/deliveries")
    assert f'id="delivery-{outcome.inbox_id}"' in page.text and "the bonus service is down" in page.text
    token = _csrf(page.text)

    answer = session.post(f"{base}/admin/deliveries/{outcome.inbox_id}/replay", data={"csrf": token})
    assert "replayed: failed" in answer.text  # still down: it says so, and the delivery stays listed
    assert f'id="delivery-{outcome.inbox_id}"' in answer.text

    Flaky.broken = False
    answer = session.post(f"{base}/admin/deliveries/{outcome.inbox_id}/replay", data={"csrf": token})
    assert answer.status_code == 200 and answer.url.endswith("/admin/deliveries")
    assert f"Delivery {outcome.inbox_id} replayed: applied." in answer.text
    assert f'id="delivery-{outcome.inbox_id}"' not in answer.text
    with engine.db.connect() as conn:
        late = engine.identity.find(conn, "late@example.com")
        assert engine.ledger.balances(conn, late)["points"] == 42


def test_customer_search_and_the_customers_page(shop):
    engine, base = shop
    session = signed_in(base)
    many = session.get(f"{base}/admin/customers", params={"q": "example.com"})
    assert many.status_code == 200
    for email in ("ana@example.com", "ben@example.com", "eva@example.com", "fay@example.com"):
        assert email in many.text
    # an exact key (a phone Eva was merged through) leads straight to her page
    eva = session.get(f"{base}/admin/customers", params={"q": "+420 601 111 111"})
    assert re.search(r"/admin/customers/\d+$", eva.url)
    assert "eva@example.com" in eva.text
    assert "order:pos:t1:s" in eva.text  # her till sale's entry, from before the merge
    assert "points expired" in eva.text and "customers merged" in eva.text  # the ledger's reasons, in words
    czech = session.get(eva.url, params={"lang": "cs"}).text
    assert "propadlé body" in czech and "sloučení zákazníků" in czech
    session.get(eva.url, params={"lang": "en"})
    with engine.db.connect() as conn:
        card = engine.identity.view(conn, engine.identity.find(conn, "ana@example.com")).card_code
    by_card = session.get(f"{base}/admin/customers", params={"q": card.lower()})
    assert "ana@example.com" in by_card.text
    # part of an email ("@" is in no card code, so no random code matches too)
    by_part = session.get(f"{base}/admin/customers", params={"q": "fay@"})
    assert "fay@example.com" in by_part.text and "five-off" in by_part.text  # straight to her page: her reward
    assert "<th>Spendable in</th>" in by_part.text
    assert "<td>pos, shopify, woocommerce</td>" in by_part.text  # five-off names no channels: every one
    nobody = session.get(f"{base}/admin/customers", params={"q": "zed@nowhere.example"})
    assert "Nobody matches" in nobody.text
    # a NUL character, which PostgreSQL takes in no text, is searched without
    by_nul = session.get(f"{base}/admin/customers", params={"q": "fay\x00@"})
    assert by_nul.status_code == 200 and "fay@example.com" in by_nul.text
    assert session.get(f"{base}/admin/customers/999999").status_code == 404


def test_the_customers_page_is_paged_counts_them_and_downloads_them_all(shop, monkeypatch):
    engine, base = shop
    monkeypatch.setattr("engine.web.pages.admin.CUSTOMERS_PAGE", 2)
    session = signed_in(base)
    with engine.db.connect() as conn:
        ids = conn.execute(select(customers.c.id).where(customers.c.merged_into.is_(None))
                           .order_by(customers.c.id.desc())).scalars().all()
    assert len(ids) >= 5
    first = session.get(f"{base}/admin/customers").text
    assert f"{len(ids)} customers, newest first." in first
    seen, page, pages = [], first, 1
    while True:
        seen += [int(i) for i in re.findall(r'href="/admin/customers/(\d+)"', page)]
        older = re.search(r'href="/admin/customers\?before=(\d+)"', page)
        if pages > 1:
            assert 'href="/admin/customers">← Newest' in page
        if older is None:
            break
        page = session.get(f"{base}/admin/customers", params={"before": older.group(1)}).text
        pages += 1
    assert seen == ids and pages == (len(ids) + 1) // 2  # every customer once, newest first
    assert session.get(f"{base}/admin/customers", params={"before": "x"}).text == first  # nonsense: the first page
    # a search with more matches than a page says so
    many = session.get(f"{base}/admin/customers", params={"q": "example.com"}).text
    assert "Only the first 2 matches are shown" in many and "before=" not in many
    # the CSV: every customer, for Excel (a byte-order mark), signed in only
    download = session.get(f"{base}/admin/customers.csv")
    assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="regulars-customers-\d{4}-\d{2}-\d{2}\.csv"',
                        download.headers["content-disposition"])
    assert download.content.startswith(b"\xef\xbb\xbfid,email,phone,")
    from engine.exports import csv_lines

    assert download.content.decode("utf-8-sig") == "".join(csv_lines(engine))
    assert len(download.content.decode("utf-8-sig").splitlines()) == len(ids) + 1
    assert requests.get(f"{base}/admin/customers.csv", allow_redirects=False).status_code == 303


def test_the_ledger_is_paged(shop):
    engine, base = shop
    for number in range(55):
        engine.ingest("pos", "sale", json.dumps({
            "id": f"many{number}", "terminal": "t1", "occurred_at": "2026-03-10T09:00:00Z",
            "customer": {"email": "ana@example.com"},
            "lines": [{"sku": "X", "quantity": 1, "unit_price": "1.00"}]}).encode())
    session = signed_in(base)
    with engine.db.connect() as conn:
        ana = engine.identity.find(conn, "ana@example.com")
    first = session.get(f"{base}/admin/customers/{ana}")
    assert "Page 1 of 2" in first.text and "Older" in first.text
    second = session.get(f"{base}/admin/customers/{ana}", params={"page": 1})
    assert "Page 2 of 2" in second.text and "Newer" in second.text
    assert "order:shopify:" in second.text  # the oldest entries come last


def test_the_programme_shows_the_configuration_without_secrets(shop):
    engine, base = shop
    engine.config.tables = {**engine.config.tables,  # as if plugins.toml had it (a new dict: TABLES stays)
                            "plugins": {"flaky-bonus": {"api_token": "s3cr3t-value", "rate": 2}}}
    session = signed_in(base)
    page = session.get(f"{base}/admin/programme")
    assert page.status_code == 200
    assert "[rules.points]" in page.text and "per_unit" in page.text and "five-off" in page.text
    assert "flaky-bonus" in page.text and "regulars_order_awards" in page.text
    assert "s3cr3t-value" not in page.text and "api_token" in page.text
    assert "€0.10" in page.text  # the value of a point


def test_changing_the_password_or_removing_the_user_ends_their_sessions(shop):
    engine, base = shop
    from engine.web.pages.admin import remove_user, set_password

    session = signed_in(base)
    set_password(engine, "owner", "another good password")
    assert session.get(f"{base}/admin/", allow_redirects=False).status_code == 303
    session = signed_in(base, password="another good password")
    remove_user(engine, "owner")
    assert session.get(f"{base}/admin/", allow_redirects=False).status_code == 303


def test_the_overview_figures_and_channels(shop):
    engine, base = shop
    session = signed_in(base)
    page = session.get(f"{base}/admin/", params={"to": "2026-03", "channel": "pos"})
    assert page.status_code == 200
    fmt = Formats("en", "EUR")
    wanted = plan.expected("month", "pos", datetime.now(UTC).date())
    shown = _figures(page.text)
    assert shown["points_spent"] == format_value(fmt, "points", wanted["points_spent"][-1])
    assert shown["active_members"] == format_value(fmt, "count", wanted["active_members"][-1])
    assert shown["points_liability"] == "–"
    assert "Points are one balance across channels" in page.text
    weekly = session.get(f"{base}/admin/", params={"to": "2026-03-31", "period": "week"})
    assert weekly.status_code == 200 and weekly.text.count('class="chart"') == len(plan.metrics.METRICS)


def test_a_period_not_over_yet_is_said_so_far_beneath_the_last_one_that_is(shop):
    """On the 1st of a month its retention is 0 % (nobody came back yet): a
    figure of the period alone is shown for the last period that is over, and
    the current one "so far"; a figure to date (active members, the
    liability) is today's."""
    engine, base = shop
    session = signed_in(base)
    zone = plan.metrics.recorder(engine).zone
    now = datetime.now(UTC)
    today = now.astimezone(zone).date()
    sales = [now] + [datetime.combine(plan.metrics.previous_period(plan.metrics.period_start(today, period), period)
                                      + timedelta(days=1), time(12), zone) for period in ("month", "week")]
    for number, when in enumerate(sales):  # points in the last periods that are over, and in the current ones
        engine.ingest("pos", "sale", json.dumps({
            "id": f"recent{number}", "terminal": "t1", "occurred_at": when.isoformat(),
            "customer": {"email": "ana@example.com"},
            "lines": [{"sku": "X", "quantity": 1, "unit_price": f"{20 + number}.00"}]}).encode())
    for period in ("month", "week"):
        today = datetime.now(UTC).astimezone(zone).date()
        html = session.get(f"{base}/admin/", params={"period": period}).text
        begin = plan.metrics.period_start(today, period)
        before = plan.metrics.previous_period(begin, period)
        found = plan.metrics.compute(engine, [m.name for m in plan.metrics.METRICS], before, today, None, period,
                                     today)
        fmt = Formats("en", "EUR")
        days = (today - begin).days + 1
        for metric in plan.metrics.METRICS:
            card = re.search(rf'data-metric="{metric.name}">(.*?)</article>', html, re.S).group(1)
            when = re.search(r'<span class="muted when">([^<]*)</span>', card).group(1)
            value = re.search(r'<span class="value">([^<]*)</span>', card).group(1)
            (_, past), (_, current) = found[metric.name]
            def label(day, period=period):
                return _label(day, period, "en")

            if metric.per_period:
                assert (when, value) == (label(before), format_value(fmt, metric.unit, past)), metric.name
                assert (f"{label(begin)} so far ({days} day{'' if days == 1 else 's'}): "
                        f"{format_value(fmt, metric.unit, current)}") in card, metric.name
                assert ('class="dot partial"' in card) == (current is not None), metric.name  # drawn hollow
                assert ('class="dot last"' in card) == (past is not None), metric.name  # the figure's point
            else:
                assert (when, value) == (label(begin), format_value(fmt, metric.unit, current)), metric.name
                assert "so far" not in card and "partial" not in card
        assert found["points_issued"][0][1] > 0 and found["points_issued"][1][1] > 0  # (the sales above)
        assert "shown for the last period that is over" in html
    # a period that is over (March 2026, from ?to=) has no "so far"
    past = session.get(f"{base}/admin/", params={"to": "2026-03"}).text
    assert "so far" not in past and "partial" not in past


def _figures(html: str) -> dict[str, str]:
    found = {}
    for name, value in re.findall(r'data-metric="(\w+)">.*?<span class="value">([^<]*)</span>', html, re.S):
        found[name] = value
    return found


# -- the commands -------------------------------------------------------------------------------------


def test_the_admin_and_metrics_commands(make_engine):
    engine = make_engine(plan.TABLES)
    engine.ensure_schema()
    context = Context(None)
    context._engine = engine
    admin, metrics_group = admin_commands
    runner = CliRunner(env={"COLUMNS": "200"})

    def run(group, *args, stdin=None):
        return runner.invoke(group, list(args), obj=context, input=stdin)

    done = run(admin, "add", "clerk", "--password-stdin", stdin="a fine password\n")
    assert done.exit_code == 0, done.output
    assert run(admin, "add", "clerk", "--password-stdin", stdin="a fine password\n").exit_code == 1
    short = run(admin, "add", "shorty", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "at least 8 characters" in short.output
    prompted = run(admin, "add", "owner", stdin="twice the same\ntwice the same\n")
    assert prompted.exit_code == 0, prompted.output
    listed = run(admin, "list", "--json")
    assert [u["username"] for u in json.loads(listed.output)] == ["clerk", "owner"]
    assert run(admin, "passwd", "clerk", "--password-stdin", stdin="another password\n").exit_code == 0
    from engine.web.pages.admin import authenticate

    assert authenticate(engine, "clerk", "another password") is not None
    assert authenticate(engine, "clerk", "a fine password") is None
    assert run(admin, "remove", "clerk").exit_code == 0
    assert run(admin, "remove", "clerk").exit_code == 1

    from engine import metrics

    metrics.ensure_built(engine)
    plan.feed(engine)
    shown = run(metrics_group, "show", "--to", "2026-03", "--periods", "6", "--json")
    assert shown.exit_code == 0, shown.output
    data = {m["name"]: [v["value"] for v in m["values"]] for m in json.loads(shown.output)["metrics"]}
    wanted = plan.expected("month", None, datetime.now(UTC).date())
    assert data["points_issued"] == wanted["points_issued"]
    assert data["points_liability"] == [str(v) for v in wanted["points_liability"]]
    table = run(metrics_group, "show", "--to", "2026-03", "--channel", "shopify")
    assert table.exit_code == 0 and "retention" in table.output and "2026-03" in table.output
    assert run(metrics_group, "show", "--channel", "ebay").exit_code == 1
    # On 80 columns: a figure per row, the latest months that fit, nothing cut.
    from engine import cli_admin

    wide = cli_admin.console.width
    cli_admin.console.width = 80
    try:
        narrow = run(metrics_group, "show", "--to", "2026-03")
    finally:
        cli_admin.console.width = wide
    assert narrow.exit_code == 0 and "…" not in narrow.output, narrow.output
    assert "liability" in narrow.output and "2026-03" in narrow.output and "earlier months left out" in narrow.output
    assert max(len(line) for line in narrow.output.splitlines()) <= 80
    assert run(metrics_group, "rebuild").exit_code == 0


# -- a real browser ----------------------------------------------------------------------------------


def test_in_a_browser_sign_in_read_the_figures_and_open_a_customer(shop, browser_page):
    engine, base = shop
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{base}/admin/?to=2026-03")
    assert "/admin/sign-in" in page.url
    page.fill("#username", "owner")
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "Wrong username or password."
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector(".metrics")
    assert page.url.endswith("/admin/?to=2026-03")

    # every figure on the page is the oracle's, for March 2026 over all channels
    fmt = Formats("en", "EUR")
    wanted = plan.expected("month", None, datetime.now(UTC).date())
    for metric in plan.metrics.METRICS:
        card = page.locator(f'[data-metric="{metric.name}"]')
        assert card.locator(".value").inner_text() == format_value(fmt, metric.unit, wanted[metric.name][-1]), metric.name
        assert card.locator(".when").inner_text() == "Mar 2026"
        assert card.locator("svg.chart circle").count() >= 1
    retention = page.locator('[data-metric="retention_rate"]')
    retention.locator("summary").click()
    assert "previous period" in retention.locator("details p").first.inner_text()
    screenshot(page, "admin")

    # the channel menu applies at once (admin.js)
    page.select_option("#channel", "pos")
    page.wait_for_url(re.compile(r"channel=pos"))
    wanted_pos = plan.expected("month", "pos", datetime.now(UTC).date())
    shown = page.locator('[data-metric="active_members"] .value').inner_text()
    assert shown == format_value(fmt, "count", wanted_pos["active_members"][-1])

    # a customer: search by name, her page
    page.click("nav.admin-nav >> text=Customers")
    page.fill("#q", "eva")
    page.press("#q", "Enter")
    page.wait_for_selector("h2:has-text('Ledger')")
    assert "eva@example.com" in page.content()
    assert page.locator("table.ledger tbody tr").count() >= 5
    # goodwill points with a note (the form: engine/adjustments.py)
    before = int(page.locator(".customer-facts .big").inner_text().replace(",", ""))
    page.fill("#adjust-amount", "25")
    page.click("#adjust button[type=submit]")  # no note: the browser asks for one, nothing is sent
    assert page.locator("#outcome").count() == 0
    page.fill("#adjust-note", "a parcel lost by the courier")
    page.click("#adjust button[type=submit]")
    page.wait_for_selector("#outcome")
    assert page.locator("#outcome").inner_text() == f"Adjusted points by +25. The balance is now {before + 25:,}."
    assert page.locator(".customer-facts .big").inner_text() == f"{before + 25:,}"
    assert "adjusted by hand: a parcel lost by the courier (admin:owner)" in page.locator("table.ledger").inner_text()
    screenshot(page, "admin-customer")

    page.click("nav.admin-nav >> text=Sign out")
    page.wait_for_url(re.compile(r"/admin/sign-in$"))
    page.goto(f"{base}/admin/")
    assert "/admin/sign-in" in page.url


def test_the_overview_says_when_the_figures_need_a_rebuild(shop, monkeypatch):
    engine, base = shop
    from sqlalchemy import delete

    from engine import metrics
    from engine.db.models import metric_state

    with engine.db.begin() as conn:
        conn.execute(delete(metric_state))
    monkeypatch.setattr(metrics, "AUTO_REBUILD_LIMIT", 10)
    page = signed_in(base).get(f"{base}/admin/")
    assert page.status_code == 200
    assert "The figures are not ready yet." in page.text and "regulars metrics rebuild" in page.text


def test_a_customer_s_ledger_and_orders_are_newest_first_by_when_they_happened(shop):
    """A sale the till sends late (an offline batch, a backfill) is written
    last but happened first: it is listed below the newer ones."""
    engine, base = shop
    for sale, day in (("new", "2026-05-20"), ("old", "2026-04-08")):  # the older one delivered last
        outcome = engine.ingest("pos", "sale", json.dumps({
            "id": f"when-{sale}", "terminal": "t1", "occurred_at": f"{day}T09:00:00Z",
            "customer": {"email": "when@example.com"},
            "lines": [{"sku": "X", "quantity": 1, "unit_price": "7.00"}]}).encode())
        assert outcome.status == "applied", outcome
    with engine.db.connect() as conn:
        who = engine.identity.find(conn, "when@example.com")
    page = signed_in(base).get(f"{base}/admin/customers/{who}").text
    ledger, orders = page.split("Recent orders", 1)
    assert ledger.index("t1:when-new") < ledger.index("t1:when-old")
    assert orders.index("t1:when-new") < orders.index("t1:when-old")


def test_staff_correct_or_forget_a_customer_s_birthday_on_their_page(shop):
    engine, base = shop
    session = signed_in(base)
    page = session.get(f"{base}/admin/customers/1")
    assert re.search(r'<dd id="birthday">–', page.text)
    token = _csrf(page.text)
    answer = session.post(f"{base}/admin/customers/1/birthday", data={"csrf": token, "birthday": "1990-05-12"})
    assert "Birthday saved." in answer.text and "May 12, 1990" in answer.text
    assert customer_summary(engine, 1)["birthday"] == "1990-05-12"
    for wrong in ("1990-02-30", "1850-01-01", "2999-01-01", "<b>"):
        answer = session.post(f"{base}/admin/customers/1/birthday", data={"csrf": token, "birthday": wrong})
        assert "That is not a date we can take as a birthday." in answer.text
    assert customer_summary(engine, 1)["birthday"] == "1990-05-12"
    answer = session.post(f"{base}/admin/customers/1/birthday", data={"csrf": token, "birthday": ""})
    assert "Birthday saved." in answer.text and customer_summary(engine, 1)["birthday"] is None
    assert session.post(f"{base}/admin/customers/1/birthday", data={"csrf": "x", "birthday": ""}).status_code == 403
