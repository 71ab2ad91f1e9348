"""The customer's card page over real HTTP and in a real browser: the signed
link, refusals, languages, redeeming through the page (once, with the shop's
coupon in the outbox), Shopify's app proxy (its signature, the logged-in
customer, a Liquid answer) and the WooCommerce embed (its signature, framing).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import html
import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from babel.numbers import format_currency
from sqlalchemy import func, select

from engine.db.models import accounts, customers, ledger_entries, outbox, rewards
from engine.links import make_link, revoke
from engine.testing import paid_order
from engine.web import create_app
from engine.web.pages.card import (
    shopify_proxy_signature,
    verify_shopify_proxy,
    woocommerce_embed_signature,
)
from engine.web.pages.render import Formats
from tests.conftest import screenshot
from tests.serving import serve_app

SHOP = "example.myshopify.com"
SHOPIFY_SECRET = "shpss_test_secret"
WOO_SECRET = "woo embed test secret"
TABLES = {
    "engine": {"currency": "EUR"},
    "branding": {"name": "Kavárna Zrnko", "primary": "#6B3E26", "accent": "#F2B705"},
    "rules": {
        "points": {"per_unit": 1},
        "stamps": {"coffee": {"required": 8, "per": "item", "skus": ["COFFEE-*"], "reward": "free-coffee"}},
        "tiers": {"metric": "points_earned", "window_days": 365, "levels": [
            {"name": "silver", "threshold": 100, "multiplier": 1.25},
            {"name": "gold", "threshold": 300, "multiplier": 1.5}]},
        "referrals": {"referrer_points": 200, "referee_points": 100, "min_order": "20.00"},
    },
    "rewards": {
        "five-off": {"kind": "fixed_amount", "cost": 50, "value": "5.00", "expires_days": 30},
        "points-off": {"kind": "fixed_amount", "cost": 10, "value": "1.00", "partial": True, "max_units": 5},
        "big-treat": {"kind": "percentage", "cost": 5000, "value": 15},
        "free-coffee": {"kind": "free_product", "sku": "COFFEE-FLAT"},
    },
    "connectors": {"shopify": {"shop": SHOP}, "woocommerce": {"url": "https://shop.example"}, "pos": {}},
}
SHOPIFY_CUSTOMER = "7007"  # paid_order's Shopify customer id for order 1001
WOO_USER = "42"


# -- the programme, a customer, the server ----------------------------------------------


def order(engine, channel: str, order_id: int, total: str, sku: str, quantity: int, email="jana@example.cz",
          days_ago: int = 1, **changes) -> None:
    delivery = paid_order(channel, order_id=order_id, email=email, total=total, sku=sku, quantity=quantity,
                          paid_at=datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago))
    body = json.loads(delivery.body)
    if channel == "shopify":
        body["customer"].update(changes)
    else:
        body.update(changes)
    outcome = engine.ingest(delivery.channel, delivery.topic, json.dumps(body).encode(), delivery.headers)
    assert outcome.status == "applied", outcome


def customer_id(engine, key: str = "jana@example.cz") -> int:
    with engine.db.connect() as conn:
        return engine.identity.find(conn, key)


@pytest.fixture
def shop(make_engine, monkeypatch):
    """(engine, base URL) with Jana: 200 points (silver, 100 to gold), 4 of 8
    coffee stamps, known to Shopify as 7007 and to WooCommerce as user 42."""
    yield from serve_shop(make_engine, monkeypatch, TABLES)


def serve_shop(make_engine, monkeypatch, tables: dict):
    monkeypatch.setenv("REGULARS_SECRET_KEY", "card page test key")
    monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", "shpat_test")
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_KEY", "ck_test")
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_CONSUMER_SECRET", "cs_test")
    monkeypatch.setenv("REGULARS_SHOPIFY_API_SECRET", SHOPIFY_SECRET)
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_EMBED_SECRET", WOO_SECRET)
    monkeypatch.delenv("REGULARS_PUBLIC_URL", raising=False)
    engine = make_engine(tables)
    engine.ensure_schema()
    # the WooCommerce order first, at the base tier; the Shopify one makes her silver
    order(engine, "woocommerce", 2001, "20.00", "COFFEE-BEANS", 1, days_ago=2, customer_id=int(WOO_USER))
    order(engine, "shopify", 1001, "180.00", "COFFEE-LATTE", 3, first_name="Jana", last_name="Nováková")
    with serve_app(create_app(engine, secrets={}, background=False)) as base:
        yield engine, base


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def fetch(url: str, data: dict | bytes | None = None, headers: dict | None = None):
    """(status, headers, text) without following redirects."""
    body = urlencode(data).encode() if isinstance(data, dict) else data
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    if body is not None:
        request.add_header("content-type", "application/x-www-form-urlencoded")
    try:
        with _OPENER.open(request, timeout=15) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def forms(page: str) -> dict[str, dict]:
    """The redeem forms of a card page: reward → {action, form token, channels}."""
    found = {}
    for match in re.finditer(r'<form class="rg-panel rg-offer" method="post" action="([^"]*)"[^>]*data-offer="([^"]+)">'
                             r'(.*?)</form>', page, re.S):
        action, name, inner = match.groups()
        token = re.search(r'name="form" value="([^"]+)"', inner).group(1)
        channels = re.findall(r'<option value="([^"]+)"', inner) or \
            re.findall(r'name="channel" value="([^"]+)"', inner)
        found[name] = {"action": html.unescape(action), "form": html.unescape(token), "channels": channels}
    return found


def issued(engine, name: str | None = None) -> list:
    with engine.db.connect() as conn:
        query = select(rewards).where(rewards.c.source == "redeem")
        if name:
            query = query.where(rewards.c.reward == name)
        return conn.execute(query.order_by(rewards.c.id)).all()


def coupons(engine) -> list[tuple[str, str]]:
    with engine.db.connect() as conn:
        rows = conn.execute(select(outbox.c.channel, outbox.c.subject).where(outbox.c.kind == "reward.coupon")).all()
    return sorted((r.channel, r.subject) for r in rows)


def points(engine) -> int:
    with engine.db.connect() as conn:
        return engine.ledger.balances(conn, customer_id(engine)).get("points", 0)


# -- the signed link --------------------------------------------------------------------


def test_the_card_shows_points_tier_stamps_rewards_and_the_referral_link(shop):
    engine, base = shop
    token = make_link(engine, customer_id(engine))
    status, headers, page = fetch(f"{base}/card/{token}")
    assert status == 200 and '<html lang="en">' in page
    assert 'data-testid="points"><span class="rg-points-n">200</span> points' in page
    assert "Hello, Jana" in page and "Kavárna Zrnko" in page and "--primary: #6B3E26" in page
    assert 'data-testid="tier">Silver<' in page
    assert "100 more points to Gold" in page and 'aria-valuenow="50"' in page  # 200 of 100..300
    # the coffee card: 8 holes, 4 punched, its reward named
    card = re.search(r'data-card="coffee">(.*?)</article>', page, re.S).group(1)
    assert card.count('class="hole') == 8 and card.count("hole full") == 4
    assert "4 of 8" in card and "4 more stamps to: Free coffee" in card
    # the QR code of the card code, inline
    code = engine_summary(engine)["card_code"]
    assert "<svg" in page and "<?xml" not in page and code in page
    # rewards to buy: affordable ones with a form per shop, the rest saying what is missing
    offers = forms(page)
    assert set(offers) == {"five-off", "points-off"}
    assert offers["five-off"]["channels"] == ["shopify", "woocommerce", "pos"]
    assert offers["five-off"]["action"] == f"/card/{token}/redeem"
    assert 'data-offer="big-treat"' in page and "4,800 more points needed" in page
    assert "€5.00 off" in page and "15% off" in page
    # the referral link, on this server's address
    referral = engine_summary(engine)["referral_code"]
    assert f'value="{base}/invite/{referral}"' in page
    # a personal page: not cached, not framed, no referrer
    assert headers["Cache-Control"] == "private, no-store"
    assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"


def engine_summary(engine) -> dict:
    from engine.customers import customer_summary

    return customer_summary(engine, "jana@example.cz")


def test_the_referral_link_opens_an_invitation_with_the_code(shop, monkeypatch):
    engine, base = shop
    summary = engine_summary(engine)
    monkeypatch.setenv("REGULARS_PUBLIC_URL", "https://loyalty.example/")
    page = fetch(f"{base}/card/{make_link(engine, summary['id'])}")[2]
    assert f'value="https://loyalty.example/invite/{summary["referral_code"]}"' in page
    status, _, page = fetch(f"{base}/invite/{summary['referral_code'].lower()}")
    assert status == 200 and summary["referral_code"] in page and "€20.00" in page and "100 points" in page
    assert 'href="https://example.myshopify.com"' in page and 'href="https://shop.example"' in page
    # a card code or nonsense is no invitation
    assert fetch(f"{base}/invite/{summary['card_code']}")[0] == 404
    assert fetch(f"{base}/invite/{quote('<x>')}")[0] == 404


@pytest.mark.parametrize("case", ["forged", "garbage", "expired", "revoked"])
def test_a_refused_link_gets_a_clear_page_never_a_stack_trace(shop, case):
    engine, base = shop
    jana = customer_id(engine)
    token = make_link(engine, jana)
    if case == "forged":
        token = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    elif case == "garbage":
        token = "not-a-token"
    elif case == "expired":
        token = make_link(engine, jana, days=1, at=datetime.now(UTC) - timedelta(days=2))
    else:
        revoke(engine, jana)
    status, headers, page = fetch(f"{base}/card/{token}")
    expected = {"forged": (403, "This card link is not valid"), "garbage": (403, "This card link is not valid"),
                "expired": (410, "This card link has expired"), "revoked": (403, "This card link was withdrawn")}
    assert (status, expected[case][1] in page) == (expected[case][0], True)
    assert "text/html" in headers["content-type"] and "Traceback" not in page and "200" not in page
    assert fetch(f"{base}/card/{token}/redeem", {"form": "x", "reward": "five-off"})[0] == expected[case][0]


def test_the_page_speaks_the_visitor_s_language_and_formats_money_in_it(shop):
    engine, base = shop
    token = make_link(engine, customer_id(engine))
    status, headers, page = fetch(f"{base}/card/{token}?lang=cs")
    assert status == 200 and '<html lang="cs">' in page
    assert format_currency(Decimal("5.00"), "EUR", locale="cs") in page  # 5,00 €
    assert "regulars_lang=cs" in headers["set-cookie"]
    page = fetch(f"{base}/card/{token}", headers={"Accept-Language": "sk-SK,sk;q=0.9,en;q=0.5"})[2]
    assert '<html lang="sk">' in page and format_currency(Decimal("5.00"), "EUR", locale="sk") in page
    page = fetch(f"{base}/card/{token}", headers={"Accept-Language": "de-DE,cs;q=0.8"})[2]
    assert '<html lang="cs">' in page
    page = fetch(f"{base}/card/{token}", headers={"Accept-Language": "en-GB"})[2]
    assert '<html lang="en">' in page and "€5.00" in page
    # the refusal too
    page = fetch(f"{base}/card/nonsense?lang=sk")[2]
    assert '<html lang="sk">' in page


# -- redeeming through the page ------------------------------------------------------------


def test_redeem_issues_the_reward_in_the_chosen_shop_and_shows_its_code(shop):
    engine, base = shop
    token = make_link(engine, customer_id(engine))
    offer = forms(fetch(f"{base}/card/{token}")[2])["five-off"]
    status, headers, _ = fetch(base + offer["action"], {"form": offer["form"], "reward": "five-off",
                                                         "channel": "woocommerce"})
    assert status == 303 and headers["location"].startswith(f"/card/{token}?notice=")
    [reward] = issued(engine)
    assert (reward.reward, reward.channel, reward.status) == ("five-off", "woocommerce", "issued")
    assert coupons(engine) == [("woocommerce", reward.code)]  # the outbox makes it a coupon there
    assert points(engine) == 150
    status, _, page = fetch(base + headers["location"])
    assert status == 200 and "Your reward is ready." in page
    assert f'data-testid="new-code">{reward.code}<' in page and "In the online shop shop.example" in page
    assert 'rg-reward rg-new" data-reward="five-off"' in page
    # the notice can't be forged or altered
    page = fetch(f"{base}/card/{token}?notice=AAAA{headers['location'][-20:]}")[2]
    assert "Your reward is ready." not in page


def history(page: str) -> list[str]:
    """The lines of the card's points history, as read."""
    found = re.search(r'data-testid="history">(.*?)</details>', page, re.S)
    assert found, "no points history on the card"
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", item)).split())
            for item in re.findall(r"<li>(.*?)</li>", found.group(1), re.S)]


