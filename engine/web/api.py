"""The till's and the customer's HTTP API (``/api/v1``), with its OpenAPI
document generated from its marshmallow schemas (``/api/openapi.json``)
and a readable reference (``/api/docs``).

Terminals authenticate with their key as a bearer token (``regulars pos
add-terminal``). Every write takes an ``Idempotency-Key`` header: a retried
request gets the first answer, and the same key with another request is
refused. Answers carry the customer's new balance, stamps and tier, so the
till can show them at once. Errors have one shape, ``{"error": {"code",
"message"}}``, with a 4xx status for anything the caller sent.
"""

# The docstring above is the OpenAPI document's description (engine.web.openapi);
# the schemas are in engine.web.api_schemas.

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from engine.web.api_base import ApiError
from engine.web.api_customers import CustomerEndpoints
from engine.web.api_till import TillEndpoints
from engine.web.openapi import openapi_document, reference_page


class Api(TillEndpoints, CustomerEndpoints):
    """The API of one engine: the till's endpoints (``engine.web.api_till``),
    the customers' (``engine.web.api_customers``), the OpenAPI document
    (``engine.web.openapi``), and the routes that serve them."""

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
