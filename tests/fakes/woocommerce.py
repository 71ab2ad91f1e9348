"""A loopback WooCommerce for tests: a real HTTP server on 127.0.0.1 that speaks
the parts of REST API v3 regulars uses, with the documented response shapes.

It checks the OAuth 1.0a signature the way WooCommerce's
``WC_REST_Authentication::check_oauth_signature`` does (keys and values
rawurlencoded, sorted, each ``key=value`` rawurlencoded again and joined by
``%26``; HMAC with the consumer secret + "&"), the 15-minute timestamp window
and nonce reuse, and answers errors as ``{"code", "message", "data"}``.

    with FakeWoo() as woo:
        store = WooStore(woo.url, woo.key, woo.secret)
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import inspect
import itertools
import math
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

from tests.conftest import load_contract
from tests.fakes.server import JSONHandler, LoopbackServer

API = "/wp-json/wc/v3/"
OAUTH_PARAMS = ("oauth_consumer_key", "oauth_timestamp", "oauth_nonce", "oauth_signature",
                "oauth_signature_method")
GMT_OFFSET = timedelta(hours=3)  # the docs' shop is UTC-3: date_* = date_*_gmt - 3h

Reply = tuple[int, Any, dict[str, str]]


def _rest(name: str) -> Any:
    return load_contract(f"woocommerce/rest_v3/{name}.json")["response"]


def _error(status: int, code: str, message: str) -> Reply:
    return status, {"code": code, "message": message, "data": {"status": status}}, {}


def _rawurlencode(text: str) -> str:
    return quote(text, safe="~")


def oauth_signature(method: str, url: str, params: dict[str, str], secret: str) -> str:
    """WooCommerce's signature of a request (``params`` without oauth_signature)."""
    pairs = [(_rawurlencode(k), _rawurlencode(v)) for k, v in sorted(params.items())]
    query = "%26".join(_rawurlencode(f"{k}={v}") for k, v in pairs)
    base = f"{method}&{_rawurlencode(url)}&{query}"
    digest = hashlib.sha1 if params.get("oauth_signature_method") == "HMAC-SHA1" else hashlib.sha256
    mac = hmac.new(f"{secret}&".encode(), base.encode(), digest).digest()
    return base64.b64encode(mac).decode()


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


def _money(amount: Decimal) -> str:
    return format(amount.quantize(Decimal("0.01"), ROUND_HALF_UP), "f")


def _negative(amount: Decimal) -> str:
    return _money(-amount) if amount else "0.00"


def contract_refunds(order: dict[str, Any]) -> list[dict[str, Any]]:
    """The refund resources (``GET orders/<id>/refunds``) of an order built from
    the documented ones: for each refund it lists, the documented refund with
    that id (726: an amount only; 724: line 311 with its meta), else one of an
    amount only like 726; their times kept apart as documented, the last at the
    order's ``date_modified_gmt``, and their links pointing at the order."""
    documented = {refund["id"]: refund for refund in _rest("order_refunds_list")}
    listed = [entry for entry in order.get("refunds") or [] if isinstance(entry, dict)]
    refunds = []
    for entry in listed:
        refund = copy.deepcopy(documented.get(entry["id"]) or documented[726])
        refund["id"] = entry["id"]
        refund["amount"] = _money(abs(Decimal(entry["total"])))
        refunds.append(refund)
    if refunds:
        last = max(_parse(refund["date_created_gmt"]) for refund in refunds)
        shift = _parse(order["date_modified_gmt"]) - last
        for refund in refunds:
            _stamp_refund(refund, order["id"], _parse(refund["date_created_gmt"]) + shift)
    return refunds


def _stamp_refund(refund: dict[str, Any], order_id: int, created: datetime) -> None:
    refund["date_created_gmt"], refund["date_created"] = _iso(created), _iso(created - GMT_OFFSET)
    base = f"https://example.com/wp-json/wc/v3/orders/{order_id}"
    refund["_links"] = {"self": [{"href": f"{base}/refunds/{refund['id']}"}],
                        "collection": [{"href": f"{base}/refunds"}], "up": [{"href": base}]}


