"""``GET /dashboard``: a small read-only page for people and operators.

It shows the plans waiting for a person, success, quality and trust by agent, and
success / quality trends as charts. The page is three static files in ``api/static``
(HTML, hand-written JavaScript drawing SVG charts, CSS) served from here; no CDN, no
third-party code, nothing fetched at run time but the page's own ``/api/metrics/*``
routes. A Content-Security-Policy keeps it that way (``default-src 'none'``, scripts,
styles and requests from this origin only).

The files hold no data, so they are served without an API key. The data routes need
one when ``PLANSMITH_API_KEYS`` is set: the page then asks for a key and keeps it in the
tab's ``sessionStorage`` (sent as ``X-API-Key``); ``/dashboard#key=<key>`` hands it one
(a URL fragment never reaches the server or its logs, and the page removes it from the
address bar).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import not_found

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/dashboard")
async def dashboard() -> FileResponse:
    return FileResponse(
        STATIC / "dashboard.html", media_type="text/html; charset=utf-8", headers=HEADERS
    )


@router.get("/dashboard/static/{name}")
async def dashboard_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise not_found(f"no dashboard asset {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
