"""A Shopify Admin API client built on the real ``ShopifyAPI`` package (``import shopify``).

The engine's outbox deliverer, install routes and reconcile command call it:
customer metafields, single-use discount codes, webhook subscriptions (GraphQL),
orders (REST, the same JSON as the ``orders/*`` webhook bodies) and the OAuth
install (permission URL, token exchange).

The GraphQL shapes are those of Admin API **2026-04** (the default version):

- ``metafieldsSet(metafields: [MetafieldsSetInput!]!)`` ``{metafields {key namespace}
  userErrors {field message code}}``; input ``{ownerId, namespace, key, type, value}``,
  at most 25 a call, atomic. ``metafieldsDelete(metafields: [MetafieldIdentifierInput!]!)``
  ``{deletedMetafields {key namespace ownerId} userErrors {field message}}``.
- ``discountCodeBasicCreate(basicCodeDiscount: DiscountCodeBasicInput!)`` ``{codeDiscountNode
  {id} userErrors {field message code}}``; the buyers are chosen with ``context: {customers:
  {add: [gid]}}`` (``customerSelection`` is deprecated since 2025-01). A taken code is the
  userError ``{field: ["basicCodeDiscount", "code"], code: "TAKEN"}``.
- ``codeDiscountNodeByCode(code: String!)`` ``{id codeDiscount {... on DiscountCodeBasic
  {title}}}``; ``discountCodeDelete(id: ID!)`` ``{deletedCodeDiscountId userErrors {...}}``.
- ``webhookSubscriptions(first: 100)`` ``{edges {node {id topic uri}}}`` and
  ``webhookSubscriptionCreate(topic: WebhookSubscriptionTopic!, webhookSubscription:
  {uri, format: JSON})``: ``uri`` replaced ``callbackUrl``/``endpoint`` in 2025-10.

How ShopifyAPI is used, and where it needed help:

- A ``shopify.Session`` is activated on ``shopify.ShopifyResource`` for each call and cleared
  after it, under a module-level lock (ShopifyAPI keeps the active session in class-level
  state), so one client can be used from several threads in turn. The lock is not held
  between the pages of ``orders()``.
- ``base_url`` (a test double, a proxy): ``Session`` always builds ``https://<name>.myshopify.com``;
  its ``protocol`` and ``url`` are set on the session instance instead, so ``session.site``
  (and with it the REST connection and the GraphQL endpoint) points at ``base_url``.
- GraphQL goes through ``shopify.GraphQL`` (endpoint and headers from the active session), with
  ``execute`` overridden to pass a timeout and keep the error body: ShopifyAPI 12.7's waits
  forever (with the lock held, that would stall every Shopify call of the process) and prints
  the body of an HTTP error to stdout.
- REST goes through ``shopify.ShopifyResource.connection`` (pyactiveresource, with the timeout);
  the raw body is parsed with ``json.loads``, so ids above 2**53 stay exact.
- OAuth: ``Session.setup``/``validate_params``/``create_permission_url``/``request_token`` on a
  per-call subclass of ``shopify.Session`` (so the app's key and secret never sit in shared
  class state). ``request_token`` and ``create_permission_url`` hard-code ``https://``: for a
  plain-http ``base_url`` the URL's scheme is swapped and the token POST (the same form) is sent
  with urllib.

Every failure is a ``ShopifyError``: ``retryable`` for 429, 5xx, timeouts, refused connections
and GraphQL ``errors`` that are THROTTLED, INTERNAL_SERVER_ERROR, SERVICE_UNAVAILABLE, TIMEOUT or
carry no code; not for 4xx, ``userErrors`` and GraphQL errors with other codes (ACCESS_DENIED, a
query the API version doesn't know).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pyactiveresource.connection
import shopify

DEFAULT_API_VERSION = "2026-04"
NAMESPACE = "regulars"
#: GraphQL ``errors`` codes that a later try can mend (any error without a code counts too)
RETRYABLE_CODES = frozenset({"THROTTLED", "INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"})
METAFIELDS_PER_CALL = 25
TOKEN_TIMEOUT = 10.0

_LOCK = threading.Lock()

METAFIELDS_SET = """
mutation metafieldsSet($metafields: [MetafieldsSetInput!]!) {
  metafieldsSet(metafields: $metafields) {
    metafields { key namespace }
    userErrors { field message code }
  }
}"""
METAFIELDS_DELETE = """
mutation metafieldsDelete($metafields: [MetafieldIdentifierInput!]!) {
  metafieldsDelete(metafields: $metafields) {
    deletedMetafields { key namespace ownerId }
    userErrors { field message }
  }
}"""
DISCOUNT_CREATE = """
mutation discountCodeBasicCreate($basicCodeDiscount: DiscountCodeBasicInput!) {
  discountCodeBasicCreate(basicCodeDiscount: $basicCodeDiscount) {
    codeDiscountNode { id }
    userErrors { field message code }
  }
}"""
DISCOUNT_BY_CODE = """
query codeDiscountNodeByCode($code: String!) {
  codeDiscountNodeByCode(code: $code) {
    id
    codeDiscount { __typename ... on DiscountCodeBasic { title } }
  }
}"""
DISCOUNT_DELETE = """
mutation discountCodeDelete($id: ID!) {
  discountCodeDelete(id: $id) {
    deletedCodeDiscountId
    userErrors { field message code }
  }
}"""
WEBHOOKS = """
query webhookSubscriptions($first: Int!) {
  webhookSubscriptions(first: $first) { edges { node { id topic uri } } }
}"""
WEBHOOK_CREATE = """
mutation webhookSubscriptionCreate($topic: WebhookSubscriptionTopic!,
                                   $webhookSubscription: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri }
    userErrors { field message }
  }
}"""


class ShopifyError(Exception):
    """A call that failed. ``retryable``: True for 429, 5xx, timeouts and refused
    connections (try again later), False for 4xx/userErrors that a retry can't
    mend. ``retry_after``: seconds from a Retry-After header (or GraphQL's
    throttle status), or None. ``status``: the HTTP status, when there was one.
    The message names the operation and says what went wrong."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class _GraphQL(shopify.GraphQL):
    """``shopify.GraphQL`` whose ``execute`` has a timeout and lets an HTTP error
    (with its body) reach the caller."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def execute(self, query: str, variables: dict | None = None, operation_name: str | None = None) -> str:
        headers = self.merge_headers({"Accept": "application/json", "Content-Type": "application/json"},
                                     self.headers)
        data = json.dumps({"query": query, "variables": variables, "operationName": operation_name})
        request = urllib.request.Request(self.endpoint, data.encode("utf-8"), headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode("utf-8")


class ShopifyAdmin:
    """One shop's Admin API, reached with an offline access token."""

    def __init__(self, shop: str, token: str, api_version: str = DEFAULT_API_VERSION, *,
                 base_url: str | None = None, timeout: float = 10.0):
        self.shop = shop
        self.api_version = api_version
        self.timeout = timeout
        self._session = _session(shopify.Session, shop, api_version, token, base_url)

    # -- customers ---------------------------------------------------------------------

    def set_customer_metafields(self, customer_id: str, values: Mapping[str, Any]) -> None:
        """Write ``values`` as the customer's metafields in the ``regulars``
        namespace: int -> number_integer, str -> single_line_text_field, dict or
        list -> json (also bool -> boolean, Decimal/float -> number_decimal).
        None and "" (Shopify refuses blank values) delete the metafield."""
        owner = _gid("Customer", customer_id)
        inputs, gone = [], []
        for key, value in values.items():
            if value is None or value == "":
                gone.append({"ownerId": owner, "namespace": NAMESPACE, "key": key})
                continue
            kind, text = _metafield_value(key, value)
            inputs.append({"ownerId": owner, "namespace": NAMESPACE, "key": key, "type": kind, "value": text})
        for start in range(0, len(inputs), METAFIELDS_PER_CALL):
            chunk = inputs[start:start + METAFIELDS_PER_CALL]
            data = self._graphql("metafieldsSet", METAFIELDS_SET, {"metafields": chunk})
            _check("metafieldsSet", data.get("metafieldsSet"))
        if gone:
            data = self._graphql("metafieldsDelete", METAFIELDS_DELETE, {"metafields": gone})
            _check("metafieldsDelete", data.get("metafieldsDelete"))

    # -- discounts ---------------------------------------------------------------------

    def create_discount_code(self, *, code: str, title: str, customer_id: str, kind: str, value: Any,
                             ends_at: datetime | None, currency: str | None = None) -> str:
        """Create a single-use code for one customer and return the discount's gid.

        ``kind``: "fixed_amount" (``value`` off the order, in the shop's currency:
        ``currency`` is not sent, Shopify has no per-discount currency), "percentage"
        (``value`` percent off) or "free_product" (100 % off every item: the interface
        carries no SKU to narrow it to). Idempotent: when Shopify says the code is taken
        by a discount with the same title (a retry after a timeout), that discount's id
        is returned."""
        discount = {
            "title": title,
            "code": code,
            "startsAt": _iso(datetime.now(UTC)),
            "endsAt": _iso(ends_at) if ends_at is not None else None,
            "usageLimit": 1,
            "appliesOncePerCustomer": True,
            "context": {"customers": {"add": [_gid("Customer", customer_id)]}},
            "customerGets": _customer_gets(kind, value),
        }
        data = self._graphql("discountCodeBasicCreate", DISCOUNT_CREATE, {"basicCodeDiscount": discount})
        payload = data.get("discountCodeBasicCreate") or {}
        if any(error.get("code") == "TAKEN" for error in payload.get("userErrors") or []):
            existing = self._discount(code)
            if existing is not None and (existing.get("codeDiscount") or {}).get("title") == title:
                return existing["id"]
            raise ShopifyError(f"discountCodeBasicCreate: the code {code!r} is already used by another "
                               "discount", retryable=False)
        _check("discountCodeBasicCreate", payload)
        return payload["codeDiscountNode"]["id"]

    def delete_discount_code(self, code: str) -> bool:
        """Delete the discount with this code; False if there was none."""
        existing = self._discount(code)
        if existing is None:
            return False
        data = self._graphql("discountCodeDelete", DISCOUNT_DELETE, {"id": existing["id"]})
        _check("discountCodeDelete", data.get("discountCodeDelete"))
        return True

    def _discount(self, code: str) -> dict[str, Any] | None:
        data = self._graphql("codeDiscountNodeByCode", DISCOUNT_BY_CODE, {"code": code})
        return data.get("codeDiscountNodeByCode")

    # -- webhooks ----------------------------------------------------------------------

    def register_webhooks(self, callback_url: str, topics: list[str]) -> list[str]:
        """Subscribe ``callback_url`` to each topic ("orders/paid" -> ORDERS_PAID),
        JSON format, skipping topics already subscribed to that URL; the topics
        created."""
        data = self._graphql("webhookSubscriptions", WEBHOOKS, {"first": 100})
        edges = (data.get("webhookSubscriptions") or {}).get("edges") or []
        have = {edge["node"]["topic"] for edge in edges if edge["node"].get("uri") == callback_url}
        created = []
        for topic in topics:
            enum = topic.upper().replace("/", "_")
            if enum in have:
                continue
            data = self._graphql("webhookSubscriptionCreate", WEBHOOK_CREATE, {
                "topic": enum, "webhookSubscription": {"uri": callback_url, "format": "JSON"}})
            _check(f"webhookSubscriptionCreate {enum}", data.get("webhookSubscriptionCreate"))
            have.add(enum)
            created.append(topic)
        return created

    # -- orders ------------------------------------------------------------------------

    def orders(self, since: datetime | None = None, page_size: int = 250) -> Iterator[dict[str, Any]]:
        """Every order (``status=any``) updated at or after ``since``, as Shopify's
        REST JSON has it, page by page (the Link header's ``page_info`` cursor;
        a page is fetched when the previous one has been consumed)."""
        limit = max(1, min(int(page_size), 250))
        params: dict[str, Any] = {"status": "any", "limit": limit}
        if since is not None:
            params["updated_at_min"] = _iso(since)
        while True:
            body, headers = self._rest_get("orders.json", params)
            try:
                orders = json.loads(body)["orders"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ShopifyError(f"orders.json: the answer has no orders list: {body[:200]!r}",
                                   retryable=False) from exc
            yield from orders
            page_info = _next_page_info(headers)
            if page_info is None:
                return
            params = {"limit": limit, "page_info": page_info}

    # -- OAuth -------------------------------------------------------------------------

    @staticmethod
    def permission_url(shop: str, api_key: str, api_secret: str, scopes: list[str], redirect_uri: str,
                       state: str, *, base_url: str | None = None) -> str:
        """The shop's OAuth authorize URL (where the merchant approves the app)."""
        session = _session(_app(api_key, api_secret), shop, DEFAULT_API_VERSION, None, base_url)
        url = session.create_permission_url(scopes, redirect_uri, state)
        return session.protocol + url[len("https"):]

    @staticmethod
    def exchange_token(shop: str, api_key: str, api_secret: str, params: Mapping[str, str],
                       api_version: str = DEFAULT_API_VERSION, *, base_url: str | None = None) -> str:
        """The OAuth callback: check the query's hmac (and that it is under a day
        old and for ``shop``), then trade its ``code`` for the access token."""
        operation = "the OAuth token exchange"
        params = dict(params)
        app = _app(api_key, api_secret)
        if not app.validate_hmac(params):
            raise ShopifyError(f"{operation}: the callback's hmac does not match", retryable=False)
        try:
            fresh = app.validate_params(params)
        except ValueError:  # a timestamp that is not a number
            fresh = False
        if not fresh:
            raise ShopifyError(f"{operation}: the callback's timestamp is missing or over a day old",
                               retryable=False)
        if (params.get("shop") or shop).lower() != shop.lower() or not params.get("code"):
            raise ShopifyError(f"{operation}: the callback is not for {shop} or has no code", retryable=False)
        session = _session(app, shop, api_version, None, base_url)
        try:
            if session.protocol == "https":
                return session.request_token(params)
            url = f"{session.protocol}://{session.url}/admin/oauth/access_token"
            form = urlencode({"client_id": api_key, "client_secret": api_secret, "code": params["code"]})
            with urllib.request.urlopen(url, form.encode("utf-8"), timeout=TOKEN_TIMEOUT) as response:
                return json.loads(response.read())["access_token"]
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(operation, exc) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ShopifyError(f"{operation}: the answer has no access_token", retryable=False) from exc

    # -- transport ---------------------------------------------------------------------

    @contextmanager
    def _active(self) -> Iterator[None]:
        with _LOCK:
            shopify.ShopifyResource.activate_session(self._session)
            shopify.ShopifyResource.timeout = self.timeout
            try:
                yield
            finally:
                shopify.ShopifyResource.clear_session()
                shopify.ShopifyResource.timeout = None

    def _graphql(self, operation: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._active():
                raw = _GraphQL(self.timeout).execute(query, variables)
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(operation, exc) from exc
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise ShopifyError(f"{operation}: Shopify's answer is not JSON: {raw[:200]!r}",
                               retryable=True) from exc
        if reply.get("errors"):
            raise _graphql_errors(operation, reply)
        return reply.get("data") or {}

    def _rest_get(self, name: str, params: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        try:
            with self._active():
                resource = shopify.ShopifyResource
                path = f"{urlsplit(resource.site).path}/{name}?{urlencode(params)}"
                response = resource.connection.get(path, resource.headers)
        except (pyactiveresource.connection.Error, OSError, http.client.HTTPException) as exc:
            raise _failure(name, exc) from exc
        return response.body, response.headers


# -- helpers -----------------------------------------------------------------------------


def _app(api_key: str, api_secret: str) -> type[shopify.Session]:
    """A ``shopify.Session`` subclass holding the app's key and secret
    (``Session.setup`` on it, not on the shared class)."""
    app = type("RegularsAppSession", (shopify.Session,), {})
    app.setup(api_key=api_key, secret=api_secret)
    return app


def _session(cls: type[shopify.Session], shop: str, version: str, token: str | None,
             base_url: str | None) -> shopify.Session:
    session = cls(shop, version, token)
    if session.url is None:
        raise ValueError(f"{shop!r} is not a shop's domain")
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
        session.protocol = parts.scheme
        session.url = parts.netloc + parts.path.rstrip("/")
    return session


def _gid(kind: str, value: Any) -> str:
    text = str(value)
    return text if text.startswith("gid://") else f"gid://shopify/{kind}/{text}"


def _iso(moment: datetime) -> str:
    """ISO 8601 with an offset (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="seconds")


def _metafield_value(key: str, value: Any) -> tuple[str, str]:
    if isinstance(value, bool):
        return "boolean", "true" if value else "false"
    if isinstance(value, int):
        return "number_integer", str(value)
    if isinstance(value, Decimal | float):
        return "number_decimal", str(value)
    if isinstance(value, str):
        return ("multi_line_text_field" if "\n" in value else "single_line_text_field"), value
    if isinstance(value, dict | list | tuple):
        return "json", json.dumps(value, default=str, separators=(",", ":"))
    raise TypeError(f"metafield {key!r}: no Shopify type for a {type(value).__name__}")


def _customer_gets(kind: str, value: Any) -> dict[str, Any]:
    items = {"all": True}
    if kind == "free_product":
        return {"value": {"percentage": 1.0}, "items": items}
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"a {kind} discount needs a positive value, not {value!r}")
    if kind == "fixed_amount":
        return {"value": {"discountAmount": {"amount": str(amount), "appliesOnEachItem": False}},
                "items": items}
    if kind == "percentage":
        if amount > 100:
            raise ValueError(f"a percentage discount can't exceed 100, not {value!r}")
        return {"value": {"percentage": float(amount / 100)}, "items": items}
    raise ValueError(f"unknown discount kind {kind!r}; expected fixed_amount, percentage or free_product")


def _check(operation: str, payload: Mapping[str, Any] | None) -> None:
    """Raise the payload's userErrors (a retry can't mend them)."""
    errors = (payload or {}).get("userErrors") or []
    if errors:
        detail = "; ".join(f"{'.'.join(map(str, e.get('field') or [])) or '-'}: {e.get('message')}"
                           for e in errors)
        raise ShopifyError(f"{operation}: {detail}", retryable=False)


def _graphql_errors(operation: str, reply: Mapping[str, Any]) -> ShopifyError:
    errors = reply["errors"] if isinstance(reply["errors"], list) else [{"message": str(reply["errors"])}]
    codes = [(e.get("extensions") or {}).get("code") for e in errors if isinstance(e, dict)]
    retryable = not codes or any(code is None or code in RETRYABLE_CODES for code in codes)
    retry_after = None
    if "THROTTLED" in codes:  # wait until the bucket holds the query's cost again
        cost = (reply.get("extensions") or {}).get("cost") or {}
        status = cost.get("throttleStatus") or {}
        try:
            missing = float(cost["requestedQueryCost"]) - float(status["currentlyAvailable"])
            retry_after = max(missing, 0.0) / float(status["restoreRate"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            retry_after = 1.0
    detail = "; ".join(str(e.get("message") if isinstance(e, dict) else e) for e in errors)
    return ShopifyError(f"{operation}: {detail}", retryable=retryable, retry_after=retry_after)


def _failure(operation: str, exc: BaseException) -> ShopifyError:
    """An HTTP or network failure as a ShopifyError."""
    status, headers, body = _http_details(exc)
    if status is None:
        reason = getattr(exc, "reason", None) or exc
        return ShopifyError(f"{operation}: Shopify could not be reached ({reason})", retryable=True)
    retryable = status == 429 or status >= 500
    detail = body.decode("utf-8", "replace").strip()[:300] if body else ""
    try:
        detail = str(json.loads(detail).get("errors") or detail)
    except (ValueError, AttributeError):
        pass
    return ShopifyError(f"{operation}: HTTP {status}" + (f": {detail}" if detail else ""),
                        retryable=retryable, retry_after=_retry_after(headers), status=status)


def _http_details(exc: BaseException) -> tuple[int | None, Mapping[str, str], bytes]:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            body = exc.read()
        except (OSError, http.client.HTTPException):
            body = b""
        return exc.code, exc.headers or {}, body
    response = getattr(exc, "response", None)  # pyactiveresource's ClientError & co
    if response is not None and getattr(response, "code", None):
        return response.code, response.headers or {}, response.body or b""
    if isinstance(exc, pyactiveresource.connection.ServerError):  # keeps no response: read the cause
        cause = exc.__context__
        if isinstance(cause, urllib.error.HTTPError):
            return _http_details(cause)
        return exc.code, {}, b""
    return None, {}, b""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name.lower()), None)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = _header(headers, "Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def _next_page_info(headers: Mapping[str, str]) -> str | None:
    link = _header(headers, "Link") or ""
    match = re.search(r'<([^>]*)>;\s*rel="next"', link)
    if not match:
        return None
    values = parse_qs(urlsplit(match.group(1)).query).get("page_info")
    return values[0] if values else None


__all__ = ["DEFAULT_API_VERSION", "NAMESPACE", "ShopifyAdmin", "ShopifyError"]
