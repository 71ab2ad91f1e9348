"""The shops' API credentials: from the environment, or stored encrypted by an
install (Shopify's OAuth, WooCommerce's key exchange).

Stored credentials are encrypted with Fernet (AES-128-CBC and HMAC-SHA256, from
``cryptography``) under ``REGULARS_SECRET_KEY``. Several keys, comma-separated,
rotate it: the first encrypts, any of them decrypts. A key is a Fernet key or
any passphrase (hashed into one). Without the variable, an embedded install
keeps a generated key in ``regulars.key`` beside ``plugins.toml``, readable by
its owner only; a server deployment should set the variable.

The environment wins over what is stored:

- Shopify: ``REGULARS_SHOPIFY_ACCESS_TOKEN`` for the shop in ``[connectors.shopify]``;
- WooCommerce: ``REGULARS_WOOCOMMERCE_CONSUMER_KEY`` and
  ``REGULARS_WOOCOMMERCE_CONSUMER_SECRET`` for the store in ``[connectors.woocommerce]``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select

from engine.db import utcnow
from engine.db.models import shop_credentials

SECRET_KEY_VARIABLE = "REGULARS_SECRET_KEY"
KEY_FILE = "regulars.key"

ENV_CREDENTIALS = {
    "shopify": {"token": "REGULARS_SHOPIFY_ACCESS_TOKEN"},
    "woocommerce": {"consumer_key": "REGULARS_WOOCOMMERCE_CONSUMER_KEY",
                    "consumer_secret": "REGULARS_WOOCOMMERCE_CONSUMER_SECRET"},
}


class CredentialsError(Exception):
    """Credentials that can't be read (a wrong or missing key)."""


def _fernet_key(text: str) -> bytes:
    text = text.strip()
    try:
        if len(base64.urlsafe_b64decode(text.encode())) == 32:
            return text.encode()
    except ValueError:
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())


class Credentials:
    """Finds each channel's credentials; stores and reads installed ones."""

    #: seconds a look-up of stored credentials is remembered
    CACHE_SECONDS = 30.0

    def __init__(self, db, base_dir: Path, env: Mapping[str, str] | None = None):
        self.db = db
        self.base_dir = Path(base_dir)
        self.env = os.environ if env is None else env
        self._cache: dict[str, tuple[float, dict | None]] = {}

    # -- encryption -------------------------------------------------------------

    def _cipher(self, create: bool) -> MultiFernet:
        keys = [k for k in self.env.get(SECRET_KEY_VARIABLE, "").split(",") if k.strip()]
        if not keys:
            path = self.base_dir / KEY_FILE
            if path.exists():
                keys = [path.read_text().strip()]
            elif create:
                key = Fernet.generate_key().decode()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(key + "\n")
                keys = [key]
            else:
                raise CredentialsError(
                    f"stored credentials can't be read: set {SECRET_KEY_VARIABLE} (or restore {path})"
                )
        return MultiFernet([Fernet(_fernet_key(k)) for k in keys])

    def encrypt(self, data: dict) -> bytes:
        return self._cipher(create=True).encrypt(json.dumps(data).encode())

    def decrypt(self, token: bytes) -> dict:
        try:
            return json.loads(self._cipher(create=False).decrypt(bytes(token)))
        except InvalidToken:
            raise CredentialsError(
                f"stored credentials can't be decrypted with {SECRET_KEY_VARIABLE}: was the key changed "
                "without keeping the old one after it (key1,key0)?"
            ) from None

    def seal(self, data: dict) -> str:
        """An opaque, tamper-proof token of ``data`` (an install's ``state``)."""
        return self.encrypt(data).decode()

    def unseal(self, token: str, max_age: int) -> dict | None:
        """The data of a token ``seal`` made at most ``max_age`` seconds ago;
        None when it is forged, altered or too old."""
        try:
            return json.loads(self._cipher(create=False).decrypt(token.encode(), ttl=max_age))
        except (InvalidToken, CredentialsError, ValueError):
            return None

    # -- look-up ---------------------------------------------------------------

    def from_env(self, channel: str) -> dict | None:
        names = ENV_CREDENTIALS.get(channel)
        if not names:
            return None
        values = {field: self.env.get(variable, "").strip() for field, variable in names.items()}
        return values if all(values.values()) else None

    def get(self, channel: str, conn=None) -> dict | None:
        """The channel's credentials (``shop`` included when installed), the
        environment's first; None when there are none. ``conn``: read through
        the caller's connection (inside its transaction: on SQLite a second
        connection would wait for the caller's write lock)."""
        found = self.from_env(channel)
        if found is not None:
            return found
        cached = self._cache.get(channel)
        if cached and time.monotonic() - cached[0] < self.CACHE_SECONDS:
            return cached[1]
        query = select(shop_credentials).where(shop_credentials.c.channel == channel)
        if conn is None:
            with self.db.connect() as own:
                row = own.execute(query).one_or_none()
        else:
            row = conn.execute(query).one_or_none()
        value = {**self.decrypt(row.secret), "shop": row.shop} if row else None
        self._cache[channel] = (time.monotonic(), value)
        return value

    def store(self, channel: str, shop: str, data: dict, scopes: str | None = None) -> None:
        """Keep an install's credentials, encrypted; a new install replaces the old."""
        secret = self.encrypt(data)
        with self.db.begin() as conn:
            conn.execute(delete(shop_credentials).where(shop_credentials.c.channel == channel))
            conn.execute(shop_credentials.insert().values(
                channel=channel, shop=shop, secret=secret, scopes=scopes, installed_at=utcnow()))
        self._cache.pop(channel, None)

    def forget(self, channel: str) -> bool:
        with self.db.begin() as conn:
            gone = conn.execute(delete(shop_credentials).where(shop_credentials.c.channel == channel)).rowcount
        self._cache.pop(channel, None)
        return bool(gone)
