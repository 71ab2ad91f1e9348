"""The till's deliveries through the API: sales, voids, visits, memberships
and offline batches, each an idempotent write answered with the customer's
new balance, stamps and tier."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from engine import terminals
from engine.web.api_base import ApiBase, ApiError, _storable_only
from engine.web.api_schemas import MembershipSchema, SaleSchema, VisitSchema, VoidSchema

MAX_BATCH = 5 * 1024 * 1024


class TillEndpoints(ApiBase):
    """The till's sales, voids, visits, memberships and batches."""

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

    async def batch(self, request: Request) -> Response:
        terminal = await self._terminal(request)
        body = await request.body()
        if len(body) > MAX_BATCH:
            raise ApiError(413, "too_large", f"a batch is at most {MAX_BATCH} bytes")

        async def work():
            return 200, {"results": await run_in_threadpool(terminals.apply_batch, self.engine, terminal, body)}

        return await self._idempotent(request, terminal, work)
