"""The till's and the customer's HTTP API (``/api/v1``), with its OpenAPI
document generated from the marshmallow schemas below (``/api/openapi.json``)
and a readable reference (``/api/docs``).

Terminals authenticate with their key as a bearer token (``regulars pos
add-terminal``). Every write takes an ``Idempotency-Key`` header: a retried
request gets the first answer, and the same key with another request is
refused. Answers carry the customer's new balance, stamps and tier, so the
till can show them at once. Errors have one shape, ``{"error": {"code",
"message"}}``, with a 4xx status for anything the caller sent.
"""

from __future__ import annotations

import hashlib
import html
import json
from datetime import UTC, datetime
from decimal import Decimal

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from engine import terminals
from engine.customers import customer_summary
from engine.jsonio import UNSTORABLE_REFUSAL, holds_unstorable
from engine.rewards import NOT_USED
from engine.subscriptions import ACTIONS
from engine.web.qr import printable_card, qr

MAX_BATCH = 5 * 1024 * 1024
MAX_MONEY = Decimal(1_000_000_000)


def _money_range(value: Decimal) -> None:
    if not value.is_finite() or not Decimal(0) <= value <= MAX_MONEY:
        raise ValidationError(f"must be an amount from 0 to {MAX_MONEY}")


def Money(**kwargs):  # noqa: N802 - a field factory, read as a type
    """An amount of money: a decimal string in, a decimal string out (never a float)."""
    return fields.Decimal(as_string=True, places=None, allow_nan=False, validate=_money_range,
                          metadata={"type": "string", "pattern": r"^[0-9]{1,10}(\.[0-9]{1,4})?$", "example": "12.50"},
                          **kwargs)


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


# -- schemas ---------------------------------------------------------------------------


class _In(Schema):
    """A request body: unknown keys are refused (marshmallow's default)."""


class HintsSchema(_In):
    """Who the customer is: what the QR code says (the card code), a phone or an email."""

    card_code = fields.String(validate=validate.Length(min=4, max=64))
    phone = fields.String(validate=validate.Length(min=3, max=64))
    email = fields.String(validate=validate.Length(min=3, max=320))

    @validates_schema
    def _one(self, data, **kwargs):
        if not any(data.values()):
            raise ValidationError("give the card code, a phone or an email")


class LineSchema(_In):
    sku = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1_000_000))
    unit_price = Money(required=True)
    discount = Money(load_default=Decimal(0))


class SaleSchema(_In):
    """A sale at the counter."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=100),
                       metadata={"description": "the till's own id for the sale, unique per terminal"})
    occurred_at = fields.AwareDateTime(load_default=None, metadata={"description": "default: now"})
    customer = fields.Nested(HintsSchema, required=True)
    lines = fields.List(fields.Nested(LineSchema), required=True, validate=validate.Length(min=1, max=500))
    reward_codes = fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=list,
                               metadata={"description": "codes of rewards spent in this sale"})


class VisitSchema(_In):
    """A visit that earns a stamp."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=100))
    occurred_at = fields.AwareDateTime(load_default=None)
    customer = fields.Nested(HintsSchema, required=True)


class VoidSchema(_In):
    occurred_at = fields.AwareDateTime(load_default=None)
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class EnrolSchema(_In):
    """A new customer at the counter (a card is issued at once)."""

    email = fields.Email(load_default=None, allow_none=True)
    phone = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=3, max=64))
    first_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    last_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))

    @validates_schema
    def _one(self, data, **kwargs):
        if not (data.get("email") or data.get("phone")):
            raise ValidationError("give an email or a phone")


