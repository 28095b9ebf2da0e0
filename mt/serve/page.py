"""The web page of `mt serve` (GET /): static files of the package, and the headers that keep it safe.

    add_page(app)      # GET / and /static/*, and a Content-Security-Policy on every response

The page is plain HTML, CSS and one script in mt/serve/static/ (no build step, nothing fetched from
another origin: it works offline). It calls the server's own JSON API (/info, /translate) and builds
its DOM with textContent and createElement only, so no text of a user or a model is ever parsed as
HTML. The policy forbids inline script and every other origin; FastAPI's own /docs and /redoc pages,
which load Swagger UI and ReDoc from a CDN with an inline script, are left without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every HTTP response but those of the `exempt` paths."""

    def __init__(self, app: Any, exempt: tuple[str, ...] = ()) -> None:
        self.app, self.exempt = app, exempt

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_page(app: FastAPI) -> None:
    """GET / (the page), GET /static/... (its script, style and icon) and the security headers."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    exempt = tuple(p for p in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p)
    app.add_middleware(SecurityHeaders, exempt=exempt)