def test_the_card_lists_what_changed_the_points_newest_first(shop):
    engine, base = shop
    token = make_link(engine, customer_id(engine))
    offer = forms(fetch(f"{base}/card/{token}")[2])["five-off"]
    fetch(base + offer["action"], {"form": offer["form"], "reward": "five-off", "channel": "shopify"})
    engine.adjust("jana@example.cz", 7, "a parcel lost by the courier", "admin:owner")
    engine.adjust("jana@example.cz", -7, "given to the wrong customer", "admin:owner")
    engine.adjust("jana@example.cz", 3, "goodwill", "admin:owner")
    fmt = Formats("en", "EUR")
    today = fmt.date(datetime.now(UTC))
    yesterday, before = (fmt.date(datetime.now(UTC) - timedelta(days=n)) for n in (1, 2))
    lines = history(fetch(f"{base}/card/{token}")[2])
    assert lines == [
        f"Adjustment {today} +3",  # the note is the staff's, not shown
        f"Adjustment {today} −7",
        f"Adjustment {today} +7",
        f"Reward: Five off · In the online shop {SHOP} {today} −50",
        f"Purchase · In the online shop {SHOP} {yesterday} +180",
        f"Purchase · In the online shop shop.example {before} +20",
    ]
    czech = history(fetch(f"{base}/card/{token}", headers={"Accept-Language": "cs"})[2])
    assert czech[3].startswith("Odměna: Five off · V e-shopu") and czech[3].endswith("−50")
    assert czech[4].startswith("Nákup")


