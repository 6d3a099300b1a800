"""``/console/new``: a new plan, pasted, uploaded or asked of the planner; reviewed; then
saved as a draft or executed.

Nothing here re-implements the REST routes: the review reads the document as the CLI
does (:func:`plans.plan_loading.load_document`, JSON or YAML, alias bombs refused) and
checks it with :func:`api.routes_plans.plan_problems` (the full validation of
``POST /api/plans``), its risk with :func:`api.routes_trust.assess_plan` (``GET
/api/plans/{id}/risk``); the planner is :func:`api.routes_plans.generate_plan` (``POST
/api/plans/generate``: offline, the deterministic stand-in answers); saving is
:func:`api.routes_plans.create_draft` (``POST /api/plans``) and executing
:func:`api.routes_plans.execute_plan` (``POST /api/plans/{id}/execute``). The same role
checks and refusals, the key's owner recorded (``console`` with keys off).

The document is untrusted text: at most :data:`MAX_DOCUMENT_BYTES`, nested at most
``PLANSMITH_API_MAX_JSON_DEPTH``, and only ever put in the page escaped. Save and Execute
carry the digest of the text that was reviewed: a document changed since its review is
reviewed again, never created unseen.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from api.auth import Principal
from api.console.routes import (
    KEYS_OFF_ACTOR,
    SessionDep,
    needs_sign_in,
    principal_of,
    render,
    sign_in_page,
)
from api.console.sessions import Session
from api.deps import ApiServices, ServicesDep
from api.errors import ApiError, api_error_of, forbidden, problems_from_errors
from api.limits import json_depth, off_loop
from api.routes_plans import create_draft, execute_plan, generate_plan, plan_problems
from api.routes_trust import assess_plan
from api.schemas import ConstraintAnswer, GenerateRequest, LessonUsed
from plans.models import Plan
from plans.plan_loading import PlanInvalid, Problem, load_document, parse_plan
from plans.policy import ApprovalDecision, TrustScore
from plans.risk import PlanRisk
from workflows.errors import PlanClientError

log = logging.getLogger("plansmith.api.console")

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)

MAX_DOCUMENT_BYTES = 1024 * 1024  # a pasted or uploaded document (UTF-8 text)
MAX_NOTES_BYTES = 64 * 1024  # the planner's notes carried from one review to the next
INTENTS = {"draft": "Save as draft", "execute": "Execute"}


class PlannerNotes(BaseModel):
    """What the planner said of the plan it made (shown with the review)."""

    model: str
    offline: bool
    rounds: int
    lessons_applied: list[LessonUsed]
    constraints: list[ConstraintAnswer]


@dataclass
class Review:
    """A document as the review shows it."""

    text: str
    digest: str  # of the text reviewed (Save and Execute carry it back)
    plan: Plan | None = None
    problems: list[Problem] = field(default_factory=list)
    refusal: str | None = None  # what the key may not do with it (a 403)
    risk: PlanRisk | None = None
    trust: TrustScore | None = None
    decision: ApprovalDecision | None = None
    notes: PlannerNotes | None = None

    @property
    def valid(self) -> bool:
        return self.plan is not None and not self.problems and self.refusal is None


def text_digest(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


async def console_form(request: Request, session: Session) -> dict[str, Any]:
    """The POSTed form (one file at most); 403 unless it carries the session's CSRF
    token. A file is refused past :data:`MAX_DOCUMENT_BYTES` as it is read."""
    form = await request.form(max_files=1, max_fields=20, max_part_size=2 * MAX_DOCUMENT_BYTES)
    fields: dict[str, Any] = dict(form.items())
    token = fields.get("csrf")
    if not session.csrf_ok(token if isinstance(token, str) else None):
        raise forbidden("missing or wrong CSRF token: reload the console page and try again")
    return fields


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else ""


async def document_text(fields: dict[str, Any]) -> tuple[str, list[Problem]]:
    """The document: the uploaded file when one was chosen, else the pasted text."""
    upload = fields.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        raw = await upload.read(MAX_DOCUMENT_BYTES + 1)
        name = upload.filename[:200]
        if len(raw) > MAX_DOCUMENT_BYTES:
            return "", [Problem(location=name, message=_too_big(len(raw)))]
        try:
            return raw.decode("utf-8-sig"), []
        except UnicodeDecodeError as e:
            return "", [Problem(location=name, message=f"not UTF-8 text (byte {e.start})")]
    text = _text(fields, "document")
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        return "", [Problem(location="(document)", message=_too_big(len(text.encode())))]
    return text, []


def _too_big(size: int) -> str:
    return f"the document has more than {MAX_DOCUMENT_BYTES} bytes ({size}); the console takes at most 1 MiB"


def _read(text: str, max_depth: int) -> Plan:
    """The document's shape (PlanInvalid with located problems otherwise)."""
    if not text.strip():
        raise PlanInvalid([Problem(location="(document)", message="the document is empty")])
    data = load_document(text, "(document)")
    try:
        flat = json.dumps(data, default=str).encode()
    except RecursionError:
        flat = b"[" * (max_depth + 1)
    if json_depth(flat, max_depth) > max_depth:
        raise PlanInvalid(
            [
                Problem(
                    location="(document)",
                    message=f"nested deeper than {max_depth} levels (PLANSMITH_API_MAX_JSON_DEPTH)",
                )
            ]
        )
    return parse_plan(data)


