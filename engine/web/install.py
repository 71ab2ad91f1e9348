"""Installing regulars in a shop, through each platform's own authorization.

Shopify (OAuth, through ShopifyAPI's ``Session``):

1. the merchant opens ``/install/shopify?shop=example.myshopify.com``;
2. regulars redirects to the shop's permission page (scopes, our callback, a
   ``state`` that only this server can make and that expires in 10 minutes);
3. Shopify sends the merchant back to ``/install/shopify/callback``: the
   query's HMAC is checked with the app's secret, the ``state`` too, the code
   is exchanged for an access token, stored encrypted, and the webhooks
   regulars needs are registered (GraphQL ``webhookSubscriptionCreate``).

WooCommerce (the ``/wc-auth/v1/authorize`` key exchange):

1. the merchant opens ``/install/woocommerce?store_url=https://shop.example``;
2. regulars redirects to the store's authorization page;
3. on approval WooCommerce POSTs the new API keys to
   ``/install/woocommerce/callback`` (its ``user_id`` is our ``state``); they
   are stored encrypted with a new webhook secret, and the webhooks are created
   through the REST API, signed with that secret;
4. the merchant lands on ``/install/woocommerce/return``.

Both need ``REGULARS_PUBLIC_URL`` (where shops reach this server, https);
Shopify also ``REGULARS_SHOPIFY_API_KEY`` and ``REGULARS_SHOPIFY_API_SECRET``
(the app's client id and secret, which also sign its webhooks).
"""

from __future__ import annotations

import html
import logging
import os
import re
import secrets
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.routing import Route

log = logging.getLogger("regulars.install")

STATE_SECONDS = 600
#: write_app_proxy: the customer's card in the storefront (engine.web.pages.card)
SHOPIFY_SCOPES = ["read_orders", "read_customers", "write_customers", "write_discounts", "write_app_proxy"]
SHOPIFY_WEBHOOKS = ["orders/create", "orders/updated", "orders/paid", "orders/cancelled", "refunds/create",
                    "customers/create", "customers/update"]
WOO_WEBHOOKS = ["order.created", "order.updated", "order.deleted", "customer.created", "customer.updated"]
_SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]*\.myshopify\.com$")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _done_page(title: str, text: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
                        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>")