def test_the_history_makes_one_line_of_an_order_s_points_and_its_bonus(make_engine, monkeypatch):
    tables = {**TABLES, "plugins": {"first-order-bonus": {"points": 100}}}
    for engine, base in serve_shop(make_engine, monkeypatch, tables):
        # serve_shop's first order (WooCommerce, 20.00) earned 20 points and the bonus: two entries, one line
        with engine.db.connect() as conn:
            amounts = conn.execute(
                select(ledger_entries.c.amount).join(accounts, accounts.c.id == ledger_entries.c.account_id)
                .where(ledger_entries.c.source == "order:woocommerce:2001", accounts.c.unit == "points")
            ).scalars().all()
        assert sorted(amounts) == [20, 100]
        lines = history(fetch(f"{base}/card/{make_link(engine, customer_id(engine))}")[2])
        assert [line.split(" · ")[0] for line in lines] == ["Purchase", "Purchase"]
        assert lines[0].endswith("+225") and lines[1].endswith("+120")  # (silver by then: 180 × 1.25)


def birthday_form(page: str) -> tuple[str, str] | None:
    """(action, form token) of the card's birthday form, or None."""
    found = re.search(r'<form class="rg-panel rg-birthday" method="post" action="([^"]*)".*?name="form" value="([^"]+)"',
                      page, re.S)
    return (html.unescape(found.group(1)), html.unescape(found.group(2))) if found else None


def test_without_the_birthday_bonus_the_card_does_not_ask_for_a_birthday(shop):
    engine, base = shop
    assert birthday_form(fetch(f"{base}/card/{make_link(engine, customer_id(engine))}")[2]) is None


def test_a_birthday_bonus_that_brings_nothing_asks_for_no_birthday(make_engine, monkeypatch):
    tables = {**TABLES, "plugins": {"birthday-bonus": {"multiplier": 1, "gift": 0}}}
    for engine, base in serve_shop(make_engine, monkeypatch, tables):
        assert birthday_form(fetch(f"{base}/card/{make_link(engine, customer_id(engine))}")[2]) is None


