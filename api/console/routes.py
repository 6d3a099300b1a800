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

import asyncio
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
from api.console.correction import MAX_DOCUMENT_CHARS, Checked, check_correction, step_document
from api.console.dag import NODE_H, NODE_W, layout
from api.console.history import field_changes
from api.console.inbox import KIND_LABELS, FactsCache, inbox
from api.console.sessions import COOKIE, COOKIE_PATH, Session, Sessions
from api.controls import PLAN_BODIES, STEP_BODIES, ByBody
from api.dashboard import CSP
from api.deps import ApiServices, PlanIdDep, ServicesDep, StepIdDep, authorize_control
from api.errors import ApiError, api_error_of, forbidden, not_found, unauthorized
from api.limits import off_loop
from api.routes_plan_controls import send_control
from api.routes_plan_reads import (
    get_audit,
    get_events,
    get_logs,
    get_status,
    get_steps,
    get_versions,
    step_output,
)
from api.routes_plans import execute_plan, get_plan, resume_plan_from_failure
from api.routes_trust import get_risk
from api.schemas import LogLine, PlanDetail
from contracts.snapshots import as_output_ref
from contracts.tools import catalog
from plans.models import ID_PATTERN, ID_RE, Plan, Step
from plans.run_state import AuditEntry, PlanVersion
from plans.views import StatusView, StepView
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
# The actions of the buttons (POST /console/plans/{id}/actions/{control}): control ->
# the label of its button. A correction has its own route (it is checked first).
ACTIONS = {
    "approve": "Approve",
    "reject": "Reject",
    "pause": "Pause",
    "resume": "Resume",
    "cancel": "Cancel",
    "approve_step": "Approve",
    "reject_step": "Reject",
    "answer_clarification": "Answer",
    "retry_step": "Retry",
    "skip_step": "Skip",
    "resume_from_failure": "Resume from failure",
    "execute": "Execute",
    "accept_replan": "Accept",
    "reject_replan": "Reject",
}
STEP_ACTIONS = frozenset(
    {"approve_step", "reject_step", "answer_clarification", "retry_step", "skip_step"}
)
# plan-route controls whose body names a step (a proposed replan's failed step)
BODY_STEP_ACTIONS = frozenset({"accept_replan", "reject_replan"})
CORRECTION = "apply_correction"
OFFERED = (*ACTIONS, CORRECTION)  # what a page may offer, each when the role may send it
FINAL = frozenset({"completed", "partial", "failed", "cancelled", "rejected"})
RESUMABLE = frozenset({"failed", "partial", "cancelled"})  # resume-from-failure runs them again
UNCHANGEABLE = frozenset({"completed", "running"})  # a correction changes any other step
FAILED_OR_WAITING = frozenset({"failed", "waiting_approval", "waiting_clarification"})
EDITORS_FOR_ALL_UP_TO = 200  # steps; a bigger plan gets editors for failed or waiting steps
LISTED_STEPS = 200  # a plan of more steps lists those that need a look and its first ones
LISTED_FIRST = 100
QUIET = frozenset({"pending", "completed", "skipped"})  # what a big plan's page leaves out
STEPS_PAGE = 1000  # steps read for a big plan's page (the DAG's colours, the first ones)
MAX_SHOWN = 4000  # characters of a step's params or output on the page
MAX_CALL_SHOWN = 1000  # characters of one tool call's params or output
LOG_LINES = 100  # newest lines of the plan's log on its page
STEP_LOG_LINES = 50  # newest lines of one step's log in its details

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["field_changes"] = field_changes  # a proposed replan's diff rows
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
        item.offers = {c for c in OFFERED if may(principal, c, item.agent_id)}
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


def _shown(value: Any, limit: int = MAX_SHOWN) -> str:
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "\n… (cut)"


def _output_of(view: StepView | None) -> dict[str, Any]:
    """What the page shows of a step's output: the output (cut at MAX_SHOWN), or the
    size and preview of one kept in the store by reference; ``whole``: the page does
    not show all of it (a link to the whole output goes with it)."""
    if view is None or view.output is None:
        return {"output": None, "output_ref": None, "whole": False}
    ref = as_output_ref(view.output)
    if ref is not None:
        return {"output": None, "output_ref": ref, "whole": True}
    shown = _shown(view.output)
    return {"output": shown, "output_ref": None, "whole": shown.endswith("… (cut)")}