class MembershipSchema(_In):
    """A membership sold, renewed, paused, resumed or cancelled at the counter."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=100),
                       metadata={"description": "the till's own id for this change, unique per terminal"})
    occurred_at = fields.AwareDateTime(load_default=None, metadata={"description": "default: now"})
    customer = fields.Nested(HintsSchema, required=True)
    action = fields.String(required=True, validate=validate.OneOf(list(ACTIONS)))
    plan = fields.String(required=True, validate=validate.Length(min=1, max=64),
                         metadata={"description": "a plan of plugins.toml ([rules.subscriptions.<plan>])"})
    subscription_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=100),
                                    metadata={"description": "which membership; default: one per customer and plan "
                                                             "at the counter"})
    period_end = fields.AwareDateTime(load_default=None, allow_none=True, metadata={
        "description": "the end of the period paid for (a renewal for the same period earns once)"})


class RedeemSchema(_In):
    customer = fields.Nested(HintsSchema, required=True)
    reward = fields.String(required=True, validate=validate.Length(min=1, max=64))
    units = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=10_000))
    channel = fields.String(load_default="pos", validate=validate.Length(min=1, max=64))


class MeRedeemSchema(_In):
    """The customer redeems on their own card, for the shop they will spend it in."""

    reward = fields.String(required=True, validate=validate.Length(min=1, max=64))
    channel = fields.String(required=True, validate=validate.Length(min=1, max=64),
                            metadata={"description": "shopify, woocommerce or pos: where the coupon is issued"})
    units = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=10_000))


class RewardSchema(Schema):
    code = fields.String()
    reward = fields.String()
    kind = fields.String()
    status = fields.String()
    cost = fields.Integer()
    value = fields.String(allow_none=True)
    channel = fields.String(allow_none=True)
    expires_at = fields.String(allow_none=True)


class MembershipStateSchema(Schema):
    plan = fields.String()
    status = fields.String(metadata={"description": "active, paused, cancelled or lapsed"})
    since = fields.String()
    period_end = fields.String(allow_none=True)
    status_since = fields.String()
    channel = fields.String()
    id = fields.String()


class CustomerSchema(Schema):
    """What the till shows: the customer's balance, stamps and tier at a glance."""

    id = fields.Integer()
    card_code = fields.String()
    first_name = fields.String(allow_none=True)
    last_name = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    points = fields.Integer()
    points_pending = fields.Integer()
    stamps = fields.Dict(keys=fields.String(), values=fields.Integer())
    tier = fields.String(allow_none=True)
    rewards = fields.List(fields.Nested(RewardSchema))
    referral_code = fields.String()
    memberships = fields.List(fields.Nested(MembershipStateSchema))


class ResultSchema(Schema):
    status = fields.String(metadata={"description": "applied, or duplicate for a sale seen before"})
    customer = fields.Nested(CustomerSchema, allow_none=True)


class CodeUseSchema(Schema):
    """What became of a reward code the till sent with a sale."""

    code = fields.String(metadata={"description": "the code, as the till sent it"})
    used = fields.Boolean(metadata={"description": "true: this sale used the reward (true again for the sale resent)"})
    reason = fields.String(allow_none=True, validate=validate.OneOf(NOT_USED), metadata={
        "description": "when not used, why: `unknown` (no reward has this code), `not_this_customers`, "
                       "`already_used` (by another order), `expired`, `voided` (a stamp card's reward taken back), "
                       "`not_spendable_here` (its catalogue `channels` leave the till out), `still_issued` (valid, "
                       "but this sale didn't spend it: the sale is not applied yet, kept after a plugin failed); "
                       "the reward was not used, so no discount is owed for it"})


class SaleResultSchema(ResultSchema):
    codes = fields.List(fields.Nested(CodeUseSchema), metadata={
        "description": "each of the sale's `reward_codes`, once: used by this sale or why not"})


class MembershipResultSchema(ResultSchema):
    membership = fields.Nested(MembershipStateSchema, allow_none=True)


class RedemptionSchema(Schema):
    reward = fields.Nested(RewardSchema)
    customer = fields.Nested(CustomerSchema)


class BatchLineSchema(Schema):
    line = fields.Integer()
    key = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "applied, duplicate or refused"})
    reason = fields.String(allow_none=True)
    codes = fields.List(fields.Nested(CodeUseSchema), metadata={
        "description": "a sale's line, applied or duplicate: its reward codes, as a live sale's answer has them"})


class BatchSchema(Schema):
    results = fields.List(fields.Nested(BatchLineSchema))