def make_refund(order: dict[str, Any], refund_id: int, created: datetime, lines: dict[int, int] | None = None,
                shipping: bool = False) -> dict[str, Any]:
    """A refund resource of ``order`` in the documented shape (refund 724's
    line items): ``lines`` maps the order's line ids to the quantities given
    back, each with its share of the line's total and tax (negative, as
    WooCommerce writes them, ``_refunded_item_id`` in its meta); ``shipping``
    gives back the order's shipping lines too, in ``shipping_lines``. Its
    ``amount`` is all of it, tax included."""
    refund = copy.deepcopy(_rest("order_refunds_list")[1])
    template = refund["line_items"][0]
    refund.update(id=refund_id, line_items=[])
    amount = Decimal(0)
    by_id = {item["id"]: item for item in order["line_items"]}
    for number, (line_id, quantity) in enumerate((lines or {}).items()):
        item = by_id[line_id]
        share = Decimal(quantity) / Decimal(item["quantity"])
        total, tax = Decimal(item["total"]) * share, Decimal(item["total_tax"]) * share
        subtotal, subtotal_tax = Decimal(item["subtotal"]) * share, Decimal(item["subtotal_tax"]) * share
        line = copy.deepcopy(template)
        line.update(
            id=refund_id + 1 + number, name=item["name"], product_id=item["product_id"],
            variation_id=item["variation_id"], quantity=-quantity, tax_class=item["tax_class"],
            subtotal=_negative(subtotal), subtotal_tax=_negative(subtotal_tax), total=_negative(total),
            total_tax=_negative(tax), sku=item["sku"], price=-item["price"],
            taxes=[{"id": t["id"], "total": _negative(Decimal(t["total"]) * share),
                    "subtotal": _negative(Decimal(t["subtotal"]) * share)} for t in item["taxes"]],
            meta_data=[{**template["meta_data"][0], "id": refund_id + 50 + number, "value": str(line_id)}],
        )
        refund["line_items"].append(line)
        amount += Decimal(_money(total)) + Decimal(_money(tax))
    if shipping:  # (after line_items, as WooCommerce writes them)
        refund = {**{k: v for k, v in refund.items() if k != "_links"}, "shipping_lines": []}
        for number, ship in enumerate(order["shipping_lines"]):
            refund["shipping_lines"].append({
                "id": refund_id + 20 + number, "method_title": ship["method_title"], "method_id": ship["method_id"],
                "total": _negative(Decimal(ship["total"])), "total_tax": _negative(Decimal(ship["total_tax"])),
                "taxes": [], "meta_data": [{"id": refund_id + 70 + number, "key": "_refunded_item_id",
                                            "value": str(ship["id"])}],
            })
            amount += Decimal(ship["total"]) + Decimal(ship["total_tax"])
    refund["amount"] = _money(amount)
    _stamp_refund(refund, order["id"], created)
    return refund


def with_refunds(order: dict[str, Any], refunds: list[dict[str, Any]], modified: datetime) -> dict[str, Any]:
    """The order as WooCommerce shows it once ``refunds`` were made: listed
    as ``{"id", "reason", "total"}`` (negative totals), modified at ``modified``."""
    shown = copy.deepcopy(order)
    shown["refunds"] = [{"id": r["id"], "reason": r["reason"], "total": f"-{r['amount']}"} for r in refunds]
    shown["date_modified_gmt"], shown["date_modified"] = _iso(modified), _iso(modified - GMT_OFFSET)
    return shown


def make_orders(count: int, start: datetime = datetime(2024, 5, 1, 9, 0)) -> list[dict[str, Any]]:
    """``count`` orders built from the documented ones (727 processing, 723
    completed with refunds, 727 completed), each with its own id and an hour
    between their modification dates; stored newest first."""
    templates = [_rest("order_get"), _rest("orders_list")[1], _rest("order_update")]
    orders = []
    for i in range(count):
        order = copy.deepcopy(templates[i % len(templates)])
        order["id"], order["number"] = 5000 + i, str(5000 + i)
        created, modified = start + timedelta(hours=i), start + timedelta(hours=i, minutes=30)
        for field, moment in (("date_created", created), ("date_modified", modified)):
            order[f"{field}_gmt"], order[field] = _iso(moment), _iso(moment - GMT_OFFSET)
        orders.append(order)
    return orders[::-1]