class Install:
    """The install routes of one engine; ``env`` and the clients' ``base_url``
    can be given (tests point them at loopback shops)."""

    def __init__(self, engine, env=None, shopify_base_url: str | None = None):
        self.engine = engine
        self.env = os.environ if env is None else env
        self.shopify_base_url = shopify_base_url

    def _public(self, path: str) -> str | None:
        base = self.env.get("REGULARS_PUBLIC_URL", "").rstrip("/")
        return f"{base}{path}" if base else None

    def _missing(self, *names: str) -> JSONResponse | None:
        gone = [n for n in names if not self.env.get(n)]
        if gone:
            return _error(503, "not_configured", f"set {' and '.join(gone)} to install from this server")
        return None

    # -- Shopify ------------------------------------------------------------------

    async def shopify_start(self, request: Request):
        missing = self._missing("REGULARS_PUBLIC_URL", "REGULARS_SHOPIFY_API_KEY", "REGULARS_SHOPIFY_API_SECRET")
        if missing:
            return missing
        shop = (request.query_params.get("shop") or "").strip().lower()
        if not _SHOP_DOMAIN.match(shop):
            return _error(400, "bad_shop", "shop must be the shop's myshopify domain, e.g. example.myshopify.com")
        from connectors.shopify.admin import ShopifyAdmin

        state = self.engine.credentials.seal({"channel": "shopify", "shop": shop, "nonce": secrets.token_hex(8)})
        url = ShopifyAdmin.permission_url(
            shop, self.env["REGULARS_SHOPIFY_API_KEY"], self.env["REGULARS_SHOPIFY_API_SECRET"], SHOPIFY_SCOPES,
            self._public("/install/shopify/callback"), state, base_url=self.shopify_base_url)
        return RedirectResponse(url, status_code=302)

    async def shopify_callback(self, request: Request):
        missing = self._missing("REGULARS_PUBLIC_URL", "REGULARS_SHOPIFY_API_KEY", "REGULARS_SHOPIFY_API_SECRET")
        if missing:
            return missing
        params = dict(request.query_params)
        shop = (params.get("shop") or "").lower()
        state = self.engine.credentials.unseal(params.get("state") or "", STATE_SECONDS)
        if not state or state.get("channel") != "shopify" or state.get("shop") != shop:
            return _error(400, "bad_state", "the install link is not ours or has expired; start the install again")
        from connectors.shopify.admin import ShopifyAdmin, ShopifyError

        key, secret = self.env["REGULARS_SHOPIFY_API_KEY"], self.env["REGULARS_SHOPIFY_API_SECRET"]
        settings = self.engine.connector("shopify").settings
        version = settings.get("api_version") or "2026-04"
        try:
            token = await run_in_threadpool(ShopifyAdmin.exchange_token, shop, key, secret, params, version,
                                            base_url=self.shopify_base_url)
        except ShopifyError as exc:
            status = 401 if not exc.retryable else 502
            return _error(status, "oauth_failed", str(exc))
        await run_in_threadpool(self.engine.credentials.store, "shopify", shop, {"token": token},
                                ",".join(SHOPIFY_SCOPES))
        admin = ShopifyAdmin(shop, token, version, base_url=self.shopify_base_url)
        try:
            created = await run_in_threadpool(admin.register_webhooks, self._public("/webhooks/shopify"),
                                              SHOPIFY_WEBHOOKS)
        except ShopifyError as exc:
            log.error("installed in %s, but registering webhooks failed: %s", shop, exc)
            return _error(502, "webhooks_failed", f"installed, but registering the webhooks failed: {exc}; "
                                                  "open the install link again to retry")
        log.info("installed in %s; webhooks registered: %s", shop, ", ".join(created) or "none new")
        return _done_page("regulars is installed", f"{shop} now sends its orders to regulars.")

    # -- WooCommerce -----------------------------------------------------------------

    async def woo_start(self, request: Request):
        missing = self._missing("REGULARS_PUBLIC_URL")
        if missing:
            return missing
        store = (request.query_params.get("store_url") or "").strip().rstrip("/")
        parts = urlsplit(store)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return _error(400, "bad_store", "store_url must be the store's address, e.g. https://shop.example")
        from connectors.woocommerce.rest import WooStore

        state = self.engine.credentials.seal({"channel": "woocommerce", "store": store})
        try:
            url = WooStore.authorize_url(store, "regulars", state, self._public("/install/woocommerce/return"),
                                         self._public("/install/woocommerce/callback"))
        except ValueError as exc:
            return _error(400, "bad_install", str(exc))
        return RedirectResponse(url, status_code=302)

    async def woo_callback(self, request: Request):
        from connectors.woocommerce.rest import WooError, WooStore

        try:
            keys = WooStore.read_auth_callback(await request.body())
        except ValueError as exc:
            return _error(400, "bad_callback", str(exc))
        state = self.engine.credentials.unseal(str(keys.get("user_id") or ""), STATE_SECONDS)
        if not state or state.get("channel") != "woocommerce":
            return _error(400, "bad_state", "the install is not ours or has expired; start the install again")
        store = state["store"]
        webhook_secret = secrets.token_urlsafe(32)
        await run_in_threadpool(self.engine.credentials.store, "woocommerce", store, {
            "consumer_key": keys["consumer_key"], "consumer_secret": keys["consumer_secret"],
            "webhook_secret": webhook_secret}, keys.get("key_permissions"))
        client = WooStore(store, keys["consumer_key"], keys["consumer_secret"])
        try:
            created = await run_in_threadpool(client.register_webhooks, self._public("/webhooks/woocommerce"),
                                              webhook_secret, WOO_WEBHOOKS)
        except WooError as exc:
            log.error("keys from %s stored, but creating webhooks failed: %s", store, exc)
            return _error(502, "webhooks_failed", f"keys stored, but creating the webhooks failed: {exc}")
        log.info("installed in %s; webhooks created: %s", store, ", ".join(created) or "none new")
        return JSONResponse({"status": "installed", "store": store, "webhooks": created})

    async def woo_return(self, request: Request):
        if request.query_params.get("success") == "0":
            return _done_page("Not installed", "The store did not grant regulars access.")
        return _done_page("regulars is installed", "Your store now sends its orders to regulars.")

    def routes(self) -> list[Route]:
        return [
            Route("/install/shopify", self.shopify_start, methods=["GET"]),
            Route("/install/shopify/callback", self.shopify_callback, methods=["GET"]),
            Route("/install/woocommerce", self.woo_start, methods=["GET"]),
            Route("/install/woocommerce/callback", self.woo_callback, methods=["POST"]),
            Route("/install/woocommerce/return", self.woo_return, methods=["GET"]),
        ]


def installed_webhook_secrets(engine) -> dict[str, list[str]]:
    """Webhook secrets an install brought: the Shopify app's secret (it signs
    the app's webhooks) and the secret regulars gave WooCommerce's webhooks."""
    found: dict[str, list[str]] = {"shopify": [], "woocommerce": []}
    app_secret = os.environ.get("REGULARS_SHOPIFY_API_SECRET", "").strip()
    if app_secret:
        found["shopify"].append(app_secret)
    if "woocommerce" in engine.connectors:
        try:
            creds = engine.credentials.get("woocommerce")
        except Exception:  # unreadable: the outbox reports it
            creds = None
        if creds and creds.get("webhook_secret"):
            found["woocommerce"].append(creds["webhook_secret"])
    return found
