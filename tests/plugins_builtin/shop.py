"""What the campaign tests share: a programme with campaigns on, real Shopify
and WooCommerce bodies sent through ``Engine.ingest``, and a plugins.toml
written to a file so that errors name it."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from engine.app import Engine
from engine.config import load_config
from engine.customers import customer_summary
from tests.conftest import DEFAULT_TABLES
from tests.streams import Line, PlannedOrder

EMAIL = "jana@example.com"


def programme(**campaigns: dict) -> dict:
    """The test programme (1 point per EUR, both shops) with ``[plugins.<name>]``
    tables: ``programme(**{"double-points": {...}})``."""
    tables = copy.deepcopy(DEFAULT_TABLES)
    tables["plugins"] = campaigns
    return tables


def planned(channel: str = "shopify", number: int = 1, *lines: Line) -> PlannedOrder:
    return PlannedOrder(
        channel=channel,
        number=number,
        email=EMAIL,
        lines=lines or (Line(Decimal("25.50"), 2, Decimal("3.00")),),  # 48.00 eligible
    )


def send(engine: Engine, channel: str, topic: str, body) -> None:
    """Ingest one delivery (a body dict or bytes); it must apply."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    outcome = engine.ingest(channel, topic, raw)
    assert outcome.status in ("applied", "duplicate"), outcome


def points(engine: Engine, key: str = EMAIL) -> int:
    summary = customer_summary(engine, key)
    return summary["points"] if summary else 0


def start(tmp_path: Path, toml: str) -> Engine:
    """Start an engine from a plugins.toml file holding ``toml`` (and one shop)."""
    path = tmp_path / "plugins.toml"
    path.write_text(
        '[engine]\ncurrency = "EUR"\n\n[rules.points]\nper_unit = 1\n\n'
        '[connectors.shopify]\nshop = "example.myshopify.com"\n\n' + toml,
        encoding="utf-8",
    )
    config = load_config(
        path, env={"REGULARS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    )
    return Engine(config)


def with_skus(body: dict, *skus: str) -> dict:
    """A Shopify or WooCommerce order body with its lines' SKUs replaced, in order."""
    for item, sku in zip(body["line_items"], skus, strict=True):
        item["sku"] = sku
    return body


def moment(text: str) -> datetime:
    """An aware datetime from ISO text with its offset (``"2026-11-28T10:00+00:00"``)."""
    return datetime.fromisoformat(text)
