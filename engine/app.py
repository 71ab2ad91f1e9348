"""``Engine(config)``: storage, plugins and the pipeline, built once per process
(the CLI, a web worker, a Celery worker and a test all build it the same way).

The ways in: ``ingest`` stores a delivery's raw body in the inbox and applies
it in one transaction (the row is written once, already ``applied``; a
delivery whose applying fails is stored ``failed`` with the reason all the
same), so nothing is answered before it is committed. ``ingest_batch`` does
the same for many deliveries in one transaction, applied in runs of ``RUN``
under one savepoint (each delivery of a run in a savepoint of its own when
one of them fails).
``receive`` only stores (a webhook, answered at once) and ``apply_pending``
applies later, in a second transaction.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from connectors.base import BadDelivery, body_key
from engine import inbox
from engine.adjustments import Adjustment, AdjustmentRefused, adjust, unit_of
from engine.cards import Cards
from engine.config import Config, format_errors
from engine.credentials import Credentials
from engine.db import ensure_schema, make_engine, utcnow
from engine.events import load_event
from engine.fastsql import (
    Fast,
    deferring,
    flush_before_cursor_execute,
    is_deferring,
    savepoint_statements,
)
from engine.identity import Identity
from engine.jsonio import UNREAD, may_hold_unstorable, read_fast, storable
from engine.ledger import Ledger
from engine.metrics import Recorder
from engine.outbox import Outbox
from engine.pipeline import EventRefused, Pipeline
from engine.plugins import PluginFailed, Plugins
from engine.referrals import ReferralRefused, Referrals
from engine.rewards import Catalogue, Issued, RedemptionRefused, Rewards
from engine.rules_api import UNIT_POINTS, PointsPolicy
from engine.subscriptions import ACTIONS, SubscriptionRefused, Subscriptions
from engine.tiers import Tiers

log = logging.getLogger("regulars")

#: how often a transaction that lost a race (a deadlock, a unique key taken by a
#: concurrent event) is tried again before the delivery is recorded as failed
RETRIES = 5

#: tries at applying a stored delivery in the background (``apply_pending``)
#: that may start without one of them ending before it is given up, failed
MAX_TRIES = 10


_DELIVERY_SAVEPOINT = savepoint_statements("regulars_delivery")
_RUN_SAVEPOINT = savepoint_statements("regulars_deliveries")
#: deliveries of a batch applied under one savepoint (``Engine._settle_run``)
RUN = 50


class UnknownChannel(LookupError):
    pass


class _SeenBefore(Exception):
    """The delivery stored ahead was not new: roll back, ask ``receive``."""


#: the most of an error kept and shown: a bad value of 10,000 characters is
#: quoted in its error, and the inbox, the CLI and the dashboard show it
MAX_ERROR = 1000


def _capped(error: str | None) -> str | None:
    """``error`` in ``MAX_ERROR`` characters at most, saying how many were cut
    (so capping twice changes nothing)."""
    if error is None or len(error) <= MAX_ERROR:
        return error
    keep = MAX_ERROR - 40  # room for the note of what was cut
    return f"{error[:keep]}… ({len(error) - keep:,} more characters)"


@dataclass(frozen=True)
class Outcome:
    inbox_id: int
    #: applied, duplicate, ignored or failed
    status: str
    error: str | None = None
    plugin: str | None = None
    entries: int = 0

    def __post_init__(self):
        object.__setattr__(self, "error", _capped(self.error))


@dataclass
class _Prepared:
    """A delivery stored and translated, ready to apply (or already decided)."""

    inbox_id: int
    events: list[dict] | None = None
    outcome: Outcome | None = None


def parse_body(body: bytes) -> Any:
    """The JSON in a delivery's body; ValueError says what is wrong with it.

    orjson reads it (several times faster than the json module on an 8 KiB
    order). The json module reads what orjson refuses, so the bodies accepted
    are exactly the json module's and an error gives its line and column
    (orjson refuses NaN and lone surrogates, which the json module takes), and
    a body with 20 digits in a row, or a minus and 19: orjson turns an integer
    beyond 64 bits into a float, the json module keeps it exact.

    Text no database stores is mended (``jsonio.storable``): NUL characters
    are dropped and a lone surrogate becomes U+FFFD, so that an order whose
    customer's name carries one earns all the same; the raw body is kept as
    it came, in the inbox."""
    found = _read(body)
    return storable(found) if may_hold_unstorable(body) else found


def _read(body: bytes) -> Any:
    found = read_fast(body)
    if found is not UNREAD:
        return found
    if not body.strip():
        raise ValueError("body is empty: expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8: byte {exc.start} is {body[exc.start:exc.start + 1]!r}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # (orjson refuses past 1,024 levels; the json module runs out of stack)
        raise ValueError("body is nested too deeply to read: about a thousand arrays or objects inside "
                         "each other") from None
    except ValueError as exc:  # an integer of over 4,300 digits (sys.get_int_max_str_digits)
        raise ValueError(f"body can't be read: {exc}") from None


class Engine:
    def __init__(self, config: Config, builtins: tuple[str, ...] | None = None, extra_plugins: tuple = ()):
        self.config = config
        self.plugins = Plugins(config, **({"builtins": builtins} if builtins is not None else {}), extra=extra_plugins)
        self.db = make_engine(config.database_url)
        if self.db.dialect.name == "postgresql":
            # Writes the pipeline defers (engine.fastsql) go out before any Core statement.
            event.listen(self.db, "before_cursor_execute", flush_before_cursor_execute)
        self.policy = self.plugins.pm.hook.regulars_points_policy() or PointsPolicy()
        self.ledger = Ledger(self.policy.expiry_months, self.policy.pending_days)
        self.ledger.metrics = Recorder(config.engine.get("timezone"))
        self.identity = Identity(self.ledger, config.engine.get("default_country"))
        self.catalogue = Catalogue.build(config, self.plugins, set(self.connectors))
        self.rewards = Rewards(self.catalogue, self.ledger, set(self.connectors))
        self.cards = Cards(self.plugins, self.catalogue, self.rewards, self.ledger)
        #: whether the observer hooks are called after commit (False: a
        #: rehearsal's engine, ``regulars simulate``)
        self.observers = True
        self.identity.cards = self.cards
        self.tiers = Tiers(self.plugins.pm.hook.regulars_register_tier_program())
        self.referrals = Referrals(self.plugins.pm.hook.regulars_register_referral_program(), self.ledger)
        self.identity.referrals = self.referrals
        self.subscriptions = Subscriptions(self.plugins, self.ledger)
        self.pipeline = Pipeline(
            self.plugins, self.identity, self.ledger, self.rewards, self.cards, self.tiers, self.referrals,
            subscriptions=self.subscriptions,
        )
        self.credentials = Credentials(self.db, config.base_dir)
        self.outbox = Outbox(self.credentials, self.connectors, config.notify)
        if self.outbox.channels or self.outbox.notify:
            self.ledger.outbox = self.rewards.outbox = self.tiers.outbox = self.outbox
        self._schema_checked = False

    @property
    def connectors(self):
        return self.plugins.connectors

    def ensure_schema(self) -> None:
        """Upgrade an embedded SQLite on first use; refuse an outdated server."""
        if not self._schema_checked:
            ensure_schema(self.db, auto=self.db.dialect.name == "sqlite")
            self._schema_checked = True

    def connector(self, channel: str):
        try:
            return self.connectors[channel]
        except KeyError:
            known = ", ".join(sorted(self.connectors)) or "none (add a [connectors.*] table)"
            raise UnknownChannel(f"no connector for channel {channel!r}; configured: {known}") from None

    # -- the way in -----------------------------------------------------------

    def ingest(self, channel: str, topic: str, body: bytes, headers: Mapping[str, str] | None = None) -> Outcome:
        """Store one delivery and apply it, in one transaction. Never raises for
        bad input: the outcome says what happened and the delivery is kept."""
        with self.db.connect() as conn:
            return self._ingest(channel, [(topic, body, dict(headers or {}))], conn)[0]

    def receive(self, channel: str, topic: str, body: bytes, headers: Mapping[str, str] | None = None) -> Outcome:
        """Store a delivery and check that it translates, without applying it:
        what a webhook receiver does before answering. The outcome is
        ``received`` (to be applied by ``apply_received``), or already decided:
        ``duplicate``, ``ignored`` or ``failed`` with the reason."""
        prepared = self._receive([(topic, body, dict(headers or {}))], channel)[0]
        return prepared.outcome or Outcome(prepared.inbox_id, "received")

    def apply_received(self, limit: int = 200) -> list[Outcome]:
        """Apply deliveries stored but not applied yet, oldest first, from their
        raw bodies (the background work of ``regulars serve``)."""
        self.ensure_schema()
        with self.db.connect() as conn:
            ids = [row.id for row in inbox.pending(conn, limit)]
        return [self.replay(inbox_id) for inbox_id in ids]

    def ingest_batch(
        self, channel: str, deliveries: Iterable[tuple[str, bytes, Mapping[str, str] | None]]
    ) -> list[Outcome]:
        """Many deliveries stored and applied in one transaction, in runs
        under a savepoint (``_settle_run``), so one failure spoils nothing else."""
        return self._ingest(channel, [(t, b, dict(h or {})) for t, b, h in deliveries])

    def redeem(
        self,
        key: str,
        reward: str,
        channel: str | None = None,
        units: int = 1,
        idempotency_key: str | None = None,
        at: datetime | None = None,
    ) -> Issued:
        """Redeem a catalogue reward for the customer a key finds (email, phone,
        card code, ...): points debited and reward issued in one transaction.
        Raises ``RedemptionRefused`` saying why (unknown customer included)."""
        self.ensure_schema()
        at = at or utcnow()
        return self._for_customer(
            key, RedemptionRefused(f"no customer matches {key!r}", "unknown_customer"),
            lambda conn, customer_id: self.rewards.redeem(conn, customer_id, reward, at, channel, units,
                                                          idempotency_key))

    def adjust(self, key: str, amount: int, note: str, by: str, card: str | None = None,
               idempotency_key: str | None = None, at: datetime | None = None) -> Adjustment:
        """Give (``amount`` > 0) or take points, or stamps on ``card``, from
        the customer a key finds, with a note saying why and who (``by``), in
        one transaction (``engine.adjustments``). Raises ``AdjustmentRefused``
        saying why (unknown customer included)."""
        self.ensure_schema()
        at = at or utcnow()
        unit = unit_of(card, self.cards.cards)
        return self._for_customer(
            key, AdjustmentRefused(f"no customer matches {key!r}", "unknown_customer"),
            lambda conn, customer_id: adjust(conn, self.ledger, self.cards, customer_id, unit, amount, note, by,
                                             at, idempotency_key))

    def _for_customer(self, key: str, unknown: Exception, work):
        """``work(conn, customer_id)`` in one transaction, for the customer a
        key finds (``unknown`` is raised when nobody matches), tried again when
        it loses a race; the rewards it issued (a redemption, a stamp card
        filled) and the points it posted are announced after the commit
        (``_announce``). Returns what ``work`` did."""
        for attempt in range(RETRIES):
            self._forget()  # what a rolled-back try issued or posted never was
            try:
                with self.db.begin() as conn:
                    customer_id = self.identity.find(conn, key)
                    if customer_id is None:
                        raise unknown
                    done = work(conn, customer_id)
                self._announce()
                return done
            except (IntegrityError, OperationalError):
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def claim_referral(self, key: str, code: str, via: str = "cli", at: datetime | None = None) -> int:
        """The customer a key finds claims a referral code (when signing up, at
        the counter). Raises ``ReferralRefused`` saying why; the refusal is
        recorded all the same."""
        self.ensure_schema()
        if not self.referrals.program:
            raise ReferralRefused("referrals are off: add a [rules.referrals] table")
        at = at or utcnow()
        with self.announcing(), self.db.begin() as conn:  # (a first order already paid: both rewarded now)
            customer_id = self.identity.find(conn, key)
            if customer_id is None:
                raise ReferralRefused(f"no customer matches {key!r}")
            referral_id, reason = self.referrals.claim(conn, customer_id, code, at, via)
        if reason:
            raise ReferralRefused(reason)
        return referral_id

    def subscription(self, action: str, key: str, plan: str, external_id: str | None = None, channel: str = "cli",
                     at: datetime | None = None, period_end: datetime | None = None,
                     idempotency_key: str | None = None) -> dict:
        """Start, renew, pause, resume or cancel (``action``) the membership in
        ``plan`` of the customer a key finds, as that ``subscription.*`` event
        from a channel would, in one transaction. ``external_id`` defaults to one
        subscription per customer and plan; ``idempotency_key`` makes a retry
        change nothing (a renewal earns once per ``period_end``, or per key).
        Returns the subscription's state; raises ``SubscriptionRefused`` saying
        why (an unknown customer or plan)."""
        self.ensure_schema()
        kind = ACTIONS[action]
        at = at or utcnow()

        def work(conn, customer_id: int) -> dict:
            sub_id = external_id or f"{customer_id}:{plan}"
            raw = {"type": kind, "channel": channel, "occurred_at": at.isoformat(),
                   "idempotency_key": idempotency_key or f"{channel}:{sub_id}:{kind}:{at.isoformat()}",
                   "subscription": {"id": sub_id, "plan": plan,
                                    "period_end": period_end.isoformat() if period_end else None}}
            try:
                event = load_event(raw)
            except ValidationError as exc:
                raise SubscriptionRefused(format_errors("event", kind, exc.messages).replace("event [", "[")) from None
            self.subscriptions.apply(conn, event, customer_id)
            return self.subscriptions.state(conn, channel, sub_id)

        return self._for_customer(key, SubscriptionRefused(f"no customer matches {key!r}"), work)

    def replay(self, inbox_id: int) -> Outcome:
        """Apply a stored delivery again from its raw body (after a fix, or to
        re-check one that was ignored). Applying it twice changes nothing."""
        self.ensure_schema()
        with self.db.connect() as conn:
            row = inbox.get(conn, inbox_id)
        if row is None:
            raise LookupError(f"no delivery with id {inbox_id}")
        prepared = self._translate(row.id, row.channel, row.topic, bytes(row.body), row.headers or {})
        if prepared.outcome is not None:
            self._record(prepared.outcome)
            return prepared.outcome
        return self._apply_one(prepared)

    def apply_pending(self, inbox_id: int) -> Outcome | None:
        """Apply a stored delivery if it is still ``received``: the background
        work's way (the in-process applier and the Celery task alike). None
        when there is nothing to do: no such delivery, or already applied,
        ignored or failed (by another worker, say). Safe to call twice at once:
        the delivery's row is claimed in the transaction that applies it.
        Raises what a database outage raises, so the caller can try later.

        Each try is counted (``tries``) and committed before it starts. A
        delivery whose applying kills the process (a plugin that crashes the
        interpreter, the memory it takes), which the broker hands back and
        the sweep finds again, is set ``failed`` after ``MAX_TRIES`` tries
        that never ended, instead of taking a worker down forever."""
        self.ensure_schema()
        with self.db.begin() as tx, deferring(tx, commit=True):  # one round trip on PostgreSQL
            started = inbox.start(tx, inbox_id)
        found = started.rows()
        if not found:
            return None  # no such delivery, or applied, ignored or failed already
        row = found[0]
        if row.tries > MAX_TRIES:
            outcome = Outcome(inbox_id, "failed", (
                f"gave up after {MAX_TRIES} tries that never ended: the process applying it died each time "
                "(the workers' logs say why); replay it once that is mended"))
            log.error("delivery %s: %s", inbox_id, outcome.error)
        else:
            prepared = self._translate(row.id, row.channel, row.topic, bytes(row.body), row.headers or {})
            if prepared.outcome is None:
                return self._apply_one(prepared, claim=True)
            outcome = prepared.outcome
        with self.db.begin() as tx:
            if not inbox.claim(tx, inbox_id):
                return None
            self._record(outcome, tx, own=False)
        return outcome

    # -- internals ------------------------------------------------------------

    @contextmanager
    def _transaction(self, conn=None):
        """A transaction on ``conn``, or on a connection of its own."""
        if conn is None:
            with self.db.begin() as own:
                yield own
        else:
            with conn.begin():
                yield conn

    def _counting(self, tx, savepoint: bool = False):
        """The dashboard's counters kept in memory for a block (``Recorder``):
        for a whole batch, or for one delivery's savepoint in it."""
        metrics = self.ledger.metrics
        if metrics is None:
            return nullcontext()
        return metrics.savepoint(tx) if savepoint else metrics.collecting(tx)

    def _keyed(self, deliveries: list[tuple[str, bytes, dict]], channel: str) -> Iterator[tuple]:
        """Each delivery as ``(topic, body, headers, payload, error, key)``:
        its parsed body (or why it did not parse) and its idempotency key,
        one at a time (a caller that keeps only what it needs of a parsed
        body keeps the garbage collector from walking hundreds of them)."""
        connector = self.connector(channel)
        for topic, body, headers in deliveries:
            try:
                payload = parse_body(body)
            except ValueError as exc:
                payload, error = None, str(exc)
            else:
                error = None
            key = None
            if payload is not None:
                try:
                    key = connector.delivery_key(topic, payload, headers, body)
                except Exception:  # a payload too broken to key: its hash keys it
                    key = None
            topic, key, headers = inbox.storable_delivery(topic, key or body_key(topic, body), headers)
            yield topic, body, headers, payload, error, key

    def _ingest(self, channel: str, deliveries: list[tuple[str, bytes, dict]], conn=None) -> list[Outcome]:
        """Store the deliveries and apply them in one transaction: each is
        translated first, then stored already decided (``applied`` when it has
        events) and applied; one whose applying fails is set ``failed`` with
        the reason (rolled back to its savepoint; a lone delivery is stored so
        in a second transaction). A transaction that keeps losing races, or
        fails outright, gives way to storing each delivery on its own first."""
        self.ensure_schema()
        rows, decided = [], []
        for topic, body, headers, payload, error, key in self._keyed(deliveries, channel):
            rows.append((channel, topic, key, body, headers))
            decided.append(self._decide(channel, topic, body, headers, payload, error))
        verdicts = [(inbox.APPLIED, None, None) if events is not None else (status, error, plugin)
                    for events, status, error, plugin in decided]
        alone = len(rows) == 1
        ahead = alone and decided[0][0] is not None
        for _ in range(RETRIES):
            self._forget()  # what a rolled-back try issued or posted never was
            try:
                with self._transaction(conn) as tx:
                    if alone:
                        # On PostgreSQL the BEGIN goes with the first statement, the COMMIT with the last writes.
                        with deferring(tx, commit=True):
                            if ahead and is_deferring(tx):
                                outcomes = [self._store_ahead_and_apply(tx, rows[0], verdicts[0], decided[0][0])]
                            else:
                                receipt = inbox.receive(tx, *rows[0], *verdicts[0])
                                outcomes = [self._settle(tx, receipt, *decided[0], savepoint=False)]
                    else:
                        receipts = inbox.receive_many(tx, rows, verdicts)
                        pairs = list(zip(receipts, decided, strict=True))
                        with self._counting(tx):  # the batch's counters, written once at its end
                            outcomes = [outcome for start in range(0, len(pairs), RUN)
                                        for outcome in self._settle_run(tx, pairs[start : start + RUN])]
                self._announce()
                return outcomes
            except (IntegrityError, OperationalError):
                continue  # lost a race with a concurrent event: the retry sees its result
            except _SeenBefore:
                ahead = False  # rolled back; ``receive`` says what it is (a duplicate, a conflict)
                continue
            except Exception as exc:
                if not alone or isinstance(exc, DBAPIError) and _unavailable(exc):
                    log.warning("storing and applying %d deliveries failed (%s); storing each first",
                                len(rows), _first_line(exc))
                    break
                # The lone delivery's applying failed and was rolled back: store it failed.
                outcome = self._failure_outcome(0, exc)
                with self._transaction(conn) as tx:
                    receipt = inbox.receive(tx, *rows[0], inbox.FAILED, outcome.error, outcome.plugin)
                if receipt.status == "duplicate":  # stored meanwhile by a concurrent delivery
                    return [Outcome(receipt.inbox_id, "duplicate")]
                return [Outcome(receipt.inbox_id, "failed", receipt.error or outcome.error,
                                None if receipt.error else outcome.plugin)]
        prepared = self._receive(deliveries, channel, conn)
        return [p.outcome or self._apply_one(p, conn) for p in prepared]

    def _store_ahead_and_apply(self, tx, row: tuple, verdict: tuple, events: list[dict]) -> Outcome:
        """A lone delivery's INSERT into the inbox sent ahead, so that on
        PostgreSQL it shares a round trip with the first reads of applying it;
        a key seen before is found out before the COMMIT (``_SeenBefore``:
        the transaction is rolled back and tried the plain way)."""
        stored = inbox.store_ahead(tx, *row, *verdict)
        self.identity.late_for_erased.take()
        entries = sum(self.pipeline.apply(tx, e) for e in events)
        found = stored.rows()  # before the COMMIT, which goes with the last writes
        if not found:
            raise _SeenBefore
        self._erase_if_late(tx, found[0][0])
        return Outcome(found[0][0], "applied", entries=entries)

    def _apply_delivery(self, tx, inbox_id: int, events: list[dict]) -> int:
        """Apply a stored delivery's events in ``tx``; how many entries they posted."""
        self.identity.late_for_erased.take()
        entries = sum(self.pipeline.apply(tx, e) for e in events)
        self._erase_if_late(tx, inbox_id)
        return entries

    def _erase_if_late(self, tx, inbox_id: int) -> None:
        """The delivery just applied found a customer erased after its
        snapshot (by an email or phone erased since, or the shop's id:
        engine.identity): its raw body names the person, so it is erased too."""
        if self.identity.late_for_erased.take():
            inbox.erase_body(tx, inbox_id)

    def _settle_run(self, tx, pairs: list[tuple[inbox.Receipt, tuple]]) -> list[Outcome]:
        """Apply a run of a batch's deliveries (``(receipt, decided)`` each)
        under one savepoint; if one of them fails, roll the run back and
        apply each in a savepoint of its own (``_settle``), so the failure
        spoils nothing else. A savepoint per delivery costs more than its two
        statements: SQLite copies every page a savepoint changes the first
        time, and deliveries change the same pages (the indexes' last ones)."""
        due = [verdict[0] is not None and receipt.status == "new" for receipt, verdict in pairs]
        if sum(due) < 2:
            return [self._settle(tx, receipt, *verdict, savepoint=True) for receipt, verdict in pairs]
        try:
            entries = self._in_savepoint(tx, _RUN_SAVEPOINT, lambda: [
                self._apply_delivery(tx, receipt.inbox_id, verdict[0])
                for (receipt, verdict), applies in zip(pairs, due, strict=True) if applies])
        except (IntegrityError, OperationalError):
            raise  # a lost race: the whole transaction is tried again
        except Exception:  # one of them failed: each in its own savepoint, to find which
            return [self._settle(tx, receipt, *verdict, savepoint=True) for receipt, verdict in pairs]
        applied = iter(entries)
        return [Outcome(receipt.inbox_id, "applied", entries=next(applied)) if applies
                else self._settle(tx, receipt, *verdict, savepoint=True)
                for (receipt, verdict), applies in zip(pairs, due, strict=True)]

    def _in_savepoint(self, tx, statements: tuple[Fast, Fast, Fast], apply):
        """``apply()`` in a savepoint (``statements``: ``fastsql.savepoint_statements``), with
        the dashboard's counters in a layer of their own; when it raises, the
        savepoint is rolled back, with what it issued, and the error raised."""
        save, rollback_to, release = statements
        issued, posted = len(self.rewards.issued.items()), len(self.ledger.posted.items())
        save.execute(tx, {})
        try:
            with deferring(tx), self._counting(tx, savepoint=True):
                result = apply()
        except (IntegrityError, OperationalError):
            raise  # a lost race: the whole transaction is rolled back and tried again
        except Exception:
            rollback_to.execute(tx, {})
            release.execute(tx, {})
            del self.rewards.issued.items()[issued:]  # what the rolled-back work issued never was
            del self.ledger.posted.items()[posted:]  # nor posted
            raise
        release.execute(tx, {})
        return result

    def _settle(self, tx, receipt: inbox.Receipt, events, status, error, plugin, savepoint: bool) -> Outcome:
        """Apply a delivery just stored (``_ingest``), or say why not."""
        inbox_id = receipt.inbox_id
        if receipt.status == "duplicate":
            return Outcome(inbox_id, "duplicate")
        if receipt.status == "conflict":
            return Outcome(inbox_id, "failed", receipt.error)
        if events is None:
            return Outcome(inbox_id, status, error, plugin)
        if not savepoint:  # (the caller's transaction is this delivery's alone)
            return Outcome(inbox_id, "applied", entries=self._apply_delivery(tx, inbox_id, events))
        try:
            entries = self._in_savepoint(tx, _DELIVERY_SAVEPOINT, lambda: self._apply_delivery(tx, inbox_id, events))
        except (IntegrityError, OperationalError):
            raise  # a lost race: the whole transaction is tried again
        except Exception as exc:
            outcome = self._failure_outcome(inbox_id, exc)
            inbox.verdict(tx, inbox_id, inbox.FAILED, outcome.error, outcome.plugin)
            return outcome
        return Outcome(inbox_id, "applied", entries=entries)

    def _receive(self, deliveries: list[tuple[str, bytes, dict]], channel: str, conn=None) -> list[_Prepared]:
        """Store deliveries ``received`` (one transaction) and translate them;
        those that can't be applied are marked so (``failed``, ``ignored``)."""
        self.ensure_schema()
        keyed = list(self._keyed(deliveries, channel))
        prepared = []
        with self._transaction(conn) as tx:
            if len(keyed) > 1:  # multi-row INSERTs; the receipts ``receive`` in turn would give
                receipts = inbox.receive_many(tx, [(channel, t, k, b, h) for t, b, h, _, _, k in keyed])
            else:
                receipts = [inbox.receive(tx, channel, t, k, b, h) for t, b, h, _, _, k in keyed]
            for (topic, body, headers, payload, error, _key), receipt in zip(keyed, receipts, strict=True):
                if receipt.status == "duplicate":
                    prepared.append(_Prepared(receipt.inbox_id, outcome=Outcome(receipt.inbox_id, "duplicate")))
                elif receipt.status == "conflict":
                    prepared.append(_Prepared(receipt.inbox_id, outcome=Outcome(receipt.inbox_id, "failed", receipt.error)))
                else:
                    prepared.append((receipt.inbox_id, topic, body, headers, payload, error))
        result = []
        for item in prepared:
            if isinstance(item, _Prepared):
                result.append(item)
                continue
            p = self._translate(*item[:1], channel, *item[1:])
            if p.outcome is not None:
                self._record(p.outcome, conn)
            result.append(p)
        return result

    def _translate(self, inbox_id, channel, topic, body, headers, payload=None, error=None) -> _Prepared:
        events, status, error, plugin = self._decide(channel, topic, body, headers, payload, error)
        if events is None:
            return _Prepared(inbox_id, outcome=Outcome(inbox_id, status, error, plugin))
        return _Prepared(inbox_id, events=events)

    def _decide(self, channel, topic, body, headers, payload=None, error=None):
        """A delivery's loaded canonical events, or why it has none:
        ``(events, None, None, None)`` or ``(None, status, error, plugin)``,
        ``status`` being ``ignored`` or ``failed`` (the error ``MAX_ERROR``
        characters at most). No database work."""
        events, status, error, plugin = self._decision(channel, topic, body, headers, payload, error)
        return events, status, _capped(error), plugin

    def _decision(self, channel, topic, body, headers, payload=None, error=None):
        if error is not None:  # the body did not parse
            return None, "failed", error, None
        connector = self.connector(channel)
        if topic not in connector.topics:
            return None, "ignored", f"topic {topic!r} is not one regulars uses for {channel}", None
        if payload is None:
            try:
                payload = parse_body(body)
            except ValueError as exc:
                return None, "failed", str(exc), None
        try:
            raw_events = connector.translate(topic, payload, headers)
        except BadDelivery as exc:
            return None, "failed", str(exc), None
        except Exception as exc:
            log.exception("connector %s failed on a %s delivery", channel, topic)
            return None, "failed", f"{type(exc).__name__}: {exc}", f"connectors.{channel}"
        events = []
        for number, raw in enumerate(raw_events):
            try:
                events.append(load_event(raw))
            except ValidationError as exc:
                where = f"event {number} ({raw.get('type', '?') if isinstance(raw, dict) else '?'})"
                return None, "failed", format_errors("delivery", where, exc.messages).replace("delivery [", "["), None
        if not events:
            return None, "ignored", "nothing in this delivery for loyalty", None
        return events, None, None, None

    def _apply_one(self, prepared: _Prepared, conn=None, claim: bool = False) -> Outcome | None:
        """Apply a translated delivery and mark it applied, retrying a lost race.
        ``claim``: only if the delivery is still ``received`` (else None)."""
        for attempt in range(RETRIES):
            self._forget()  # what a rolled-back try issued or posted never was
            try:
                with self._transaction(conn) as tx:
                    if claim and not inbox.claim(tx, prepared.inbox_id):
                        return None
                    # On PostgreSQL the last writes (the counters, the mark) share a round trip.
                    with deferring(tx):
                        entries = self._apply_delivery(tx, prepared.inbox_id, prepared.events)
                        inbox.mark(tx, prepared.inbox_id, inbox.APPLIED)
                self._announce()
                return Outcome(prepared.inbox_id, "applied", entries=entries)
            except (PluginFailed, EventRefused) as exc:
                outcome = self._failure_outcome(prepared.inbox_id, exc)
                break
            except (IntegrityError, OperationalError) as exc:
                # Lost a race with a concurrent event; the retry sees its result.
                if attempt < RETRIES - 1:
                    continue
                if claim and _unavailable(exc):
                    raise  # not the delivery's fault: it stays received, for a later try
                outcome = Outcome(prepared.inbox_id, "failed", f"database: {_first_line(exc)}")
            except DBAPIError as exc:
                if claim and _unavailable(exc):
                    raise
                outcome = Outcome(prepared.inbox_id, "failed", f"database: {_first_line(exc)}")
                break
            except Exception as exc:  # a bug: keep the delivery, say so, go on
                log.error("delivery %s failed:\n%s", prepared.inbox_id, traceback.format_exc())
                outcome = Outcome(prepared.inbox_id, "failed", f"internal error: {type(exc).__name__}: {exc}")
                break
        if claim:
            with self.db.begin() as tx:
                if not inbox.claim(tx, prepared.inbox_id):
                    return None
                self._record(outcome, tx, own=False)
        else:
            self._record(outcome, conn)
        return outcome

    def _forget(self) -> None:
        """A transaction starts: what an earlier one issued or posted and did
        not announce (it rolled back) is dropped."""
        self.rewards.issued.take()
        self.ledger.posted.take()
        self.identity.late_for_erased.take()

    @contextmanager
    def announcing(self):
        """Around work that commits transactions of its own (a job, a claim, an
        import): what they issue and post is announced to observers when it
        ends well, and dropped when it raises."""
        self._forget()
        try:
            yield
        except BaseException:
            self._forget()
            raise
        self._announce()

    def _announce(self) -> None:
        """Tell observers about the rewards the committed transaction issued
        and the points it posted (``regulars_reward_issued``,
        ``regulars_points_changed``); a failing observer is logged, named, and
        stops nothing."""
        issued, posted = self.rewards.issued.take(), self.ledger.posted.take()
        hook = self.plugins.pm.hook
        rewarded, changed = hook.regulars_reward_issued.get_hookimpls(), hook.regulars_points_changed.get_hookimpls()
        # (nothing is read when nobody listens: an order costs no round trip more)
        issued, posted = (issued if rewarded else []), (posted if changed else [])
        if not self.observers or not issued and not posted:
            return
        changes: dict[int, list] = {}
        for customer_id, change in posted:
            changes.setdefault(customer_id, []).append(change)
        with self.db.connect() as conn:
            customers = {cid: self.identity.view(conn, cid) for cid in {cid for cid, _ in issued} | set(changes)}
            balances = {cid: self.ledger.balances(conn, cid).get(UNIT_POINTS, 0) for cid in changes}
        for customer_id, reward in issued:
            for impl in reversed(rewarded):
                try:
                    impl.function(reward=reward, customer=customers[customer_id])
                except Exception:
                    log.exception("plugin %s failed in regulars_reward_issued (reward %s)", impl.plugin_name, reward.code)
        for customer_id, their in changes.items():
            for impl in reversed(changed):
                try:
                    impl.function(customer=customers[customer_id], changes=list(their),
                                  balance=balances[customer_id])
                except Exception:
                    log.exception("plugin %s failed in regulars_points_changed (customer %s)", impl.plugin_name,
                                  customer_id)

    @staticmethod
    def _failure_outcome(inbox_id: int, exc: Exception) -> Outcome:
        if isinstance(exc, PluginFailed):
            return Outcome(inbox_id, "failed", f"{type(exc.error).__name__}: {exc.error}", exc.plugin)
        if isinstance(exc, EventRefused):
            return Outcome(inbox_id, "failed", str(exc))
        if isinstance(exc, DBAPIError):
            return Outcome(inbox_id, "failed", f"database: {_first_line(exc)}")
        # a bug: keep the delivery, say so, go on
        log.error("delivery %s failed:\n%s", inbox_id or "(being stored)",
                  "".join(traceback.format_exception(exc)))
        return Outcome(inbox_id, "failed", f"internal error: {type(exc).__name__}: {exc}")

    def _record(self, outcome: Outcome, conn=None, own: bool = True) -> None:
        """Mark a failed or ignored delivery so; ``own``: in a transaction of
        its own on ``conn`` (else in the caller's transaction on ``conn``)."""
        status = {"failed": inbox.FAILED, "ignored": inbox.IGNORED}.get(outcome.status)
        if status and not own:
            inbox.mark(conn, outcome.inbox_id, status, outcome.error, outcome.plugin)
        elif status:
            with self._transaction(conn) as tx:
                inbox.mark(tx, outcome.inbox_id, status, outcome.error, outcome.plugin)


def _unavailable(exc: Exception) -> bool:
    """The database is down or unreachable (not a lost race, not a bad row)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(sign in text for sign in ("connection", "server closed", "could not connect", "terminating",
                                          "database is locked", "disk i/o", "shutting down"))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