def test_the_card_asks_for_the_birthday_once_when_the_birthday_bonus_is_on(make_engine, monkeypatch):
    tables = {**TABLES, "plugins": {"birthday-bonus": {"multiplier": 2}}}
    for engine, base in serve_shop(make_engine, monkeypatch, tables):
        token = make_link(engine, customer_id(engine))
        page = fetch(f"{base}/card/{token}")[2]
        assert "your orders earn 2× points all that month" in page
        action, form = birthday_form(page)
        for wrong in ("", "1990-02-30", "1850-01-01", "2999-01-01", "<script>"):
            status, headers, _ = fetch(base + action, {"form": form, "birthday": wrong})
            assert status == 303
            assert "not a date we can take" in fetch(base + headers["location"])[2]
        status, headers, _ = fetch(base + action, {"form": form, "birthday": "1990-11-03"})
        page = fetch(base + headers["location"])[2]
        assert "we will remember your birthday" in page and birthday_form(page) is None
        with engine.db.connect() as conn:
            born = conn.execute(select(customers.c.birthday).where(customers.c.id == customer_id(engine))).scalar()
        assert born.date().isoformat() == "1990-11-03"
        # the same form sent again (another tab): kept as it was
        status, headers, _ = fetch(base + action, {"form": form, "birthday": "1991-01-01"})
        assert "We already know your birthday" in fetch(base + headers["location"])[2]
        # a forged form changes nothing
        status, headers, _ = fetch(base + action, {"form": form[:-4] + "AAAA", "birthday": "1991-01-01"})
        assert status == 303 and "This page was open for a long time" in fetch(base + headers["location"])[2]
        with engine.db.connect() as conn:
            assert conn.execute(select(func.count()).select_from(customers)
                                .where(customers.c.birthday.is_not(None))).scalar_one() == 1


@pytest.mark.parametrize(("settings", "says"), [
    ({"multiplier": 1, "gift": 100}, "Tell us your birthday, and you get 100 points on the day."),
    ({"gift": 1}, "Tell us your birthday: you get 1 point on the day, and your orders earn 2× points all that month."),
])
def test_the_card_tells_of_the_birthday_gift_and_lists_it_once_given(make_engine, monkeypatch, settings, says):
    from engine.birthdays import falls_on
    from engine.jobs import run

    tables = {**TABLES, "plugins": {"birthday-bonus": settings}}
    for engine, base in serve_shop(make_engine, monkeypatch, tables):
        token = make_link(engine, customer_id(engine))
        page = fetch(f"{base}/card/{token}")[2]
        assert says in page
        action, form = birthday_form(page)
        born = (datetime.now(UTC) - timedelta(days=1)).date().replace(year=1990)  # (yesterday, in 1990)
        fetch(base + action, {"form": form, "birthday": born.isoformat()})
        run(engine, "birthday-gifts", datetime.now(UTC))
        # learnt today, after its day: the gift comes next year
        assert "Birthday gift" not in " ".join(history(fetch(f"{base}/card/{token}")[2]))
        next_year = falls_on(born, datetime.now(UTC).year + 1)
        run(engine, "birthday-gifts", datetime(next_year.year, next_year.month, next_year.day, 12, tzinfo=UTC))
        lines = history(fetch(f"{base}/card/{token}")[2])
        gift = settings["gift"]
        assert lines[0].startswith("Birthday gift ") and lines[0].endswith(f"+{gift}")
        czech = history(fetch(f"{base}/card/{token}", headers={"Accept-Language": "cs"})[2])
        assert czech[0].startswith("Dárek k narozeninám")


def where(page: str, name: str) -> str:
    """Where the card says the reward ``name`` can be spent."""
    found = re.search(rf'data-reward="{name}">.*?data-testid="where">(.*?)(?: · |</p>)', page, re.S)
    return " ".join(found.group(1).split())


def test_the_card_says_where_each_reward_can_be_spent(make_engine, monkeypatch):
    """A reward the catalogue keeps for some channels is said to be spendable
    there only; one issued for a shop without such a limit, in that shop (its
    coupon is there) or at the counter; one with neither, anywhere."""
    tables = copy.deepcopy(TABLES)
    tables["rules"]["stamps"]["coffee"]["required"] = 4  # Jana's four stamps fill the card
    tables["rewards"]["free-coffee"]["channels"] = ["shopify"]
    tables["rewards"]["web-ten"] = {"kind": "percentage", "cost": 20, "value": 10,
                                    "channels": ["shopify", "woocommerce"]}
    served = serve_shop(make_engine, monkeypatch, tables)
    engine, base = next(served)
    try:
        jana = customer_id(engine)
        [coffee] = [r for r in engine_summary(engine)["rewards"] if r["reward"] == "free-coffee"]
        assert coffee["channel"] is None
        engine.redeem(f"id:{jana}", "five-off", channel="woocommerce")
        engine.redeem(f"id:{jana}", "web-ten")
        engine.redeem(f"id:{jana}", "points-off")
        token = make_link(engine, jana)
        page = fetch(f"{base}/card/{token}")[2]
        assert where(page, "free-coffee") == f"In the online shop {SHOP}"
        assert where(page, "five-off") == "In the online shop shop.example or at the counter"
        assert where(page, "web-ten") == f"In the online shop {SHOP} or in the online shop shop.example"
        assert where(page, "points-off") == "Anywhere: online or at the counter"
        czech = fetch(f"{base}/card/{token}?lang=cs")[2]
        assert where(czech, "free-coffee") == f"V e-shopu {SHOP}"
        assert where(czech, "five-off") == "V e-shopu shop.example nebo u pokladny v prodejně"
        slovak = fetch(f"{base}/card/{token}?lang=sk")[2]
        assert where(slovak, "web-ten") == f"V e-shope {SHOP} alebo v e-shope shop.example"
        assert ("shopify", coffee["code"]) in coupons(engine)
        assert ("woocommerce", coffee["code"]) not in coupons(engine)
    finally:
        served.close()


