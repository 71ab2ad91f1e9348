"""The cashier's counter (/counter) in a real browser, on the till's API: signing
in with a terminal key, finding a customer by card code, email or the camera,
recording sales and visits (and saying a reward code a sale sent that the
engine did not use), redeeming, and the offline queue: actions kept in
the browser with their keys and sent as one batch when the network is back,
never counted twice (a lost answer, a resent batch)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from contextlib import ExitStack
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from engine import terminals
from engine.customers import customer_summary
from engine.web import create_app
from tests.conftest import screenshot
from tests.serving import serve_app
from tests.test_api import call

TABLES = {
    "engine": {"currency": "EUR"},
    "rules": {"points": {"per_unit": 1},
              "stamps": {"coffee": {"required": 6, "reward": "free-coffee"}}},  # orders and visits
    "rewards": {"five-off": {"kind": "fixed_amount", "cost": 50, "value": "5.00"},
                "tote-bag": {"kind": "free_product", "cost": 400, "sku": "TOTE"},
                "free-coffee": {"kind": "free_product", "sku": "COFFEE"},
                "web-ten": {"kind": "percentage", "cost": 30, "value": 10, "channels": ["shopify"]}},
    "connectors": {"pos": {}, "shopify": {"shop": "kavarna.myshopify.com"}},  # (web-ten is spent there)
    "branding": {"name": "Kavárna U Mostu"},
}
STATIC = Path(__file__).resolve().parents[1] / "engine" / "web" / "static"


@pytest.fixture
def till(make_engine, monkeypatch):
    """(engine, stack, base URL, terminal key, Jana's card code): the app served
    on loopback with one terminal and one customer. Closing ``stack`` stops the
    server."""
    monkeypatch.setenv("REGULARS_SECRET_KEY", "counter test key")
    engine = make_engine(TABLES)
    engine.ensure_schema()
    _, key = terminals.add_terminal(engine.db, "Main Street", "till 1")
    with ExitStack() as stack:
        base = stack.enter_context(serve_app(create_app(engine, secrets={}, background=False)))
        status, answer = call(f"{base}/api/v1/customers", "POST", {
            "email": "jana@example.cz", "phone": "+420 601 123 456", "first_name": "Jana", "last_name": "Nováková"},
            key, "enrol-jana")
        assert status == 201, answer
        yield engine, stack, base, key, answer["customer"]["card_code"]


def summary(engine, card: str) -> dict:
    return customer_summary(engine, card)


def sign_in(page, base: str, key: str, lang: str | None = None) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/counter" + (f"?lang={lang}" if lang else ""))
    page.fill("#signin-key", key)
    page.click("#signin-button")
    expect(page.locator("#till")).to_be_visible()


def find(page, query: str) -> None:
    page.fill("#find-key", query)
    page.click("#find-button")


def queued(page) -> list[dict]:
    return page.evaluate("""() => Object.keys(localStorage).filter(k => k.startsWith('regulars.counter.queue.'))
                                  .flatMap(k => JSON.parse(localStorage.getItem(k)))""")


# -- the page over plain HTTP ------------------------------------------------------------


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("?", "#")):
                self.urls.append(value)


def test_the_counter_page_serves_and_everything_it_loads_is_local(till):
    engine, _, base, _, _ = till
    with urllib.request.urlopen(f"{base}/counter") as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page = response.read().decode()
    parser = _Assets()
    parser.feed(page)
    assert any(u.endswith("/static/counter.js") for u in parser.urls)
    assert any(u.endswith("/static/counter.css") for u in parser.urls)
    for url in parser.urls:
        absolute = urljoin(f"{base}/counter", url)
        assert urlparse(absolute).netloc == urlparse(base).netloc, f"{url} is not served by regulars"
        with urllib.request.urlopen(absolute) as asset:
            assert asset.status == 200
    assert not re.search(r"""(src|href)=["'](https?:)?//(?!127\.0\.0\.1:)""", page)
    with urllib.request.urlopen(f"{base}/counter-sw.js") as worker:
        assert worker.status == 200 and "javascript" in worker.headers["content-type"]

    # Every message counter.js shows is in the page, from the template (so it is translated).
    messages = json.loads(re.search(r'<script type="application/json" id="messages">(.*?)</script>', page, re.S)[1])
    used = set(re.findall(r"\bt\('([a-z_]+)'", (STATIC / "counter.js").read_text()))
    assert used and used <= set(messages), f"missing from the template's messages: {sorted(used - set(messages))}"
    config = json.loads(re.search(r'id="counter-config">(.*?)</script>', page, re.S)[1])
    assert config["cards"] == [{"name": "coffee", "required": 6, "reward": "free-coffee"}]
    assert [r["name"] for r in config["rewards"]] == ["five-off", "tote-bag"]  # free-coffee is earned, not bought
    assert config["elsewhere"] == ["web-ten"]  # kept for the Shopify shop
    with urllib.request.urlopen(f"{base}/counter?lang=cs") as response:
        assert response.status == 200 and '<html lang="cs">' in response.read().decode()


# -- in the browser ----------------------------------------------------------------------


def test_signing_in_refuses_a_wrong_key_and_keeps_a_good_one_until_sign_out(till, browser_page):
    from playwright.sync_api import expect

    _, _, base, key, _ = till
    page = browser_page
    page.goto(f"{base}/counter")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#till")).to_be_hidden()
    page.fill("#signin-key", "rt_not-a-key-of-this-shop")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_contain_text("unknown or revoked")
    expect(page.locator("#till")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('regulars.counter.key')") is None

    page.fill("#signin-key", key)
    page.click("#signin-button")
    expect(page.locator("#till")).to_be_visible()
    expect(page.locator("#net")).to_contain_text("Online")
    assert json.loads(page.evaluate("localStorage.getItem('regulars.counter.key')")) == key
    page.reload()  # a shared till: the key survives a reload
    expect(page.locator("#till")).to_be_visible()

    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("localStorage.getItem('regulars.counter.key')") is None

    # A key revoked while signed in: the next request signs the till out, saying why.
    sign_in(page, base, key)
    for terminal in terminals.listing(till[0].db):
        terminals.revoke(till[0].db, terminal.id)
    find(page, "jana@example.cz")
    expect(page.locator("#signin-error")).to_contain_text("no longer works")


def test_find_a_customer_by_card_code_and_by_email_then_record_a_sale(till, browser_page):
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    for n, price in enumerate(("30.00", "25.00")):  # some history: 55 points, 2 stamps
        status, _ = call(f"{base}/api/v1/sales", "POST", {"id": f"old-{n}", "customer": {"card_code": card},
                                                           "lines": [{"quantity": 1, "unit_price": price}]}, key, f"old-{n}")
        assert status == 200
    page = browser_page
    sign_in(page, base, key)
    expect(page.locator("#scan-button")).to_be_hidden()  # no BarcodeDetector in this Chromium: typing it is

    find(page, card.lower())  # typed, in lower case
    expect(page.locator("#customer-name")).to_have_text("Jana Nováková")
    expect(page.locator("#customer-points")).to_have_text("55")
    expect(page.locator(".stampcard[data-card=coffee] .hole.full")).to_have_count(2)
    expect(page.locator("#redeem-list li[data-reward=five-off] button")).to_be_enabled()
    expect(page.locator("#redeem-list li[data-reward=tote-bag] button")).to_be_disabled()
    expect(page.locator("#redeem-list li[data-reward=tote-bag]")).to_contain_text("345 more points")
    # the names as the customer's card page writes them, not the configuration's slugs
    expect(page.locator("#redeem-list li[data-reward=tote-bag] strong")).to_have_text("Tote bag")
    expect(page.locator(".stampcard[data-card=coffee] .head span").first).to_have_text("Coffee")

    find(page, "nobody@example.cz")
    expect(page.locator("#find-message")).to_contain_text("No customer matches")
    expect(page.locator("#customer")).to_be_hidden()
    find(page, "Jana@Example.cz")
    expect(page.locator("#customer-name")).to_have_text("Jana Nováková")

    # An amount and an item with a SKU: 10.00 + 2 × 3.20 = 16.40, 16 points, one stamp.
    page.fill("#sale-amount", "10,00")
    page.click("#add-line")
    page.fill("#sale-lines .line input[name=sku]", "COFFEE")
    page.fill("#sale-lines .line input[name=quantity]", "2")
    page.fill("#sale-lines .line input[name=unit_price]", "3.20")
    expect(page.locator("#sale-total")).to_contain_text("16.40")
    page.click("#sale-button")
    expect(page.locator("#result")).to_contain_text("recorded")
    expect(page.locator("#customer-points")).to_have_text("71")
    expect(page.locator("#customer-delta")).to_have_text("+16 points")
    expect(page.locator(".stampcard[data-card=coffee] .hole.full")).to_have_count(3)
    expect(page.locator("#sale-amount")).to_have_value("")
    now = summary(engine, card)
    assert (now["points"], now["stamps"]) == (71, {"coffee": 3})
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "counter")

    # Refused input says so and sends nothing.
    page.fill("#sale-amount", "12.5.0")
    page.click("#sale-button")
    expect(page.locator("#result")).to_contain_text("Give an amount")
    assert summary(engine, card)["points"] == 71

    # One point is "1 point": the page gives each plural form, the browser's
    # Intl.PluralRules picks one.
    page.fill("#sale-amount", "1.00")
    page.click("#sale-button")
    expect(page.locator("#customer-points")).to_have_text("72")
    expect(page.locator("#customer-delta")).to_have_text("+1 point")


def test_enrol_a_new_customer_record_a_sale_and_void_it(till, browser_page):
    """Nobody found by an email: the counter offers to enrol them (a card at
    once); a sale just recorded can be voided, and what it earned goes back."""
    from playwright.sync_api import expect

    engine, _, base, key, _ = till
    page = browser_page
    sign_in(page, base, key)
    find(page, "petr@example.cz")
    expect(page.locator("#find-message")).to_contain_text("No customer matches")
    expect(page.locator("#enrol-button")).to_have_text("Enrol petr@example.cz as a new customer")
    page.fill("#enrol-birthday", "1988-07-14")  # optional: for the birthday bonus
    page.click("#enrol-button")
    expect(page.locator("#customer-points")).to_have_text("0")
    card = summary(engine, "petr@example.cz")["card_code"]
    from sqlalchemy import select

    from engine.db.models import customers

    with engine.db.connect() as conn:
        born = conn.execute(select(customers.c.birthday).where(customers.c.email == "petr@example.cz")).scalar_one()
    assert born.date().isoformat() == "1988-07-14"
    expect(page.locator("#result")).to_have_text(f"New customer enrolled: card {card}.")
    expect(page.locator("#enrol-button")).to_be_hidden()
    find(page, "not an email")  # nobody, and nothing to enrol by
    expect(page.locator("#enrol-button")).to_be_hidden()
    find(page, "eva@example.cz")  # the next one offered starts with no birthday
    expect(page.locator("#enrol-birthday")).to_have_value("")
    find(page, card)

    page.fill("#sale-amount", "12.00")
    page.click("#sale-button")
    expect(page.locator("#customer-points")).to_have_text("12")
    expect(page.locator("#void-button")).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#void-button")
    expect(page.locator("#result")).to_contain_text("is void")
    expect(page.locator("#customer-points")).to_have_text("0")
    expect(page.locator("#void-button")).to_be_hidden()
    assert summary(engine, card)["points"] == 0
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []


def test_any_sale_recorded_here_can_be_voided_from_the_list_of_sales(till, browser_page):
    """Not only the sale just recorded: every sale this device recorded is on
    its list, and any of them can be voided; a voided one says so and can't
    be voided again. Signing out forgets the list (it holds names)."""
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    page = browser_page
    sign_in(page, base, key)
    find(page, card)
    for amount in ("12.00", "5.00", "3.00"):
        page.fill("#sale-amount", amount)
        page.click("#sale-button")
        expect(page.locator("#result")).to_contain_text(f"Sale of €{amount} recorded")
    expect(page.locator("#customer-points")).to_have_text("20")
    rows = page.locator("#sales-list li")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("€3.00")  # newest first
    expect(rows.nth(2)).to_contain_text("€12.00")
    expect(rows.nth(2)).to_contain_text("Jana Nováková")

    page.once("dialog", lambda dialog: dialog.accept())
    rows.nth(2).get_by_role("button", name="Void").click()  # the first sale, two sales ago
    expect(page.locator("#result")).to_contain_text("The sale of €12.00 is void")
    expect(page.locator("#customer-points")).to_have_text("8")
    expect(rows.nth(2)).to_contain_text("voided")
    expect(rows.nth(2).get_by_role("button")).to_have_count(0)
    expect(page.locator("#void-button")).to_be_hidden()  # "void this sale" would be ambiguous now
    assert summary(engine, card)["points"] == 8

    page.once("dialog", lambda dialog: dialog.dismiss())  # changed their mind: nothing happens
    rows.nth(0).get_by_role("button", name="Void").click()
    expect(rows.nth(0).get_by_role("button", name="Void")).to_be_enabled()
    assert summary(engine, card)["points"] == 8
    page.reload()  # the list is kept on the device
    expect(page.locator("#sales-list li.voided")).to_have_count(1)
    expect(page.locator("#sales-list li.recorded")).to_have_count(2)
    with engine.db.connect() as conn:
        assert engine.ledger.audit(conn) == []

    page.click("#signout")
    sign_in(page, base, key)
    expect(page.locator("#sales")).to_be_hidden()


def test_redeem_a_reward_and_spend_it_in_the_next_sale(till, browser_page):
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    call(f"{base}/api/v1/sales", "POST", {"id": "old", "customer": {"card_code": card},
                                          "lines": [{"quantity": 1, "unit_price": "60.00"}]}, key, "old")
    page = browser_page
    sign_in(page, base, key)
    find(page, "+420601123456")  # by phone
    expect(page.locator("#customer-points")).to_have_text("60")
    page.click("#redeem-list li[data-reward=five-off] button")
    expect(page.locator("#result")).to_contain_text("Redeemed five-off")
    expect(page.locator("#customer-points")).to_have_text("10")
    expect(page.locator("#customer-rewards-list li")).to_have_count(1)
    code = summary(engine, card)["rewards"][0]["code"]
    assert summary(engine, card)["points"] == 10
    expect(page.locator("#customer-rewards-list")).to_contain_text(code)
    expect(page.locator("#redeem-list li[data-reward=five-off] button")).to_be_disabled()

    page.check(f"#customer-rewards-list input[value='{code}']")
    page.fill("#sale-amount", "20")
    page.click("#sale-button")
    expect(page.locator("#customer-points")).to_have_text("30")
    expect(page.locator("#customer-rewards")).to_be_hidden()  # used in that sale
    assert summary(engine, card)["rewards"] == []


def test_a_reward_kept_for_another_channel_is_shown_but_not_offered_for_the_sale(till, browser_page):
    """``web-ten`` lists ``channels = ["shopify"]``: the counter shows it among
    the customer's rewards, saying it can't be spent there, with nothing to
    tick; a sale that carries its code anyway leaves it issued."""
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    call(f"{base}/api/v1/sales", "POST", {"id": "old", "customer": {"card_code": card},
                                          "lines": [{"quantity": 1, "unit_price": "90.00"}]}, key, "old")
    web = engine.redeem(card, "web-ten")
    here = engine.redeem(card, "five-off", channel="pos")
    page = browser_page
    sign_in(page, base, key)
    find(page, card)
    expect(page.locator("#customer-rewards-list li")).to_have_count(2)
    kept = page.locator("#customer-rewards-list li[data-reward=web-ten]")
    expect(kept).to_contain_text(web.code)
    expect(kept).to_contain_text("can't be spent at the till")
    expect(kept.locator("input")).to_have_count(0)
    expect(page.locator(f"#customer-rewards-list input[value='{here.code}']")).to_be_enabled()

    status, _ = call(f"{base}/api/v1/sales", "POST", {"id": "with-code", "customer": {"card_code": card},
                                                       "lines": [{"quantity": 1, "unit_price": "10.00"}],
                                                       "reward_codes": [web.code, here.code]}, key, "with-code")
    assert status == 200
    assert [r["code"] for r in summary(engine, card)["rewards"]] == [web.code]


def test_a_sale_says_which_ticked_reward_code_was_not_used_and_why(till, browser_page):
    """The sale's answer says what became of each code (``codes``): a code the
    engine took says nothing more; one spent meanwhile by another order (the
    page still shows it, as it was when the customer was found) is said next
    to the sale's result, with why and that its reward is not to be given."""
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    call(f"{base}/api/v1/sales", "POST", {"id": "old", "customer": {"card_code": card},
                                          "lines": [{"quantity": 1, "unit_price": "150.00"}]}, key, "old")
    first, second, third = (engine.redeem(card, "five-off", channel="pos").code for _ in range(3))
    page = browser_page
    sign_in(page, base, key)
    find(page, card)
    expect(page.locator("#customer-rewards-list input[name=reward_code]")).to_have_count(3)
    warnings = page.locator("#result-codes li")

    page.check(f"#customer-rewards-list input[value='{first}']")
    page.fill("#sale-amount", "20")
    page.click("#sale-button")
    expect(page.locator("#result")).to_contain_text("Sale of €20.00 recorded.")
    expect(page.locator(f"#customer-rewards-list input[value='{first}']")).to_have_count(0)  # used
    expect(page.locator("#result-codes")).to_be_attached()
    expect(page.locator("#result-codes")).to_be_hidden()
    expect(warnings).to_have_count(0)

    # Spent at another till while this one still shows it.
    status, answer = call(f"{base}/api/v1/sales", "POST", {
        "id": "elsewhere", "customer": {"card_code": card}, "lines": [{"quantity": 1, "unit_price": "9.00"}],
        "reward_codes": [second]}, key, "elsewhere")
    assert status == 200 and answer["codes"] == [{"code": second, "used": True, "reason": None}]
    page.check(f"#customer-rewards-list input[value='{second}']")
    page.check(f"#customer-rewards-list input[value='{third}']")
    page.fill("#sale-amount", "30")
    page.click("#sale-button")
    expect(page.locator("#result")).to_contain_text("Sale of €30.00 recorded.")
    expect(page.locator("#result-codes")).to_be_visible()
    expect(warnings).to_have_count(1)  # the third was used: nothing about it
    expect(warnings).to_have_text(
        f"Code {second} was not used: already used by another order — don't give its reward.")
    expect(warnings).to_have_attribute("data-reason", "already_used")
    assert summary(engine, card)["rewards"] == []

    # The next sale's result replaces it.
    page.fill("#sale-amount", "5")
    page.click("#sale-button")
    expect(page.locator("#result")).to_contain_text("Sale of €5.00 recorded.")
    expect(page.locator("#result-codes")).to_be_hidden()


def test_a_code_not_used_is_said_in_the_tills_language(till, browser_page):
    """A full stamp card's reward, shown on the till, taken back meanwhile (the
    sale that filled the card was voided): ticked in a sale, it is not used,
    and the till says so, and why, in Czech."""
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    for n in range(5):
        status, _ = call(f"{base}/api/v1/visits", "POST", {"id": f"visit-{n}", "customer": {"card_code": card}},
                         key, f"visit-{n}")
        assert status in (200, 201)
    status, _ = call(f"{base}/api/v1/sales", "POST", {"id": "sixth", "customer": {"card_code": card},
                                                       "lines": [{"quantity": 1, "unit_price": "4.00"}]}, key, "sixth")
    assert status == 200
    [coffee] = summary(engine, card)["rewards"]
    page = browser_page
    sign_in(page, base, key, lang="cs")
    find(page, card)
    expect(page.locator(f"#customer-rewards-list input[value='{coffee['code']}']")).to_be_enabled()
    status, _ = call(f"{base}/api/v1/sales/sixth/void", "POST", {}, key, "void-sixth")
    assert status == 200

    page.check(f"#customer-rewards-list input[value='{coffee['code']}']")
    page.fill("#sale-amount", "3")
    page.click("#sale-button")
    warning = page.locator(f"#result-codes li[data-code='{coffee['code']}']")
    expect(warning).to_have_text(
        f"Kód {coffee['code']} nebyl uplatněn: odměna byla zrušena — odměnu za něj nedávejte.")
    expect(warning).to_have_attribute("data-reason", "voided")
    expect(page.locator("#result-codes")).not_to_contain_text("not used")


def _queue_a_sale_whose_code_is_spent_meanwhile(till, page) -> str:
    """Jana has 60 points and redeems five-off; offline, a €12 sale with its
    code ticked waits on the page; meanwhile another sale (online, €9) spends
    the code. The code."""
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    call(f"{base}/api/v1/sales", "POST", {"id": "old", "customer": {"card_code": card},
                                          "lines": [{"quantity": 1, "unit_price": "60.00"}]}, key, "old")
    code = engine.redeem(card, "five-off", channel="pos").code
    sign_in(page, base, key)
    find(page, card)
    page.context.set_offline(True)
    page.check(f"#customer-rewards-list input[value='{code}']")
    page.fill("#sale-amount", "12")
    page.click("#sale-button")
    expect(page.locator("#waiting-list li[data-topic=sale]")).to_contain_text("€12.00")
    assert queued(page)[0]["line"]["reward_codes"] == [code]
    status, _ = call(f"{base}/api/v1/sales", "POST", {"id": "online", "customer": {"card_code": card},
                                                       "lines": [{"quantity": 1, "unit_price": "9.00"}],
                                                       "reward_codes": [code]}, key, "online")
    assert status == 200
    return code


def test_a_sale_sent_from_the_offline_queue_says_a_code_it_could_not_use(till, browser_page):
    """Offline, a sale with a ticked code waits; meanwhile the code is spent by
    another order. When the batch goes, the result names the sale and the
    code, and why it was not used."""
    from playwright.sync_api import expect

    page = browser_page
    code = _queue_a_sale_whose_code_is_spent_meanwhile(till, page)
    page.context.set_offline(False)
    expect(page.locator("#waiting")).to_be_hidden()
    expect(page.locator("#result")).to_contain_text("sent")
    expect(page.locator("#result-codes li")).to_have_text(
        f"Sale €12.00 · Jana Nováková: code {code} was not used: already used by another order.")


def test_a_batch_that_went_is_said_though_the_next_one_could_not_go(till, browser_page):
    """Offline, a sale with a ticked code waits; the code is spent elsewhere
    meanwhile. Back online, while its batch is on its way, a visit's POST
    fails and the visit is queued; the next batch, with it, can't go. The
    page still says what went (and the code the sale could not use), keeps
    the visit waiting, and the sales list keeps the code's warning."""
    from playwright.sync_api import expect

    engine, _, _, _, card = till
    page = browser_page
    code = _queue_a_sale_whose_code_is_spent_meanwhile(till, page)
    [sale] = queued(page)
    held = []

    def hold_the_first_then_cut(route):
        if not held:
            held.append(route)  # answered below, once the visit is queued
        else:
            route.abort("connectionreset")

    page.route("**/api/v1/batches", hold_the_first_then_cut)
    page.route("**/api/v1/visits", lambda route: route.abort("connectionreset"))
    page.context.set_offline(False)
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(25)
    assert held, "the batch was not sent"
    page.click("#visit-button")
    expect(page.locator("#waiting-list li[data-topic=visit]")).to_have_count(1)
    held[0].fulfill(response=held[0].fetch())

    expect(page.locator("#result")).to_contain_text("Some waiting actions were sent")
    expect(page.locator("#result-codes li")).to_have_text(
        f"Sale €12.00 · Jana Nováková: code {code} was not used: already used by another order.")
    expect(page.locator("#waiting-list li")).to_have_count(1)
    expect(page.locator("#waiting-list li[data-topic=visit] .state")).to_have_text("waiting")
    expect(page.locator(f"#sales-list li[data-key='{sale['key']}'] .code-warning")).to_have_text(
        f"code {code} was not used: already used by another order")
    now = summary(engine, card)
    assert (now["points"], now["stamps"]) == (60 - 50 + 9 + 12, {"coffee": 3})  # the visit is not in yet

    page.unroute("**/api/v1/batches")
    page.click("#send-now")
    expect(page.locator("#waiting")).to_be_hidden()
    expect(page.locator("#result")).to_have_text("The waiting actions were sent.")
    assert summary(engine, card)["stamps"] == {"coffee": 4}


def test_a_refused_redemption_is_said_in_the_tills_language_with_its_numbers(till, browser_page):
    """The till showed 60 points, but 50 were spent elsewhere meanwhile: the
    server refuses, and the till says why in Czech (the API's ``reason`` and
    ``values``), not in the server's English."""
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    call(f"{base}/api/v1/sales", "POST", {"id": "old", "customer": {"card_code": card},
                                          "lines": [{"quantity": 1, "unit_price": "60.00"}]}, key, "old")
    page = browser_page
    sign_in(page, base, key, lang="cs")
    find(page, card)
    expect(page.locator("#customer-points")).to_have_text("60")
    engine.redeem(card, "five-off")  # online, elsewhere
    page.click("#redeem-list li[data-reward=five-off] button")
    expect(page.locator("#result")).to_contain_text("Stojí 50 bodů a zákazník má 10.")
    expect(page.locator("#result")).not_to_contain_text("costs")
    assert summary(engine, card)["points"] == 10


def test_offline_the_counter_queues_visits_and_sends_them_once_when_back(till, browser_page):
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    page = browser_page
    sign_in(page, base, key)
    find(page, "jana@example.cz")
    expect(page.locator("#customer-name")).to_have_text("Jana Nováková")

    page.context.set_offline(True)
    expect(page.locator("#net")).to_contain_text("Offline")
    find(page, "jana@example.cz")  # seen here before: shown as last seen
    expect(page.locator("#customer-note")).to_contain_text("as last seen")
    expect(page.locator("#redeem-list li[data-reward=five-off] button")).to_be_disabled()
    page.click("#visit-button")
    expect(page.locator("#result")).to_contain_text("No connection")
    page.click("#visit-button")
    expect(page.locator("#waiting-count")).to_have_text("Waiting: 2")
    expect(page.locator("#waiting-list li")).to_have_count(2)
    expect(page.locator("#customer-waiting")).to_contain_text("this customer: 2")
    waiting = queued(page)
    assert [item["topic"] for item in waiting] == ["visit", "visit"]
    assert len({item["key"] for item in waiting}) == 2
    assert all(item["line"]["key"] == item["line"]["id"] == item["key"] and item["line"]["occurred_at"]
               for item in waiting)
    assert summary(engine, card)["stamps"] == {"coffee": 0}
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "counter-offline")

    # Back online, the batch's answer is lost on the way (applied, then cut):
    # the page keeps the actions and sends the same batch again.
    lost = []

    def lose_the_first_answer(route):
        if not lost:
            lost.append(route.fetch().json())  # the server applied it...
            route.abort("connectionreset")  # ...and the till never heard
        else:
            route.continue_()

    page.route("**/api/v1/batches", lose_the_first_answer)
    page.context.set_offline(False)
    for _ in range(200):
        if lost:
            break
        page.wait_for_timeout(25)  # route handlers run while Playwright waits
    assert [r["status"] for r in lost[0]["results"]] == ["applied", "applied"]
    assert summary(engine, card)["stamps"] == {"coffee": 2}
    # Not heard back: both still wait, and the batch is kept to be sent as it was.
    expect(page.locator("#waiting-list li .state")).to_have_text(["waiting", "waiting"])
    assert page.evaluate("""() => { const key = JSON.parse(localStorage.getItem('regulars.counter.key'));
        return JSON.parse(localStorage.getItem('regulars.counter.inflight.' + key.slice(0, 10))).keys; }""") == [
        item["key"] for item in waiting]

    page.click("#send-now")
    expect(page.locator("#waiting")).to_be_hidden()
    expect(page.locator("#waiting-count")).to_be_hidden()
    expect(page.locator("#result")).to_contain_text("sent")
    expect(page.locator(".stampcard[data-card=coffee] .hole.full")).to_have_count(2)
    assert queued(page) == []
    assert summary(engine, card)["stamps"] == {"coffee": 2}

    # The same batch sent once more, as a till would after another lost
    # answer, under a new request key: every line is a duplicate.
    replay = page.evaluate("""async () => {
        const key = JSON.parse(localStorage.getItem('regulars.counter.key'));
        const last = JSON.parse(localStorage.getItem('regulars.counter.last-batch.' + key.slice(0, 10)));
        const answer = await fetch('/api/v1/batches', {method: 'POST', body: last.body, headers: {
            'Authorization': 'Bearer ' + key, 'Content-Type': 'application/x-ndjson',
            'Idempotency-Key': crypto.randomUUID()}});
        return {status: answer.status, body: await answer.json(), lines: last.body.trim().split('\\n').length};
    }""")
    assert replay["status"] == 200 and replay["lines"] == 2
    assert [r["status"] for r in replay["body"]["results"]] == ["duplicate", "duplicate"]
    visits = summary(engine, card)
    assert visits["stamps"] == {"coffee": 2} and visits["points"] == 0
    from sqlalchemy import func, select

    from engine.db.models import inbox

    with engine.db.connect() as conn:
        applied = conn.execute(select(func.count()).select_from(inbox).where(
            inbox.c.channel == "pos", inbox.c.topic == "visit", inbox.c.status == "applied")).scalar_one()
    assert applied == 2


