"""Identity: one customer across channels.

A customer is found by normalized email, then E.164 phone, then a linked
channel id, then a card code. When one event's hints lead to two customers who
don't contradict each other (no two different emails or phones), the later one
is merged into the one the strongest hint found: its balances move over with a
pair of ledger entries (nothing is deleted), its orders and links follow, and
every key of the merged customer leads to the one it joined.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache

import phonenumbers
from sqlalchemy import JSON, DateTime, bindparam, literal, select, text, union_all, update
from sqlalchemy.engine import Connection

from engine.db import as_utc
from engine.db.models import (
    accounts,
    customer_links,
    customers,
    erasures,
    lots,
    orders,
    rewards,
    subscriptions,
)
from engine.events import normalize_address
from engine.fastsql import Fast, is_deferring
from engine.jsonio import unstorable
from engine.ledger import (
    Ledger,
    PerTransaction,
    insert_ignore_statement,
    typed_insert,
    typed_update,
)
from engine.referrals import merge_referrals

# Crockford-ish alphabet: no 0/O or 1/I/L to misread on a printed card.
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
_ATTRS = ("email", "phone", "first_name", "last_name", "accepts_marketing", "tier", "tier_since")


@dataclass(frozen=True)
class CustomerView:
    """What rules see of a customer."""

    id: int
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    card_code: str
    referral_code: str
    created_at: datetime
    #: the tier that holds now (None: no tier)
    tier: str | None = None
    birthday: date | None = None
    #: the plans of the customer's active memberships, sorted; filled by the
    #: pipeline for the decision hooks when subscription plans are configured
    #: (empty otherwise)
    plans: tuple[str, ...] = ()
    #: the tier changes, oldest first: (when, tier from then on); filled by the
    #: pipeline before an order's multipliers are asked, when tiers are on
    tier_changes: tuple[tuple[datetime, str | None], ...] = ()

    def tier_at(self, moment: datetime | None) -> str | None:
        """The tier that held at ``moment`` (an order's paid time): the last
        change strictly before it, so an order that reaches a tier earns at the
        tier it was paid in. Without changes (or a moment), the tier now."""
        if moment is None or not self.tier_changes:
            return self.tier
        held = None
        for when, tier in self.tier_changes:
            if when >= moment:
                break
            held = tier
        return held


#: bytes below this map evenly onto the alphabet (8 x 30); the rest are drawn again
_CODE_BYTES_LIMIT = 256 - 256 % len(_CODE_ALPHABET)


def new_code(length: int) -> str:
    """An unguessable code (about 4.9 bits a character): each character drawn
    uniformly from the alphabet with the OS's randomness, as ``secrets.choice``
    does, but from one ``token_bytes`` call instead of one per character."""
    picked: list[str] = []
    while len(picked) < length:
        picked.extend(_CODE_ALPHABET[b % len(_CODE_ALPHABET)] for b in secrets.token_bytes(length + 4)
                      if b < _CODE_BYTES_LIMIT)
    return "".join(picked[:length])


def normalize_email(raw: str | None) -> str | None:
    """Lower-cased, NFKC, trimmed; None when it isn't an address."""
    if not raw:
        return None
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email) or len(email) > 320:
        return None  # (320: the most an address can hold, and the column's size; NFKC may lengthen one)
    return email


def normalize_phone(raw: str | None, country: str | None = None) -> str | None:
    """E.164 (``+420601123456``), or None when it isn't a valid number."""
    if not raw:
        return None
    return _e164(raw, country)


