"""The customer's card: points, tier, stamp cards, rewards and the referral
link, on a page of its own or inside the shops.

Three ways in, one card (``card_body.html``):

- ``GET /card/<signed link>``: the link ``regulars card link KEY`` makes
  (engine.links). A forged, expired or revoked link gets a page saying so (403,
  410 when expired). The page may not be framed.
- ``GET /proxy/shopify``: Shopify's app proxy (``https://SHOP/apps/regulars``
  forwarded here). Shopify's ``signature`` query parameter is checked with the
  app's secret (``REGULARS_SHOPIFY_API_SECRET``) exactly as Shopify documents
  it, the ``timestamp`` must be fresh, ``shop`` must be the configured shop,
  and ``logged_in_customer_id`` names the customer (linked as
  ``shopify:<id>``). The answer is ``application/liquid``: Shopify renders it
  inside the shop's theme. Every ``{`` and ``}`` is written as an HTML entity,
  so nothing in it (a customer's name) is read as Liquid.
- ``GET /embed/woocommerce?customer=<user id>&ts=<unix time>&sig=<hex>``: the
  iframe the WordPress snippet (README) puts on a page; ``sig`` is
  HMAC-SHA256 of ``<user id>|<ts>`` with ``REGULARS_WOOCOMMERCE_EMBED_SECRET``.
  Only the shop's origin (``[connectors.woocommerce] url``) may frame it.

Redeeming posts a form to ``/card/<link>/redeem``, ``/proxy/shopify/redeem``
(through the proxy, signed again by Shopify) or ``/embed/woocommerce/redeem``.
Each form carries a token sealed with the server's key (engine.credentials):
who the page was for, the reward, and a nonce. The token is the protection
against cross-site forgery (a page elsewhere can't read it), and its nonce is
the redemption's idempotency key, so a double click or a resent form issues one
reward. The redemption itself is ``Engine.redeem``, as in ``/api/v1/me``; the
shop's coupon follows through the outbox. The answer redirects back (303) with
a sealed notice: the new code, or why it was refused.

``GET /invite/<referral code>`` is where a customer's referral link leads: the
code and where to use it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from urllib.parse import parse_qsl, urlencode, urlsplit

from babel.lists import format_list
from markupsafe import Markup, escape
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from engine.customers import customer_summary
from engine.db import as_utc, utcnow
from engine.db.models import customers
from engine.identity import birthday_from
from engine.metrics import points_channel
from engine.web.pages.render import LOCALES
from engine.web.qr import qr

log = logging.getLogger("regulars.pages.card")

PUBLIC_URL = "REGULARS_PUBLIC_URL"
SHOPIFY_SECRET = "REGULARS_SHOPIFY_API_SECRET"
WOOCOMMERCE_SECRET = "REGULARS_WOOCOMMERCE_EMBED_SECRET"

#: a signed request (Shopify's proxy, the WooCommerce embed) is good this many
#: seconds after its timestamp, and this many before it (clocks drift)
SIGNED_MAX_AGE = 300
SIGNED_MAX_SKEW = 60
#: how long a page's redeem forms stay good
FORM_MAX_AGE = 6 * 3600
#: how long the WooCommerce embed may be reopened after a redemption
VIEW_MAX_AGE = 30 * 60
#: how long the message after a redemption is shown
NOTICE_MAX_AGE = 10 * 60
#: the largest form body taken
MAX_FORM = 8 * 1024

#: the parameters Shopify's app proxy adds to a request
SHOPIFY_PARAMS = ("shop", "logged_in_customer_id", "path_prefix", "timestamp", "signature")

_DIGITS = re.compile(r"^[0-9]{1,20}$")
_PATH_PREFIX = re.compile(r"^/[A-Za-z0-9_\-/]{1,200}$")
_NONCE = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
#: what a birthday form's sealed token names instead of a reward
BIRTHDAY_FORM = "@birthday"


# -- signatures --------------------------------------------------------------------


class Refused(Exception):
    """A request the card is not shown for; ``reason`` names the page to show."""

    def __init__(self, reason: str, status: int):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def shopify_proxy_signature(pairs: list[tuple[str, str]], secret: str) -> str:
    """Shopify's app proxy signature of a query (its ``(key, value)`` pairs):
    every parameter but ``signature`` as ``key=value`` (the values of a repeated
    key joined with commas), sorted, joined with nothing, HMAC-SHA256 in hex."""
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        if key != "signature":
            grouped.setdefault(key, []).append(value)
    message = "".join(sorted(f"{key}={','.join(values)}" for key, values in grouped.items()))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def woocommerce_embed_signature(customer: str, timestamp: str, secret: str) -> str:
    """The WooCommerce embed's ``sig``: HMAC-SHA256 of ``customer|ts``, in hex
    (PHP: ``hash_hmac('sha256', $customer . '|' . $ts, $secret)``)."""
    return hmac.new(secret.encode(), f"{customer}|{timestamp}".encode(), hashlib.sha256).hexdigest()


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace"))


def _fresh(timestamp: str, now: float) -> None:
    if not _DIGITS.match(timestamp or ""):
        raise Refused("unsigned", 401)
    age = now - int(timestamp)
    if age > SIGNED_MAX_AGE or age < -SIGNED_MAX_SKEW:
        raise Refused("stale", 401)


def verify_shopify_proxy(query: str, secret: str, shop: str | None, now: float | None = None) -> dict[str, str]:
    """The parameters of a request Shopify's app proxy signed; ``Refused``
    (401) when the signature is missing or wrong, the timestamp is stale or
    the request was signed for another shop."""
    if not secret:
        raise Refused("not_configured", 401)
    pairs = parse_qsl(query, keep_blank_values=True)
    given = [value for key, value in pairs if key == "signature"]
    if len(given) != 1 or not given[0]:
        raise Refused("unsigned", 401)
    if not _same(shopify_proxy_signature(pairs, secret), given[0]):
        raise Refused("bad_signature", 401)
    # A visitor may add any parameter to the shop's URL, and Shopify signs it
    # with its own: one that repeats Shopify's (a second logged_in_customer_id)
    # is an attempt to be someone else.
    keys = [key for key, _ in pairs]
    if any(keys.count(key) > 1 for key in SHOPIFY_PARAMS):
        raise Refused("bad_signature", 401)
    params = dict(pairs)
    _fresh(params.get("timestamp", ""), time.time() if now is None else now)
    if shop and params.get("shop", "").strip().lower() != shop.strip().lower():
        raise Refused("bad_signature", 401)
    return params


def verify_woocommerce_embed(customer: str, timestamp: str, sig: str, secret: str,
                             now: float | None = None) -> str:
    """The WordPress user id of a signed embed request; ``Refused`` (401) when
    the signature is missing or wrong or the timestamp stale."""
    if not secret:
        raise Refused("not_configured", 401)
    if not customer or not sig or not timestamp:
        raise Refused("unsigned", 401)
    if not _DIGITS.match(customer) or not _same(woocommerce_embed_signature(customer, timestamp, secret), sig):
        raise Refused("bad_signature", 401)
    _fresh(timestamp, time.time() if now is None else now)
    return customer


# -- who the page is for -----------------------------------------------------------


@dataclass
class Viewer:
    """Whose card a request shows, and how the page is reached."""

    customer_id: int | None
    #: what the page's forms are bound to ("link:<digest>", "shopify:<id>", ...)
    via: str
    #: "page" (its own page), "embed" (the WooCommerce iframe), "liquid" (Shopify)
    mode: str = "page"
    #: where the forms post, and where the answer redirects to
    action: str = ""
    back: str = ""
    back_query: dict = field(default_factory=dict)
    #: the channel the redeem form offers first
    channel: str | None = None
    #: the origin the embed tells its height to (WooCommerce)
    parent_origin: str | None = None


def origin_of(url: str | None) -> str | None:
    """``https://shop.example`` of ``https://shop.example/wp/``."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class CardPages:
    def __init__(self, engine, templates):
        self.engine = engine
        self.templates = templates

    # -- plumbing ----------------------------------------------------------------

    @staticmethod
    def env(name: str) -> str:
        return os.environ.get(name, "").strip()

    def public_base(self, request: Request) -> str:
        return (self.env(PUBLIC_URL) or str(request.base_url)).rstrip("/")

    def shop_setting(self, channel: str, key: str) -> str | None:
        table = self.engine.config.table(f"connectors.{channel}")
        return table.get(key) if isinstance(table, dict) else None

    def seal(self, data: dict) -> str:
        return self.engine.credentials.seal(data)

    def unseal(self, token: str | None, max_age: int) -> dict | None:
        if not token or len(token) > 2000:
            return None
        return self.engine.credentials.unseal(token, max_age=max_age)

    @staticmethod
    def headers(mode: str, frame_ancestors: str = "'none'") -> dict[str, str]:
        """No caching anywhere (a personal page), no referrer (the link is in
        the address), and who may frame it. A Liquid answer becomes part of the
        shop's page, so it sets no policy of its own; nor does a redirect."""
        found = {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer",
                 "X-Content-Type-Options": "nosniff"}
        if mode in ("liquid", "redirect"):
            return found
        found["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self' data: https:; style-src 'self' 'unsafe-inline'; "
            f"script-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {frame_ancestors}")
        if frame_ancestors == "'none'":
            found["X-Frame-Options"] = "DENY"
        return found

    def frame_ancestors(self, viewer: Viewer | None) -> str:
        if viewer is not None and viewer.mode == "embed" and viewer.parent_origin:
            return viewer.parent_origin
        return "'none'"

    def respond(self, request: Request, viewer: Viewer | None, inner: str, status: int = 200,
                **values) -> Response:
        """``inner`` (card_body.html or card_message.html) in the wrapper the
        mode calls for: a page, the iframe's page, or a Liquid fragment."""
        mode = viewer.mode if viewer is not None else "page"
        headers = self.headers(mode, self.frame_ancestors(viewer))
        values.update(inner=inner, viewer=viewer, mode=mode)
        if mode == "liquid":
            context = self.templates.context(request)
            context.update(values, asset_base=self.public_base(request) + "/static/")
            html = self.templates.env.get_template("card_liquid.html").render(context)
            # Shopify reads the answer as Liquid: no "{{" or "{%" may reach it.
            html = html.replace("{", "&#123;").replace("}", "&#125;")
            return Response(html, status_code=status, headers=headers, media_type="application/liquid")
        wrapper = "card_embed.html" if mode == "embed" else "card.html"
        return self.templates.render(request, wrapper, status=status, headers=headers, **values)

    def message(self, request: Request, viewer: Viewer | None, reason: str, status: int, **values) -> Response:
        return self.respond(request, viewer, "card_message.html", status, reason=reason, **values)

    def redirect(self, viewer: Viewer, notice: dict | None = None) -> Response:
        query = dict(viewer.back_query)
        if notice is not None:
            query["notice"] = self.seal({"c": viewer.customer_id, **notice})
        url = viewer.back + ("?" + urlencode(query) if query else "")
        return RedirectResponse(url, status_code=303, headers=self.headers("redirect"))

    # -- the view --------------------------------------------------------------

    def view(self, request: Request, viewer: Viewer) -> dict | None:
        """What the card shows (None when the customer is gone). Runs in a thread."""
        engine = self.engine
        summary = customer_summary(engine, viewer.customer_id)
        if summary is None:
            return None
        now = utcnow()
        customer_id = summary["id"]
        points, pending = summary["points"], summary["points_pending"]
        spendable = max(points - pending, 0)
        channels = self.channels()

        notice = self.unseal(request.query_params.get("notice"), NOTICE_MAX_AGE)
        if notice is not None and notice.get("c") not in (customer_id, viewer.customer_id):
            notice = None

        cards = []
        for name, card in engine.cards.cards.items():
            held = int(summary["stamps"].get(name, 0))
            entry = engine.catalogue.entries.get(card.reward, {})
            cards.append({
                "name": name, "title": _title(name), "required": card.required,
                "have": max(min(held, card.required), 0), "owed": max(-held, 0),
                "left": card.required - max(held, 0), "cols": _columns(card.required),
                "reward": _offer(card.reward, entry),
            })

        mine = []
        for reward in summary["rewards"]:
            mine.append({**reward, "title": _title(reward["reward"]),
                         "expires_at": _when(reward["expires_at"]),
                         "value": None if reward["value"] is None else Decimal(reward["value"]),
                         "places": self.places(reward, channels)})

        offers = []
        for name, entry in engine.catalogue.entries.items():
            if not entry.get("cost"):
                continue
            allowed = [c for c in channels if not entry.get("channels") or c["name"] in entry["channels"]]
            if not allowed:
                continue
            if viewer.channel:
                allowed.sort(key=lambda c: c["name"] != viewer.channel)
            most = spendable // entry["cost"]
            if entry.get("max_units"):
                most = min(most, entry["max_units"])
            offers.append({
                **_offer(name, entry), "cost": entry["cost"], "partial": bool(entry.get("partial")),
                "affordable": most >= 1, "missing": max(entry["cost"] - spendable, 0),
                "max_units": most if entry.get("partial") else 1, "channels": allowed,
                "token": self.seal({"via": viewer.via, "c": customer_id, "r": name,
                                    "n": secrets.token_urlsafe(16)}),
            })

        referral = None
        if summary["referral_code"]:
            program = engine.referrals.program
            referral = {
                "code": summary["referral_code"],
                "url": f"{self.public_base(request)}/invite/{summary['referral_code']}",
                "referrer_points": program.referrer_points if program else None,
                "referee_points": program.referee_points if program else None,
                "min_order": program.min_order if program else None,
            }

        # Inline, and scalable: segno's width and height become a viewBox.
        qr_svg = qr(summary["card_code"], "svg", scale=6).decode()
        qr_svg = re.sub(r'width="(\d+)" height="(\d+)"', r'viewBox="0 0 \1 \2"', qr_svg[qr_svg.index("<svg"):], count=1)
        qr_svg = qr_svg.replace("<svg ", '<svg aria-hidden="true" focusable="false" ', 1)
        return {
            "customer": summary,
            "points": points, "pending": pending, "spendable": spendable,
            # (the shop's days: Formats.date shows a date as it is)
            "expiring": [{"on": date.fromisoformat(e["on"]), "points": e["points"]} for e in summary["points_expiring"]],
            "tier": self.tier(customer_id, summary["tier"], now),
            "stamp_cards": cards,
            "my_rewards": mine,
            "offers": offers,
            "channel_labels": {c["name"]: c["label"] for c in channels},
            "either": _either,
            "referral": referral,
            "memberships": [m for m in summary.get("memberships") or [] if m.get("status") != "cancelled"],
            "history": points_history(engine, customer_id),
            "birthday_form": self.birthday_form(viewer, summary),
            "notice": notice,
            "qr_svg": Markup(qr_svg),
        }

    def birthday_form(self, viewer: Viewer, summary: dict) -> dict | None:
        """The form that asks for the customer's birthday: when it brings
        them something and theirs is not known (the summary's
        ``birthday_wanted``); else None."""
        from engine.birthdays import bonus

        if not summary["birthday_wanted"]:
            return None
        plugin = bonus(self.engine)
        return {"times": plugin.factor if plugin else 1, "gift": plugin.gift if plugin else None,
                "max": utcnow().date().isoformat(),
                "token": self.seal({"via": viewer.via, "c": summary["id"], "r": BIRTHDAY_FORM,
                                    "n": secrets.token_urlsafe(16)})}

    def channels(self) -> list[dict]:
        """The shops a reward can be redeemed for: the configured connectors."""
        found = []
        for name in ("shopify", "woocommerce", "pos"):
            if name not in self.engine.connectors:
                continue
            where = None
            if name == "shopify":
                where = self.shop_setting("shopify", "shop")
            elif name == "woocommerce":
                where = urlsplit(self.shop_setting("woocommerce", "url") or "").netloc or None
            found.append({"name": name, "label": where})
        return found

    def places(self, reward: dict, channels: list[dict]) -> list[str] | None:
        """Where an issued reward can be spent, among the configured channels
        (None: anywhere). Its catalogue entry's ``channels`` bound it; one
        issued for a shop has its coupon in that shop only, and the counter
        takes its code too, unless the entry leaves the counter out."""
        allowed = (self.engine.catalogue.entries.get(reward["reward"]) or {}).get("channels")
        names = [c["name"] for c in channels]
        issued_for = reward["channel"]
        if issued_for is None:
            if not allowed:
                return None
            found = [name for name in names if name in allowed]
        else:
            found = [issued_for]
            if "pos" in names and issued_for != "pos" and (not allowed or "pos" in allowed):
                found.append("pos")
        if len(found) > 1 and set(found) == set(names):
            return None
        return found or list(allowed or [issued_for])

    def tier(self, customer_id: int, current: str | None, now: datetime) -> dict | None:
        """The tier, and what the next one needs, in the programme's measure."""
        tiers = self.engine.tiers
        program = tiers.program
        if not program:
            return None
        with self.engine.db.connect() as conn:
            metric = tiers.metric(conn, customer_id, now)
        rank = tiers.ranks.get(current, -1)
        levels = program.levels
        upcoming = levels[rank + 1] if rank + 1 < len(levels) else None
        floor = levels[rank].threshold if rank >= 0 else Decimal(0)
        found = {
            "name": current, "title": _title(current) if current else None, "measure": program.metric,
            "metric": metric, "window_days": program.window_days,
            "multiplier": levels[rank].multiplier if rank >= 0 else None,
            "next": None, "percent": 100,
        }
        if upcoming is not None:
            needed = max(upcoming.threshold - metric, Decimal(0))
            span = upcoming.threshold - floor
            share = (metric - floor) / span if span > 0 else Decimal(1)
            found.update(next=upcoming.name, next_title=_title(upcoming.name),
                         needed=needed if program.metric == "spend" else int(needed.to_integral_value()),
                         percent=int(max(min(share, Decimal(1)), Decimal(0)) * 100))
        return found

    async def show(self, request: Request, viewer: Viewer) -> Response:
        values = await run_in_threadpool(self.view, request, viewer)
        if values is None:
            return self.message(request, viewer, "unknown_customer", 404)
        return self.respond(request, viewer, "card_body.html", **values)

    async def redeem(self, request: Request, viewer: Viewer) -> Response:
        """Redeem what a card's form asks, once, and go back to the card."""
        from engine.rewards import RedemptionRefused

        body = await request.body()
        if len(body) > MAX_FORM:
            return self.message(request, viewer, "bad_form", 413)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        sealed = self.unseal(form.get("form"), FORM_MAX_AGE)
        if sealed is not None and sealed.get("r") == BIRTHDAY_FORM and "birthday" in form \
                and hmac.compare_digest(str(sealed.get("via", "")), viewer.via):
            return await self.save_birthday(viewer, sealed, form["birthday"])
        if sealed is None or not hmac.compare_digest(str(sealed.get("via", "")), viewer.via) \
                or sealed.get("r") != form.get("reward") or not _NONCE.match(str(sealed.get("n", ""))):
            # Forged, altered or too old: nothing is redeemed; the card says to try again.
            return self.redirect(viewer, {"stale": True})
        if viewer.customer_id is None:
            viewer.customer_id = sealed["c"]
        units = form.get("units") or "1"
        units = int(units) if units.isdigit() and len(units) < 6 else 0
        channel = form.get("channel") or None
        key = f"card:{viewer.customer_id}:{sealed['n']}"
        try:
            issued = await run_in_threadpool(self.engine.redeem, f"id:{viewer.customer_id}", sealed["r"],
                                             channel, units, key)
        except RedemptionRefused as exc:
            return self.redirect(viewer, {"refused": exc.reason, "v": exc.values})
        return self.redirect(viewer, {"done": issued.code})

    async def save_birthday(self, viewer: Viewer, sealed: dict, value: str) -> Response:
        """The card's birthday form (sent to the redeem address, in every
        mode): kept once, never changed from the card."""
        if viewer.customer_id is None:
            viewer.customer_id = sealed["c"]
        day = birthday_from(value)
        if day is None:
            return self.redirect(viewer, {"birthday": "bad"})

        def save() -> bool:
            with self.engine.db.begin() as conn:
                return self.engine.identity.set_birthday(conn, viewer.customer_id, day, utcnow())

        saved = await run_in_threadpool(save)
        return self.redirect(viewer, {"birthday": "saved" if saved else "known"})

    # -- the signed link -------------------------------------------------------

    async def link_viewer(self, request: Request) -> Viewer:
        from engine.links import LinkRefused, customer_of

        token = request.path_params["token"]
        try:
            customer_id = await run_in_threadpool(customer_of, self.engine, token)
        except LinkRefused as exc:
            raise Refused(exc.reason, 410 if exc.reason == "expired" else 403) from None
        return Viewer(customer_id, via=f"link:{_digest(token)}", mode="page",
                      action=f"/card/{token}/redeem", back=f"/card/{token}")

    async def card(self, request: Request) -> Response:
        try:
            viewer = await self.link_viewer(request)
        except Refused as exc:
            return self.message(request, None, exc.reason, exc.status)
        return await self.show(request, viewer)

    async def card_redeem(self, request: Request) -> Response:
        try:
            viewer = await self.link_viewer(request)
        except Refused as exc:
            return self.message(request, None, exc.reason, exc.status)
        return await self.redeem(request, viewer)

    # -- Shopify's app proxy ---------------------------------------------------

    async def shopify_viewer(self, request: Request) -> Viewer:
        if "shopify" not in self.engine.connectors:
            raise Refused("not_found", 404)
        params = verify_shopify_proxy(request.url.query, self.env(SHOPIFY_SECRET),
                                      self.shop_setting("shopify", "shop"))
        prefix = params.get("path_prefix") or ""
        if not _PATH_PREFIX.match(prefix) or prefix.startswith("//"):
            prefix = "/apps/regulars"
        prefix = prefix.rstrip("/")
        shopper = params.get("logged_in_customer_id", "").strip()
        viewer = Viewer(None, via=f"shopify:{shopper}", mode="liquid", action=f"{prefix}/redeem",
                        back=prefix, channel="shopify")
        if not shopper:
            raise Refused("login", 200)
        if not _DIGITS.match(shopper):
            raise Refused("bad_signature", 401)
        viewer.customer_id = await run_in_threadpool(self.find, f"shopify:{shopper}")
        return viewer

    def find(self, key: str) -> int | None:
        with self.engine.db.connect() as conn:
            return self.engine.identity.find(conn, key)

    def referrer(self, code: str) -> int | None:
        """Whose referral code it is (a card code or an email is not one)."""
        with self.engine.db.connect() as conn:
            return conn.execute(select(customers.c.id).where(customers.c.referral_code == code)).scalar_one_or_none()

    async def shopify(self, request: Request, then) -> Response:
        try:
            viewer = await self.shopify_viewer(request)
        except Refused as exc:
            if exc.reason == "login":
                prefix = request.query_params.get("path_prefix") or "/apps/regulars"
                if not _PATH_PREFIX.match(prefix) or prefix.startswith("//"):
                    prefix = "/apps/regulars"
                liquid = Viewer(None, via="", mode="liquid")
                return self.message(request, liquid, "login", 200,
                                    login_url="/account/login?" + urlencode({"return_url": prefix}))
            if exc.reason == "not_configured":
                log.warning("a Shopify app proxy request came, but %s is not set", SHOPIFY_SECRET)
            return self.message(request, None, exc.reason, exc.status)
        if viewer.customer_id is None:
            return self.message(request, viewer, "no_card", 200)
        return await then(request, viewer)

    async def shopify_card(self, request: Request) -> Response:
        return await self.shopify(request, self.show)

    async def shopify_redeem(self, request: Request) -> Response:
        return await self.shopify(request, self.redeem)

    # -- the WooCommerce embed -------------------------------------------------

    async def woocommerce_viewer(self, request: Request, user: str | None = None) -> Viewer:
        if "woocommerce" not in self.engine.connectors:
            raise Refused("not_found", 404)
        params = request.query_params
        if user is None:
            seen = self.unseal(params.get("view"), VIEW_MAX_AGE)
            if seen is not None and _DIGITS.match(str(seen.get("woocommerce", ""))):
                user = seen["woocommerce"]
            else:
                user = verify_woocommerce_embed(params.get("customer", ""), params.get("ts", ""),
                                                params.get("sig", ""), self.env(WOOCOMMERCE_SECRET))
        lang = params.get("lang")
        back_query = {"view": self.seal({"woocommerce": user})}
        action = "/embed/woocommerce/redeem"
        if lang in LOCALES:  # the iframe keeps no cookie of ours: the language goes along
            back_query["lang"] = lang
            action += f"?lang={lang}"
        viewer = Viewer(None, via=f"woocommerce:{user}", mode="embed", action=action,
                        back="/embed/woocommerce", back_query=back_query, channel="woocommerce",
                        parent_origin=origin_of(self.shop_setting("woocommerce", "url")))
        viewer.customer_id = await run_in_threadpool(self.find, f"woocommerce:{user}")
        return viewer

    async def woocommerce(self, request: Request) -> Response:
        try:
            viewer = await self.woocommerce_viewer(request)
        except Refused as exc:
            if exc.reason == "not_configured":
                log.warning("a WooCommerce embed request came, but %s is not set", WOOCOMMERCE_SECRET)
            embed = Viewer(None, via="", mode="embed",
                           parent_origin=origin_of(self.shop_setting("woocommerce", "url")))
            return self.message(request, embed, exc.reason, exc.status)
        if viewer.customer_id is None:
            return self.message(request, viewer, "no_card", 200)
        return await self.show(request, viewer)

    async def woocommerce_redeem(self, request: Request) -> Response:
        # The sealed form token is the credential here: it was handed out only
        # on a page whose signature was checked, and names the WordPress user.
        body = await request.body()
        form = dict(parse_qsl(body[:MAX_FORM].decode("utf-8", "replace"), keep_blank_values=True))
        sealed = self.unseal(form.get("form"), FORM_MAX_AGE) or {}
        via = str(sealed.get("via", ""))
        user = via.partition(":")[2]
        if not via.startswith("woocommerce:") or not _DIGITS.match(user):
            embed = Viewer(None, via="", mode="embed",
                           parent_origin=origin_of(self.shop_setting("woocommerce", "url")))
            return self.message(request, embed, "expired_view", 403)
        try:
            viewer = await self.woocommerce_viewer(request, user)
        except Refused as exc:
            return self.message(request, None, exc.reason, exc.status)
        if viewer.customer_id is None:
            return self.message(request, viewer, "no_card", 200)
        return await self.redeem(request, viewer)  # Starlette keeps the body read above

    # -- the referral link -----------------------------------------------------

    async def invite(self, request: Request) -> Response:
        code = request.path_params["code"].strip().upper()
        program = self.engine.referrals.program
        found = None
        if program and re.fullmatch(r"[A-Z0-9]{4,32}", code):
            found = await run_in_threadpool(self.referrer, code)
        headers = self.headers("page")
        if found is None:
            return self.templates.render(request, "card_invite.html", status=404, headers=headers, code=None)
        shops = []
        if "shopify" in self.engine.connectors and self.shop_setting("shopify", "shop"):
            shops.append(f"https://{self.shop_setting('shopify', 'shop')}")
        if "woocommerce" in self.engine.connectors and self.shop_setting("woocommerce", "url"):
            shops.append(self.shop_setting("woocommerce", "url"))
        shops = [{"url": url, "host": urlsplit(url).netloc} for url in shops]
        return self.templates.render(request, "card_invite.html", headers=headers, code=code,
                                     program=program, shops=shops, counter="pos" in self.engine.connectors)

    def routes(self) -> list:
        return [
            Route("/card/{token}", self.card, methods=["GET"]),
            Route("/card/{token}/redeem", self.card_redeem, methods=["POST"]),
            Route("/proxy/shopify", self.shopify_card, methods=["GET"]),
            Route("/proxy/shopify/", self.shopify_card, methods=["GET"]),
            Route("/proxy/shopify/redeem", self.shopify_redeem, methods=["POST"]),
            Route("/embed/woocommerce", self.woocommerce, methods=["GET"]),
            Route("/embed/woocommerce/redeem", self.woocommerce_redeem, methods=["POST"]),
            Route("/invite/{code}", self.invite, methods=["GET"]),
        ]


