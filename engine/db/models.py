"""SQLAlchemy 2 models. The hot path writes through Core statements on these
tables (``insert(LedgerEntry)``), never through per-object ORM flushes."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """One person across every channel."""

    __tablename__ = "customers"
    __table_args__ = (
        # who was merged into a customer (their page); few rows, so partial.
        # (On PostgreSQL migration 0011 also adds trigram indexes for the
        # dashboard's search, when pg_trgm may be created: not modelled here.)
        Index("ix_customers_merged_into", "merged_into", postgresql_where=text("merged_into IS NOT NULL"),
              sqlite_where=text("merged_into IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(32), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    card_code: Mapped[str] = mapped_column(String(64), unique=True)
    referral_code: Mapped[str] = mapped_column(String(32), unique=True)
    #: set when this customer was joined into another; every key then leads there
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    accepts_marketing: Mapped[bool | None] = mapped_column(Boolean)
    #: the tier that holds now (None: no tier), since when, and since when the
    #: customer has been below it (for the review's grace period)
    #: the last shipping address seen, normalized (referral self-checks)
    address: Mapped[str | None] = mapped_column(String(500))
    tier: Mapped[str | None] = mapped_column(String(64))
    tier_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    tier_below_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    birthday: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: when the snapshot that set each of first_name, last_name,
    #: accepts_marketing and address was taken ({field: ISO time}; a field not
    #: named counts as of created_at): an older one delivered late changes nothing
    fields_at: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TierChange(Base):
    """A customer's tier history: every upgrade and downgrade."""

    __tablename__ = "tier_history"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    from_tier: Mapped[str | None] = mapped_column(String(64))
    to_tier: Mapped[str | None] = mapped_column(String(64))
    #: upgrade, downgrade, merge
    reason: Mapped[str] = mapped_column(String(32))
    #: the metric (points earned or spend in the window) that decided it
    metric: Mapped[str] = mapped_column(Numeric(18, 4))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Referral(Base):
    """A referee's claim of a referrer's code, and what became of it."""

    __tablename__ = "referrals"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    referrer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    referee_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    #: claimed, rewarded, refused, reversed
    status: Mapped[str] = mapped_column(String(16))
    #: why it was refused (or reversed), in words
    reason: Mapped[str | None] = mapped_column(Text)
    #: how it was claimed: "order:shopify:123", "cli", "api"
    via: Mapped[str] = mapped_column(String(255))
    #: the referee's first paid order that earned (or lost) the rewards
    order_ref: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CustomerLink(Base):
    """A channel's own id for a customer (a Shopify customer id)."""

    __tablename__ = "customer_links"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)