def test_a_form_sent_twice_or_at_once_redeems_once(shop):
    engine, base = shop
    token = make_link(engine, customer_id(engine))
    offer = forms(fetch(f"{base}/card/{token}")[2])["five-off"]
    data = {"form": offer["form"], "reward": "five-off", "channel": "shopify"}
    first = fetch(base + offer["action"], data)
    again = fetch(base + offer["action"], data)
    assert first[0] == again[0] == 303
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: fetch(base + offer["action"], data)[0], range(4)))
    assert answers == [303] * 4
    [reward] = issued(engine)
    assert coupons(engine) == [("shopify", reward.code)] and points(engine) == 150
    # both redirects name the same reward
    assert f">{reward.code}<" in fetch(base + again[1]["location"])[2]
    # a new page's form is a new redemption
    offer = forms(fetch(f"{base}/card/{token}")[2])["five-off"]
    assert fetch(base + offer["action"], {**data, "form": offer["form"]})[0] == 303
    assert len(issued(engine)) == 2 and points(engine) == 100


def test_a_forged_stale_or_foreign_form_redeems_nothing(shop):
    engine, base = shop
    jana = customer_id(engine)
    order(engine, "shopify", 1002, "90.00", "TEA", 1, email="petr@example.cz")
    token, other = make_link(engine, jana), make_link(engine, customer_id(engine, "petr@example.cz"))
    mine = forms(fetch(f"{base}/card/{token}")[2])["five-off"]
    theirs = forms(fetch(f"{base}/card/{other}")[2])["five-off"]
    attempts = [
        {"reward": "five-off", "channel": "pos"},  # no token: a cross-site form can't know it
        {"form": "gAAAA" + "x" * 100, "reward": "five-off", "channel": "pos"},
        {"form": theirs["form"], "reward": "five-off", "channel": "pos"},  # another card's page
        {"form": mine["form"], "reward": "points-off", "channel": "pos"},  # the token names another reward
    ]
    for data in attempts:
        status, headers, _ = fetch(f"{base}/card/{token}/redeem", data)
        assert status == 303
        assert "nothing was redeemed" in fetch(base + headers["location"])[2]
    # Petr's own form on Jana's link is refused the same way
    assert fetch(f"{base}/card/{token}/redeem", {"form": theirs["form"], "reward": "five-off"})[0] == 303
    assert issued(engine) == []


def test_a_refused_redemption_says_why(shop):
    engine, base = shop
    token = make_link(engine, customer_id(engine))
    offer = forms(fetch(f"{base}/card/{token}")[2])["points-off"]
    status, headers, _ = fetch(base + offer["action"], {"form": offer["form"], "reward": "points-off",
                                                         "units": "9", "channel": "pos"})
    assert status == 303
    page = fetch(base + headers["location"])[2]
    assert "That reward could not be redeemed." in page and "At most 5 at once." in page
    assert issued(engine) == [] and points(engine) == 200
    status, headers, _ = fetch(base + offer["action"], {"form": offer["form"], "reward": "points-off",
                                                         "units": "3", "channel": "pos"})
    [reward] = issued(engine)
    assert (reward.cost, Decimal(reward.value), reward.channel) == (30, Decimal("3.00"), "pos")
    assert coupons(engine) == []  # the till reads the code itself


def test_a_refusal_is_said_in_the_customer_s_language(shop):
    """The card says why in the page's language, with the numbers (not the
    engine's English sentence): here more points than are left, in Czech."""
    engine, base = shop
    token = make_link(engine, customer_id(engine))
    offers = [forms(fetch(f"{base}/card/{token}")[2])["points-off"] for _ in range(5)]  # five forms, 200 points
    for offer in offers[:4]:
        fetch(base + offer["action"], {"form": offer["form"], "reward": "points-off", "units": "5", "channel": "pos"})
    assert points(engine) == 0
    last = offers[4]
    status, headers, _ = fetch(base + last["action"], {"form": last["form"], "reward": "points-off", "units": "5",
                                                        "channel": "pos"})
    assert status == 303
    english = fetch(base + headers["location"])[2]
    assert "It costs 50 points and you have 0." in english and "balance is" not in english
    czech = fetch(base + headers["location"], headers={"Accept-Language": "cs"})[2]
    assert "Stojí 50 bodů a vy máte 0." in czech


# -- Shopify's app proxy ------------------------------------------------------------------------


def test_the_proxy_signature_is_shopify_s_documented_one():
    # The example on shopify.dev ("Authenticate app proxies"), secret "hush".
    query = ("extra=1&extra=2&shop=shop-name.myshopify.com&logged_in_customer_id=1"
             "&path_prefix=%2Fapps%2Fawesome_reviews&timestamp=1317327555")
    signature = "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb"
    assert shopify_proxy_signature(parse_qsl(query, keep_blank_values=True), "hush") == signature
    params = verify_shopify_proxy(f"{query}&signature={signature}", "hush", "shop-name.myshopify.com",
                                  now=1317327555 + 10)
    assert params["logged_in_customer_id"] == "1"


def signed(params: dict, secret: str = SHOPIFY_SECRET, at: float | None = None) -> str:
    """A query as Shopify's proxy forwards it, signed."""
    values = {"shop": SHOP, "logged_in_customer_id": SHOPIFY_CUSTOMER, "path_prefix": "/apps/regulars",
              "timestamp": str(int(at if at is not None else time.time())), **params}
    pairs = [(k, v) for k, v in values.items() if v is not None]
    return urlencode(pairs + [("signature", shopify_proxy_signature(pairs, secret))])


