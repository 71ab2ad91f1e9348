"""Server-rendered pages: Jinja2 templates (``engine/web/templates``), in the
visitor's language (Babel catalogs in ``engine/web/locale``: English, Czech,
Slovak), with money and dates in their locale, and the merchant's
``[branding]``.

The language is, in order: ``?lang=xx`` (remembered in a cookie), the cookie,
the browser's ``Accept-Language``, then ``[branding] locale``. Translations are
handed to each render (not installed on the shared environment), so
concurrent requests in different languages never mix.

In a template: ``{{ _("Points") }}``, ``{{ ngettext("%(num)s point", "%(num)s points", n) }}``,
``{% trans count=n %}...{% endtrans %}``, ``plurals("{n} point", "{n} points")`` (every
plural form, for a script),
``{{ fmt.money(amount) }}``, ``{{ fmt.date(moment) }}``, ``{{ fmt.number(n) }}``,
``{{ brand.name }}``, ``{{ url_for('static', path='pages.css') }}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path

from babel import Locale
from babel.core import negotiate_locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, format_percent
from babel.support import Translations
from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

LOCALES = ("en", "cs", "sk")
LOCALE_DIR = Path(__file__).resolve().parents[1] / "locale"
LANG_COOKIE = "regulars_lang"


@cache
def translations(locale: str) -> Translations:
    """The compiled catalog of a locale (English: the messages as written)."""
    return Translations.load(str(LOCALE_DIR), [locale], domain="messages")


def choose_locale(request: Request, default: str = "en") -> str:
    """The page's language for this request (see the module docstring)."""
    asked = request.query_params.get("lang")
    if asked in LOCALES:
        return asked
    cookie = request.cookies.get(LANG_COOKIE)
    if cookie in LOCALES:
        return cookie
    header = request.headers.get("accept-language", "")
    preferred = []
    for part in header.split(","):
        tag = part.split(";", 1)[0].strip().replace("-", "_")
        if tag:
            preferred.append(tag)
    found = negotiate_locale(preferred, list(LOCALES), sep="_") if preferred else None
    if found is None:  # "cs_CZ" is Czech too
        found = next((p.split("_", 1)[0] for p in preferred if p.split("_", 1)[0] in LOCALES), None)
    return found or (default if default in LOCALES else "en")


@dataclass(frozen=True)
class Formats:
    """Money, numbers and dates in a locale."""

    locale: str
    currency: str
    timezone: str = "UTC"

    def money(self, amount, currency: str | None = None) -> str:
        return format_currency(Decimal(str(amount)), currency or self.currency, locale=self.locale)

    def number(self, value) -> str:
        return format_decimal(value, locale=self.locale)

    def percent(self, value, digits: int = 1) -> str:
        if value is None:
            return "–"
        return format_percent(value, format="#,##0." + "0" * digits + " %" if digits else None, locale=self.locale)

    def date(self, value: date | datetime | None, form: str = "medium") -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            return format_date(value.astimezone(_zone(self.timezone)).date(), form, locale=self.locale)
        return format_date(value, form, locale=self.locale)

    def datetime(self, value: datetime | None, form: str = "short") -> str:
        if value is None:
            return ""
        return format_datetime(value, form, tzinfo=_zone(self.timezone), locale=self.locale)

    @property
    def language_name(self) -> str:
        return Locale.parse(self.locale).get_display_name(self.locale).capitalize()


def _zone(name: str):
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except Exception:
        return ZoneInfo("UTC")


def _gettext(catalog: Translations):
    @pass_context
    def gettext(context, message: str, **variables) -> str:
        text = catalog.ugettext(message)
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables if variables else text

    @pass_context
    def ngettext(context, singular: str, plural: str, num: int, **variables) -> str:
        variables.setdefault("num", num)
        text = catalog.ungettext(singular, plural, num)
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables

    return gettext, ngettext


@cache
def _plural_samples(locale: str) -> dict[str, int]:
    """A whole number of each of the locale's CLDR plural categories (the
    ones ``Intl.PluralRules`` gives in a browser); a category only fractions
    fall in (Czech "many") has none."""
    rule = Locale.parse(locale).plural_form
    samples: dict[str, int] = {}
    for n in range(0, 1000):
        samples.setdefault(rule(n), n)
    return samples


def plural_forms(locale: str, singular: str, plural: str) -> dict[str, str]:
    """A message's forms for a script, by CLDR plural category
    (``{"one": ..., "few": ..., "other": ...}``): each the catalog's form for
    a number of that category. The script picks one with
    ``new Intl.PluralRules(locale).select(n)`` (``other`` when missing).
    ``scripts/i18n`` extracts ``plurals("...", "...")`` as ``ngettext``."""
    catalog = translations(locale)
    return {tag: catalog.ungettext(singular, plural, n) for tag, n in _plural_samples(locale).items()}


class Templates:
    """Renders the pages' templates for an ``Engine``."""

    def __init__(self, engine):
        self.engine = engine
        self.env = Environment(
            loader=PackageLoader("engine.web", "templates"),
            autoescape=select_autoescape(["html", "xml", "svg"]),
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.install_null_translations(newstyle=True)  # replaced per render

    @property
    def brand(self) -> dict:
        brand = dict(self.engine.config.branding or {})
        brand.setdefault("name", "regulars")
        brand.setdefault("primary", "#1F6FEB")
        brand.setdefault("accent", "#F2A900")
        brand.setdefault("locale", "en")
        logo = brand.get("logo")
        if logo and not logo.startswith(("https://", "http://", "/")):
            brand["logo"] = "/branding/logo"
        return brand

    def logo_file(self) -> Path | None:
        """The logo's file beside plugins.toml, if ``[branding] logo`` names one."""
        logo = (self.engine.config.branding or {}).get("logo")
        if not logo or logo.startswith(("https://", "http://", "/")):
            return None
        path = (self.engine.config.base_dir / logo).resolve()
        return path if path.is_file() else None

    def context(self, request: Request, locale: str | None = None) -> dict:
        locale = locale or choose_locale(request, self.brand["locale"])
        gettext, ngettext = _gettext(translations(locale))
        return {
            "request": request,
            "locale": locale,
            "locales": LOCALES,
            "brand": self.brand,
            "fmt": Formats(locale, self.engine.config.currency, self.engine.config.engine.get("timezone", "UTC")),
            "gettext": gettext,
            "ngettext": ngettext,
            "plurals": lambda singular, plural: plural_forms(locale, singular, plural),
            "_": gettext,
            "url_for": request.url_for,
        }

    def render(self, request: Request, name: str, status: int = 200, headers: dict | None = None,
               **values) -> HTMLResponse:
        """A page; its language remembered in a cookie when asked with ``?lang``."""
        context = self.context(request)
        context.update(values)
        html = self.env.get_template(name).render(context)
        response = HTMLResponse(html, status_code=status, headers=headers)
        asked = request.query_params.get("lang")
        if asked in LOCALES:
            response.set_cookie(LANG_COOKIE, asked, max_age=365 * 86400, samesite="lax")
        return response

    def gettext(self, request: Request):
        """The ``_`` of a request, for messages made outside a template."""
        return _gettext_plain(translations(choose_locale(request, self.brand["locale"])))


def _gettext_plain(catalog: Translations):
    def gettext(message: str, **variables) -> str:
        text = catalog.ugettext(message)
        return text % variables if variables else text

    return gettext
