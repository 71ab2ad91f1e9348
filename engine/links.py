"""The customer's own card: a signed link, no password.

``regulars card link KEY [--days N]`` makes one: a row in ``card_links`` (who,
until when, revoked or not) and a token that names the row, encrypted and
authenticated with the server's key (engine.credentials), so it can't be
guessed or altered. The link shows the customer their card through
``/api/v1/me``; it stops working when it expires or is revoked
(``regulars card revoke KEY``: every link of that customer).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from engine.db import as_utc, utcnow
from engine.db.models import card_links

DEFAULT_DAYS = 365


class LinkRefused(Exception):
    """A link that is forged, expired or revoked; the message says which, and
    ``reason`` too: ``"forged"``, ``"expired"`` or ``"revoked"``."""

    def __init__(self, message: str, reason: str = "forged"):
        super().__init__(message)
        self.reason = reason


def make_link(engine, customer_id: int, days: int = DEFAULT_DAYS, at: datetime | None = None) -> str:
    """A new link token for the customer, valid ``days`` days."""
    at = at or utcnow()
    with engine.db.begin() as conn:
        link_id = conn.execute(card_links.insert().returning(card_links.c.id).values(
            customer_id=customer_id, created_at=at, expires_at=at + timedelta(days=days))).scalar_one()
    return engine.credentials.seal({"card_link": link_id})


def customer_of(engine, token: str, now: datetime | None = None) -> int:
    """The customer a link token is for; ``LinkRefused`` saying why not."""
    data = engine.credentials.unseal(token, max_age=10 * 365 * 86400)
    if not data or not isinstance(data.get("card_link"), int):
        raise LinkRefused("this card link is not one of ours")
    with engine.db.connect() as conn:
        row = conn.execute(select(card_links).where(card_links.c.id == data["card_link"])).one_or_none()
        if row is None or row.revoked_at is not None:
            raise LinkRefused("this card link was revoked; ask the shop for a new one", "revoked")
        if as_utc(row.expires_at) <= (now or utcnow()):
            raise LinkRefused("this card link has expired; ask the shop for a new one", "expired")
        return engine.identity.follow(conn, row.customer_id)


def revoke(engine, customer_id: int, at: datetime | None = None) -> int:
    """Revoke every live link of the customer; how many."""
    with engine.db.begin() as conn:
        return conn.execute(update(card_links).where(card_links.c.customer_id == customer_id,
                                                     card_links.c.revoked_at.is_(None))
                            .values(revoked_at=at or utcnow())).rowcount
