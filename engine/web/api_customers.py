"""The customers through the API: finding and enrolling them at the till,
their card's QR code, redeeming rewards at the till, and the customer's own
card (``/api/v1/me``, opened with a card link's token)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from engine.web.api_base import ApiBase, ApiError, _storable_only, refused
from engine.web.api_schemas import (
    EnrolSchema,
    MeRedeemSchema,
    RedeemSchema,
    RewardSchema,
    _customer_json,
)
from engine.web.qr import printable_card, qr


class CustomerEndpoints(ApiBase):
    """Customers at the till (lookup, enrol, card, redemptions) and on their own card."""

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
                       "customer": {k: v.isoformat() if isinstance(v, date) else v for k, v in data.items() if v}}
            if data.get("card_code"):  # a card we issued: never a new customer under a code nobody has
                await run_in_threadpool(self._find, {"card_code": data["card_code"]})
            key = data.get("email") or data.get("phone") or data["card_code"]
            status, answer = await run_in_threadpool(self._ingest, "enrol", payload, key)
            return 201 if answer["status"] == "applied" else 200, answer

        return await self._idempotent(request, terminal, work)

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
            return 201, {"reward": RewardSchema().dump(self.engine.rewards.as_json(issued)), "customer": _customer_json(summary)}

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
        return JSONResponse({"reward": RewardSchema().dump(self.engine.rewards.as_json(issued)), "customer": _customer_json(summary)},
                            status_code=201)