class ErrorBodySchema(Schema):
    code = fields.String()
    message = fields.String(metadata={"description": "what went wrong, in English"})
    reason = fields.String(metadata={
        "description": "with code `refused` (a redemption): why, as a word a till can translate: `insufficient`, "
                       "`pending`, `negative_balance`, `max_units`, `one_at_a_time`, `earned_only`, "
                       "`wrong_channel`, `unknown_reward`, `unknown_channel`, `key_reused`, `unknown_customer`"})
    values = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "with `reason`: its numbers (`cost`, `balance`, `spendable`, `max`)"})
    plugin = fields.String(metadata={"description": "with code `plugin_failed`: the plugin that failed"})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema)


def _customer_json(summary: dict | None) -> dict | None:
    if summary is None:
        return None
    return CustomerSchema().dump(summary)


# -- the API ---------------------------------------------------------------------------


class Api:
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

    # endpoints

    async def lookup(self, request: Request) -> Response:
        await self._terminal(request)
        key = _storable_only((request.query_params.get("key") or "").strip())
        if not key:
            raise ApiError(400, "no_key", "give key: the card code (what the QR says), a phone or an email")
        found = await run_in_threadpool(self._summary, key)
        if found is None:
            raise ApiError(404, "no_customer", "no customer matches that card code, phone or email")
        return JSONResponse(_customer_json(found))

    async def enrol(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        data = await self._json(request, EnrolSchema())

        async def work():
            now = datetime.now(UTC).isoformat()
            payload = {"id": request.headers["idempotency-key"], "terminal": str(terminal.id), "occurred_at": now,
                       "customer": {k: v for k, v in data.items() if v}}
            key = data.get("email") or data.get("phone")
            status, answer = await run_in_threadpool(self._ingest, "enrol", payload, key)
            return 201 if answer["status"] == "applied" else 200, answer

        return await self._idempotent(request, terminal, work)

    async def sale(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        data = await self._json(request, SaleSchema())

        async def work():
            customer = await run_in_threadpool(self._find, data["customer"])
            payload = terminals.sale_payload(terminal, data, customer["card_code"])
            status, answer = await run_in_threadpool(self._ingest, "sale", payload, customer["card_code"],
                                                   data.get("occurred_at") is not None)
            answer["codes"] = await run_in_threadpool(terminals.sale_codes, self.engine, terminal, payload)
            return status, answer

        return await self._idempotent(request, terminal, work)

    async def void(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        data = await self._json(request, VoidSchema())
        sale_id = _storable_only(request.path_params["sale_id"])

        async def work():
            order = await run_in_threadpool(terminals.sale_customer, self.engine, terminal, sale_id)
            if order is None:
                raise ApiError(404, "no_sale", f"this terminal recorded no sale {sale_id!r}")
            payload = terminals.void_payload(terminal, sale_id, data)
            return await run_in_threadpool(self._ingest, "void", payload, order,
                                                   data.get("occurred_at") is not None)

        return await self._idempotent(request, terminal, work)

    async def visit(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        data = await self._json(request, VisitSchema())

        async def work():
            customer = await run_in_threadpool(self._find, data["customer"])
            payload = terminals.visit_payload(terminal, data, customer["card_code"])
            return await run_in_threadpool(self._ingest, "visit", payload, customer["card_code"],
                                                   data.get("occurred_at") is not None)

        return await self._idempotent(request, terminal, work)

    async def membership(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        data = await self._json(request, MembershipSchema())
        unknown = terminals.unknown_plan(self.engine, data["plan"])
        if unknown:
            raise ApiError(422, "unknown_plan", unknown)

        async def work():
            customer = await run_in_threadpool(self._find, data["customer"])
            payload = terminals.membership_payload(terminal, data, customer)
            status, answer = await run_in_threadpool(self._ingest, "membership", payload, customer["card_code"],
                                                   data.get("occurred_at") is not None)
            answer["membership"] = await run_in_threadpool(self._membership, payload["subscription_id"])
            return status, answer

        return await self._idempotent(request, terminal, work)

    def _membership(self, subscription_id: str) -> dict | None:
        with self.engine.db.connect() as conn:
            return self.engine.subscriptions.state(conn, "pos", subscription_id)

    async def redeem(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        data = await self._json(request, RedeemSchema())

        async def work():
            from engine.rewards import RedemptionRefused

            customer = await run_in_threadpool(self._find, data["customer"])
            try:
                issued = await run_in_threadpool(
                    self.engine.redeem, customer["card_code"], data["reward"], data["channel"], data["units"],
                    f"pos:{terminal.id}:{request.headers['idempotency-key']}")
            except RedemptionRefused as exc:
                raise refused(exc) from None
            summary = await run_in_threadpool(self._summary, customer["card_code"])
            return 201, {"reward": RewardSchema().dump(issued.as_json()), "customer": _customer_json(summary)}

        return await self._idempotent(request, terminal, work)

    async def batch(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        body = await request.body()
        if len(body) > MAX_BATCH:
            raise ApiError(413, "too_large", f"a batch is at most {MAX_BATCH} bytes")

        async def work():
            return 200, {"results": await run_in_threadpool(terminals.apply_batch, self.engine, terminal, body)}

        return await self._idempotent(request, terminal, work)

    async def card(self, request: Request) -> Response:
        await self._terminal(request)
        code, kind = _storable_only(request.path_params["code"]), request.path_params["kind"]
        found = await run_in_threadpool(self._summary, code)
        if found is None or found["card_code"] != code.upper():
            raise ApiError(404, "no_customer", "no customer has that card code")
        if kind == "svg":
            return Response(qr(found["card_code"], "svg"), media_type="image/svg+xml")
        if kind == "png":
            return Response(qr(found["card_code"], "png"), media_type="image/png")
        name = " ".join(p for p in (found["first_name"], found["last_name"]) if p)
        return HTMLResponse(printable_card(found["card_code"], name, self.engine.config.engine.get("name")))

    # the customer's own card

    async def _me(self, request: Request) -> int:
        from engine.links import LinkRefused, customer_of

        header = request.headers.get("authorization") or ""
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not token:
            raise ApiError(401, "unauthorized", "open your card's link, or send its token as a bearer token")
        try:
            return await run_in_threadpool(customer_of, self.engine, token)
        except LinkRefused as exc:
            raise ApiError(401, "link_refused", str(exc)) from None

    async def me(self, request: Request) -> Response:
        customer_id = await self._me(request)
        summary = await run_in_threadpool(self._summary, f"id:{customer_id}")
        return JSONResponse(_customer_json(summary))

    async def me_redeem(self, request: Request) -> Response:
        customer_id = await self._me(request)
        data = await self._json(request, MeRedeemSchema())
        from engine.rewards import RedemptionRefused

        key = (request.headers.get("idempotency-key") or "").strip() or None
        try:
            issued = await run_in_threadpool(self.engine.redeem, f"id:{customer_id}", data["reward"], data["channel"],
                                             data["units"], f"me:{customer_id}:{key}" if key else None)
        except RedemptionRefused as exc:
            raise refused(exc) from None
        summary = await run_in_threadpool(self._summary, f"id:{customer_id}")
        return JSONResponse({"reward": RewardSchema().dump(issued.as_json()), "customer": _customer_json(summary)},
                            status_code=201)

    # the document

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(reference_page(openapi_document()))

    def routes(self) -> list[Route]:
        def guarded(handler):
            async def endpoint(request: Request) -> Response:
                try:
                    return await handler(request)
                except ApiError as exc:
                    return JSONResponse(exc.body, status_code=exc.status)
            return endpoint

        return [
            Route("/api/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/docs", self.docs, methods=["GET"]),
            Route("/api/v1/customers", guarded(self.lookup), methods=["GET"]),
            Route("/api/v1/customers", guarded(self.enrol), methods=["POST"]),
            Route("/api/v1/cards/{code}.{kind:str}", guarded(self.card), methods=["GET"]),
            Route("/api/v1/sales", guarded(self.sale), methods=["POST"]),
            Route("/api/v1/sales/{sale_id}/void", guarded(self.void), methods=["POST"]),
            Route("/api/v1/visits", guarded(self.visit), methods=["POST"]),
            Route("/api/v1/memberships", guarded(self.membership), methods=["POST"]),
            Route("/api/v1/redemptions", guarded(self.redeem), methods=["POST"]),
            Route("/api/v1/batches", guarded(self.batch), methods=["POST"]),
            Route("/api/v1/me", guarded(self.me), methods=["GET"]),
            Route("/api/v1/me/redemptions", guarded(self.me_redeem), methods=["POST"]),
        ]


def _storable_only(value):
    """Refuse text with NUL characters or lone surrogates (no database stores
    them in text: ``engine.jsonio.unstorable``)."""
    if holds_unstorable(value):
        raise ApiError(422, "invalid", UNSTORABLE_REFUSAL)
    return value


def _messages(messages) -> str:
    parts = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path and key != "_schema" else (path or str(key)))
        elif isinstance(node, list) and all(isinstance(m, str) for m in node):
            parts.append(f"{path}: {' '.join(node)}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
        else:
            parts.append(f"{path}: {node}")

    walk(messages, "")
    return "; ".join(parts) or "invalid input"


# -- OpenAPI ---------------------------------------------------------------------------

_ERRORS = {
    "400": "the request is malformed", "401": "no or a wrong terminal key",
    "404": "no such customer or sale", "409": "refused (not enough points, ...)",
    "422": "a field is wrong, or an Idempotency-Key reused for another request",
    "503": "kept but not applied: a plugin failed (`plugin_failed`, naming it); applied when it is fixed",
}
_DOCUMENT: dict | None = None


def _operation(summary: str, body: type | None, answer: type, status: str = "200", params=(), write=False,
               content: str = "application/json") -> dict:
    op = {"summary": summary, "security": [{"terminal": []}], "parameters": list(params),
          "responses": {status: {"description": "done", "content": {"application/json": {"schema": answer.__name__[:-6]}}}}}
    if write:
        op["parameters"].append({"in": "header", "name": "Idempotency-Key", "required": True,
                                 "schema": {"type": "string", "minLength": 1, "maxLength": 200}})
    if body is not None:
        op["requestBody"] = {"required": True, "content": {content: {"schema": body.__name__[:-6]}}}
    for code, text in _ERRORS.items():
        op["responses"].setdefault(code, {"description": text, "content": {"application/json": {"schema": "Error"}}})
    return op


def openapi_document() -> dict:
    global _DOCUMENT
    if _DOCUMENT is not None:
        return _DOCUMENT
    spec = APISpec(title="regulars", version="1", openapi_version="3.0.3", plugins=[MarshmallowPlugin()],
                   info={"description": __doc__})
    spec.components.security_scheme("card_link", {"type": "http", "scheme": "bearer",
                                                  "description": "a card link's token (`regulars card link`)"})
    spec.components.security_scheme("terminal", {"type": "http", "scheme": "bearer",
                                                 "description": "a terminal key from `regulars pos add-terminal`"})
    for schema in (HintsSchema, LineSchema, SaleSchema, VisitSchema, VoidSchema, EnrolSchema, RedeemSchema, MeRedeemSchema,
                   RewardSchema, MembershipStateSchema, CustomerSchema, ResultSchema, CodeUseSchema, SaleResultSchema,
                   RedemptionSchema, BatchLineSchema, BatchSchema, MembershipSchema, MembershipResultSchema, ErrorSchema):
        spec.components.schema(schema.__name__[:-6], schema=schema)
    keys = [{"in": "query", "name": "key", "required": True, "schema": {"type": "string", "minLength": 1},
             "description": "the card code (what the QR code says), a phone or an email"}]
    spec.path("/api/v1/customers", operations={
        "get": _operation("Find a customer by card code (the QR), phone or email", None, CustomerSchema, params=keys),
        "post": _operation("Enrol a new customer and issue a card", EnrolSchema, ResultSchema, "201", write=True),
    })
    spec.path("/api/v1/cards/{code}.{kind}", operations={"get": {
        **_operation("The card's QR code (svg, png) or a printable card (html)", None, ErrorSchema, params=[
            {"in": "path", "name": "code", "required": True, "schema": {"type": "string"}},
            {"in": "path", "name": "kind", "required": True, "schema": {"type": "string", "enum": ["svg", "png", "html"]}}]),
        "responses": {"200": {"description": "the image or page", "content": {
            "image/svg+xml": {"schema": {"type": "string"}}, "image/png": {"schema": {"type": "string", "format": "binary"}},
            "text/html": {"schema": {"type": "string"}}}},
            **{c: {"description": t, "content": {"application/json": {"schema": "Error"}}} for c, t in _ERRORS.items()}},
    }})
    spec.path("/api/v1/sales", operations={"post": _operation("Record a sale", SaleSchema, SaleResultSchema, write=True)})
    spec.path("/api/v1/sales/{sale_id}/void", operations={"post": _operation(
        "Void a sale (its points go back through the refund rules)", VoidSchema, ResultSchema, write=True,
        params=[{"in": "path", "name": "sale_id", "required": True, "schema": {"type": "string"}}])})
    spec.path("/api/v1/visits", operations={"post": _operation("Record a visit (a stamp)", VisitSchema, ResultSchema,
                                                               write=True)})
    spec.path("/api/v1/memberships", operations={"post": _operation(
        "Start, renew, pause, resume or cancel a membership", MembershipSchema, MembershipResultSchema, write=True)})
    spec.path("/api/v1/redemptions", operations={"post": _operation(
        "Redeem a reward or points", RedeemSchema, RedemptionSchema, "201", write=True)})
    me = {"in": "query", "name": "token", "schema": {"type": "string"},
          "description": "the card link's token (or send it as a bearer token)"}
    me_get = _operation("The customer's own card: balance, stamps, tier, rewards, referral code", None,
                        CustomerSchema, params=[me])
    me_post = _operation("The customer redeems a reward; its coupon is issued in the chosen shop", MeRedeemSchema,
                         RedemptionSchema, "201", params=[me])
    for op in (me_get, me_post):
        op["security"] = [{"card_link": []}]
    spec.path("/api/v1/me", operations={"get": me_get})
    spec.path("/api/v1/me/redemptions", operations={"post": me_post})
    batch = _operation("Upload an offline batch (JSON Lines: one {topic, key, ...} per line)", None, BatchSchema,
                       write=True)
    batch["requestBody"] = {"required": True, "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}
    spec.path("/api/v1/batches", operations={"post": batch})
    _DOCUMENT = spec.to_dict()
    return _DOCUMENT


def reference_page(document: dict) -> str:
    """The OpenAPI document as a readable page, rendered here (nothing from a CDN)."""
    rows = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {})
            schema = next(iter(body.values()), {}).get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(params)}</td>"
                        f"<td>{html.escape(schema)}</td><td>{', '.join(sorted(op['responses']))}</td></tr>")
    schemas = []
    for name, schema in document["components"]["schemas"].items():
        props = "".join(
            f"<li><code>{html.escape(p)}</code> {html.escape(str(v.get('type', v.get('$ref', '').rsplit('/', 1)[-1])))}"
            f"{' (required)' if p in schema.get('required', []) else ''}</li>"
            for p, v in schema.get("properties", {}).items())
        schemas.append(f"<h3 id='{html.escape(name)}'>{html.escape(name)}</h3><ul>{props}</ul>")
    return ("<!doctype html><html lang='en'><meta charset='utf-8'><title>regulars API</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}"
            "td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left}</style>"
            f"<h1>regulars API</h1><p>{html.escape(document['info'].get('description', ''))}</p>"
            "<p>The machine-readable document: <a href='/api/openapi.json'>/api/openapi.json</a></p>"
            "<table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th><th>body</th><th>answers</th></tr>"
            + "".join(rows) + "</table><h2>Schemas</h2>" + "".join(schemas) + "</html>")