async def review(
    text: str, services: ApiServices, principal: Principal, notes: PlannerNotes | None = None
) -> Review:
    """Validation problems with their locations, what the key may not do with the plan,
    and (valid) its risk, its agent's trust and the adaptive policy's decision."""
    found = Review(text=text, digest=text_digest(text), notes=notes)
    try:
        plan = await off_loop(_read, text, services.config.max_json_depth)
    except PlanInvalid as e:
        found.problems = e.problems
        return found
    try:
        plan = principal.claim(plan)  # as POST /api/plans: an agent key plans as itself
    except ApiError as e:
        found.refusal = e.detail
    found.plan = plan
    found.problems = await plan_problems(plan, services)
    if found.problems:
        return found
    found.risk, found.trust, found.decision = await assess_plan(plan, services, services.store)
    return found


def _notes(fields: dict[str, Any]) -> PlannerNotes | None:
    raw = _text(fields, "planner_notes")
    if not raw or len(raw) > MAX_NOTES_BYTES:
        return None
    try:
        return PlannerNotes.model_validate_json(raw)
    except ValidationError:
        return None


def _page(
    request: Request,
    session: Session,
    services: ApiServices,
    principal: Principal,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    ctx: dict[str, Any] = {
        "is_agent": principal.is_agent,
        "intents": INTENTS,
        "max_kib": MAX_DOCUMENT_BYTES // 1024,
        "task": "",
        "context_text": "",
        "constraints_text": "",
        "agent_id": "",
        "review": None,
        "planner_error": None,
        "planner_problems": [],
        **context,
    }
    review_ = ctx["review"]
    if review_ is not None and review_.notes is not None:
        ctx["notes_json"] = review_.notes.model_dump_json()
    return render(request, session, services, "new_plan.html", ctx, status)


@router.get("/new")
async def new_plan_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    if needs_sign_in(services, session):
        return sign_in_page(request, session, services)
    return _page(request, session, services, principal_of(services, session), {})


@router.post("/new/review")
async def review_document(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    fields = await console_form(request, session)
    principal = principal_of(services, session)
    text, problems = await document_text(fields)
    if problems:
        found = Review(text="", digest=text_digest(""), problems=problems)
    else:
        found = await review(text, services, principal, _notes(fields))
    # 200 whatever it finds: the review is the answer (a refusal is Save's or Execute's)
    return _page(request, session, services, principal, {"review": found})


@router.post("/new/generate")
async def generate_document(
    request: Request, services: ServicesDep, session: SessionDep
) -> Response:
    """Ask the planner (``POST /api/plans/generate``'s function, not saved), then review
    what it made."""
    fields = await console_form(request, session)
    principal = principal_of(services, session)
    task, context = _text(fields, "task"), _text(fields, "context").strip()
    constraints_text = _text(fields, "constraints")
    agent_id = _text(fields, "agent_id").strip()
    echo = {
        "task": task,
        "context_text": context,
        "constraints_text": constraints_text,
        "agent_id": agent_id,
    }
    try:
        body = GenerateRequest(
            task=task,
            context=context or None,
            constraints=[c.strip() for c in constraints_text.splitlines() if c.strip()],
            agent_id=agent_id or None,
            save=False,
        )
    except ValidationError as e:
        problems = problems_from_errors(e.errors(include_url=False))
        ctx = {**echo, "planner_error": "the request is invalid", "planner_problems": problems}
        return _page(request, session, services, principal, ctx, 422)
    try:
        made = await generate_plan(
            body, services.temporal, services.drafts, principal, services.store, services
        )
    except (ApiError, PlanClientError) as e:
        err = api_error_of(e)
        ctx = {
            **echo,
            "planner_error": f"the planner answered {err.status}: {err.detail}",
            "planner_problems": list(err.problems),
        }
        return _page(request, session, services, principal, ctx, err.status)
    notes = PlannerNotes(
        model=made.model,
        offline=made.offline,
        rounds=made.rounds,
        lessons_applied=made.lessons_applied,
        constraints=made.constraints,
    )
    text = json.dumps(made.plan, indent=2, ensure_ascii=False)
    found = await review(text, services, principal, notes)
    return _page(request, session, services, principal, {**echo, "review": found})


@router.post("/new/save")
async def save_document(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    """Save as draft (``intent=draft``) or create and execute (``intent=execute``) the
    document reviewed; a document that changed since, or is invalid, is reviewed again
    and nothing is created."""
    fields = await console_form(request, session)
    principal = principal_of(services, session)
    intent = _text(fields, "intent")
    if intent not in INTENTS:
        raise forbidden(f"no such choice {intent!r}: Save as draft or Execute")
    text, problems = await document_text(fields)
    notes = _notes(fields)
    if problems:
        found = Review(text="", digest=text_digest(""), problems=problems)
        return _page(request, session, services, principal, {"review": found}, 422)
    found = await review(text, services, principal, notes)
    if found.digest != _text(fields, "reviewed"):
        session.notify(
            "error",
            f"{INTENTS[intent]}: nothing was created: the document changed since its review "
            "(or was not reviewed); look at this review, then choose again",
        )
        return _page(request, session, services, principal, {"review": found}, 409)
    if not found.valid or found.plan is None:
        session.notify("error", f"{INTENTS[intent]}: refused: the document is not valid")
        status = 422 if found.problems else 403
        return _page(request, session, services, principal, {"review": found}, status)
    by = None if services.keys.enabled else KEYS_OFF_ACTOR
    plan_id: str | None = None
    try:
        draft, created = await create_draft(
            found.plan, principal, services.temporal, services.drafts, services, by=by
        )
        plan_id = draft.plan.id
        assert plan_id is not None
        if intent == "execute":
            started = await execute_plan(plan_id, services.temporal, services.drafts, principal)
            session.notify("ok", f"Execute: {started.detail}")
        else:
            session.notify(
                "ok",
                f"Save as draft: plan {plan_id} is kept as a draft"
                + ("" if created else " (the very same document was already stored)"),
            )
    except (ApiError, PlanClientError) as e:
        err = api_error_of(e)
        what = f"{INTENTS[intent]}: refused ({err.status}): {err.detail}"
        if plan_id is None:  # nothing was created
            session.notify("error", what)
            if err.problems:
                found.problems = list(err.problems)
            return _page(request, session, services, principal, {"review": found}, err.status)
        session.notify("error", f"{what} (the draft {plan_id} was kept)")
    log.info("console: %s plan %s (%s)", intent, plan_id, principal.owner or KEYS_OFF_ACTOR)
    return RedirectResponse(f"/console/plans/{plan_id}", status_code=303)
