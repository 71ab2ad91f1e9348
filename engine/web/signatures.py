"""Webhook signatures: base64 HMAC-SHA256 of the raw body, compared in
constant time, against every secret that is valid now (rotation)."""

from __future__ import annotations

import base64
import hmac
import html
import os
from collections.abc import Iterable, Mapping

#: channel → the environment variable holding its secret(s), comma-separated
SECRET_VARIABLES = {
    "shopify": "REGULARS_SHOPIFY_WEBHOOK_SECRET",
    "woocommerce": "REGULARS_WOOCOMMERCE_WEBHOOK_SECRET",
}


def secrets_from_env(env: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Each channel's valid secrets. Several, comma-separated, while a secret
    is rotated. WooCommerce's secret is HTML-entity-decoded, as WooCommerce
    itself stores it (a secret with ``&`` is signed with the decoded text)."""
    env = os.environ if env is None else env
    found = {}
    for channel, variable in SECRET_VARIABLES.items():
        values = [v.strip() for v in env.get(variable, "").split(",") if v.strip()]
        if channel == "woocommerce":
            values = [html.unescape(v) for v in values]
        found[channel] = values
    return found


def sign(body: bytes, secret: str) -> str:
    """The base64 HMAC-SHA256 of ``body`` (what Shopify and WooCommerce send)."""
    return base64.b64encode(hmac.digest(secret.encode(), body, "sha256")).decode()  # OpenSSL's one-shot HMAC


def verify(body: bytes, signature: str | None, secrets: Iterable[str]) -> bool:
    """Whether ``signature`` signs ``body`` with one of ``secrets``."""
    if not signature:
        return False
    given = signature.strip().encode()
    # Every secret is tried, so the time doesn't tell which one matched.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(body, secret).encode(), given)
    return matched
