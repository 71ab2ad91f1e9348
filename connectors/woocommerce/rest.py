"""A small WooCommerce REST API v3 client: what the engine asks of a shop.

The outbox deliverer writes loyalty state onto customers and issues reward
coupons; the install routes run WooCommerce's key exchange and register the
webhooks; the reconcile command pages through orders and reads the refunds
of those that list some. Every call goes through
the official ``woocommerce`` package, which signs requests with OAuth 1.0a
query parameters over plain http and uses HTTP basic auth over https.

Every failure is a ``WooError`` whose ``retryable`` says whether trying again
later can help (429, 5xx, timeouts, refused connections) or not (other 4xx,
redirects, answers that are not JSON). The reconciliation's reads of one order
and of its refunds try such a failure again a couple of times, a moment apart
(``READ_RETRY_PAUSES``), so that one 502 does not leave an order undetailed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from woocommerce import API

from connectors.base import BadDelivery
from connectors.woocommerce.translate import with_refund_details

#: prefix of every customer meta key regulars writes
META_PREFIX = "regulars_"
#: WooCommerce's error code for a second coupon with an existing code
COUPON_EXISTS = "woocommerce_rest_coupon_code_already_exists"
#: the reward kinds the engine issues, as WooCommerce discount types
DISCOUNT_TYPES = {"fixed_amount": "fixed_cart", "percentage": "percent", "free_product": "percent"}
SCOPES = ("read", "write", "read_write")
MAX_PAGE_SIZE = 100  # WooCommerce refuses per_page above 100
USER_AGENT = "regulars (WooCommerce-Python-REST-API/3.0.0)"
#: seconds to wait before each new try of a read that failed on what may mend
#: (5xx, 429, a timeout, a reset connection): ``order`` and ``order_refunds``
READ_RETRY_PAUSES = (0.5, 2.0)
#: a Retry-After longer than this is not waited for within a run: the read fails
MAX_RETRY_WAIT = 10.0

_RETRYABLE_STATUSES = frozenset({408, 425, 429})
_CALLBACK_FIELDS = ("key_id", "user_id", "consumer_key", "consumer_secret", "key_permissions")

log = logging.getLogger(__name__)


class WooError(Exception):
    """A call that failed.

    ``retryable`` is True for 429, 5xx, timeouts and refused connections (try
    again later) and False for other 4xx a retry can't mend. ``retry_after`` is
    the seconds from a Retry-After header, or None. ``status`` and ``code`` are
    the HTTP status and WooCommerce's error code, when there was an answer.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code
        self.retry_after = retry_after