def erased_digest(kind: str, value: str) -> str:
    """What an erasure keeps of an email or a phone (``kind``), normalized:
    its SHA-256, to know the key again, never to read it back."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


@lru_cache(maxsize=8192)
def _e164(raw: str, country: str | None) -> str | None:
    # phonenumbers takes about 20 µs a number; the same customers come back.
    try:
        number = phonenumbers.parse(raw, (country or "").upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# What resolving reads of a customer: the view's fields and what the hints may
# change (not the tier's dates or updated_at, which it never looks at: fewer
# timestamps to parse per row).
_LOOKUP_COLUMNS = [c for c in customers.c if c.name not in ("tier_since", "tier_below_since", "updated_at")]


def _erased_leg(via: str, digest: str):
    """The customer an email's or phone's digest was erased from after the
    snapshot (``:at``): the earliest such erasure (the person erased, back,
    and erased again is two customers, each owning the snapshots before
    their erasure)."""
    first = (select(erasures.c.customer_id)
             .where(erasures.c.digest == bindparam(digest), erasures.c.erased_at > bindparam("at", type_=DateTime(timezone=True)))
             .order_by(erasures.c.erased_at, erasures.c.id).limit(1).scalar_subquery())
    return select(literal(via).label("via"), *_LOOKUP_COLUMNS).where(customers.c.id == first)


# One query for every key a delivery gives: which customer each one finds.
_LOOKUP = union_all(
    select(literal("email").label("via"), *_LOOKUP_COLUMNS).where(customers.c.email == bindparam("email")),
    select(literal("phone").label("via"), *_LOOKUP_COLUMNS).where(customers.c.phone == bindparam("phone")),
    select(literal("link").label("via"), *_LOOKUP_COLUMNS)
    .select_from(customers.join(customer_links, customer_links.c.customer_id == customers.c.id))
    .where(customer_links.c.channel == bindparam("channel"), customer_links.c.external_id == bindparam("external")),
    select(literal("card").label("via"), *_LOOKUP_COLUMNS).where(customers.c.card_code == bindparam("card")),
    _erased_leg("erased_email", "email_digest"),
    _erased_leg("erased_phone", "phone_digest"),
)
_FAST_LOOKUP = Fast(_LOOKUP)
_UPDATE_CUSTOMER = update(customers).where(customers.c.id == bindparam("b_id"))
# A newer snapshot that confirms what the customer row holds: only its time is
# written (``Identity._update_row``).
_STAMP_FIELDS = Fast(typed_update(customers, ("fields_at",)))
#: a customer by one kind of key (``Identity.find_by``)
_BY_KEY = {name: Fast(select(customers.c.id, customers.c.merged_into).where(customers.c[name] == bindparam("key")))
           for name in ("email", "phone", "card_code")}
_CREATED_COLUMNS = ("email", "phone", "first_name", "last_name", "accepts_marketing", "address", "birthday",
                    "card_code", "referral_code", "created_at", "updated_at")
_INSERT_CUSTOMER = Fast(typed_insert(customers, _CREATED_COLUMNS, returning=("id",)))
# A new customer whose id was taken ahead (``Prepared``): nothing to read back,
# so the INSERT goes with the next statement.
_INSERT_CUSTOMER_WITH_ID = Fast(typed_insert(customers, ("id", *_CREATED_COLUMNS)))


def _insert_linked(with_id: bool) -> Fast:
    """PostgreSQL: a new customer and their channel id in one statement (one
    round trip); the link is inserted as ``_link`` does (never moved: DO
    NOTHING). With the id taken ahead (nothing read back), or RETURNING it."""
    columns = ("id", *_CREATED_COLUMNS) if with_id else _CREATED_COLUMNS
    link = ("INSERT INTO customer_links (channel, external_id, customer_id) "
            "SELECT :channel, :external_id, id FROM created ON CONFLICT (channel, external_id) DO NOTHING")
    created = (f"created AS (INSERT INTO customers ({', '.join(columns)}) "
               f"VALUES ({', '.join(':' + c for c in columns)}) RETURNING id)")
    sql = f"WITH {created} {link}" if with_id else f"WITH {created}, linked AS ({link}) SELECT id FROM created"
    return Fast(text(sql).bindparams(*(bindparam(c, type_=customers.c[c].type) for c in columns)))


_INSERT_LINKED_CUSTOMER = _insert_linked(with_id=False)
_INSERT_LINKED_CUSTOMER_WITH_ID = _insert_linked(with_id=True)
_LOCK_ONE = Fast(select(customers.c.id).where(customers.c.id == bindparam("id")).with_for_update())
# PostgreSQL, sent ahead of the look-up and in its round trip (``prepare``):
# lock every customer a key finds, in id order, and read their counters'
# footprints (locked, created empty if missing); when the keys find nobody,
# take the id a new customer will have (nextval is only called then).
_PREPARE = Fast(
    text(
        # (a UNION of index look-ups: with ORs PostgreSQL scans every customer)
        "WITH keyed AS (SELECT id FROM customers WHERE email = :email"
        " UNION SELECT id FROM customers WHERE phone = :phone"
        " UNION SELECT id FROM customers WHERE card_code = :card"
        " UNION SELECT customer_id FROM customer_links WHERE channel = :channel AND external_id = :external"
        " UNION SELECT customer_id FROM erasures WHERE digest IN (:email_digest, :phone_digest) AND erased_at > :at), "
        "found AS (SELECT id FROM customers WHERE id IN (SELECT id FROM keyed) ORDER BY id FOR UPDATE), "
        "footprint AS (INSERT INTO metric_footprints (customer_id, footprint) SELECT id, :empty FROM found"
        " ON CONFLICT (customer_id) DO UPDATE SET footprint = metric_footprints.footprint"
        " RETURNING customer_id, footprint) "
        "SELECT customer_id, footprint FROM footprint UNION ALL "
        "SELECT nextval(pg_get_serial_sequence('customers', 'id')), NULL WHERE NOT EXISTS (SELECT 1 FROM found)"
    ).bindparams(bindparam("empty", type_=JSON), bindparam("at", type_=DateTime(timezone=True))).columns(customer_id=customers.c.id.type, footprint=JSON)
)


class Prepared:
    """What ``Identity.prepare`` sent ahead, once it has come back: the
    customers its keys found, now locked, with their counters' footprints,
    or the id a new customer takes."""

    __slots__ = ("_ahead", "_read")

    def __init__(self, ahead):
        self._ahead = ahead
        self._read: tuple[dict[int, dict], int | None] | None = None

    def _rows(self) -> tuple[dict[int, dict], int | None]:
        if self._read is None:
            found, new_id = {}, None
            for customer_id, footprint in self._ahead.rows():
                if footprint is None:
                    new_id = customer_id
                else:
                    found[customer_id] = footprint
            self._read = (found, new_id)
        return self._read

    @property
    def footprints(self) -> dict[int, dict]:
        """customer id -> their footprint as stored (each customer locked)."""
        return self._rows()[0]

    @property
    def new_id(self) -> int | None:
        return self._rows()[1]


class _Merged:
    """A customer row we read, with the changes we just wrote over it."""

    def __init__(self, row, changes: dict):
        self._row, self._changes = row, changes

    def __getattr__(self, name):
        return self._changes[name] if name in self._changes else getattr(self._row, name)


def _view_of(row) -> CustomerView:
    return CustomerView(
        id=row.id,
        email=row.email,
        phone=row.phone,
        first_name=row.first_name,
        last_name=row.last_name,
        card_code=row.card_code,
        referral_code=row.referral_code,
        created_at=as_utc(row.created_at),
        tier=getattr(row, "tier", None),
        birthday=as_utc(row.birthday).date() if getattr(row, "birthday", None) else None,
    )


def _older(at: datetime, stamp: str | None, created: datetime | None) -> bool:
    """Whether a snapshot taken ``at`` is older than the one that set a field
    (``stamp``, else the customer's creation)."""
    return at < _set_at(stamp, created)


def _set_at(stamp: str | None, created: datetime | None) -> datetime:
    """When a field was set: its stamp, else the customer's creation, else
    the beginning of time."""
    if stamp:
        return datetime.fromisoformat(stamp)
    return created or datetime.min.replace(tzinfo=UTC)


def _erased_after(email: str | None, stamps: dict | None, at: datetime) -> bool:
    """Whether a customer (their email and ``fields_at``) was erased after a
    snapshot taken ``at``: only an erasure stamps the email (engine.privacy),
    and a customer who came back since has one again."""
    if email is not None or not stamps or not stamps.get("email"):
        return False
    return at < datetime.fromisoformat(stamps["email"])


#: the earliest birthday taken (a later one than today is not one either)
FIRST_BIRTHDAY = date(1900, 1, 1)


def possible_birthday(day: date) -> bool:
    """Whether ``day`` can be someone's birthday: from ``FIRST_BIRTHDAY`` to today (UTC)."""
    return FIRST_BIRTHDAY <= day <= datetime.now(UTC).date()


def birthday_from(text: str) -> date | None:
    """The birthday a form's ``YYYY-MM-DD`` gives, or None when it is not a
    date or not a ``possible_birthday``."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return None
    return day if possible_birthday(day) else None


def _birthday(day: date) -> datetime:
    # Stored as midnight UTC, so that it reads back as the same day anywhere.
    return datetime.combine(day, datetime.min.time(), UTC)


class Identity:
    """Finds, creates, updates and merges customers inside a transaction."""

    def __init__(self, ledger: Ledger, default_country: str | None = None):
        self.ledger = ledger
        self.default_country = default_country
        #: engine.cards.Cards: a merge completes the survivor's stamp cards
        #: that the two customers filled together (set by the Engine, which
        #: builds the cards after the identity)
        self.cards = None
        #: the erased customers the current thread's transaction found with a
        #: snapshot taken before their erasure (by a key erased since, or
        #: their channel id): the delivery that carried it is erased in turn
        #: once applied (engine.app)
        self.late_for_erased = PerTransaction()
        #: engine.referrals.Referrals: a merge decides the survivor's claim again
        #: with the orders merged in (set by the Engine)
        self.referrals = None
        #: ``(conn, customer_id, at)``: decides a survivor's tier upgrades again
        #: from their first order, the merged-in orders counted (set by the
        #: Pipeline when tiers are on)
        self.retier = None
        #: ``(conn, customer_id, at)``: asks a survivor's orders again for their
        #: memberships' multipliers, the merged-in memberships counted (set by
        #: the Pipeline when plans are configured)
        self.reprice = None

    def view(self, conn: Connection, customer_id: int) -> CustomerView:
        return _view_of(conn.execute(select(customers).where(customers.c.id == customer_id)).one())

    def follow(self, conn: Connection, customer_id: int | None) -> int | None:
        """The customer a (possibly merged) id leads to now."""
        seen = set()
        while customer_id is not None and customer_id not in seen:
            seen.add(customer_id)
            nxt = conn.execute(
                select(customers.c.merged_into).where(customers.c.id == customer_id)
            ).scalar_one_or_none()
            if nxt is None:
                return customer_id
            customer_id = nxt
        return customer_id

    def find(self, conn: Connection, key: str) -> int | None:
        """A customer by email, phone, card code, referral code or id; ``id:N``
        is the id and nothing else (digits alone may be a phone number). A
        key no database could store (a NUL character, a lone surrogate) finds
        nobody."""
        key = key.strip()
        if unstorable(key):
            return None
        if key.startswith("id:") and key[3:].isascii() and key[3:].isdigit() and len(key) < 22:
            found = conn.execute(select(customers.c.id).where(customers.c.id == int(key[3:]))).scalar_one_or_none()
            return self.follow(conn, found)
        for kind in ("email", "phone", "card_code"):
            if (found := self.find_by(conn, kind, key)) is not None:
                return found
        candidates = [customers.c.referral_code == key.upper()]
        if key.isascii() and key.isdigit() and len(key) < 19:
            candidates.append(customers.c.id == int(key))
        for condition in candidates:
            found = conn.execute(select(customers.c.id).where(condition)).scalar_one_or_none()
            if found is not None:
                return self.follow(conn, found)
        if ":" in key:  # channel:external_id
            channel, _, external = key.partition(":")
            found = conn.execute(
                select(customer_links.c.customer_id).where(
                    customer_links.c.channel == channel, customer_links.c.external_id == external
                )
            ).scalar_one_or_none()
            return self.follow(conn, found)
        return None

    def find_by(self, conn: Connection, kind: str, key: str) -> int | None:
        """A customer by one kind of key: ``email``, ``phone`` (read as
        ``find`` reads them) or ``card_code``; None if nobody has it. Unlike
        ``find``, a phone is never taken for a card code, nor the other way."""
        if unstorable(key):
            return None
        if kind == "email":
            value = normalize_email(key)
        elif kind == "phone":
            value = normalize_phone(key, self.default_country)
        else:
            value = key.strip().upper() or None
        row = _BY_KEY[kind].first(conn, {"key": value}) if value is not None else None
        if row is None:
            return None
        return row.id if row.merged_into is None else self.follow(conn, row.merged_into)

    def resolve(self, conn: Connection, channel: str, hints: dict, at: datetime) -> int | None:
        """The customer these hints mean, created or merged as needed; None when
        the hints hold no usable key (a guest with no email or phone)."""
        found = self.resolve_view(conn, channel, hints, at)
        return found.id if found is not None else None

    def _keys(self, channel: str, hints: dict, at: datetime) -> dict | None:
        """The look-up's parameters: the hints' keys, normalized, with the
        digests an erasure keeps of them (None: no key)."""
        email = normalize_email(hints.get("email"))
        phone = normalize_phone(hints.get("phone"), hints.get("country") or self.default_country)
        external = hints.get("external_id")
        card = (hints.get("card_code") or "").strip().upper() or None
        if not (email or phone or external or card):
            return None
        return {"email": email, "phone": phone, "channel": channel, "external": external, "card": card,
                "email_digest": erased_digest("email", email) if email else None,
                "phone_digest": erased_digest("phone", phone) if phone else None, "at": at.astimezone(UTC)}

    def prepare(self, conn: Connection, channel: str, hints: dict, at: datetime) -> Prepared | None:
        """On PostgreSQL inside ``fastsql.deferring``, with the dashboard's
        counters kept: lock the customers these hints find and read their
        counters, or take a new customer's id, in the round trip of the
        look-up that ``resolve_view`` sends next (pass it the result). None
        elsewhere, or when the hints hold no key."""
        if self.ledger.metrics is None or not is_deferring(conn):
            return None
        params = self._keys(channel, hints, at)
        if params is None:
            return None
        return Prepared(_PREPARE.ahead(conn, {**params, "empty": {}}))

    def resolve_view(self, conn: Connection, channel: str, hints: dict, at: datetime,
                     prepared: Prepared | None = None) -> CustomerView | None:
        """``resolve``, returning what rules see of the customer. The common
        case (the hints lead to at most one customer, none merged) costs one
        query and at most one write; anything else takes the careful path.
        ``prepared``: what ``prepare`` sent ahead for the same hints."""
        params = self._keys(channel, hints, at)
        if params is None:
            return None
        rows = {row.via: row for row in _FAST_LOOKUP.rows(conn, params)}
        erased = []
        for key in ("email", "phone"):
            if (row := rows.pop(f"erased_{key}", None)) is not None:
                # Taken before that customer's erasure: the key meant them, not
                # whoever holds it now, and stays erased (it is not written).
                rows[key], params[key] = row, None
                erased.append(row.id)
        if erased:
            self.late_for_erased.items().extend(erased)
        email, phone, external, card = params["email"], params["phone"], params["external"], params["card"]
        if any(row.merged_into is not None for row in rows.values()):
            return self.view(conn, self._resolve_carefully(conn, channel, hints, at, email, phone, external, card,
                                                           erased))
        by_phone = rows.get("phone")
        if by_phone is not None and email and by_phone.email not in (None, email):
            by_phone = None  # a household's shared phone: not this person
        candidates = [r for r in (rows.get("email"), by_phone, rows.get("link"), rows.get("card")) if r is not None]
        if len({r.id for r in candidates}) > 1:
            return self.view(conn, self._resolve_carefully(conn, channel, hints, at, email, phone, external, card,
                                                           erased))
        if not candidates:
            # Keys go into the INSERT itself: a concurrent creation of the same
            # person then fails on the unique key and the retry finds them.
            link = (channel, external) if external and "link" not in rows else None
            row = self._create(conn, at, email=email, phone=None if "phone" in rows else phone, hints=hints, link=link,
                               new_id=prepared.new_id if prepared is not None else None)
            if link is not None and conn.dialect.name == "postgresql":
                external = None  # linked by the same statement
        else:
            row = candidates[0]
            if _erased_after(row.email, row.fields_at, at):
                self.late_for_erased.items().append(row.id)
            values = {"email": row.email, "phone": row.phone}
            taken = {
                "email": "email" in rows and rows["email"].id != row.id,
                "phone": "phone" in rows and rows["phone"].id != row.id,
            }
            wanted = {"email": email, "phone": phone}
            values = self._update_row(conn, row.id, row._asdict(), hints, {k: v for k, v in wanted.items() if v and not taken[k]}, at)
            if not values and (prepared is None or row.id not in prepared.footprints):
                # One customer's events are applied one at a time: the UPDATE
                # above locks the row; without one, lock it (PostgreSQL), unless
                # ``prepare`` did. A worker then waits for the customer's previous
                # transaction instead of racing it to a unique key and retrying.
                self.lock(conn, [row.id])
            row = _Merged(row, values)
        if external and "link" not in rows:
            self._link(conn, channel, external, row.id)
        return _view_of(row)

    def set_birthday(self, conn: Connection, customer_id: int, day: date, at: datetime) -> bool:
        """The customer's birthday, given by them (their card): kept only when
        none is known (nor erased since ``at``); whether it was."""
        row = conn.execute(select(customers.c.birthday, customers.c.fields_at)
                           .where(customers.c.id == customer_id)).one_or_none()
        if row is None or row.birthday is not None or _older(at, (row.fields_at or {}).get("birthday"), None):
            return False
        conn.execute(_UPDATE_CUSTOMER, {"b_id": customer_id, "birthday": _birthday(day), "updated_at": at,
                                        "fields_at": {**(row.fields_at or {}), "birthday": at.isoformat()}})
        return True

    def correct_birthday(self, conn: Connection, customer_id: int, day: date | None, at: datetime) -> None:
        """Staff correcting a birthday (``regulars customer birthday``); None
        forgets it, and the card asks again."""
        stamps = conn.execute(select(customers.c.fields_at).where(customers.c.id == customer_id)).scalar() or {}
        conn.execute(_UPDATE_CUSTOMER, {"b_id": customer_id, "birthday": None if day is None else _birthday(day),
                                        "updated_at": at, "fields_at": {**stamps, "birthday": at.isoformat()}})

    def _update_row(self, conn, customer_id, current, hints, keys, at) -> dict:
        """Write what the hints add to a customer we already read; returns the
        changes. A name, the marketing consent or the address the customer has
        is changed only by a snapshot at least as new as the one that set it
        (``customers.fields_at``, else ``created_at``), so a delivery that
        comes late (an older ``customers/update``, an old order's) leaves the
        newer values alone; one nothing has given yet is taken from any. An
        erasure stamps every personal field: a snapshot from before it brings
        none of them back (``engine.privacy``)."""
        stamps = current.get("fields_at") or {}
        created = as_utc(current["created_at"]) if current.get("created_at") else None

        def stale(name: str, fallback: datetime | None) -> bool:
            if stamps.get(name) is None and current.get(name) is None:
                return False  # nothing known: any snapshot says more
            return _older(at, stamps.get(name), fallback)

        changes = {k: v for k, v in keys.items() if current.get(k) != v and not stale(k, None)}
        given = {name: hints.get(name) for name in ("first_name", "last_name", "accepts_marketing")}
        given["address"] = normalize_address(hints.get("address"))
        fresh = {name for name, value in given.items() if value is not None and value != "" and not stale(name, created)}
        for name in fresh:
            if current.get(name) != given[name]:
                changes[name] = given[name]
        if hints.get("birthday") and current.get("birthday") is None and not stale("birthday", None):
            changes["birthday"] = _birthday(hints["birthday"])
            fresh.add("birthday")  # stamped: when it was learnt (engine.birthdays)
        # A value confirmed by a newer snapshot is stamped anew too: an older
        # one that said otherwise must not win when it comes late.
        newer = {name for name in fresh if _set_at(stamps.get(name), created) < at and name != "birthday"}
        if changes:
            if fresh:
                changes["fields_at"] = {**stamps, **dict.fromkeys(fresh, at.isoformat())}
            conn.execute(_UPDATE_CUSTOMER, {"b_id": customer_id, **changes, "updated_at": at})
        elif newer:  # nobody reads it: on PostgreSQL it goes with the transaction's last writes
            _STAMP_FIELDS.later(conn, {"b_id": customer_id,
                                       "fields_at": {**stamps, **dict.fromkeys(newer, at.isoformat())}})
        return changes

    def _resolve_carefully(self, conn, channel, hints, at, email, phone, external, card, erased=()) -> int:
        """Several customers, or merged ones: find each, merge the compatible.
        ``erased``: the customers an email or phone of the hints was erased
        from after the snapshot (those keys are then None)."""
        found: list[int | None] = [self.follow(conn, cid) for cid in erased]
        if email:
            cid = conn.execute(select(customers.c.id).where(customers.c.email == email)).scalar_one_or_none()
            found.append(self.follow(conn, cid))
        if phone:
            # A phone is shared by households: it only finds a customer whose
            # email, if any, is the one given.
            cid = conn.execute(select(customers.c.id).where(customers.c.phone == phone)).scalar_one_or_none()
            found.append(self._if_same_email(conn, self.follow(conn, cid), email))
        if external:
            # The channel's own id is trusted over a changed email.
            cid = conn.execute(
                select(customer_links.c.customer_id).where(
                    customer_links.c.channel == channel, customer_links.c.external_id == external
                )
            ).scalar_one_or_none()
            found.append(self.follow(conn, cid))
        if card:
            cid = conn.execute(select(customers.c.id).where(customers.c.card_code == card)).scalar_one_or_none()
            found.append(self.follow(conn, cid))

        matched = list(dict.fromkeys(c for c in found if c is not None))
        if not matched:
            # Keys go into the INSERT itself: a concurrent creation of the same
            # person then fails on the unique key and the retry finds them.
            primary = self._create(
                conn,
                at,
                email=email,
                phone=phone if not self._taken(conn, customers.c.phone, phone, None) else None,
                hints={},
            ).id
        else:
            primary = matched[0]
            self.lock(conn, matched)
            for other in matched[1:]:
                if self._compatible(conn, primary, other):
                    self.merge(conn, keep=primary, gone=other, at=at)
            held = conn.execute(select(customers.c.email, customers.c.fields_at).where(customers.c.id == primary)).one()
            if _erased_after(held.email, held.fields_at, at):
                self.late_for_erased.items().append(primary)

        self._update(conn, primary, hints, email, phone, at)
        if external:
            self._link(conn, channel, external, primary)
        return primary

    # -- internals ---------------------------------------------------------

    def lock(self, conn: Connection, ids: list[int]) -> None:
        """Lock these customers' rows until the transaction ends (PostgreSQL;
        SQLite's write lock is the transaction's): a transaction that writes
        for a customer holds their row first, so that two of them wait for
        each other in one order instead of deadlocking on the rows that
        refer to the customer (accounts, orders)."""
        if conn.dialect.name == "postgresql" and len(ids) == 1:
            _LOCK_ONE.later(conn, {"id": ids[0]})  # taken with the next statement, in its round trip
        elif conn.dialect.name == "postgresql":
            conn.execute(
                select(customers.c.id).where(customers.c.id.in_(sorted(ids))).with_for_update()
            ).all()

    def _create(self, conn: Connection, at: datetime, email: str | None, phone: str | None, hints: dict,
                link: tuple[str, str] | None = None, new_id: int | None = None) -> _Merged:
        """A new customer; on PostgreSQL with ``link`` (channel, external id),
        linked in the same statement (the caller links it elsewhere).
        ``new_id``: the id taken ahead (``prepare``), so nothing is read back."""
        values = {
            "email": email,
            "phone": phone,
            "first_name": hints.get("first_name") or None,
            "last_name": hints.get("last_name") or None,
            "accepts_marketing": hints.get("accepts_marketing"),
            "address": normalize_address(hints.get("address")),
            "birthday": _birthday(hints["birthday"])
            if hints.get("birthday")
            else None,
            "card_code": new_code(12),
            "referral_code": new_code(8),
            "created_at": at,
            "updated_at": at,
        }
        linked = link is not None and conn.dialect.name == "postgresql"
        params = {**values, "channel": link[0], "external_id": link[1]} if linked else values
        if new_id is not None:
            values["id"] = params["id"] = new_id
            (_INSERT_LINKED_CUSTOMER_WITH_ID if linked else _INSERT_CUSTOMER_WITH_ID).later(conn, params)
        else:
            values["id"] = (_INSERT_LINKED_CUSTOMER if linked else _INSERT_CUSTOMER).scalar(conn, params)
        if self.ledger.metrics is not None:
            self.ledger.metrics.created(conn, values["id"])
        return _Merged(None, values)

    @staticmethod
    def _if_same_email(conn: Connection, customer_id: int | None, email: str | None) -> int | None:
        if customer_id is None or email is None:
            return customer_id
        held = conn.execute(select(customers.c.email).where(customers.c.id == customer_id)).scalar_one()
        return customer_id if held in (None, email) else None

    def _compatible(self, conn: Connection, a: int, b: int) -> bool:
        rows = conn.execute(
            select(customers.c.email, customers.c.phone).where(customers.c.id.in_([a, b]))
        ).all()
        if len(rows) != 2:
            return False
        (e1, p1), (e2, p2) = rows
        return not (e1 and e2 and e1 != e2) and not (p1 and p2 and p1 != p2)

    def _update(self, conn, customer_id, hints, email, phone, at) -> None:
        row = conn.execute(select(customers).where(customers.c.id == customer_id)).one()
        # A key another customer holds is not taken from them.
        keys = {
            name: value
            for name, value, column in (("email", email, customers.c.email), ("phone", phone, customers.c.phone))
            if value and not self._taken(conn, column, value, customer_id)
        }
        self._update_row(conn, customer_id, row._mapping, hints, keys, at)

    @staticmethod
    def _taken(conn, column, value, customer_id) -> bool:
        if value is None:
            return False
        holder = conn.execute(select(customers.c.id).where(column == value)).scalar_one_or_none()
        return holder is not None and holder != customer_id

    def _link(self, conn: Connection, channel: str, external: str, customer_id: int) -> None:
        """Remember the channel's id for this customer, unless it is already
        someone's (a link is never moved silently). Nothing reads its result:
        on PostgreSQL it goes with the next statement (``Fast.later``)."""
        values = {"channel": channel, "external_id": external, "customer_id": customer_id}
        insert_ignore_statement(customer_links, tuple(values), ["channel", "external_id"]).later(conn, values)

    def merge(self, conn: Connection, keep: int, gone: int, at: datetime) -> None:
        """Join customer ``gone`` into ``keep``: balances move with paired ledger
        entries, lots, orders, referrals and links follow, keys move over; the
        survivor's referral claim and tier upgrades are decided again with the
        orders merged in, and their orders' membership multipliers with the
        memberships merged in.

        A stamps balance that moved is settled at once, as after an order: two
        half cards may make a full one, whose reward is the survivor's now (and
        a negative card may take back an unused reward)."""
        moved = []
        for account in conn.execute(select(accounts).where(accounts.c.customer_id == gone)).all():
            unit, balance = account.unit, account.balance
            if balance:
                moved.append(unit)
                key = f"merge:{gone}:{keep}:{unit}"
                source = f"merge:{gone}"
                self.ledger.post(conn, gone, unit, -balance, "merge", source, None, key + ":out", at, lots=False)
                self.ledger.post(conn, keep, unit, balance, "merge", source, None, key + ":in", at, lots=False)
            target = self.ledger.account(conn, keep, unit)
            conn.execute(update(lots).where(lots.c.account_id == account.id).values(account_id=target))
        conn.execute(update(orders).where(orders.c.customer_id == gone).values(customer_id=keep))
        conn.execute(update(rewards).where(rewards.c.customer_id == gone).values(customer_id=keep))
        conn.execute(update(subscriptions).where(subscriptions.c.customer_id == gone).values(customer_id=keep))
        conn.execute(update(customer_links).where(customer_links.c.customer_id == gone).values(customer_id=keep))
        gone_row = conn.execute(select(customers).where(customers.c.id == gone)).one()
        keep_row = conn.execute(select(customers).where(customers.c.id == keep)).one()
        # Free the unique keys before giving them to the customer who stays.
        conn.execute(
            update(customers)
            .where(customers.c.id == gone)
            .values(email=None, phone=None, merged_into=keep, updated_at=at)
        )
        fill = {a: getattr(gone_row, a) for a in _ATTRS if getattr(keep_row, a) is None and getattr(gone_row, a) is not None}
        if fill:
            conn.execute(update(customers).where(customers.c.id == keep).values(**fill, updated_at=at))
        merge_referrals(conn, keep, gone, at)
        if self.referrals is not None and self.referrals.program:
            self.referrals.decide(conn, keep, at)
            self.referrals.referrer_moved(conn, keep, at)  # their orders' addresses, together
            self.referrals.walk(conn, keep, at)  # their referees' weekly limit, counted together
        if self.ledger.metrics is not None:
            self.ledger.metrics.merged(conn, keep, gone)
        if self.cards is not None:
            for unit in sorted(moved):
                self.cards.settle(conn, keep, unit, at)  # (ignores a unit that is no card's)
        if self.reprice is not None:
            self.reprice(conn, keep, at)
        if self.retier is not None:
            self.retier(conn, keep, at)