def test_the_shopify_proxy_shows_the_logged_in_customer_s_card_as_liquid(shop, monkeypatch):
    engine, base = shop
    monkeypatch.setenv("REGULARS_PUBLIC_URL", "https://loyalty.example")
    status, headers, page = fetch(f"{base}/proxy/shopify?{signed({})}")
    assert status == 200 and headers["content-type"].startswith("application/liquid")
    assert '<span class="rg-points-n">200</span>' in page and "Hello, Jana" in page
    assert '<html' not in page and "Content-Security-Policy" not in headers  # a fragment of the shop's page
    assert 'href="https://loyalty.example/static/card.css"' in page
    assert forms(page)["five-off"]["action"] == "/apps/regulars/redeem"
    assert forms(page)["five-off"]["channels"][0] == "shopify"  # this shop first
    assert "{" not in page and "}" not in page
    # a trailing slash and extra parameters of the shop's URL are signed too
    assert fetch(f"{base}/proxy/shopify/?{signed({'utm_source': 'mail'})}")[0] == 200


def test_nothing_in_the_liquid_answer_is_read_as_liquid(shop):
    engine, base = shop
    order(engine, "shopify", 1003, "10.00", "TEA", 1, email="mallory@example.cz",
          first_name="{{ shop.metafields }}{% raw %}")
    query = signed({"logged_in_customer_id": str(1003 * 7)})
    page = fetch(f"{base}/proxy/shopify?{query}")[2]
    assert "Hello, &#123;&#123; shop.metafields &#125;&#125;&#123;% raw %&#125;" in page
    assert "{{" not in page and "{%" not in page


@pytest.mark.parametrize("case", ["missing", "bad", "tampered", "stale", "future", "other shop", "other secret",
                                  "customer id added by the visitor"])
def test_the_shopify_proxy_refuses_an_unsigned_or_stale_request(shop, case):
    engine, base = shop
    if case == "missing":
        query = urlencode({"shop": SHOP, "logged_in_customer_id": SHOPIFY_CUSTOMER, "timestamp": int(time.time())})
    elif case == "bad":
        query = spoiled(signed({}))
    elif case == "tampered":  # someone else's customer id under Jana's signature
        query = signed({}).replace(f"logged_in_customer_id={SHOPIFY_CUSTOMER}", "logged_in_customer_id=1")
    elif case == "stale":
        query = signed({}, at=time.time() - 600)
    elif case == "future":
        query = signed({}, at=time.time() + 600)
    elif case == "other shop":
        query = signed({"shop": "elsewhere.myshopify.com"})
    elif case == "other secret":
        query = signed({}, secret="another app's secret")
    else:  # a visitor who is not logged in adds ?logged_in_customer_id=7007; Shopify signs both
        values = [("logged_in_customer_id", SHOPIFY_CUSTOMER), ("shop", SHOP), ("logged_in_customer_id", ""),
                  ("path_prefix", "/apps/regulars"), ("timestamp", str(int(time.time())))]
        query = urlencode(values + [("signature", shopify_proxy_signature(values, SHOPIFY_SECRET))])
    status, _, page = fetch(f"{base}/proxy/shopify?{query}")
    assert status == 401 and ("This request is not signed by the shop" in page or "out of date" in page)
    assert "Jana" not in page
    form = {"form": "x", "reward": "five-off", "channel": "shopify"}
    assert fetch(f"{base}/proxy/shopify/redeem?{query}", form)[0] == 401
    assert issued(engine) == []


def test_the_shopify_proxy_asks_a_visitor_to_log_in_and_refuses_without_a_secret(shop, monkeypatch):
    engine, base = shop
    status, headers, page = fetch(f"{base}/proxy/shopify?{signed({'logged_in_customer_id': ''})}")
    assert status == 200 and headers["content-type"].startswith("application/liquid")
    assert "Log in to see your card" in page and 'href="/account/login?return_url=%2Fapps%2Fregulars"' in page
    status, _, page = fetch(f"{base}/proxy/shopify?{signed({'logged_in_customer_id': '999'})}")
    assert status == 200 and "No card yet" in page
    monkeypatch.delenv("REGULARS_SHOPIFY_API_SECRET")
    assert fetch(f"{base}/proxy/shopify?{signed({})}")[0] == 401


def test_redeeming_through_the_shopify_proxy(shop):
    engine, base = shop
    page = fetch(f"{base}/proxy/shopify?{signed({})}")[2]
    offer = forms(page)["five-off"]
    # Shopify forwards the POST to /apps/regulars/redeem here, signing its query again
    data = {"form": offer["form"], "reward": "five-off", "channel": "shopify"}
    status, headers, _ = fetch(f"{base}/proxy/shopify/redeem?{signed({})}", data)
    assert status == 303 and headers["location"].startswith("/apps/regulars?notice=")
    [reward] = issued(engine)
    assert reward.channel == "shopify" and coupons(engine) == [("shopify", reward.code)]
    assert fetch(f"{base}/proxy/shopify/redeem?{signed({})}", data)[0] == 303 and len(issued(engine)) == 1
    location = headers["location"].replace("/apps/regulars?", "")
    page = fetch(f"{base}/proxy/shopify?{signed(dict(parse_qsl(location)))}")[2]
    assert f">{reward.code}<" in page
    # a form from this customer's page is no good for another logged-in customer
    order(engine, "shopify", 1004, "80.00", "TEA", 1, email="petr@example.cz")
    other = signed({"logged_in_customer_id": str(1004 * 7)})
    status, headers, _ = fetch(f"{base}/proxy/shopify/redeem?{other}", data)
    assert status == 303 and len(issued(engine)) == 1


# -- the WooCommerce embed ---------------------------------------------------------------------------


def spoiled(query: str) -> str:
    """The query with its signature's last hex digit changed: never the same
    signature (its last four made "beef" were, one run in 65,536)."""
    return query[:-1] + ("0" if query[-1] != "0" else "1")


