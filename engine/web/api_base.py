"""What every endpoint of the API shares: its errors (``ApiError``), the
terminal's key, the JSON body checked by its schema, the ``Idempotency-Key``
that gives a retry the first answer, and a till's delivery sent to the engine
and answered with the customer's new balance."""

from __future__ import annotations

import hashlib
import json

from marshmallow import Schema, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import terminals
from engine.customers import customer_summary
from engine.jsonio import UNSTORABLE_REFUSAL, holds_unstorable
from engine.web.api_schemas import _customer_json, _messages


class ApiError(Exception):
    """An answer other than success: its status, code and English message,
    and for some codes more (``details``: a refusal's ``reason`` and
    ``values``, for a till that says it in its own language)."""

    def __init__(self, status: int, code: str, message: str, **details):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    @property
    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


def refused(exc) -> ApiError:
    """A redemption's refusal (``RedemptionRefused``) as the API says it."""
    return ApiError(409, "refused", str(exc), reason=exc.reason, values=exc.values)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(ApiError(status, code, message).body, status_code=status)


class ApiBase:
    """The plumbing of ``engine.web.api.Api``: its endpoints are in
    ``engine.web.api_till`` and ``engine.web.api_customers``."""

    def __init__(self, engine):
        self.engine = engine

    # plumbing

    async def _terminal(self, request: Request):
        header = request.headers.get("authorization") or ""
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "send the terminal's key as 'Authorization: Bearer <key>'")
        terminal = await run_in_threadpool(terminals.authenticate, self.engine.db, key.strip())
        if terminal is None:
            raise ApiError(401, "unauthorized", "this terminal key is unknown or revoked")
        return terminal

    @staticmethod
    async def _json(request: Request, schema: Schema) -> dict:
        body = await request.body()
        try:
            data = json.loads(body) if body.strip() else None
        except (ValueError, UnicodeDecodeError, RecursionError):  # (RecursionError: nested too deeply)
            raise ApiError(400, "bad_json", "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object")
        _storable_only(data)
        try:
            return schema.load(data)
        except ValidationError as exc:
            raise ApiError(422, "invalid", _messages(exc.messages)) from None

    async def _idempotent(self, request: Request, terminal, work) -> Response:
        """Run ``work`` once per Idempotency-Key: a retry gets the first answer."""
        key = (request.headers.get("idempotency-key") or "").strip()
        if not key or len(key) > 200:
            raise ApiError(400, "idempotency_key", "every write needs an Idempotency-Key header (1 to 200 characters)")
        body = await request.body()
        digest = hashlib.sha256(request.method.encode() + b" " + request.url.path.encode() + b"\n" + body).hexdigest()

        def recall():
            with self.engine.db.connect() as conn:
                return terminals.remembered(conn, terminal.id, key)

        seen = await run_in_threadpool(recall)
        if seen is not None:
            if seen.request_hash != digest:
                raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used for another request")
            return JSONResponse(seen.response, status_code=seen.status_code, headers={"Idempotent-Replay": "true"})
        try:
            status, payload = await work()
        except ApiError as exc:
            status, payload = exc.status, exc.body

        def keep():
            with self.engine.db.begin() as conn:
                terminals.remember(conn, terminal.id, key, digest, status, payload)

        await run_in_threadpool(keep)
        return JSONResponse(payload, status_code=status)

    def _summary(self, key: str) -> dict | None:
        return customer_summary(self.engine, key)

    def _find(self, hints: dict) -> dict:
        found = terminals.find_customer(self.engine, hints)
        if found is None:
            raise ApiError(404, "no_customer", "no customer matches that card code, phone or email")
        return found

    def _ingest(self, topic: str, payload: dict, key: str, timed: bool = True):
        """Send a till's delivery and answer as it went. ``timed``: the till
        gave its time; else the time is now, or, for one sent before, the time
        it had then (so that it is the duplicate it is, not a conflict)."""
        if not timed:
            payload = terminals.first_time(self.engine, topic, payload)
        outcome = terminals.send(self.engine, topic, payload)
        if outcome.status == "duplicate":
            # Sent before: answered as it stands. One kept but not applied (a
            # plugin failed, or refused) is not the duplicate of an applied one.
            outcome = terminals.as_stored(self.engine, outcome)
        if outcome.status == "failed" and outcome.plugin:
            # Not the till's mistake: kept, and applied once the plugin is fixed and it is replayed.
            raise ApiError(503, "plugin_failed", f"kept but not applied: plugin {outcome.plugin!r} failed "
                           f"({outcome.error}); it is applied when the plugin is fixed and the delivery replayed "
                           "(regulars events replay --failed): don't send it again", plugin=outcome.plugin)
        if outcome.status == "failed":
            raise ApiError(422, "refused", outcome.error or "the till's delivery can't be applied")
        summary = self._summary(key)
        return 200, {"status": "applied" if outcome.status == "applied" else outcome.status,
                     "customer": _customer_json(summary)}


def _storable_only(value):
    """Refuse text with NUL characters or lone surrogates (no database stores
    them in text: ``engine.jsonio.unstorable``)."""
    if holds_unstorable(value):
        raise ApiError(422, "invalid", UNSTORABLE_REFUSAL)
    return value
