"""API keys (``PLANSMITH_API_KEYS``): who is acting, and what their role lets them do.

Format: comma-separated ``key:owner[:role]`` entries, e.g.
``PLANSMITH_API_KEYS=s3cr3t:alice:operator,t0k3n:ci-bot:agent,r00t:ops:admin``. The key is
what comes before the first ``:``; the owner is the actor recorded as ``by`` for every
control sent with that key (alice's approval is recorded as alice). A key given without
``:owner`` acts as ``key-<first 8 hex digits of its SHA-256>`` (never the key itself,
which would land in the audit trail). Blank entries are ignored; an unknown role stops
the process at start-up with an error naming the variable (never the key).

Roles:

* ``agent`` — a program that proposes plans. It creates and executes plans only as
  itself: its owner is the plan's ``agent_id`` (a missing one is filled in, another one
  is a 403), on ``POST /api/plans``, ``/generate``, ``/{id}/execute`` and the nodes/edges
  ``POST /api/v1/execute``. The plans it proposes cannot waive a person's approval:
  ``require_approval: false``, ``auto_approve: true``, ``on_approval_timeout`` or
  ``on_step_approval_timeout`` ``approve`` are a 403 (``true`` or ``"auto"``, where the
  adaptive policy decides; nodes/edges executions, which cannot act on anything, start
  at once as before). It never decides for a person: approve, reject, answer a
  clarification, approve or reject a step, skip a step, accept or reject a replan
  proposal, resume a paused plan and resume-from-failure are 403. On its *own* plans (``agent_id`` = its owner) it may
  pause, cancel, correct a step (a correction made after approval waits for a person's
  approval again) and retry a failed step (not a step a person skipped or rejected); on anyone else's plan those are 403 too.
  It reads like any key.
* ``operator`` (the default) — a person who steers plans: everything above, on any plan,
  but no configuration change.
* ``admin`` — an operator who may also change the configuration: ``PUT`` and ``DELETE
  /api/models/{name}``, and every ``/api/webhooks`` route, reads included (a webhook's
  URL sends plan data out, and is often a credential itself) (403 for the other roles).
  An agent key may not name webhooks in a plan's ``options.webhooks`` either (403).

With keys configured, every route under ``/api`` needs ``Authorization: Bearer <key>``
or ``X-API-Key: <key>`` (401 otherwise); ``/healthz``, ``/readyz`` (which then gives
details only to a valid key) and the OpenAPI document and its pages are open. A control
body's ``by`` may be left out (the owner is used) or equal the owner; a different ``by``
is refused with 403 — a key cannot act as someone else.

Without keys (local development) nobody is checked: ``by`` comes from the body (``"api"``
when absent) and every route is open, as before roles existed. ``plansmith api`` refuses
to listen beyond loopback that way unless ``PLANSMITH_ALLOW_OPEN_API=1``
(:func:`plansmith.cli.processes.check_exposure`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from fastapi.security import APIKeyHeader, HTTPBearer

from api.errors import forbidden
from api.logs import actor_var
from config.settings import parse_api_keys
from plans.models import Plan

DEFAULT_ACTOR = "api"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="`Authorization: Bearer <key>` with a key from PLANSMITH_API_KEYS "
    "(only checked when keys are configured)",
)
header_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="`X-API-Key: <key>`, the same keys as the bearer scheme",
)


class Role(StrEnum):
    AGENT = "agent"
    OPERATOR = "operator"
    ADMIN = "admin"


# Controls only a person decides (403 for an agent key, whoever's plan it is).
PERSON_CONTROLS = frozenset(
    {
        "approve",
        "reject",
        "resume",
        "answer_clarification",
        "approve_step",
        "reject_step",
        "skip_step",
        "resume_from_failure",
        "accept_replan",
        "reject_replan",
    }
)
# What an agent key may do to the plans it proposed (agent_id = its owner), and only them.
AGENT_OWN_CONTROLS = frozenset({"execute", "pause", "cancel", "apply_correction", "retry_step"})


def approval_waivers(plan: Plan) -> list[str]:
    """The options of ``plan`` that let it run, or a gated step run, without a person:
    each as ``options.<name>=<value>`` (empty when there is none)."""
    opts = plan.options
    found = []
    if opts.auto_approve:
        found.append("options.auto_approve=true")
    if opts.require_approval is False:
        found.append("options.require_approval=false")
    if opts.on_approval_timeout == "approve":
        found.append("options.on_approval_timeout='approve'")
    if opts.on_step_approval_timeout == "approve":
        found.append("options.on_step_approval_timeout='approve'")
    return found


@dataclass(frozen=True)
class ApiKey:
    key: bytes
    owner: str
    role: Role


@dataclass(frozen=True)
class ApiKeys:
    entries: tuple[ApiKey, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    @classmethod
    def parse(cls, raw: str | None) -> ApiKeys:
        """Raises ValueError naming PLANSMITH_API_KEYS (never a key) for a bad entry."""
        entries = []
        for key, owner, role in parse_api_keys(raw):
            name = owner or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
            entries.append(ApiKey(key.encode(), name, Role(role)))
        return cls(tuple(entries))

    def find(self, key: str) -> ApiKey | None:
        """The entry of ``key``; every configured key is compared in constant time."""
        found = None
        given = key.encode()
        for entry in self.entries:
            if hmac.compare_digest(entry.key, given) and found is None:
                found = entry
        return found

    def owner_of(self, key: str) -> str | None:
        entry = self.find(key)
        return entry.owner if entry else None


@dataclass(frozen=True)
class Principal:
    """Who sent the request: the key's owner and role, or nobody (no keys configured)."""

    owner: str | None = None
    role: Role | None = None

    @property
    def is_agent(self) -> bool:
        return self.role is Role.AGENT

    def actor(self, body_by: str | None) -> str:
        """The ``by`` recorded for a control; refuses a body ``by`` naming someone else."""
        if self.owner is None:
            actor = body_by or DEFAULT_ACTOR
        elif body_by is not None and body_by != self.owner:
            raise forbidden(
                f"by={body_by!r} differs from the API key's owner {self.owner!r}; "
                "leave `by` out (the key's owner is recorded) or send the owner"
            )
        else:
            actor = self.owner
        actor_var.set(actor)
        return actor

    def agent_id_for(self, claimed: str | None) -> str | None:
        """The ``agent_id`` a plan created with this key gets: an agent key's owner (403
        when the document names another agent), else what the document says."""
        if not self.is_agent:
            return claimed
        if claimed is not None and claimed != self.owner:
            raise forbidden(
                f"agent_id={claimed!r} differs from the API key's owner {self.owner!r}: an "
                "agent key creates and runs plans only as itself; leave agent_id out (the "
                "key's owner is used) or send the owner"
            )
        return self.owner

    def claim(self, plan: Plan, *, waivers: bool = False) -> Plan:
        """``plan`` with the ``agent_id`` this key may create it under (see
        :meth:`agent_id_for`). An agent key may not waive a person's approval in the plan
        it proposes (:func:`approval_waivers`, 403) unless ``waivers`` (the nodes/edges
        executions, whose steps cannot act on anything)."""
        if self.is_agent and not waivers and (found := approval_waivers(plan)):
            raise forbidden(
                f"{'; '.join(found)}: an agent key may not waive a person's approval in the "
                f"plan it proposes (the API key of {self.owner!r} is an agent key); send "
                'options.require_approval true or "auto", and on_approval_timeout / '
                "on_step_approval_timeout reject (their default)"
            )
        if self.is_agent and plan.options.webhooks:
            raise forbidden(
                f"options.webhooks: an agent key may not name webhooks (the API key of "
                f"{self.owner!r} is an agent key): they would send the plan's data where "
                "the agent says; an admin subscribes webhooks (POST /api/webhooks)"
            )
        agent_id = self.agent_id_for(plan.agent_id)
        return plan if agent_id == plan.agent_id else plan.model_copy(update={"agent_id": agent_id})

    def may_control(self, control: str, plan_agent_id: str | None = None) -> None:
        """403 unless this key may send ``control`` to a plan proposed by
        ``plan_agent_id`` (only agent keys are limited; see the module docstring)."""
        if not self.is_agent:
            return
        verb = control.replace("_", "-")
        if control not in AGENT_OWN_CONTROLS:
            raise forbidden(
                f"{verb} refused: the API key of {self.owner!r} is an agent key, and only "
                "a person (an operator or admin key) may send it"
            )
        if plan_agent_id != self.owner:
            raise forbidden(
                f"{verb} refused: the API key of {self.owner!r} is an agent key, and the "
                f"plan was proposed by {plan_agent_id or 'no agent'!r}, not by it; an agent "
                "may execute, pause, cancel, correct or retry only its own plans"
            )

    def may_approve_own_change(self) -> None:
        """403 for an agent key sending a correction with ``approve: true``: after the
        plan's approval, a change to what a step runs needs a person's approval."""
        if self.is_agent:
            raise forbidden(
                f"apply-correction with approve=true refused: the API key of {self.owner!r} "
                "is an agent key; its correction waits for a person to approve the change "
                "(send it without approve)"
            )

    def require_admin(self, what: str) -> None:
        """403 unless keys are off or this is an admin key."""
        if self.role is not None and self.role is not Role.ADMIN:
            raise forbidden(
                f"{what} refused: it changes the configuration, which needs an admin key; "
                f"the API key of {self.owner!r} has the role {self.role.value!r}"
            )