def woo(customer: str = WOO_USER, at: float | None = None, secret: str = WOO_SECRET, **extra) -> str:
    ts = str(int(at if at is not None else time.time()))
    # what the PHP snippet computes: hash_hmac('sha256', $user . '|' . $ts, SECRET)
    sig = hmac.new(secret.encode(), f"{customer}|{ts}".encode(), hashlib.sha256).hexdigest()
    assert sig == woocommerce_embed_signature(customer, ts, secret)
    return urlencode({"customer": customer, "ts": ts, "sig": sig, **extra})


def test_the_woocommerce_embed_shows_the_card_framed_only_by_the_shop(shop):
    engine, base = shop
    status, headers, page = fetch(f"{base}/embed/woocommerce?{woo(lang='cs')}")
    assert status == 200 and '<html lang="cs">' in page and '<span class="rg-points-n">200</span>' in page
    assert "frame-ancestors https://shop.example" in headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in headers
    assert 'data-parent-origin="https://shop.example"' in page and 'class="top"' not in page
    offer = forms(page)["five-off"]
    assert offer["action"] == "/embed/woocommerce/redeem?lang=cs" and offer["channels"][0] == "woocommerce"
    status, headers, _ = fetch(base + offer["action"], {"form": offer["form"], "reward": "five-off",
                                                         "channel": "woocommerce"})
    assert status == 303 and headers["location"].startswith("/embed/woocommerce?view=")
    [reward] = issued(engine)
    assert reward.channel == "woocommerce" and coupons(engine) == [("woocommerce", reward.code)]
    status, headers, page = fetch(base + headers["location"])
    assert status == 200 and f">{reward.code}<" in page and '<html lang="cs">' in page
    assert "frame-ancestors https://shop.example" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("case", ["missing", "bad", "other user", "stale", "other secret", "not a number"])
def test_the_woocommerce_embed_refuses_a_bad_signature(shop, case):
    engine, base = shop
    query = {
        "missing": urlencode({"customer": WOO_USER, "ts": int(time.time())}),
        "bad": spoiled(woo()),
        "other user": woo().replace(f"customer={WOO_USER}", "customer=43"),
        "stale": woo(at=time.time() - 3600),
        "other secret": woo(secret="guess"),
        "not a number": woo(customer="42 OR 1"),
    }[case]
    status, headers, page = fetch(f"{base}/embed/woocommerce?{query}")
    assert status == 401 and "Jana" not in page and "Traceback" not in page
    assert "frame-ancestors https://shop.example" in headers["Content-Security-Policy"]
    assert fetch(f"{base}/embed/woocommerce/redeem", {"form": "gAAAAAx", "reward": "five-off"})[0] == 403


def test_a_woocommerce_customer_without_a_card_is_told_so(shop, monkeypatch):
    engine, base = shop
    status, _, page = fetch(f"{base}/embed/woocommerce?{woo(customer='77')}")
    assert status == 200 and "No card yet" in page
    monkeypatch.delenv("REGULARS_WOOCOMMERCE_EMBED_SECRET")
    assert fetch(f"{base}/embed/woocommerce?{woo()}")[0] == 401


# -- in a real browser --------------------------------------------------------------------------


def test_in_a_browser_the_card_shows_points_stamps_and_tier(shop, browser_page):
    engine, base = shop
    engine.redeem("jana@example.cz", "five-off", "shopify")  # a reward to show, with its code
    page = browser_page
    page.goto(f"{base}/card/{make_link(engine, customer_id(engine))}")
    assert page.get_by_test_id("points").inner_text().startswith("150")
    assert page.get_by_test_id("tier").inner_text() == "Silver"
    assert page.get_by_test_id("tier-next").inner_text() == "100 more points to Gold"
    assert page.locator("[data-card=coffee] .hole").count() == 8
    assert page.locator("[data-card=coffee] .hole.full").count() == 4
    assert page.locator(".rg-qr svg").is_visible()
    assert page.locator("[data-reward=five-off] .rg-code").is_visible()
    # the points history opens at a tap
    lines = page.locator(".rg-history-list li")
    assert lines.count() == 3 and not lines.first.is_visible()
    page.locator(".rg-history summary").click()
    assert lines.first.is_visible() and lines.first.inner_text().startswith("Reward: Five off")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 412, "the card fits a phone's width"
    screenshot(page, "card")


def test_in_a_browser_redeem_issues_one_reward_however_often_it_is_clicked(shop, browser_page):
    engine, base = shop
    page = browser_page
    page.goto(f"{base}/card/{make_link(engine, customer_id(engine))}")
    offer = page.locator("form[data-offer=five-off]")
    offer.locator("select[name=channel]").select_option("woocommerce")
    offer.get_by_role("button", name="Redeem").dblclick()
    page.wait_for_selector("[data-testid=new-code]")
    [reward] = issued(engine)
    assert page.get_by_test_id("new-code").inner_text() == reward.code
    assert reward.channel == "woocommerce" and coupons(engine) == [("woocommerce", reward.code)]
    assert page.get_by_test_id("points").inner_text().startswith("150")
    # the same form sent twice (the page's guard bypassed): still one reward
    offer = page.locator("form[data-offer=five-off]")
    offer.evaluate("form => { form.requestSubmit(); HTMLFormElement.prototype.submit.call(form); }")
    page.wait_for_selector("[data-testid=new-code]")
    page.wait_for_load_state()
    assert len(issued(engine)) == 2 and points(engine) == 100


def test_in_a_browser_the_copy_button_copies_the_referral_link(shop, browser_page):
    engine, base = shop
    page = browser_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.goto(f"{base}/card/{make_link(engine, customer_id(engine))}")
    button = page.locator("button[data-copy='#rg-referral-link']")
    assert button.inner_text() == "Copy link"
    button.click()
    expected = f"{base}/invite/{engine_summary(engine)['referral_code']}"
    assert page.evaluate("navigator.clipboard.readText()") == expected
    assert button.inner_text() == "Copied"