def test_a_sale_recorded_offline_is_sent_with_its_own_time_and_key(till, browser_page):
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    page = browser_page
    sign_in(page, base, key)
    page.context.set_offline(True)
    find(page, card)  # never seen on this device: taken on trust, said so
    expect(page.locator("#customer-note")).to_contain_text("can't be checked")
    page.fill("#sale-amount", "8.90")
    page.click("#sale-button")
    expect(page.locator("#waiting-list li[data-topic=sale]")).to_contain_text("€8.90")
    find(page, "someone@example.cz")
    expect(page.locator("#find-message")).to_contain_text("card code only")
    [item] = queued(page)
    page.context.set_offline(False)
    expect(page.locator("#waiting")).to_be_hidden()
    now = summary(engine, card)
    assert (now["points"], now["stamps"]) == (8, {"coffee": 1})
    # sent in a batch, it is on the list of sales, and can be voided from there
    sent = page.locator(f"#sales-list li[data-key='{item['key']}']")
    expect(sent).to_contain_text("€8.90")
    page.once("dialog", lambda dialog: dialog.accept())
    sent.get_by_role("button", name="Void").click()
    expect(sent).to_contain_text("voided")
    assert summary(engine, card)["points"] == 0
    from sqlalchemy import select

    from engine.db.models import orders

    with engine.db.connect() as conn:
        external = conn.execute(select(orders.c.external_id).where(orders.c.channel == "pos")).scalar_one()
    assert external.endswith(":" + item["key"])


