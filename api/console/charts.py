"""``/console/charts``: the dashboard's charts (trust, success, quality trends) as a page
of the console, inside its layout and behind its sign-in.

The page is drawn by the dashboard's own script (``/dashboard/static/dashboard.js``) and
styles; it reads the data routes of ``/api/metrics`` at ``/console/metrics/…``: the very
route functions of :mod:`api.routes_metrics`, registered here again with the console's
session instead of an API key (the session cookie is scoped to ``/console``, and a
browser page cannot send the key the console does not keep).
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from api.console.routes import (
    SessionDep,
    current_session,
    needs_sign_in,
    principal_of,
    render,
    sign_in_page,
)
from api.deps import ServicesDep, get_principal
from api.routes_metrics import router as metrics_router

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
METRICS_BASE = "/console/metrics/"


@router.get("/charts")
async def charts_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    if needs_sign_in(services, session):
        return sign_in_page(request, session, services)
    return render(request, session, services, "charts.html", {"metrics_base": METRICS_BASE})


async def console_reader(request: Request, services: ServicesDep) -> None:
    """A metrics read of the console: 401 without a signed-in session (keys on)."""
    principal_of(services, current_session(request))


def _metrics_routes() -> None:
    """``/console/metrics/…``: every GET of ``/api/metrics`` with the console's session
    (the route's function, parameters, validation and answers as they are)."""
    for route in metrics_router.routes:
        if not isinstance(route, APIRoute) or "GET" not in (route.methods or ()):
            continue
        kept = [d for d in route.dependencies if d.dependency is not get_principal]
        router.add_api_route(
            route.path,  # /metrics/…
            route.endpoint,
            methods=["GET"],
            response_model=route.response_model,
            dependencies=[Depends(console_reader), *kept],
            name=f"console_{route.name}",
        )


_metrics_routes()
