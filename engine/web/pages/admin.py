"""The merchant's dashboard, ``/admin``: the retention figures (engine.metrics)
with a chart each, customers and their ledger, the failed deliveries with a
replay button, and the programme as configured.

Who may enter: the admin users of ``regulars admin add`` (``admin_users``: a
unique username and an argon2 hash of the password, never the password).

- **Sessions**: Starlette's signed cookie ``regulars_admin``, on ``/admin``
  only, HttpOnly, SameSite=Lax, Secure when ``REGULARS_PUBLIC_URL`` is https;
  it lapses a working day (8 hours) after signing in (the signature carries
  the time: an older cookie is refused).
  Its key is derived (HMAC-SHA256) from the server's key (``REGULARS_SECRET_KEY``,
  else ``regulars.key`` beside plugins.toml: engine.credentials), so changing
  that key signs everybody out. Changing a password (``regulars admin
  passwd``) or removing the user ends their sessions too.
- **CSRF**: every form carries the session's random token in a hidden field;
  a POST without it, or with another, is refused with 403 (the sign-in form
  too, so nobody can sign a browser into their own account).
- **Signing in** takes the same argon2 work whether the user exists or not,
  and is throttled (``admin_sign_in_failures``): an address with
  ``SIGN_IN_MAX_PER_USERNAME`` refusals for one username, or
  ``SIGN_IN_MAX_PER_ADDRESS`` in all, within ``SIGN_IN_WINDOW`` gets 429
  until the oldest is out of the window.
- Pages are ``no-store``, may not be framed, and run no script but ``admin.js``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from markupsafe import Markup, escape
from sqlalchemy import String, and_, delete, func, literal_column, or_, select, update
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from engine import inbox, metrics
from engine.adjustments import LIMIT as ADJUST_LIMIT
from engine.adjustments import NOTE_LIMIT
from engine.adjustments import REASON as ADJUSTED
from engine.customers import count_customers
from engine.db import as_utc, utcnow
from engine.db.models import (
    accounts,
    admin_sign_in_failures,
    admin_users,
    customers,
    ledger_entries,
    orders,
    rewards,
)
from engine.identity import birthday_from
from engine.jsonio import storable
from engine.metrics import N_
from engine.web.pages.render import Formats, choose_locale

log = logging.getLogger("regulars.admin")

SESSION_COOKIE = "regulars_admin"
#: a session lapses this many seconds after signing in
SESSION_SECONDS = 8 * 3600
MAX_FORM = 64 * 1024
LEDGER_PAGE = 50
#: the customers the customers page lists (newest first), or a search finds
CUSTOMERS_PAGE = 50
#: the adjustments the dashboard lists, newest first
ADJUSTMENTS_PAGE = 200
USERNAME = re.compile(r"^[A-Za-z0-9._@+-]{1,150}$")
MIN_PASSWORD = 8
#: the sign-in throttle: an address with this many refused sign-ins for one
#: username, or this many in all, within the window waits until the oldest of
#: them is out of it (the real owner, elsewhere, is not locked out)
SIGN_IN_WINDOW = timedelta(minutes=15)
SIGN_IN_MAX_PER_USERNAME = 5
SIGN_IN_MAX_PER_ADDRESS = 20
#: config keys never shown on the programme page
SECRET_KEYS = re.compile(r"secret|token|password|passwd|api_key|consumer_key|private", re.I)


# -- admin users ------------------------------------------------------------------------------

_hasher = PasswordHasher()
_dummy_hash: str | None = None


class AdminError(ValueError):
    """A refused change to the admin users; the message says why."""


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"a password needs at least {MIN_PASSWORD} characters")


def add_user(engine, username: str, password: str) -> int:
    """A new admin user; ``AdminError`` if the name is taken or not allowed."""
    engine.ensure_schema()
    if not USERNAME.match(username or ""):
        raise AdminError("a username is 1 to 150 letters, digits or . _ @ + -")
    _check_password(password)
    digest = _hasher.hash(password)
    with engine.db.begin() as conn:
        if conn.execute(select(admin_users.c.id).where(admin_users.c.username == username)).first():
            raise AdminError(f"there is already an admin user {username!r}")
        return conn.execute(admin_users.insert().returning(admin_users.c.id).values(
            username=username, password_hash=digest, created_at=utcnow())).scalar_one()


def set_password(engine, username: str, password: str) -> None:
    """Change a user's password (their sessions end)."""
    engine.ensure_schema()
    _check_password(password)
    with engine.db.begin() as conn:
        done = conn.execute(update(admin_users).where(admin_users.c.username == username)
                            .values(password_hash=_hasher.hash(password))).rowcount
    if not done:
        raise AdminError(f"there is no admin user {username!r}")


def remove_user(engine, username: str) -> None:
    engine.ensure_schema()
    with engine.db.begin() as conn:
        if not conn.execute(delete(admin_users).where(admin_users.c.username == username)).rowcount:
            raise AdminError(f"there is no admin user {username!r}")