def test_a_refused_line_stays_on_the_list_with_its_reason(till, browser_page):
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    page = browser_page
    sign_in(page, base, key)
    find(page, card)
    page.context.set_offline(True)
    page.fill("#sale-amount", "5")
    page.click("#sale-button")
    page.click("#visit-button")
    # A line the server will refuse (as a till might have stored before an upgrade).
    page.evaluate("""() => {
        const name = Object.keys(localStorage).find(k => k.startsWith('regulars.counter.queue.'));
        const queue = JSON.parse(localStorage.getItem(name));
        queue[0].line.lines[0].quantity = 0;
        localStorage.setItem(name, JSON.stringify(queue));
    }""")
    page.context.set_offline(False)
    expect(page.locator("#waiting-list li")).to_have_count(1)
    expect(page.locator("#waiting-list li.refused")).to_contain_text("quantity")
    assert summary(engine, card)["stamps"] == {"coffee": 1}  # the visit went through
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#waiting-list li.refused button")
    expect(page.locator("#waiting")).to_be_hidden()


def test_a_visit_whose_answer_was_lost_is_queued_and_still_counts_once(till, browser_page):
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    page = browser_page
    sign_in(page, base, key)
    find(page, card)

    def applied_then_cut(route):
        route.fetch()  # the server records the visit...
        route.abort("connectionreset")  # ...and its answer never arrives

    page.route("**/api/v1/visits", applied_then_cut)
    page.click("#visit-button")
    expect(page.locator("#result")).to_contain_text("No connection")
    [item] = queued(page)
    assert item["tried"] is True
    assert summary(engine, card)["stamps"] == {"coffee": 1}
    page.unroute("**/api/v1/visits")

    page.click("#send-now")
    page.wait_for_function("() => !document.querySelector('#waiting-list li:not(.refused)')")  # answered
    assert summary(engine, card)["stamps"] == {"coffee": 1}  # once, whatever the batch answered
    if page.locator("#waiting-list li").count():
        # The API answers a line it already had from the live request as a
        # conflict (its stored body differs), so the page says what to check.
        expect(page.locator("#waiting-list li.refused .hint")).to_contain_text("check the balance")