def _calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An llm step's tool calls as its details show them (params and output cut)."""
    return [
        {
            "n": c.get("n"),
            "tool": c.get("tool"),
            "status": c.get("status", "running"),
            "attempts": c.get("attempts"),
            "at": c.get("at"),
            "params": _shown(c.get("params"), MAX_CALL_SHOWN),
            "output": _shown(c["output"], MAX_CALL_SHOWN) if "output" in c else None,
            "error": c.get("error"),
        }
        for c in calls
    ]


async def _or_error(read: Any) -> tuple[Any, str | None]:
    """``await read``, or None and why it failed (a part of the page that cannot be read
    says so; the rest of the page is shown)."""
    try:
        return await read, None
    except (ApiError, PlanClientError) as e:
        return None, api_error_of(e).detail


def editor_for(
    session: Session,
    plan_id: str,
    status: StatusView,
    plan: Plan,
    step_id: str,
    checked: Checked | None = None,
    *,
    may_approve: bool,
    notice: str | None = None,
) -> dict[str, Any]:
    """What the correction editor of ``step_id`` shows: the page's version and digest,
    the text (the step's document, or what was sent back), the check's findings."""
    original = step_document(plan.step(step_id)) if step_id in plan.positions() else ""
    text = checked.text if checked is not None else original
    return {
        "plan_id": plan_id,
        "step_id": step_id,
        "version": status.version,
        "digest": status.digest,
        "text": text,
        "original": original,
        "checked": checked,
        "preview": field_changes({step_id: checked.changes}) if checked and checked.ok else [],
        "notice": notice,
        "may_approve": may_approve,
        "max_chars": MAX_DOCUMENT_CHARS,
        "session": session,
    }


def _listed(plan: Plan, views: dict[str, StepView]) -> list[Step]:
    """The steps the page lists: all of a plan of up to LISTED_STEPS; of a bigger one,
    those that need a look (running, waiting, failed, cancelled) and the first
    LISTED_FIRST in plan order (a 10,000-step plan's page would be megabytes)."""
    if len(plan.steps) <= LISTED_STEPS:
        return list(plan.steps)
    out = []
    for i, step in enumerate(plan.steps):
        view = views.get(step.id)
        busy = view is not None and view.status.value not in QUIET
        if i < LISTED_FIRST or busy:
            out.append(step)
    return out


