"""``/console``: the pages, the sign-in, the live event stream and the action POSTs.

Pages are Jinja2 templates (``api/console/templates``) rendered here; htmx (vendored,
``api/static/vendor``) boosts the links and forms, and ``console.js`` recolours the DAG
from the plan's event stream and refreshes the parts that changed. Every action is sent
by :func:`api.routes_plan_controls.send_control`, the function behind
``POST /api/plans/{id}/…``: the same role checks, the same recorded ``by`` (the key's
owner), the same refusals. An action answers 303 back to the page it came from, whose
next rendering shows what happened (the server's reason when it was refused).
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError

from api.auth import Principal
from api.console.dag import NODE_H, NODE_W, layout
from api.console.inbox import KIND_LABELS, FactsCache, inbox
from api.console.sessions import COOKIE, COOKIE_PATH, Session, Sessions
from api.controls import PLAN_BODIES, STEP_BODIES
from api.dashboard import CSP
from api.deps import ApiServices, PlanIdDep, ServicesDep
from api.errors import ApiError, api_error_of, forbidden, not_found, unauthorized
from api.routes_plan_controls import send_control
from api.routes_plan_reads import get_audit, get_events, get_status
from api.routes_plans import get_plan
from api.routes_trust import get_risk
from plans.models import ID_PATTERN, ID_RE
from plans.run_state import AuditEntry
from plans.views import StatusView
from workflows.errors import PlanClientError

log = logging.getLogger("plansmith.api.console")

HERE = Path(__file__).resolve().parent
STATIC = HERE.parent / "static"
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "vendor/htmx.min.js": "text/javascript; charset=utf-8",
}
HEADERS = {  # the dashboard's policy: nothing from another host, no inline code
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
KEYS_OFF_ACTOR = "console"
# The actions of this slice: control -> the label of its button.
ACTIONS = {
    "approve": "Approve",
    "reject": "Reject",
    "pause": "Pause",
    "resume": "Resume",
    "cancel": "Cancel",
    "approve_step": "Approve",
    "reject_step": "Reject",
    "answer_clarification": "Answer",
}
STEP_ACTIONS = frozenset({"approve_step", "reject_step", "answer_clarification"})
FINAL = frozenset({"completed", "partial", "failed", "cancelled", "rejected"})
MAX_SHOWN = 4000  # characters of a step's params or output on the page

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)


# --- sessions -------------------------------------------------------------------------


T = TypeVar("T")


def _app_state(request: Request, name: str, make: Callable[[], T]) -> T:
    """The app's one ``name`` (made at first use)."""
    state = request.app.state
    found: T | None = getattr(state, name, None)
    if found is None:
        found = make()
        setattr(state, name, found)
    return found


def sessions_of(request: Request) -> Sessions:
    return _app_state(request, "console_sessions", Sessions)


def current_session(request: Request) -> Session:
    """The visitor's session; a new (signed-out) one when the cookie names none."""
    sessions = sessions_of(request)
    session = sessions.get(request.cookies.get(COOKIE))
    if session is None:
        session = sessions.new()
    request.state.console_session = session
    return session


SessionDep = Annotated[Session, Depends(current_session)]