def test_a_reload_without_a_network_still_opens_the_counter_with_what_waits(till, browser_page):
    from playwright.sync_api import expect

    engine, stack, base, key, card = till
    page = browser_page
    sign_in(page, base, key)
    page.wait_for_function("async () => { await navigator.serviceWorker.ready; return true; }")
    page.reload()  # now controlled by the service worker, which keeps the shell
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    find(page, card)
    expect(page.locator("#customer-name")).to_have_text("Jana Nováková")
    page.context.set_offline(True)
    page.click("#visit-button")
    expect(page.locator("#waiting-list li")).to_have_count(1)

    stack.close()  # the server is gone, not only the browser's network
    response = page.reload()
    assert response is not None and response.from_service_worker
    expect(page.locator("#till")).to_be_visible()
    expect(page.locator("#net")).to_contain_text("Offline")
    expect(page.locator("#waiting-count")).to_have_text("Waiting: 1")
    expect(page.locator("#waiting-list li[data-topic=visit]")).to_contain_text("Jana Nováková")


FAKE_CAMERA = """
(() => {
  const canvas = document.createElement('canvas');
  canvas.width = 64; canvas.height = 64;
  const paint = () => { const g = canvas.getContext('2d'); g.fillStyle = '#888'; g.fillRect(0, 0, 64, 64); };
  setInterval(paint, 50); paint();
  Object.defineProperty(navigator, 'mediaDevices', {value: {
    getUserMedia: async (wanted) => { window.__cameraAsked = wanted; return canvas.captureStream(10); },
  }});
  let frames = 0;
  window.BarcodeDetector = class {
    constructor(options) { window.__formats = options.formats; }
    static async getSupportedFormats() { return ['qr_code', 'ean_13']; }
    async detect(source) { frames += 1; return frames < 3 ? [] : [{rawValue: window.__qr, format: 'qr_code'}]; }
  };
})();
"""


