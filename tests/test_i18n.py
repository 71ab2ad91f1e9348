"""The pages' translations stay complete: every message the templates and page
modules use is in the template catalog (``engine/web/locale/messages.pot``),
translated in Czech and Slovak (every plural form, nothing fuzzy, the same
placeholders as the English), compiled into an up-to-date ``.mo``; and the
pages really come out in those languages.

When this fails after a template changed: run ``scripts/i18n`` (extract, update,
compile), translate what it added to the two ``.po`` files, then run
``scripts/i18n compile``.
"""

from __future__ import annotations

import gettext
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

ROOT = Path(__file__).resolve().parents[1]
LOCALE_DIR = ROOT / "engine" / "web" / "locale"
POT = LOCALE_DIR / "messages.pot"
LANGUAGES = ("cs", "sk")

#: ``%(name)s`` (and friends) in a python-format message; ``%%`` is a literal percent
PERCENT = re.compile(r"%(?:\((\w+)\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]")
#: ``{name}`` in a brace-format message (counter.js fills these in)
BRACES = re.compile(r"\{\w*\}")
#: HTML tags and entities
MARKUP = re.compile(r"</?[A-Za-z][^>]*>|&#?\w+;")


def load(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as f:
        return read_po(f, locale=locale)


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"


def messages(catalog: Catalog) -> dict:
    """The catalog's messages (the header left out), by (context, id)."""
    return {(m.context, m.id): m for m in catalog if m.id}


def forms(message) -> list[str]:
    return list(message.string) if isinstance(message.string, (tuple, list)) else [message.string]


def ids(message) -> list[str]:
    return list(message.id) if isinstance(message.id, (tuple, list)) else [message.id]


def percent_names(text: str) -> Counter:
    return Counter(m.group(0) if m.group(1) is None else f"%({m.group(1)})" for m in PERCENT.finditer(text)
                   if m.group(0) != "%%")


def describe(message) -> str:
    return repr(ids(message)[0])


# -- the catalogs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> Catalog:
    return load(POT)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_message_is_translated_in_every_plural_form_and_nothing_is_fuzzy(template, lang):
    catalog = load(po_path(lang), lang)
    assert not catalog.fuzzy, f"{lang}: the catalog's header is marked fuzzy (pybabel compile would skip it)"
    assert catalog.num_plurals == 3 and "nplurals=3" in catalog.plural_forms, catalog.plural_forms

    wanted, have = messages(template), messages(catalog)
    missing = [describe(m) for key, m in wanted.items() if key not in have]
    assert not missing, f"{lang}: not in the .po yet (run scripts/i18n): {missing}"
    stale = [describe(m) for key, m in have.items() if key not in wanted]
    assert not stale, f"{lang}: in the .po but no longer in the .pot (run scripts/i18n): {stale}"

    problems = []
    for key, message in have.items():
        if ids(message) != ids(wanted[key]):
            problems.append(f"{describe(message)}: its plural differs from the .pot's")
        if message.fuzzy:
            problems.append(f"{describe(message)}: fuzzy")
        if isinstance(message.id, (tuple, list)) and len(forms(message)) != catalog.num_plurals:
            problems.append(f"{describe(message)}: {len(forms(message))} plural forms, not {catalog.num_plurals}")
        if any(not (text or "").strip() for text in forms(message)):
            problems.append(f"{describe(message)}: not translated")
    assert not problems, f"{lang}:\n" + "\n".join(problems)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_translations_keep_the_placeholders_and_markup_of_the_english(lang):
    catalog = load(po_path(lang), lang)
    problems = []
    for message in messages(catalog).values():
        english = ids(message)
        plural = len(english) > 1
        for n, text in enumerate(forms(message)):
            if not text:
                continue  # the test above says so
            label = f"{describe(message)} [{n}]" if plural else describe(message)
            # %(name)s: the same names (a plural's singular may be a bare "1 ..." in English,
            # so a plural form is held to the names of both English forms together)
            wanted = set().union(*(percent_names(e) for e in english)) if plural else set(percent_names(english[0]))
            if set(percent_names(text)) != wanted:
                problems.append(f"{label}: placeholders {sorted(percent_names(text))}, not {sorted(wanted)}")
            # the pages fill them with `text % variables`: a stray % would break the page
            if wanted or plural:
                try:
                    values = {name[2:-1]: "x" for name in wanted if name.startswith("%(")} | {"num": 1}
                    text % values
                except (ValueError, TypeError, KeyError) as exc:
                    problems.append(f"{label}: does not format ({exc})")
            # {name}: counter.js replaces exactly these
            wanted_braces = Counter(BRACES.findall(english[min(n, len(english) - 1)]))
            if Counter(BRACES.findall(text)) != wanted_braces:
                problems.append(f"{label}: braces {sorted(BRACES.findall(text))}, not {sorted(wanted_braces)}")
            wanted_markup = Counter(MARKUP.findall(english[min(n, len(english) - 1)]))
            if Counter(MARKUP.findall(text)) != wanted_markup:
                problems.append(f"{label}: markup {sorted(MARKUP.findall(text))}, not {sorted(wanted_markup)}")
    assert not problems, f"{lang}:\n" + "\n".join(problems)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_compiled_catalog_is_up_to_date_with_the_po(lang):
    catalog = load(po_path(lang), lang)
    fresh = BytesIO()
    write_mo(fresh, catalog)
    fresh.seek(0)
    expected = gettext.GNUTranslations(fresh)
    mo = po_path(lang).with_suffix(".mo")
    assert mo.is_file(), f"{mo} is missing: run scripts/i18n compile"
    with mo.open("rb") as f:
        committed = gettext.GNUTranslations(f)
    # the header ("") carries dates only; the messages and the plural rule must match
    want = {k: v for k, v in expected._catalog.items() if k != ""}
    got = {k: v for k, v in committed._catalog.items() if k != ""}
    differ = sorted(str(k) for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    assert not differ, f"{mo} is out of date with the .po (run scripts/i18n compile): {differ[:10]}"
    assert [committed.plural(n) for n in range(200)] == [expected.plural(n) for n in range(200)]


def test_the_template_catalog_is_up_to_date_with_the_templates_and_pages(tmp_path):
    """The committed .pot is what scripts/i18n extracts from the sources now."""
    out = tmp_path / "messages.pot"
    CommandLineInterface().run([
        "pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"), "-k", "plurals:1,2", "--no-location", "--sort-output",
        "--project", "regulars", "--copyright-holder", "regulars contributors", "-o", str(out), str(ROOT)])
    fresh, committed = messages(load(out)), messages(load(POT))
    assert fresh, "the extraction found no message at all"
    new = sorted(describe(m) for key, m in fresh.items() if key not in committed)
    gone = sorted(describe(m) for key, m in committed.items() if key not in fresh)
    assert not new and not gone, f"messages.pot is out of date (run scripts/i18n): new {new}, gone {gone}"
    changed = sorted(describe(m) for key, m in fresh.items()
                     if ids(m) != ids(committed[key]) or m.flags != committed[key].flags)
    assert not changed, f"messages.pot is out of date (run scripts/i18n): changed {changed}"


# -- the pages, rendered ------------------------------------------------------------------

SHOP = "example.myshopify.com"
TABLES = {
    "engine": {"currency": "EUR"},
    "branding": {"name": "Kavárna Zrnko"},
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
        "big-treat": {"kind": "percentage", "cost": 5000, "value": 15},
        "free-coffee": {"kind": "free_product", "sku": "COFFEE-FLAT"},
    },
    "connectors": {"shopify": {"shop": SHOP}, "pos": {}},
}