async def _plan_context(
    services: ApiServices,
    session: Session,
    principal: Principal,
    plan_id: str,
    editing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    gateway, drafts, store = services.temporal, services.drafts, services.store
    status: StatusView
    status, detail, audit_list = await asyncio.gather(
        get_status(plan_id, services, drafts, store),
        get_plan(plan_id, gateway, drafts, store),
        get_audit(plan_id, gateway, drafts, store),
    )
    audit: list[AuditEntry] = audit_list
    (versions, versions_error), (logs, logs_error) = await asyncio.gather(
        _or_error(get_versions(plan_id, gateway, drafts, store)),
        _or_error(get_logs(plan_id, gateway, drafts, store, None, None, None)),
    )
    log_lines: list[LogLine] = logs or []
    by_step: dict[str, list[LogLine]] = {}
    for line in log_lines:
        if line.step_id:
            by_step.setdefault(line.step_id, []).append(line)
    views = {s.id: s for s in status.steps}
    if not status.steps_complete:  # a big plan's status lists its active steps only
        page = await get_steps(plan_id, gateway, drafts, store, None, 0, STEPS_PAGE)
        views = {s.id: s for s in page.steps} | views
    status_value = status.status.value
    final = status_value in FINAL
    agent_id = detail.plan.agent_id
    offers = {c for c in OFFERED if may(principal, c, agent_id)}
    live = detail.executed and not final
    correctable = live and CORRECTION in offers
    few = len(detail.plan.steps) <= EDITORS_FOR_ALL_UP_TO
    may_approve = not principal.is_agent
    waits_for_correction = {w.step_id for w in status.waiting if w.kind == "correction"}
    steps = []
    listed = _listed(detail.plan, views)
    for step in listed:
        view = views.get(step.id)
        state = view.status.value if view else "pending"
        editor = None
        if correctable and state not in UNCHANGEABLE and (few or state in FAILED_OR_WAITING):
            if editing is not None and editing.get("step_id") == step.id:
                editor = editing
            else:
                editor = editor_for(
                    session, plan_id, status, detail.plan, step.id, may_approve=may_approve
                )
        steps.append(
            {
                "step": step,
                "view": view,
                "state": state,
                "params": _shown(step.params),
                **_output_of(view),
                "calls": _calls(view.calls) if view else [],
                "logs": by_step.get(step.id, [])[-STEP_LOG_LINES:],
                "editor": editor,
                "open": state == "failed"
                or step.id in waits_for_correction
                or (editing is not None and editor is editing),
                # (a step waiting for a correction has them in "Waiting for a person")
                "retry": live and state == "failed" and step.id not in waits_for_correction,
                "skip": live and state in FAILED_OR_WAITING and step.id not in waits_for_correction,
            }
        )
    statuses = {sid: v.status.value for sid, v in views.items()}
    decision = status.approval_policy
    risk_level, risk_reasons = (None, [])
    if decision is not None:
        risk_level, risk_reasons = decision.risk.level, decision.risk.reasons or decision.reasons
    elif status_value in ("draft", "pending_approval", "waiting_approval"):
        try:
            risk = await get_risk(plan_id, services, gateway, drafts, store)
            risk_level, risk_reasons = risk.level, risk.reasons
        except (ApiError, PlanClientError):
            pass
    history: list[PlanVersion] = versions or []
    return {
        "plan_id": plan_id,
        "status": status,
        "plan": detail.plan,
        "executed": detail.executed,
        "final": final,
        "executable": not detail.executed and "execute" in offers,
        "resumable": detail.executed
        and status_value in RESUMABLE
        and "resume_from_failure" in offers,
        "steps": steps,
        "unlisted": len(detail.plan.steps) - len(listed),
        "dag": layout(detail.plan.steps, statuses),
        "step_versions": {s.id: s.version for s in status.steps},
        "node_w": NODE_W,
        "node_h": NODE_H,
        "audit": list(reversed(audit)),
        "offers": offers,
        "risk_level": risk_level,
        "risk_reasons": risk_reasons,
        "versions": [{"version": v, "changes": field_changes(v.diff)} for v in reversed(history)],
        "versions_error": versions_error,
        "log": log_lines[-LOG_LINES:],
        "logs_error": logs_error,
    }


async def _plan_response(
    request: Request,
    services: ServicesDep,
    session: Session,
    plan_id: str,
    name: str,
    editing: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    if needs_sign_in(services, session):
        if name == "plan.html":
            return sign_in_page(request, session, services)
        raise unauthorized("sign in to the console first")
    try:
        principal = principal_of(services, session)
        context = await _plan_context(services, session, principal, plan_id, editing)
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
    return render(request, session, services, name, context, status)


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


@router.get("/plans/{plan_id}/steps/{step_id}/output")
async def step_output_file(
    plan_id: PlanIdDep, step_id: StepIdDep, services: ServicesDep, session: SessionDep
) -> Response:
    """A step's whole output for the console's session (``GET
    /api/plans/{id}/steps/{step_id}/output``), as a JSON file to save."""
    principal_of(services, session)
    response = await step_output(services, plan_id, step_id)
    response.headers.update(HEADERS)
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{plan_id}-{step_id}-output.json"'
    )
    return response


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


def _stale(status: StatusView | PlanDetail, fields: dict[str, str]) -> str | None:
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
    takes_step = control in STEP_ACTIONS or control in BODY_STEP_ACTIONS
    step_id = (fields.get("step_id") or None) if takes_step else None
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
        if control == "execute":
            # the function behind POST /api/plans/{id}/execute (a draft's one start)
            started = await execute_plan(plan_id, services.temporal, services.drafts, principal)
            session.notify("ok", f"{what}: done; {started.detail}")
            return RedirectResponse(back, status_code=303)
        if control == "resume_from_failure":
            # the function behind POST /api/plans/{id}/resume-from-failure
            by = None if services.keys.enabled else ByBody(by=KEYS_OFF_ACTOR)
            resumed = await resume_plan_from_failure(
                plan_id, services.temporal, services.drafts, principal, by
            )
            session.notify("ok", f"{what}: done; {resumed.detail}")
            return RedirectResponse(back, status_code=303)
        body = _body(control, fields, services.keys.enabled)
        result = await send_control(
            services.temporal, services.drafts, plan_id, control, body, principal, step_id
        )
    except (ValidationError, ApiError, PlanClientError) as e:
        session.notify("error", f"{what}: {_refused(e)}")
    else:
        session.notify("ok", f"{what}: done; the plan is {result.status} (v{result.version})")
    return RedirectResponse(back, status_code=303)


# --- the correction editor ------------------------------------------------------------


def _refused(e: ValidationError | ApiError | PlanClientError) -> str:
    """Why an action was refused, as its notice says it."""
    if isinstance(e, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        return f"refused: {problems}"
    err = api_error_of(e)
    return f"refused ({err.status}): {err.detail}"


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


@router.post("/plans/{plan_id}/steps/{step_id}/correction")
async def correction(
    request: Request,
    plan_id: PlanIdDep,
    step_id: StepIdDep,
    services: ServicesDep,
    session: SessionDep,
) -> Response:
    """The editor's "Check" (``do=check``) and "Apply correction" (``do=apply``). Both
    check the document against the plan the page showed; "Check" never sends anything,
    and "Apply correction" sends ``apply_correction`` (by :func:`send_control`) only when
    the check finds nothing. Problems are shown in the editor: its fragment for htmx, the
    whole plan page (422) for a plain form."""
    fields = await checked_form(request, session)
    principal = principal_of(services, session)
    apply = fields.get("do") == "apply"
    what = f"{'Apply correction to' if apply else 'Check of'} step {step_id} of {plan_id}"
    gateway, drafts, store = services.temporal, services.drafts, services.store
    try:
        # the role check send_control makes, before anything is read or checked
        await authorize_control(principal, gateway, drafts, plan_id, CORRECTION)
        status, detail = await asyncio.gather(
            get_status(plan_id, services, drafts, store), get_plan(plan_id, gateway, drafts, store)
        )
    except (ApiError, PlanClientError) as e:
        err = api_error_of(e)
        session.notify("error", f"{what}: refused ({err.status}): {err.detail}")
        return _back(request, plan_id)
    may_approve = not principal.is_agent
    text = fields.get("document", "")
    stale: str | None
    if not fields.get("version") or not fields.get("digest"):
        stale = "refused: the form names no plan version and digest; nothing was sent, reload"
    else:
        stale = _stale(status, fields) or _stale(detail, fields)
    if stale:
        checked = Checked(text=text)
        notice = f"{what}: {stale}"
    else:
        checked = await off_loop(check_correction, detail.plan, step_id, text, catalog())
        notice = None
        if apply and checked.ok:
            return await _send_correction(
                request, services, session, principal, plan_id, step_id, checked, fields, what
            )
        if apply:
            notice = f"{what}: refused: the correction has problems (below); nothing was sent"
    checked.text = checked.text[:MAX_DOCUMENT_CHARS]  # a longer text is not echoed back whole
    editor = editor_for(
        session,
        plan_id,
        status,
        detail.plan,
        step_id,
        checked,
        may_approve=may_approve,
        notice=notice,
    )
    editor["approve"] = fields.get("approve") == "on"
    if _is_htmx(request):
        return render(request, session, services, "correction.html", {"editor": editor})
    code = 409 if stale else 422 if checked.problems else 200
    return await _plan_response(request, services, session, plan_id, "plan.html", editor, code)


async def _send_correction(
    request: Request,
    services: ApiServices,
    session: Session,
    principal: Principal,
    plan_id: str,
    step_id: str,
    checked: Checked,
    fields: dict[str, str],
    what: str,
) -> Response:
    data: dict[str, Any] = {
        "step_id": step_id,
        "correction": {"updated_step": checked.updated_step},
        "approve": fields.get("approve") == "on",
    }
    if not services.keys.enabled:
        data["by"] = KEYS_OFF_ACTOR
    try:
        body = PLAN_BODIES[CORRECTION].model_validate(data)
        result = await send_control(
            services.temporal, services.drafts, plan_id, CORRECTION, body, principal
        )
    except (ValidationError, ApiError, PlanClientError) as e:
        session.notify("error", f"{what}: {_refused(e)}")
    else:
        session.notify("ok", f"{what}: done; the plan is {result.status} (v{result.version})")
    return _back(request, plan_id)


def _back(request: Request, plan_id: str) -> Response:
    """Back to the plan page, which shows the notice: htmx loads it whole (the editor's
    fragment is not where the answer goes), a plain form follows the redirect."""
    url = f"/console/plans/{plan_id}"
    if _is_htmx(request):
        return Response(status_code=200, headers={**HEADERS, "HX-Redirect": url})
    return RedirectResponse(url, status_code=303)
