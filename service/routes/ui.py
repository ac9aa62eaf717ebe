"""/ui: a page to look at the cache (service.ui assembles it, service.ui_render writes it).

GET /ui is a shell that holds no data, so it needs no token; its script asks GET /ui/panels for
the panels with the token the user entered, which is kept in the tab's sessionStorage and sent
as the API's own `Authorization: Bearer` header. So the panels are authenticated exactly as the
API is (read scope; a token sees its namespaces only), nothing authenticates by cookie (no
request another site makes the browser send carries the token), and the token is never in a
URL. Not in the OpenAPI document: these answer HTML, not the API's JSON."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

from neffcache.errors import NotFound
from neffcache.service import ui
from neffcache.service.auth import READ
from neffcache.service.ui_render import STATIC, render

router = APIRouter(tags=["ui"], include_in_schema=False)
# Only the page's own script and stylesheet run or apply: no inline script, no other origin.
# The plots are inline SVG drawn with presentation attributes, which this allows.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_FILES = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}


@router.get("/ui", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse(render("page.html"), headers=HEADERS)


@router.get("/ui/panels", response_class=HTMLResponse, dependencies=[READ])
def panels(request: Request, hours: int = Query(ui.HISTORY_HOURS, ge=1, le=24 * 31)) -> HTMLResponse:
    """Every panel, as the token may see them (401 without a valid token, as the API)."""
    return HTMLResponse(render("panels.html", **ui.panels(request, hours)), headers=HEADERS)


@router.get("/ui/static/{name}")
def static(name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise NotFound(f"no file {name!r} in /ui/static")
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"X-Content-Type-Options": "nosniff"})