def test_scanning_the_qr_code_with_the_camera_finds_the_customer(till, browser_page):
    from playwright.sync_api import expect

    _, _, base, key, card = till
    page = browser_page
    page.add_init_script(FAKE_CAMERA.replace("window.__qr", json.dumps(card)))
    sign_in(page, base, key)
    expect(page.locator("#scan-button")).to_be_visible()
    page.click("#scan-button")
    expect(page.locator("#customer-name")).to_have_text("Jana Nováková")
    expect(page.locator("#scanner")).to_be_hidden()
    assert page.evaluate("window.__formats") == ["qr_code"]
    assert page.evaluate("window.__cameraAsked.video.facingMode.ideal") == "environment"


def test_the_counter_asks_a_known_customer_for_their_birthday_when_it_brings_a_gift(make_engine, monkeypatch,
                                                                                     browser_page):
    """With a birthday gift on, a customer found without a birthday gets a
    field for it; saved, it is theirs (and the field goes). Without a gift
    or bonus nothing is asked (every other test here)."""
    from playwright.sync_api import expect
    from sqlalchemy import select

    from engine.db.models import customers

    monkeypatch.setenv("REGULARS_SECRET_KEY", "counter test key")
    engine = make_engine({**TABLES, "plugins": {"birthday-bonus": {"multiplier": 1, "gift": 100}}})
    engine.ensure_schema()
    _, key = terminals.add_terminal(engine.db, "Main Street", "till 1")
    with serve_app(create_app(engine, secrets={}, background=False)) as base:
        status, answer = call(f"{base}/api/v1/customers", "POST", {"phone": "+420 601 123 456"}, key, "enrol-jana")
        card = answer["customer"]["card_code"]
        assert answer["customer"]["birthday_wanted"] is True
        page = browser_page
        sign_in(page, base, key)
        find(page, card)
        expect(page.locator("#customer-birthday")).to_be_visible()
        page.click("#customer-birthday-button")  # nothing picked yet
        expect(page.locator("#result")).to_have_text("Pick the date first.")
        page.fill("#customer-birthday-date", "1991-03-08")
        page.click("#customer-birthday-button")
        expect(page.locator("#result")).to_have_text("Birthday saved.")
        expect(page.locator("#customer-birthday")).to_be_hidden()
        with engine.db.connect() as conn:
            born = conn.execute(select(customers.c.birthday)).scalar_one()
        assert born.date().isoformat() == "1991-03-08"
        find(page, card)  # found again: known now, not asked
        expect(page.locator("#customer-name")).to_have_text(f"Card {card}")
        expect(page.locator("#customer-birthday")).to_be_hidden()