def set_cookie(request: Request, response: Response, session: Session) -> None:
    if request.cookies.get(COOKIE) == session.id:
        return
    response.set_cookie(
        COOKIE,
        session.id,
        path=COOKIE_PATH,
        httponly=True,
        # Lax, not Strict: a Strict cookie is not sent when a link on another site (a chat,
        # a notification) opens the console, whose new signed-out session's cookie then
        # replaced the person's (any site could sign them out). Lax sends it on such a
        # top-level GET only; a POST from another site still carries no cookie, and every
        # POST needs the session's CSRF token; no GET changes anything.
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def needs_sign_in(services: ApiServices, session: Session) -> bool:
    return services.keys.enabled and not session.signed_in


def principal_of(services: ApiServices, session: Session) -> Principal:
    if not services.keys.enabled:
        return Principal()
    if not session.signed_in:
        raise unauthorized("sign in to the console first")
    return session.principal()


def may(principal: Principal, control: str, agent_id: str | None) -> bool:
    """Whether the role lets ``principal`` send ``control`` to a plan of ``agent_id``
    (the check ``send_control`` applies; a control it refuses is not offered)."""
    try:
        principal.may_control(control, agent_id)
    except ApiError:
        return False
    return True


def render(
    request: Request,
    session: Session,
    services: ApiServices,
    name: str,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    ctx = {
        "session": session,
        "keys_on": services.keys.enabled,
        "keys_off_actor": KEYS_OFF_ACTOR,
        "notices": session.take_notices(),
        "kind_labels": KIND_LABELS,
        **context,
    }
    response = templates.TemplateResponse(request, name, ctx, status_code=status, headers=HEADERS)
    set_cookie(request, response, session)
    return response


def sign_in_page(
    request: Request, session: Session, services: ApiServices, status: int = 200
) -> Response:
    return render(request, session, services, "signin.html", {}, status)


async def checked_form(request: Request, session: Session) -> dict[str, str]:
    """The POSTed form's text fields; 403 unless it carries the session's CSRF token."""
    form = await request.form(max_files=0, max_fields=50)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not session.csrf_ok(fields.get("csrf")):
        raise forbidden("missing or wrong CSRF token: reload the console page and try again")
    return fields


def back_to(fields: dict[str, str], plan_id: str | None = None) -> str:
    if fields.get("back") == "inbox" or plan_id is None:
        return "/console"
    return f"/console/plans/{plan_id}"


# --- static files ---------------------------------------------------------------------


@router.get("/static/{name:path}")
async def console_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise not_found(f"no console asset {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)


# --- sign-in --------------------------------------------------------------------------


@router.post("/sign-in")
async def sign_in(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    fields = await checked_form(request, session)
    if not services.keys.enabled:
        return RedirectResponse("/console", status_code=303)
    entry = services.keys.find(fields.get("key", ""))
    if entry is None:
        session.notify("error", "that key was refused")
        return sign_in_page(request, session, services, status=401)
    sessions = sessions_of(request)
    sessions.drop(session.id)
    fresh = sessions.new(owner=entry.owner, role=entry.role)
    log.info("console: %s signed in", entry.owner)
    response = RedirectResponse("/console", status_code=303)
    set_cookie(request, response, fresh)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, session: SessionDep) -> Response:
    await checked_form(request, session)
    sessions_of(request).drop(session.id)
    response = RedirectResponse("/console", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


# --- the inbox ------------------------------------------------------------------------


def facts_cache_of(request: Request) -> FactsCache:
    return _app_state(request, "console_facts", FactsCache)


async def _inbox_context(
    request: Request, services: ApiServices, principal: Principal
) -> dict[str, Any]:
    try:
        items = await inbox(services, facts_cache_of(request))
        error = None
    except (ApiError, PlanClientError) as e:
        items, error = [], api_error_of(e).detail
    for item in items:
        item.offers = {c for c in ACTIONS if may(principal, c, item.agent_id)}
    return {"items": items, "inbox_error": error}


@router.get("")
async def inbox_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    if needs_sign_in(services, session):
        return sign_in_page(request, session, services)
    context = await _inbox_context(request, services, principal_of(services, session))
    return render(request, session, services, "inbox.html", context)


@router.get("/inbox")
async def inbox_fragment(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    """The inbox's list alone (``console.js`` refreshes it)."""
    if needs_sign_in(services, session):
        raise unauthorized("sign in to the console first")
    context = await _inbox_context(request, services, principal_of(services, session))
    return render(request, session, services, "inbox_items.html", context)


# --- a plan ---------------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "\n… (cut)"


async def _plan_context(
    services: ApiServices, principal: Principal, plan_id: str
) -> dict[str, Any]:
    gateway, drafts, store = services.temporal, services.drafts, services.store
    status: StatusView = await get_status(plan_id, services, drafts, store)
    detail = await get_plan(plan_id, gateway, drafts, store)
    audit: list[AuditEntry] = await get_audit(plan_id, gateway, drafts, store)
    views = {s.id: s for s in status.steps}
    steps = [
        {
            "step": step,
            "view": views.get(step.id),
            "params": _shown(step.params),
            "output": _shown(views[step.id].output)
            if step.id in views and views[step.id].output is not None
            else None,
        }
        for step in detail.plan.steps
    ]
    statuses = {s.id: s.status.value for s in status.steps}
    decision = status.approval_policy
    risk_level, risk_reasons = (None, [])
    if decision is not None:
        risk_level, risk_reasons = decision.risk.level, decision.risk.reasons or decision.reasons
    elif status.status.value in ("draft", "pending_approval", "waiting_approval"):
        try:
            view = await get_risk(plan_id, services, gateway, drafts, store)
            risk_level, risk_reasons = view.level, view.reasons
        except (ApiError, PlanClientError):
            pass
    agent_id = detail.plan.agent_id
    offers = {c for c in ACTIONS if may(principal, c, agent_id)}
    return {
        "plan_id": plan_id,
        "status": status,
        "plan": detail.plan,
        "executed": detail.executed,
        "final": status.status.value in FINAL,
        "steps": steps,
        "dag": layout(detail.plan.steps, statuses),
        "step_versions": {s.id: s.version for s in status.steps},
        "node_w": NODE_W,
        "node_h": NODE_H,
        "audit": list(reversed(audit)),
        "offers": offers,
        "risk_level": risk_level,
        "risk_reasons": risk_reasons,
    }


async def _plan_response(
    request: Request, services: ServicesDep, session: Session, plan_id: str, name: str
) -> Response:
    if needs_sign_in(services, session):
        if name == "plan.html":
            return sign_in_page(request, session, services)
        raise unauthorized("sign in to the console first")
    try:
        context = await _plan_context(services, principal_of(services, session), plan_id)
    except (ApiError, PlanClientError) as e:
        err = api_error_of(e)
        return render(
            request,
            session,
            services,
            "error.html",
            {"plan_id": plan_id, "error": err.detail},
            status=err.status,
        )
    return render(request, session, services, name, context)


@router.get("/plans/{plan_id}")
async def plan_page(
    request: Request, plan_id: PlanIdDep, services: ServicesDep, session: SessionDep
) -> Response:
    return await _plan_response(request, services, session, plan_id, "plan.html")


@router.get("/plans/{plan_id}/body")
async def plan_fragment(
    request: Request, plan_id: PlanIdDep, services: ServicesDep, session: SessionDep
) -> Response:
    """The plan page's body alone (``console.js`` refreshes it when the plan changes)."""
    return await _plan_response(request, services, session, plan_id, "plan_body.html")


@router.get("/plans/{plan_id}/events")
async def plan_events(
    plan_id: PlanIdDep,
    services: ServicesDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=200)] = None,
) -> Response:
    """``GET /api/plans/{id}/events`` for the console's session (a browser's
    EventSource cannot send an API key): the same shared feed."""
    principal_of(services, session)
    return await get_events(plan_id, services, services.drafts, services.hub, last_event_id)


# --- actions --------------------------------------------------------------------------


def _body(control: str, fields: dict[str, str], keys_on: bool) -> BaseModel:
    """The control's body from the form: the fields its REST body takes (empty ones
    left out), ``by`` from the session (see :func:`send_control`)."""
    step = control in STEP_ACTIONS
    model = STEP_BODIES[control] if step else PLAN_BODIES[control]
    data: dict[str, Any] = {}
    for name in model.model_fields:
        # a step control's version is the step's (the plan's is checked by _stale)
        source = "step_version" if step and name == "version" else name
        value = fields.get(source, "").strip()
        if name == "by" or not value:
            continue
        data[name] = value
    if not keys_on:
        data["by"] = KEYS_OFF_ACTOR
    return model.model_validate(data)


def _stale(status: StatusView, fields: dict[str, str]) -> str | None:
    """Why the page's version/digest no longer hold (None: they do)."""
    version, digest = fields.get("version", ""), fields.get("digest", "")
    if (version and version != str(status.version)) or (digest and digest != status.digest):
        return (
            f"refused: the plan changed since the page was loaded (it showed version "
            f"{version or '?'}, the plan is at version {status.version}, digest "
            f"{status.digest[:12]}); nothing was sent, look again"
        )
    return None


@router.post("/plans/{plan_id}/actions/{control}")
async def action(
    request: Request,
    plan_id: PlanIdDep,
    control: str,
    services: ServicesDep,
    session: SessionDep,
) -> Response:
    fields = await checked_form(request, session)
    principal = principal_of(services, session)
    if control not in ACTIONS:
        raise not_found(f"the console has no action {control!r}")
    back = back_to(fields, plan_id)
    # a step only for a step's control (a plan-wide one takes none from the form), and
    # only a step id, as the REST route's path pattern checks (else nothing is sent)
    step_id = (fields.get("step_id") or None) if control in STEP_ACTIONS else None
    what = f"{ACTIONS[control]} {'step ' + step_id[:64] if step_id else 'plan'} of {plan_id}"
    if step_id is not None and not ID_RE.fullmatch(step_id):
        session.notify("error", f"{what}: refused: not a step id ({ID_PATTERN}); nothing was sent")
        return RedirectResponse(back, status_code=303)
    try:
        status = await get_status(plan_id, services, services.drafts, services.store)
        stale = _stale(status, fields)
        if stale:
            session.notify("error", f"{what}: {stale}")
            return RedirectResponse(back, status_code=303)
        body = _body(control, fields, services.keys.enabled)
        result = await send_control(
            services.temporal, services.drafts, plan_id, control, body, principal, step_id
        )
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        session.notify("error", f"{what}: refused: {problems}")
    except (ApiError, PlanClientError) as e:
        err = api_error_of(e)
        session.notify("error", f"{what}: refused ({err.status}): {err.detail}")
    else:
        session.notify("ok", f"{what}: done; the plan is {result.status} (v{result.version})")
    return RedirectResponse(back, status_code=303)
