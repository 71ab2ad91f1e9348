"""A customer's card: the QR code of their card code, drawn with segno (SVG
and PNG), and a printable card (an HTML page sized like a bank card)."""

from __future__ import annotations

import html
import io

import segno


def qr(code: str, kind: str, scale: int = 8) -> bytes:
    """The QR code of ``code`` as ``svg`` or ``png`` bytes. It encodes the card
    code alone, which is what the counter's scanner reads."""
    image = io.BytesIO()
    segno.make(code, error="m", micro=False).save(image, kind=kind, scale=scale, border=2)
    return image.getvalue()


def printable_card(code: str, name: str | None, shop: str | None = None) -> str:
    """A card to print (85.6 x 54 mm): the shop, the holder, the QR code and the
    card code in letters, for a till without a scanner."""
    svg = qr(code, "svg", scale=4).decode()
    svg = svg[svg.index("<svg"):]  # inline: no XML declaration inside HTML
    holder = html.escape(name or "")
    shop_line = html.escape(shop or "regulars")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Card {html.escape(code)}</title>
<style>
@page {{ size: 85.6mm 54mm; margin: 0 }}
body {{ margin: 0; font-family: system-ui, sans-serif }}
.card {{ width: 85.6mm; height: 54mm; box-sizing: border-box; padding: 4mm; display: flex; gap: 4mm;
        border: 0.2mm solid #999; border-radius: 3mm }}
.qr svg {{ width: 38mm; height: 38mm }}
.shop {{ font-weight: 600; font-size: 4mm }}
.code {{ font-family: ui-monospace, monospace; font-size: 4.2mm; letter-spacing: 0.4mm; margin-top: 14mm }}
</style></head>
<body><div class="card"><div class="qr">{svg}</div>
<div><div class="shop">{shop_line}</div><div>{holder}</div><div class="code">{html.escape(code)}</div></div>
</div></body></html>
"""
