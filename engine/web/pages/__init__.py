"""The pages people look at, on the HTTP app: the customer's card
(``/card/<signed link>``, ``engine.web.pages.card``), the cashier's counter
(``/counter``, ``engine.web.pages.counter``) and the merchant's dashboard
(``/admin``, ``engine.web.pages.admin``). Server-rendered (Jinja2) with light
JavaScript; every asset ships in the package (``engine/web/static``) and
nothing is fetched from elsewhere at run time."""

from __future__ import annotations

from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from engine.web.pages.render import Templates


class Pages:
    def __init__(self, engine):
        self.engine = engine
        self.templates = Templates(engine)

    async def logo(self, request) -> Response:
        path = self.templates.logo_file()
        if path is None:
            return Response(status_code=404)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    def routes(self) -> list[BaseRoute]:
        from engine.web.pages import admin, card, counter

        return [
            Mount("/static", app=StaticFiles(packages=[("engine.web", "static")]), name="static"),
            Route("/branding/logo", self.logo, methods=["GET"]),
            *card.routes(self.engine, self.templates),
            *counter.routes(self.engine, self.templates),
            *admin.routes(self.engine, self.templates),
        ]