@pytest.fixture
def shop(make_engine, monkeypatch):
    """(engine, base URL, Jana's card link): 200 points (silver, 100 to gold),
    4 of 8 coffee stamps."""
    from engine.links import make_link
    from engine.testing import paid_order
    from engine.web import create_app
    from tests.serving import serve_app

    monkeypatch.setenv("REGULARS_SECRET_KEY", "i18n test key")
    monkeypatch.setenv("REGULARS_SHOPIFY_ACCESS_TOKEN", "shpat_test")
    monkeypatch.delenv("REGULARS_PUBLIC_URL", raising=False)
    engine = make_engine(TABLES)
    engine.ensure_schema()
    delivery = paid_order("shopify", order_id=1001, email="jana@example.cz", total="200.00", sku="COFFEE-LATTE",
                          quantity=4, paid_at=datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))
    body = json.loads(delivery.body)
    body["customer"].update(first_name="Jana", last_name="Nováková")
    outcome = engine.ingest(delivery.channel, delivery.topic, json.dumps(body).encode(), delivery.headers)
    assert outcome.status == "applied", outcome
    with engine.db.connect() as conn:
        jana = engine.identity.find(conn, "jana@example.cz")
    with serve_app(create_app(engine, secrets={}, background=False)) as base:
        yield engine, base, make_link(engine, jana)


