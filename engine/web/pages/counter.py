"""The cashier's counter (``/counter``): a page on the till's API.

The page is a shell: everything it does goes through ``/api/v1`` from the
browser, with the terminal's key as a bearer token (``regulars pos
add-terminal``), so the counter has no business path of its own. What the
server puts into the page is the programme's shape, which the API doesn't
answer and the page needs to draw: the stamp cards (how many stamps fill one)
and the catalogue rewards a till may sell for points.

Offline, the page queues sales and visits in the browser (``localStorage``)
with their idempotency keys and original times, and uploads them as one
offline batch (``POST /api/v1/batches``) when the network is back. A service
worker (``/counter-sw.js``, scope ``/counter``) keeps the page's shell, so a
reload without a network still opens the counter.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parents[1] / "static"

#: The page runs only its own files; the camera's stream goes to a <video>.
#: ``style-src 'unsafe-inline'``: base.html sets the brand's colours inline.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob: https:",
    "media-src 'self' blob: mediastream:",
    "connect-src 'self'",
    "worker-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Permissions-Policy": "camera=(self), microphone=()",
}
CHANNEL = "pos"


def programme(engine) -> dict:
    """What the page draws that the API doesn't answer: the stamp cards, the
    catalogue rewards the till may redeem for points, and those whose
    ``channels`` leave the till out (``elsewhere``: a customer may hold one,
    but a sale here doesn't spend it)."""
    cards = [{"name": card.name, "required": card.required, "reward": card.reward}
             for card in sorted(engine.cards.cards.values(), key=lambda c: c.name)]
    rewards, elsewhere = [], []
    for name, entry in sorted(engine.catalogue.entries.items()):
        if entry.get("channels") and CHANNEL not in entry["channels"]:
            elsewhere.append(name)
            continue
        if entry.get("cost") is None:
            continue  # earned (a full stamp card), not bought
        value = entry.get("value")
        rewards.append({"name": name, "kind": entry["kind"], "cost": entry["cost"],
                        "value": None if value is None else str(value), "sku": entry.get("sku")})
    return {"currency": engine.config.currency, "cards": cards, "rewards": rewards, "elsewhere": elsewhere}


class Counter:
    def __init__(self, engine, templates):
        self.engine = engine
        self.templates = templates

    async def page(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        config = {
            **programme(self.engine),
            "api": f"{root}/api/v1",
            "worker": f"{root}/counter-sw.js",
            "scope": f"{root}/counter",
            "channel": CHANNEL,
        }
        return self.templates.render(request, "counter.html", headers=HEADERS, config=config,
                                     pos_on=CHANNEL in self.engine.connectors)

    async def worker(self, request: Request) -> Response:
        """The service worker, from the root so that its scope can be ``/counter``."""
        return FileResponse(STATIC / "counter-sw.js", media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def routes(engine, templates) -> list:
    counter = Counter(engine, templates)
    return [
        Route("/counter", counter.page, methods=["GET"], name="counter"),
        Route("/counter-sw.js", counter.worker, methods=["GET"], name="counter_worker"),
    ]