def test_in_a_browser_an_expired_link_is_refused(shop, browser_page):
    engine, base = shop
    token = make_link(engine, customer_id(engine), days=1, at=datetime.now(UTC) - timedelta(days=3))
    page = browser_page
    response = page.goto(f"{base}/card/{token}")
    assert response.status == 410
    assert page.get_by_role("heading").inner_text() == "This card link has expired"
    assert page.locator(".rg-points-n").count() == 0
    screenshot(page, "card-refused")


class ShopPage:
    """A WordPress page stand-in: ``html`` at every path, on a server of its own."""

    html = ""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": self.html.encode()})


#: what the README's PHP snippet writes into the WordPress page
SNIPPET = ('<!doctype html><h1>My account</h1><iframe id="regulars-card" src="{src}" title="Loyalty card" '
           'style="width:100%;border:0;min-height:200px" allow="clipboard-write"></iframe>'
           '<script>addEventListener("message", function (e) {{ if (e.origin !== "{origin}") return; '
           'var f = document.getElementById("regulars-card"); '
           'if (f && e.data && e.data.type === "regulars:height") f.style.height = e.data.height + "px"; }});'
           '</script>')


def test_in_a_browser_the_embed_works_in_the_shop_s_page_and_nowhere_else(make_engine, monkeypatch, chromium):
    monkeypatch.setenv("REGULARS_SECRET_KEY", "card page test key")
    monkeypatch.setenv("REGULARS_WOOCOMMERCE_EMBED_SECRET", WOO_SECRET)
    wordpress = ShopPage()
    with serve_app(wordpress) as shop_url:
        # The shop at http://localhost:PORT; the same server as http://127.0.0.1:PORT is another origin.
        shop_origin = shop_url.replace("127.0.0.1", "localhost")
        tables = json.loads(json.dumps(TABLES))
        tables["connectors"]["woocommerce"]["url"] = shop_origin + "/"
        engine = make_engine(tables)
        engine.ensure_schema()
        order(engine, "woocommerce", 2001, "120.00", "COFFEE-BEANS", 2, customer_id=int(WOO_USER))
        with serve_app(create_app(engine, secrets={}, background=False)) as base:
            wordpress.html = SNIPPET.format(src=html.escape(f"{base}/embed/woocommerce?{woo()}"), origin=base)
            context = chromium.new_context(viewport={"width": 412, "height": 915})
            try:
                page = context.new_page()
                page.goto(shop_origin + "/my-account/")
                assert page.frame_locator("#regulars-card").locator(".rg-points-n").inner_text() == "120"
                # the card told the shop's page its height, and the page fitted the iframe to it
                page.wait_for_function("document.getElementById('regulars-card').offsetHeight > 600")

                wordpress.html = SNIPPET.format(src=html.escape(f"{base}/embed/woocommerce?{woo()}"), origin=base)
                elsewhere = context.new_page()
                elsewhere.goto(shop_url + "/my-account/")  # framed by another origin: refused by the browser
                elsewhere.wait_for_timeout(1000)
                frame = next(f for f in elsewhere.frames if f != elsewhere.main_frame)
                try:
                    shown = frame.evaluate("!!document.querySelector('.rg-card')")
                except Exception:  # an error page the test can't read
                    shown = False
                assert not shown
                assert elsewhere.evaluate("document.getElementById('regulars-card').offsetHeight") < 300
            finally:
                context.close()


def test_staff_correct_a_birthday_and_forgetting_it_makes_the_card_ask_again(make_engine, monkeypatch):
    from click.testing import CliRunner

    from engine.cli import main

    tables = {**TABLES, "plugins": {"birthday-bonus": {"multiplier": 2}}}
    for engine, base in serve_shop(make_engine, monkeypatch, tables):
        monkeypatch.setattr("engine.cli.Context.engine", engine)
        runner = CliRunner()
        out = runner.invoke(main, ["customer", "birthday", "jana@example.cz", "1990-11-03"])
        assert out.exit_code == 0 and out.output.strip() == "jana@example.cz: birthday 1990-11-03", out.output
        token = make_link(engine, customer_id(engine))
        assert birthday_form(fetch(f"{base}/card/{token}")[2]) is None
        for wrong in ("1990-13-01", "2999-01-01"):
            assert runner.invoke(main, ["customer", "birthday", "jana@example.cz", wrong]).exit_code == 2
        assert runner.invoke(main, ["customer", "birthday", "nobody@example.cz", "none"]).exit_code == 1
        assert runner.invoke(main, ["customer", "birthday", "jana@example.cz", "none"]).exit_code == 0
        assert birthday_form(fetch(f"{base}/card/{token}")[2]) is not None


def test_the_birthday_form_works_through_the_shopify_proxy(make_engine, monkeypatch):
    tables = {**TABLES, "plugins": {"birthday-bonus": {"multiplier": 2}}}
    for _engine, base in serve_shop(make_engine, monkeypatch, tables):
        page = fetch(f"{base}/proxy/shopify?{signed({})}")[2]
        action, form = birthday_form(page)
        assert action == "/apps/regulars/redeem"  # Shopify forwards it to /proxy/shopify/redeem, signed again
        status, headers, _ = fetch(f"{base}/proxy/shopify/redeem?{signed({})}", {"form": form, "birthday": "1990-11-03"})
        assert status == 303 and headers["location"].startswith("/apps/regulars?notice=")
        location = headers["location"].replace("/apps/regulars?", "")
        page = fetch(f"{base}/proxy/shopify?{signed(dict(parse_qsl(location)))}")[2]
        assert "we will remember your birthday" in page and birthday_form(page) is None