class Account(Base):
    """A customer's balance in one unit (``points``, ``stamps:coffee``). The
    balance is a cache of the sum of its entries, kept in the same transaction."""

    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("customer_id", "unit"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    unit: Mapped[str] = mapped_column(String(64))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerEntry(Base):
    """An immutable posting. Nothing is updated or deleted; a refund or a merge
    is a new entry. ``key`` makes every posting idempotent."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    #: order, refund, cancel, visit, merge, adjust, ...
    reason: Mapped[str] = mapped_column(String(32))
    #: what caused it: "order:shopify:820982911946154508", "visit:pos:…"
    source: Mapped[str] = mapped_column(String(255), index=True)
    #: the plugin whose decision this is
    rule: Mapped[str | None] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(255), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detail: Mapped[dict | None] = mapped_column(JSON)


class Lot(Base):
    """Points earned together, with the date they expire; spending and reversals
    consume lots soonest-expiring first."""

    __tablename__ = "lots"
    __table_args__ = (Index("ix_lots_account_open", "account_id", "expires_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entries.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    earned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: before this, the points are pending (an order's return window)
    available_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: when the customer was told these points expire soon
    reminded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Order(Base):
    """What the engine knows of one order and what it awarded for it."""

    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    #: the merged state of every snapshot and refund seen (engine.orders)
    state: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str | None] = mapped_column(String(16))
    eligible: Mapped[str] = mapped_column(Numeric(18, 4), default=0)
    #: frozen the first time the order was awarded: [[name, factor], ...]
    multipliers: Mapped[list | None] = mapped_column(JSON)
    #: what the order has earned so far: {"plugin|unit": amount}
    awarded: Mapped[dict] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InboxDelivery(Base):
    """Every delivery, stored before anything else, replayable."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("channel", "key"),
        Index("ix_inbox_status", "status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    body_sha256: Mapped[str] = mapped_column(String(64))
    headers: Mapped[dict | None] = mapped_column(JSON)
    #: received, applied, ignored, failed
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    plugin: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: tries at applying it in the background (a worker, the embedded applier),
    #: each counted before it starts: one that kills its process still counts
    tries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


customers = Customer.__table__
customer_links = CustomerLink.__table__
tier_history = TierChange.__table__
referrals = Referral.__table__
accounts = Account.__table__
ledger_entries = LedgerEntry.__table__
lots = Lot.__table__
orders = Order.__table__
inbox = InboxDelivery.__table__


class IssuedReward(Base):
    """A reward issued to a customer: redeemed for points or earned by a full
    stamp card. Its code is what the customer spends in a channel."""

    __tablename__ = "rewards"
    __table_args__ = (Index("ix_rewards_customer_status", "customer_id", "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    #: the catalogue name ([rewards.<name>] in plugins.toml)
    reward: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    #: unguessable, what the customer types or the coupon carries
    code: Mapped[str] = mapped_column(String(32), unique=True)
    #: issued, used, voided, expired
    status: Mapped[str] = mapped_column(String(16))
    #: points debited for it (0 for a stamp card's reward)
    cost: Mapped[int] = mapped_column(BigInteger, default=0)
    value: Mapped[str | None] = mapped_column(Numeric(18, 4))
    sku: Mapped[str | None] = mapped_column(String(255))
    #: the channel it was issued for (None: any)
    channel: Mapped[str | None] = mapped_column(String(64))
    #: what issued it: "redeem", "card:coffee"
    source: Mapped[str] = mapped_column(String(64))
    #: makes issuing idempotent (a retried redemption, a card completed twice)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: where it was used: "order:shopify:123"
    used_in: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict | None] = mapped_column(JSON)


rewards = IssuedReward.__table__


class Subscription(Base):
    """A customer's membership in a plan, merged from its ``subscription.*``
    events: the newest event (by event time) gives the status (engine.subscriptions)."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    #: the channel's subscription id
    external_id: Mapped[str] = mapped_column(String(128))
    #: the plan's name ([rules.subscriptions.<plan>])
    plan: Mapped[str] = mapped_column(String(64))
    #: active, paused, cancelled; lapsed (by the subscription-check job)
    status: Mapped[str] = mapped_column(String(16))
    #: the event time of the event that set the status (of a lapse: the job's
    #: time), and the newest event's rank among events ("time|kind|key"): an
    #: older event changes nothing (a lapse leaves the stamp as it is)
    status_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_stamp: Mapped[str] = mapped_column(String(320))
    #: the earliest event seen
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: the latest period_end seen
    current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: every event merged, oldest first: ``[stamp, plan, period_end]`` (the
    #: period's end in UTC, ``%Y-%m-%dT%H:%M:%S.%f``, or null), from which
    #: whether the membership was active at a moment is decided
    history: Mapped[list | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


subscriptions = Subscription.__table__


class OutboxMessage(Base):
    """An effect in a shop, written in the same transaction as the change that
    calls for it and delivered afterwards, with retries (engine.outbox).

    ``customer.sync`` rows carry no values: the deliverer sends the customer's
    state as it is when it runs, so one row per customer and channel is enough
    (``version`` counts the changes; a delivery that raced a newer change
    leaves the row pending). ``reward.coupon`` creates a reward's code as a
    coupon in the shop; ``reward.retire`` removes one spent elsewhere."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    #: one row per effect: "sync:shopify:12", "coupon:woocommerce:7KX..."
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    #: what it is about: the channel's customer id, or the reward's code
    subject: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: pending, done, failed (gave up: `regulars outbox retry`)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    #: what the shop answered (a discount's id, a coupon's id)
    result: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


outbox = OutboxMessage.__table__


class ShopCredential(Base):
    """A shop's API credentials from an install (OAuth, wc-auth), encrypted
    with the key in ``REGULARS_SECRET_KEY`` (engine.credentials)."""

    __tablename__ = "shop_credentials"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64), unique=True)
    #: the shop: "example.myshopify.com", "https://shop.example"
    shop: Mapped[str] = mapped_column(String(255))
    #: Fernet token of the JSON credentials
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    scopes: Mapped[str | None] = mapped_column(String(1000))
    installed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


shop_credentials = ShopCredential.__table__


class PrivacyRequest(Base):
    """A privacy request from a shop (Shopify's customers/data_request,
    customers/redact, shop/redact) or the CLI, and what was done about it."""

    __tablename__ = "privacy_requests"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    #: data_request, redact, shop_redact
    kind: Mapped[str] = mapped_column(String(32))
    #: the channel's request id, or the delivery that carried it
    reference: Mapped[str] = mapped_column(String(255), unique=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    #: exported (data waiting for the merchant), erased, nothing-held
    status: Mapped[str] = mapped_column(String(32))
    #: the export, for a data request
    data: Mapped[dict | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


privacy_requests = PrivacyRequest.__table__


class Erasure(Base):
    """What an erasure leaves of an email or phone: its digest, the customer
    it was erased from and when, so that a snapshot taken before the erasure
    (a webhook retried late, a reconcile run's re-read) finds the erased
    customer again instead of recreating the person (engine.identity)."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    #: SHA-256 of ``email:<normalized>`` or ``phone:<E.164>`` (engine.identity.erased_digest)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


erasures = Erasure.__table__


class Terminal(Base):
    """A till allowed to use the API, with its key stored hashed (engine.terminals)."""

    __tablename__ = "terminals"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    location: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200))
    #: the key's first characters, to tell keys apart in a listing
    key_prefix: Mapped[str] = mapped_column(String(16))
    #: SHA-256 of the key (a 256-bit random key needs no slow hash)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


terminals = Terminal.__table__


class ApiRequest(Base):
    """The first answer to a write with an Idempotency-Key, per terminal."""

    __tablename__ = "api_requests"
    __table_args__ = (UniqueConstraint("terminal_id", "key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    terminal_id: Mapped[int] = mapped_column(ForeignKey("terminals.id"))
    key: Mapped[str] = mapped_column(String(200))
    #: SHA-256 of the method, path and body: the same key with another request is refused
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


api_requests = ApiRequest.__table__


class CardLink(Base):
    """A signed link to a customer's own card (engine.links)."""

    __tablename__ = "card_links"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


card_links = CardLink.__table__


class AdminUser(Base):
    """Someone allowed into the merchant's dashboard (``/admin``); the password
    is kept as an argon2 hash only (``regulars admin add``)."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


admin_users = AdminUser.__table__


class AdminSignInFailure(Base):
    """A refused sign-in to the dashboard, kept while it counts for the
    throttle (``engine/web/pages/admin.py``: too many from one address, or
    for one username from one address, and that address waits)."""

    __tablename__ = "admin_sign_in_failures"
    __table_args__ = (Index("ix_admin_sign_in_failures_address_at", "address", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(150))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


admin_sign_in_failures = AdminSignInFailure.__table__


class VisitDay(Base):
    """The days a customer visited, per channel (a counter visit, whether or
    not it earned anything): with paid orders, what makes a member active
    (engine.metrics)."""

    __tablename__ = "visit_days"

    customer_id: Mapped[int] = mapped_column(Id, ForeignKey("customers.id"), primary_key=True, autoincrement=False)
    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)


class MetricFootprint(Base):
    """What each customer contributes to the dashboard's figures: their paid
    orders (count and eligible spend per day and channel) and visit days, as
    last counted (engine.metrics). Kept in the transaction that changes them,
    so the next change can take its own difference out exactly."""

    __tablename__ = "metric_footprints"

    customer_id: Mapped[int] = mapped_column(Id, ForeignKey("customers.id"), primary_key=True, autoincrement=False)
    footprint: Mapped[dict] = mapped_column(JSON)


class MetricCount(Base):
    """The dashboard's counters, per measure, channel (``*``: all) and period
    (``kind``: ``d`` day, ``w`` ISO week, ``m`` month; ``period`` its first
    day). Exact sums of ``metric_deltas`` folded in (engine.metrics)."""

    __tablename__ = "metric_counts"
    __table_args__ = (UniqueConstraint("measure", "channel", "kind", "period"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    measure: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(1))
    period: Mapped[date] = mapped_column(Date)
    #: counts, points, or money in ten-thousandths (exact on SQLite too)
    value: Mapped[int] = mapped_column(BigInteger)


class MetricDelta(Base):
    """Changes to ``metric_counts`` written by the pipeline: appended, never
    updated, so concurrent transactions never wait on a hot counter row; folded
    into ``metric_counts`` when the dashboard reads them."""

    __tablename__ = "metric_deltas"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    measure: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(1))
    period: Mapped[date] = mapped_column(Date)
    value: Mapped[int] = mapped_column(BigInteger)


class MetricState(Base):
    """Facts about the counters (``built``: the time zone they were built in)."""

    __tablename__ = "metric_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(String(255))


visit_days = VisitDay.__table__
metric_footprints = MetricFootprint.__table__
metric_counts = MetricCount.__table__
metric_deltas = MetricDelta.__table__
metric_state = MetricState.__table__
