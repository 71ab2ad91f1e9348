"""The API's OpenAPI document (``/api/openapi.json``), generated from the
marshmallow schemas of ``engine.web.api_schemas``, and the readable reference
page rendered from it (``/api/docs``)."""

from __future__ import annotations

import html

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from engine.web.api_schemas import (
    BatchLineSchema,
    BatchSchema,
    CodeUseSchema,
    CustomerSchema,
    EnrolSchema,
    ErrorSchema,
    HintsSchema,
    LineSchema,
    MembershipResultSchema,
    MembershipSchema,
    MembershipStateSchema,
    MeRedeemSchema,
    RedeemSchema,
    RedemptionSchema,
    ResultSchema,
    RewardSchema,
    SaleResultSchema,
    SaleSchema,
    VisitSchema,
    VoidSchema,
)

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
    from engine.web import api  # its docstring describes the API (api imports this module)

    spec = APISpec(title="regulars", version="1", openapi_version="3.0.3", plugins=[MarshmallowPlugin()],
                   info={"description": api.__doc__})
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