#: the points entries the card's history shows, newest first
HISTORY = 10


def points_history(engine, customer_id: int, limit: int = HISTORY) -> list[dict]:
    """The customer's latest points entries, newest first by when they
    happened: ``at``, ``amount``, ``reason`` (the ledger's), ``channel``
    (where: an order's, a visit's, a membership's, a redemption's) and
    ``reward`` (a redemption's catalogue name). Consecutive entries of one
    cause (an order's points and a campaign's bonus on it) are one line; a
    cause that came to nothing (points given and taken back) is left out."""
    from engine.db.models import accounts, ledger_entries, rewards
    from engine.rules_api import UNIT_POINTS

    entries = ledger_entries.c
    with engine.db.connect() as conn:
        rows = conn.execute(
            select(entries.amount, entries.reason, entries.source, entries.occurred_at, entries.detail)
            .join(accounts, accounts.c.id == entries.account_id)
            .where(accounts.c.customer_id == customer_id, accounts.c.unit == UNIT_POINTS)
            .order_by(entries.occurred_at.desc(), entries.id.desc()).limit(limit * 4)
        ).all()
        codes = {row.source.partition(":")[2] for row in rows if row.reason == "redeem"}
        names = dict(conn.execute(select(rewards.c.code, rewards.c.reward).where(rewards.c.code.in_(codes))).all()) \
            if codes else {}
    lines: list[dict] = []
    for row in rows:
        if lines and (lines[-1]["reason"], lines[-1]["source"]) == (row.reason, row.source):
            lines[-1]["amount"] += row.amount
            continue
        rest = (row.source or "").partition(":")[2]
        # where, as the dashboard's figures count it (a redemption names its channel in the entry)
        redeemed_in = (row.detail or {}).get("channel") if row.reason == "redeem" else None
        lines.append({"at": as_utc(row.occurred_at), "amount": row.amount, "reason": row.reason, "source": row.source,
                      "channel": points_channel(row.reason, row.source, redeemed_in, None),
                      "reward": _title(names[rest]) if row.reason == "redeem" and rest in names else None})
    return [line for line in lines if line["amount"]][:limit]


def _title(name: str) -> str:
    """``free-coffee`` → ``Free coffee`` (catalogue and card names are slugs)."""
    text = re.sub(r"[-_.]+", " ", name or "").strip()
    return text[:1].upper() + text[1:]


def _columns(required: int) -> int:
    """How many holes a row of the punch card has."""
    if required <= 6:
        return required
    for cols in (5, 4, 6):
        if required % cols == 0:
            return cols
    return 5


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _either(items: list, locale: str) -> Markup:
    """``A or b``, ``A, b, or c`` in the page's language (text escaped, Markup kept)."""
    return Markup(format_list([str(escape(item)) for item in items], style="or", locale=locale))


def _offer(name: str, entry: dict) -> dict:
    value = entry.get("value")
    return {"name": name, "title": _title(name), "kind": entry.get("kind"),
            "value": None if value is None else Decimal(str(value)), "sku": entry.get("sku")}


def routes(engine, templates) -> list:
    return CardPages(engine, templates).routes()
