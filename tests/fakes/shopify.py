"""A loopback Shopify for tests: a real HTTP server on 127.0.0.1 (an ephemeral
port) that answers the parts of the Admin API regulars uses, with the
documented response shapes of API 2026-04.

- ``/admin/api/<version>/graphql.json``: the operation is recognised by its
  root field in the query text (``metafieldsSet``, ``metafieldsDelete``,
  ``discountCodeBasicCreate``, ``codeDiscountNodeByCode``, ``discountCodeDelete``,
  ``webhookSubscriptions``, ``webhookSubscriptionCreate``); validation failures
  are ``userErrors`` (a taken code: ``TAKEN``; a blank or badly typed metafield
  value, or one whose type differs from the stored one); anything else is a
  top-level ``errors`` answer. ``throttle_next`` answers THROTTLED (HTTP 200).
- ``/admin/api/<version>/orders.json``: ``orders`` (contract payloads by default)
  filtered by ``status`` (default ``open``, as Shopify's) and ``updated_at_min``,
  newest id first, ``limit`` at most 250, paged with opaque ``page_info`` cursors
  in ``Link: <...>; rel="next"`` headers (a ``page_info`` request takes no other
  filter, as Shopify's).
- ``POST /admin/oauth/access_token``: checks client_id, client_secret and the
  one-time ``code`` (form or JSON body) and answers ``{access_token, scope}``.

Every ``/admin/api`` request needs ``X-Shopify-Access-Token: <token>`` (else 401).
``FakeShopify(tls=True)`` serves HTTPS with a self-signed certificate for
127.0.0.1 (``ca_file``; point ``SSL_CERT_FILE`` at it).

    with FakeShopify() as shop:
        admin = ShopifyAdmin(shop.shop, shop.token, base_url=shop.base_url)
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

from tests.conftest import load_contract
from tests.fakes.server import JSONHandler, LoopbackServer

Reply = tuple[int, Any, dict[str, str]]
#: the metafield types the fake knows, with the pattern a value must match
METAFIELD_TYPES = {"number_integer": r"-?\d+", "number_decimal": r"-?\d+(\.\d+)?", "boolean": "true|false",
                   "single_line_text_field": r"[^\n]*", "multi_line_text_field": r"(?s).*", "json": r"(?s).*"}


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


def _valid(kind: str, value: str) -> bool:
    try:
        json.loads(value) if kind == "json" else None
    except ValueError:
        return False
    return re.fullmatch(METAFIELD_TYPES[kind], value) is not None


def _exact_ids(value: Any) -> Any:
    """Put back the ids the contract sources rounded: a resource's ``id`` is the
    number at the end of its ``admin_graphql_api_id`` (see SOURCES.md)."""
    if isinstance(value, list):
        return [_exact_ids(v) for v in value]
    if isinstance(value, dict):
        fixed = {k: _exact_ids(v) for k, v in value.items()}
        match = re.search(r"/(\d+)$", str(fixed.get("admin_graphql_api_id") or ""))
        if match and isinstance(fixed.get("id"), int):
            fixed["id"] = int(match.group(1))
        return fixed
    return value


def contract_orders() -> list[dict[str, Any]]:
    """The distinct contract orders: ShopifyAPI's fixture order.json (450789469;
    its orders.json copy lacks line_items) and the 2026-04 docs sample
    (820982911946154508, ids made exact)."""
    return [load_contract("shopify/python_api_fixtures/order.json")["order"],
            _exact_ids(load_contract("shopify/webhooks/orders_updated.docs-2026-04.json"))]


def make_orders(count: int, start: datetime = datetime(2024, 5, 1, 9, tzinfo=UTC)) -> list[dict[str, Any]]:
    """``count`` orders cloned from the contract ones, with ids above 2**53
    (820982911946154508 + i) and updated an hour apart from ``start``."""
    templates = contract_orders()
    orders = []
    for i in range(count):
        order = copy.deepcopy(templates[i % len(templates)])
        order["id"] = 820982911946154508 + i
        order["admin_graphql_api_id"] = f"gid://shopify/Order/{order['id']}"
        order["name"] = f"#{9000 + i}"
        order["updated_at"] = (start + timedelta(hours=i)).isoformat()
        orders.append(order)
    return orders


def sign_callback(params: dict[str, str], secret: str) -> str:
    """Shopify's OAuth callback hmac: hex HMAC-SHA256 of the sorted
    ``key=value`` pairs (without ``hmac``) joined by ``&``."""
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "hmac")
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _user_error(field: list[str], message: str, code: str) -> dict[str, Any]:
    return {"field": field, "message": message, "code": code}


class FakeShopify:
    """The fake shop. ``requests`` records every request as ``Request(method,
    path, query, headers, json)``; ``metafields`` (customer id -> {key: (type,
    value)}), ``discounts`` (code -> the DiscountCodeBasicInput it was created
    with), ``webhooks`` (list of {id, topic, uri, format}) and ``orders`` are its
    state."""

    def __init__(self, orders: list[dict[str, Any]] | None = None, *, tls: bool = False):
        self.shop = "regulars-test.myshopify.com"
        self.token = "shpat_" + secrets.token_hex(16)
        self.api_key, self.api_secret = secrets.token_hex(16), "shpss_" + secrets.token_hex(16)
        self.code = secrets.token_hex(16)  # the OAuth code the next callback carries
        self.scope = "read_orders,read_customers,write_customers,write_discounts"
        self.requests: list[Request] = []
        self.metafields: dict[str, dict[str, tuple[str, str]]] = {}
        self.discounts: dict[str, dict[str, Any]] = {}
        self.discount_ids: dict[str, str] = {}
        self.webhooks: list[dict[str, Any]] = []
        self.orders = orders if orders is not None else contract_orders()
        self.tls, self.ca_file, self.base_url = tls, "", ""
        self._failures: list[tuple[str, Any, float | None]] = []
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._server: LoopbackServer | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> FakeShopify:
        fake = self

        class Handler(_Handler):
            shopify = fake

        self._server = LoopbackServer(Handler)
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*_self_signed(Path(self._tmp.name)))
            self.ca_file = str(Path(self._tmp.name) / "cert.pem")
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if self.tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self._server.port}"
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- test controls ---------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests with HTTP ``status`` (and Retry-After)."""
        self._failures.extend([("status", status, retry_after)] * count)

    def throttle_next(self, count: int = 1) -> None:
        """Answer the next ``count`` requests with GraphQL's THROTTLED (HTTP 200)."""
        self._failures.extend([("throttle", 200, None)] * count)

    def stall_next(self, seconds: float, count: int = 1) -> None:
        """Wait ``seconds`` before answering the next ``count`` requests."""
        self._failures.extend([("stall", seconds, None)] * count)

    def callback_params(self, **extra: str) -> dict[str, str]:
        """The query of the OAuth redirect to the app, signed with the app secret."""
        params = {"code": self.code, "shop": self.shop, "timestamp": str(int(time.time())), **extra}
        return {**params, "hmac": sign_callback(params, self.api_secret)}

    # -- dispatch --------------------------------------------------------------------

    def respond(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                body: Any) -> Reply:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure and failure[0] == "stall":
            time.sleep(failure[1])
        elif failure and failure[0] == "status":
            extra = {"Retry-After": str(failure[2])} if failure[2] is not None else {}
            return failure[1], {"errors": f"Injected HTTP {failure[1]}"}, extra
        if method == "POST" and path == "/admin/oauth/access_token":
            return self._access_token(query, body)
        match = re.fullmatch(r"/admin/api/(\d{4}-\d{2}|unstable)/(graphql|orders)\.json", path)
        if not match:
            return 404, {"errors": "Not Found"}, {}
        if headers.get("x-shopify-access-token") != self.token:
            return 401, {"errors": "[API] Invalid API key or access token (unrecognized login or "
                                   "wrong password)"}, {}
        if match.group(2) == "orders" and method == "GET":
            return self._orders(path, query, headers.get("host", ""))
        if match.group(2) == "graphql" and method == "POST" and isinstance(body, dict):
            if failure and failure[0] == "throttle":
                return 200, _THROTTLED, {}
            with self._lock:
                return 200, self._graphql(str(body.get("query") or ""), body.get("variables") or {}), {}
        return 400, {"errors": "Bad Request"}, {}

    def _access_token(self, query: dict[str, str], body: Any) -> Reply:
        form = body if isinstance(body, dict) else query
        if form.get("client_id") != self.api_key or form.get("client_secret") != self.api_secret:
            return 400, {"error": "invalid_client", "error_description": "Client credentials are invalid"}, {}
        if form.get("code") != self.code:
            return 400, {"error": "invalid_request",
                         "error_description": "The authorization code was not found or was already used"}, {}
        self.code = secrets.token_hex(16)  # codes are single-use
        return 200, {"access_token": self.token, "scope": self.scope}, {}

    # -- REST orders -----------------------------------------------------------------

    def _orders(self, path: str, query: dict[str, str], host: str) -> Reply:
        if "page_info" in query:
            if set(query) - {"page_info", "limit", "fields"}:
                return 400, {"errors": {"page_info": "page_info cannot be combined with other "
                                                     "filters than limit and fields"}}, {}
            try:
                cursor = json.loads(base64.urlsafe_b64decode(query["page_info"]))
            except ValueError:
                return 400, {"errors": {"page_info": "Invalid value."}}, {}
        else:
            cursor = {"status": query.get("status", "open"), "since": query.get("updated_at_min"), "offset": 0}
        limit = int(query.get("limit", "50")) if query.get("limit", "50").isdigit() else 0
        if not 1 <= limit <= 250:
            return 400, {"errors": {"limit": "Invalid value."}}, {}
        orders = sorted(self.orders, key=lambda o: o["id"], reverse=True)
        if cursor["status"] == "open":
            orders = [o for o in orders if not o.get("cancelled_at") and not o.get("closed_at")]
        if cursor["since"]:
            orders = [o for o in orders if _time(o["updated_at"]) >= _time(cursor["since"])]
        offset = cursor["offset"]
        links = []
        for rel, start in (("previous", offset - limit), ("next", offset + limit)):
            if 0 <= start < len(orders) and start != offset:
                token = base64.urlsafe_b64encode(json.dumps({**cursor, "offset": start}).encode()).decode()
                scheme = "https" if self.tls else "http"
                url = f"{scheme}://{host}{path}?" + urlencode({"limit": limit, "page_info": token})
                links.append(f'<{url}>; rel="{rel}"')
        headers = {"Link": ", ".join(links)} if links else {}
        return 200, {"orders": copy.deepcopy(orders[offset:offset + limit])}, headers

    # -- GraphQL ---------------------------------------------------------------------

    def _graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        for name in ("metafieldsSet", "metafieldsDelete", "discountCodeBasicCreate", "codeDiscountNodeByCode",
                     "discountCodeDelete", "webhookSubscriptions", "webhookSubscriptionCreate"):
            if re.search(rf"\b{name}\s*\(", query):
                return {"data": {name: getattr(self, f"_{name}")(variables)}}
        return {"errors": [{"message": "This fake does not know the query's root field",
                            "extensions": {"code": "undefinedField"}}]}

    def _metafieldsSet(self, variables: dict[str, Any]) -> dict[str, Any]:
        """Atomic, as Shopify's: one bad input and nothing is stored."""
        errors, stored = [], []
        for index, item in enumerate(variables.get("metafields") or []):
            where = ["metafields", str(index)]
            owner = re.fullmatch(r"gid://shopify/Customer/(\d+)", str(item.get("ownerId")))
            kind, value = item.get("type"), item.get("value")
            current = self.metafields.get(owner.group(1), {}).get(item.get("key")) if owner else None
            if owner is None:
                errors.append(_user_error([*where, "ownerId"], "Owner does not exist.", "INVALID"))
            elif kind not in METAFIELD_TYPES:
                errors.append(_user_error([*where, "type"], f"Type '{kind}' is not a valid type.", "INVALID_TYPE"))
            elif not isinstance(value, str) or not value.strip():
                errors.append(_user_error([*where, "value"], "Value can't be blank.", "BLANK"))
            elif current and current[0] != kind:
                errors.append(_user_error([*where, "type"], f"Type '{kind}' must be consistent with the "
                                          f"existing type '{current[0]}'.", "INVALID_TYPE"))
            elif not _valid(kind, value):
                errors.append(_user_error([*where, "value"], f"Value is not a valid {kind}.", "INVALID_VALUE"))
            else:
                stored.append((owner.group(1), item))
        if errors:
            return {"metafields": [], "userErrors": errors}
        for customer, item in stored:
            self.metafields.setdefault(customer, {})[item["key"]] = (item["type"], item["value"])
        return {"metafields": [{"key": i["key"], "namespace": i["namespace"], "value": i["value"],
                                "type": i["type"]} for _, i in stored], "userErrors": []}

    def _metafieldsDelete(self, variables: dict[str, Any]) -> dict[str, Any]:
        deleted = []
        for item in variables.get("metafields") or []:
            customer = str(item.get("ownerId")).rsplit("/", 1)[-1]
            gone = self.metafields.get(customer, {}).pop(item.get("key"), None)
            deleted.append({k: item[k] for k in ("key", "namespace", "ownerId")} if gone else None)
        return {"deletedMetafields": deleted, "userErrors": []}

    def _discountCodeBasicCreate(self, variables: dict[str, Any]) -> dict[str, Any]:
        given = variables.get("basicCodeDiscount") or {}
        where = ["basicCodeDiscount"]
        code = str(given.get("code") or "")
        errors = [_user_error([*where, name], f"{name} can't be blank", "BLANK")
                  for name in ("code", "title", "startsAt", "customerGets") if not given.get(name)]
        context = given.get("context") or {}
        if not (context.get("all") or (context.get("customers") or {}).get("add")):
            errors.append(_user_error([*where, "context"], "Context can't be blank", "BLANK"))
        if any(code.lower() == taken.lower() for taken in self.discounts):
            errors.append(_user_error([*where, "code"], "Code must be unique. Please try a different code.",
                                      "TAKEN"))
        if errors:
            return {"codeDiscountNode": None, "userErrors": errors}
        self.discounts[code] = copy.deepcopy(given)
        self.discount_ids[code] = f"gid://shopify/DiscountCodeNode/{next(self._ids)}"
        return {"codeDiscountNode": {"id": self.discount_ids[code]}, "userErrors": []}

    def _codeDiscountNodeByCode(self, variables: dict[str, Any]) -> dict[str, Any] | None:
        code = next((c for c in self.discounts if c.lower() == str(variables.get("code")).lower()), None)
        if code is None:
            return None
        return {"id": self.discount_ids[code],
                "codeDiscount": {"__typename": "DiscountCodeBasic", "title": self.discounts[code]["title"]}}

    def _discountCodeDelete(self, variables: dict[str, Any]) -> dict[str, Any]:
        code = next((c for c, i in self.discount_ids.items() if i == variables.get("id")), None)
        if code is None:
            return {"deletedCodeDiscountId": None,
                    "userErrors": [_user_error(["id"], "Discount does not exist", "INVALID")]}
        del self.discounts[code], self.discount_ids[code]
        return {"deletedCodeDiscountId": variables["id"], "userErrors": []}

    def _webhookSubscriptions(self, variables: dict[str, Any]) -> dict[str, Any]:
        hooks = copy.deepcopy(self.webhooks[:int(variables.get("first") or 50)])
        return {"edges": [{"node": hook} for hook in hooks], "nodes": hooks,
                "pageInfo": {"hasNextPage": len(self.webhooks) > len(hooks)}}

    def _webhookSubscriptionCreate(self, variables: dict[str, Any]) -> dict[str, Any]:
        given, topic = variables.get("webhookSubscription") or {}, variables.get("topic")
        uri = given.get("uri")
        if not uri or not re.fullmatch(r"[A-Z_]+", str(topic)):
            return {"webhookSubscription": None,
                    "userErrors": [{"field": ["webhookSubscription", "uri"], "message": "Address can't be blank"}]}
        if any(h["topic"] == topic and h["uri"] == uri for h in self.webhooks):
            return {"webhookSubscription": None, "userErrors": [
                {"field": ["webhookSubscription", "uri"], "message": "Address for this topic has already been taken"}]}
        hook = {"id": f"gid://shopify/WebhookSubscription/{next(self._ids)}", "topic": topic, "uri": uri,
                "format": given.get("format", "JSON")}
        self.webhooks.append(hook)
        return {"webhookSubscription": copy.deepcopy(hook), "userErrors": []}


_THROTTLED = {
    "errors": [{"message": "Throttled", "extensions": {
        "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
    "extensions": {"cost": {"requestedQueryCost": 10, "actualQueryCost": None, "throttleStatus": {
        "maximumAvailable": 2000.0, "currentlyAvailable": 5, "restoreRate": 100.0}}},
}


def _self_signed(directory: Path) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1, written to ``directory``."""
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            # (what Python 3.13's stricter default verification, VERIFY_X509_STRICT, wants of a CA)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


class _Handler(JSONHandler):
    shopify: FakeShopify

    def handle_json(self, method, path, query, headers, body):
        self.shopify.requests.append(Request(method, path, query, headers, body))
        return self.shopify.respond(method, path, query, headers, body)