def get(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


#: what the card says in each language (with Jana's numbers: the plural forms count)
CARD = {
    "cs": ["Dobrý den, Jana", "Vaše odměny", "Karty s razítky", "Úroveň",
           "Ještě 100 bodů do úrovně Gold", "Ještě 4 razítka do odměny: Free coffee", "4 z 8",
           "Uplatněte své body", "Pozvěte přítele", "Kopírovat odkaz", "Ukažte tento kód u pokladny",
           "Chybí ještě {4800} bodů", "{200}</span> bodů"],
    "sk": ["Dobrý deň, Jana", "Vaše odmeny", "Pečiatkové karty", "Úroveň",
           "Ešte 100 bodov do úrovne Gold", "Ešte 4 pečiatky do odmeny: Free coffee", "4 z 8",
           "Uplatnite svoje body", "Pozvite priateľa", "Kopírovať odkaz", "Ukážte tento kód pri pokladni",
           "Chýba ešte {4800} bodov", "{200}</span> bodov"],
}
ENGLISH = ["Hello, Jana", "Your rewards", "Stamp cards", "more points to", "more stamps to", "Spend your points",
           "Invite a friend", "Copy link", "Show this code at the counter", "more points needed", "</span> points",
           "Your card", "Where will you use it?", "Redeem<"]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_card_page_comes_out_in_czech_and_slovak(shop, lang):
    _, base, token = shop
    page = get(f"{base}/card/{token}?lang={lang}")
    assert f'<html lang="{lang}">' in page
    for text in CARD[lang]:
        text = re.sub(r"\{(\d+)\}", lambda m: format_decimal(int(m[1]), locale=lang), text)
        assert text in page, f"{lang}: {text!r} is not on the card"
    left = [text for text in ENGLISH if text in page]
    assert not left, f"{lang}: English on the card: {left}"
    # a refused link too
    page = get(f"{base}/card/nonsense?lang={lang}")
    assert {"cs": "Tento odkaz na kartu není platný", "sk": "Tento odkaz na kartu nie je platný"}[lang] in page
    assert "This card link is not valid" not in page


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_counter_page_and_its_script_messages_come_out_in_czech_and_slovak(shop, lang):
    _, base, _ = shop
    english, page = get(f"{base}/counter?lang=en"), get(f"{base}/counter?lang={lang}")
    assert f'<html lang="{lang}">' in page
    heading = {"cs": "Přihlášení k pokladně", "sk": "Prihlásenie do pokladne"}[lang]
    assert heading in page and "Sign in to the counter" not in page and "Find the customer" not in page

    def script_messages(html: str) -> dict:
        return json.loads(re.search(r'<script type="application/json" id="messages">(.*?)</script>', html, re.S)[1])

    en, translated = script_messages(english), script_messages(page)
    assert set(en) == set(translated)
    same = sorted(key for key in en if en[key] == translated[key] and en[key] not in ("Online", "Offline"))
    assert not same, f"{lang}: counter.js messages still in English: {same}"
    assert translated["redeem"] == {"cs": "Uplatnit", "sk": "Uplatniť"}[lang]


def test_a_script_gets_every_plural_form_by_cldr_category():
    """``plurals`` (the counter's messages): one form per CLDR category, the
    ones ``Intl.PluralRules`` names in the browser, each the catalog's form."""
    from engine.web.pages.render import plural_forms

    assert plural_forms("en", "{delta} point", "{delta} points") == {"one": "{delta} point", "other": "{delta} points"}
    assert plural_forms("cs", "{delta} point", "{delta} points") == {
        "one": "{delta} bod", "few": "{delta} body", "other": "{delta} bodů"}  # "many" is for fractions only
    assert plural_forms("sk", "{n} more point needed", "{n} more points needed") == {
        "one": "Chýba ešte {n} bod", "few": "Chýbajú ešte {n} body", "other": "Chýba ešte {n} bodov"}