class FakeWoo:
    """The fake shop. ``requests`` records (method, path, query without oauth_*,
    json); ``customers`` (id -> customer), ``coupons`` (code -> coupon),
    ``webhooks`` (id -> webhook incl. its secret), ``products``, ``orders`` and
    ``refunds`` (order id -> its refund resources: those given, else
    ``contract_refunds`` of each order that lists some) are its state. An
    order id in ``refunds_failing`` has its refunds answered with HTTP 500;
    ``fail_refunds`` makes the next reads of one order's refunds fail (a
    status, or the connection closed unanswered); ``refund_answers`` (order id
    -> any JSON) answers that instead of the order's refunds, as a broken shop
    (a plugin's) might."""

    def __init__(self, orders: list[dict[str, Any]] | None = None, order_count: int = 7,
                 refunds: dict[int, list[dict[str, Any]]] | None = None):
        self.key = "ck_" + secrets.token_hex(20)
        self.secret = "cs_" + secrets.token_hex(20)
        self.requests: list[dict[str, Any]] = []
        customer = _rest("customer_get")
        self.customers: dict[int, dict[str, Any]] = {customer["id"]: customer}
        self.coupons: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[int, dict[str, Any]] = {}
        self.products = [{"id": 93, "name": "Espresso beans", "sku": "BEANS-1"},
                         {"id": 94, "name": "Flat white", "sku": "FLAT-WHITE"}]
        self.orders = orders if orders is not None else make_orders(order_count)
        self.refunds = {order["id"]: contract_refunds(order) for order in self.orders if order.get("refunds")}
        self.refunds.update(refunds or {})
        self.refunds_failing: set[int] = set()
        self.refund_failures: dict[int, list[tuple[int | str, int | None]]] = {}
        self.refund_answers: dict[int, Any] = {}
        self._failures: list[tuple[int, int | None]] = []
        self._nonces: set[str] = set()
        self._ids = itertools.count(800)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> FakeWoo:
        fake = self

        class Handler(_Handler):
            woo = fake

        self._server = LoopbackServer(Handler).start()
        self.url = f"http://127.0.0.1:{self._server.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.stop()

    def fail_next(self, status: int, count: int = 1, retry_after: int | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (and Retry-After)."""
        self._failures.extend([(status, retry_after)] * count)

    def fail_refunds(self, order_id: int, *failures: int | str, page: int | None = None) -> None:
        """Fail the next reads of the order's refunds (of any page, or of
        ``page``), one failure each: an HTTP status, or ``"reset"`` (the
        connection closed, no answer)."""
        self.refund_failures.setdefault(order_id, []).extend((failure, page) for failure in failures)

    # -- dispatch --------------------------------------------------------------------

    def respond(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        with self._lock:
            if self._failures:
                status, retry_after = self._failures.pop(0)
                reply = _error(status, "fake_failure", f"Injected HTTP {status}.")
                return reply[0], reply[1], {"Retry-After": str(retry_after)} if retry_after else {}
            refused = self._authenticate(method, path, query)
            if refused:
                return refused
            parts = path[len(API):].strip("/").split("/") if path.startswith(API) else []
            # collection/<id>/sub-collection/<id>: _get_orders_refunds(order_id, refund_id=None)
            names, ids = parts[0::2], parts[1::2]
            handler = getattr(self, f"_{method.lower()}_{'_'.join(names)}" if parts else "", None)
            if handler is None or len(parts) > 4 or any(name.isdigit() for name in names):
                return _error(404, "rest_no_route", "No route was found matching the URL and request method.")
            args = [int(part) for part in ids if part.isdigit()]
            try:
                inspect.signature(handler).bind(*args, query=query, body=body)
            except TypeError:  # e.g. PUT on a collection, or a non-numeric id
                args = None
            if args is None or len(args) != len(ids):
                return _error(404, "rest_no_route", "No route was found matching the URL and request method.")
            if method in ("POST", "PUT") and not isinstance(body, dict):
                return _error(400, "rest_invalid_json", "Invalid JSON body passed.")
            return handler(*args, query=query, body=body)

    def _authenticate(self, method: str, path: str, query: dict[str, str]) -> Reply | None:
        missing = [name for name in OAUTH_PARAMS if not query.get(name)]
        if missing:
            return _error(401, "woocommerce_rest_authentication_missing_parameter",
                          f"Missing OAuth parameter {', '.join(missing)}")
        if query["oauth_consumer_key"] != self.key:
            return _error(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        params = {k: v for k, v in query.items() if k != "oauth_signature"}
        if params["oauth_signature_method"] not in ("HMAC-SHA1", "HMAC-SHA256"):
            return _error(401, "woocommerce_rest_authentication_error",
                          "Invalid signature - signature method is invalid.")
        expected = oauth_signature(method, self.url + path, params, self.secret)
        if not hmac.compare_digest(expected, query["oauth_signature"]):
            return _error(401, "woocommerce_rest_authentication_error",
                          "Invalid signature - provided signature does not match.")
        if not query["oauth_timestamp"].isdigit() or abs(time.time() - int(query["oauth_timestamp"])) > 900:
            return _error(401, "woocommerce_rest_authentication_error", "Invalid timestamp.")
        if query["oauth_nonce"] in self._nonces:
            return _error(401, "woocommerce_rest_authentication_error",
                          "Invalid nonce - nonce has already been used.")
        self._nonces.add(query["oauth_nonce"])
        return None

    @staticmethod
    def _page(items: list[Any], query: dict[str, str]) -> Reply:
        try:
            per_page, page = int(query.get("per_page", 10)), int(query.get("page", 1))
        except ValueError:
            return _error(400, "rest_invalid_param", "Invalid parameter(s): per_page, page")
        if not 1 <= per_page <= 100 or page < 1:
            return _error(400, "rest_invalid_param", "Invalid parameter(s): per_page")
        pages = math.ceil(len(items) / per_page)
        if page > max(pages, 1):
            return _error(400, "rest_post_invalid_page_number",
                          "The page number requested is larger than the number of pages available.")
        chunk = copy.deepcopy(items[(page - 1) * per_page: page * per_page])
        return 200, chunk, {"X-WP-Total": str(len(items)), "X-WP-TotalPages": str(pages)}

    def _now(self) -> dict[str, str]:
        now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
        return {"date_modified_gmt": _iso(now), "date_modified": _iso(now - GMT_OFFSET)}

    # -- customers -------------------------------------------------------------------

    def _get_customers(self, cid: int, **_: Any) -> Reply:
        if cid not in self.customers:
            return _error(404, "woocommerce_rest_invalid_id", "Invalid resource ID.")
        return 200, self.customers[cid], {}

    def _put_customers(self, cid: int, *, body: dict[str, Any], **_: Any) -> Reply:
        """Top-level fields replace; meta_data entries update by id or key, else are added."""
        if cid not in self.customers:
            return _error(404, "woocommerce_rest_invalid_id", "Invalid resource ID.")
        customer = self.customers[cid]
        for entry in body.get("meta_data") or []:
            meta = customer.setdefault("meta_data", [])
            match = next((m for m in meta if m["id"] == entry.get("id") or m["key"] == entry["key"]), None)
            if match:
                match["value"] = entry["value"]
            else:
                meta.append({"id": next(self._ids), "key": entry["key"], "value": entry["value"]})
        customer.update({k: v for k, v in body.items() if k not in ("meta_data", "id")}, **self._now())
        return 200, customer, {}

    # -- coupons ---------------------------------------------------------------------

    def _get_coupons(self, cid: int | None = None, *, query: dict[str, str], **_: Any) -> Reply:
        coupons = list(self.coupons.values())
        if cid is not None:
            found = [c for c in coupons if c["id"] == cid]
            return (200, found[0], {}) if found else _error(
                404, "woocommerce_rest_shop_coupon_invalid_id", "Invalid ID.")
        if query.get("code"):
            coupons = [c for c in coupons if c["code"] == query["code"].lower()]
        return self._page(coupons, query)

    def _post_coupons(self, *, body: dict[str, Any], **_: Any) -> Reply:
        code = str(body.get("code") or "").strip().lower()  # WooCommerce lower-cases codes
        if not code:
            return _error(400, "rest_missing_callback_param", "Missing parameter(s): code")
        if code in self.coupons:
            return _error(400, "woocommerce_rest_coupon_code_already_exists", "The coupon code already exists")
        if body.get("discount_type", "fixed_cart") not in ("percent", "fixed_cart", "fixed_product"):
            return _error(400, "rest_invalid_param", "Invalid parameter(s): discount_type")
        coupon = copy.deepcopy(_rest("coupon_create"))
        coupon.update({k: v for k, v in body.items() if k in coupon}, id=next(self._ids), code=code)
        coupon["amount"] = f"{float(body.get('amount') or 0):.2f}"
        if body.get("date_expires_gmt"):
            expires = _parse(body["date_expires_gmt"])
            coupon["date_expires_gmt"], coupon["date_expires"] = _iso(expires), _iso(expires - GMT_OFFSET)
        self.coupons[code] = coupon
        return 201, coupon, {}

    def _delete_coupons(self, cid: int, *, query: dict[str, str], **_: Any) -> Reply:
        coupon = next((c for c in self.coupons.values() if c["id"] == cid), None)
        if coupon is None:
            return _error(404, "woocommerce_rest_shop_coupon_invalid_id", "Invalid ID.")
        if query.get("force") not in ("true", "1"):
            return _error(501, "woocommerce_rest_trash_not_supported", "Coupons do not support trashing.")
        del self.coupons[coupon["code"]]
        return 200, coupon, {}

    # -- products ----------------------------------------------------------------------

    def _get_products(self, *, query: dict[str, str], **_: Any) -> Reply:
        products = self.products
        if query.get("sku"):
            skus = query["sku"].split(",")
            products = [p for p in products if p["sku"] in skus]
        return self._page(products, query)

    # -- webhooks ----------------------------------------------------------------------

    def _get_webhooks(self, *, query: dict[str, str], **_: Any) -> Reply:
        hooks = [self._public(h) for h in self.webhooks.values()
                 if query.get("status", "all") in ("all", h["status"])]
        return self._page(hooks, query)

    def _post_webhooks(self, *, body: dict[str, Any], **_: Any) -> Reply:
        topic = str(body.get("topic") or "")
        if not body.get("delivery_url") or topic.count(".") != 1:
            return _error(400, "woocommerce_rest_webhook_invalid_topic", "Webhook topic is required and must be valid.")
        hook = copy.deepcopy(_rest("webhook_create"))
        resource, event = topic.split(".")
        hook.update({k: v for k, v in body.items() if k in hook or k == "secret"}, id=next(self._ids),
                    resource=resource, event=event, hooks=[], status=body.get("status", "active"))
        self.webhooks[hook["id"]] = hook
        return 201, self._public(hook), {}

    def _put_webhooks(self, wid: int, *, body: dict[str, Any], **_: Any) -> Reply:
        if wid not in self.webhooks:
            return _error(404, "woocommerce_rest_webhook_invalid_id", "Invalid ID.")
        self.webhooks[wid].update({k: v for k, v in body.items() if k in ("name", "status", "secret")})
        return 200, self._public(self.webhooks[wid]), {}

    @staticmethod
    def _public(hook: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in hook.items() if k != "secret"}  # secret is write-only

    # -- orders ------------------------------------------------------------------------

    def _get_orders(self, oid: int | None = None, *, query: dict[str, str], **_: Any) -> Reply:
        if oid is not None:
            found = [order for order in self.orders if order["id"] == oid]
            return (200, found[0], {}) if found else _error(
                404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        if query.get("dates_are_gmt") not in ("true", "1"):
            return _error(400, "fake_needs_gmt", "This fake only filters GMT dates (dates_are_gmt=true).")
        orders = self.orders
        if query.get("modified_after"):
            after = _parse(query["modified_after"])
            orders = [o for o in orders if _parse(o["date_modified_gmt"]) > after]
        field = {"modified": "date_modified_gmt", "id": "id"}.get(query.get("orderby", "date"), "date_created_gmt")
        orders = sorted(orders, key=lambda o: (o[field], o["id"]), reverse=query.get("order", "desc") == "desc")
        return self._page(orders, query)


    def _get_orders_refunds(self, oid: int, rid: int | None = None, *, query: dict[str, str], **_: Any) -> Reply:
        if not any(order["id"] == oid for order in self.orders):
            return _error(404, "woocommerce_rest_invalid_order_id", "Invalid order ID.")
        if oid in self.refunds_failing:
            return _error(500, "fake_failure", "Injected HTTP 500 for this order's refunds.")
        due = [f for f in self.refund_failures.get(oid, []) if f[1] in (None, int(query.get("page") or 1))]
        if due:
            self.refund_failures[oid].remove(due[0])
            failure = due[0][0]
            if failure == "reset":
                raise _Unanswered
            return _error(int(failure), "fake_failure", f"Injected HTTP {failure} for this order's refunds.")
        if oid in self.refund_answers:
            return 200, self.refund_answers[oid], {}
        # newest first, as WooCommerce lists them (a malformed refund where it falls)
        refunds = sorted(self.refunds.get(oid, []), reverse=True,
                         key=lambda r: str(r.get("date_created_gmt")) if isinstance(r, dict) else "")
        if rid is not None:
            found = [r for r in refunds if r["id"] == rid]
            return (200, found[0], {}) if found else _error(
                404, "woocommerce_rest_invalid_id", "Invalid resource ID.")
        return self._page(refunds, query)


class _Unanswered(Exception):
    """The request is left unanswered: its connection is closed."""


class _Handler(JSONHandler):
    woo: FakeWoo

    def _handle(self) -> None:
        try:
            super()._handle()
        except _Unanswered:
            self.close_connection = True  # the client sees the connection closed, no answer

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def handle_json(self, method, path, query, headers, body):
        public = {k: v for k, v in query.items() if not k.startswith("oauth_")}
        self.woo.requests.append({"method": method, "path": path, "query": public, "json": body})
        return self.woo.respond(method, path, query, body)