class WooStore:
    """One WooCommerce shop, reached through its REST API (``wc/v3``)."""

    def __init__(self, url: str, consumer_key: str, consumer_secret: str, *, timeout: float = 10.0,
                 retry_pauses: tuple[float, ...] | None = None):
        """``retry_pauses``: the pauses before each new try of a retried read
        (default ``READ_RETRY_PAUSES``; ``()`` tries once)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"The store URL must be http(s)://host[/path], got {url!r}.")
        self.url = url.rstrip("/")
        self._retry_pauses = retry_pauses
        self._api = API(
            url=self.url,
            consumer_key=consumer_key,
            consumer_secret=consumer_secret,
            wp_api=True,
            version="wc/v3",
            timeout=timeout,
            user_agent=USER_AGENT,
        )

    # -- Customers -----------------------------------------------------------------

    def set_customer_meta(self, customer_id: str, meta: Mapping[str, object]) -> None:
        """Write loyalty state onto a customer: ``PUT customers/<id>`` with
        ``meta_data``. WooCommerce updates each key in place (or adds it) and
        leaves other meta alone.

        Keys are prefixed with ``regulars_`` here unless they already are
        (``{"points": 120}`` is stored as ``regulars_points``); dicts and lists
        are stored as JSON strings, Decimals as decimal strings, None as "".
        """
        cid = _numeric_id(customer_id, "customer id")
        entries = [{"key": _meta_key(key), "value": _meta_value(value)} for key, value in meta.items()]
        if entries:
            self._call("set_customer_meta", "PUT", f"customers/{cid}", data={"meta_data": entries})

    # -- Coupons -------------------------------------------------------------------

    def create_coupon(
        self,
        *,
        code: str,
        kind: str,
        amount: Any,
        email: str | None,
        expires_at: datetime | None,
        description: str,
        product_ids: list[int] | None = None,
    ) -> int:
        """Issue a single-use reward coupon and return its id.

        ``kind`` is "fixed_amount" (``fixed_cart``), "percentage" (``percent``)
        or "free_product" (``percent`` 100 on one item, restricted to
        ``product_ids`` when given). The coupon is for one use, not combinable
        (``individual_use``), restricted to ``email`` when known, and expires at
        ``expires_at`` (a naive datetime is taken as UTC).

        Idempotent: WooCommerce refuses a second coupon with the same code, so
        then the existing coupon's id is returned. WooCommerce stores codes in
        lower case and matches them case-insensitively.
        """
        if kind not in DISCOUNT_TYPES:
            raise ValueError(f"Unknown coupon kind {kind!r}; expected one of {sorted(DISCOUNT_TYPES)}.")
        if not isinstance(code, str) or not code.strip():
            raise ValueError("A coupon needs a non-empty code.")
        body: dict[str, Any] = {
            "code": code,
            "discount_type": DISCOUNT_TYPES[kind],
            "amount": "100" if kind == "free_product" else _amount(amount, kind),
            "description": description,
            "individual_use": True,
            "usage_limit": 1,
            "usage_limit_per_user": 1,
        }
        if kind == "free_product":
            body["limit_usage_to_x_items"] = 1
            if product_ids:
                body["product_ids"] = [_numeric_id(p, "product id") for p in product_ids]
        if email:
            body["email_restrictions"] = [email]
        if expires_at is not None:
            body["date_expires_gmt"] = _gmt(expires_at)
        try:
            created = self._json("create_coupon", self._call("create_coupon", "POST", "coupons", data=body))
        except WooError as exc:
            if exc.code != COUPON_EXISTS:
                raise
            existing = self._find_coupon(code)
            if existing is None:  # e.g. the coupon with that code is in the trash
                raise
            return int(existing["id"])
        return int(created["id"])

    def delete_coupon(self, code: str) -> bool:
        """Delete the coupon with this code for good (``force=true``); False if
        there is none."""
        coupon = self._find_coupon(code)
        if coupon is None:
            return False
        try:
            self._call("delete_coupon", "DELETE", f"coupons/{int(coupon['id'])}", params={"force": "true"})
        except WooError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _find_coupon(self, code: str) -> dict[str, Any] | None:
        response = self._call("find_coupon", "GET", "coupons", params={"code": code})
        for coupon in self._json("find_coupon", response):
            if isinstance(coupon, dict) and str(coupon.get("code", "")).lower() == code.lower():
                return coupon
        return None

    # -- Products ------------------------------------------------------------------

    def product_ids_for_sku(self, sku: str) -> list[int]:
        """The ids of the products with exactly this SKU (``GET products?sku=``)."""
        response = self._call("product_ids_for_sku", "GET", "products", params={"sku": sku})
        products = self._json("product_ids_for_sku", response)
        return [int(p["id"]) for p in products if isinstance(p, dict) and p.get("sku") == sku]

    # -- Webhooks ------------------------------------------------------------------

    def register_webhooks(self, delivery_url: str, secret: str, topics: list[str]) -> list[str]:
        """Make the shop deliver ``topics`` to ``delivery_url``, signed with
        ``secret``; returns the topics created.

        Idempotent: a topic with an active webhook to that URL is skipped. One
        that WooCommerce paused or disabled (after five failed deliveries) is
        switched back to active with the new secret and counted as created.
        """
        existing: dict[str, list[dict[str, Any]]] = {}
        for hook in self._pages("register_webhooks", "webhooks", {}, MAX_PAGE_SIZE):
            if hook.get("delivery_url") == delivery_url:
                existing.setdefault(str(hook.get("topic")), []).append(hook)
        created = []
        for topic in dict.fromkeys(topics):
            hooks = existing.get(topic, [])
            if any(h.get("status") == "active" for h in hooks):
                continue
            if hooks:
                data = {"status": "active", "secret": secret}
                self._call("register_webhooks", "PUT", f"webhooks/{int(hooks[0]['id'])}", data=data)
            else:
                data = {
                    "name": f"regulars {topic}",
                    "topic": topic,
                    "delivery_url": delivery_url,
                    "secret": secret,
                    "status": "active",
                }
                self._call("register_webhooks", "POST", "webhooks", data=data)
            created.append(topic)
        return created

    # -- Orders --------------------------------------------------------------------

    def orders(self, since: datetime | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The shop's orders modified after ``since`` (all when None), oldest
        change first, as the raw dicts the REST API returns (the same as webhook
        bodies, so ``connectors.woocommerce.translate`` takes them).

        Pages are read lazily, following X-WP-TotalPages. An order changed while
        the pages are read moves to the end and may be skipped by the offset
        paging or seen twice (each snapshot once), so a reconcile should start
        its next run from a little before this run began.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}.")
        params = {"orderby": "modified", "order": "asc", "dates_are_gmt": "true"}
        if since is not None:
            params["modified_after"] = _gmt(since)
        seen: set[tuple[Any, Any]] = set()
        for order in self._pages("orders", "orders", params, page_size):
            snapshot = (order.get("id"), order.get("date_modified_gmt"))
            if snapshot not in seen:
                seen.add(snapshot)
                yield order

    def order(self, order_id: Any) -> dict[str, Any]:
        """One order as it is now (``GET orders/<id>``), as ``orders`` yields
        them; a failure that may mend is tried again (``READ_RETRY_PAUSES``)."""
        oid = _numeric_id(order_id, "order id")
        response = self._get_retrying("order", f"orders/{oid}", {})
        order = self._json("order", response)
        if not isinstance(order, dict):
            raise WooError(f"WooCommerce order: GET orders/{oid} did not answer with an object.",
                           retryable=False, status=response.status_code)
        return order

    def order_refunds(self, order_id: Any) -> list[Any]:
        """The refunds of one order (``GET orders/<id>/refunds``, every page),
        as the raw dicts the REST API returns: ``amount``, ``date_created_gmt``,
        ``line_items`` (negative totals, without tax) and, where the shop
        refunded shipping, ``shipping_lines``. Each page's read that fails on
        what may mend is tried again (``READ_RETRY_PAUSES``). Items are given
        as answered, objects or not (``with_refund_details`` judges them)."""
        oid = _numeric_id(order_id, "order id")
        return list(self._pages("order_refunds", f"orders/{oid}/refunds", {}, MAX_PAGE_SIZE,
                                retrying=True, objects_only=False))

    def with_refund_details(self, order: Mapping[str, Any]) -> dict[str, Any]:
        """The order (as ``orders`` yields it) with each refund it lists
        carrying its details from ``order_refunds``, which a webhook's order
        lacks (``connectors.woocommerce.translate.with_refund_details``); the
        order as it is when it lists none. A WooError when they can't be read,
        or when what the shop answered is not refunds (``retryable`` False)."""
        if not order.get("refunds"):
            return dict(order)
        try:
            refunds = self.order_refunds(order.get("id"))
        except ValueError as exc:  # an id no refunds endpoint has
            raise WooError(f"WooCommerce order_refunds: {exc}", retryable=False) from None
        try:
            return with_refund_details(order, refunds)
        except BadDelivery as exc:
            raise WooError(f"WooCommerce order_refunds (GET orders/{order.get('id')}/refunds) answered "
                           f"what regulars can't use: {exc}", retryable=False) from None

    def _pages(
        self, operation: str, endpoint: str, params: dict[str, str], page_size: int, *,
        retrying: bool = False, objects_only: bool = True,
    ) -> Iterator[Any]:
        page, pages = 1, 1
        while page <= pages:
            query = {**params, "per_page": str(page_size), "page": str(page)}
            if retrying:
                response = self._get_retrying(operation, endpoint, query)
            else:
                response = self._call(operation, "GET", endpoint, params=query)
            items = self._json(operation, response)
            if not isinstance(items, list):
                raise WooError(f"WooCommerce {operation}: GET {endpoint} did not answer with a list.",
                               retryable=False, status=response.status_code)
            yield from (item for item in items if isinstance(item, dict) or not objects_only)
            if not items:
                return
            # without the header, a full page means there may be another
            more = page + 1 if len(items) >= page_size else page
            pages = _int_header(response, "X-WP-TotalPages", default=more)
            page += 1

    # -- Key exchange ----------------------------------------------------------------

    @staticmethod
    def authorize_url(
        store_url: str,
        app_name: str,
        user_id: str,
        return_url: str,
        callback_url: str,
        scope: str = "read_write",
    ) -> str:
        """The page where the shop owner grants regulars an API key.

        WooCommerce then POSTs the key as JSON to ``callback_url`` (which it
        requires to be https) and sends the browser to ``return_url`` with
        ``success`` and ``user_id`` added. ``user_id`` is ours, not WooCommerce's.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
        if urlsplit(callback_url).scheme != "https":
            raise ValueError(f"WooCommerce only posts keys to an https callback_url, got {callback_url!r}.")
        params = {"app_name": app_name, "scope": scope, "user_id": str(user_id),
                  "return_url": return_url, "callback_url": callback_url}
        missing = [name for name, value in params.items() if not value]
        if missing:
            raise ValueError(f"authorize_url needs {', '.join(missing)}.")
        return f"{store_url.rstrip('/')}/wc-auth/v1/authorize?{urlencode(params)}"

    @staticmethod
    def read_auth_callback(body: bytes) -> dict[str, Any]:
        """The key WooCommerce POSTs to the callback URL, as
        ``{"key_id": int, "user_id": str, "consumer_key", "consumer_secret",
        "key_permissions"}``; ValueError saying what is wrong otherwise."""
        try:
            data = json.loads(body)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"The WooCommerce key callback is not JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise ValueError("The WooCommerce key callback is not a JSON object.")
        missing = [name for name in _CALLBACK_FIELDS if data.get(name) in (None, "")]
        if missing:
            raise ValueError(f"The WooCommerce key callback lacks {', '.join(missing)}.")
        key_id = data["key_id"]
        if isinstance(key_id, bool) or not str(key_id).isdigit():
            raise ValueError(f"The WooCommerce key callback's key_id is not a number: {key_id!r}.")
        for name, prefix in (("consumer_key", "ck_"), ("consumer_secret", "cs_")):
            if not isinstance(data[name], str) or not data[name].startswith(prefix):
                raise ValueError(f"The WooCommerce key callback's {name} does not start with {prefix!r}.")
        if data["key_permissions"] not in SCOPES:
            raise ValueError(
                f"The WooCommerce key callback's key_permissions is {data['key_permissions']!r}."
            )
        return {
            "key_id": int(key_id),
            "user_id": str(data["user_id"]),
            "consumer_key": data["consumer_key"],
            "consumer_secret": data["consumer_secret"],
            "key_permissions": data["key_permissions"],
        }

    # -- Transport -------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        endpoint: str,
        *,
        data: Any = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """One request through the woocommerce client; a WooError unless 2xx.
        Redirects are not followed: they would turn a POST into a GET and break
        the OAuth signature."""
        where = f"{operation} ({method} {endpoint})"
        send = getattr(self._api, method.lower())
        args = (endpoint,) if data is None and method in ("GET", "DELETE") else (endpoint, data)
        try:
            response = send(*args, params=dict(params or {}), allow_redirects=False)
        except requests.exceptions.SSLError as exc:
            raise WooError(f"WooCommerce {where}: TLS failed: {exc}", retryable=False) from exc
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise WooError(f"WooCommerce {where}: no answer: {exc}", retryable=True) from exc
        except requests.RequestException as exc:
            raise WooError(f"WooCommerce {where}: request failed: {exc}", retryable=False) from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            raise WooError(
                f"WooCommerce {where}: HTTP {status} redirect to {location}; "
                "use the address it redirects to as the store URL.",
                retryable=False, status=status,
            )
        code, message = _error_body(response)
        hint = " (check the consumer key and secret and their read_write permission)" if status in (
            401, 403) else ""
        raise WooError(
            f"WooCommerce {where} failed: HTTP {status} {code or '-'}: {message}{hint}",
            retryable=status >= 500 or status in _RETRYABLE_STATUSES,
            status=status,
            code=code,
            retry_after=_retry_after(response),
        )

    def _get_retrying(self, operation: str, endpoint: str, params: dict[str, str]) -> requests.Response:
        """``_call`` of a GET, tried again after each pause of ``retry_pauses``
        while it fails on what may mend (``WooError.retryable``: 5xx, 429, a
        timeout, a reset connection), waiting as long as a Retry-After asks up
        to ``MAX_RETRY_WAIT``. GETs change nothing, so a retry is harmless."""
        pauses = READ_RETRY_PAUSES if self._retry_pauses is None else self._retry_pauses
        for pause in (*pauses, None):
            try:
                return self._call(operation, "GET", endpoint, params=params)
            except WooError as exc:
                wait = None if pause is None else max(pause, exc.retry_after or 0.0)
                if not exc.retryable or wait is None or wait > MAX_RETRY_WAIT:
                    raise
                log.info("%s; trying again in %.1f s", exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    @staticmethod
    def _json(operation: str, response: requests.Response) -> Any:
        """The body as JSON. Python's json keeps big integers exact and PHP
        writes floats in their shortest form, so nothing is lost."""
        try:
            return json.loads(response.content.decode("utf-8-sig"))
        except ValueError:
            start = response.content[:120].decode("utf-8", "replace")
            raise WooError(
                f"WooCommerce {operation}: HTTP {response.status_code} with a body that is not JSON: "
                f"{start!r}", retryable=False, status=response.status_code,
            ) from None


# -- Values ------------------------------------------------------------------------


def _error_body(response: requests.Response) -> tuple[str | None, str]:
    """WooCommerce's ``{"code", "message", "data"}``, or the start of the body."""
    try:
        body = json.loads(response.content.decode("utf-8-sig"))
    except ValueError:
        body = None
    if isinstance(body, dict) and ("code" in body or "message" in body):
        return (str(body["code"]) if body.get("code") else None), str(body.get("message", ""))
    text = response.content[:200].decode("utf-8", "replace").strip()
    return None, text or response.reason or "no body"


def _retry_after(response: requests.Response) -> float | None:
    """Retry-After as seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _int_header(response: requests.Response, name: str, default: int) -> int:
    try:
        return int(response.headers.get(name, default))
    except ValueError:
        return default


def _numeric_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not str(value).isdigit():
        raise ValueError(f"A WooCommerce {what} is a positive number, got {value!r}.")
    return int(value)


def _meta_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"A meta key is a non-empty string, got {key!r}.")
    return key if key.startswith(META_PREFIX) else META_PREFIX + key


def _meta_value(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None:
        return ""
    return value


def _amount(value: Any, kind: str) -> str:
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"A {kind} coupon amount must be a number, got {value!r}.") from None
    if not amount.is_finite() or amount <= 0 or (kind == "percentage" and amount > 100):
        raise ValueError(f"A {kind} coupon amount is out of range: {value!r}.")
    return format(amount, "f")


def _gmt(moment: datetime) -> str:
    """WooCommerce's ``*_gmt`` format: UTC without an offset, to the second."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


__all__ = ["WooError", "WooStore", "META_PREFIX"]