def list_users(engine) -> list:
    engine.ensure_schema()
    with engine.db.connect() as conn:
        return conn.execute(select(admin_users.c.id, admin_users.c.username, admin_users.c.created_at,
                                   admin_users.c.last_login_at).order_by(admin_users.c.username)).all()


def authenticate(engine, username: str, password: str):
    """The user row when the password is theirs, else None; the same argon2
    work is done for a name that doesn't exist."""
    global _dummy_hash
    engine.ensure_schema()
    with engine.db.connect() as conn:
        row = conn.execute(select(admin_users).where(admin_users.c.username == username)).one_or_none()
    if row is None:
        if _dummy_hash is None:
            _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
        try:
            _hasher.verify(_dummy_hash, password or "")
        except VerificationError:
            pass
        return None
    try:
        _hasher.verify(row.password_hash, password or "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    values: dict[str, Any] = {"last_login_at": utcnow()}
    if _hasher.check_needs_rehash(row.password_hash):
        values["password_hash"] = _hasher.hash(password)
    with engine.db.begin() as conn:
        conn.execute(update(admin_users).where(admin_users.c.id == row.id).values(**values))
    return SimpleNamespace(id=row.id, username=row.username,
                           password_hash=values.get("password_hash", row.password_hash))


def sign_in_wait(engine, username: str, address: str, now: datetime | None = None) -> int:
    """Seconds before ``address`` may try to sign in as ``username`` again
    (0: now), by the refused sign-ins still in ``SIGN_IN_WINDOW``."""
    engine.ensure_schema()
    now = now or utcnow()
    failures = admin_sign_in_failures.c
    with engine.db.connect() as conn:
        rows = conn.execute(select(failures.username, failures.at)
                            .where(failures.address == address[:64], failures.at > now - SIGN_IN_WINDOW)
                            .order_by(failures.at)).all()
    theirs = [as_utc(r.at) for r in rows if r.username == username[:150].lower()]
    every = [as_utc(r.at) for r in rows]
    until = [held[-limit] + SIGN_IN_WINDOW for held, limit in ((theirs, SIGN_IN_MAX_PER_USERNAME),
                                                                (every, SIGN_IN_MAX_PER_ADDRESS)) if len(held) >= limit]
    return max(0, math.ceil(max((u - now for u in until), default=timedelta(0)).total_seconds()))


def sign_in_refused(engine, username: str, address: str, now: datetime | None = None) -> None:
    """Count a refused sign-in (and forget those out of the window)."""
    now = now or utcnow()
    with engine.db.begin() as conn:
        conn.execute(delete(admin_sign_in_failures).where(admin_sign_in_failures.c.at <= now - SIGN_IN_WINDOW))
        conn.execute(admin_sign_in_failures.insert().values(username=username[:150].lower(), address=address[:64],
                                                            at=now))


def sign_in_accepted(engine, username: str, address: str) -> None:
    """A good password from ``address``: its refusals for this username are forgotten."""
    with engine.db.begin() as conn:
        conn.execute(delete(admin_sign_in_failures).where(admin_sign_in_failures.c.address == address[:64],
                                                          admin_sign_in_failures.c.username == username[:150].lower()))


def _fingerprint(password_hash: str) -> str:
    """Ties a session to the password it was opened with."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:24]


def session_secret(engine) -> str:
    """The sessions' signing key, derived from the server's key."""
    from engine.credentials import KEY_FILE, SECRET_KEY_VARIABLE

    keys = [k.strip() for k in engine.credentials.env.get(SECRET_KEY_VARIABLE, "").split(",") if k.strip()]
    if not keys:
        path = engine.config.base_dir / KEY_FILE
        if not path.exists():
            engine.credentials.seal({})  # writes a new server key, as an install would
        keys = [path.read_text().strip()]
    return hmac.new(keys[0].encode(), b"regulars admin sessions v1", hashlib.sha256).hexdigest()


class _Sessions:
    """SessionMiddleware, its key derived on the first request (not when the
    app is built: the key file is only written when someone comes)."""

    def __init__(self, app, engine):
        self.app, self.engine, self.inner = app, engine, None

    async def __call__(self, scope, receive, send):
        if self.inner is None:
            secret = await run_in_threadpool(session_secret, self.engine)
            public = os.environ.get("REGULARS_PUBLIC_URL", "")
            self.inner = SessionMiddleware(self.app, secret_key=secret, session_cookie=SESSION_COOKIE,
                                           max_age=SESSION_SECONDS, path="/admin", same_site="lax",
                                           https_only=public.startswith("https://"))
        await self.inner(scope, receive, send)


class _Headers:
    """No caching, no framing, no foreign scripts, on every answer."""

    HEADERS = [
        (b"cache-control", b"no-store"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'self'; img-src 'self' data: https:; style-src 'self' "
                                      b"'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; "
                                      b"form-action 'self'; base-uri 'none'"),
    ]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *self.HEADERS]
            await send(message)

        await self.app(scope, receive, sending)


# -- charts -----------------------------------------------------------------------------------


def _label(day: date, period: str, locale: str) -> str:
    from babel.dates import format_date

    return format_date(day, "MMM yyyy" if period == "month" else "d MMM", locale=locale)


def format_value(fmt: Formats, unit: str, value) -> str:
    """A figure as the page shows it ("–" when undefined)."""
    if value is None:
        return "–"
    if unit == "rate":
        return fmt.percent(value)
    if unit == "money":
        return fmt.money(value)
    if unit == "number":
        from babel.numbers import format_decimal

        return format_decimal(Decimal(str(round(value, 2))), format="#,##0.00", locale=fmt.locale)
    return fmt.number(value)


def chart(points: list[tuple[str, Any, str]], title: str, mark: int | None = None, partial: bool = False) -> Markup:
    """A small inline SVG line chart: (label, value or None, shown value) per
    period. ``mark``: the point the card's figure is (default the last);
    ``partial``: the last period is not over, its point is drawn hollow."""
    mark = len(points) - 1 if mark is None else mark
    width, height, left, right, top, bottom = 300, 96, 6, 6, 10, 22
    values = [v for _, v, _ in points if v is not None]
    numbers = [float(v) for v in values]
    low = min([0.0, *numbers])
    high = max([*numbers, 0.0])
    if high == low:
        high = low + 1
    span_x = (width - left - right) / max(1, len(points) - 1)

    def x(i):
        return left + i * span_x

    def y(v):
        return top + (high - float(v)) / (high - low) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
             f'preserveAspectRatio="none">']
    parts.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>')
    run: list[str] = []
    paths = []
    for i, (_, value, _) in enumerate(points):
        if value is None:
            if run:
                paths.append(run)
            run = []
            continue
        run.append(f"{x(i):.1f},{y(value):.1f}")
    if run:
        paths.append(run)
    for line in paths:
        if len(line) > 1:
            parts.append(f'<polyline class="line" points="{" ".join(line)}"/>')
    for i, (label, value, shown) in enumerate(points):
        if value is None:
            continue
        last = " last" if i == mark else ""
        hollow = " partial" if partial and i == len(points) - 1 else ""
        parts.append(f'<circle class="dot{last}{hollow}" cx="{x(i):.1f}" cy="{y(value):.1f}" '
                     f'r="{3.2 if last else 2.2}"><title>{escape(label)}: {escape(shown)}</title></circle>')
    if values:
        top_label = max((p for p in points if p[1] is not None), key=lambda p: float(p[1]))[2]
        parts.append(f'<text class="tick" x="{left}" y="7">{escape(top_label)}</text>')
    if points:
        parts.append(f'<text class="tick" x="{left}" y="{height - 6}">{escape(points[0][0])}</text>')
        parts.append(f'<text class="tick end" x="{width - right}" y="{height - 6}" text-anchor="end">'
                     f"{escape(points[-1][0])}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


# -- the pages ------------------------------------------------------------------------------------


def _month_arg(value: str | None, today: date) -> date:
    """``?to=2026-03`` (or a full date): the last period shown; default today."""
    if value:
        try:
            if len(value) == 7:
                return (date.fromisoformat(value + "-01") + timedelta(days=32)).replace(day=1) - timedelta(days=1)
            return date.fromisoformat(value)
        except ValueError:
            pass
    return today


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/admin") and not value.startswith("//") and "\\" not in value:
        parts = urlsplit(value)
        if not parts.scheme and not parts.netloc:
            return value
    return "/admin/"


#: the engine's words the dashboard shows (statuses, ledger reasons), in the
#: reader's language: ``word(kind, value)`` in a template; a word not listed
#: (a plugin's own reason, say) is shown as it is
WORDS = {
    "ledger": {
        "order": N_("order"), "refund": N_("refund"), "cancel": N_("order cancelled"), "unpaid": N_("order unpaid"),
        "reassign": N_("order moved to another customer"), "visit": N_("visit"), "redeem": N_("reward redeemed"),
        "reward-expired": N_("reward expired unused"), "expiry": N_("points expired"), "merge": N_("customers merged"),
        "referral": N_("referral"), "subscription": N_("membership"), "card-complete": N_("stamp card full"),
        "card-reopened": N_("stamp card reopened"), "adjust": N_("adjusted by hand"),
        "birthday": N_("birthday gift"),
    },
    "reward": {"issued": N_("ready to use"), "used": N_("used"), "expired": N_("expired")},
    "order": {"pending": N_("pending"), "paid": N_("paid"), "refunded": N_("refunded"),
              "cancelled": N_("cancelled")},
    "membership": {"active": N_("active"), "paused": N_("paused"), "cancelled": N_("cancelled"),
                   "lapsed": N_("lapsed")},
    "tier": {"upgrade": N_("upgrade"), "downgrade": N_("downgrade")},
    "delivery": {"received": N_("received"), "applied": N_("applied"), "duplicate": N_("duplicate"),
                 "ignored": N_("ignored"), "failed": N_("failed")},
    "outbox": {"customer.sync": N_("balance in the shop"), "reward.coupon": N_("reward's coupon"),
               "reward.retire": N_("coupon removed"), "notify": N_("notification")},
}


def search_condition(like: str):
    """The dashboard's customer search: ``like`` (a ``LIKE`` pattern) on the
    email, phone, card code or name of a customer not merged away. The four
    expressions are written as migration 0011's trigram indexes are, with
    constants rather than parameters, so that PostgreSQL uses the indexes."""
    blank, space = literal_column("''", String), literal_column("' '", String)
    name = func.lower(func.coalesce(customers.c.first_name, blank) + space + func.coalesce(customers.c.last_name, blank))
    return and_(customers.c.merged_into.is_(None),
                or_(func.lower(customers.c.email).like(like), customers.c.phone.like(like),
                    func.lower(customers.c.card_code).like(like), name.like(like)))


class Admin:
    def __init__(self, engine, templates):
        self.engine = engine
        self.templates = templates

    # -- plumbing ----------------------------------------------------------------

    def _csrf(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def _user(self, request: Request):
        uid = request.session.get("uid")
        if not uid:
            return None
        if time.time() - float(request.session.get("at", 0)) > SESSION_SECONDS:
            request.session.clear()
            return None
        with self.engine.db.connect() as conn:
            row = conn.execute(select(admin_users.c.id, admin_users.c.username, admin_users.c.password_hash)
                               .where(admin_users.c.id == uid)).one_or_none()
        if row is None or not hmac.compare_digest(request.session.get("pw", ""), _fingerprint(row.password_hash)):
            request.session.clear()
            return None
        return row

    def _render(self, request: Request, name: str, status: int = 200, headers: dict | None = None,
                **values) -> Response:
        gettext = self.templates.gettext(request)
        values.setdefault("word", lambda kind, value: gettext(WORDS[kind][value]) if value in WORDS[kind] else value)
        values.setdefault("csrf", self._csrf(request))
        values.setdefault("flash", request.session.pop("flash", None))
        values.setdefault("channels", sorted(self.engine.connectors))
        return self.templates.render(request, name, status=status, headers=headers, **values)

    def _fmt(self, request: Request) -> Formats:
        locale = choose_locale(request, self.templates.brand["locale"])
        return Formats(locale, self.engine.config.currency, self.engine.config.engine.get("timezone", "UTC"))

    def _forbidden(self, request: Request, message: str) -> Response:
        return self._render(request, "admin_error.html", status=403, message=message, user=None)

    async def _form(self, request: Request) -> dict[str, str] | None:
        """The posted form if its CSRF token is the session's; else None."""
        body = await request.body()
        if len(body) > MAX_FORM:
            return None
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        expected = request.session.get("csrf")
        sent = form.get("csrf", "")
        if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
            return None
        return form

    def _signed_in(self, handler):
        async def guarded(request: Request) -> Response:
            user = await run_in_threadpool(self._user, request)
            if user is None:
                wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/admin/sign-in?next={quote(wanted, safe='/')}", status_code=303)
            request.state.user = user
            if request.method == "POST":
                form = await self._form(request)
                if form is None:
                    return self._forbidden(request, N_("This form has expired or did not come from this page. "
                                                       "Go back, reload the page and try again."))
                request.state.form = form
            return await handler(request)

        return guarded

    # -- sign in and out -------------------------------------------------------------

    async def sign_in_page(self, request: Request) -> Response:
        if await run_in_threadpool(self._user, request):
            return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        return self._render(request, "admin_signin.html", user=None, next=_safe_next(request.query_params.get("next")),
                            username="", error=None)

    async def sign_in(self, request: Request) -> Response:
        form = await self._form(request)
        if form is None:
            return self._forbidden(request, N_("This sign-in form has expired. Reload the page and try again."))
        username, password = form.get("username", "").strip(), form.get("password", "")
        wanted = _safe_next(form.get("next"))
        address = request.client.host if request.client else "?"
        wait = await run_in_threadpool(sign_in_wait, self.engine, username, address)
        if wait:  # not even the password is checked: guessing gains nothing
            log.warning("admin sign-in throttled for %r from %s: %d s to wait", username[:150], address, wait)
            return self._render(request, "admin_signin.html", status=429, headers={"Retry-After": str(wait)},
                                user=None, next=wanted, username=username, error=None,
                                wait_minutes=math.ceil(wait / 60))
        user = await run_in_threadpool(authenticate, self.engine, username, password)
        if user is None:
            log.warning("admin sign-in refused for %r from %s", username[:150], address)
            await run_in_threadpool(sign_in_refused, self.engine, username, address)
            gettext = self.templates.gettext(request)
            return self._render(request, "admin_signin.html", status=401, user=None, next=wanted, username=username,
                                error=gettext("Wrong username or password."))
        await run_in_threadpool(sign_in_accepted, self.engine, username, address)
        request.session.clear()  # a new session: nothing carried over from before signing in
        request.session.update({"uid": user.id, "pw": _fingerprint(user.password_hash), "at": time.time(),
                                "csrf": secrets.token_urlsafe(32)})
        return RedirectResponse(wanted, status_code=303)

    async def sign_out(self, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/admin/sign-in", status_code=303)

    # -- overview --------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        params = request.query_params
        period = params.get("period") if params.get("period") in metrics.PERIODS else "month"
        channel = params.get("channel") if params.get("channel") in self.engine.connectors else None
        fmt = self._fmt(request)
        zone = metrics.recorder(self.engine).zone
        today = datetime.now(UTC).astimezone(zone).date()
        end = _month_arg(params.get("to"), today)
        # 12 months, or 26 weeks, up to the one holding ``end``
        start = metrics.period_start(end, period)
        for _ in range(11 if period == "month" else 25):
            start = metrics.previous_period(start, period)
        gettext = self.templates.gettext(request)
        trouble = await run_in_threadpool(self._trouble)
        try:
            found = await run_in_threadpool(metrics.compute, self.engine, [m.name for m in metrics.METRICS], start,
                                            end, channel, period, today)
        except metrics.NotBuilt as exc:
            return self._render(request, "admin_overview.html", user=request.state.user, nav="overview", cards=[],
                                period=period, channel=channel, to=params.get("to") or "", point_value=None,
                                start=start, end=end, not_built=str(exc), trouble=trouble)
        cards = []
        # The last period shown is not over yet (today is in it): a figure of
        # the period alone would show a part of it (on the 1st, a 100 % churn).
        last_start = metrics.period_start(end, period)
        days_so_far = (today - last_start).days + 1 if last_start <= today < metrics.next_period(last_start, period) \
            else None
        for metric in metrics.METRICS:
            values = found[metric.name]
            points = [(_label(day, period, fmt.locale), value, format_value(fmt, metric.unit, value))
                      for day, value in values]
            shown = len(points) - 1
            so_far = None
            if metric.per_period and days_so_far is not None and len(points) > 1:
                shown -= 1  # the last period that is over; the one under way is said "so far"
                so_far = {"period": points[-1][0], "value": points[-1][2], "days": days_so_far}
            latest = points[shown] if points else ("", None, "–")
            previous = points[shown - 1] if shown > 0 else None
            cards.append({
                "metric": metric,
                "title": gettext(metric.title),
                "formula": gettext(metric.formula),
                "value": latest[2],
                "raw": latest[1],
                "period": latest[0],
                "previous": previous,
                "so_far": so_far,
                "chart": chart(points, gettext(metric.title), shown, partial=so_far is not None),
                "per_channel": not (channel and metric.name == "points_liability"),
            })
        return self._render(request, "admin_overview.html", user=request.state.user, nav="overview", cards=cards,
                            period=period, channel=channel, to=params.get("to") or "",
                            point_value=metrics.point_value(self.engine), start=start, end=end, trouble=trouble)

    def _trouble(self) -> dict[str, int]:
        """What waits for the merchant: deliveries that failed, updates a
        shop or the [notify] receiver refused (the overview says so at the top)."""
        from engine import outbox as ob
        from engine.db.models import outbox

        with self.engine.db.connect() as conn:
            return {
                "deliveries": inbox.failed_count(conn),
                "outgoing": conn.execute(select(func.count()).select_from(outbox)
                                         .where(outbox.c.status == ob.FAILED)).scalar_one(),
            }

    # -- customers -------------------------------------------------------------------

    def _search(self, query: str, before: int | None = None) -> tuple[list, bool, int | None]:
        """(rows, more, total): the customers a search finds (the first
        ``CUSTOMERS_PAGE``; ``more``: there are others), or with no search the
        ``CUSTOMERS_PAGE`` newest before the id ``before`` (``more``: older ones
        follow; ``total``: how many customers there are)."""
        found: list[int] = []
        total = None
        with self.engine.db.connect() as conn:
            if query:
                exact = self.engine.identity.find(conn, query)
                if exact is not None:
                    found.append(exact)
                like = f"%{query.lower().replace('%', '').replace('_', '')}%"
                rows = conn.execute(
                    select(customers.c.id).where(search_condition(like)).order_by(customers.c.id.desc())
                    .limit(CUSTOMERS_PAGE + 1)
                ).scalars().all()
                found += [r for r in rows if r not in found]
            else:
                listed = select(customers.c.id).where(customers.c.merged_into.is_(None))
                if before is not None:
                    listed = listed.where(customers.c.id < before)
                found = conn.execute(listed.order_by(customers.c.id.desc()).limit(CUSTOMERS_PAGE + 1)).scalars().all()
                total = count_customers(conn)
            more = len(found) > CUSTOMERS_PAGE
            found = found[:CUSTOMERS_PAGE]
            if not found:
                return [], False, total
            balance = select(accounts.c.customer_id, accounts.c.balance).where(accounts.c.unit == "points").subquery()
            rows = conn.execute(
                select(customers, func.coalesce(balance.c.balance, 0).label("points"))
                .select_from(customers.outerjoin(balance, balance.c.customer_id == customers.c.id))
                .where(customers.c.id.in_(found))
            ).all()
        order = {cid: i for i, cid in enumerate(found)}
        return sorted(rows, key=lambda r: order[r.id]), more, total

    async def customer_list(self, request: Request) -> Response:
        query = storable(request.query_params.get("q", "")).strip()[:200]  # no NUL reaches the database
        before = request.query_params.get("before", "")
        before = int(before) if before.isdigit() and len(before) < 19 else None
        rows, more, total = await run_in_threadpool(self._search, query, None if query else before)
        if query and len(rows) == 1:
            return RedirectResponse(f"/admin/customers/{rows[0].id}", status_code=303)
        return self._render(request, "admin_customers.html", user=request.state.user, nav="customers", q=query,
                            rows=rows, more=more, total=total, before=None if query else before,
                            page_size=CUSTOMERS_PAGE)

    async def customers_csv(self, request: Request) -> Response:
        """Every customer as CSV (engine.exports), streamed a chunk at a time."""
        from engine.exports import csv_lines

        today = datetime.now(UTC).date().isoformat()
        return StreamingResponse(csv_lines(self.engine, bom=True), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition":
                                          f'attachment; filename="regulars-customers-{today}.csv"'})

    def _customer(self, customer_id: int, page: int) -> dict | None:
        from engine.customers import customer_summary

        with self.engine.db.connect() as conn:
            row = conn.execute(select(customers).where(customers.c.id == customer_id)).one_or_none()
            if row is None:
                return None
            if row.merged_into is not None:
                return {"moved": self.engine.identity.follow(conn, customer_id)}
            people, frontier = [customer_id], [customer_id]
            while frontier:  # and everyone merged into them: their ledger stays on their accounts
                frontier = [r for r in conn.execute(select(customers.c.id).where(
                    customers.c.merged_into.in_(frontier))).scalars() if r not in people]
                people += frontier
            entries = (select(ledger_entries, accounts.c.unit, accounts.c.customer_id)
                       .join(accounts, accounts.c.id == ledger_entries.c.account_id)
                       .where(accounts.c.customer_id.in_(people)))
            total = conn.execute(select(func.count()).select_from(entries.subquery())).scalar_one()
            # newest first by when it happened (a backfill's entries are written late)
            ledger = conn.execute(entries.order_by(ledger_entries.c.occurred_at.desc(), ledger_entries.c.id.desc())
                                  .limit(LEDGER_PAGE).offset(page * LEDGER_PAGE)).all()
            issued = conn.execute(select(rewards).where(rewards.c.customer_id == customer_id)
                                  .order_by(rewards.c.id.desc()).limit(100)).all()
            bought = conn.execute(select(orders.c.channel, orders.c.external_id, orders.c.status, orders.c.eligible,
                                         orders.c.paid_at, orders.c.created_at)
                                  .where(orders.c.customer_id == customer_id)
                                  .order_by(func.coalesce(orders.c.paid_at, orders.c.created_at).desc(),
                                            orders.c.id.desc()).limit(30)).all()
            n_orders = conn.execute(select(func.count()).select_from(orders)
                                    .where(orders.c.customer_id == customer_id)).scalar_one()
        summary = customer_summary(self.engine, int(customer_id))
        cards = self.engine.cards.cards
        return {"row": row, "summary": summary, "ledger": ledger, "total": total, "page": page,
                "units": ["points", *(f"stamps:{name}" for name in sorted(cards))],
                "pages": max(1, -(-total // LEDGER_PAGE)), "rewards": issued, "orders": bought,
                "spendable": {r.reward: self.engine.rewards.spendable_in(r.reward) for r in issued},
                "n_orders": n_orders, "merged": people[1:],
                "birthday": as_utc(row.birthday).date() if row.birthday else None,
                "cards": [(name, count, getattr(cards.get(name), "required", None))
                          for name, count in summary["stamps"].items()]}

    async def customer_page(self, request: Request) -> Response:
        try:
            page = max(0, int(request.query_params.get("page", "0")))
        except ValueError:
            page = 0
        found = await run_in_threadpool(self._customer, request.path_params["customer_id"], page)
        if found is None:
            return self._render(request, "admin_error.html", status=404, user=request.state.user,
                                message=N_("There is no such customer."))
        if "moved" in found:
            return RedirectResponse(f"/admin/customers/{found['moved']}", status_code=303)
        return self._render(request, "admin_customer.html", user=request.state.user, nav="customers",
                            adjust_key=secrets.token_urlsafe(16), adjust_limit=ADJUST_LIMIT, note_limit=NOTE_LIMIT,
                            **found)

    async def adjust(self, request: Request) -> Response:
        """The customer page's adjustment form: points or stamps given or
        taken, with a note; the page's own key makes a form sent twice (a
        double click, a reload) one adjustment."""
        customer_id = request.path_params["customer_id"]
        request.session["flash"] = await self._adjusted(customer_id, request.state.form, request.state.user.username)
        return RedirectResponse(f"/admin/customers/{customer_id}#adjust", status_code=303)

    async def birthday(self, request: Request) -> Response:
        """The customer page's birthday form: staff correct it (or, empty,
        forget it), as ``regulars customer birthday`` does."""
        customer_id = request.path_params["customer_id"]
        raw = request.state.form.get("birthday", "").strip()
        day = birthday_from(raw) if raw else None  # (empty: forget it)
        if raw and day is None:
            request.session["flash"] = {"kind": "birthday", "ok": False}
        else:
            def correct() -> None:
                with self.engine.db.begin() as conn:
                    self.engine.identity.correct_birthday(conn, customer_id, day, utcnow())

            await run_in_threadpool(correct)
            request.session["flash"] = {"kind": "birthday", "ok": True}
            log.info("birthday of customer %s set by %s", customer_id, request.state.user.username)
        return RedirectResponse(f"/admin/customers/{customer_id}#birthday", status_code=303)

    async def _adjusted(self, customer_id: int, form: dict[str, str], username: str) -> dict:
        """The adjustment a form asks for, made; what the page says of it."""
        from engine.adjustments import AdjustmentRefused

        unit = form.get("unit", "points")
        card = unit.removeprefix("stamps:") if unit.startswith("stamps:") else None
        flash = {"kind": "adjust", "ok": False, "unit": unit[:80]}
        if unit != "points" and card is None:  # (no such choice on the form)
            return {**flash, "reason": "unknown_card"}
        try:
            amount = int(form.get("amount", "").strip())
        except ValueError:
            return {**flash, "reason": "amount"}
        try:
            made = await run_in_threadpool(self.engine.adjust, f"id:{customer_id}", amount, form.get("note", ""),
                                           f"admin:{username}", card,
                                           f"admin:{form.get('key') or secrets.token_hex(8)}")
        except AdjustmentRefused as exc:
            return {**flash, "reason": exc.reason, **{k: v for k, v in exc.values.items() if k == "balance"}}
        log.info("customer %s adjusted by %s: %+d %s (%s)", customer_id, username, made.amount, made.unit, made.note)
        return {**flash, "ok": True, "amount": made.amount, "balance": made.balance, "duplicate": made.duplicate}

    # -- adjustments -----------------------------------------------------------------

    def _adjustments(self) -> tuple[list, int]:
        entries = (select(ledger_entries.c.occurred_at, ledger_entries.c.amount, ledger_entries.c.detail,
                          accounts.c.unit, accounts.c.customer_id, customers.c.email, customers.c.phone,
                          customers.c.card_code)
                   .join(accounts, accounts.c.id == ledger_entries.c.account_id)
                   .join(customers, customers.c.id == accounts.c.customer_id)
                   .where(ledger_entries.c.reason == ADJUSTED))
        with self.engine.db.connect() as conn:
            total = conn.execute(select(func.count()).select_from(entries.subquery())).scalar_one()
            rows = conn.execute(entries.order_by(ledger_entries.c.id.desc()).limit(ADJUSTMENTS_PAGE)).all()
        return rows, total

    async def adjustments(self, request: Request) -> Response:
        """Every adjustment by hand, newest first: who gave or took what, and why."""
        rows, total = await run_in_threadpool(self._adjustments)
        return self._render(request, "admin_adjustments.html", user=request.state.user, nav="adjustments",
                            rows=rows, total=total)

    # -- failed deliveries -----------------------------------------------------------

    def _failed(self) -> tuple[list, int]:
        with self.engine.db.connect() as conn:
            return inbox.listing(conn, inbox.FAILED, limit=200), inbox.failed_count(conn)

    async def deliveries(self, request: Request) -> Response:
        rows, total = await run_in_threadpool(self._failed)
        return self._render(request, "admin_deliveries.html", user=request.state.user, nav="deliveries", rows=rows,
                            total=total)

    async def replay(self, request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        try:
            outcome = await run_in_threadpool(self.engine.replay, delivery_id)
        except LookupError:
            request.session["flash"] = {"ok": False, "id": delivery_id, "status": "missing", "error": None}
        else:
            request.session["flash"] = {"ok": outcome.status in ("applied", "duplicate", "ignored"),
                                        "id": delivery_id, "status": outcome.status, "error": outcome.error}
            log.info("delivery %s replayed by %s: %s", delivery_id, request.state.user.username, outcome.status)
        return RedirectResponse("/admin/deliveries", status_code=303)

    # -- the outbox -------------------------------------------------------------------

    def _outgoing(self) -> dict:
        from engine import outbox as ob
        from engine.db.models import outbox

        with self.engine.db.connect() as conn:
            return {
                "failed": ob.listing(conn, ob.FAILED, limit=200),
                # pending ones that were tried and will be again (a shop or a receiver down)
                "retrying": conn.execute(select(outbox).where(outbox.c.status == ob.PENDING, outbox.c.attempts > 0)
                                         .order_by(outbox.c.due_at, outbox.c.id).limit(200)).all(),
                "depth": ob.depth(conn),
            }

    async def outgoing(self, request: Request) -> Response:
        found = await run_in_threadpool(self._outgoing)
        return self._render(request, "admin_outbox.html", user=request.state.user, nav="outbox", **found)

    async def retry_outgoing(self, request: Request) -> Response:
        """Make a failed row (or, without an id, every failed row) due again."""
        from engine import outbox as ob

        row_id = request.path_params.get("row_id")

        def retry() -> int:
            with self.engine.db.begin() as conn:
                return ob.retry(conn, [row_id] if row_id is not None else None)

        done = await run_in_threadpool(retry)
        request.session["flash"] = {"kind": "outbox", "ok": bool(done), "n": done, "id": row_id}
        log.info("outbox %s retried by %s: %d rows", row_id or "(every failed row)", request.state.user.username, done)
        return RedirectResponse("/admin/outbox", status_code=303)

    # -- the programme ---------------------------------------------------------------

    def _programme(self) -> dict:
        def redact(node):
            if isinstance(node, dict):
                return {k: ("••••••" if SECRET_KEYS.search(str(k)) else redact(v)) for k, v in node.items()}
            if isinstance(node, list):
                return [redact(v) for v in node]
            return node

        tables = []
        for name, value in sorted(redact(self.engine.config.tables).items()):
            tables.extend(_flatten(name, value))
        config = self.engine.config
        broker = config.broker_url
        if broker:
            parts = urlsplit(broker)
            broker = f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"
        return {
            "plugins": self.engine.plugins.loaded,
            "tables": tables,
            "config_path": str(config.path) if config.path else None,
            "database": self.engine.db.url.render_as_string(hide_password=True),
            "broker": broker,
            "point_value": metrics.point_value(self.engine),
            "catalogue": self.engine.catalogue.entries,
        }

    async def programme(self, request: Request) -> Response:
        found = await run_in_threadpool(self._programme)
        return self._render(request, "admin_programme.html", user=request.state.user, nav="programme", **found)

    def app(self) -> Starlette:
        signed_in = self._signed_in
        return Starlette(
            routes=[
                Route("/", signed_in(self.overview), name="overview"),
                Route("/sign-in", self.sign_in_page, methods=["GET"], name="sign_in"),
                Route("/sign-in", self.sign_in, methods=["POST"]),
                Route("/sign-out", signed_in(self.sign_out), methods=["POST"], name="sign_out"),
                Route("/customers", signed_in(self.customer_list), name="customers"),
                Route("/customers.csv", signed_in(self.customers_csv), name="customers_csv"),
                Route("/customers/{customer_id:int}", signed_in(self.customer_page), name="customer"),
                Route("/customers/{customer_id:int}/adjust", signed_in(self.adjust), methods=["POST"],
                      name="adjust"),
                Route("/customers/{customer_id:int}/birthday", signed_in(self.birthday), methods=["POST"],
                      name="birthday"),
                Route("/adjustments", signed_in(self.adjustments), name="adjustments"),
                Route("/deliveries", signed_in(self.deliveries), name="deliveries"),
                Route("/deliveries/{delivery_id:int}/replay", signed_in(self.replay), methods=["POST"],
                      name="replay"),
                Route("/outbox", signed_in(self.outgoing), name="outbox"),
                Route("/outbox/retry", signed_in(self.retry_outgoing), methods=["POST"], name="outbox_retry_all"),
                Route("/outbox/{row_id:int}/retry", signed_in(self.retry_outgoing), methods=["POST"],
                      name="outbox_retry"),
                Route("/programme", signed_in(self.programme), name="programme"),
            ],
            middleware=[Middleware(_Headers), Middleware(_Sessions, engine=self.engine)],
        )


def _flatten(name: str, value) -> list[tuple[str, list[tuple[str, str]]]]:
    """A config table as (dotted name, [(key, shown value)]) rows, sub-tables after."""
    import json

    if not isinstance(value, dict):
        return [(name, [("", json.dumps(value, default=str, ensure_ascii=False))])]
    own = [(k, json.dumps(v, default=str, ensure_ascii=False)) for k, v in value.items() if not isinstance(v, dict)]
    rows = [(name, own)] if own or not value else []
    for key, sub in value.items():
        if isinstance(sub, dict):
            rows.extend(_flatten(f"{name}.{key}", sub))
    return rows


def routes(engine, templates) -> list:
    return [Mount("/admin", app=Admin(engine, templates).app(), name="admin")]


__all__ = ["AdminError", "add_user", "authenticate", "list_users", "remove_user", "routes", "set_password"]
