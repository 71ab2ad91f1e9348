"""Helpers for testing a regulars plugin with pytest, in a few lines::

    from engine.testing import balance, engine_for, paid_order

    def test_bonus_adds_five_points(tmp_path):
        engine = engine_for(tmp_path, plugins=[("bonus", BonusCampaign)],
                            tables={"plugins": {"bonus": {"points": 5}}})
        assert engine.ingest(*paid_order(total="20.00")).status == "applied"
        assert balance(engine, "jana@example.com") == 25

``engine_for`` builds a real ``Engine`` (plugins loaded the way production
loads them, a migrated SQLite file in ``tmp_path``); ``paid_order`` writes the
webhook body a shop sends when an order is paid, so the delivery goes through
the connector, the inbox, the pipeline and the ledger like a real one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from engine.app import Engine
from engine.config import config_from_tables

#: the programme engine_for starts from: 1 point per unit, both shops on
DEFAULT_TABLES: dict[str, Any] = {
    "engine": {"currency": "EUR"},
    "rules": {"points": {"per_unit": 1}},
    "connectors": {
        "shopify": {"shop": "example.myshopify.com"},
        "woocommerce": {"url": "https://shop.example"},
    },
}


class Delivery(NamedTuple):
    """A delivery as ``Engine.ingest`` takes it: ``engine.ingest(*delivery)``."""

    channel: str
    topic: str
    body: bytes
    headers: dict[str, str]


def engine_for(
    tmp_path: Path,
    plugins: Iterable[tuple[str, Any]] = (),
    tables: dict[str, Any] | None = None,
    *,
    defaults: bool = True,
    database_url: str | None = None,
) -> Engine:
    """An Engine with ``plugins`` (``(name, class or object)`` pairs) registered
    beside the built-ins, on a migrated SQLite database in ``tmp_path``.

    ``tables`` is merged into ``DEFAULT_TABLES`` (or used alone with
    ``defaults=False``) and validated exactly as ``plugins.toml`` is, so a
    plugin's ``settings_schema`` is tested too.
    """
    merged = _merge(copy.deepcopy(DEFAULT_TABLES) if defaults else {}, tables or {})
    url = database_url or f"sqlite:///{Path(tmp_path) / 'regulars.sqlite3'}"
    config = config_from_tables(
        merged, Path(tmp_path) / "plugins.toml", {"REGULARS_DATABASE_URL": url}
    )
    engine = Engine(config, extra_plugins=tuple(plugins))
    engine.ensure_schema()
    return engine


def paid_order(
    channel: str = "shopify",
    order_id: int = 1001,
    email: str = "jana@example.com",
    total: str | Decimal = "20.00",
    *,
    sku: str = "COFFEE-LATTE",
    quantity: int = 1,
    paid_at: datetime | None = None,
) -> Delivery:
    """The webhook a shop sends when an order is paid: one line of ``quantity``
    x ``sku`` costing ``total`` altogether, no shipping or tax. ``channel`` is
    ``"shopify"`` (an ``orders/paid`` body) or ``"woocommerce"`` (an
    ``order.updated`` body in status ``processing``)."""
    total = Decimal(total)
    at = (paid_at or datetime(2026, 3, 1, 9, 0, tzinfo=UTC)).astimezone(UTC)
    if channel == "shopify":
        price = str((total / quantity).quantize(Decimal("0.01")))
        body = {
            "id": order_id,
            "email": email,
            "currency": "EUR",
            "financial_status": "paid",
            "cancelled_at": None,
            "created_at": at.isoformat(),
            "updated_at": at.isoformat(),
            "taxes_included": False,
            "total_price": str(total),
            "line_items": [
                {
                    "id": order_id * 10,
                    "sku": sku,
                    "title": sku,
                    "price": price,
                    "quantity": quantity,
                }
            ],
            "customer": {"id": order_id * 7, "email": email},
        }
        return Delivery("shopify", "orders/paid", json.dumps(body).encode(), {})
    if channel == "woocommerce":
        gmt = at.replace(tzinfo=None).isoformat(timespec="seconds")
        body = {
            "id": order_id,
            "status": "processing",
            "currency": "EUR",
            "date_created_gmt": gmt,
            "date_modified_gmt": gmt,
            "customer_id": 0,
            "billing": {"email": email},
            "total": str(total),
            "line_items": [
                {
                    "id": order_id * 10,
                    "sku": sku,
                    "quantity": quantity,
                    "subtotal": str(total),
                    "total": str(total),
                }
            ],
        }
        return Delivery("woocommerce", "order.updated", json.dumps(body).encode(), {})
    raise ValueError(f"paid_order knows shopify and woocommerce, not {channel!r}")


def balance(engine: Engine, key: str, unit: str = "points") -> int:
    """A customer's balance in ``unit`` (0 for nobody): ``key`` is an email,
    phone, card code, id or ``CHANNEL:ID``."""
    with engine.db.connect() as conn:
        customer_id = engine.identity.find(conn, key)
        if customer_id is None:
            return 0
        return engine.ledger.balances(conn, customer_id).get(unit, 0)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


__all__ = ["DEFAULT_TABLES", "Delivery", "balance", "engine_for", "paid_order"]
